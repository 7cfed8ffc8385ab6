"""What the dashboard reads: the report's figures (resolver.report), the attempts log, the trend.

Every figure comes from the functions the CLI calls (`build_report`, `Store.recent_hits`,
`Store.lists`, `Store.history`), so a page and the command line never disagree; the log's
filters and the hourly trend are the only SQL of the dashboard's own.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from resolver import report as rpt
from resolver.admin import build_report_for
from resolver.catalog import Catalog
from resolver.config import Config
from resolver.errors import SinkholeError
from resolver.store.rollups import HOUR_SECONDS, SVC_SQL

#: Ranges of the overview: (key, hours of the trend or days, bar width).
RANGES = ("24h", "week", "30d")
DEFAULT_RANGE = "week"
LOG_LIMIT = 200
STREAM_BATCH = 200
HIT_COLUMNS = "id, ts, client, client_group, qname, qtype, service, category, rule, action, count"


#: The sections of the report the overview shows (templates/_overview.html): its
#: chosen range is reported with these only (`build_report(sections=...)`).
OVERVIEW_SECTIONS = ("totals", "services", "days", "groups", "top_clients", "privacy")


def report_for(
    config: Config,
    catalog: Catalog,
    start: datetime,
    end: datetime,
    lang: str = "en",
    per_site: bool = True,
    sections: tuple[str, ...] | None = None,
) -> dict:
    """The report's dict for [start, end), exactly as `sinkhole report --format json
    --lang LANG` (of SECTIONS only, when given): this site's, or with `central` every
    site's (without each site's own figures unless PER_SITE: the overview lists the
    sites from `sites_overview`). While the central store cannot be read, this site's
    own record, with `central_error`."""
    tz = site_timezone(config)
    try:
        return build_report_for(
            config, catalog, start, end, tz=tz, lang=lang, per_site=per_site, sections=sections
        )
    except SinkholeError as exc:
        if config.central is None:
            raise
        return _local_report(config, catalog, start, end, lang, sections, exc)


def _local_report(
    config: Config,
    catalog: Catalog,
    start: datetime,
    end: datetime,
    lang: str,
    sections: tuple[str, ...] | None,
    exc: SinkholeError,
) -> dict:
    """This site's own report while the central store cannot be read, saying why."""
    local = replace(config, central=None)
    report = build_report_for(
        local, catalog, start, end, tz=site_timezone(config), lang=lang, sections=sections
    )
    report["central_error"] = str(exc)
    return report


def totals_for(
    config: Config, catalog: Catalog, start: datetime, end: datetime, lang: str = "en"
) -> dict:
    """The overview's counters: a report dict of the `totals` of [start, end) only, the
    same figures as the whole report's. With `central` straight from the rollups in one
    PostgreSQL query (`central_totals`, no report file), else (or while the central
    store cannot be read, with `central_error`) this site's report of that section."""
    if config.central is None:
        return report_for(config, catalog, start, end, lang, sections=("totals",))
    from resolver.central.report import central_totals

    try:
        totals = central_totals(
            config.central,
            int(start.timestamp()),
            int(end.timestamp()),
            tz=site_timezone(config),
            privacy=config.privacy.clients,
        )
    except SinkholeError as exc:
        return _local_report(config, catalog, start, end, lang, ("totals",), exc)
    return {"totals": totals}


#: With `central`: the overview's reports are kept while no site has shipped anything
#: since (each site's `shipped_hits` and `last_shipped`, in the shipping transaction) and
#: for at most this long (their period ends now; the gaps move with the clock).
OVERVIEW_CACHE_SECONDS = 60


def central_version(config: Config) -> tuple | None:
    """What the central store's figures depend on and shipping changes: each site's hits
    shipped and last shipping; None while it cannot be read."""
    from resolver.central import connect, psycopg

    assert config.central is not None
    pg = psycopg()
    try:
        with connect(config.central) as conn:
            return tuple(
                conn.execute(
                    "SELECT site, shipped_hits, last_shipped, first_start FROM sites ORDER BY site"
                ).fetchall()
            )
    except (pg.Error, SinkholeError):
        return None


class OverviewCache:
    """The overview's reports by (language, period starts, `central_version`), each kept
    OVERVIEW_CACHE_SECONDS at most: a hit shipped since changes the version, so a page
    never shows figures older than the central store's."""

    def __init__(self, seconds: float = OVERVIEW_CACHE_SECONDS) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._entries: dict[tuple, tuple[float, dict[str, dict]]] = {}

    def get(self, key: tuple) -> dict[str, dict] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or time.monotonic() - entry[0] > self.seconds:
                return None
            return entry[1]

    def put(self, key: tuple, reports: dict[str, dict]) -> None:
        now = time.monotonic()
        with self._lock:
            for k in [k for k, (t, _) in self._entries.items() if now - t > self.seconds]:
                del self._entries[k]
            self._entries[key] = (now, reports)


def central_hourly_trend(config: Config, start: int, end: int) -> list[dict[str, Any]]:
    """`hourly_trend` of every site together, from the central rollups: blocked queries
    summed over the sites, attempts with the rule applied across them (the rows of all
    sites, `'*'`, of `hits_hour_client`); this site's own while PostgreSQL is away."""
    from resolver.central import connect, psycopg
    from resolver.central.report import report_session
    from resolver.central.rollups import ALL

    assert config.central is not None
    first, last = start // HOUR_SECONDS, (end - 1) // HOUR_SECONDS
    pg = psycopg()
    try:
        with connect(config.central) as conn:
            report_session(conn)
            rows = {
                int(h) // HOUR_SECONDS: (int(b), int(a))
                for h, b, a in conn.execute(
                    "SELECT hour, SUM(blocked), SUM(attempts) FROM hits_hour_client "
                    "WHERE site = %s AND hour >= %s AND hour < %s AND cat <> %s GROUP BY hour",
                    (ALL, first * HOUR_SECONDS, (last + 1) * HOUR_SECONDS, rpt.BYPASS_CATEGORY),
                )
            }
    except (pg.Error, SinkholeError):
        return hourly_trend(config.database, start, end)
    return _hour_bars(rows, first, last)


def sites_overview(config: Config, now: float | None = None) -> dict[str, Any] | None:
    """With `central`: each site's last contact, backlog and shipping lag (as `sinkhole
    sites`), or the reason the central store cannot be read; None without central."""
    if config.central is None:
        return None
    from resolver.central.report import sites_status

    now = time.time() if now is None else now
    try:
        rows = sites_status(config.central)
    except SinkholeError as exc:
        return {"error": str(exc), "sites": []}
    for r in rows:
        oldest = r.get("oldest_unshipped")
        r["lag_seconds"] = (
            max(0, int(now - datetime.fromisoformat(oldest).timestamp())) if oldest else 0
        )
    return {"error": None, "sites": rows}


def site_timezone(config: Config) -> str:
    return config.timezone or rpt.local_timezone()


def range_bounds(key: str, tz: str, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end) of an overview range: the last 24 hours, this ISO week, the last 30 days."""
    zi = ZoneInfo(tz)
    now = (now or datetime.now(zi)).astimezone(zi)
    end = (now + timedelta(seconds=1)).replace(microsecond=0)
    midnight = datetime(now.year, now.month, now.day, tzinfo=zi)
    if key == "24h":
        hour = now.replace(minute=0, second=0, microsecond=0)
        return hour - timedelta(hours=23), end
    if key == "30d":
        return (midnight - timedelta(days=29)).replace(tzinfo=zi), end
    monday = midnight - timedelta(days=now.weekday())
    return datetime(monday.year, monday.month, monday.day, tzinfo=zi), end


def today_bounds(tz: str) -> tuple[datetime, datetime]:
    zi = ZoneInfo(tz)
    now = datetime.now(zi)
    start = datetime(now.year, now.month, now.day, tzinfo=zi)
    return start, (now + timedelta(seconds=1)).replace(microsecond=0)


def hourly_trend(db_path: str, start: int, end: int) -> list[dict[str, Any]]:
    """Blocked queries and attempts per clock hour in [start, end), as the report counts them
    (bypass attempts apart), from the hourly rollup that the recorder keeps."""
    first, last = start // HOUR_SECONDS, (end - 1) // HOUR_SECONDS
    conn = _connect(db_path)
    try:
        rows = dict(
            (h, (b, a))
            for h, b, a in conn.execute(
                "SELECT hour, SUM(blocked), SUM(attempts) FROM hits_hour "
                "WHERE hour BETWEEN ? AND ? AND cat IS NOT ? GROUP BY hour",
                (first, last, rpt.BYPASS_CATEGORY),
            )
        )
    finally:
        conn.close()
    return _hour_bars(rows, first, last)


def _hour_bars(rows: dict[int, tuple[int, int]], first: int, last: int) -> list[dict[str, Any]]:
    return [
        {
            "start": h * HOUR_SECONDS,
            "end": (h + 1) * HOUR_SECONDS,
            "blocked": rows.get(h, (0, 0))[0],
            "attempts": rows.get(h, (0, 0))[1],
        }
        for h in range(first, last + 1)
    ]


def _connect(db_path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
    return conn


@dataclass
class LogFilter:
    """The attempts log's filters; every value is compared as given, never spliced into SQL."""

    since: int = 0
    until: int | None = None
    service: str | None = None
    group: str | None = None
    client: str | None = None
    name: str | None = None
    site: str | None = None
    limit: int = LOG_LIMIT
    #: The live log's cursor: this site's last hit id; with `central`, each site's.
    after_id: int = 0
    after_sites: dict[str, int] | None = None
    params: dict[str, str] = field(default_factory=dict)

    def where(self, central: bool = False) -> tuple[str, list[Any]]:
        """The WHERE clause for SQLite (`?`) or, with central, PostgreSQL (`%s`)."""
        m = "%s" if central else "?"
        clauses, args = [f"ts >= {m}"], [self.since]
        if self.until is not None:
            clauses.append(f"ts < {m}")
            args.append(self.until)
        if central:
            if self.after_sites is not None:
                clauses.append("local_id > COALESCE((%s::jsonb ->> site)::bigint, 0)")
                args.append(json.dumps(self.after_sites))
            if self.site:
                clauses.append("site = %s")
                args.append(self.site)
        elif self.after_id:
            clauses.append("id > ?")
            args.append(self.after_id)
        if self.service:
            clauses.append(f"{SVC_SQL.format(p='')} = {m}")
            args.append(self.service)
        if self.group:
            clauses.append(f"COALESCE(client_group, 'other') = {m}")
            args.append(self.group)
        if self.client:
            clauses.append(f"client = {m}")
            args.append(self.client)
        if self.name:
            clauses.append("strpos(qname, %s) > 0" if central else "instr(qname, ?) > 0")
            args.append(self.name.lower())
        return " AND ".join(clauses), args


CENTRAL_HIT_COLUMNS = (
    "site, local_id AS id, ts, client, client_group, qname, qtype, service, category, "
    "rule, action, count"
)


def log_attempts(config: Config, flt: LogFilter) -> list[dict[str, Any]]:
    """The attempts log: this site's hits, or with `central` every site's (each row with
    its `site`), newest first; in the order they came with a live cursor."""
    if config.central is None:
        return attempts(config.database, flt)
    from resolver.central import CentralError, connect, first_line, psycopg

    where, args = flt.where(central=True)
    live = flt.after_sites is not None
    order = "ts, site, local_id" if live else "ts DESC, site, local_id DESC"
    pg = psycopg()
    try:
        with connect(config.central) as conn:
            cur = conn.execute(
                f"SELECT {CENTRAL_HIT_COLUMNS} FROM hits WHERE {where} ORDER BY {order} LIMIT %s",
                (*args, flt.limit),
            )
            names = [d.name for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    except pg.Error as exc:
        raise CentralError(f"central store: {first_line(exc)}") from None


def log_cursor(config: Config) -> int | dict[str, int]:
    """Where the live log starts: the newest hit now (this site's id, or each site's)."""
    if config.central is None:
        return last_hit_id(config.database)
    from resolver.central import CentralError, connect, first_line, psycopg

    pg = psycopg()
    try:
        with connect(config.central) as conn:
            rows = conn.execute(
                "SELECT site, (SELECT COALESCE(MAX(local_id), 0) FROM hits h "
                "WHERE h.site = s.site) FROM sites s"
            ).fetchall()
    except pg.Error as exc:
        raise CentralError(f"central store: {first_line(exc)}") from None
    return {site: int(n) for site, n in rows}


def attempts(db_path: str, flt: LogFilter) -> list[dict[str, Any]]:
    """Hits matching the filter, newest first, with their row id (for the live log)."""
    where, args = flt.where()
    conn = _connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        order = "id" if flt.after_id else "ts DESC, id DESC"
        rows = conn.execute(
            f"SELECT {HIT_COLUMNS} FROM hits WHERE {where} ORDER BY {order} LIMIT ?",
            (*args, flt.limit),
        ).fetchall()
    finally:
        conn.close()
    return [dict(r) for r in rows]


def last_hit_id(db_path: str) -> int:
    conn = _connect(db_path)
    try:
        (n,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM hits").fetchone()
    finally:
        conn.close()
    return n


def traffic_lag(db_path: str, since: int | None = None) -> dict[str, int]:
    """Queries answered and the recorder's lag in the last hour, from `traffic`."""
    since = int(time.time()) - 3600 if since is None else since
    conn = _connect(db_path)
    try:
        q, lag, last = conn.execute(
            "SELECT COALESCE(SUM(queries), 0), COALESCE(MAX(recorder_lag), 0), MAX(minute) "
            "FROM traffic WHERE minute >= ?",
            (since,),
        ).fetchone()
    finally:
        conn.close()
    return {"queries": q, "recorder_lag": lag, "last_minute": last}
