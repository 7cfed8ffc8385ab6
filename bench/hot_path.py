"""The blocked and cached paths inside one process: `Resolver.handle` in a loop.

No sockets and no dnsperf: a loop hands the wire bytes of bench/run.py's blocked query
file (each catalog name and random names under it, A and AAAA) to the resolver of a
real `Server` (its policy from the shipped catalog, privacy `hashed`, rate limit off, a
database in a temp dir), with hit recording on and off in turns, then the cached
scenario's 400 names (their answers stored in the resolver's cache first, as nsd would
give them), and prints the best ns per query of each, in CPU time of the thread (on a
shared machine, time the loop spent preempted does not count). What the Python part of a
blocked or cached answer costs, apart from the system calls; run py-spy on it to see
where (bench/RESULTS.md, notes).

    python bench/hot_path.py [--queries 600000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402


class Sink:
    """Where a parked answer would go: blocked answers never are."""

    def send(self, out: bytes, addr: object) -> None:
        pass

    def expect(self) -> None:
        pass


def wires() -> list[bytes]:
    import dns.message

    _, sinkholed, keep = run.read_catalog(run.BLOCKLIST_DIR)
    queries = run.blocked_queries(sinkholed, keep, random.Random(20240611))
    return [dns.message.make_query(n, t, use_edns=True).to_wire() for n, t in queries]


def cached_wires(resolver) -> list[bytes]:  # noqa: ANN001
    """The cached scenario's queries, their answers stored in `resolver`'s cache."""
    import dns.message
    import dns.rrset

    from resolver import wire

    packets = []
    for i in range(run.CACHED_NAMES):
        name = run.cached_name(i)
        query = dns.message.make_query(name, "A", use_edns=True)
        answer = dns.message.make_response(query)
        answer.answer.append(
            dns.rrset.from_text(name + ".", 3600, "IN", "A", run.cached_address(i))
        )
        data = query.to_wire()
        q = wire.parse_query(data)
        response = answer.to_wire()
        resolver.cache.store(q, response, wire.scan_answer(response, q))
        packets.append(data)
    return packets


async def measure(count: int, rounds: int) -> None:
    sys.path.insert(0, str(run.REPO_ROOT))
    from resolver.config import parse_config
    from resolver.server import Server, settle_gc

    packets = wires()
    batch = (packets * (count // len(packets) + 1))[:count]
    with tempfile.TemporaryDirectory(prefix="sinkhole-hot-") as tmp:
        raw = {
            "database": os.path.join(tmp, "sinkhole.db"),
            "upstreams": [f"{run.LOOPBACK}:9"],
            "privacy": {"clients": "hashed"},
            "rate_limit": {"per_client": 0},
        }
        server = Server(parse_config(raw, "hot_path"))
        resolver, sink, addr = server.resolver, Sink(), (run.LOOPBACK, 5353)
        settle_gc()
        cached = cached_wires(resolver)
        cached = (cached * (count // len(cached) + 1))[:count]
        best: dict[str, float] = {}
        for _ in range(rounds):
            for label, recorder, queries in (
                ("recording", server.recorder, batch),
                ("no recording", None, batch),
                ("cached", server.recorder, cached),
            ):
                resolver.recorder = recorder
                resolver.set_policy(resolver.policy)
                handle = resolver.handle
                start = time.thread_time()
                for data in queries:
                    handle(data, run.LOOPBACK, sink, addr)
                took = (time.thread_time() - start) / count * 1e9
                best[label] = min(best.get(label, took), took)
                server.recorder.batch.handoff(everything=True)
        outcomes = resolver.counts
        assert outcomes[0] and outcomes[2] and sum(outcomes) == outcomes[0] + outcomes[2]
    print(
        f"{len(packets)} distinct blocked queries and {run.CACHED_NAMES} cached ones, "
        f"{count} per round, best of {rounds}:"
    )
    for label, ns in best.items():
        print(f"  {label}: {ns:.0f} ns per query")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=600_000, help="queries per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (best kept)")
    args = parser.parse_args()
    asyncio.run(measure(args.queries, args.rounds))


if __name__ == "__main__":
    main()
