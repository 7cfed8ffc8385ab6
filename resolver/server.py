"""One server process: asyncio UDP and TCP listeners, live policy reload, stats, clean shutdown."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import gc
import itertools
import logging
import resource
import socket
import struct
import time
from collections.abc import Coroutine

from resolver import __version__
from resolver.background import idle_priority
from resolver.batchio import IMPLEMENTATION as BATCH_IO
from resolver.batchio import recv_batch, send_batch
from resolver.catalog import load_catalog
from resolver.config import (
    Config,
    bind_error_reason,
    format_hostport,
    load_config,
    restart_changes,
)
from resolver.errors import SinkholeError
from resolver.pipeline import MAX_INFLIGHT, Resolver
from resolver.policy import Policy, PolicyState, build_policy
from resolver.privacy import record_server_mode
from resolver.store import Recorder, Store
from resolver.upstream import Forwarder

log = logging.getLogger("sinkhole")

#: How often the server looks for a policy change made with the CLI (seconds).
POLICY_POLL = 0.5
#: Shutdown: stop listening, give in-flight queries this long, then cancel them.
SHUTDOWN_GRACE = 1.5
#: The hit recorder's final flush gets this long, so SIGTERM exits within 5 s in all.
SHUTDOWN_FLUSH = 2.5
TCP_MAX_MESSAGE = 65_535
#: Allocations between two young-generation collections (Python's default: 700).
GC_THRESHOLD = 20_000
#: Young collections between two collections of the middle generation (Python's
#: default: 10). Each of those walks every object that survived the young ones since
#: the last, nearly all of them cache entries: in a flood of new names ~100 ms every
#: 100,000 misses at 20. At 100 most entries are evicted (or expire) before one walks
#: them; cyclic garbage that outlived a young collection waits longer, for no query.
GC_MIDDLE_THRESHOLD = 100
#: Datagrams read per wake-up of a UDP socket before other work gets a turn.
UDP_BATCH = 64
#: A query over UDP is small; a larger datagram is truncated and answered FORMERR.
UDP_MAX_QUERY = 4096
#: Answers held while the kernel's send buffer is full.
UDP_SEND_BACKLOG = 10_000
#: Queries of one TCP connection answered concurrently (RFC 7766 6.2.1.1); past it
#: the connection is not read until one completes.
TCP_MAX_PIPELINE = 64
#: Answers waiting for a client that does not read: past it the connection is closed.
TCP_MAX_WRITE_BUFFER = 256 * 1024
#: File descriptors kept for listeners, TCP clients and the database; the rest
#: bounds the upstream sockets (each waiting question holds up to two per upstream).
FD_RESERVE = 512
#: Under pressure (connections above this share of the limit) idle TCP clients get less time.
TCP_PRESSURE_SHARE = 0.5
TCP_PRESSURE_IDLE = 1.0
#: How long the metrics thread waits for the event loop to copy its counters.
STATS_TIMEOUT = 2.0


def settle_gc(collect: bool = False) -> None:
    """Keep the cyclic GC off the long-lived objects (catalog, policy, memos).

    A full collection walks every tracked object, and a policy of a million names
    is millions of them: frozen, they are skipped, so no query waits for a pass over
    them. They are still freed by reference counting when a reload drops them. Larger
    thresholds (GC_THRESHOLD, GC_MIDDLE_THRESHOLD) make the collections that remain
    rarer. `collect` only at start: after a reload a full pass over a large new policy
    would stall the loop, so cyclic garbage that exists at that moment stays frozen
    (kilobytes per reload).
    """
    if collect:
        gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, GC_MIDDLE_THRESHOLD, 20)


def seeded_state(catalog, config: Config) -> PolicyState:
    """The policy the config asks for, used when the database cannot be read."""
    state = PolicyState()
    for name in config.lists:
        if name in catalog.categories or name in catalog.services:
            state.enabled_services.update(catalog.resolve(name))
    return state


def load_policy(config: Config, catalog, db_path: str) -> tuple[Policy, str | None]:
    """Policy from the database; when it can't be read, from the config (DNS goes on)."""
    try:
        with Store(db_path) as store:
            store.seed(catalog, config.lists)
            state = store.policy_state()
        return build_policy(catalog, state, config), None
    except SinkholeError as exc:
        return build_policy(catalog, seeded_state(catalog, config), config), str(exc)


def mark_started(db_path: str) -> None:
    """Note the start before the catalog is seeded: what it adds now is new (`sinkhole lists`)."""
    try:
        with Store(db_path) as store:
            store.mark_started()
    except SinkholeError as exc:
        log.warning("%s", exc)


def _policy_version(db_path: str) -> int | None:
    try:
        with Store(db_path, timeout=1.0) as store:
            return store.policy_version()
    except SinkholeError:
        return None


class UdpListener:
    """One UDP socket read in a tight loop: up to UDP_BATCH datagrams per wake-up.

    An asyncio DatagramProtocol costs an event-loop round and a transport call
    per datagram; reading and answering straight from the socket is what lets
    a Python server keep up with a C one on local answers. The datagrams of a
    wake-up are read, and the answers made from them sent, in batches
    (resolver/batchio.py: recvmmsg/sendmmsg with the C speedups, a
    recvfrom/sendto loop without; the logic here is the same for both). Answers
    that come back from upstreams are batched too: `send` collects those of one
    turn of the loop and sends them together at its end.

    At an office's steady rate each wake-up finds one datagram, and the time to
    its answer is what a user waits: after a wake-up that read one datagram (or
    none), the next one is read with a plain recvfrom and answered with a plain
    sendto before anything else, and only then is the socket read on in batches
    for what came meanwhile (`lone`). A batch call costs more than a plain one
    for a single datagram (buffers for UDP_BATCH of them, a list, an address
    tuple to parse); a burst still goes in batches from its second datagram on.
    """

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        #: Answers the kernel could not take yet (send buffer full), in order.
        self.backlog: collections.deque[tuple[bytes, tuple]] = collections.deque()
        #: Answers from upstreams made in this turn of the loop, sent together at its end.
        self.parked: list[tuple[bytes, tuple]] = []
        self.closed = False
        #: The last wake-up read one datagram (or none): the next one is read, answered
        #: and sent on its own, ahead of the batches.
        self.lone = True
        self.loop.add_reader(sock.fileno(), self._readable)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            if self.backlog:
                self.loop.remove_writer(self.sock.fileno())
            self.sock.close()

    def _readable(self) -> None:
        if self.lone:
            # The last wake-up found one datagram: most likely this one does too. One
            # plain call reads it and one sends its answer, before anything else; then
            # the socket is read on in batches (after that answer) for what came meanwhile.
            try:
                data, addr = self.sock.recvfrom(UDP_MAX_QUERY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error queued on the socket: taken, nothing to answer
            try:
                out = self.server.resolver.handle(data, addr[0], self, addr)
            except Exception:  # noqa: BLE001 - nothing a client sends may stop the server
                log.exception("error handling a UDP query from %s", addr[0])
            else:
                if out is not None:
                    self.send_one(out, addr)
            self.lone = self._read_batches(UDP_BATCH - 1) == 0
        else:
            self.lone = self._read_batches(UDP_BATCH) <= 1

    def _read_batches(self, budget: int) -> int:
        """Read and answer up to `budget` datagrams in batches; how many were read."""
        handle = self.server.resolver.handle
        answers: list[tuple[bytes, tuple]] = []
        read = 0
        while budget > 0:
            try:
                batch = recv_batch(self.sock, budget, UDP_MAX_QUERY)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                budget -= 1
                continue  # an ICMP error queued on the socket: nothing to answer
            for data, addr in batch:
                try:
                    # A forwarded query returns None now and comes back through send().
                    out = handle(data, addr[0], self, addr)
                    if out is not None:
                        answers.append((out, addr))
                except Exception:  # noqa: BLE001 - nothing a client sends may stop the server
                    log.exception("error handling a UDP query from %s", addr[0])
            read += len(batch)
            if len(batch) < budget:
                break  # the socket is drained (or an error waits): the next wake-up reads on
            budget -= len(batch)
        if answers:
            self.send_many(answers)
        return read

    def send_one(self, out: bytes, addr: tuple) -> None:
        """One answer, sent at once with one plain call; behind the backlog if there is one."""
        if self.backlog:
            self._hold(out, addr)
            return
        try:
            self.sock.sendto(out, addr)
        except (BlockingIOError, InterruptedError):
            self._hold(out, addr)
            self.loop.add_writer(self.sock.fileno(), self._writable)
        except OSError:
            pass  # that client's address is unreachable: nothing to do

    def expect(self) -> None:
        """A query parked on an upstream: nothing to do, its answer comes to send()."""

    def send(self, out: bytes, addr: tuple) -> None:
        """A parked query's answer: it goes out with the others made in this turn of
        the loop (the answers read from the upstream sockets in one wake-up), in one
        send_batch at its end."""
        if self.closed:
            return
        parked = self.parked
        parked.append((out, addr))
        if len(parked) == 1:
            self.loop.call_soon(self._send_parked)

    def _send_parked(self) -> None:
        items, self.parked = self.parked, []
        self.send_many(items)

    def send_many(self, items: list[tuple[bytes, tuple]]) -> None:
        """Send the answers of one wake-up, in order, as send() would one by one."""
        if self.closed:
            return
        i = 0
        if not self.backlog:
            while i < len(items):
                try:
                    i += send_batch(self.sock, items, i)
                except (BlockingIOError, InterruptedError):
                    self.loop.add_writer(self.sock.fileno(), self._writable)
                    break
                except OSError:
                    i += 1  # that client's address is unreachable: nothing to do
        for out, addr in itertools.islice(items, i, None):
            self._hold(out, addr)

    def _hold(self, out: bytes, addr: tuple) -> None:
        if len(self.backlog) < UDP_SEND_BACKLOG:
            self.backlog.append((out, addr))
        # Past the bound an answer is dropped; the client retries as over any UDP path.

    def _writable(self) -> None:
        while self.backlog:
            items = list(itertools.islice(self.backlog, UDP_BATCH))
            try:
                sent = send_batch(self.sock, items, 0)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                sent = 1  # that one's address is unreachable: dropped
            for _ in range(sent):
                self.backlog.popleft()
        self.loop.remove_writer(self.sock.fileno())


class TcpSink:
    """One TCP connection's answers, framed (RFC 1035 4.2.2); counts the parked ones."""

    __slots__ = ("writer", "outstanding", "changed")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        #: Queries parked on an upstream whose answer has not come back yet.
        self.outstanding = 0
        self.changed: asyncio.Event | None = None

    def expect(self) -> None:
        self.outstanding += 1

    def send_now(self, out: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(struct.pack("!H", len(out)) + out)

    def send(self, out: bytes, addr: object) -> None:
        self.outstanding -= 1
        self.send_now(out)
        if self.changed is not None:
            self.changed.set()

    async def settled(self, at_most: int, timeout: float | None) -> None:
        """Wait until no more than `at_most` answers are outstanding (or the timeout)."""
        try:
            async with asyncio.timeout(timeout):
                while self.outstanding > at_most:
                    self.changed = asyncio.Event()
                    await self.changed.wait()
        except TimeoutError:
            pass
        finally:
            self.changed = None


class Server:
    """One process serving DNS on every listen address."""

    def __init__(self, config: Config, *, reuse_port: bool = False) -> None:
        self.config = config
        #: The config the sockets, processes and database were set up with.
        self.boot_config = config
        self.reuse_port = reuse_port
        self.catalog = load_catalog(config.catalog)
        self.db_path = config.database
        mark_started(self.db_path)
        policy, fault = load_policy(config, self.catalog, self.db_path)
        if fault:
            log.error("%s; serving the policy of the config until it can be read", fault)
        self.policy_version = policy.version if not fault else None
        self.recorder = Recorder(
            self.db_path,
            privacy=config.privacy.clients,
            retention_days=config.privacy.retention_days,
            group_of=lambda c: self.resolver.policy.client_info(c)[0],
        )
        self.forwarder = Forwarder(config.upstream_addresses(), config.upstream_timeout)
        self.resolver = Resolver(config, policy, self.forwarder, self.recorder)
        self.recorder.traffic = self.resolver.traffic_totals
        self.transports: list = []
        self.tcp_servers: list[asyncio.base_events.Server] = []
        self.tcp_connections: set[asyncio.Task] = set()
        #: connections waiting for their next message: (its idle deadline, when it began)
        self.tcp_waiting: dict[asyncio.Task, tuple[asyncio.Timeout, float]] = {}
        self.tasks: set[asyncio.Task] = set()
        self.stopping: asyncio.Event | None = None
        self.started = time.time()
        self.metrics = None
        self.loop: asyncio.AbstractEventLoop | None = None
        #: The central store's shipper (resolver/central), when `central` is configured.
        self.shipper = None
        self.policy_watcher = None
        self.overrides: dict = {}
        self.watcher: asyncio.Task | None = None
        self.reloading = asyncio.Lock()
        self.resolver.forward.max_inflight = inflight_limit(len(self.forwarder.upstreams))
        self._warn_loop(config)

    def _warn_loop(self, config: Config) -> None:
        """An upstream that is one of our own listen addresses forwards every query to us."""
        own = set(config.listen_addresses())
        for u in self.forwarder.upstreams:
            if (u.host, u.port) in own:
                log.warning(
                    "upstream %s is this server's own address: forwarded names will fail", u
                )

    def spawn(self, coro: Coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- sockets ------------------------------------------------------------------------

    def bind(self) -> list[socket.socket]:
        """Bind every listen address, UDP and TCP; raise SinkholeError with one clear line."""
        socks = []
        for host, port in self.config.listen_addresses():
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = socket.socket(family, kind)
                try:
                    if family == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    if kind == socket.SOCK_STREAM:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if self.reuse_port:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    s.bind((host, port))
                    if kind == socket.SOCK_STREAM:
                        s.listen(512)
                    s.setblocking(False)
                except OSError as exc:
                    s.close()
                    for other in socks:
                        other.close()
                    proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
                    raise SinkholeError(
                        f"cannot listen on {proto} {format_hostport(host, port)}: "
                        f"{bind_error_reason(exc)}"
                    ) from None
                socks.append(s)
        return socks

    async def start(self, socks: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for s in socks:
            if s.type == socket.SOCK_DGRAM:
                self.transports.append(UdpListener(self, s))
            else:
                server = await asyncio.start_server(
                    self._tcp_client, sock=s, limit=TCP_MAX_MESSAGE + 2
                )
                self.tcp_servers.append(server)
        self.loop = loop
        self.recorder.attach(loop)
        # central: the outbox is on before the recorder's first write.
        if self.config.central is not None:
            from resolver.central.hook import start_policy_watcher, start_shipper

            self.shipper = start_shipper(self)
            self.policy_watcher = start_policy_watcher(self, loop)
        self.recorder.start()
        self.spawn(self._record_privacy("start"))
        self.watcher = asyncio.ensure_future(self._watch_policy())
        settle_gc(collect=True)

    # -- TCP (RFC 7766) ---------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.tcp_connections.add(task)
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else "?"
        limit = self.config.tcp.max_connections
        sink = TcpSink(writer)
        transport = writer.transport
        loop = asyncio.get_running_loop()
        try:
            if len(self.tcp_connections) > limit:
                return  # over the connection limit: close at once
            if len(self.tcp_connections) > limit * TCP_PRESSURE_SHARE:
                self._squeeze_idle()
            while True:
                idle = self.config.tcp.idle_timeout
                if len(self.tcp_connections) > limit * TCP_PRESSURE_SHARE:
                    idle = min(idle, TCP_PRESSURE_IDLE)
                try:
                    # The whole message must arrive within the idle time: a client
                    # sending one byte a second cannot hold a slot forever.
                    async with asyncio.timeout(idle) as deadline:
                        self.tcp_waiting[task] = (deadline, loop.time())
                        size = struct.unpack("!H", await reader.readexactly(2))[0]
                        data = await reader.readexactly(size)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                finally:
                    self.tcp_waiting.pop(task, None)
                try:
                    # Pipelined queries are answered as they complete (RFC 7766 6.2.1.1):
                    # a parked one comes back through sink.send().
                    out = self.resolver.handle(data, client, sink, None, True)
                except Exception:  # noqa: BLE001
                    log.exception("error handling a TCP query from %s", client)
                    break
                if out is not None:
                    sink.send_now(out)
                if sink.outstanding >= TCP_MAX_PIPELINE:
                    # Stop reading until one completes: one connection cannot queue
                    # an unbounded number of upstream questions.
                    await sink.settled(TCP_MAX_PIPELINE - 1, None)
                if transport.get_write_buffer_size() > TCP_MAX_WRITE_BUFFER:
                    break  # a client that sends but never reads would grow our memory
            if sink.outstanding:
                await sink.settled(0, self.config.upstream_timeout + 0.5)
        except asyncio.CancelledError:
            pass
        finally:
            self.tcp_connections.discard(task)
            writer.close()

    def _squeeze_idle(self) -> None:
        """Pressure began: waiting connections get the short idle time too (RFC 7766 6.2.3)."""
        now = asyncio.get_running_loop().time()
        for deadline, started in list(self.tcp_waiting.values()):
            target = max(started + TCP_PRESSURE_IDLE, now)
            when = deadline.when()
            if not deadline.expired() and (when is None or when > target):
                deadline.reschedule(target)

    # -- live changes ---------------------------------------------------------------------------

    async def _watch_policy(self) -> None:
        loop = asyncio.get_running_loop()
        # The poll's own thread, at SCHED_IDLE: opening the database twice a second
        # must not hold the DNS thread's core (resolver/background.py).
        poller = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sinkhole-policy-poll", initializer=idle_priority
        )
        try:
            await self._poll_policy(loop, poller)
        finally:
            poller.shutdown(wait=False)

    async def _poll_policy(
        self, loop: asyncio.AbstractEventLoop, poller: concurrent.futures.Executor
    ) -> None:
        while True:
            await asyncio.sleep(POLICY_POLL)
            try:
                version = await loop.run_in_executor(poller, _policy_version, self.db_path)
                if version is not None and version != self.policy_version:
                    await self.reload_policy()
            except Exception:  # noqa: BLE001 - a reload problem must never stop DNS
                log.exception("policy reload failed; keeping the current policy")

    async def reload_policy(self) -> None:
        """The database's policy changed: build the new one off the loop, then swap it in."""
        loop = asyncio.get_running_loop()
        policy, fault = await loop.run_in_executor(
            None, load_policy, self.config, self.catalog, self.db_path
        )
        if fault:
            log.error("%s; keeping the current policy", fault)
            return
        self.resolver.set_policy(policy)
        self.recorder.forget_clients()
        self.policy_version = policy.version
        settle_gc()
        log.info(
            "policy version %s loaded: %d block patterns, %d allow patterns",
            policy.version,
            policy.matcher.block_count,
            policy.matcher.allow_count,
        )

    async def reload(self) -> None:
        """SIGHUP: re-read config and catalog; on any error keep everything as it is."""
        # Signals in quick succession: one reload at a time, so an older file read
        # cannot finish last and win.
        async with self.reloading:
            await self._reload()

    async def _reload(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            config = await loop.run_in_executor(None, load_config, self.config.path)
            config = config.with_overrides(**self.overrides)
            catalog = await loop.run_in_executor(None, load_catalog, config.catalog)
            policy, fault = await loop.run_in_executor(
                None, load_policy, config, catalog, self.db_path
            )
            if fault:
                raise SinkholeError(fault)
            forwarder = Forwarder(config.upstream_addresses(), config.upstream_timeout)
        except SinkholeError as exc:
            log.error("reload failed, keeping the running config and policy: %s", exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bad file must never stop DNS
            log.error("reload failed, keeping the running config and policy: %r", exc)
            return
        restart = restart_changes(self.boot_config, config)
        self.catalog = catalog
        self.config = config
        self.forwarder = forwarder
        self.resolver.reconfigure(config, policy, forwarder)
        self.recorder.reconfigure(
            privacy=config.privacy.clients, retention_days=config.privacy.retention_days
        )
        settle_gc()
        self.resolver.forward.max_inflight = inflight_limit(len(forwarder.upstreams))
        self.policy_version = policy.version
        logging.getLogger().setLevel(config.log_level.upper())
        log.info(
            "reloaded config and catalog: %d block patterns; privacy.clients %s, "
            "retention %d days, %d upstreams%s",
            policy.matcher.block_count,
            config.privacy.clients,
            config.privacy.retention_days,
            len(forwarder.upstreams),
            f"; changed but applied only after a restart: {', '.join(restart)}" if restart else "",
        )
        await self._record_privacy("reload")

    async def _record_privacy(self, reason: str) -> None:
        """The mode the recorder records with from now on, into the audit trail."""
        loop = asyncio.get_running_loop()
        mode = self.recorder.privacy
        try:
            await loop.run_in_executor(None, record_server_mode, self.db_path, mode, reason)
        except Exception as exc:  # noqa: BLE001 - the audit trail must never stop DNS
            log.error("privacy mode %s not recorded in the audit trail: %s", mode, exc)

    # -- shutdown ---------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop listening, drain in-flight queries, cancel the rest, flush the recorder."""
        if self.watcher is not None:
            self.watcher.cancel()
        for t in self.transports:
            t.close()
        for s in self.tcp_servers:
            s.close()
        # UDP answers still on their way from upstream have no socket to go out on;
        # TCP connections get the grace period to finish theirs.
        pending = self.tasks | self.forwarder.tasks | self.tcp_connections
        if pending:
            await asyncio.wait(pending, timeout=SHUTDOWN_GRACE)
        for t in list(self.tasks | self.forwarder.tasks | self.tcp_connections):
            t.cancel()
        self.resolver.abandon()
        loop = asyncio.get_running_loop()
        self.recorder.detach()
        await loop.run_in_executor(None, self.recorder.stop, SHUTDOWN_FLUSH)
        if self.shipper is not None:  # central: what it has not sent waits in the outbox
            await loop.run_in_executor(None, self.shipper.stop, 1.0)
        if self.policy_watcher is not None:
            await loop.run_in_executor(None, self.policy_watcher.stop, 1.0)
        if self.metrics is not None:
            self.metrics.stop()

    def stats(self) -> dict:
        """Every figure /metrics and /health show, copied at one instant on the event loop."""
        out = self.resolver.stats()
        recorder = self.recorder
        out.update(
            recorder_backlog=recorder.backlog,
            recorder_written=recorder.written,
            database_fault=bool(recorder.fault),
            policy_version=self.policy_version,
            started=self.started,
            upstreams=list(self.forwarder.upstreams),
            shipper=self.shipper,
            listeners_open=bool(self.transports)
            and bool(self.tcp_servers)
            and all(not t.is_closing() for t in self.transports)
            and all(s.is_serving() for s in self.tcp_servers),
        )
        return out

    def snapshot(self, timeout: float = STATS_TIMEOUT) -> dict:
        """`stats()` for another thread (the metrics server): taken on the event loop,
        so nothing is read while the loop changes it.

        Raises:
            SinkholeError: the loop did not take the snapshot within `timeout` (it is stuck).
        """
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return self.stats()  # not serving: nothing runs beside the caller
        result: concurrent.futures.Future = concurrent.futures.Future()

        def take() -> None:
            try:
                result.set_result(self.stats())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                result.set_exception(exc)

        loop.call_soon_threadsafe(take)
        try:
            return result.result(timeout)
        except concurrent.futures.TimeoutError:
            raise SinkholeError(f"the DNS event loop did not answer within {timeout:g} s") from None

    def describe(self) -> list[str]:
        cfg = self.config
        m = self.resolver.policy.matcher
        services = self.resolver.policy.enabled_services
        enabled = sorted({self.catalog.services[s].category for s in services})
        return [
            f"sinkhole {__version__} listening on " + ", ".join(f"udp+tcp {a}" for a in cfg.listen),
            "upstreams: " + ", ".join(str(u) for u in self.forwarder.upstreams),
            f"blocking {m.block_count} patterns ({', '.join(enabled) or 'no catalog service'}),"
            f" {m.allow_count} allowed; answer mode {cfg.sinkhole.mode}",
            f"database: {self.db_path}; privacy: clients {cfg.privacy.clients}, "
            f"retention {cfg.privacy.retention_days} days",
            f"udp datagram i/o: {BATCH_IO}",
        ]


def inflight_limit(upstreams: int) -> int:
    """Distinct questions that may wait on upstreams, so their sockets fit the fd limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_INFLIGHT
    per_question = 2 * max(1, upstreams)
    return max(16, min(MAX_INFLIGHT, (soft - FD_RESERVE) // per_question))
