"""Weekly report of blocked attempts: SQL aggregation over hits and traffic, and its renderers."""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from resolver.errors import SinkholeError, StoreError
from resolver.store import GRP_SQL, IDENT_SQL, ROLLUP_SECONDS, SVC_SQL

SCHEMA_VERSION = 1
#: Hits of one client for one service closer than this belong to one attempt: a browser
#: asks A, AAAA and HTTPS at once and retries for a while.
ATTEMPT_GAP_SECONDS = 300
# The rollup's buckets must be exactly one gap wide for the rule in _query_report.
assert ROLLUP_SECONDS == ATTEMPT_GAP_SECONDS
#: The longest period one report covers; the per-day CASE in SQL grows with it.
MAX_PERIOD_DAYS = 400
PRIVACY_MODES = ("ip", "hashed", "group", "none")
BYPASS_CATEGORY = "bypass"
OTHER_GROUP = "other"
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
EMPTY_WEEK = "No blocked attempts this week."
EMPTY_PERIOD = "No blocked attempts in this period."

_WEEK_RE = re.compile(r"^(\d{4})-W(\d{2})$")
_DURATION_RE = re.compile(r"^(\d+)\s*([smhdw])$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# -- periods -------------------------------------------------------------------------------


def zone(tz: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name.

    Raises:
        SinkholeError: the name is not a known time zone.
    """
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SinkholeError(f"unknown time zone {tz!r} (like Europe/Paris)") from exc


def local_timezone() -> str:
    """The IANA name of this machine's time zone, for configs that set none; UTC if unknown."""
    env = os.environ.get("TZ", "").lstrip(":")
    if env and "/" in env and not env.startswith("/"):
        return env
    try:
        target = os.path.realpath("/etc/localtime")
        if "/zoneinfo/" in target:
            return target.split("/zoneinfo/", 1)[1]
        return Path("/etc/timezone").read_text().strip() or "UTC"
    except OSError:
        return "UTC"


def week_bounds(
    week: str | None, tz: str, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """Monday 00:00 to the next Monday 00:00 in tz of ISO week "2026-W47"; None: the last
    complete ISO week before now.

    Raises:
        SinkholeError: the week is not written YYYY-Www or does not exist.
    """
    zi = zone(tz)
    if week is None:
        today = (now or datetime.now(UTC)).astimezone(zi).date()
        monday = today - timedelta(days=today.weekday() + 7)
    else:
        m = _WEEK_RE.match(week.strip())
        if not m:
            raise SinkholeError(f"bad week {week!r}: expected YYYY-Www, like 2026-W47")
        try:
            monday = date.fromisocalendar(int(m[1]), int(m[2]), 1)
        except ValueError as exc:
            raise SinkholeError(f"bad week {week!r}: {exc}") from exc
    # Local midnights, not start + 7 * 24 h: a week with a clock change is 167 or 169 hours.
    start = datetime.combine(monday, datetime.min.time(), zi)
    end = datetime.combine(monday + timedelta(days=7), datetime.min.time(), zi)
    return start, end


def _parse_instant(value: str, zi: ZoneInfo, now: datetime, what: str) -> datetime:
    text = value.strip()
    m = _DURATION_RE.match(text)
    if m:
        return (now - timedelta(seconds=int(m[1]) * _DURATION_UNITS[m[2]])).astimezone(zi)
    if text == "now":
        return now.astimezone(zi)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise SinkholeError(
            f"bad --{what} {value!r}: expected a date (2026-03-23), a date and time "
            "(2026-03-23T08:00) or a duration (7d, 12h)"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zi)
    return parsed.astimezone(zi)


def parse_range(
    since: str, until: str | None, tz: str, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """The period from since (inclusive) to until (exclusive; None: now) in tz.

    Each bound is a local date (its midnight), a local date and time, an ISO time with
    an offset, "now", or a duration before now ("7d", "12h", "2w").

    Raises:
        SinkholeError: a bound cannot be read, or the period is empty or too long.
    """
    zi = zone(tz)
    now = now or datetime.now(UTC)
    start = _parse_instant(since, zi, now, "since")
    if until:
        end = _parse_instant(until, zi, now, "until")
    else:
        # Hits have whole-second timestamps: "until now" includes the current second.
        end = (now + timedelta(seconds=1)).replace(microsecond=0).astimezone(zi)
    if end <= start:
        raise SinkholeError(f"empty period: --until {end.isoformat()} is not after --since")
    if end - start > timedelta(days=MAX_PERIOD_DAYS):
        raise SinkholeError(f"period longer than {MAX_PERIOD_DAYS} days; report it in parts")
    return start, end


def _iso_week(start: datetime, end: datetime, zi: ZoneInfo) -> str | None:
    local = start.astimezone(zi)
    if local.weekday() != 0 or local.time() != datetime.min.time():
        return None
    if end.astimezone(zi) != datetime.combine(
        local.date() + timedelta(days=7), datetime.min.time(), zi
    ):
        return None
    year, week, _ = local.isocalendar()
    return f"{year}-W{week:02d}"


def _day_bounds(start: int, end: int, zi: ZoneInfo) -> list[tuple[date, int, int]]:
    """Each local calendar day touched by [start, end) with its UTC bounds, clipped."""
    days: list[tuple[date, int, int]] = []
    day = datetime.fromtimestamp(start, zi).date()
    while True:
        # Local midnight to local midnight, so a DST day is 23 or 25 hours long.
        lo = int(datetime.combine(day, datetime.min.time(), zi).timestamp())
        hi = int(datetime.combine(day + timedelta(days=1), datetime.min.time(), zi).timestamp())
        if lo >= end:
            break
        days.append((day, max(lo, start), min(hi, end)))
        day += timedelta(days=1)
    return days


def _day_case(column: str, days: list[tuple[date, int, int]]) -> str:
    # Integers we computed ourselves, so inlining them is safe; it keeps the one scan
    # over hits a plain expression instead of a join against a table of days.
    if len(days) == 1:
        return "0"
    whens = " ".join(f"WHEN {column} < {hi} THEN {i}" for i, (_, _, hi) in enumerate(days[:-1]))
    return f"CASE {whens} ELSE {len(days) - 1} END"


# -- the report ------------------------------------------------------------------------------


def _connect(db_path: str | os.PathLike[str]) -> sqlite3.Connection:
    path = Path(db_path)
    if not path.is_file():
        raise StoreError(f"{path}: database not found")
    try:
        # mode=rw: never create an empty database where the real one is missing.
        conn = sqlite3.connect(f"file:{path.resolve()}?mode=rw", uri=True, timeout=10)
        conn.execute("SELECT 1 FROM hits LIMIT 0")
        conn.execute("SELECT 1 FROM traffic LIMIT 0")
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read the report tables: {exc}") from exc
    return conn


def _service_name(svc: str, service_names: dict[str, str]) -> str:
    if svc in service_names:
        return service_names[svc]
    if svc == "custom":
        return "Custom rules"
    if svc.startswith("list:"):
        return f"Imported list {svc[5:]}"
    return svc


def _iso(ts: int | None, zi: ZoneInfo) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, zi).isoformat()


def _privacy_note(
    privacy: str, approximate: bool, retention_days: int, start: int, now: datetime
) -> str:
    notes = {
        "ip": "Clients are recorded by IP address.",
        "hashed": "Clients are recorded as pseudonyms; their IP addresses are not stored.",
        "group": "Clients are not recorded, only the group of their network.",
        "none": "Neither clients nor their groups are recorded.",
    }
    parts = [notes[privacy]]
    if approximate:
        who = "service" if privacy == "none" else "client group"
        parts.append(
            f"Attempts are approximate: without client addresses they are counted per {who}."
        )
    horizon = now.timestamp() - retention_days * 86400
    if start < horizon:
        parts.append(
            f"Hits older than {retention_days} days are deleted, so part of this period "
            "may be missing."
        )
    return " ".join(parts)


def _gaps(conn: sqlite3.Connection, start: int, end: int, zi: ZoneInfo) -> list[dict[str, Any]]:
    gaps: list[tuple[int, int, str]] = []
    # Hours without a single traffic row: the server writes one every minute it runs.
    present = {
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT (minute - ?) / 3600 FROM traffic WHERE minute >= ? AND minute < ?",
            (start, start, end),
        )
    }
    run: int | None = None
    hours = (end - start + 3599) // 3600
    for h in range(hours + 1):
        missing = h < hours and h not in present
        if missing and run is None:
            run = h
        elif not missing and run is not None:
            gaps.append((start + run * 3600, min(start + h * 3600, end), "server-down"))
            run = None
    # Runs of consecutive lagging minutes: minute/60 - row_number is constant along a run.
    rows = conn.execute(
        """SELECT MIN(minute), MAX(minute) + 60 FROM (
             SELECT minute, minute / 60 - ROW_NUMBER() OVER (ORDER BY minute) AS run
             FROM traffic WHERE recorder_lag > 0 AND minute >= ? AND minute < ?)
           GROUP BY run ORDER BY 1""",
        (start, end),
    )
    gaps.extend((lo, min(hi, end), "recorder-behind") for lo, hi in rows)
    gaps.sort()
    return [{"start": _iso(lo, zi), "end": _iso(hi, zi), "kind": kind} for lo, hi, kind in gaps]


def _has_rollup(conn: sqlite3.Connection) -> bool:
    # A database older than migration m002 has only the hits; the report still reads it.
    return (
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'hits_5min'"
        ).fetchone()
        is not None
    )


def _sources(
    conn: sqlite3.Connection, t0: int, t1: int, days: list[tuple[date, int, int]]
) -> list[str]:
    """SELECTs whose rows together are the parts of [t0, t1): (b, ident, svc, grp, day,
    qname, category, blocked, first, last), one per 5-minute bucket, identity, service,
    group, local day and name.

    Whole buckets within one local day come from the rollup `hits_5min`; the bucket cut
    by the start or end of the period and any bucket cut by a local midnight off the
    5-minute grid come from the hits themselves. All bounds are integers we computed, so
    inlining them is safe.
    """
    width = ATTEMPT_GAP_SECONDS
    raw_cols = (
        f"ts / {width} AS b, {IDENT_SQL.format(p='')} AS ident, {SVC_SQL.format(p='')} AS svc,"
        f" {GRP_SQL.format(p='')} AS grp, {_day_case('ts', days)} AS day, qname,"
        " MAX(category) AS category, SUM(count) AS blocked, MIN(ts) AS first, MAX(ts) AS last"
    )

    def raw(lo: int, hi: int) -> str:
        return (
            f"SELECT {raw_cols} FROM hits WHERE ts >= {lo} AND ts < {hi}"
            " GROUP BY b, ident, svc, grp, day, qname"
        )

    b0 = -(-t0 // width)  # the first bucket that starts inside the period
    b1 = t1 // width  # the first bucket that ends outside it
    if b1 <= b0 or not _has_rollup(conn):
        return [raw(t0, t1)]
    split = sorted({lo // width for _, lo, _ in days[1:] if lo % width and b0 <= lo // width < b1})
    skip = f" AND bucket NOT IN ({', '.join(map(str, split))})" if split else ""
    sources = [
        f"""SELECT bucket AS b, ident, svc, grp, {_day_case(f"bucket * {width}", days)} AS day,
                   qname, category, blocked, first_ts AS first, last_ts AS last
            FROM hits_5min WHERE bucket >= {b0} AND bucket < {b1}{skip}"""
    ]
    edges = [(t0, b0 * width), (b1 * width, t1)] + [(b * width, b * width + width) for b in split]
    sources += [raw(lo, hi) for lo, hi in edges if lo < hi]
    return sources


def _fill_parts(
    conn: sqlite3.Connection, t0: int, t1: int, days: list[tuple[date, int, int]]
) -> None:
    """The temp table `part` of [t0, t1), keyed in the order the report groups it."""
    for table in ("part", "step", "cell"):
        conn.execute(f"DROP TABLE IF EXISTS temp.{table}")
    conn.execute(
        """CREATE TEMP TABLE part (b INTEGER, ident TEXT, svc TEXT, grp TEXT, day INTEGER,
             qname TEXT, category TEXT, blocked INTEGER, first INTEGER, last INTEGER,
             PRIMARY KEY (b, ident, svc, grp, day, qname)) WITHOUT ROWID"""
    )
    for source in _sources(conn, t0, t1, days):
        conn.execute(f"INSERT INTO part {source}")


def build_report(
    db_path: str | os.PathLike[str],
    *,
    start: datetime,
    end: datetime,
    tz: str,
    privacy: str,
    retention_days: int,
    groups: dict[str, list[str]],
    service_names: dict[str, str],
    top: int = 10,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report of blocked attempts in [start, end) as the schema-1 dict (docs/report.md).

    Raises:
        SinkholeError: bad period, time zone or privacy mode; StoreError: unreadable database.
    """
    zi = zone(tz)
    if privacy not in PRIVACY_MODES:
        raise SinkholeError(f"unknown privacy mode {privacy!r} (one of {', '.join(PRIVACY_MODES)})")
    if start.tzinfo is None:
        start = start.replace(tzinfo=zi)
    if end.tzinfo is None:
        end = end.replace(tzinfo=zi)
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    if t1 <= t0:
        raise SinkholeError("empty period: the end is not after the start")
    if t1 - t0 > MAX_PERIOD_DAYS * 86400:
        raise SinkholeError(f"period longer than {MAX_PERIOD_DAYS} days; report it in parts")
    now = now or datetime.now(UTC)
    days = _day_bounds(t0, t1, zi)
    clients_recorded = privacy in ("ip", "hashed")

    conn = _connect(db_path)
    try:
        return _query_report(
            conn,
            t0,
            t1,
            zi,
            tz,
            days,
            privacy,
            clients_recorded,
            retention_days,
            groups,
            service_names,
            top,
            now,
        )
    except sqlite3.Error as exc:
        raise StoreError(f"{db_path}: report query failed: {exc}") from exc
    finally:
        conn.close()


def _query_report(
    conn: sqlite3.Connection,
    t0: int,
    t1: int,
    zi: ZoneInfo,
    tz: str,
    days: list[tuple[date, int, int]],
    privacy: str,
    clients_recorded: bool,
    retention_days: int,
    groups: dict[str, list[str]],
    service_names: dict[str, str],
    top: int,
    now: datetime,
) -> dict[str, Any]:
    _fill_parts(conn, t0, t1, days)
    # The gap rule needs no window function (SQLite materialises every partition): with
    # buckets exactly as wide as the gap, only the earliest hit of a bucket can start an
    # attempt (any later one is at most 299 s after it), and it does unless the previous
    # bucket holds a hit at most 300 s before it; two buckets back is always further.
    # The earliest part of a bucket (ties broken by group, day and name: a bucket splits
    # only at a local midnight off the 5-minute grid, when a client changed group, or by
    # name) carries the attempt. Read in `part` key order, both NOT EXISTS are seeks on a
    # key prefix next to the row just read; grouping first would sort before seeking.
    conn.execute(
        f"""CREATE TEMP TABLE step AS
        SELECT day, svc, category, grp, ident, blocked, first, last,
               NOT EXISTS (SELECT 1 FROM part q
                           WHERE q.b = p.b AND q.ident = p.ident AND q.svc = p.svc
                             AND (q.first < p.first OR (q.first = p.first
                                  AND (q.grp, q.day, q.qname) < (p.grp, p.day, p.qname))))
               AND NOT EXISTS (SELECT 1 FROM part r
                           WHERE r.b = p.b - 1 AND r.ident = p.ident AND r.svc = p.svc
                             AND r.last >= p.first - {ATTEMPT_GAP_SECONDS}) AS start
        FROM part p"""
    )
    conn.execute(
        """CREATE TEMP TABLE cell AS
        SELECT day, svc, MAX(category) AS category, grp,
               CASE WHEN ident LIKE 'group:%' THEN NULL ELSE ident END AS client,
               SUM(blocked) AS blocked, SUM(start) AS attempts, MIN(first) AS first,
               MAX(last) AS last
        FROM step GROUP BY day, svc, grp, ident"""
    )
    chat = f"category IS NOT '{BYPASS_CATEGORY}'"
    nullable = (lambda n: n) if clients_recorded else (lambda n: None)

    blocked, attempts, n_clients, first, last, anonymous = conn.execute(
        f"""SELECT COALESCE(SUM(blocked), 0), COALESCE(SUM(attempts), 0),
                   COUNT(DISTINCT client), MIN(first), MAX(last),
                   COALESCE(MAX(client IS NULL), 0)
            FROM cell WHERE {chat}"""
    ).fetchone()
    approximate = not clients_recorded or bool(anonymous)

    queries_by_day = dict(
        conn.execute(
            f"""SELECT {_day_case("minute", days)} AS day, SUM(queries) FROM traffic
                WHERE minute >= ? AND minute < ? GROUP BY day""",
            (t0, t1),
        ).fetchall()
    )
    queries = sum(queries_by_day.values())

    # The previous period by the wall clock: for a week, the ISO week before, even when
    # one of the two weeks has a clock change and so is an hour shorter or longer.
    wall_start = datetime.fromtimestamp(t0, zi).replace(tzinfo=None)
    wall_end = datetime.fromtimestamp(t1, zi).replace(tzinfo=None)
    p0 = int((wall_start - (wall_end - wall_start)).replace(tzinfo=zi).timestamp())
    previous: dict[str, int] = {}
    for source in _sources(conn, p0, t0, [(days[0][0], p0, t0)]):
        for svc, n in conn.execute(
            f"SELECT svc, SUM(blocked) FROM ({source}) WHERE {chat} GROUP BY svc"
        ):
            previous[svc] = previous.get(svc, 0) + n
    services: dict[str, dict[str, Any]] = {}
    for svc, category, s_blocked, s_attempts, s_clients in conn.execute(
        f"""SELECT svc, MAX(category), SUM(blocked), SUM(attempts), COUNT(DISTINCT client)
            FROM cell WHERE {chat} GROUP BY svc"""
    ):
        services[svc] = {
            "id": svc,
            "name": _service_name(svc, service_names),
            "category": category,
            "blocked": s_blocked,
            "attempts": s_attempts,
            "clients": nullable(s_clients),
            "previous_week": previous.get(svc, 0),
        }
    # A service blocked last week and not at all this week is news too.
    for svc, p_blocked in previous.items():
        if svc not in services:
            category = conn.execute(
                "SELECT category FROM hits WHERE COALESCE(service, category, 'custom') = ? "
                "AND ts >= ? AND ts < ? LIMIT 1",
                (svc, p0, t0),
            ).fetchone()[0]
            services[svc] = {
                "id": svc,
                "name": _service_name(svc, service_names),
                "category": category,
                "blocked": 0,
                "attempts": 0,
                "clients": nullable(0),
                "previous_week": p_blocked,
            }

    per_day = {
        d: (b, a)
        for d, b, a in conn.execute(
            f"SELECT day, SUM(blocked), SUM(attempts) FROM cell WHERE {chat} GROUP BY day"
        )
    }
    day_rows = [
        {
            "date": day.isoformat(),
            "weekday": WEEKDAYS[day.weekday()],
            "blocked": per_day.get(i, (0, 0))[0],
            "attempts": per_day.get(i, (0, 0))[1],
            "queries": queries_by_day.get(i, 0),
        }
        for i, (day, _, _) in enumerate(days)
    ]

    group_rows: dict[str, dict[str, Any]] = {}
    if privacy != "none":
        # Configured groups appear with zeros: "ai-lab: 0" is evidence as well.
        for label in [*groups, OTHER_GROUP]:
            group_rows[label] = {
                "group": label,
                "blocked": 0,
                "attempts": 0,
                "clients": nullable(0),
            }
    for grp, g_blocked, g_attempts, g_clients in conn.execute(
        f"""SELECT grp, SUM(blocked), SUM(attempts), COUNT(DISTINCT client)
            FROM cell WHERE {chat} GROUP BY grp"""
    ):
        group_rows[grp] = {
            "group": grp,
            "blocked": g_blocked,
            "attempts": g_attempts,
            "clients": nullable(g_clients),
        }

    top_clients: list[dict[str, Any]] = []
    if clients_recorded:
        top_clients = [
            {"client": c, "group": g, "blocked": b, "attempts": a}
            for c, g, b, a in conn.execute(
                f"""SELECT client, MAX(grp), SUM(blocked) AS b, SUM(attempts) AS a FROM cell
                    WHERE {chat} AND client IS NOT NULL GROUP BY client
                    ORDER BY b DESC, a DESC, client LIMIT ?""",
                (top,),
            )
        ]

    top_names = [
        {"name": n, "service": s, "blocked": b}
        for n, s, b in conn.execute(
            f"""SELECT qname, svc, SUM(blocked) AS b FROM part WHERE {chat}
                GROUP BY qname, svc ORDER BY b DESC, qname LIMIT ?""",
            (top,),
        )
    ]

    bypass = [
        {
            "id": svc,
            "name": _service_name(svc, service_names),
            "blocked": b,
            "attempts": a,
            "clients": nullable(c),
        }
        for svc, b, a, c in conn.execute(
            f"""SELECT svc, SUM(blocked) AS b, SUM(attempts) AS a, COUNT(DISTINCT client)
                FROM cell WHERE category = '{BYPASS_CATEGORY}' GROUP BY svc
                ORDER BY b DESC, svc"""
        )
    ]

    # Not part of any summary table: the cross-tab behind the CSV format.
    breakdown = [
        {
            "date": days[d][0].isoformat(),
            "service": svc,
            "category": cat,
            "group": grp,
            "blocked": b,
            "attempts": a,
        }
        for d, svc, cat, grp, b, a in conn.execute(
            """SELECT day, svc, MAX(category), grp, SUM(blocked), SUM(attempts) FROM cell
               GROUP BY day, svc, grp ORDER BY day, svc, grp"""
        )
    ]

    def by_blocked(row: dict[str, Any]) -> tuple[int, int, str]:
        return (-row["blocked"], -row["attempts"], row.get("id") or row.get("group") or "")

    return {
        "schema": SCHEMA_VERSION,
        "period": {
            "start": _iso(t0, zi),
            "end": _iso(t1, zi),
            "timezone": tz,
            "week": _iso_week(datetime.fromtimestamp(t0, zi), datetime.fromtimestamp(t1, zi), zi),
        },
        "totals": {
            "blocked": blocked,
            "attempts": attempts,
            "clients": nullable(n_clients),
            "queries": queries,
            "blocked_share": round(blocked / queries, 6) if queries else None,
        },
        "services": sorted(services.values(), key=lambda r: (*by_blocked(r), -r["previous_week"])),
        "days": day_rows,
        "groups": sorted(group_rows.values(), key=by_blocked),
        "top_clients": top_clients,
        "top_names": top_names,
        "bypass": bypass,
        "breakdown": breakdown,
        "first_attempt": _iso(first, zi),
        "last_attempt": _iso(last, zi),
        "privacy": {
            "clients": privacy,
            "retention_days": retention_days,
            "note": _privacy_note(privacy, approximate, retention_days, t0, now),
        },
        "gaps": _gaps(conn, t0, min(t1, max(t0, int(now.timestamp()))), zi),
    }


# -- renderers -------------------------------------------------------------------------------


def _title(report: dict[str, Any]) -> str:
    period = report["period"]
    if period["week"]:
        return f"Sinkhole report, week {period['week']}"
    return "Sinkhole report"


def _period_line(report: dict[str, Any]) -> str:
    period = report["period"]
    zi = zone(period["timezone"])
    start = datetime.fromisoformat(period["start"]).astimezone(zi)
    end = datetime.fromisoformat(period["end"]).astimezone(zi)
    # The end is exclusive; a period ending at midnight reads better as the day before.
    last = end - timedelta(seconds=1)
    if start.time() == end.time() == datetime.min.time():
        span = f"{start:%a %Y-%m-%d} to {last:%a %Y-%m-%d}"
    else:
        span = f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} (end excluded)"
    return f"{span}, time zone {period['timezone']}"


def _empty_line(report: dict[str, Any]) -> str:
    return EMPTY_WEEK if report["period"]["week"] else EMPTY_PERIOD


def _empty_banner(report: dict[str, Any]) -> str:
    # "None blocked" is only evidence where the server was recording.
    if report["gaps"]:
        return f"{_empty_line(report)} Recording had gaps in this period; see below."
    return _empty_line(report)


def _is_empty(report: dict[str, Any]) -> bool:
    return report["totals"]["blocked"] == 0 and not report["bypass"]


def _change(blocked: int, previous: int) -> str:
    if previous == 0:
        return "new" if blocked else "0"
    diff = blocked - previous
    return f"{diff:+d} ({diff / previous:+.0%})"


def _share(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.2%}"


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def _short_time(stamp: str | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromisoformat(stamp).strftime("%a %Y-%m-%d %H:%M:%S %z")


def _odd_days(report: dict[str, Any]) -> list[str]:
    zi = zone(report["period"]["timezone"])
    notes = []
    for day in report["days"]:
        d = date.fromisoformat(day["date"])
        lo = datetime.combine(d, datetime.min.time(), zi)
        hi = datetime.combine(d + timedelta(days=1), datetime.min.time(), zi)
        hours = round((hi.timestamp() - lo.timestamp()) / 3600)
        if hours != 24:
            notes.append(f"{day['weekday']} {day['date']} had {hours} hours (clock change).")
    return notes


def _sections(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, headers, rows, text when there are no rows) for every table of the report."""
    totals = report["totals"]
    clients_recorded = report["privacy"]["clients"] in ("ip", "hashed")
    summary = [
        ["Blocked queries", str(totals["blocked"])],
        ["Attempts", str(totals["attempts"])],
        ["Distinct clients", _num(totals["clients"]) if clients_recorded else "not recorded"],
        ["All queries", str(totals["queries"])],
        ["Blocked share", _share(totals["blocked_share"])],
        ["First attempt", _short_time(report["first_attempt"])],
        ["Last attempt", _short_time(report["last_attempt"])],
    ]
    services = [
        [
            s["name"],
            s["id"],
            str(s["blocked"]),
            str(s["attempts"]),
            _num(s["clients"]),
            str(s["previous_week"]),
            _change(s["blocked"], s["previous_week"]),
        ]
        for s in report["services"]
    ]
    days = [
        [d["weekday"], d["date"], str(d["blocked"]), str(d["attempts"]), str(d["queries"])]
        for d in report["days"]
    ]
    groups = [
        [g["group"], str(g["blocked"]), str(g["attempts"]), _num(g["clients"])]
        for g in report["groups"]
    ]
    clients = [
        [c["client"], c["group"], str(c["blocked"]), str(c["attempts"])]
        for c in report["top_clients"]
    ]
    names = [[n["name"], n["service"], str(n["blocked"])] for n in report["top_names"]]
    bypass = [
        [b["name"], b["id"], str(b["blocked"]), str(b["attempts"]), _num(b["clients"])]
        for b in report["bypass"]
    ]
    gaps = [[g["kind"], _short_time(g["start"]), _short_time(g["end"])] for g in report["gaps"]]
    no_clients = (
        f"Clients are not recorded (privacy mode: {report['privacy']['clients']})."
        if not clients_recorded
        else "No clients."
    )
    return [
        ("Summary", ["", ""], summary, ""),
        (
            "Services",
            ["Service", "Id", "Blocked", "Attempts", "Clients", "Previous", "Change"],
            services,
            _empty_line(report),
        ),
        ("Per day", ["Day", "Date", "Blocked", "Attempts", "Queries"], days, ""),
        (
            "Client groups",
            ["Group", "Blocked", "Attempts", "Clients"],
            groups,
            "Client groups are not recorded (privacy mode: none).",
        ),
        ("Top clients", ["Client", "Group", "Blocked", "Attempts"], clients, no_clients),
        ("Top blocked names", ["Name", "Service", "Blocked"], names, "No blocked names."),
        (
            "Bypass attempts (DoH, Private Relay, canary domains)",
            ["Bypass", "Id", "Blocked", "Attempts", "Clients"],
            bypass,
            "No bypass attempts.",
        ),
        (
            "Gaps in recording",
            ["Kind", "From", "To"],
            gaps,
            "None: the server ran and recorded the whole period.",
        ),
    ]


def _footer(report: dict[str, Any]) -> list[str]:
    privacy = report["privacy"]
    lines = [
        f"Privacy mode: {privacy['clients']}; retention: {privacy['retention_days']} days. "
        f"{privacy['note']}",
        "An attempt is a run of one client's lookups of one service with no pause longer than "
        f"{ATTEMPT_GAP_SECONDS // 60} minutes; blocked queries count every lookup.",
    ]
    return lines + _odd_days(report)


def _numeric(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+]?\d+(\.\d+)?%?( \([-+]?\d+%\))?|new|n/a|-", cell))


def render_text(report: dict[str, Any]) -> str:
    """The report as aligned plain-text tables for a terminal or a text email."""
    out = [_title(report), _period_line(report), ""]
    if _is_empty(report):
        out += [_empty_banner(report), ""]
    for title, headers, rows, empty in _sections(report):
        out += [title, "-" * len(title)]
        if not rows:
            out += [empty, ""]
            continue
        table = ([headers] if any(headers) else []) + rows
        widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
        for n, row in enumerate(table):
            cells = [
                c.rjust(w) if _numeric(c) and (n or not any(headers)) else c.ljust(w)
                for c, w in zip(row, widths, strict=True)
            ]
            out.append("  ".join(cells).rstrip())
            if n == 0 and any(headers):
                out.append("  ".join("-" * w for w in widths))
        out.append("")
    out += _footer(report)
    return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables for a wiki page or a ticket."""
    out = [f"# {_title(report)}", "", _period_line(report), ""]
    if _is_empty(report):
        out += [f"**{_empty_banner(report)}**", ""]
    for title, headers, rows, empty in _sections(report):
        out += [f"## {title}", ""]
        if not rows:
            out += [empty, ""]
            continue
        heads = headers if any(headers) else ["Figure", "Value"]
        out.append("| " + " | ".join(_md_cell(h) for h in heads) + " |")
        out.append(
            "|"
            + "|".join("---:" if _numeric(rows[0][i]) else "---" for i in range(len(heads)))
            + "|"
        )
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        out.append("")
    out += [f"_{_md_cell(line)}_" for line in _footer(report)]
    return "\n".join(out) + "\n"


_CSS = """
@page { size: A4; margin: 14mm 12mm; }
* { box-sizing: border-box; }
body { font: 10.5pt/1.4 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; color: #1d2329;
       margin: 0 auto; max-width: 186mm; padding: 8mm 0; background: #fff; }
h1 { font-size: 18pt; margin: 0 0 2pt; }
h2 { font-size: 12.5pt; margin: 16pt 0 5pt; border-bottom: 1.5pt solid #c9d1d9;
     padding-bottom: 2pt; break-after: avoid; }
p.period { color: #57606a; margin: 0 0 10pt; }
p.empty { font-size: 13pt; font-weight: bold; background: #eef6ee; border-left: 4pt solid #2f8f46;
          padding: 6pt 10pt; }
table { border-collapse: collapse; width: 100%; break-inside: avoid; }
th, td { padding: 2.5pt 6pt; border-bottom: 0.75pt solid #d8dee4; text-align: left;
         vertical-align: top; }
th { background: #f2f4f7; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
section { break-inside: avoid; }
svg.chart { display: block; width: 100%; height: auto; margin: 4pt 0 8pt; }
svg.chart text { font: 9px "DejaVu Sans", Arial, sans-serif; fill: #1d2329; }
svg.chart .bar { fill: #3b6ea8; }
svg.chart .axis { stroke: #8c959f; stroke-width: 1; }
.note { color: #57606a; font-size: 9pt; margin: 3pt 0; }
"""


def _h(text: object) -> str:
    return html.escape(str(text), quote=True)


def _days_svg(days: list[dict[str, Any]]) -> str:
    width, height, top, bottom = 680, 190, 18, 34
    slot = (width - 20) / max(len(days), 1)
    bar_w = slot * 0.62
    peak = max([d["blocked"] for d in days] + [1])
    parts = [
        f'<svg class="chart chart-days" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Blocked queries per day">',
        f'<line class="axis" x1="10" y1="{height - bottom}" x2="{width - 10}" '
        f'y2="{height - bottom}"/>',
    ]
    for i, d in enumerate(days):
        h = (height - top - bottom) * d["blocked"] / peak
        x = 10 + i * slot + (slot - bar_w) / 2
        y = height - bottom - h
        cx = x + bar_w / 2
        parts.append(
            f'<rect class="bar" data-date="{_h(d["date"])}" data-blocked="{d["blocked"]}" '
            f'data-attempts="{d["attempts"]}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
            f'height="{h:.1f}"><title>{_h(d["date"])}: {d["blocked"]} blocked, '
            f"{d['attempts']} attempts</title></rect>"
        )
        parts.append(
            f'<text x="{cx:.1f}" y="{y - 4:.1f}" text-anchor="middle">{d["blocked"]}</text>'
        )
        parts.append(
            f'<text x="{cx:.1f}" y="{height - bottom + 13}" text-anchor="middle">'
            f"{_h(d['weekday'])}</text>"
        )
        parts.append(
            f'<text x="{cx:.1f}" y="{height - bottom + 25}" text-anchor="middle">'
            f"{_h(d['date'][5:])}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _services_svg(services: list[dict[str, Any]]) -> str:
    width, row, label_w = 680, 22, 210
    height = row * len(services) + 8
    peak = max([s["blocked"] for s in services] + [1])
    span = width - label_w - 60
    parts = [
        f'<svg class="chart chart-services" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Blocked queries per service">'
    ]
    for i, s in enumerate(services):
        y = 4 + i * row
        w = span * s["blocked"] / peak
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{_h(s["name"])}</text>'
        )
        parts.append(
            f'<rect class="bar" data-service="{_h(s["id"])}" data-blocked="{s["blocked"]}" '
            f'data-attempts="{s["attempts"]}" x="{label_w}" y="{y + 3}" width="{w:.1f}" '
            f'height="{row - 8}"><title>{_h(s["name"])}: {s["blocked"]} blocked</title></rect>'
        )
        parts.append(f'<text x="{label_w + w + 5:.1f}" y="{y + 14}">{s["blocked"]}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained, printable HTML page: inline CSS and SVG, no scripts."""
    title = _title(report)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_h(title)}</h1>",
        f'<p class="period">{_h(_period_line(report))}</p>',
    ]
    if _is_empty(report):
        out.append(f'<p class="empty">{_h(_empty_banner(report))}</p>')
    charts = {
        "Per day": _days_svg(report["days"]),
        "Services": _services_svg(report["services"]) if report["services"] else "",
    }
    for title_, headers, rows, empty in _sections(report):
        out.append(f"<section><h2>{_h(title_)}</h2>")
        out.append(charts.get(title_, ""))
        if not rows:
            out.append(f"<p>{_h(empty)}</p></section>")
            continue
        out.append("<table>")
        if any(headers):
            out.append(
                "<thead><tr>"
                + "".join(
                    f'<th class="{"n" if _numeric(rows[0][i]) else ""}">{_h(h)}</th>'
                    for i, h in enumerate(headers)
                )
                + "</tr></thead>"
            )
        out.append("<tbody>")
        for row in rows:
            out.append(
                "<tr>"
                + "".join(f'<td class="{"n" if _numeric(c) else ""}">{_h(c)}</td>' for c in row)
                + "</tr>"
            )
        out.append("</tbody></table></section>")
    out += [f'<p class="note">{_h(line)}</p>' for line in _footer(report)]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


CSV_COLUMNS = ("date", "service", "category", "group", "blocked", "attempts")


def render_csv(report: dict[str, Any]) -> str:
    """One row per (local day, service, client group) with blocked queries and attempts."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in report["breakdown"]:
        writer.writerow([row[c] if row[c] is not None else "" for c in CSV_COLUMNS])
    return buf.getvalue()


def render_json(report: dict[str, Any]) -> str:
    """The report as JSON with sorted keys, so two runs over the same data are identical."""
    return json.dumps(report, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


RENDERERS = {
    "text": render_text,
    "markdown": render_markdown,
    "html": render_html,
    "csv": render_csv,
    "json": render_json,
}
