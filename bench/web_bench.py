"""The dashboard under a busy week: every page over 1,000,000 recorded hits (issue 15).

Fills a database with the last 7 days of hits (report_bench's office of 300 clients and
50 services, written as the recorder writes them), starts the real `sinkhole web` on a
free loopback port, logs in and times each page and API route; prints a markdown table
and writes it in its section of bench/WEB_BENCH.md (the other sections are kept).
Usage: python bench/web_bench.py [--hits N]

With --central, the same week of hits is in a central store instead (a throwaway
PostgreSQL cluster, tests/pgtest.py): SITES sites' hits COPYed into its partitions, its
rollups built as migration m003 builds them, and `sinkhole web` configured with `central`,
so every page reads all sites from PostgreSQL; the table goes in its own section of
bench/WEB_BENCH.md. Before each timed request a site's `shipped_hits` is moved on, as a
shipping does, so the overview's cache (`OverviewCache`) never answers: every figure is
a cold page, the case of a busy office whose sites ship every few seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report_bench import generate  # noqa: E402

from tests.dnstest.daemons import free_port, stop_by_pid  # noqa: E402

RUNS = 5
PAGES = (
    "/",
    "/?range=24h",
    "/?range=30d",
    "/attempts",
    "/attempts?since=7d&service=chatbot-3",
    "/attempts?since=7d&name=cdn.chatbot7",
    "/attempts?since=7d&group=group-2&client=10.2.0.9",
    "/services",
    "/rules",
    "/audit",
    "/report?since=7d",
    "/api/report?since=7d",
    "/api/attempts?since=7d&limit=50",
    "/api/services",
)
PASSWORD = "bench password long enough"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hits", type=int, default=1_000_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "WEB_BENCH.md"))
    parser.add_argument("--central", action="store_true", help="the hits in a central store")
    parser.add_argument("--sites", type=int, default=SITES)
    args = parser.parse_args()
    cluster = None
    with tempfile.TemporaryDirectory(prefix="web-bench-") as tmp:
        db = Path(tmp) / "sinkhole.db"
        now = int(time.time())
        started = time.monotonic()
        extra = ""
        if args.central:
            from tests.pgtest import PgCluster

            cluster = PgCluster()
            cluster.create().start()
            dsn = cluster.create_database("web_bench")
            fill_central(dsn, args.hits, args.sites, now - 7 * 86400, now)
            generate(db, 0, now - 7 * 86400, now)
            extra = f"central: {{dsn: '{dsn}', site: admin}}\n"
        else:
            generate(db, args.hits, now - 7 * 86400, now)
        gen_s = time.monotonic() - started
        port = free_port()
        cfg = Path(tmp) / "c.yaml"
        cfg.write_text(
            f"database: {db}\ntimezone: Europe/Paris\nmetrics_listen: ''\n"
            f"web: {{listen: '127.0.0.1:{port}'}}\n{extra}"
        )
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        cli = [sys.executable, "-m", "resolver"]
        subprocess.run(
            [*cli, "users", "add", "bench", "--role", "admin", "--password-stdin", "--config", cfg],
            input=PASSWORD,
            text=True,
            check=True,
            env=env,
        )
        proc = subprocess.Popen(
            [*cli, "web", "--config", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            rows = measure(f"http://127.0.0.1:{port}", dsn if args.central else None)
        finally:
            stop_by_pid(proc)
            if cluster is not None:
                cluster.destroy()
        size = db.stat().st_size
    load = os.getloadavg()
    if args.central:
        write_central(args, rows, gen_s, load)
        return
    lines = [
        f"### Dashboard pages over {args.hits:,} hits",
        "",
        f"`python bench/web_bench.py` on {time.strftime('%Y-%m-%d')}: the last 7 days of "
        f"{args.hits:,} hit rows (report_bench's 300 clients and 50 services), database "
        f"{size / 1e6:.0f} MB, generated in {gen_s:.1f} s; `sinkhole web` as a subprocess, "
        f"httpx on loopback, {RUNS} runs per route after one warm-up; {machine()}, load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.",
        "",
        "| route | median s | max s | bytes |",
        "| --- | ---: | ---: | ---: |",
        *(f"| `{p}` | {med:.3f} | {mx:.3f} | {n:,} |" for p, med, mx, n in rows),
        "",
        "Where the time goes: the overview reports its range with `build_report`, of the",
        "sections it shows only, and the counters of today and this week with the totals",
        "section only, in parallel threads, so it takes about as long as its range's report",
        "(REPORT_BENCH.md: ~0.33 s for a whole week of a million hits). The attempts log",
        "reads `hits` newest first by its `ts` index and stops at 200 rows; the other pages",
        "read small tables.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    replace_section(Path(args.out), "### Dashboard pages over ", text)


SITES = 4


def fill_central(dsn: str, hits: int, sites: int, t0: int, t1: int) -> None:
    from central_bench import fill_central as fill

    fill(dsn, hits, sites, t0, t1)


def write_central(args, rows, gen_s: float, load) -> None:
    lines = [
        f"### Dashboard pages with `central`: {args.hits:,} hits of {args.sites} sites",
        "",
        f"`python bench/web_bench.py --central` on {time.strftime('%Y-%m-%d')}: the last 7 "
        f"days of {args.hits:,} hit rows (the same generator) over {args.sites} sites, "
        "COPYed into a throwaway PostgreSQL 15 cluster on loopback, its rollups built as "
        f"m003 builds them (together {gen_s:.0f} s); `sinkhole web` with `central` "
        f"configured, {RUNS} runs per route after one warm-up, each after a site's "
        "`shipped_hits` moved on (a cold overview: its cache never answers); "
        f"{machine()}, load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.",
        "",
        "| route | median s | max s | bytes |",
        "| --- | ---: | ---: | ---: |",
        *(f"| `{p}` | {med:.3f} | {mx:.3f} | {n:,} |" for p, med, mx, n in rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    replace_section(Path(args.out), "### Dashboard pages with `central`", text)


def replace_section(out: Path, mark: str, text: str) -> None:
    """Put TEXT in OUT in place of the section whose heading starts with MARK (up to the
    next `### ` heading), or at the end: the other sections, the history of earlier
    runs, stay as they are."""
    old = out.read_text() if out.exists() else ""
    if mark not in old:
        out.write_text(old.rstrip() + "\n\n" + text if old.strip() else text)
        return
    start = old.index(mark)
    end = old.find("\n### ", start + len(mark))
    rest = "" if end < 0 else old[end:]
    out.write_text(old[:start] + text.rstrip() + "\n" + rest)


def shipped(dsn: str | None) -> None:
    """As if a site had just shipped: its `shipped_hits` moved on (the overview's cache
    key), nothing else changed."""
    if dsn is None:
        return
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE sites SET shipped_hits = shipped_hits + 1 WHERE site = 'site-1'")


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({cpu})"


def measure(url: str, dsn: str | None = None) -> list[tuple[str, float, float, int]]:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/health", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    out = []
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/login", data={"username": "bench", "password": PASSWORD})
        assert r.status_code == 303, r.text
        for path in PAGES:
            c.get(path)  # warm-up: the page cache, the templates
            times = []
            size = 0
            for _ in range(RUNS):
                shipped(dsn)
                t = time.perf_counter()
                r = c.get(path)
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, (path, r.status_code, r.text[:200])
                size = len(r.content)
            out.append((path, statistics.median(times), max(times), size))
    return out


if __name__ == "__main__":
    main()
