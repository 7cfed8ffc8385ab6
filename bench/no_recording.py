"""`sinkhole serve` with hit recording stubbed out: the benchmark's baseline for its cost.

Not a shipped switch, and never one: every blocked query an office's server
answers is recorded. The bench runs this beside the real server to measure
what recording costs on the blocked path (issue 6's "at most 10%"). Only
`HitBatcher.hit` (what a server's `Recorder.hit` is), the per-query part, becomes
a no-op; the writer thread and the traffic counters still run.
"""

from resolver.cli import main
from resolver.store import recorder


def _no_hit(self, *args, **kwargs) -> None:  # noqa: ANN001 - same signature as HitBatcher.hit
    return None


# Before any Recorder exists: each binds its batcher's `hit` when it is made.
recorder.HitBatcher.hit = _no_hit  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
