"""Bookkeeping threads run at SCHED_IDLE, the DNS thread does not (resolver/background.py).

On real threads: the recorder's writer in this process, and every thread of a real
`sinkhole serve` process read from /proc.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from resolver.background import idle_priority, ordinary_priority
from resolver.store.recorder import Recorder
from tests.conftest import query, wait_for

SCHED_IDLE = os.SCHED_IDLE  # Linux, the one system sinkhole serves on


def policy_of(tid: int) -> int:
    return os.sched_getscheduler(tid)


def test_idle_priority_lowers_only_the_calling_thread():
    seen: dict[str, int] = {}

    def lowered() -> None:
        assert idle_priority()
        seen["thread"] = policy_of(threading.get_native_id())

    t = threading.Thread(target=lowered)
    t.start()
    t.join()
    assert seen["thread"] == SCHED_IDLE
    assert policy_of(threading.get_native_id()) == os.SCHED_OTHER


def test_the_recorder_writes_at_idle_priority_and_flushes_at_exit_at_ordinary_priority(
    tmp_path: Path,
):
    rec = Recorder(str(tmp_path / "hits.db"))
    rec.start()
    thread = rec._thread
    assert thread is not None
    try:
        assert wait_for(lambda: policy_of(thread.native_id) == SCHED_IDLE)
        ordinary_priority(thread)  # what stop() does first, as root or under RLIMIT_NICE 20
        assert policy_of(thread.native_id) == os.SCHED_OTHER
    finally:
        assert rec.stop()
    assert not thread.is_alive()


def test_a_server_answers_from_an_ordinary_thread_and_keeps_its_books_at_idle(sinkhole):
    server = sinkhole()
    assert query(server.address, "chatgpt.com").answer  # a hit for the recorder to write
    pid = server.pid

    def policies() -> dict[int, int]:
        out = {}
        for entry in Path(f"/proc/{pid}/task").iterdir():
            try:
                out[int(entry.name)] = policy_of(int(entry.name))
            except OSError:
                pass  # a thread that ended meanwhile
        return out

    # The recorder's writer and, after its first turn, the policy poll's thread.
    assert wait_for(lambda: sum(p == SCHED_IDLE for p in policies().values()) >= 2), policies()
    seen = policies()
    assert seen[pid] == os.SCHED_OTHER  # the event loop: queries, answers, timers
    assert query(server.address, "chatgpt.com").answer[0][0].address == "0.0.0.0"
