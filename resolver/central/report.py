"""The report over all sites: what the report of one site (resolver/report/queries.py)
reads of a period — the central rollups (resolver/central/rollups.py) of its whole hours,
summed to the rows its queries group by, and the hits of its edges and cut hours — is
written into a small temporary SQLite database and goes through that very report, so
the cross-site figures follow the same rules (attempts, gaps, privacy) as a site's own.

Totals are over the chosen sites together (a client whose lookups a redundant pair
shared makes one attempt, not two); `sites` adds each site's own blocked and attempts,
and its gaps (down, behind on shipping) in the period.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any

from resolver.central import CentralError, connect, first_line, psycopg, rollups
from resolver.central.schema import require_schema
from resolver.config import CentralConfig
from resolver.report.queries import BYPASS_CATEGORY, GAP_NOT_SHIPPED, SECTIONS
from resolver.store.rollups import HOUR_SECONDS as HOUR
from resolver.store.rollups import ROLLUP_SECONDS

#: Hits this long before the period are read too: a lookup there may end an attempt.
LEAD_SECONDS = 3600
HIT_COLUMNS = "ts, client, client_group, qname, qtype, service, category, rule, action, count"
#: Hits read from PostgreSQL and written to the report's SQLite file at a time.
FETCH_ROWS = 50_000
#: PostgreSQL's work_mem for the report's queries.
REPORT_WORK_MEM = "64MB"
TRAFFIC_COLUMNS = "minute, queries, blocked, forwarded, cached, failed, refused, recorder_lag"


def known_sites(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT site FROM sites ORDER BY site")]


def _pick_sites(conn, wanted: Sequence[str]) -> list[str]:
    sites = known_sites(conn)
    unknown = [s for s in wanted if s not in sites]
    if unknown:
        raise CentralError(
            f"--site {unknown[0]}: no such site in the central store "
            f"(known: {', '.join(sites) or 'none'})"
        )
    return list(dict.fromkeys(wanted)) if wanted else sites


def _all_sites(conn, chosen: Sequence[str]) -> bool:
    return set(chosen) == set(known_sites(conn))


def _union(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(s for s in spans if s[0] < s[1]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def previous_start(t0: int, t1: int, zi) -> int:
    """The start of the period before [t0, t1), as the report's services section takes
    it (resolver/report/queries.py: by the wall clock)."""
    import datetime as dt

    wall_start = dt.datetime.fromtimestamp(t0, zi).replace(tzinfo=None)
    wall_end = dt.datetime.fromtimestamp(t1, zi).replace(tzinfo=None)
    return int((wall_start - (wall_end - wall_start)).replace(tzinfo=zi).timestamp())


class _Read:
    """What the report of SITES over [t0, t1) reads, as resolver/report/queries.py
    plans it (`_Plan`): the hours it takes from the rollups, the hits of the edges, the
    cut hours and the previous period's edges, which it reads from `hits`."""

    def __init__(self, conn, sites: Sequence[str], t0: int, t1: int, tz: str) -> None:
        from resolver.report.periods import day_bounds, zone
        from resolver.report.queries import ATTEMPT_GAP_SECONDS, _Plan

        self.sites, self.t0, self.t1 = list(sites), t0, t1
        self.zi = zone(tz)
        self.days = day_bounds(t0, t1, self.zi)
        self.plan = _Plan(t0, t1, [lo for _, lo, _ in self.days[1:]], True, ATTEMPT_GAP_SECONDS)
        self.previous = _Plan(previous_start(t0, t1, self.zi), t0, [], True)
        gap = ATTEMPT_GAP_SECONDS
        # The raw hits the report reads: each edge with the GAP seconds before it
        # (within the period), every cut hour whole, the previous period's edges.
        self.raw = _union(
            [(max(t0, lo - gap), hi) for lo, hi in self.plan.raw]
            + [(c * HOUR, (c + 1) * HOUR) for c in self.plan.cut]
            + list(self.previous.raw)
        )
        if len(self.sites) == 1 or _all_sites(conn, self.sites):
            self.scope = self.sites[0] if len(self.sites) == 1 else rollups.ALL
        else:
            self.scope = None  # a subset of the sites: attempts judged at report time

    @property
    def hours(self) -> tuple[int, int]:
        return self.plan.first * HOUR, self.plan.last * HOUR

    def client_rows_sql(self) -> str:
        """(hour, ident, svc, grp, cat, blocked, attempts) of the hours from the rollups,
        for the chosen sites together; parameters %(scope)s, %(sites)s."""
        lo, hi = self.hours
        if self.scope is not None:
            return f"""SELECT hour, ident, svc, grp, cat, blocked, attempts
                       FROM hits_hour_client WHERE site = %(scope)s
                       AND hour >= {lo} AND hour < {hi}"""
        return f"""SELECT hour, ident, svc, grp, cat, blocked, 0 AS attempts
                   FROM hits_hour_client WHERE site = ANY(%(sites)s)
                   AND hour >= {lo} AND hour < {hi}
                   UNION ALL
                   SELECT bucket / {HOUR} * {HOUR}, ident, svc, grp, cat, 0, 1
                   FROM ({rollups.subset_attempts_sql(lo, hi)}) s"""

    def cut_starts_sql(self) -> str:
        """The attempts that start in the cut hours: bucket, ident, svc, first_ts,
        last_ts, grp, cat."""
        cut = ", ".join(str(c * HOUR) for c in self.plan.cut)
        hour = f"bucket / {HOUR} * {HOUR}"
        if self.scope is not None:
            return f"""SELECT bucket, ident, svc, first_ts, last_ts, grp, cat FROM hits_bucket
                       WHERE site = %(scope)s AND start AND {hour} IN ({cut})"""
        lo, hi = self.hours
        return f"""SELECT * FROM ({rollups.subset_attempts_sql(lo, hi)}) s
                   WHERE {hour} IN ({cut})"""

    @property
    def params(self) -> dict[str, Any]:
        return {"scope": self.scope, "sites": self.sites}


_EMPTY_LOCK = threading.Lock()
_EMPTY: list[bytes] = []


def _empty_report_db() -> bytes:
    """A new database of this version (`Store`) without its triggers, as bytes: the
    report file's start. Its rows are written as they are, no trigger adds them up.
    Made once per process (migrating a new file takes tens of milliseconds)."""
    from resolver.store import Store

    with _EMPTY_LOCK:
        if not _EMPTY:
            with tempfile.TemporaryDirectory(prefix="sinkhole-central-") as tmp:
                path = os.path.join(tmp, "empty.db")
                Store(path).close()
                local = sqlite3.connect(path, isolation_level=None)
                try:
                    for (name,) in local.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'trigger'"
                    ).fetchall():
                        local.execute(f"DROP TRIGGER {name}")
                    local.execute("PRAGMA journal_mode=DELETE")
                finally:
                    local.close()
                with open(path, "rb") as f:
                    _EMPTY.append(f.read())
        return _EMPTY[0]


def materialize(conn, path: str, read: _Read, sections: Collection[str] | None = None) -> None:
    """Write what the one-site report reads of the chosen sites over the period into a
    new SQLite report database at PATH: the rollups of its hours summed to the rows its
    queries group by (each at an hour they read), the hits it reads (edges, cut hours,
    the first and last lookup), the attempts of the cut hours and the traffic. With
    SECTIONS (those of `build_report` the report will be asked for), what no section of
    them reads is left out: the names' rollup, the first and last lookup, the traffic
    per minute (without the gaps: per day)."""
    from resolver.report.periods import day_case
    from resolver.store.rollups import INSERT_HITS

    wanted = SECTIONS if sections is None else frozenset(sections)

    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_empty_report_db())
    # A throwaway file, read once by the report: no journal, no sync.
    local = sqlite3.connect(path, isolation_level=None)
    try:
        local.execute("PRAGMA journal_mode=OFF")
        local.execute("PRAGMA synchronous=OFF")
        local.execute("BEGIN IMMEDIATE")
        sites, t0, t1 = read.sites, read.t0, read.t1
        plan = read.plan
        with conn.transaction():
            for lo, hi in read.raw:
                with conn.cursor(name="sinkhole_report_hits") as cur:
                    cur.itersize = FETCH_ROWS
                    cur.execute(
                        f"SELECT {HIT_COLUMNS} FROM hits WHERE site = ANY(%s) AND ts >= %s "
                        "AND ts < %s ORDER BY ts, site, local_id",
                        (sites, lo, hi),
                    )
                    while rows := cur.fetchmany(FETCH_ROWS):
                        local.executemany(INSERT_HITS, rows)
        # The first and last lookup of the period, wherever they are.
        for order in ("ASC", "DESC") if wanted & {"first_attempt", "last_attempt"} else ():
            row = conn.execute(
                f"SELECT {HIT_COLUMNS} FROM hits WHERE site = ANY(%s) AND ts >= %s AND ts < %s "
                f"AND category IS DISTINCT FROM '{BYPASS_CATEGORY}' "
                f"ORDER BY ts {order}, site, local_id LIMIT 1",
                (sites, t0, t1),
            ).fetchone()
            if row is not None and not any(lo <= row[0] < hi for lo, hi in read.raw):
                local.execute(INSERT_HITS, row)
        if plan.first < plan.last:
            _write_hours(conn, local, read, day_case, names="top_names" in wanted)
        if read.previous.first < read.previous.last:
            lo, hi = read.previous.first * HOUR, read.previous.last * HOUR
            local.executemany(
                "INSERT INTO hits_hour (hour, svc, grp, cat, blocked, attempts) "
                "VALUES (?, ?, 'other', ?, ?, 0)",
                [
                    (read.previous.first, svc, cat, int(n))
                    for svc, cat, n in conn.execute(
                        "SELECT svc, cat, SUM(blocked) FROM hits_hour WHERE site = ANY(%s) "
                        "AND hour >= %s AND hour < %s GROUP BY svc, cat",
                        (sites, lo, hi),
                    )
                ],
            )
        if "gaps" in wanted:
            traffic = """SELECT minute, SUM(queries), SUM(blocked), SUM(forwarded),
                                SUM(cached), SUM(failed), SUM(refused), MAX(recorder_lag)
                         FROM traffic WHERE site = ANY(%s) AND minute >= %s AND minute < %s
                         GROUP BY minute"""
            lead = LEAD_SECONDS
        else:
            # Without the gaps, no section reads a minute: the queries of each day of the
            # period (all the totals and the days read) at its first minute.
            traffic = f"""SELECT MIN(minute), SUM(queries), SUM(blocked), SUM(forwarded),
                                 SUM(cached), SUM(failed), SUM(refused), MAX(recorder_lag)
                          FROM (SELECT {day_case("minute", read.days, postgres=True)} AS day, *
                                FROM traffic WHERE site = ANY(%s) AND minute >= %s
                                AND minute < %s) t
                          GROUP BY day"""
            lead = 0
        local.executemany(
            f"INSERT INTO traffic ({TRAFFIC_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [tuple(int(v) for v in row) for row in conn.execute(traffic, (sites, t0 - lead, t1))],
        )
        oldest = _first_start(conn, sites)
        if oldest is not None:
            local.execute(
                "INSERT OR REPLACE INTO settings VALUES ('first_start', ?)", (str(int(oldest)),)
            )
        local.execute("COMMIT")
    finally:
        local.close()


def _write_hours(conn, local, read: _Read, day_case, names: bool = True) -> None:
    """The rollup hours of the period: the per-client sums over all of them at the first
    hour (the report groups them by client, service, group, category), the per-day sums
    of the hours not cut at the first hour of their day, the names' sums (if NAMES), and
    the attempts that start in the cut hours (the report reads those from
    `hits_attempts`)."""
    plan = read.plan
    rows = read.client_rows_sql()
    if read.scope is None:
        # A subset of the sites: its attempts are judged once, for both sums below.
        conn.execute("DROP TABLE IF EXISTS pg_temp.report_rows")
        conn.execute(f"CREATE TEMP TABLE report_rows AS {rows}", read.params)
        rows = "SELECT * FROM report_rows"
    # Two plain GROUP BYs, not one of GROUPING SETS: PostgreSQL runs these with
    # parallel workers, that one not (a month of all-site rows: 0.5 s instead of 0.9).
    # Sums as bigint, not numeric: psycopg reads ints faster than Decimals.
    isum = [
        (plan.first, ident, svc, grp, cat, int(blocked), int(attempts))
        for ident, svc, grp, cat, blocked, attempts in conn.execute(
            f"""SELECT ident, svc, grp, cat, SUM(blocked)::bigint, SUM(attempts)::bigint
                FROM ({rows}) c GROUP BY ident, svc, grp, cat""",
            read.params,
        )
    ]
    uncut = f"WHERE hour NOT IN ({', '.join(str(c * HOUR) for c in plan.cut)})" if plan.cut else ""
    dsum = [
        (d_hour // HOUR, svc, grp, cat, int(blocked), int(attempts))
        for _, d_hour, svc, grp, cat, blocked, attempts in conn.execute(
            f"""SELECT {day_case("hour", read.days, postgres=True)} AS day, MIN(hour), svc,
                       grp, cat, SUM(blocked)::bigint, SUM(attempts)::bigint
                FROM ({rows}) c {uncut} GROUP BY day, svc, grp, cat""",
            read.params,
        )
    ]
    local.executemany("INSERT INTO hits_hour_client VALUES (?, ?, ?, ?, ?, ?, ?)", isum)
    local.executemany(
        "INSERT INTO hits_hour (hour, svc, grp, cat, blocked, attempts) VALUES (?, ?, ?, ?, ?, ?)",
        dsum,
    )
    if names:
        lo, hi = read.hours
        local.executemany(
            "INSERT INTO hits_hour_name (hour, svc, cat, qname, blocked) VALUES (?, ?, ?, ?, ?)",
            [
                (plan.first, svc, cat, qname, int(n))
                for svc, cat, qname, n in conn.execute(
                    "SELECT svc, cat, qname, SUM(blocked) FROM hits_hour_name "
                    "WHERE site = ANY(%s) AND hour >= %s AND hour < %s GROUP BY 1, 2, 3",
                    (read.sites, lo, hi),
                )
            ],
        )
    if plan.cut:
        local.executemany(
            "INSERT INTO hits_attempts VALUES (?, ?, ?, ?, ?, ?, ?, 1)",
            [
                (b // ROLLUP_SECONDS, *rest)
                for b, *rest in conn.execute(read.cut_starts_sql(), read.params)
            ],
        )


def _first_start(conn, sites: Sequence[str]) -> int | None:
    """When the first of SITES first recorded (or its oldest hit, if older)."""
    (first,) = conn.execute(
        "SELECT MIN(COALESCE(first_start, EXTRACT(EPOCH FROM first_seen)::bigint)) "
        "FROM sites WHERE site = ANY(%s)",
        (list(sites),),
    ).fetchone()
    (oldest,) = conn.execute(
        "SELECT LEAST(MIN(ts), %s) FROM hits WHERE site = ANY(%s)", (first, list(sites))
    ).fetchone()
    return oldest


def report_session(conn) -> None:
    """The settings of a connection that reads for a report or the dashboard: the
    week's per-client rollup is grouped in memory (some 10 MB at a million hits)
    instead of sorted on disk; and no JIT compilation, which costs some 100 ms per
    query here for queries that run in tens of milliseconds."""
    conn.execute(f"SET work_mem = '{REPORT_WORK_MEM}'")
    conn.execute("SET jit = off")


def central_report(
    central: CentralConfig,
    build: Callable[[str], dict[str, Any]],
    t0: int,
    t1: int,
    sites: Sequence[str] = (),
    *,
    tz: str,
    per_site: bool = True,
    sections: Collection[str] | None = None,
) -> dict[str, Any]:
    """The report dict for SITES (all when empty): `build(db_path)` is the one-site
    report builder of the period [t0, t1) in the time zone TZ (of SECTIONS only, when
    given: less is read); adds `"sites": [{"site", "blocked", "attempts", "gaps"}]`
    unless not PER_SITE (the dashboard's overview lists the sites from
    `sites_status`)."""
    pg = psycopg()
    try:
        with connect(central) as conn:
            require_schema(conn)
            report_session(conn)
            chosen = _pick_sites(conn, sites)
            read = _Read(conn, chosen, t0, t1, tz)
            with tempfile.TemporaryDirectory(prefix="sinkhole-central-") as tmp:
                path = os.path.join(tmp, "all.db")
                materialize(conn, path, read, sections)
                data = build(path)
            if per_site:
                data["sites"] = _per_site(conn, read)
    except pg.Error as exc:
        raise CentralError(f"central store: {first_line(exc)}") from None
    data["central"] = {"sites": chosen}
    return data


def edge_hits_sql(read: _Read, *, per_site: bool) -> str:
    """The hits of the period's edges (`read.plan.raw`, which the report reads from
    `hits`, not the rollups) as rows (site, ident, svc, grp, cat, count, start), `start`
    by the report's rule (`_raw_sql`: a lookup starts an attempt unless the same client
    looked up the same service at most 300 s before, within the period): over each
    site's hits alone when PER_SITE (ties by local id), else over the chosen sites'
    together (ties by site, then local id, the order `materialize` copies them in).
    The sites are bound as %(sites)s; the bounds are integers we computed."""
    from resolver.report.queries import ATTEMPT_GAP_SECONDS

    gap = ATTEMPT_GAP_SECONDS
    part, order = (
        ("site, ident, svc", "ts, local_id") if per_site else ("ident, svc", "ts, site, local_id")
    )
    spans = [
        f"""SELECT site, ident, svc, grp, cat, count, start FROM (
              SELECT site, ts, ident, svc, grp, cat, count,
                     CASE WHEN ts - LAG(ts) OVER w <= {gap} THEN 0 ELSE 1 END AS start
              FROM (SELECT site, local_id, ts, count, {rollups.HIT_KEYS} FROM hits
                    WHERE site = ANY(%(sites)s) AND ts >= {int(max(read.t0, lo - gap))}
                    AND ts < {int(hi)}) h
              WINDOW w AS (PARTITION BY {part} ORDER BY {order})) x
            WHERE ts >= {int(lo)}"""
        for lo, hi in read.plan.raw
    ]
    none = "SELECT NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, 0, 0 WHERE false"
    return " UNION ALL ".join(spans) or none


def _per_site(conn, read: _Read) -> list[dict[str, Any]]:
    """Each chosen site's blocked queries and attempts, as the report of its hits alone
    counts them (totals: the chatbot services, the bypass apart), and its gaps.

    Its rollup hours are the report's (the plan depends on the period only): their sums
    from `hits_hour`, the site's attempts judged over its own hits; the edges by the
    report's rule over the site's own hits (`edge_hits_sql`)."""
    plan, sites = read.plan, read.sites
    sums = {s: [0, 0] for s in sites}
    if plan.first < plan.last:
        lo, hi = read.hours
        for site, blocked, attempts in conn.execute(
            "SELECT site, SUM(blocked), SUM(attempts) FROM hits_hour WHERE site = ANY(%s) "
            f"AND hour >= %s AND hour < %s AND cat <> '{BYPASS_CATEGORY}' GROUP BY site",
            (sites, lo, hi),
        ):
            sums[site][0] += int(blocked)
            sums[site][1] += int(attempts)
    for site, blocked, attempts in conn.execute(
        f"""SELECT site, SUM(count), SUM(start) FROM ({edge_hits_sql(read, per_site=True)}) e
            WHERE cat <> '{BYPASS_CATEGORY}' GROUP BY site""",
        read.params,
    ):
        sums[site][0] += int(blocked)
        sums[site][1] += int(attempts)
    return [
        {
            "site": site,
            "blocked": sums[site][0],
            "attempts": sums[site][1],
            "gaps": _site_gaps(conn, site, read) + _behind(conn, site, read.t0, read.t1),
        }
        for site in sites
    ]


def central_totals(
    central: CentralConfig, t0: int, t1: int, *, tz: str, privacy: str
) -> dict[str, Any]:
    """The `totals` of the report of every site over [t0, t1) (blocked, attempts,
    clients, queries, blocked_share), without writing a report file: one PostgreSQL
    query over what that report reads (`_Read`: the rollup hours and their scope, the
    rows `materialize` sums) and its edges (`edge_hits_sql`, all sites together), summed
    as `totals_section` sums them; `privacy` is the config's mode (the report's file has
    no trail of its own). The dashboard's counters (today, this week)."""
    from resolver.privacy import periods
    from resolver.report.queries import _CLIENT, clients_listed, totals_of

    pg = psycopg()
    try:
        with connect(central) as conn:
            require_schema(conn)
            report_session(conn)
            read = _Read(conn, _pick_sites(conn, ()), t0, t1, tz)
            chat = f"cat <> '{BYPASS_CATEGORY}'"
            # Per client first (a parallel hash over the rollup hours), then together.
            per_client = [
                f"""SELECT ident, SUM(count) AS blocked, SUM(start) AS attempts
                    FROM ({edge_hits_sql(read, per_site=False)}) e WHERE {chat} GROUP BY ident"""
            ]
            if read.plan.first < read.plan.last:
                per_client.append(
                    f"""SELECT ident, SUM(blocked), SUM(attempts) FROM ({read.client_rows_sql()}) r
                        WHERE {chat} GROUP BY ident"""
                )
            client = _CLIENT.replace("%", "%%")
            blocked, attempts, clients, queries = conn.execute(
                f"""SELECT COALESCE(SUM(blocked), 0), COALESCE(SUM(attempts), 0),
                           COUNT({client}),
                           (SELECT COALESCE(SUM(queries), 0) FROM traffic
                            WHERE site = ANY(%(sites)s) AND minute >= {int(t0)}
                            AND minute < {int(t1)})
                    FROM (SELECT ident, SUM(blocked) AS blocked, SUM(attempts) AS attempts
                          FROM ({" UNION ALL ".join(per_client)}) u GROUP BY ident) x""",
                read.params,
            ).fetchone()
    except pg.Error as exc:
        raise CentralError(f"central store: {first_line(exc)}") from None
    listed = clients_listed(periods([], [], t0, t1, privacy), privacy)
    return totals_of(int(blocked), int(attempts), int(clients) if listed else None, int(queries))


def _site_gaps(conn, site: str, read: _Read) -> list[dict]:
    """The site's gaps in recording, by the report's own `_gaps` over its traffic."""
    import sqlite3
    import time

    from resolver.report.queries import _gaps

    local = sqlite3.connect(":memory:")
    try:
        local.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT)")
        local.execute("CREATE TABLE traffic (minute INTEGER PRIMARY KEY, recorder_lag INTEGER)")
        local.executemany(
            "INSERT INTO traffic VALUES (?, ?)",
            conn.execute(
                "SELECT minute, recorder_lag FROM traffic WHERE site = %s AND minute >= %s "
                "AND minute < %s",
                (site, read.t0 - LEAD_SECONDS, read.t1),
            ).fetchall(),
        )
        oldest = _first_start(conn, [site])
        if oldest is not None:
            local.execute("INSERT INTO settings VALUES ('first_start', ?)", (str(int(oldest)),))
        now = int(time.time())
        return _gaps(local, read.t0, min(read.t1, max(read.t0, now)), read.zi, now)
    finally:
        local.close()


def _behind(conn, site: str, t0: int, t1: int) -> list[dict]:
    """A site whose outbox still held hits of the period at its last contact."""
    row = conn.execute(
        "SELECT backlog, oldest_unshipped, last_seen FROM sites WHERE site = %s", (site,)
    ).fetchone()
    if row is None or not row[0] or row[1] is None or row[1] >= t1:
        return []
    return [
        {
            "kind": GAP_NOT_SHIPPED,
            "start": _iso(max(row[1], t0)),
            "end": _iso(t1),
            "backlog": row[0],
            "last_contact": row[2].isoformat(timespec="seconds") if row[2] else None,
        }
    ]


def _iso(ts: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def sites_status(central: CentralConfig) -> list[dict[str, Any]]:
    """Each site with its last contact, backlog, oldest unshipped hit, policy version."""
    pg = psycopg()
    try:
        with connect(central) as conn:
            require_schema(conn)
            report_session(conn)
            rows = conn.execute(
                """SELECT s.site, s.last_seen, s.last_shipped, s.backlog, s.oldest_unshipped,
                          s.dropped, s.policy_version, s.software_version, s.shipped_hits,
                          (SELECT COALESCE(SUM(blocked), 0) FROM hits_hour h
                           WHERE h.site = s.site)
                   FROM sites s ORDER BY s.site"""
            ).fetchall()
    except pg.Error as exc:
        raise CentralError(f"central store: {first_line(exc)}") from None
    out = []
    for r in rows:
        out.append(
            {
                "site": r[0],
                "last_contact": r[1].isoformat(timespec="seconds") if r[1] else None,
                "last_shipped": r[2].isoformat(timespec="seconds") if r[2] else None,
                "backlog": r[3],
                "oldest_unshipped": _iso(r[4]) if r[4] is not None else None,
                "dropped": r[5],
                "policy_version": r[6],
                "software_version": r[7],
                "hits": r[8],
                "blocked": int(r[9]),
            }
        )
    return out


def recent_hits(
    central: CentralConfig, since: int, limit: int, sites: Sequence[str] = ()
) -> list[dict]:
    """`sinkhole hits` over the central store: newest first, each with its site."""
    pg = psycopg()
    try:
        with connect(central) as conn:
            require_schema(conn)
            chosen = _pick_sites(conn, sites)
            cur = conn.execute(
                f"SELECT site, local_id AS id, {HIT_COLUMNS} FROM hits "
                "WHERE site = ANY(%s) AND ts >= %s ORDER BY ts DESC, site, local_id DESC "
                "LIMIT %s",
                (chosen, since, limit),
            )
            names = [d.name for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    except pg.Error as exc:
        raise CentralError(f"central store: {first_line(exc)}") from None
