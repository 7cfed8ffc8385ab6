"""Benchmark of the central store on PostgreSQL (issue 14): the shipping rate from a
site's SQLite outbox into PostgreSQL, and the cross-site weekly report.

Both run against a throwaway PostgreSQL cluster (tests/pgtest.py: initdb + pg_ctl on a
free loopback port, as the `postgres` user when run as root), stopped by its PID at the
end, also on failure or Ctrl-C.

- shipping: HITS hits of a week, generated as bench/report_bench.py does (browser
  bursts of 300 clients over 68 services), written into a site's SQLite file, then
  sent with the real code (`resolver.central.shipper.ship_all`: the Shipper's COPY
  batches of `central.batch_rows`, ON CONFLICT, outbox cleared after each commit).
- report: REPORT_HITS hits spread over SITES sites, COPYed straight into the monthly
  partitions of `hits` (plus a traffic row per site and minute), the rollups built from
  them (`resolver.central.rollups.backfill`, as m003 does), then `sinkhole report
  --week ... --format json` with `central` configured: the CLI's code path, as an
  administrator runs it. Its total is checked against SUM(count) in PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from bench.report_bench import TZ, WEEK, generate, make_rows  # noqa: E402
from resolver import report as rpt  # noqa: E402
from resolver.central import connect, rollups  # noqa: E402
from resolver.central.schema import ensure_partitions, migrate  # noqa: E402
from resolver.central.shipper import ship_all  # noqa: E402
from resolver.config import CentralConfig  # noqa: E402
from tests.pgtest import PgCluster  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIP_HITS = 1_000_000
REPORT_HITS = 10_000_000
SITES = 4
#: Rows generated and COPYed at a time (make_rows keeps them in memory).
CHUNK = 500_000
HIT_COLUMNS = (
    "site, local_id, ts, client, client_group, qname, qtype, service, category, rule, action, count"
)


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_shipping(cluster: PgCluster, work: Path, hits: int, t0: int, t1: int) -> dict:
    dsn = cluster.create_database("bench_ship")
    central = CentralConfig(dsn=dsn, site="site-a")
    with connect(central) as conn:
        migrate(conn)
    db = work / "site-a.db"
    generate(db, hits, t0, t1)
    before = load()
    w0, c0 = time.perf_counter(), time.process_time()
    sent, backlog = ship_all(central, str(db))
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    with connect(central) as conn:
        (stored,) = conn.execute("SELECT COUNT(*) FROM hits").fetchone()
    if stored != hits or backlog != 0:
        raise SystemExit(f"shipping: {stored} hits in PostgreSQL of {hits}, backlog {backlog}")
    return {
        "hits": hits,
        "rows_sent": sent,
        "wall_s": wall,
        "cpu_s": cpu,
        "hits_per_s": hits / wall,
        "batch_rows": central.batch_rows,
        "load_before": before,
    }


def fill_central(dsn: str, hits: int, sites: int, t0: int, t1: int) -> int:
    """REPORT_HITS hits over SITES sites COPYed into the partitions; the SUM(count)."""
    central = CentralConfig(dsn=dsn, site="admin")
    total = 0
    with connect(central) as conn:
        migrate(conn)
        ensure_partitions(conn, t0 - 86400, t1 + 86400)
        for s in range(sites):
            site = f"site-{s + 1}"
            conn.execute(
                "INSERT INTO sites (site, last_seen, last_shipped, first_start, shipped_hits) "
                "VALUES (%s, now(), now(), %s, %s)",
                (site, t0 - 86400, hits // sites),
            )
            local_id = 0
            left = hits // sites
            seed = 100 + s
            while left > 0:
                rows = make_rows(min(CHUNK, left), t0, t1, seed=seed)
                seed += sites
                left -= len(rows)
                with conn.cursor().copy(f"COPY hits ({HIT_COLUMNS}) FROM STDIN") as copy:
                    for r in rows:
                        local_id += 1
                        total += r[9]
                        copy.write_row((site, local_id, *r))
            with conn.cursor().copy(
                "COPY traffic (site, minute, queries, blocked) FROM STDIN"
            ) as copy:
                for m in range(t0 - t0 % 60, t1, 60):
                    copy.write_row((site, m, 2000, 0))
        conn.execute("ANALYZE hits")
        conn.execute("ANALYZE traffic")
        # The rollups the shipper keeps, built from the COPYed hits as m003 builds them.
        r0 = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            rollups.backfill(cur)
        ROLLUP_BUILD["s"] = time.perf_counter() - r0
        for table in ("hits_hour", *rollups.PARTITIONED):
            conn.execute(f"ANALYZE {table}")
    return total


#: Seconds `rollups.backfill` took over the COPYed hits (fill_central).
ROLLUP_BUILD: dict[str, float] = {}


def bench_report(cluster: PgCluster, work: Path, hits: int, sites: int, t0: int, t1: int) -> dict:
    dsn = cluster.create_database("bench_report")
    g0 = time.perf_counter()
    total = fill_central(dsn, hits, sites, t0, t1)
    generated = time.perf_counter() - g0
    cfg = work / "admin.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "database": str(work / "admin.db"),
                "central": {"dsn": dsn, "site": "admin"},
                "timezone": TZ,
                "privacy": {"clients": "ip", "retention_days": 3650},
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SINKHOLE_DB": str(work / "admin.db")}
    argv = [sys.executable, "-m", "resolver", "report", "--week", WEEK, "--format", "json"]
    before = load()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.perf_counter()
    done = subprocess.run(
        [*argv, "--config", str(cfg)], capture_output=True, text=True, env=env, check=False
    )
    wall = time.perf_counter() - w0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"report failed: {done.stderr.strip()}")
    data = json.loads(done.stdout)
    # Bypass attempts (DoH, canary domains) are counted apart from the blocked total.
    reported = data["totals"]["blocked"] + sum(b["blocked"] for b in data["bypass"])
    if reported != total:
        raise SystemExit(f"report: {reported} blocked, PostgreSQL has {total}")
    per_site = sum(s["blocked"] for s in data["sites"])
    if per_site != data["totals"]["blocked"]:
        raise SystemExit(f"report: the sites sum to {per_site}, the total is {reported}")
    return {
        "hits": hits,
        "sites": sites,
        "blocked": total,
        "attempts": data["totals"]["attempts"],
        "generate_s": generated,
        "rollups_s": ROLLUP_BUILD.get("s", 0.0),
        "wall_s": wall,
        "cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
        "max_rss_mb": ru1.ru_maxrss / 1024,
        "load_before": before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ship-hits", type=int, default=SHIP_HITS)
    parser.add_argument("--report-hits", type=int, default=REPORT_HITS)
    parser.add_argument("--sites", type=int, default=SITES)
    parser.add_argument("--only", choices=("shipping", "report"), help="run only this part")
    args = parser.parse_args()
    start, end = rpt.week_bounds(WEEK, TZ)
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    cluster = PgCluster()
    work = Path(tempfile.mkdtemp(prefix="sinkhole-central-bench-"))
    try:
        cluster.create().start()
        if args.only in (None, "shipping"):
            ship = bench_shipping(cluster, work, args.ship_hits, t0, t1)
            print(
                f"shipping: {ship['hits']:,} hits (+ {ship['rows_sent'] - ship['hits']:,} traffic "
                f"minutes) in {ship['wall_s']:.1f} s wall, {ship['cpu_s']:.1f} s CPU of this "
                f"process: {ship['hits_per_s']:,.0f} hits/s; batches of {ship['batch_rows']}; "
                f"load before {ship['load_before']}",
                flush=True,
            )
        if args.only in (None, "report"):
            rep = bench_report(cluster, work, args.report_hits, args.sites, t0, t1)
            print(
                f"report: {rep['hits']:,} hits over {rep['sites']} sites ({rep['blocked']:,} "
                f"blocked, {rep['attempts']:,} attempts; generated and COPYed in "
                f"{rep['generate_s']:.0f} s, of which the rollups built in "
                f"{rep['rollups_s']:.0f} s): `sinkhole report --week {WEEK}` "
                f"{rep['wall_s']:.1f} s wall, {rep['cpu_s']:.1f} s CPU, max RSS "
                f"{rep['max_rss_mb']:.0f} MB; load before {rep['load_before']}",
                flush=True,
            )
    finally:
        cluster.destroy()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
