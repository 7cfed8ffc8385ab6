"""The miss path inside one process: `Resolver.handle` on names new to the cache, forwarded
to a real nsd, with no client sockets and no dnsperf.

nsd serves bench/run.py's zone (pinned to CPU 0 when there are two cores); this process
(pinned to CPU 1) hands the resolver of a real `Server` (config as the bench's: rate limit
off, privacy `hashed`) one distinct zone name after another, keeping `--window` of them
in flight as dnsperf does, and counts the answers its sink gets. Per round it prints the
CPU time of this process per miss (what the bench's "server CPU" is made of, without the
client side's recvmmsg/sendmmsg) and the cyclic GC's collections and time per miss. The
first round warms up; the rest are compared. What the Python part of a miss costs; run
py-spy on it to see where (bench/PROFILE.md, "Misses").

    python bench/miss_path.py [--misses 40000] [--rounds 5] [--window 100] [--gc off|T0,T1,T2]

On a shared machine the CPU time per round moves by +-15% with the others' load: compare
code in turns, several runs each, and look at the low quantiles (bench/PROFILE.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402


class Round:
    """One round: hands the resolver its misses, keeping `window` of them in flight, and
    is the sink their answers come back to."""

    def __init__(self, handle, packets: list[bytes], window: int, addr: tuple) -> None:
        self.handle = handle
        self.packets = iter(packets)
        self.misses = len(packets)
        self.window = window
        self.addr = addr
        self.sent = 0
        self.answers = 0
        self.scheduled = False
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()

    def submit(self) -> None:
        self.scheduled = False
        want = self.window - (self.sent - self.answers)
        for data in self.packets:
            self.handle(data, self.addr[0], self, self.addr)
            self.sent += 1
            want -= 1
            if want <= 0:
                break
        if self.answers >= self.misses and not self.done.done():
            self.done.set_result(None)

    def send(self, out: bytes, addr: object) -> None:
        self.answers += 1
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.submit)

    def expect(self) -> None:
        pass


class GcClock:
    """Collections per generation and their time, from gc.callbacks."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._start = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._start
            self.counts[info["generation"]] += 1


async def measure(
    port: int, names: int, misses: int, rounds: int, window: int, gc_threshold: str
) -> None:
    sys.path.insert(0, str(run.REPO_ROOT))
    from resolver.config import parse_config
    from resolver.server import Server, settle_gc

    with tempfile.TemporaryDirectory(prefix="sinkhole-miss-") as tmp:
        raw = {
            "database": os.path.join(tmp, "sinkhole.db"),
            "upstreams": [f"{run.LOOPBACK}:{port}"],
            "privacy": {"clients": "hashed"},
            "rate_limit": {"per_client": 0},
        }
        server = Server(parse_config(raw, "miss_path"))
        resolver = server.resolver
        handle = resolver.handle
        settle_gc(collect=True)
        if gc_threshold == "off":
            gc.disable()
        elif gc_threshold:
            gc.set_threshold(*map(int, gc_threshold.split(",")))
        clock = GcClock()
        addr = (run.LOOPBACK, 5353)
        # Every miss a name of its own, never asked again (the first round warms up).
        packets = [
            run.build_query(run.miss_name(i), run.QTYPE_A, i & 0xFFFF)
            for i in range(min(names, misses * rounds))
        ]
        print(f"{misses} misses per round, {window} in flight, nsd on 127.0.0.1:{port}")
        for r in range(rounds):
            one = Round(handle, packets[r * misses : (r + 1) * misses], window, addr)
            gc0, gcs0 = list(clock.counts), list(clock.seconds)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            one.submit()
            await one.done
            cpu = time.process_time() - cpu0
            wall = time.perf_counter() - wall0
            gcs = [a - b for a, b in zip(clock.counts, gc0, strict=True)]
            us = [(a - b) / misses * 1e6 for a, b in zip(clock.seconds, gcs0, strict=True)]
            label = "warm-up" if r == 0 else f"round {r}"
            print(
                f"  {label}: {cpu / misses * 1e6:.1f} us CPU per miss, "
                f"{misses / wall:,.0f} misses/s, GC {gcs} "
                f"{sum(us):.2f} us per miss (young {us[0]:.2f}, older {us[1] + us[2]:.2f}); "
                f"forwarded {resolver.counts[1]}, failed {resolver.counts[6]}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", type=int, default=40_000, help="misses per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (the first warms up)")
    parser.add_argument("--window", type=int, default=100, help="queries in flight")
    parser.add_argument(
        "--gc", default="", help="'off', or the GC thresholds to set after start: 'T0,T1,T2'"
    )
    args = parser.parse_args()
    names = args.misses * args.rounds
    pin = (os.cpu_count() or 1) >= 2
    with tempfile.TemporaryDirectory(prefix="sinkhole-miss-nsd-") as tmp:
        workdir = Path(tmp)
        run.write_zone(workdir / f"{run.ZONE}.zone", names)
        port, stack = run.start_nsd(workdir, run.LOAD_CPU if pin else None)
        with stack:
            if pin:
                os.sched_setaffinity(0, {int(run.SERVER_CPU)})
            import uvloop

            uvloop.run(measure(port, names, args.misses, args.rounds, args.window, args.gc))


if __name__ == "__main__":
    main()
