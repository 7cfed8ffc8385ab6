"""Benchmark of the weekly report over a week of 1,000,000 recorded hits (issue 5)."""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resolver import report as rpt  # noqa: E402
from resolver.store import Store  # noqa: E402
from resolver.store.db import connect  # noqa: E402
from resolver.store.rollups import INSERT_HITS, write_hits  # noqa: E402

HITS = 1_000_000
RUNS = 3
TZ = "Europe/Paris"
WEEK = "2026-W12"
SEED = 5
#: An office of 300 machines in 5 groups, some outside every group.
CLIENTS = [
    (f"10.{g}.{i // 250}.{i % 250 + 1}", f"group-{g}" if g else None)
    for g in range(6)
    for i in range(50)
]
#: (service, category, names looked up): chatbots, a custom rule, an imported list, bypass.
SERVICES = [
    *(
        (
            f"chatbot-{i}",
            "ai-chatbots",
            [f"chatbot{i}.example", f"api.chatbot{i}.example", f"cdn.chatbot{i}.example"],
        )
        for i in range(32)
    ),
    (None, "custom", ["chat.example.net"]),
    (None, "list:extra", [f"bot{i}.example.org" for i in range(20)]),
    *((f"bypass-{i}", "bypass", [f"doh{i}.example"]) for i in range(16)),
]
QTYPES = ("A", "AAAA", "HTTPS")


def make_rows(n: int, t0: int, t1: int, seed: int = SEED) -> list[tuple]:
    """n hit rows in [t0, t1) as browser bursts, in timestamp order as the recorder writes."""
    rng = random.Random(seed)
    rows: list[tuple] = []
    while len(rows) < n:
        client, group = rng.choice(CLIENTS)
        service, category, names = rng.choice(SERVICES)
        qname = rng.choice(names)
        t = rng.randrange(t0, t1)
        # A, AAAA and HTTPS at once, then retries, some within the 5-minute gap, some beyond.
        for _ in range(min(rng.randint(1, 6), n - len(rows))):
            ts = min(t, t1 - 1)
            rows.append(
                (
                    ts,
                    client,
                    group,
                    qname,
                    rng.choice(QTYPES),
                    service,
                    category,
                    qname,
                    "null",
                    rng.choice((1, 1, 1, 2)),
                )
            )
            t += rng.choice((0, 1, 30, 200, 290, 301, 400))
    rows.sort(key=lambda r: r[0])
    return rows


def generate(path: Path, n: int, t0: int, t1: int, seed: int = SEED) -> None:
    """n hits in [t0, t1), written like the recorder writes them, and a traffic row for
    every minute."""
    with Store(path):  # the schema, by the migrations the server runs
        pass
    rows = make_rows(n, t0, t1, seed)
    conn = connect(path)
    conn.execute("BEGIN")
    conn.executemany(INSERT_HITS, rows)
    conn.executemany(
        "INSERT INTO traffic (minute, queries, blocked) VALUES (?, ?, ?)",
        ((m, 2000, 0) for m in range(t0 - t0 % 60, t1, 60)),
    )
    conn.execute("COMMIT")
    conn.close()


def time_recording(
    path: Path, rows: list[tuple], batch: int, per_row: bool = False
) -> tuple[float, float]:
    """Wall and CPU seconds to write `rows` into a new database as the recorder's writer
    thread does: `store.write_hits` (the INSERT, and the rollups key by key), one
    IMMEDIATE transaction per `batch` rows. With `per_row`, a bare INSERT instead, as any
    other writer's, which the rollup trigger on `hits` follows hit by hit."""
    with Store(path):
        pass
    conn = connect(path)
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        if per_row:
            conn.executemany(INSERT_HITS, rows[i : i + batch])
        else:
            write_hits(conn, rows[i : i + batch])
        conn.execute("COMMIT")
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    conn.close()
    return wall, cpu


def time_report(path: Path, start: datetime, end: datetime) -> tuple[float, float, dict]:
    """Wall and CPU seconds of one build_report call, and the report."""
    w0, c0 = time.perf_counter(), time.process_time()
    report = rpt.build_report(
        path,
        start=start,
        end=end,
        tz=TZ,
        privacy="ip",
        retention_days=3650,
        groups={f"group-{g}": [f"10.{g}.0.0/16"] for g in range(1, 6)},
        service_names={},
    )
    return time.perf_counter() - w0, time.process_time() - c0, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hits", type=int, default=HITS)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--db", type=Path, help="reuse (or create) this database file")
    parser.add_argument("--output", type=Path, help="also write the snippet to this file")
    parser.add_argument(
        "--record",
        type=int,
        metavar="BATCH",
        help="instead: time writing the hits in transactions of BATCH rows (the recorder's "
        "write path, rollups included) into a new database",
    )
    parser.add_argument(
        "--per-row",
        action="store_true",
        help="with --record: a bare INSERT and the per-hit rollup trigger, as other writers",
    )
    parser.add_argument(
        "--rate",
        type=int,
        metavar="ROWS",
        help="with --record: the same hits, ROWS to a second (their timestamps moved "
        "closer), as a flood of blocked queries makes them",
    )
    args = parser.parse_args()

    start, end = rpt.week_bounds(WEEK, TZ)
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    if args.record:
        rows = make_rows(args.hits, t0, t1)
        if args.rate:
            rows = [(t0 + i // args.rate, *r[1:]) for i, r in enumerate(rows)]
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu = time_recording(Path(tmp) / "record.db", rows, args.record, args.per_row)
        load = os.getloadavg()
        how = "a bare INSERT (per-hit trigger)" if args.per_row else "store.write_hits"
        rate = f", {args.rate:,} a second" if args.rate else ""
        print(
            f"Writing {len(rows):,} hits{rate} with {how} in transactions of {args.record:,} "
            "rows: "
            f"{wall:.1f} s wall, {cpu:.1f} s CPU ({cpu / len(rows) * 1e6:.1f} µs per hit); "
            f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}."
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "bench.db"
        gen = None
        if not path.exists():
            g0 = time.perf_counter()
            generate(path, args.hits, t0, t1)
            gen = time.perf_counter() - g0
        walls, cpus = [], []
        for _ in range(args.runs):
            wall, cpu, report = time_report(path, start, end)
            walls.append(wall)
            cpus.append(cpu)
        size = path.stat().st_size
    load = os.getloadavg()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    totals = report["totals"]
    lines = [
        f"### Weekly report over {args.hits:,} hits",
        "",
        f"`python bench/report_bench.py` on {datetime.now(ZoneInfo('UTC')):%Y-%m-%d}: one week "
        f"({WEEK}, {TZ}) of {args.hits:,} hit rows from 300 clients and 50 services, "
        f"database {size / 1e6:.0f} MB; {os.cpu_count()} cores, load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; SQLite "
        f"{rpt.sqlite3.sqlite_version}, Python {sys.version.split()[0]}.",
        "",
        "| build_report | wall s | CPU s |",
        "| --- | ---: | ---: |",
        f"| median of {args.runs} | {statistics.median(walls):.3f} | "
        f"{statistics.median(cpus):.3f} |",
        f"| runs | {', '.join(f'{w:.3f}' for w in walls)} | "
        f"{', '.join(f'{c:.3f}' for c in cpus)} |",
        "",
        f"Report: {totals['blocked']:,} blocked queries, {totals['attempts']:,} attempts, "
        f"{totals['clients']} clients; peak RSS {rss} MB"
        + (f"; generating the database took {gen:.1f} s." if gen is not None else "."),
        "",
    ]
    snippet = "\n".join(lines)
    print(snippet)
    if args.output:
        args.output.write_text(snippet)


if __name__ == "__main__":
    main()
