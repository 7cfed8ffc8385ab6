"""Benchmark of a 1,000,000-name imported list: import, load, memory, lookups (issue 6)."""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMES = 1_000_000
SIZES = (1_000, 100_000, 1_000_000)
PROBES = 10_000
SEED = 6


def write_domains(path: Path, n: int, seed: int = SEED) -> None:
    """n distinct names of 2 to 4 labels, one a line, as a domains-format list."""
    rng = random.Random(seed)
    tlds = ("com", "net", "org", "io", "ai", "de", "fr")
    with path.open("w") as f:
        for i in range(n):
            labels = [f"n{i:07d}x{rng.randrange(1000)}"]
            labels += [f"s{rng.randrange(100)}" for _ in range(rng.randrange(2))]
            f.write(".".join([*labels, f"d{rng.randrange(5000)}", rng.choice(tlds)]) + "\n")


def import_list(db: Path, source: Path, config: Path) -> tuple[float, int]:
    """Wall seconds of `sinkhole lists import` and the peak RSS (MB) of that process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "resolver", "lists", "import", str(source), "--name", "big",
         "--format", "domains", "--config", str(config), "--db", str(db)],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far: run the import first.
    return wall, max(peak, before) // 1024


# Runs in a fresh interpreter so that the RSS it reports is the policy's alone.
LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    from resolver.catalog import load_catalog
    from resolver.config import load_config
    from resolver.server import load_policy
    config = load_config(sys.argv[1])
    catalog = load_catalog(config.catalog)
    before = rss()
    t = time.perf_counter()
    policy, error = load_policy(config, catalog, sys.argv[2])
    wall = time.perf_counter() - t
    assert error is None, error
    print(json.dumps({"wall": wall, "rss_before": before, "rss_after": rss(),
                      "blocks": policy.matcher.block_count}))
    """
)

LOOKUP_SCRIPT = textwrap.dedent(
    """
    import json, random, sys, timeit
    from resolver.policy import Matcher, Rule
    names = open(sys.argv[1]).read().split()
    probes_n, sizes = int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")]
    rng = random.Random(1)
    # The same probes against every size: half listed names (all in the smallest list),
    # half names under them, plus unlisted names, so hits and misses both walk labels.
    base = names[: min(sizes)]
    probes = [rng.choice(base) for _ in range(probes_n // 2)]
    probes += ["www." + rng.choice(base) for _ in range(probes_n // 4)]
    probes += [f"nothere{i}.example.com" for i in range(probes_n - len(probes))]
    rule = Rule("list:big", source="big")
    out = {}
    for size in sizes:
        m = Matcher()
        for name in names[:size]:
            m.add_block(name, rule)
        lookup = m.lookup
        def run():
            for p in probes:
                lookup(p)
        best = min(timeit.repeat(run, number=5, repeat=5)) / 5
        out[size] = best / len(probes) * 1e9
    print(json.dumps(out))
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--names", type=int, default=NAMES)
    parser.add_argument("--output", type=Path, help="also write the snippet to this file")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        source, db, config = tmp / "big.txt", tmp / "bench.db", tmp / "sinkhole.yaml"
        config.write_text(f"database: {db}\n")
        write_domains(source, args.names)
        os.environ["PYTHONPATH"] = str(ROOT)
        import_wall, import_rss = import_list(db, source, config)
        load = json.loads(
            subprocess.run(
                [sys.executable, "-c", LOAD_SCRIPT, str(config), str(db)],
                check=True, capture_output=True, text=True, cwd=ROOT, env=env,
            ).stdout
        )  # fmt: skip
        sizes = [s for s in SIZES if s <= args.names]
        lookups = json.loads(
            subprocess.run(
                [sys.executable, "-c", LOOKUP_SCRIPT, str(source), str(PROBES),
                 ",".join(map(str, sizes))],
                check=True, capture_output=True, text=True, cwd=ROOT, env=env,
            ).stdout
        )  # fmt: skip
        db_mb = db.stat().st_size / 1e6
        src_mb = source.stat().st_size / 1e6
    avg = os.getloadavg()
    lines = [
        f"### Imported list of {args.names:,} names",
        "",
        f"`python bench/list_bench.py` on {datetime.now(UTC):%Y-%m-%d}: a domains file of "
        f"{args.names:,} names ({src_mb:.0f} MB); database {db_mb:.0f} MB after the import; "
        f"{os.cpu_count()} cores, load average {avg[0]:.2f} / {avg[1]:.2f} / {avg[2]:.2f}; "
        f"Python {sys.version.split()[0]}.",
        "",
        "| step | wall s | memory |",
        "| --- | ---: | --- |",
        f"| `sinkhole lists import` (whole CLI process) | {import_wall:.2f} | "
        f"peak RSS {import_rss} MB |",
        f"| `load_policy` (database -> Matcher, as the server does) | {load['wall']:.2f} | "
        f"+{load['rss_after'] - load['rss_before']:.0f} MB RSS "
        f"({load['rss_before']:.0f} -> {load['rss_after']:.0f} MB) |",
        "",
        f"Lookup cost, the same {PROBES:,} names (listed, under a listed name, unlisted) "
        "against lists of each size, best of 5:",
        "",
        "| names in the list | ns per lookup |",
        "| ---: | ---: |",
        *(f"| {int(size):,} | {ns:.0f} |" for size, ns in lookups.items()),
        "",
    ]
    snippet = "\n".join(lines)
    print(snippet)
    if args.output:
        args.output.write_text(snippet)


if __name__ == "__main__":
    main()
