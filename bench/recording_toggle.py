"""What hit recording costs, measured inside one server: recording on and off in turns.

`make bench` compares two servers, one with `Recorder.hit` stubbed out
(bench/no_recording.py), in runs taken one after the other; on this VM their
speed drifts by up to 20% over minutes, so a few percent of cost hide in the
noise. Here one sinkhole, pinned to its core and driven at its maximum rate by
dnsperf on the blocked scenario, switches the body of `HitBatcher.hit` (a server's
`Recorder.hit`) on and off every PERIOD seconds and counts the blocked queries of each period.
Adjacent periods compare under the same drift; the cost is the median of their
ratios. On a machine shared with other work the server gets a varying share of its
core, which moves the rates more than recording does; the server also writes its CPU
time per blocked query of each period (all its threads, the recorder's writer too), and
the script prints the cost by that measure beside the first: 1 - the median of
cpu(off)/cpu(on) over the same pairs. Both states make the same two calls per query, so
only the body of `HitBatcher.hit` differs (the one call the Blocker makes to it is not counted);
the writer thread runs throughout, with nothing to write in the periods off.

    python bench/recording_toggle.py [--seconds 40] [--period 1]

`make bench` runs the same measurement as its `recording` scenario (bench/run.py),
which gives bench/RESULTS.md its verdict on the cost; this script is the quick way
to take it alone. Run with `--serve` it is the launcher that the server runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

# bench/ is not a package: reuse run.py's helpers by putting its folder on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402
from run import BenchError, log  # noqa: E402

RATES_ENV = run.TOGGLE_RATES_ENV  # where the server writes "state rate" per period
PERIOD_ENV = run.TOGGLE_PERIOD_ENV


def serve() -> None:
    """`sinkhole serve`, with hit recording on and off in turns; runs in the server."""
    sys.path.insert(0, str(run.REPO_ROOT))
    from resolver.cli import main
    from resolver.store import recorder

    real = recorder.HitBatcher.hit
    calls = [0]
    recording = [False]

    def nothing(self: recorder.HitBatcher, client: str, verdict: object) -> None:
        return None

    # Installed before the server starts (its Recorder binds `hit` once). Both states
    # make the same two calls, so only the body of the real `hit` differs.
    def toggled(self: recorder.HitBatcher, client: str, verdict) -> None:  # noqa: ANN001
        calls[0] += 1
        (real if recording[0] else nothing)(self, client, verdict)

    period = float(os.environ[PERIOD_ENV])
    out = Path(os.environ[RATES_ENV])

    def switch() -> None:
        last, since, cpu = 0, time.monotonic(), time.process_time()
        with out.open("w") as f:
            while True:
                time.sleep(period)
                now, count, used = time.monotonic(), calls[0], time.process_time()
                rate = (count - last) / (now - since)
                per_query = (used - cpu) / (count - last) * 1e6 if count > last else 0.0
                f.write(f"{int(recording[0])} {rate:.0f} {per_query:.3f}\n")
                f.flush()
                last, since, cpu = count, now, used
                recording[0] = not recording[0]

    recorder.HitBatcher.hit = toggled  # type: ignore[method-assign]
    threading.Thread(target=switch, name="toggle", daemon=True).start()
    sys.argv = [sys.argv[0], *sys.argv[2:]]  # drop --serve: the rest is `serve --config`
    main()


def measure(seconds: float, period: float) -> None:
    with tempfile.TemporaryDirectory(prefix="sinkhole-toggle-") as tmp:
        workdir = Path(tmp)
        setup, _ = run.prepare(workdir, run.MIN_ZONE_NAMES, 1, pin=True)
        rates_file = workdir / "rates.txt"
        os.environ[RATES_ENV] = str(rates_file)
        os.environ[PERIOD_ENV] = str(period)
        variant = run.Variant(
            "sinkhole",
            "sinkhole (recording on and off)",
            ("blocked",),
            {"privacy": {"clients": "hashed"}},
            launcher=(str(Path(__file__).resolve()), "--serve"),
        )
        setup.nsd_port, nsd = run.start_nsd(workdir, setup.load_cpu)
        with nsd, run.server_under_test(setup, variant) as (port, _pid):
            perf = run.dnsperf(port, setup.files["blocked"], seconds=seconds)
        rates = run.read_toggle_rates(rates_file)
        cpu = [float(line.split()[2]) for line in rates_file.read_text().splitlines()]
    busy = run.busy_periods(rates)
    ratios = run.toggle_ratios(rates)
    share, pairs = 1 - statistics.median(ratios), len(ratios)
    on = [r for s, r in busy if s]
    off = [r for s, r in busy if not s]
    log(
        f"{perf.qps:.0f} q/s over the run, lost {perf.lost}; {pairs} pairs of {period:g} s "
        f"periods: on {statistics.mean(on):.0f}, off {statistics.mean(off):.0f} q/s"
    )
    print(f"hit recording cost (median of adjacent on/off ratios): {share:.1%}")
    # The same pairs by CPU time per query: the busy periods, by their index in `rates`.
    peak = max(rate for _, rate in rates)
    settled = [i for i, (_, rate) in enumerate(rates) if rate > peak / 2]
    settled = settled[run.TOGGLE_SETTLE_PERIODS : -1]
    cpu_ratios = [
        (cpu[b] / cpu[a]) if rates[a][0] else (cpu[a] / cpu[b])
        for a, b in zip(settled, settled[1:], strict=False)
        if rates[a][0] != rates[b][0] and cpu[a] and cpu[b]
    ]
    if cpu_ratios:
        per_on = statistics.median(cpu[i] for i in settled if rates[i][0])
        per_off = statistics.median(cpu[i] for i in settled if not rates[i][0])
        print(
            f"by CPU time per query (median {per_on:.2f} us on, {per_off:.2f} us off): "
            f"{1 - statistics.median(cpu_ratios):.1%} over {len(cpu_ratios)} pairs"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="dnsperf run (default 40)")
    parser.add_argument("--period", type=float, default=1.0, help="seconds per state (default 1)")
    args = parser.parse_args()
    try:
        measure(args.seconds, args.period)
    except BenchError as exc:
        print(f"recording_toggle: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
