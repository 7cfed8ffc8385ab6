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
from resolver.presentation import csv_cell, display_name, markdown_text, strip_controls
from resolver.privacy import Period, periods, read_trail
from resolver.store.rollups import HOUR_SECONDS, ROLLUP_SECONDS, key_sql

SCHEMA_VERSION = 1
#: Hits of one client for one service closer than this belong to one attempt: a browser
#: asks A, AAAA and HTTPS at once and retries for a while.
ATTEMPT_GAP_SECONDS = 300
# The buckets of `hits_attempts` must be exactly one gap wide for the rule it keeps
# (store.py), and an hour of the rollups a whole number of them.
assert ROLLUP_SECONDS == ATTEMPT_GAP_SECONDS and HOUR_SECONDS % ROLLUP_SECONDS == 0
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


#: What the hits hold about clients in each mode, as the privacy note words it.
MODE_WORDS = {
    "ip": "IP addresses",
    "hashed": "pseudonyms",
    "group": "client groups only",
    "none": "neither clients nor groups",
}
#: What hits rewritten to each mode keep.
KEEP_WORDS = {
    "hashed": "pseudonyms instead of IP addresses",
    "group": "the client group only",
    "none": "neither client nor group",
}
CLIENT_MODES = ("ip", "hashed")


def _when(ts: int, zi: ZoneInfo, dated: bool) -> str:
    """A moment for the note: "Tue 14:10", or with its date ("Tue 2026-03-24 14:10")."""
    moment = datetime.fromtimestamp(ts, zi)
    return f"{moment:%a %Y-%m-%d %H:%M}" if dated else f"{moment:%a %H:%M}"


def _runs(spans: list[Period]) -> list[tuple[int, int, str]]:
    """(start, end, mode) of the stretches that hold one mode, adjacent ones merged."""
    runs: list[tuple[int, int, str]] = []
    for p in spans:
        if runs and runs[-1][2] == p.clients:
            runs[-1] = (runs[-1][0], p.end, p.clients)
        else:
            runs.append((p.start, p.end, p.clients))
    return runs


def describe_modes(spans: list[Period], zi: ZoneInfo, dated: bool) -> str:
    """ "IP addresses until Tue 14:10, pseudonyms since": which mode held when."""
    runs = _runs(spans)
    if len(runs) == 1:
        return MODE_WORDS[runs[0][2]]
    parts = [f"{MODE_WORDS[m]} until {_when(end, zi, dated)}" for _, end, m in runs[:-1]]
    return ", ".join([*parts, f"{MODE_WORDS[runs[-1][2]]} since"])


def _ranges(stretches: list[tuple[int, int]], t0: int, t1: int, zi: ZoneInfo, dated: bool) -> str:
    """ "until Tue 14:10", "since Tue 14:10", "from Mon 09:00 to Tue 14:10", joined."""
    merged: list[tuple[int, int]] = []
    for lo, hi in stretches:
        if merged and merged[-1][1] == lo:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    words = []
    for lo, hi in merged:
        if lo <= t0 and hi >= t1:
            words.append("of the whole period")
        elif lo <= t0:
            words.append(f"until {_when(hi, zi, dated)}")
        elif hi >= t1:
            words.append(f"since {_when(lo, zi, dated)}")
        else:
            words.append(f"from {_when(lo, zi, dated)} to {_when(hi, zi, dated)}")
    return " and ".join(words)


def _privacy_note(
    spans: list[Period],
    config_mode: str,
    listed: bool,
    approximate: bool,
    retention_days: int,
    t0: int,
    t1: int,
    zi: ZoneInfo,
    now: datetime,
) -> str:
    """What the hits of the period hold about clients and since when, what the report
    therefore shows, and what retention may have taken."""
    notes = {
        "ip": "Clients are recorded by IP address.",
        "hashed": "Clients are recorded as pseudonyms; their IP addresses are not stored.",
        "group": "Clients are not recorded, only the group of their network.",
        "none": "Neither clients nor their groups are recorded.",
    }
    dated = t1 - t0 > 7 * 86400
    modes = {p.clients for p in spans}
    if len(modes) == 1:
        parts = [notes[spans[0].clients]]
    else:
        parts = [f"Recorded about clients: {describe_modes(spans, zi, dated)}."]
    for when in sorted({p.rewritten for p in spans if p.rewritten is not None}):
        done = [p for p in spans if p.rewritten == when]
        what = _ranges([(p.start, p.end) for p in done], t0, t1, zi, dated)
        parts.append(
            f"The hits {what} were rewritten on {_when(when, zi, True)} by sinkhole privacy "
            f"apply: they keep {KEEP_WORDS[done[0].clients]}."
        )
    with_clients = [(p.start, p.end) for p in spans if p.clients in CLIENT_MODES]
    if listed and len(with_clients) < len(spans):
        parts.append(
            "Client counts and top clients cover only the hits "
            f"{_ranges(with_clients, t0, t1, zi, dated)}, which hold client identities."
        )
    if listed and set(CLIENT_MODES) <= modes:
        parts.append(
            "A client recorded both ways counts twice, by address and by pseudonym; "
            "sinkhole privacy apply makes them one."
        )
    if not listed and with_clients:
        parts.append(
            f"Clients are not listed: privacy.clients is now {config_mode}, though the hits "
            f"{_ranges(with_clients, t0, t1, zi, dated)} hold client identities; "
            "sinkhole privacy apply rewrites them."
        )
    if approximate:
        anonymous = modes - set(CLIENT_MODES)
        who = "service" if anonymous == {"none"} else "client group"
        parts.append(
            f"Attempts are approximate: without client addresses they are counted per {who}."
        )
    horizon = now.timestamp() - retention_days * 86400
    if t0 < horizon:
        parts.append(
            f"Hits older than {retention_days} days are deleted, so part of this period "
            "may be missing."
        )
    return " ".join(parts)


#: The last minutes before now are not judged: their traffic row may not be written yet.
GAP_SETTLE_SECONDS = 120
#: Gap kinds: the server was not running (minutes without a traffic row, which a running
#: server writes every minute), its recorder was behind, or the database had never been
#: used by a server yet (before its first start: no outage, nothing to record).
GAP_DOWN, GAP_BEHIND, GAP_NOT_YET = "server-down", "recorder-behind", "not-yet-running"


def _first_start(conn: sqlite3.Connection) -> int | None:
    """When a server first recorded into this database (older ones: its first traffic row)."""
    row = conn.execute("SELECT value FROM settings WHERE key = 'first_start'").fetchone()
    if row is not None:
        return int(row[0])
    (first,) = conn.execute("SELECT MIN(minute) FROM traffic").fetchone()
    return first


def _gaps(
    conn: sqlite3.Connection, start: int, end: int, zi: ZoneInfo, now: int
) -> list[dict[str, Any]]:
    """Gaps in recording over [start, end), to the minute."""
    gaps: list[tuple[int, int, str]] = []
    first = _first_start(conn)
    if first is None or first >= end:
        if end > start:
            gaps.append((start, end, GAP_NOT_YET))
        lo = end
    else:
        first_minute = first - first % 60
        if start < first_minute:
            gaps.append((start, first_minute, GAP_NOT_YET))
        lo = max(start, first_minute)
    lo -= lo % 60
    hi = min(end, now - GAP_SETTLE_SECONDS)
    if hi > lo:
        present = {
            m
            for (m,) in conn.execute(
                "SELECT minute FROM traffic WHERE minute >= ? AND minute < ?", (lo, hi)
            )
        }
        run: int | None = None
        for minute in range(lo, hi, 60):
            if minute not in present:
                if run is None:
                    run = minute
            elif run is not None:
                gaps.append((max(run, start), minute, GAP_DOWN))
                run = None
        if run is not None:
            gaps.append((max(run, start), hi, GAP_DOWN))
    # Runs of consecutive lagging minutes: minute/60 - row_number is constant along a run.
    rows = conn.execute(
        """SELECT MIN(minute), MAX(minute) + 60 FROM (
             SELECT minute, minute / 60 - ROW_NUMBER() OVER (ORDER BY minute) AS run
             FROM traffic WHERE recorder_lag > 0 AND minute >= ? AND minute < ?)
           GROUP BY run ORDER BY 1""",
        (start, end),
    )
    gaps.extend((lo, min(hi, end), GAP_BEHIND) for lo, hi in rows)
    gaps.sort()
    return [{"start": _iso(lo, zi), "end": _iso(hi, zi), "kind": kind} for lo, hi, kind in gaps]


def _has_rollups(conn: sqlite3.Connection) -> bool:
    # A database older than migration m003 has only the hits (and maybe the m002 rollup,
    # which this code no longer reads); the report still reads it, from the hits alone.
    return (
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'hits_hour_client'"
        ).fetchone()
        is not None
    )


class _Plan:
    """Which part of [t0, t1) the report reads from the hour rollups and which from `hits`.

    The rollups serve the hours [first, last): those that lie whole in [t0 + settled, t1).
    The rest of the period, `raw`, is read from the hits. With `settled` (300 s), hours
    less than 300 s after t0 are read from the hits: a lookup there may start an attempt
    by the report's rule, which looks at the period only, where the stored rule saw a
    lookup just before the period. `cut` are the hours of [first, last) with a local
    midnight inside (zones 30 or 45 minutes off UTC, or any offset in the past): the
    per-day sums read them from the hits and `hits_attempts`, the other sums do not
    need the day.
    """

    def __init__(self, t0: int, t1: int, cuts: list[int], rollups: bool, settled: int = 0) -> None:
        h = HOUR_SECONDS
        self.first, self.last = -(-(t0 + settled) // h), t1 // h
        if not rollups or self.first >= self.last:
            self.first = self.last = 0
            self.raw = [(t0, t1)]
        else:
            self.raw = [r for r in ((t0, self.first * h), (self.last * h, t1)) if r[0] < r[1]]
        self.cut = sorted({c // h for c in cuts if c % h and self.first <= c // h < self.last})

    def hours(self, *, cut: bool = False) -> str:
        """The WHERE condition on a rollup's `hour` for the hours it serves, without the
        cut hours when `cut`."""
        skip = ""
        if cut and self.cut:
            skip = f" AND hour NOT IN ({', '.join(map(str, self.cut))})"
        return f"hour >= {self.first} AND hour < {self.last}{skip}"


def _raw_sql(lo: int, hi: int, t0: int, days: list[tuple[date, int, int]]) -> str:
    """The hits of [lo, hi) as (day, ident, svc, grp, cat, qname, blocked, attempts), the
    attempts by the report's rule: a lookup starts one unless the same client looked up
    the same service at most 300 s before, within the period (from t0). Ties in the same
    second go to the hit written first, as in `hits_attempts`. All bounds are integers we
    computed, so inlining them is safe."""
    ctx = max(t0, lo - ATTEMPT_GAP_SECONDS)
    return f"""SELECT day, ident, svc, grp, cat, qname, SUM(count), SUM(start) FROM (
        SELECT ts, {_day_case("ts", days)} AS day, ident, svc, grp, cat, qname, count,
               COALESCE(ts - LAG(ts) OVER (PARTITION BY ident, svc ORDER BY ts, id)
                        > {ATTEMPT_GAP_SECONDS}, 1) AS start
        FROM (SELECT id, ts, {key_sql("ident")} AS ident, {key_sql("svc")} AS svc,
                     {key_sql("grp")} AS grp, {key_sql("cat")} AS cat, qname, count
              FROM hits WHERE ts >= {ctx} AND ts < {hi}))
    WHERE ts >= {lo} GROUP BY day, ident, svc, grp, cat, qname"""


def _fill_sums(
    conn: sqlite3.Connection, t0: int, t1: int, days: list[tuple[date, int, int]]
) -> None:
    """The temp tables the figures of [t0, t1) are read from, each a few thousand rows:
    `dsum` (day, svc, grp, cat), `isum` (ident, svc, grp, cat) and `nsum` (qname, svc,
    cat), with blocked queries and attempts (`nsum`: blocked, chatbot services only)."""
    plan = _Plan(t0, t1, [lo for _, lo, _ in days[1:]], _has_rollups(conn), ATTEMPT_GAP_SECONDS)
    for table in ("raw", "dsum", "isum", "nsum"):
        conn.execute(f"DROP TABLE IF EXISTS temp.{table}")
    conn.execute(
        """CREATE TEMP TABLE raw (day INTEGER, ident TEXT, svc TEXT, grp TEXT, cat TEXT,
             qname TEXT, blocked INTEGER, attempts INTEGER)"""
    )
    for lo, hi in plan.raw:
        conn.execute(f"INSERT INTO raw {_raw_sql(lo, hi, t0, days)}")
    tables = {
        "dsum": ("day", "svc", "grp", "cat"),
        "isum": ("ident", "svc", "grp", "cat"),
        "nsum": ("qname", "svc", "cat"),
    }
    for table, cols in tables.items():
        sums = "blocked INTEGER" + ("" if table == "nsum" else ", attempts INTEGER")
        conn.execute(
            f"CREATE TEMP TABLE {table} ({', '.join(cols)}, {sums}, "
            f"PRIMARY KEY ({', '.join(cols)})) WITHOUT ROWID"
        )
    chat = f"cat IS NOT '{BYPASS_CATEGORY}'"
    if plan.first < plan.last:
        conn.execute(
            f"""INSERT INTO dsum SELECT {_day_case(f"hour * {HOUR_SECONDS}", days)} AS day,
                       svc, grp, cat, SUM(blocked), SUM(attempts)
                FROM hits_hour WHERE {plan.hours(cut=True)} GROUP BY day, svc, grp, cat"""
        )
        conn.execute(
            f"""INSERT INTO isum SELECT ident, svc, grp, cat, SUM(blocked), SUM(attempts)
                FROM hits_hour_client WHERE {plan.hours()} GROUP BY ident, svc, grp, cat"""
        )
        conn.execute(
            f"""INSERT INTO nsum SELECT qname, svc, cat, SUM(blocked) FROM hits_hour_name
                WHERE {plan.hours()} AND {chat} GROUP BY qname, svc, cat"""
        )
    upsert = "ON CONFLICT DO UPDATE SET blocked = blocked + excluded.blocked"
    attempts = ", attempts = attempts + excluded.attempts"
    for hour in plan.cut:
        # An hour cut by a local midnight, for the per-day sums: blocked queries from the
        # hits, attempts from `hits_attempts`, each on the day of its first lookup.
        lo = hour * HOUR_SECONDS
        per = HOUR_SECONDS // ROLLUP_SECONDS
        keys = ", ".join(f"{key_sql(c)} AS {c}" for c in ("svc", "grp", "cat"))
        conn.execute(
            f"""INSERT INTO dsum SELECT {_day_case("ts", days)} AS day, {keys}, SUM(count), 0
                FROM hits WHERE ts >= {lo} AND ts < {lo + HOUR_SECONDS}
                GROUP BY day, svc, grp, cat {upsert}"""
        )
        conn.execute(
            f"""INSERT INTO dsum SELECT {_day_case("first_ts", days)} AS day, svc, grp, cat,
                       0, COUNT(*)
                FROM hits_attempts WHERE bucket >= {hour * per} AND bucket < {hour * per + per}
                 AND start GROUP BY day, svc, grp, cat {upsert}{attempts}"""
        )
    for table, cols in tables.items():
        keys = ", ".join(cols)
        if table == "nsum":
            sums, update, where = "SUM(blocked)", "", chat
        else:
            sums, update, where = "SUM(blocked), SUM(attempts)", attempts, "true"
        conn.execute(
            f"""INSERT INTO {table} SELECT {keys}, {sums} FROM raw WHERE {where}
                GROUP BY {keys} {upsert}{update}"""
        )


def _blocked_by_service(
    conn: sqlite3.Connection, p0: int, t0: int
) -> dict[str, tuple[str | None, int]]:
    """Blocked queries of chatbot services in [p0, t0): {svc: (category, blocked)}."""
    plan = _Plan(p0, t0, [], _has_rollups(conn))
    parts = [
        f"""SELECT {key_sql("svc")} AS svc, {key_sql("cat")} AS cat, count AS blocked
            FROM hits WHERE ts >= {lo} AND ts < {hi}"""
        for lo, hi in plan.raw
    ]
    if plan.first < plan.last:
        parts.append(f"SELECT svc, cat, blocked FROM hits_hour WHERE {plan.hours()}")
    return {
        svc: (category, n)
        for svc, category, n in conn.execute(
            f"""SELECT svc, MAX(NULLIF(cat, '')), SUM(blocked) FROM ({" UNION ALL ".join(parts)})
                WHERE cat IS NOT '{BYPASS_CATEGORY}' GROUP BY svc"""
        )
    }


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
    retention_days: int,
    groups: dict[str, list[str]],
    service_names: dict[str, str],
    top: int,
    now: datetime,
) -> dict[str, Any]:
    # What the hits of the period hold, from the audit trail; the config's mode (`privacy`)
    # only for a database without one. Clients are listed where some hits hold them,
    # unless the config now records none: its word on what people may see.
    spans = periods(*read_trail(conn), t0, t1, privacy)
    clients_recorded = privacy in CLIENT_MODES and any(p.clients in CLIENT_MODES for p in spans)
    _fill_sums(conn, t0, t1, days)
    chat = f"cat IS NOT '{BYPASS_CATEGORY}'"
    client = "CASE WHEN ident LIKE 'group:%' THEN NULL ELSE ident END"
    nullable = (lambda n: n) if clients_recorded else (lambda n: None)

    blocked, attempts, n_clients, anonymous = conn.execute(
        f"""SELECT COALESCE(SUM(blocked), 0), COALESCE(SUM(attempts), 0),
                   COUNT(DISTINCT {client}), COALESCE(MAX(ident LIKE 'group:%'), 0)
            FROM isum WHERE {chat}"""
    ).fetchone()
    # Attempts are counted per client where the hits hold one, listed or not.
    approximate = bool(anonymous) or not any(p.clients in CLIENT_MODES for p in spans)
    # The first and last lookup, by the index on ts from either end of the period.
    first, last = (
        conn.execute(
            f"""SELECT MIN(ts) FROM (SELECT ts FROM hits WHERE ts >= ? AND ts < ?
                AND category IS NOT '{BYPASS_CATEGORY}' ORDER BY ts {order} LIMIT 1)""",
            (t0, t1),
        ).fetchone()[0]
        for order in ("ASC", "DESC")
    )

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
    previous = _blocked_by_service(conn, p0, t0)
    services: dict[str, dict[str, Any]] = {}
    for svc, category, s_blocked, s_attempts, s_clients in conn.execute(
        f"""SELECT svc, MAX(NULLIF(cat, '')), SUM(blocked), SUM(attempts),
                   COUNT(DISTINCT {client})
            FROM isum WHERE {chat} GROUP BY svc"""
    ):
        services[svc] = {
            "id": svc,
            "name": _service_name(svc, service_names),
            "category": category,
            "blocked": s_blocked,
            "attempts": s_attempts,
            "clients": nullable(s_clients),
            "previous_week": previous.get(svc, (None, 0))[1],
        }
    # A service blocked last week and not at all this week is news too.
    for svc, (category, p_blocked) in previous.items():
        if svc not in services:
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
            f"SELECT day, SUM(blocked), SUM(attempts) FROM dsum WHERE {chat} GROUP BY day"
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
    if any(p.clients != "none" for p in spans):
        # Configured groups appear with zeros: "ai-lab: 0" is evidence as well.
        for label in [*groups, OTHER_GROUP]:
            group_rows[label] = {
                "group": label,
                "blocked": 0,
                "attempts": 0,
                "clients": nullable(0),
            }
    for grp, g_blocked, g_attempts, g_clients in conn.execute(
        f"""SELECT grp, SUM(blocked), SUM(attempts), COUNT(DISTINCT {client})
            FROM isum WHERE {chat} GROUP BY grp"""
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
                f"""SELECT ident, MAX(grp), SUM(blocked) AS b, SUM(attempts) AS a FROM isum
                    WHERE {chat} AND ident NOT LIKE 'group:%' GROUP BY ident
                    ORDER BY b DESC, a DESC, ident LIMIT ?""",
                (top,),
            )
        ]

    top_names = [
        {"name": display_name(n), "service": s, "blocked": b}
        for n, s, b in conn.execute(
            """SELECT qname, svc, SUM(blocked) AS b FROM nsum
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
            f"""SELECT svc, SUM(blocked) AS b, SUM(attempts) AS a, COUNT(DISTINCT {client})
                FROM isum WHERE cat = '{BYPASS_CATEGORY}' GROUP BY svc
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
            """SELECT day, svc, MAX(NULLIF(cat, '')), grp, SUM(blocked), SUM(attempts)
               FROM dsum GROUP BY day, svc, grp ORDER BY day, svc, grp"""
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
            "clients": spans[-1].clients,
            "clients_listed": clients_recorded,
            "periods": [
                {
                    "clients": p.clients,
                    "recorded": p.recorded,
                    "rewritten": _iso(p.rewritten, zi),
                    "from": _iso(p.start, zi),
                    "until": _iso(p.end, zi),
                }
                for p in spans
            ],
            "retention_days": retention_days,
            "note": _privacy_note(
                spans, privacy, clients_recorded, approximate, retention_days, t0, t1, zi, now
            ),
        },
        "gaps": _gaps(conn, t0, min(t1, max(t0, int(now.timestamp()))), zi, int(now.timestamp())),
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


class _Name(str):
    """A cell that holds a name from the wire (already in presentation format): markdown
    shows it as a code span, where no autolink or emphasis can form."""


def _sections(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, headers, rows, text when there are no rows) for every table of the report.

    Every cell is text without control characters: names from the wire as
    `display_name` renders them, everything else through `strip_controls`.
    """
    return [
        (title, headers, [[_clean(c) for c in row] for row in rows], empty)
        for title, headers, rows, empty in _raw_sections(report)
    ]


def _clean(cell: str) -> str:
    if isinstance(cell, _Name):
        return _Name(display_name(cell))
    return strip_controls(cell).replace("\n", " ")


def _raw_sections(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], str]]:
    totals = report["totals"]
    clients_recorded = report["privacy"]["clients_listed"]
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
    names = [[_Name(n["name"]), n["service"], str(n["blocked"])] for n in report["top_names"]]
    bypass = [
        [b["name"], b["id"], str(b["blocked"]), str(b["attempts"]), _num(b["clients"])]
        for b in report["bypass"]
    ]
    gaps = [[g["kind"], _short_time(g["start"]), _short_time(g["end"])] for g in report["gaps"]]
    spans = _spans(report)
    if clients_recorded:
        no_clients = "No clients."
    elif any(p.clients in CLIENT_MODES for p in spans):
        no_clients = "Clients are not listed in the current privacy mode: see the note below."
    else:
        no_clients = f"Clients are not recorded (privacy mode: {report['privacy']['clients']})."
    top_title = "Top clients"
    if clients_recorded and len(_runs(spans)) > 1:
        zi = zone(report["period"]["timezone"])
        dated = spans[-1].end - spans[0].start > 7 * 86400
        top_title = f"Top clients ({describe_modes(spans, zi, dated)})"
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
        (top_title, ["Client", "Group", "Blocked", "Attempts"], clients, no_clients),
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


def _spans(report: dict[str, Any]) -> list[Period]:
    """The report's privacy periods back as `Period`s."""
    return [
        Period(
            _ts_of(p["from"]),
            _ts_of(p["until"]),
            p["clients"],
            p["recorded"],
            None if p["rewritten"] is None else _ts_of(p["rewritten"]),
        )
        for p in report["privacy"]["periods"]
    ]


def _ts_of(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp())


def _day_privacy(report: dict[str, Any], day: str) -> str:
    """The modes of one local day for the CSV: "ip", or "ip until 14:10, hashed since"."""
    zi = zone(report["period"]["timezone"])
    d = date.fromisoformat(day)
    lo = int(datetime.combine(d, datetime.min.time(), zi).timestamp())
    hi = int(datetime.combine(d + timedelta(days=1), datetime.min.time(), zi).timestamp())
    runs = [r for r in _runs(_spans(report)) if r[0] < hi and r[1] > lo]
    if len(runs) == 1:
        return runs[0][2]
    parts = [f"{m} until {datetime.fromtimestamp(end, zi):%H:%M}" for _, end, m in runs[:-1]]
    return ", ".join([*parts, f"{runs[-1][2]} since"])


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
    if isinstance(text, _Name):
        return f"`{text}`"  # presentation format holds no backtick: \\096
    return markdown_text(text).replace("\n", " ")


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
    """One row per (local day, service, client group) with blocked queries and attempts,
    and the privacy mode(s) the day's hits are stored with."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow((*CSV_COLUMNS, "privacy"))
    modes: dict[str, str] = {}
    for row in report["breakdown"]:
        if row["date"] not in modes:
            modes[row["date"]] = _day_privacy(report, row["date"])
        cells = [
            csv_cell(strip_controls(str(row[c]))) if row[c] is not None else "" for c in CSV_COLUMNS
        ]
        writer.writerow([*cells, modes[row["date"]]])
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
