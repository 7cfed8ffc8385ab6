"""The report's figures: SQL over the hits, their rollups, traffic and the audit trail, one
function per section of the schema-1 dict (docs/report.md)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from resolver.config import PRIVACY_MODES
from resolver.errors import SinkholeError, StoreError
from resolver.i18n import DEFAULT_LANGUAGE, Language
from resolver.presentation import display_name
from resolver.privacy import Period, periods, read_trail
from resolver.report.changes import policy_changes
from resolver.report.notes import CLIENT_MODES, privacy_note
from resolver.report.periods import MAX_PERIOD_DAYS, WEEKDAYS, day_bounds, day_case, iso_week, zone
from resolver.store.db import open_existing
from resolver.store.rollups import HOUR_SECONDS, ROLLUP_SECONDS, key_sql

SCHEMA_VERSION = 1
#: Hits of one client for one service closer than this belong to one attempt: a browser
#: asks A, AAAA and HTTPS at once and retries for a while.
ATTEMPT_GAP_SECONDS = 300
# The buckets of `hits_attempts` must be exactly one gap wide for the rule it keeps
# (store.py), and an hour of the rollups a whole number of them.
assert ROLLUP_SECONDS == ATTEMPT_GAP_SECONDS and HOUR_SECONDS % ROLLUP_SECONDS == 0


BYPASS_CATEGORY = "bypass"
OTHER_GROUP = "other"
#: The sections of the report's dict that `build_report(sections=...)` may leave out
#: ("schema", "period" and "lang" are always there).
SECTIONS = frozenset(
    {
        "totals",
        "services",
        "days",
        "groups",
        "top_clients",
        "top_names",
        "bypass",
        "breakdown",
        "first_attempt",
        "last_attempt",
        "privacy",
        "gaps",
        "changes",
    }
)


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


#: The last minutes before now are not judged: their traffic row may not be written yet.
GAP_SETTLE_SECONDS = 120
#: Gap kinds: the server was not running (minutes without a traffic row, which a running
#: server writes every minute), its recorder was behind, or the database had never been
#: used by a server yet (before its first start: no outage, nothing to record).
GAP_DOWN, GAP_BEHIND, GAP_NOT_YET = "server-down", "recorder-behind", "not-yet-running"
#: A site of the central store whose outbox still held hits of the period (its spelling
#: is the JSON's since the central store was released).
GAP_NOT_SHIPPED = "not shipped yet"


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
        SELECT ts, {day_case("ts", days)} AS day, ident, svc, grp, cat, qname, count,
               COALESCE(ts - LAG(ts) OVER (PARTITION BY ident, svc ORDER BY ts, id)
                        > {ATTEMPT_GAP_SECONDS}, 1) AS start
        FROM (SELECT id, ts, {key_sql("ident")} AS ident, {key_sql("svc")} AS svc,
                     {key_sql("grp")} AS grp, {key_sql("cat")} AS cat, qname, count
              FROM hits WHERE ts >= {ctx} AND ts < {hi}))
    WHERE ts >= {lo} GROUP BY day, ident, svc, grp, cat, qname"""


def _fill_sums(
    conn: sqlite3.Connection,
    t0: int,
    t1: int,
    days: list[tuple[date, int, int]],
    names: bool = True,
) -> None:
    """The temp tables the figures of [t0, t1) are read from, each a few thousand rows:
    `dsum` (day, svc, grp, cat), `isum` (ident, svc, grp, cat) and `nsum` (qname, svc,
    cat), with blocked queries and attempts (`nsum`: blocked, chatbot services only; left
    empty unless NAMES)."""
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
            f"""INSERT INTO dsum SELECT {day_case(f"hour * {HOUR_SECONDS}", days)} AS day,
                       svc, grp, cat, SUM(blocked), SUM(attempts)
                FROM hits_hour WHERE {plan.hours(cut=True)} GROUP BY day, svc, grp, cat"""
        )
        conn.execute(
            f"""INSERT INTO isum SELECT ident, svc, grp, cat, SUM(blocked), SUM(attempts)
                FROM hits_hour_client WHERE {plan.hours()} GROUP BY ident, svc, grp, cat"""
        )
        if names:
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
            f"""INSERT INTO dsum SELECT {day_case("ts", days)} AS day, {keys}, SUM(count), 0
                FROM hits WHERE ts >= {lo} AND ts < {lo + HOUR_SECONDS}
                GROUP BY day, svc, grp, cat {upsert}"""
        )
        conn.execute(
            f"""INSERT INTO dsum SELECT {day_case("first_ts", days)} AS day, svc, grp, cat,
                       0, COUNT(*)
                FROM hits_attempts WHERE bucket >= {hour * per} AND bucket < {hour * per + per}
                 AND start GROUP BY day, svc, grp, cat {upsert}{attempts}"""
        )
    for table, cols in tables.items():
        keys = ", ".join(cols)
        if table == "nsum" and not names:
            continue
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
    lang: str = DEFAULT_LANGUAGE,
    sections: Collection[str] | None = None,
) -> dict[str, Any]:
    """The report of blocked attempts in [start, end) as the schema-1 dict (docs/report.md),
    its human text (names of custom rules and lists, the privacy note) in `lang`; only
    the SECTIONS named (keys of the dict, of SECTIONS) when given, each exactly as in the
    whole report (the dashboard's overview asks for the few it shows).

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
    wanted = frozenset(SECTIONS if sections is None else sections)
    if not wanted <= SECTIONS:
        raise SinkholeError(f"unknown report sections: {', '.join(sorted(wanted - SECTIONS))}")
    now = now or datetime.now(UTC)
    days = day_bounds(t0, t1, zi)

    conn = open_existing(db_path)
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
            wanted,
        )
    except sqlite3.Error as exc:
        raise StoreError(f"{db_path}: report query failed: {exc}") from exc
    finally:
        conn.close()


#: The chatbot services of the sums, the bypass apart; a client, where `ident` is one.
_CHAT = f"cat IS NOT '{BYPASS_CATEGORY}'"
_CLIENT = "CASE WHEN ident LIKE 'group:%' THEN NULL ELSE ident END"


@dataclass(frozen=True)
class Scope:
    """What every section query reads: the connection with the period's sums filled
    (`fill_sums`), the period, and how the report names and counts."""

    conn: sqlite3.Connection
    t0: int
    t1: int
    zi: ZoneInfo
    days: list[tuple[date, int, int]]
    spans: list[Period]
    #: Client counts and top clients are filled (else None and empty).
    clients_listed: bool
    service_names: dict[str, str]
    top: int
    lang: Language

    def nullable(self, n: int) -> int | None:
        return n if self.clients_listed else None

    def service_name(self, svc: str) -> str:
        return _service_name(svc, self.service_names, self.lang)


def _by_blocked(row: dict[str, Any]) -> tuple[int, int, str]:
    return (-row["blocked"], -row["attempts"], row.get("id") or row.get("group") or "")


def period_section(s: Scope, tz: str) -> dict[str, Any]:
    return {
        "start": _iso(s.t0, s.zi),
        "end": _iso(s.t1, s.zi),
        "timezone": tz,
        "week": iso_week(
            datetime.fromtimestamp(s.t0, s.zi), datetime.fromtimestamp(s.t1, s.zi), s.zi
        ),
    }


def queries_by_day(s: Scope) -> dict[int, int]:
    """All queries (the traffic table) per day index of the period."""
    return dict(
        s.conn.execute(
            f"""SELECT {day_case("minute", s.days)} AS day, SUM(queries) FROM traffic
                WHERE minute >= ? AND minute < ? GROUP BY day""",
            (s.t0, s.t1),
        ).fetchall()
    )


def totals_of(blocked: int, attempts: int, clients: int | None, queries: int) -> dict[str, Any]:
    """The `totals` section from its sums (the central store's counters make it too)."""
    return {
        "blocked": blocked,
        "attempts": attempts,
        "clients": clients,
        "queries": queries,
        "blocked_share": round(blocked / queries, 6) if queries else None,
    }


def clients_listed(spans: list[Period], privacy: str) -> bool:
    """Whether clients are counted and listed: some hits of the period hold them (SPANS,
    from the trail), unless the config's mode PRIVACY now records none: its word on what
    people may see."""
    return privacy in CLIENT_MODES and any(p.clients in CLIENT_MODES for p in spans)


def totals_section(s: Scope, queries: int) -> tuple[dict[str, Any], bool]:
    """The totals, and whether the attempts are approximate (counted without clients)."""
    blocked, attempts, n_clients, anonymous = s.conn.execute(
        f"""SELECT COALESCE(SUM(blocked), 0), COALESCE(SUM(attempts), 0),
                   COUNT(DISTINCT {_CLIENT}), COALESCE(MAX(ident LIKE 'group:%'), 0)
            FROM isum WHERE {_CHAT}"""
    ).fetchone()
    # Attempts are counted per client where the hits hold one, listed or not.
    approximate = bool(anonymous) or not any(p.clients in CLIENT_MODES for p in s.spans)
    return totals_of(blocked, attempts, s.nullable(n_clients), queries), approximate


def first_and_last(s: Scope) -> tuple[str | None, str | None]:
    """The first and last lookup, by the index on ts from either end of the period."""
    first, last = (
        s.conn.execute(
            f"""SELECT MIN(ts) FROM (SELECT ts FROM hits WHERE ts >= ? AND ts < ?
                AND category IS NOT '{BYPASS_CATEGORY}' ORDER BY ts {order} LIMIT 1)""",
            (s.t0, s.t1),
        ).fetchone()[0]
        for order in ("ASC", "DESC")
    )
    return _iso(first, s.zi), _iso(last, s.zi)


def services_section(s: Scope) -> list[dict[str, Any]]:
    """Each chatbot service with its figures and the previous period's blocked queries."""
    # The previous period by the wall clock: for a week, the ISO week before, even when
    # one of the two weeks has a clock change and so is an hour shorter or longer.
    wall_start = datetime.fromtimestamp(s.t0, s.zi).replace(tzinfo=None)
    wall_end = datetime.fromtimestamp(s.t1, s.zi).replace(tzinfo=None)
    p0 = int((wall_start - (wall_end - wall_start)).replace(tzinfo=s.zi).timestamp())
    previous = _blocked_by_service(s.conn, p0, s.t0)
    services: dict[str, dict[str, Any]] = {}
    for svc, category, s_blocked, s_attempts, s_clients in s.conn.execute(
        f"""SELECT svc, MAX(NULLIF(cat, '')), SUM(blocked), SUM(attempts),
                   COUNT(DISTINCT {_CLIENT})
            FROM isum WHERE {_CHAT} GROUP BY svc"""
    ):
        services[svc] = {
            "id": svc,
            "name": s.service_name(svc),
            "category": category,
            "blocked": s_blocked,
            "attempts": s_attempts,
            "clients": s.nullable(s_clients),
            "previous_week": previous.get(svc, (None, 0))[1],
        }
    # A service blocked last week and not at all this week is news too.
    for svc, (category, p_blocked) in previous.items():
        if svc not in services:
            services[svc] = {
                "id": svc,
                "name": s.service_name(svc),
                "category": category,
                "blocked": 0,
                "attempts": 0,
                "clients": s.nullable(0),
                "previous_week": p_blocked,
            }
    return sorted(services.values(), key=lambda r: (*_by_blocked(r), -r["previous_week"]))


def days_section(s: Scope, queries: dict[int, int]) -> list[dict[str, Any]]:
    per_day = {
        d: (b, a)
        for d, b, a in s.conn.execute(
            f"SELECT day, SUM(blocked), SUM(attempts) FROM dsum WHERE {_CHAT} GROUP BY day"
        )
    }
    return [
        {
            "date": day.isoformat(),
            "weekday": WEEKDAYS[day.weekday()],
            "blocked": per_day.get(i, (0, 0))[0],
            "attempts": per_day.get(i, (0, 0))[1],
            "queries": queries.get(i, 0),
        }
        for i, (day, _, _) in enumerate(s.days)
    ]


def groups_section(s: Scope, groups: dict[str, list[str]]) -> list[dict[str, Any]]:
    group_rows: dict[str, dict[str, Any]] = {}
    if any(p.clients != "none" for p in s.spans):
        # Configured groups appear with zeros: "ai-lab: 0" is evidence as well.
        for label in [*groups, OTHER_GROUP]:
            group_rows[label] = {
                "group": label,
                "blocked": 0,
                "attempts": 0,
                "clients": s.nullable(0),
            }
    for grp, g_blocked, g_attempts, g_clients in s.conn.execute(
        f"""SELECT grp, SUM(blocked), SUM(attempts), COUNT(DISTINCT {_CLIENT})
            FROM isum WHERE {_CHAT} GROUP BY grp"""
    ):
        group_rows[grp] = {
            "group": grp,
            "blocked": g_blocked,
            "attempts": g_attempts,
            "clients": s.nullable(g_clients),
        }
    return sorted(group_rows.values(), key=_by_blocked)


def top_clients_section(s: Scope) -> list[dict[str, Any]]:
    if not s.clients_listed:
        return []
    return [
        {"client": c, "group": g, "blocked": b, "attempts": a}
        for c, g, b, a in s.conn.execute(
            f"""SELECT ident, MAX(grp), SUM(blocked) AS b, SUM(attempts) AS a FROM isum
                WHERE {_CHAT} AND ident NOT LIKE 'group:%' GROUP BY ident
                ORDER BY b DESC, a DESC, ident LIMIT ?""",
            (s.top,),
        )
    ]


def top_names_section(s: Scope) -> list[dict[str, Any]]:
    return [
        {"name": display_name(n), "service": svc, "blocked": b}
        for n, svc, b in s.conn.execute(
            """SELECT qname, svc, SUM(blocked) AS b FROM nsum
               GROUP BY qname, svc ORDER BY b DESC, qname LIMIT ?""",
            (s.top,),
        )
    ]


def bypass_section(s: Scope) -> list[dict[str, Any]]:
    return [
        {
            "id": svc,
            "name": s.service_name(svc),
            "blocked": b,
            "attempts": a,
            "clients": s.nullable(c),
        }
        for svc, b, a, c in s.conn.execute(
            f"""SELECT svc, SUM(blocked) AS b, SUM(attempts) AS a, COUNT(DISTINCT {_CLIENT})
                FROM isum WHERE cat = '{BYPASS_CATEGORY}' GROUP BY svc
                ORDER BY b DESC, svc"""
        )
    ]


def breakdown_section(s: Scope) -> list[dict[str, Any]]:
    """Not part of any summary table: the cross-tab behind the CSV format."""
    return [
        {
            "date": s.days[d][0].isoformat(),
            "service": svc,
            "category": cat,
            "group": grp,
            "blocked": b,
            "attempts": a,
        }
        for d, svc, cat, grp, b, a in s.conn.execute(
            """SELECT day, svc, MAX(NULLIF(cat, '')), grp, SUM(blocked), SUM(attempts)
               FROM dsum GROUP BY day, svc, grp ORDER BY day, svc, grp"""
        )
    ]


def privacy_section(
    s: Scope, config_mode: str, approximate: bool, retention_days: int, now: datetime
) -> dict[str, Any]:
    return {
        "clients": s.spans[-1].clients,
        "clients_listed": s.clients_listed,
        "periods": [
            {
                "clients": p.clients,
                "recorded": p.recorded,
                "rewritten": _iso(p.rewritten, s.zi),
                "from": _iso(p.start, s.zi),
                "until": _iso(p.end, s.zi),
            }
            for p in s.spans
        ],
        "retention_days": retention_days,
        "note": privacy_note(
            s.spans,
            config_mode,
            s.clients_listed,
            approximate,
            retention_days,
            s.t0,
            s.t1,
            s.zi,
            now,
            s.lang,
        ),
    }


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
    wanted: frozenset[str] = SECTIONS,
) -> dict[str, Any]:
    # What the hits of the period hold, from the audit trail; the config's mode (`privacy`)
    # only for a database without one.
    spans = periods(*read_trail(conn), t0, t1, privacy)
    listed = clients_listed(spans, privacy)
    _fill_sums(conn, t0, t1, days, names="top_names" in wanted)
    s = Scope(conn, t0, t1, zi, days, spans, listed, service_names, top, lang)
    per_day = queries_by_day(s)
    totals, approximate = totals_section(s, sum(per_day.values()))
    now_ts = int(now.timestamp())
    ends = first_and_last(s) if wanted & {"first_attempt", "last_attempt"} else (None, None)
    out: dict[str, Any] = {"schema": SCHEMA_VERSION, "period": period_section(s, tz)}
    # Each section made only when asked for, in the dict's order (docs/report.md).
    sections: dict[str, Any] = {
        "totals": lambda: totals,
        "services": lambda: services_section(s),
        "days": lambda: days_section(s, per_day),
        "groups": lambda: groups_section(s, groups),
        "top_clients": lambda: top_clients_section(s),
        "top_names": lambda: top_names_section(s),
        "bypass": lambda: bypass_section(s),
        "breakdown": lambda: breakdown_section(s),
        "first_attempt": lambda: ends[0],
        "last_attempt": lambda: ends[1],
        "privacy": lambda: privacy_section(s, privacy, approximate, retention_days, now),
        "gaps": lambda: _gaps(conn, t0, min(t1, max(t0, now_ts)), zi, now_ts),
        "changes": lambda: policy_changes(conn, t0, t1, zi, s.service_name),
    }
    assert set(sections) == SECTIONS
    out.update((key, make()) for key, make in sections.items() if key in wanted)
    out["lang"] = lang.lang
    return out
