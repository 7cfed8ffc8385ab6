"""Bookkeeping threads give way to the DNS thread.

The recorder's writer, the policy poll and the central shipper do work that can
wait: a hit written a few milliseconds later is the same hit. A query cannot
wait. Measured at 5,000 q/s on one pinned core (bench/PROFILE.md, "Latency at a
steady rate"), these threads' turns were where the slowest 1% of answers came
from: a thread that the kernel had just given the core runs on for its time slice
(milliseconds under EEVDF) before the woken DNS thread gets it back.

So they run at SCHED_IDLE (sched(7)): the kernel gives them only CPU time that no
ordinary thread wants, and a waking DNS thread takes the core from them at once.
On a machine that has spare CPU time, which is every office's DNS server, they run
as soon as before. On a core kept busy they wait; their work stays in memory
(bounded, resolver/store/recorder.py) until the load drops, and whoever stops them
first gives them back ordinary priority (`ordinary_priority`), so a final flush
never waits behind the load.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("sinkhole.background")


def idle_priority() -> bool:
    """Run the calling thread at SCHED_IDLE; False where the system has no such policy."""
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None:
        return False
    try:
        # pid 0: the calling thread, not the whole process (sched_setscheduler(2)).
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as exc:
        log.debug("cannot lower the priority of %s: %s", threading.current_thread().name, exc)
        return False
    return True


def ordinary_priority(thread: threading.Thread | None) -> None:
    """Give `thread` back the ordinary policy (SCHED_OTHER), from any thread."""
    tid = thread.native_id if thread is not None else None
    policy = getattr(os, "SCHED_OTHER", None)
    if tid is None or policy is None or not thread.is_alive():
        return
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(0))
    except OSError as exc:  # gone meanwhile, or not allowed: it runs on as it was
        log.debug("cannot restore the priority of %s: %s", thread.name, exc)
