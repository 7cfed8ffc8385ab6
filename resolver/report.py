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
from resolver.i18n import DEFAULT_LANGUAGE, N_, Language
from resolver.presentation import csv_cell, display_name, markdown_text, strip_controls
from resolver.privacy import Period, periods, read_trail
from resolver.store import HOUR_SECONDS, ROLLUP_SECONDS, key_sql

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
EMPTY_WEEK = N_("No blocked attempts this week.")
EMPTY_PERIOD = N_("No blocked attempts in this period.")

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


def _service_name(svc: str, service_names: dict[str, str], lang: Language) -> str:
    if svc in service_names:
        return service_names[svc]
    if svc == "custom":
        return lang._("Custom rules")
    if svc.startswith("list:"):
        return lang._("Imported list %(name)s", name=svc[5:])
    return svc


def _iso(ts: int | None, zi: ZoneInfo) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, zi).isoformat()


#: What the hits hold about clients in each mode, as the privacy note words it.
MODE_WORDS = {
    "ip": N_("IP addresses"),
    "hashed": N_("pseudonyms"),
    "group": N_("client groups only"),
    "none": N_("neither clients nor groups"),
}
#: What hits rewritten to each mode keep.
KEEP_WORDS = {
    "hashed": N_("pseudonyms instead of IP addresses"),
    "group": N_("the client group only"),
    "none": N_("neither client nor group"),
}
CLIENT_MODES = ("ip", "hashed")


def _when(ts: int, zi: ZoneInfo, dated: bool, lang: Language) -> str:
    """A moment for the note: "Tue 14:10", or with its date ("Tue 2026-03-24 14:10")."""
    return lang.moment(datetime.fromtimestamp(ts, zi), dated=dated)


def _runs(spans: list[Period]) -> list[tuple[int, int, str]]:
    """(start, end, mode) of the stretches that hold one mode, adjacent ones merged."""
    runs: list[tuple[int, int, str]] = []
    for p in spans:
        if runs and runs[-1][2] == p.clients:
            runs[-1] = (runs[-1][0], p.end, p.clients)
        else:
            runs.append((p.start, p.end, p.clients))
    return runs


def describe_modes(
    spans: list[Period], zi: ZoneInfo, dated: bool, lang: Language | None = None
) -> str:
    """ "IP addresses until Tue 14:10, pseudonyms since": which mode held when."""
    lang = lang or Language()
    runs = _runs(spans)
    if len(runs) == 1:
        return lang._(MODE_WORDS[runs[0][2]])
    parts = [
        lang._(
            "%(mode)s until %(when)s", mode=lang._(MODE_WORDS[m]), when=_when(end, zi, dated, lang)
        )
        for _, end, m in runs[:-1]
    ]
    return ", ".join([*parts, lang._("%(mode)s since", mode=lang._(MODE_WORDS[runs[-1][2]]))])


def _ranges(
    stretches: list[tuple[int, int]], t0: int, t1: int, zi: ZoneInfo, dated: bool, lang: Language
) -> str:
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
            words.append(lang._("of the whole period"))
        elif lo <= t0:
            words.append(lang._("until %(when)s", when=_when(hi, zi, dated, lang)))
        elif hi >= t1:
            words.append(lang._("since %(when)s", when=_when(lo, zi, dated, lang)))
        else:
            words.append(
                lang._(
                    "from %(start)s to %(end)s",
                    start=_when(lo, zi, dated, lang),
                    end=_when(hi, zi, dated, lang),
                )
            )
    return lang._(" and ").join(words)


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
    lang: Language,
) -> str:
    """What the hits of the period hold about clients and since when, what the report
    therefore shows, and what retention may have taken."""
    _ = lang._
    notes = {
        "ip": N_("Clients are recorded by IP address."),
        "hashed": N_("Clients are recorded as pseudonyms; their IP addresses are not stored."),
        "group": N_("Clients are not recorded, only the group of their network."),
        "none": N_("Neither clients nor their groups are recorded."),
    }
    dated = t1 - t0 > 7 * 86400
    modes = {p.clients for p in spans}
    if len(modes) == 1:
        parts = [_(notes[spans[0].clients])]
    else:
        parts = [
            _("Recorded about clients: %(modes)s.", modes=describe_modes(spans, zi, dated, lang))
        ]
    for when in sorted({p.rewritten for p in spans if p.rewritten is not None}):
        done = [p for p in spans if p.rewritten == when]
        what = _ranges([(p.start, p.end) for p in done], t0, t1, zi, dated, lang)
        parts.append(
            _(
                "The hits %(what)s were rewritten on %(when)s by sinkhole privacy apply: "
                "they keep %(kept)s.",
                what=what,
                when=_when(when, zi, True, lang),
                kept=_(KEEP_WORDS[done[0].clients]),
            )
        )
    with_clients = [(p.start, p.end) for p in spans if p.clients in CLIENT_MODES]
    if listed and len(with_clients) < len(spans):
        parts.append(
            _(
                "Client counts and top clients cover only the hits %(what)s, which hold "
                "client identities.",
                what=_ranges(with_clients, t0, t1, zi, dated, lang),
            )
        )
    if listed and set(CLIENT_MODES) <= modes:
        parts.append(
            _(
                "A client recorded both ways counts twice, by address and by pseudonym; "
                "sinkhole privacy apply makes them one."
            )
        )
    if not listed and with_clients:
        parts.append(
            _(
                "Clients are not listed: privacy.clients is now %(mode)s, though the hits "
                "%(what)s hold client identities; sinkhole privacy apply rewrites them.",
                mode=config_mode,
                what=_ranges(with_clients, t0, t1, zi, dated, lang),
            )
        )
    if approximate:
        anonymous = modes - set(CLIENT_MODES)
        if anonymous == {"none"}:
            parts.append(
                _(
                    "Attempts are approximate: without client addresses they are counted per "
                    "service."
                )
            )
        else:
            parts.append(
                _(
                    "Attempts are approximate: without client addresses they are counted per "
                    "client group."
                )
            )
    horizon = now.timestamp() - retention_days * 86400
    if t0 < horizon:
        parts.append(
            _(
                "Hits older than %(days)s days are deleted, so part of this period may be missing.",
                days=lang.number(retention_days),
            )
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


#: Policy changes the report lists one by one; the rest are counted (`lists history`).
MAX_CHANGES = 50
#: `sinkhole lists import|update|remove ...` as `command_line` writes it into the audit trail.
_LIST_COMMAND_RE = re.compile(r"^\S+ lists (import|update|remove)(?: |$)")
#: The detail `Store.import_list` writes: "NAME from SOURCE: N names", "(+A -R)" on a change.
_LIST_DETAIL_RE = re.compile(
    r"^(?P<list>\S+) from (?P<source>.*): (?P<names>\d+) names"
    r"(?: \(\+(?P<added>\d+) -(?P<removed>\d+)\))?$"
)


def _utc_text(ts: int) -> str:
    """A moment as the audit trail and `lists.added` write it (store.utcnow_text)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _local_text(stamp: str, zi: ZoneInfo) -> str:
    return datetime.fromisoformat(stamp).astimezone(zi).isoformat()


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _changes(
    conn: sqlite3.Connection,
    t0: int,
    t1: int,
    zi: ZoneInfo,
    service_names: dict[str, str],
    lang: Language,
) -> dict[str, Any]:
    """What changed in the policy in [t0, t1): catalog services first seen (an upgrade or a
    catalog edit, at a start or reload), imported lists imported, updated or removed, and
    the other policy changes of the audit trail, the first MAX_CHANGES of them."""
    lo, hi = _utc_text(t0), _utc_text(t1)
    services = []
    # A database of the report tables alone (tests, a copy for an auditor) has no policy.
    if "added" in _columns(conn, "lists"):
        services = [
            {
                "id": sid,
                "name": _service_name(sid, service_names, lang),
                "category": category,
                "enabled": bool(enabled),
                "added": _local_text(added, zi),
            }
            for sid, category, enabled, added in conn.execute(
                "SELECT name, category, enabled, added FROM lists WHERE kind = 'service' "
                "AND added IS NOT NULL AND added >= ? AND added < ? ORDER BY added, name",
                (lo, hi),
            )
        ]
    lists: list[dict[str, Any]] = []
    policy: list[dict[str, Any]] = []
    omitted = 0
    rows = []
    if _columns(conn, "audit"):
        rows = conn.execute(
            "SELECT id, ts, user, command, comment, detail FROM audit "
            "WHERE ts >= ? AND ts < ? ORDER BY id",
            (lo, hi),
        ).fetchall()
    for row_id, ts, user, command, comment, detail in rows:
        verb = _LIST_COMMAND_RE.match(command or "")
        event = _list_event(conn, verb[1], row_id, detail or "") if verb else None
        if event is not None:
            lists.append(
                {**event, "at": _local_text(ts, zi), "user": user, "comment": comment or None}
            )
        elif len(policy) < MAX_CHANGES:
            policy.append(
                {
                    "at": _local_text(ts, zi),
                    "user": user,
                    "command": command,
                    "comment": comment or None,
                    "detail": detail or None,
                }
            )
        else:
            omitted += 1
    return {"new_services": services, "lists": lists, "policy": policy, "policy_omitted": omitted}


def _list_event(
    conn: sqlite3.Connection, verb: str, row_id: int, detail: str
) -> dict[str, Any] | None:
    """One imported list's change from its audit row; None if the row says too little."""
    if verb == "remove":
        name = detail.strip()
        if not name:
            return None
        # How many names it had: the last import or update of it before the removal.
        names = None
        for (earlier,) in conn.execute(
            "SELECT detail FROM audit WHERE id < ? AND detail LIKE ? ORDER BY id DESC",
            (row_id, f"{name} from %"),
        ):
            m = _LIST_DETAIL_RE.match(earlier or "")
            if m and m["list"] == name:
                names = int(m["names"])
                break
        return {
            "list": name,
            "change": "removed",
            "source": None,
            "added": 0,
            "removed": names,
            "names": 0,
        }
    m = _LIST_DETAIL_RE.match(detail)
    if not m:
        return None
    names = int(m["names"])
    if m["added"] is None:  # a first import: every name is new
        return {
            "list": m["list"],
            "change": "imported",
            "source": m["source"],
            "added": names,
            "removed": 0,
            "names": names,
        }
    return {
        "list": m["list"],
        "change": "updated",
        "source": m["source"],
        "added": int(m["added"]),
        "removed": int(m["removed"]),
        "names": names,
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
    lang: str = DEFAULT_LANGUAGE,
) -> dict[str, Any]:
    """The report of blocked attempts in [start, end) as the schema-1 dict (docs/report.md),
    its human text (names of custom rules and lists, the privacy note) in `lang`.

    Raises:
        SinkholeError: bad period, time zone or privacy mode; StoreError: unreadable database.
    """
    zi = zone(tz)
    try:
        language = Language(lang)
    except ValueError as exc:
        raise SinkholeError(str(exc)) from None
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
            language,
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
    lang: Language,
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
            "name": _service_name(svc, service_names, lang),
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
                "name": _service_name(svc, service_names, lang),
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
            "name": _service_name(svc, service_names, lang),
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
                spans, privacy, clients_recorded, approximate, retention_days, t0, t1, zi, now, lang
            ),
        },
        "gaps": _gaps(conn, t0, min(t1, max(t0, int(now.timestamp()))), zi, int(now.timestamp())),
        "changes": _changes(conn, t0, t1, zi, service_names, lang),
        "lang": lang.lang,
    }


# -- renderers -------------------------------------------------------------------------------


def language_of(report: dict[str, Any]) -> Language:
    """The language a report dict was built in (English for a dict without "lang")."""
    return Language(report.get("lang") or DEFAULT_LANGUAGE)


def _title(report: dict[str, Any], lang: Language) -> str:
    period = report["period"]
    if period["week"]:
        return lang._("Sinkhole report, week %(week)s", week=period["week"])
    return lang._("Sinkhole report")


def _period_line(report: dict[str, Any], lang: Language) -> str:
    period = report["period"]
    zi = zone(period["timezone"])
    start = datetime.fromisoformat(period["start"]).astimezone(zi)
    end = datetime.fromisoformat(period["end"]).astimezone(zi)
    # The end is exclusive; a period ending at midnight reads better as the day before.
    last = end - timedelta(seconds=1)
    if start.time() == end.time() == datetime.min.time():
        span = lang._(
            "%(start)s to %(end)s",
            start=lang.day(start.date(), WEEKDAYS[start.weekday()]),
            end=lang.day(last.date(), WEEKDAYS[last.weekday()]),
        )
    elif lang.english:
        span = f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} (end excluded)"
    else:
        span = lang._(
            "%(start)s to %(end)s (end excluded)",
            start=lang.moment(start, dated=True),
            end=lang.moment(end, dated=True),
        )
    return lang._("%(span)s, time zone %(zone)s", span=span, zone=period["timezone"])


def _empty_line(report: dict[str, Any], lang: Language) -> str:
    return lang._(EMPTY_WEEK if report["period"]["week"] else EMPTY_PERIOD)


def _empty_banner(report: dict[str, Any], lang: Language) -> str:
    # "None blocked" is only evidence where the server was recording.
    if report["gaps"]:
        return lang._(
            "%(empty)s Recording had gaps in this period; see below.",
            empty=_empty_line(report, lang),
        )
    return _empty_line(report, lang)


def _is_empty(report: dict[str, Any]) -> bool:
    return report["totals"]["blocked"] == 0 and not report["bypass"]


def _change(blocked: int, previous: int, lang: Language) -> str:
    if previous == 0:
        return lang._("new") if blocked else lang.number(0)
    diff = blocked - previous
    return f"{lang.signed(diff)} ({lang.signed_percent(diff / previous)})"


def _share(share: float | None, lang: Language) -> str:
    return lang._("n/a") if share is None else lang.percent(share)


def _num(value: int | None, lang: Language) -> str:
    return "-" if value is None else lang.number(value)


def _short_time(stamp: str | None, lang: Language) -> str:
    if stamp is None:
        return "-"
    when = datetime.fromisoformat(stamp)
    if lang.english:
        return when.strftime("%a %Y-%m-%d %H:%M:%S %z")
    return f"{lang.moment(when, dated=True, seconds=True)} {when:%z}"


def _odd_days(report: dict[str, Any], lang: Language) -> list[str]:
    zi = zone(report["period"]["timezone"])
    notes = []
    for day in report["days"]:
        d = date.fromisoformat(day["date"])
        lo = datetime.combine(d, datetime.min.time(), zi)
        hi = datetime.combine(d + timedelta(days=1), datetime.min.time(), zi)
        hours = round((hi.timestamp() - lo.timestamp()) / 3600)
        if hours != 24:
            notes.append(
                lang._(
                    "%(day)s had %(hours)s hours (clock change).",
                    day=lang.day(d, day["weekday"]),
                    hours=hours,
                )
            )
    return notes


class _Name(str):
    """A cell that holds a name from the wire (already in presentation format): markdown
    shows it as a code span, where no autolink or emphasis can form."""


def _sections(
    report: dict[str, Any], lang: Language | None = None
) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, headers, rows, text when there are no rows) for every table of the report.

    Every cell is text without control characters: names from the wire as
    `display_name` renders them, everything else through `strip_controls`.
    """
    lang = lang or language_of(report)
    return [
        (title, headers, [[_clean(c) for c in row] for row in rows], empty)
        for title, headers, rows, empty in _raw_sections(report, lang)
    ]


def _clean(cell: str) -> str:
    if isinstance(cell, _Name):
        return _Name(display_name(cell))
    return strip_controls(cell).replace("\n", " ")


#: The gap kinds as the tables word them (the JSON keeps the kind itself).
GAP_WORDS = {
    GAP_DOWN: N_("server-down"),
    GAP_BEHIND: N_("recorder-behind"),
    GAP_NOT_YET: N_("not-yet-running"),
}
#: The changes of an imported list as the tables word them.
LIST_CHANGE_WORDS = {
    "imported": N_("imported"),
    "updated": N_("updated"),
    "removed": N_("removed"),
}
#: Section ids: the HTML report puts its charts by them, whatever the language.
DAYS_SECTION, SERVICES_SECTION = 2, 1


def _raw_sections(
    report: dict[str, Any], lang: Language
) -> list[tuple[str, list[str], list[list[str]], str]]:
    _ = lang._
    n = lang.number
    totals = report["totals"]
    clients_recorded = report["privacy"]["clients_listed"]
    summary = [
        [_("Blocked queries"), n(totals["blocked"])],
        [_("Attempts"), n(totals["attempts"])],
        [
            _("Distinct clients"),
            _num(totals["clients"], lang) if clients_recorded else _("not recorded"),
        ],
        [_("All queries"), n(totals["queries"])],
        [_("Blocked share"), _share(totals["blocked_share"], lang)],
        [_("First attempt"), _short_time(report["first_attempt"], lang)],
        [_("Last attempt"), _short_time(report["last_attempt"], lang)],
    ]
    services = [
        [
            s["name"],
            s["id"],
            n(s["blocked"]),
            n(s["attempts"]),
            _num(s["clients"], lang),
            n(s["previous_week"]),
            _change(s["blocked"], s["previous_week"], lang),
        ]
        for s in report["services"]
    ]
    days = [
        [
            lang.weekday(date.fromisoformat(d["date"]), d["weekday"]),
            d["date"] if lang.english else lang.long_date(date.fromisoformat(d["date"])),
            n(d["blocked"]),
            n(d["attempts"]),
            n(d["queries"]),
        ]
        for d in report["days"]
    ]
    groups = [
        [g["group"], n(g["blocked"]), n(g["attempts"]), _num(g["clients"], lang)]
        for g in report["groups"]
    ]
    clients = [
        [c["client"], c["group"], n(c["blocked"]), n(c["attempts"])] for c in report["top_clients"]
    ]
    names = [[_Name(x["name"]), x["service"], n(x["blocked"])] for x in report["top_names"]]
    bypass = [
        [b["name"], b["id"], n(b["blocked"]), n(b["attempts"]), _num(b["clients"], lang)]
        for b in report["bypass"]
    ]
    gaps = [
        [
            _(GAP_WORDS[g["kind"]]) if g["kind"] in GAP_WORDS else g["kind"],
            _short_time(g["start"], lang),
            _short_time(g["end"], lang),
        ]
        for g in report["gaps"]
    ]
    # A report dict from before the changes were reported (a stored JSON) has none.
    changes = report.get("changes") or {
        "new_services": [],
        "lists": [],
        "policy": [],
        "policy_omitted": 0,
    }
    new_services = [
        [
            s["name"],
            s["id"],
            s["category"] or "",
            _("yes") if s["enabled"] else _("no"),
            _short_time(s["added"], lang),
        ]
        for s in changes["new_services"]
    ]
    list_changes = [
        [
            c["list"],
            _(LIST_CHANGE_WORDS.get(c["change"], c["change"])),
            _short_time(c["at"], lang),
            f"+{n(c['added'])}",
            "-" if c["removed"] is None else f"-{n(c['removed'])}",
            n(c["names"]),
            c["source"] or "",
        ]
        for c in changes["lists"]
    ]
    policy = [
        [_short_time(c["at"], lang), c["user"] or "", c["command"], c["comment"] or ""]
        for c in changes["policy"]
    ]
    if changes["policy_omitted"]:
        policy.append(
            [
                "",
                "",
                _(
                    "... and %(n)s more: sinkhole lists history",
                    n=n(changes["policy_omitted"]),
                ),
                "",
            ]
        )
    spans = _spans(report)
    if clients_recorded:
        no_clients = _("No clients.")
    elif any(p.clients in CLIENT_MODES for p in spans):
        no_clients = _("Clients are not listed in the current privacy mode: see the note below.")
    else:
        no_clients = _(
            "Clients are not recorded (privacy mode: %(mode)s).",
            mode=report["privacy"]["clients"],
        )
    top_title = _("Top clients")
    if clients_recorded and len(_runs(spans)) > 1:
        zi = zone(report["period"]["timezone"])
        dated = spans[-1].end - spans[0].start > 7 * 86400
        top_title = _("Top clients (%(modes)s)", modes=describe_modes(spans, zi, dated, lang))
    return [
        (_("Summary"), ["", ""], summary, ""),
        (
            _("Services"),
            [
                _("Service"),
                _("Id"),
                _("Blocked"),
                _("Attempts"),
                _("Clients"),
                _("Previous"),
                _("Change"),
            ],
            services,
            _empty_line(report, lang),
        ),
        (
            _("Per day"),
            [_("Day"), _("Date"), _("Blocked"), _("Attempts"), _("Queries")],
            days,
            "",
        ),
        (
            _("Client groups"),
            [_("Group"), _("Blocked"), _("Attempts"), _("Clients")],
            groups,
            _("Client groups are not recorded (privacy mode: none)."),
        ),
        (top_title, [_("Client"), _("Group"), _("Blocked"), _("Attempts")], clients, no_clients),
        (
            _("Top blocked names"),
            [_("Name"), _("Service"), _("Blocked")],
            names,
            _("No blocked names."),
        ),
        (
            _("Bypass attempts (DoH, Private Relay, canary domains)"),
            [_("Bypass"), _("Id"), _("Blocked"), _("Attempts"), _("Clients")],
            bypass,
            _("No bypass attempts."),
        ),
        (
            _("Gaps in recording"),
            [_("Kind"), _("From"), _("To")],
            gaps,
            _("None: the server ran and recorded the whole period."),
        ),
        (
            _("New catalog services"),
            [_("Service"), _("Id"), _("Category"), _("Enabled"), _("First seen")],
            new_services,
            _("No service was added to the catalog."),
        ),
        (
            _("Imported lists"),
            [
                _("List"),
                _("Change"),
                _("When"),
                _("Added"),
                _("Removed"),
                _("Names"),
                _("Source"),
            ],
            list_changes,
            _("No list was imported, updated or removed."),
        ),
        (
            _("Policy changes"),
            [_("When"), _("Who"), _("Command"), _("Why")],
            policy,
            _("No other policy change."),
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


def _day_privacy(report: dict[str, Any], day: str, lang: Language) -> str:
    """The modes of one local day for the CSV: "ip", or "ip until 14:10, hashed since"."""
    zi = zone(report["period"]["timezone"])
    d = date.fromisoformat(day)
    lo = int(datetime.combine(d, datetime.min.time(), zi).timestamp())
    hi = int(datetime.combine(d + timedelta(days=1), datetime.min.time(), zi).timestamp())
    runs = [r for r in _runs(_spans(report)) if r[0] < hi and r[1] > lo]
    if len(runs) == 1:
        return runs[0][2]
    parts = [
        lang._("%(mode)s until %(when)s", mode=m, when=f"{datetime.fromtimestamp(end, zi):%H:%M}")
        for _, end, m in runs[:-1]
    ]
    return ", ".join([*parts, lang._("%(mode)s since", mode=runs[-1][2])])


def _footer(report: dict[str, Any], lang: Language) -> list[str]:
    privacy = report["privacy"]
    lines = [
        lang._(
            "Privacy mode: %(mode)s; retention: %(days)s days. %(note)s",
            mode=privacy["clients"],
            days=lang.number(privacy["retention_days"]),
            note=privacy["note"],
        ),
        lang._(
            "An attempt is a run of one client's lookups of one service with no pause longer "
            "than %(minutes)s minutes; blocked queries count every lookup.",
            minutes=ATTEMPT_GAP_SECONDS // 60,
        ),
    ]
    return lines + _odd_days(report, lang)


#: A figure of the tables, right-aligned: "1234", "12.50%", "+3 (+25%)", and the French
#: forms, "1 234" (narrow no-break space), "12,5 %", "+3 (+25 %)".
_NUMERIC_RE = re.compile(
    r"[-+]?\d[\d\u202f]*([.,]\d+)?([\u00a0\u202f]?%)?( \([-+]?\d+[\u00a0\u202f]?%\))?|-"
)


def _numeric(cell: str, lang: Language | None = None) -> bool:
    words = {"new", "n/a"} if lang is None else {lang._("new"), lang._("n/a")}
    return bool(_NUMERIC_RE.fullmatch(cell)) or cell in words


def render_text(report: dict[str, Any]) -> str:
    """The report as aligned plain-text tables for a terminal or a text email."""
    lang = language_of(report)
    out = [_title(report, lang), _period_line(report, lang), ""]
    if _is_empty(report):
        out += [_empty_banner(report, lang), ""]
    for title, headers, rows, empty in _sections(report, lang):
        out += [title, "-" * len(title)]
        if not rows:
            out += [empty, ""]
            continue
        table = ([headers] if any(headers) else []) + rows
        widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
        for n, row in enumerate(table):
            cells = [
                c.rjust(w) if _numeric(c, lang) and (n or not any(headers)) else c.ljust(w)
                for c, w in zip(row, widths, strict=True)
            ]
            out.append("  ".join(cells).rstrip())
            if n == 0 and any(headers):
                out.append("  ".join("-" * w for w in widths))
        out.append("")
    out += _footer(report, lang)
    return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    if isinstance(text, _Name):
        return f"`{text}`"  # presentation format holds no backtick: \\096
    return markdown_text(text).replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables for a wiki page or a ticket."""
    lang = language_of(report)
    out = [f"# {_title(report, lang)}", "", _period_line(report, lang), ""]
    if _is_empty(report):
        out += [f"**{_empty_banner(report, lang)}**", ""]
    for title, headers, rows, empty in _sections(report, lang):
        out += [f"## {title}", ""]
        if not rows:
            out += [empty, ""]
            continue
        heads = headers if any(headers) else [lang._("Figure"), lang._("Value")]
        out.append("| " + " | ".join(_md_cell(h) for h in heads) + " |")
        out.append(
            "|"
            + "|".join("---:" if _numeric(rows[0][i], lang) else "---" for i in range(len(heads)))
            + "|"
        )
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        out.append("")
    out += [f"_{_md_cell(line)}_" for line in _footer(report, lang)]
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


def days_svg(days: list[dict[str, Any]], lang: str = DEFAULT_LANGUAGE) -> str:
    """Blocked queries per day as an inline SVG bar chart (the html report's and the
    dashboard's), its labels and tooltips in `lang`."""
    tr = Language(lang)
    chart_title = tr._("Blocked queries per day")
    width, height, top, bottom = 680, 190, 18, 34
    slot = (width - 20) / max(len(days), 1)
    bar_w = slot * 0.62
    peak = max([d["blocked"] for d in days] + [1])
    parts = [
        f'<svg class="chart chart-days" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="{_h(chart_title)}">',
        f'<line class="axis" x1="10" y1="{height - bottom}" x2="{width - 10}" '
        f'y2="{height - bottom}"/>',
    ]
    for i, d in enumerate(days):
        h = (height - top - bottom) * d["blocked"] / peak
        x = 10 + i * slot + (slot - bar_w) / 2
        y = height - bottom - h
        cx = x + bar_w / 2
        day = date.fromisoformat(d["date"])
        tip = tr._(
            "%(date)s: %(blocked)s blocked, %(attempts)s attempts",
            date=d["date"] if tr.english else tr.long_date(day),
            blocked=tr.number(d["blocked"]),
            attempts=tr.number(d["attempts"]),
        )
        parts.append(
            f'<rect class="bar" data-date="{_h(d["date"])}" data-blocked="{d["blocked"]}" '
            f'data-attempts="{d["attempts"]}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
            f'height="{h:.1f}"><title>{_h(tip)}</title></rect>'
        )
        parts.append(
            f'<text x="{cx:.1f}" y="{y - 4:.1f}" text-anchor="middle">'
            f"{_h(tr.number(d['blocked']))}</text>"
        )
        parts.append(
            f'<text x="{cx:.1f}" y="{height - bottom + 13}" text-anchor="middle">'
            f"{_h(tr.weekday(day, d['weekday']))}</text>"
        )
        label = d["date"][5:] if tr.english else f"{day.day:02d}/{day.month:02d}"
        parts.append(
            f'<text x="{cx:.1f}" y="{height - bottom + 25}" text-anchor="middle">{_h(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def services_svg(services: list[dict[str, Any]], lang: str = DEFAULT_LANGUAGE) -> str:
    """Blocked queries per service as an inline SVG bar chart, labels in `lang`."""
    tr = Language(lang)
    chart_title = tr._("Blocked queries per service")
    width, row, label_w = 680, 22, 210
    height = row * len(services) + 8
    peak = max([s["blocked"] for s in services] + [1])
    span = width - label_w - 60
    parts = [
        f'<svg class="chart chart-services" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="{_h(chart_title)}">'
    ]
    for i, s in enumerate(services):
        y = 4 + i * row
        w = span * s["blocked"] / peak
        tip = tr._(
            "%(service)s: %(blocked)s blocked", service=s["name"], blocked=tr.number(s["blocked"])
        )
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{_h(s["name"])}</text>'
        )
        parts.append(
            f'<rect class="bar" data-service="{_h(s["id"])}" data-blocked="{s["blocked"]}" '
            f'data-attempts="{s["attempts"]}" x="{label_w}" y="{y + 3}" width="{w:.1f}" '
            f'height="{row - 8}"><title>{_h(tip)}</title></rect>'
        )
        parts.append(
            f'<text x="{label_w + w + 5:.1f}" y="{y + 14}">{_h(tr.number(s["blocked"]))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained, printable HTML page: inline CSS and SVG, no scripts."""
    lang = language_of(report)
    title = _title(report, lang)
    out = [
        "<!DOCTYPE html>",
        f'<html lang="{lang.lang}"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_h(title)}</h1>",
        f'<p class="period">{_h(_period_line(report, lang))}</p>',
    ]
    if _is_empty(report):
        out.append(f'<p class="empty">{_h(_empty_banner(report, lang))}</p>')
    charts = {
        DAYS_SECTION: days_svg(report["days"], lang.lang),
        SERVICES_SECTION: services_svg(report["services"], lang.lang) if report["services"] else "",
    }
    for i, (title_, headers, rows, empty) in enumerate(_sections(report, lang)):
        out.append(f"<section><h2>{_h(title_)}</h2>")
        out.append(charts.get(i, ""))
        if not rows:
            out.append(f"<p>{_h(empty)}</p></section>")
            continue
        out.append("<table>")
        if any(headers):
            out.append(
                "<thead><tr>"
                + "".join(
                    f'<th class="{"n" if _numeric(rows[0][i], lang) else ""}">{_h(h)}</th>'
                    for i, h in enumerate(headers)
                )
                + "</tr></thead>"
            )
        out.append("<tbody>")
        for row in rows:
            out.append(
                "<tr>"
                + "".join(
                    f'<td class="{"n" if _numeric(c, lang) else ""}">{_h(c)}</td>' for c in row
                )
                + "</tr>"
            )
        out.append("</tbody></table></section>")
    out += [f'<p class="note">{_h(line)}</p>' for line in _footer(report, lang)]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


CSV_COLUMNS = ("date", "service", "category", "group", "blocked", "attempts")
#: The CSV's header row in the report's language (the English one is the column keys).
CSV_HEADERS = {
    "date": N_("date"),
    "service": N_("service"),
    "category": N_("category"),
    "group": N_("group"),
    "blocked": N_("blocked"),
    "attempts": N_("attempts"),
    "privacy": N_("privacy"),
}


def render_csv(report: dict[str, Any]) -> str:
    """One row per (local day, service, client group) with blocked queries and attempts,
    and the privacy mode(s) the day's hits are stored with. The header and the privacy
    column are in the report's language; dates stay ISO and counts plain integers, which
    every spreadsheet reads whatever its language."""
    lang = language_of(report)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([lang._(CSV_HEADERS[c]) for c in (*CSV_COLUMNS, "privacy")])
    modes: dict[str, str] = {}
    for row in report["breakdown"]:
        if row["date"] not in modes:
            modes[row["date"]] = _day_privacy(report, row["date"], lang)
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
