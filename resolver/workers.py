"""Several server processes sharing the listening ports (SO_REUSEPORT), supervised by a parent.

The supervisor is handed the child to run (a function of the worker's index that
returns an exit code): it forks, restarts and signals processes, and knows
nothing of what they serve.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable

log = logging.getLogger("sinkhole.workers")

#: A worker that dies is restarted, but not faster than this (seconds), so a
#: worker that crashes at start cannot turn the parent into a fork loop.
RESTART_BACKOFF = 1.0
#: On SIGTERM the parent waits this long for workers to flush their hits.
STOP_TIMEOUT = 8.0
#: A worker that exits within this time of starting failed to start: give up.
STARTUP_WINDOW = 3.0


Child = Callable[[int], int]


def _start_worker(child: Child, index: int) -> int:
    pid = os.fork()
    if pid == 0:
        # Child: default signal dispositions; the server installs its own handlers.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        code = 1
        try:
            code = child(index)
        except BaseException:  # noqa: BLE001 - a child must never return into the parent's code
            log.exception("worker %d crashed", index)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def run_workers(count: int, child: Child) -> int:
    """Start `count` workers, restart any that dies, forward SIGHUP, stop all on SIGTERM."""
    stopping = False
    reload_pending = False

    def on_stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    def on_hup(signum, frame) -> None:
        nonlocal reload_pending
        reload_pending = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    workers: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
    for i in range(count):
        workers[_start_worker(child, i)] = (i, time.monotonic())
        if i == 0:
            time.sleep(0.2)  # let the first worker create and migrate the database alone
    log.info("started %d workers sharing the listening ports", count)
    exit_code = 0
    while True:
        if stopping:
            break
        if reload_pending:
            reload_pending = False
            for pid in workers:
                _signal(pid, signal.SIGHUP)
        reaped = _reap()
        if reaped is None:
            break
        if not reaped:
            time.sleep(0.1)
            continue
        pid, code = reaped
        index, started = workers.pop(pid)
        if time.monotonic() - started < STARTUP_WINDOW and code > 0:
            # It exited on its own at start (port in use, bad permission): its line says
            # why, and restarting would fail the same way. A signal is no such verdict.
            log.error("worker %d could not start (exit %d); stopping", index, code)
            exit_code = 1
            break
        log.error("worker %d (pid %d) exited with %d; restarting it", index, pid, code)
        time.sleep(RESTART_BACKOFF)
        workers[_start_worker(child, index)] = (index, time.monotonic())
    for pid in workers:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while workers and time.monotonic() < deadline:
        reaped = _reap()
        if reaped is None:
            break
        if not reaped:
            time.sleep(0.05)
            continue
        pid, code = reaped
        workers.pop(pid, None)
        if code not in (0, -signal.SIGTERM):
            exit_code = exit_code or 1
    for pid in workers:
        _signal(pid, signal.SIGKILL)
    return exit_code


def _reap() -> tuple[int, int] | tuple[()] | None:
    """(pid, exit code) of a worker that ended, () when none has, None when none is left."""
    try:
        pid, status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return None
    if pid == 0:
        return ()
    return pid, os.waitstatus_to_exitcode(status)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
