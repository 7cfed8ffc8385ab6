"""The report over all sites: the central store's hits of a period, read into a temporary
SQLite database, go through the very report of one site (resolver/report.py), so the
cross-site figures follow the same rules (attempts, gaps, privacy) as a site's own.

Totals are over the chosen sites together (a client whose lookups a redundant pair
shared makes one attempt, not two); `sites` adds each site's own blocked and attempts,
and its gaps (down, behind on shipping) in the period.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from resolver.central import CentralError, connect, first_line, psycopg
from resolver.central.schema import require_schema
from resolver.config import CentralConfig
from resolver.report.queries import GAP_NOT_SHIPPED

#: Hits this long before the period are read too: a lookup there may end an attempt.
LEAD_SECONDS = 3600
HIT_COLUMNS = "ts, client, client_group, qname, qtype, service, category, rule, action, count"
#: Hits read from PostgreSQL and written to the report's SQLite file at a time.
FETCH_ROWS = 50_000
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


def materialize(conn, path: str, sites: Sequence[str], t0: int, t1: int) -> None:
    """Write the central hits and traffic of SITES in [t0 - lead, t1) into a new SQLite
    report database at PATH."""
    from resolver.store import Store
    from resolver.store.db import connect as sqlite_connect
    from resolver.store.rollups import write_hits

    Store(path).close()
    local = sqlite_connect(path)
    try:
        local.execute("BEGIN IMMEDIATE")
        # Streamed from a server-side cursor in chunks, as the recorder writes its
        # batches: memory stays flat whatever the period holds.
        with conn.transaction(), conn.cursor(name="sinkhole_report_hits") as cur:
            cur.itersize = FETCH_ROWS
            cur.execute(
                f"SELECT {HIT_COLUMNS} FROM hits WHERE site = ANY(%s) AND ts >= %s "
                "AND ts < %s ORDER BY ts, site, local_id",
                (list(sites), t0 - LEAD_SECONDS, t1),
            )
            while rows := cur.fetchmany(FETCH_ROWS):
                write_hits(local, rows)
        for row in conn.execute(
            """SELECT minute, SUM(queries), SUM(blocked), SUM(forwarded), SUM(cached),
                       SUM(failed), SUM(refused), MAX(recorder_lag)
                FROM traffic WHERE site = ANY(%s) AND minute >= %s AND minute < %s
                GROUP BY minute""",
            (list(sites), t0 - LEAD_SECONDS, t1),
        ):
            local.execute(
                f"INSERT INTO traffic ({TRAFFIC_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                tuple(int(v) for v in row),
            )
        (first,) = conn.execute(
            "SELECT MIN(COALESCE(first_start, EXTRACT(EPOCH FROM first_seen)::bigint)) "
            "FROM sites WHERE site = ANY(%s)",
            (list(sites),),
        ).fetchone()
        (oldest,) = conn.execute(
            "SELECT LEAST(MIN(ts), %s) FROM hits WHERE site = ANY(%s)", (first, list(sites))
        ).fetchone()
        if oldest is not None:
            local.execute(
                "INSERT OR REPLACE INTO settings VALUES ('first_start', ?)", (str(int(oldest)),)
            )
        local.execute("COMMIT")
    finally:
        local.close()


def central_report(
    central: CentralConfig,
    build: Callable[[str], dict[str, Any]],
    t0: int,
    t1: int,
    sites: Sequence[str] = (),
) -> dict[str, Any]:
    """The report dict for SITES (all when empty): `build(db_path)` is the one-site
    report builder; adds `"sites": [{"site", "blocked", "attempts", "gaps"}]`."""
    pg = psycopg()
    try:
        with connect(central) as conn:
            require_schema(conn)
            chosen = _pick_sites(conn, sites)
            with tempfile.TemporaryDirectory(prefix="sinkhole-central-") as tmp:
                path = os.path.join(tmp, "all.db")
                materialize(conn, path, chosen, t0, t1)
                data = build(path)
                per_site = []
                for i, site in enumerate(chosen):
                    one = os.path.join(tmp, f"site{i}.db")
                    materialize(conn, one, [site], t0, t1)
                    part = build(one)
                    per_site.append(
                        {
                            "site": site,
                            "blocked": part["totals"]["blocked"],
                            "attempts": part["totals"]["attempts"],
                            "gaps": part["gaps"] + _behind(conn, site, t0, t1),
                        }
                    )
    except pg.Error as exc:
        raise CentralError(f"central store: {first_line(exc)}") from None
    data["sites"] = per_site
    data["central"] = {"sites": chosen}
    return data


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
            rows = conn.execute(
                """SELECT s.site, s.last_seen, s.last_shipped, s.backlog, s.oldest_unshipped,
                          s.dropped, s.policy_version, s.software_version, s.shipped_hits,
                          (SELECT COALESCE(SUM(count), 0) FROM hits h WHERE h.site = s.site)
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
