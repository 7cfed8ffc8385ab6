"""Forwarding to upstream resolvers: UDP with random IDs and ports, TCP on TC, failover, budget."""

from __future__ import annotations

import _socket
import asyncio
import bisect
import collections
import errno
import heapq
import itertools
import logging
import math
import os
import select
import socket
import struct
import time
import weakref
from collections.abc import Callable

from resolver import wire
from resolver.batchio import recv_batch, send_batch
from resolver.config import format_hostport
from resolver.wire import Answer, Query, Rcode, WireError

log = logging.getLogger("sinkhole.upstream")

#: When a UDP attempt gets no answer, the next one goes out after this long (seconds);
#: earlier attempts keep listening, so a slow upstream's late answer still counts.
RETRY_AFTER = (0.4, 0.6, 0.8)
#: Consecutive failures after which an upstream is put last until its backoff ends.
DOWN_AFTER_FAILURES = 3
BACKOFF_START = 2.0
BACKOFF_MAX = 60.0
MAX_UDP_ANSWER = 65_535
#: Ready upstream sockets handled per wake-up of the poller.
POLL_BATCH = 256
#: An upstream socket (`_Socket`) carries at most this many queries, sent within
#: SOCKET_AGE seconds of its opening; then the next query opens a new one, on a new
#: random port. It is closed as soon as no query on it waits for an answer.
SOCKET_QUERIES = 32
SOCKET_AGE = 1.0
#: Answers read from one upstream socket per system call (a MAX_UDP_ANSWER buffer each).
RECV_BATCH = 16
#: Retry timers due within this many seconds of each other fire in one wake-up.
TIMER_GRAIN = 0.005
#: Upper bounds (seconds) of the upstream latency histogram exported on /metrics.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
#: Errors of our own machine (out of descriptors or buffers), not of the upstream.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Answers after which another upstream is tried (plain ints: an enum member looked up
#: on its class per answer costs more than the set).
FAILOVER_RCODES = frozenset({int(Rcode.SERVFAIL), int(Rcode.REFUSED), int(Rcode.NOTIMP)})


class Upstream:
    """One upstream resolver and its health."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.failures = 0
        self.down_until = 0.0
        self.backoff = BACKOFF_START
        self.answers = 0
        self.errors = 0
        self.latency_sum = 0.0
        #: count of answers at or below each LATENCY_BUCKETS bound (not cumulative), +Inf last
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)

    @property
    def up(self) -> bool:
        return self.down_until <= time.monotonic()

    def succeeded(self, latency: float) -> None:
        if self.failures:
            if self.failures >= DOWN_AFTER_FAILURES:
                log.warning("upstream %s is answering again", self)
            self.failures = 0
            self.down_until = 0.0
            self.backoff = BACKOFF_START
        self.answers += 1
        self.latency_sum += latency
        # The first bound at or above the latency; past the last, the +Inf slot.
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1

    def failed(self) -> None:
        self.errors += 1
        self.failures += 1
        if self.failures >= DOWN_AFTER_FAILURES:
            if self.failures == DOWN_AFTER_FAILURES:
                log.warning("upstream %s is not answering; trying the others first", self)
            self.down_until = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)


_UDP_NONBLOCK = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
#: Query IDs are drawn from the OS's random source in blocks, not one syscall each.
_ID_BLOCK = 2048


class _Ids:
    """Unpredictable 16-bit query IDs (RFC 5452 4.3), from os.urandom in blocks."""

    def __init__(self) -> None:
        self._ids: list[int] = []

    def next(self) -> int:
        if not self._ids:
            raw = os.urandom(2 * _ID_BLOCK)
            self._ids = [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]
        return self._ids.pop()


new_id = _Ids().next


class _Poller:
    """One epoll set for every upstream socket, watched by the event loop as one fd,
    and the retry timers of every exchange, served by one loop timer.

    Registering each upstream socket with the event loop and removing it again
    costs uvloop a handle allocation each way; our own epoll set costs one
    epoll_ctl per socket, and closing a socket drops it from the set by itself.
    Likewise a loop timer per query (armed, then nearly always cancelled by the
    answer) costs more than a heap entry and a dict slot.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.epoll = select.epoll()
        #: fd -> every open upstream socket
        self.sockets: dict[int, _Socket] = {}
        #: upstream -> the socket its next query goes out on, while it takes new ones
        self.current: dict[Upstream, _Socket] = {}
        #: sockets with queries to send at the end of this turn of the loop (`flush`)
        self.outgoing: list[_Socket] = []
        #: (due, ticket) for every timer set, cancelled ones included until they come due:
        #: a FIFO per retry delay (their due times only grow), a heap for the other delays
        #: (what is left of a budget)
        self.lanes: dict[float, collections.deque[tuple[float, int]]] = {
            d: collections.deque() for d in RETRY_AFTER
        }
        self.due: list[tuple[float, int]] = []
        #: ticket -> the exchange whose timer it is; cancelling a timer removes it
        self.armed: dict[int, _Exchange] = {}
        self.tickets = itertools.count(1)
        self.wakeup: asyncio.TimerHandle | None = None
        self.wake_at = math.inf
        loop.add_reader(self.epoll.fileno(), self.dispatch)

    def dispatch(self) -> None:
        get = self.sockets.get
        for fd, _events in self.epoll.poll(0, POLL_BATCH):
            sock = get(fd)
            if sock is not None:
                try:
                    sock.readable()
                except Exception:  # noqa: BLE001 - one socket's fault must not stop the others
                    log.exception("error reading upstream answers")
                    sock.abort()

    def flush(self) -> None:
        """Send the queries made in this turn of the loop: one sendmmsg per socket."""
        outgoing, self.outgoing = self.outgoing, []
        for sock in outgoing:
            try:
                sock.flush()
            except Exception:  # noqa: BLE001 - one socket's fault must not stop the others
                log.exception("error sending upstream queries")
                sock.abort()

    def socket_for(self, upstream: Upstream, now: float) -> _Socket:
        """The socket the next query to `upstream` goes out on (OSError: none could open)."""
        sock = self.current.get(upstream)
        if sock is None or sock.uses <= 0 or now >= sock.until:
            if sock is not None:
                sock.retire()
            sock = self.current[upstream] = _Socket(self, upstream, now)
        sock.uses -= 1
        return sock

    def arm(self, exchange: _Exchange, delay: float, now: float) -> int:
        """Call exchange.step() `delay` seconds after `now` (time.monotonic()), unless the
        ticket is cancelled first."""
        ticket = next(self.tickets)
        when = now + delay
        lane = self.lanes.get(delay)
        if lane is not None:
            lane.append((when, ticket))
        else:
            heapq.heappush(self.due, (when, ticket))
        self.armed[ticket] = exchange
        if when < self.wake_at:
            self._wake_at(when)
        return ticket

    def cancel(self, ticket: int) -> None:
        self.armed.pop(ticket, None)

    @staticmethod
    def abort(exchange: _Exchange | None) -> None:
        """After an unexpected error: end the exchange with no answer rather than never."""
        if exchange is not None and not exchange.over:
            exchange.cancel()
            exchange._deliver(None)

    def _wake_at(self, when: float) -> None:
        if self.wakeup is not None:
            self.wakeup.cancel()
        self.wake_at = when
        self.wakeup = self.loop.call_later(max(0.0, when - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self.wakeup = None
        self.wake_at = math.inf
        due = self.due
        # Everything due within the grain fires now: one wake-up for many timers.
        now = time.monotonic() + TIMER_GRAIN
        for lane in self.lanes.values():
            while lane and lane[0][0] <= now:
                self._ring(lane.popleft()[1])
        while due and due[0][0] <= now:
            self._ring(heapq.heappop(due)[1])
        fronts = [lane[0][0] for lane in self.lanes.values() if lane]
        if due:
            fronts.append(due[0][0])
        if fronts:
            self._wake_at(min(fronts))

    def _ring(self, ticket: int) -> None:
        exchange = self.armed.pop(ticket, None)
        if exchange is not None:
            exchange.timer = 0
            try:
                exchange.step()
            except Exception:  # noqa: BLE001 - one exchange's fault must not stop the others
                log.exception("error in the retry timer of %s", exchange.query.name)
                self.abort(exchange)


_pollers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def poller_for(loop: asyncio.AbstractEventLoop) -> _Poller:
    p = _pollers.get(loop)
    if p is None:
        p = _pollers[loop] = _Poller(loop)
    return p


class _Socket:
    """A connected UDP socket to one upstream, on a random port the kernel picked,
    carrying the queries sent to that upstream within its first SOCKET_QUERIES
    queries and SOCKET_AGE seconds (see ARCHITECTURE.md, "Upstream sockets").

    connect() makes the kernel drop every datagram that is not from the upstream's
    address and port (RFC 5452 9.1); an answer is then taken only for the ID of a
    query still waiting on this socket, and only if its question is that query's
    (`_Exchange.on_reply`). IDs are unique among the waiting queries of a socket.
    The socket is closed as soon as none waits, so a port is open no longer than
    its queries' budget after its last new query.
    """

    __slots__ = ("poller", "upstream", "sock", "fd", "pending", "uses", "until", "outbox")

    def __init__(self, poller: _Poller, upstream: Upstream, now: float) -> None:
        # The C-level socket, created non-blocking: one syscall, no Python wrapper.
        sock = _socket.socket(upstream.family, _UDP_NONBLOCK)
        try:
            # connect() picks a random ephemeral port and makes the kernel drop
            # datagrams from any other address or port (RFC 5452 9.1).
            sock.connect((upstream.host, upstream.port))
            fd = sock.fileno()
            poller.epoll.register(fd, select.EPOLLIN)
        except OSError:
            sock.close()
            raise
        self.poller = poller
        self.upstream = upstream
        self.sock = sock
        self.fd = fd
        #: query ID -> the attempt waiting for its answer on this socket
        self.pending: dict[int, _Attempt] = {}
        self.uses = SOCKET_QUERIES
        self.until = now + SOCKET_AGE
        #: attempts whose query goes out at the poller's next flush, in order
        self.outbox: list[_Attempt] = []
        poller.sockets[fd] = self

    def send(self, exchange: _Exchange, query: Query, now: float) -> _Attempt:
        """Queue `query` under a fresh random ID; it goes out at the end of this turn of
        the loop with the others queued meanwhile (`_Poller.flush`)."""
        pending = self.pending
        ident = new_id()
        while ident in pending:
            ident = new_id()
        packet = wire.upstream_query(query, ident)
        attempt = pending[ident] = _Attempt(self, ident, exchange, packet, now)
        if not self.outbox:
            poller = self.poller
            if not poller.outgoing:
                poller.loop.call_soon(poller.flush)
            poller.outgoing.append(self)
        self.outbox.append(attempt)
        return attempt

    def flush(self) -> None:
        attempts = [a for a in self.outbox if not a.done]
        self.outbox = []
        items = [(a.packet, None) for a in attempts]
        sent, total = 0, len(items)
        while sent < total and self.poller.sockets.get(self.fd) is self:
            try:
                sent += send_batch(self.sock, items, sent)
            except OSError as exc:
                attempt = attempts[sent]
                sent += 1
                if not attempt.done:
                    self.send_failed(attempt, exc)

    def readable(self) -> None:
        pending = self.pending
        try:
            batch = recv_batch(self.sock, min(len(pending), RECV_BATCH) or 1, MAX_UDP_ANSWER)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # ECONNREFUSED (ICMP port unreachable) and the like: the upstream, the one
            # peer of this socket, is not there. Every query on it moves on at once.
            self.refused()
            return
        for data, _addr in batch:
            if len(data) < 2:
                continue
            attempt = pending.get(data[0] << 8 | data[1])
            if attempt is None:
                continue  # no query of ours waits for this ID here: ignored (RFC 5452)
            exchange = attempt.exchange
            try:
                exchange.on_reply(attempt, data)
            except Exception:  # noqa: BLE001 - one exchange's fault must not stop the others
                log.exception("error reading an upstream answer")
                attempt.close()
                self.poller.abort(exchange)

    def send_failed(self, attempt: _Attempt, exc: OSError) -> None:
        """A query could not go: its exchange moves on, and this socket takes no new
        query. ECONNREFUSED at a send is the ICMP error of an earlier query: the
        upstream is not there for any of them."""
        self.retire()
        if exc.errno == errno.ECONNREFUSED:
            self.refused()
            return
        exchange = attempt.exchange
        attempt.close()
        exchange.unsent(attempt.upstream, exc)

    def refused(self) -> None:
        self.retire()
        for attempt in list(self.pending.values()):
            exchange = attempt.exchange
            attempt.close()
            try:
                exchange.refused(attempt)
            except Exception:  # noqa: BLE001 - one exchange's fault must not stop the others
                log.exception("error failing over from %s", self.upstream)
                self.poller.abort(exchange)
        self.close()

    def abort(self) -> None:
        """After an unexpected error: end every exchange waiting here with no answer."""
        for attempt in list(self.pending.values()):
            exchange = attempt.exchange
            attempt.close()
            self.poller.abort(exchange)
        self.close()

    def retire(self) -> None:
        """Take no new query (the ones waiting still get their answers)."""
        self.uses = 0
        if self.poller.current.get(self.upstream) is self:
            del self.poller.current[self.upstream]

    def release(self, attempt: _Attempt) -> None:
        pending = self.pending
        if pending.get(attempt.ident) is attempt:
            del pending[attempt.ident]
            if not pending:
                self.close()

    def close(self) -> None:
        poller = self.poller
        if poller.sockets.get(self.fd) is self:
            del poller.sockets[self.fd]
            if poller.current.get(self.upstream) is self:
                del poller.current[self.upstream]
            self.sock.close()  # also leaves the epoll set


class _Attempt:
    """One query sent on an upstream socket, under its own ID, waiting for its answer."""

    __slots__ = ("socket", "upstream", "ident", "packet", "sent", "done", "exchange")

    def __init__(
        self, sock: _Socket, ident: int, exchange: _Exchange, packet: bytes, now: float
    ) -> None:
        self.socket = sock
        self.upstream = sock.upstream
        self.ident = ident
        self.packet = packet
        self.exchange = exchange
        self.done = False
        self.sent = now

    def close(self) -> None:
        if not self.done:
            self.done = True
            # The exchange holds us too: a cycle left to the GC otherwise.
            self.exchange = None
            self.socket.release(self)


class _Exchange:
    """The attempts for one query, driven by callbacks: no task, no future.

    Attempts go to the upstreams in order; the retry timer or a failure (closed
    port, SERVFAIL) sends the next one, and earlier attempts keep listening, so a
    slow upstream's late answer still counts. The first valid answer wins. When it
    is over, `done` gets `(wire, scan)` or None (no upstream answered in time).
    """

    __slots__ = (
        "query",
        "poller",
        "forwarder",
        "done",
        "deadline",
        "order",
        "sends",
        "turn",
        "attempts",
        "result",
        "winner",
        "last_error",
        "excluded",
        "timer",
        "over",
    )

    def __init__(
        self,
        forwarder: Forwarder,
        query: Query,
        poller: _Poller,
        done: Callable[[tuple[bytes, Answer] | None], None],
        deadline: float,
    ) -> None:
        self.query = query
        self.poller = poller
        self.forwarder = forwarder
        self.done = done
        self.deadline = deadline
        ups = forwarder.upstreams
        self.order = ups if len(ups) == 1 else forwarder.ordered()
        self.sends: dict[Upstream, int] | None = None  # made on the first retry
        self.turn = 0
        self.attempts: list[_Attempt] = []
        #: the first valid answer and its scan, and the upstream that gave it
        self.result: tuple[bytes, Answer] | None = None
        self.winner: Upstream | None = None
        self.last_error: tuple[bytes, Answer] | None = None
        self.excluded: set[Upstream] | None = None
        self.timer = 0  # the poller's ticket of the armed timer, 0 for none
        self.over = False

    @property
    def live(self) -> int:
        return sum(1 for a in self.attempts if not a.done)

    def _exclude(self, upstream: Upstream) -> None:
        if self.excluded is None:
            self.excluded = set()
        self.excluded.add(upstream)

    def step(self, now: float = 0.0) -> None:
        """Send the next attempt and arm the timer, or finish: an answer, no time, no one left.

        `now` is time.monotonic() when the caller has just read it (0: read it here).
        """
        while not self.over:
            if self.result is not None:
                self._finish()
                return
            if not now:
                now = time.monotonic()
            remaining = self.deadline - now
            if remaining <= 0:
                self._finish()
                return
            # Each upstream is asked at most twice, in order.
            if self.turn == 0:
                upstream = self.order[0]  # the common case: the first healthy upstream
            else:
                if self.sends is None:
                    # Turn 0 went to order[0] (a failed send counts too).
                    self.sends = {u: 0 for u in self.order}
                    self.sends[self.order[0]] = 1
                sends, order, excluded = self.sends, self.order, self.excluded or ()
                candidates = [u for u in order if u not in excluded and sends[u] < 2]
                if not candidates:
                    if self.live == 0:
                        self._finish()
                        return
                    self._arm(remaining, now)
                    return
                upstream = min(candidates, key=lambda u: (sends[u], order.index(u)))
                sends[upstream] += 1
            self.turn += 1
            if not self._send(upstream, now):
                now = 0.0
                continue  # could not even send: try the next one now
            self._arm(min(RETRY_AFTER[min(self.turn, len(RETRY_AFTER)) - 1], remaining), now)
            return

    def _arm(self, delay: float, now: float) -> None:
        poller = self.poller
        if self.timer:
            poller.cancel(self.timer)
        self.timer = poller.arm(self, delay, now)

    def _send(self, upstream: Upstream, now: float) -> bool:
        try:
            sock = self.poller.socket_for(upstream, now)
        except OSError as exc:
            self._unsendable(upstream, exc)
            return False
        self.attempts.append(sock.send(self, self.query, now))
        return True

    def _unsendable(self, upstream: Upstream, exc: OSError) -> None:
        log.debug("cannot send to %s: %s", upstream, exc)
        if exc.errno not in LOCAL_ERRNOS:
            # Out of descriptors is our problem: it must not mark a healthy upstream down.
            upstream.failed()
        self._exclude(upstream)

    def unsent(self, upstream: Upstream, exc: OSError) -> None:
        """A queued query could not go out (`_Socket.flush`): move on at once."""
        self._unsendable(upstream, exc)
        self.step()

    def refused(self, attempt: _Attempt) -> None:
        """The attempt's upstream is closed (ICMP port unreachable): move on at once."""
        attempt.upstream.failed()
        self._exclude(attempt.upstream)
        self.step()

    def on_reply(self, attempt: _Attempt, data: bytes) -> None:
        """A datagram with the attempt's ID, from its upstream's address and port."""
        try:
            answer = wire.scan_answer(data, self.query)
        except WireError:
            return  # garbage or another question: ignore, never forward
        attempt.close()
        if self.result is not None or self.over:
            return
        if answer.rcode in FAILOVER_RCODES:
            # This upstream can't help; another one may.
            attempt.upstream.failed()
            self._exclude(attempt.upstream)
            self.last_error = (data, answer)
        else:
            upstream = attempt.upstream
            upstream.succeeded(time.monotonic() - attempt.sent)
            self.result = result = (data, answer)
            self.winner = upstream
            if len(self.attempts) == 1 and not answer.tc:
                # The common case, the one attempt answered (and closed above): what
                # step() and _finish() would do, without their calls.
                self.over = True
                if self.timer:
                    self.poller.cancel(self.timer)
                    self.timer = 0
                self._deliver(result)
                return
        self.step()

    def cancel(self) -> None:
        """Stop without an answer: close the sockets, never call `done`."""
        self.over = True
        if self.timer:
            self.poller.cancel(self.timer)
            self.timer = 0
        for a in self.attempts:
            a.close()

    def _finish(self) -> None:
        # The common case, one attempt answered, was delivered by on_reply already.
        attempts = self.attempts
        result = self.result
        live = [a.upstream for a in attempts if not a.done]
        self.cancel()
        if result is None:
            for upstream in set(live):
                upstream.failed()
            if self.last_error is None:
                self.forwarder.timeouts += 1
            self._deliver(self.last_error)
            return
        data, answer = result
        upstream = self.winner
        if len(attempts) > 1:
            winner = next(a for a in attempts if a.upstream is upstream)
            # An upstream whose attempt went out before the winner's and is still
            # silent let its retry timer run out: count it, or a blackholed first
            # upstream would cost every query the retry delay forever.
            early = {a.upstream for a in attempts if a.sent < winner.sent}
            for slow in early - {upstream}:
                if slow in live:
                    slow.failed()
        if answer.tc:
            # Ask again over TCP (rare): the one path that needs a task.
            self.forwarder.spawn(self._over_tcp(data, answer, upstream))
            return
        self._deliver((data, answer))

    async def _over_tcp(self, data: bytes, answer: Answer, upstream: Upstream) -> None:
        tcp = await self.forwarder._tcp(self.query, upstream, self.deadline)
        # TCP failed: the truncated answer still tells the client to retry over TCP.
        self._deliver(tcp if tcp is not None else (data, answer))

    def _deliver(self, result: tuple[bytes, Answer] | None) -> None:
        # Dropped before the call: `done` may reference what references us (no cycle left).
        done, self.done = self.done, None
        if done is None:
            return  # delivered already
        try:
            done(result)
        except Exception:  # noqa: BLE001 - one query's fault must not stop the others
            log.exception("error delivering the answer for %s", self.query.name)


class Forwarder:
    """Sends a query upstream and returns the first valid answer within the time budget."""

    def __init__(self, upstreams: list[tuple[str, int]], budget: float = 2.0) -> None:
        self.upstreams = [Upstream(h, p) for h, p in upstreams]
        self.budget = budget
        self.timeouts = 0
        self.tasks: set[asyncio.Task] = set()
        self._poller: _Poller | None = None

    def ordered(self) -> list[Upstream]:
        """Healthy upstreams in configured order, then the ones in backoff."""
        if len(self.upstreams) == 1:
            return self.upstreams
        now = time.monotonic()
        up = [u for u in self.upstreams if u.down_until <= now]
        return up + [u for u in self.upstreams if u.down_until > now]

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def start(
        self,
        query: Query,
        done: Callable[[tuple[bytes, Answer] | None], None],
        budget: float | None = None,
    ) -> _Exchange:
        """Ask the upstreams; `done` gets the first valid answer and its scan, or None.

        The answer may be an upstream's SERVFAIL or REFUSED when no other upstream
        did better; None means nobody answered within the budget. `done` may be
        called before this returns (every send failed at once).
        """
        now = time.monotonic()
        deadline = now + (self.budget if budget is None else budget)
        poller = self._poller
        # A poller serves one loop. Asking the loop whether it runs costs a tenth of
        # asyncio.get_running_loop(), and only the running loop can be calling us.
        if poller is None or not poller.loop.is_running():
            poller = self._poller = poller_for(asyncio.get_running_loop())
        ex = _Exchange(self, query, poller, done, deadline)
        ex.step(now)
        return ex

    async def _tcp(
        self, query: Query, upstream: Upstream, deadline: float
    ) -> tuple[bytes, Answer] | None:
        """Ask again over TCP after TC=1 (RFC 7766), within what is left of the budget."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        writer = None
        try:
            async with asyncio.timeout(remaining):
                reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
                ident = new_id()
                packet = wire.upstream_query(query, ident)
                writer.write(struct.pack("!H", len(packet)) + packet)
                await writer.drain()
                while True:
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    data = await reader.readexactly(size)
                    if len(data) >= 2 and (data[0] << 8 | data[1]) == ident:
                        try:
                            return data, wire.scan_answer(data, query)
                        except WireError:
                            continue
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return None
        finally:
            if writer is not None:
                writer.close()
