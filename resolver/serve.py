"""The entry points of `sinkhole serve`: one process, or workers sharing the ports.

`run_server` decides how many processes; `run_one` builds a `Server`, binds,
drops privileges and runs the event loop until SIGTERM. The supervisor
(`workers.run_workers`) is handed `run_one` as the child to run, so it knows
nothing of the server it supervises.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
import sys

from resolver.config import Config
from resolver.errors import SinkholeError
from resolver.server import Server
from resolver.workers import run_workers

log = logging.getLogger("sinkhole")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="sinkhole: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one (systemd's soft default is 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def allow_ordinary_priority() -> None:
    """As root, let the process return a thread from SCHED_IDLE to the ordinary policy
    after dropping privileges (RLIMIT_NICE 20 permits nice 0, and nothing above it):
    the recorder's final flush must not wait behind the load (resolver/background.py)."""
    if os.geteuid() != 0:
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NICE)
        if soft != resource.RLIM_INFINITY and soft < 20:
            resource.setrlimit(resource.RLIMIT_NICE, (20, max(20, hard)))
    except (ValueError, OSError):
        pass


def drop_privileges(user: str, paths: list[str]) -> None:
    """After binding port 53 as root, continue as `user` (the database stays writable)."""
    import pwd

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise SinkholeError(f"user: no such user {user!r}") from None
    for p in paths:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(p + suffix):
                os.chown(p + suffix, pw.pw_uid, pw.pw_gid)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    log.info("running as user %s", user)


def run_server(config: Config, overrides: dict | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    setup_logging(config.log_level)
    workers = config.workers
    if workers == "auto":
        workers = os.cpu_count() or 1
    overrides = overrides or {}
    if workers > 1:

        def child(index: int) -> int:
            # Only the first worker prints the banner and serves /metrics.
            cfg = config if index == 0 else config.with_overrides(metrics_listen="")
            return run_one(cfg, overrides, reuse_port=True, quiet=index > 0)

        return run_workers(workers, child)
    return run_one(config, overrides, reuse_port=False)


def run_one(config: Config, overrides: dict, *, reuse_port: bool, quiet: bool = False) -> int:
    try:
        import uvloop  # type: ignore[import-not-found]

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = asyncio.new_event_loop
    raise_fd_limit()
    try:
        server = Server(config, reuse_port=reuse_port)
        server.overrides = overrides
        socks = server.bind()
        if config.metrics_listen:
            # Imported now: after dropping privileges the interpreter's own files may
            # no longer be readable (a Python under /root, mode 700).
            try:
                from resolver.metrics import MetricsServer

                server.metrics = MetricsServer(server)
            except ImportError as exc:
                log.warning("metrics_listen is set but %s: no /health or /metrics", exc)
        if config.user and os.getuid() == 0:
            allow_ordinary_priority()
            drop_privileges(config.user, [server.db_path])
    except SinkholeError as exc:
        print(f"sinkhole: {exc}", file=sys.stderr)
        return 1
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_main(server, socks, quiet))
    finally:
        loop.close()


async def _main(server: Server, socks: list[socket.socket], quiet: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: server.spawn(server.reload()))
    await server.start(socks)
    if server.metrics is not None:
        try:
            server.metrics.start()
        except SinkholeError as exc:
            log.error("%s", exc)
            server.metrics = None
    if not quiet:
        for line in server.describe():
            log.info("%s", line)
    await stop.wait()
    log.info("stopping")
    await server.shutdown()
    log.info("stopped; %d hits written this run", server.recorder.written)
    return 0
