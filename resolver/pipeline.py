"""The chain a query walks through: guards, policy, cache, upstream; each step answers or passes."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Coroutine
from enum import IntEnum
from typing import Any, Protocol

from resolver import wire
from resolver.cache import STALE_ANSWER_TTL, Cache, personalise
from resolver.config import Config
from resolver.policy import Policy, Verdict
from resolver.upstream import Forwarder
from resolver.wire import Query, Rcode, WireError

log = logging.getLogger("sinkhole.pipeline")

#: Distinct questions waiting on upstreams at once; past it, new ones get SERVFAIL
#: so a random-subdomain flood cannot grow memory or upstream load without bound.
MAX_INFLIGHT = 4096
#: Queries (not distinct questions) waiting for an upstream answer at once; past it a
#: new one gets SERVFAIL at once, so a flood of one slow name cannot pile up tasks.
MAX_WAITING = 20_000
ACL_MEMO_SIZE = 65_536
#: The `hits.action` of a blocked name asked by a client over its rate limit: it got
#: REFUSED from the limiter, not the sinkhole answer.
RATE_LIMITED_ACTION = "rate-limited"
RATE_LIMIT_TABLE_SIZE = 100_000
#: Error answers (FORMERR, NOTIMP) per client and second; past it malformed packets
#: are dropped. Well-formed queries never draw on this budget.
ERROR_ANSWERS_PER_SECOND = 50.0
ERROR_ANSWER_BURST = 100.0


class Outcome(IntEnum):
    """What happened to a query; drives counters, hits and logs."""

    BLOCKED = 0  #: answered with the sinkhole
    FORWARDED = 1  #: answered by an upstream
    CACHED = 2  #: answered from the cache
    STALE = 3  #: an expired cached answer, every upstream failing (RFC 8767)
    REFUSED = 4  #: client outside allow_networks, or CHAOS
    RATE_LIMITED = 5  #: client over its rate limit
    FAILED = 6  #: SERVFAIL: no upstream answered
    FORMERR = 7  #: malformed query
    NOTIMP = 8  #: opcode other than QUERY
    DROPPED = 9  #: no answer at all (unreadable header, QR set)
    LOCAL = 10  #: answered locally (CHAOS version string)


class Sink(Protocol):
    """Where a forwarded query's answer goes: a UDP listener, or a future for TCP."""

    def send(self, out: bytes, addr: Any) -> None: ...


class _FutureSink:
    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()

    def send(self, out: bytes, addr: Any) -> None:
        if not self.future.done():  # the TCP connection may be gone
            self.future.set_result(out)


class _Pending:
    """A question waiting on an upstream, and the queries that asked it meanwhile."""

    __slots__ = ("resolver", "query", "waiters", "exchange")

    def __init__(self, resolver: Resolver, query: Query) -> None:
        self.resolver = resolver
        self.query = query
        self.waiters: list[tuple[Request, Sink, Any]] = []
        self.exchange = None

    def finished(self, result: tuple[bytes, Any] | None) -> None:
        self.resolver._fetched(self, result)


class Request:
    """One query on its way through the chain."""

    __slots__ = ("query", "client", "tcp", "outcome")

    def __init__(self, query: Query, client: str, tcp: bool) -> None:
        self.query = query
        self.client = client
        self.tcp = tcp


class AccessGuard:
    """REFUSED outside allow_networks: an open resolver is an amplification weapon."""

    def __init__(self, networks: tuple[str, ...]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.memo: dict[str, bool] = {}

    def allowed(self, client: str) -> bool:
        ok = self.memo.get(client)
        if ok is None:
            try:
                addr = ipaddress.ip_address(client.split("%")[0])
                if addr.version == 6 and addr.ipv4_mapped:
                    addr = addr.ipv4_mapped
                ok = any(addr in n for n in self.networks)
            except ValueError:
                ok = False
            if len(self.memo) >= ACL_MEMO_SIZE:
                self.memo.clear()
            self.memo[client] = ok
        return ok

    def __call__(self, req: Request) -> bytes | None:
        if self.allowed(req.client):
            return None
        req.outcome = Outcome.REFUSED
        return wire.error_response(req.query.wire, Rcode.REFUSED)


class RateLimiter:
    """Token bucket per client: `per_client` queries per `window` seconds, then REFUSED."""

    def __init__(
        self,
        per_client: int,
        window: int,
        exempt: tuple[str, ...],
        on_refused: Callable[[Request], None] | None = None,
    ) -> None:
        self.per_client = per_client
        self.window = window
        #: Called with each refused request: a blocked name is recorded all the same.
        self.on_refused = on_refused
        self.capacity = float(per_client)
        self.rate = per_client / window if window else 0.0
        self.exempt = AccessGuard(exempt) if exempt else None
        self.buckets: dict[str, list[float]] = {}
        self.logged: dict[str, float] = {}

    def __call__(self, req: Request) -> bytes | None:
        client = req.client
        bucket = self.buckets.get(client)
        now = time.monotonic()
        if bucket is None:
            if self.exempt is not None and self.exempt.allowed(client):
                return None
            if len(self.buckets) >= RATE_LIMIT_TABLE_SIZE:
                self.buckets.clear()
            bucket = self.buckets[client] = [self.capacity, now]
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        bucket[0] = tokens
        last = self.logged.get(client, 0.0)
        if now - last >= 60:
            # One line per client per minute, not one per refused query.
            if len(self.logged) >= RATE_LIMIT_TABLE_SIZE:
                self.logged.clear()
            self.logged[client] = now
            log.warning(
                "client %s is over its rate limit (%d queries per %d s); refusing its queries. "
                "Behind NAT, a terminal server or a proxy, raise rate_limit.per_client "
                "or add its address to rate_limit.exempt",
                client,
                self.per_client,
                self.window,
            )
        req.outcome = Outcome.RATE_LIMITED
        if self.on_refused is not None:
            self.on_refused(req)
        return wire.error_response(req.query.wire, Rcode.REFUSED)


class ChaosGuard:
    """CHAOS class (version.bind, hostname.bind): answered here, never forwarded."""

    def __init__(self, version_string: str | None) -> None:
        self.version = version_string

    def __call__(self, req: Request) -> bytes | None:
        q = req.query
        if q.qclass != wire.CLASS_CH:
            return None
        if self.version and q.name in ("version.bind", "version.server") and q.qtype in (16, 255):
            txt = self.version.encode()[:255]
            rdata = bytes([len(txt)]) + txt
            record = b"\xc0\x0c" + wire.RR_FIXED.pack(16, wire.CLASS_CH, 0, len(rdata)) + rdata
            opt = wire.opt_record(q.do) if q.edns else b""
            req.outcome = Outcome.LOCAL
            return (
                wire.HEADER.pack(q.id, wire.header_flags(q, 0, aa=True), 1, 1, 0, 1 if opt else 0)
                + q.question
                + record
                + opt
            )
        req.outcome = Outcome.REFUSED
        return wire.error_response(q.wire, Rcode.REFUSED)


class Blocker:
    """A blocked name gets the sinkhole answer; nothing about it goes upstream."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    def __call__(self, req: Request) -> bytes | None:
        r = self.resolver
        v = r.policy.verdict(req.query, req.client)
        if v is None:
            return None
        rule = v.rule
        req.outcome = Outcome.BLOCKED
        key = rule.service or rule.category
        r.blocked_by[key] = r.blocked_by.get(key, 0) + 1
        if r.recorder is not None:
            r.recorder.hit(req.client, v)
        return req.query.wire[:2] + v.answer_tail


class CacheStep:
    """A fresh cached answer, patched with the client's ID, question and aged TTLs."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    def __call__(self, req: Request) -> bytes | None:
        r = self.resolver
        now = time.monotonic()
        entry = r.cache.get(req.query, now)
        if entry is None:
            return None
        if entry.cnames:
            for name in entry.cnames:
                match = r.policy.decide(name, req.client)
                if match is not None:
                    return r.blocked(req, match)
        if now >= entry.prefetch_from and r.cache.wants_prefetch(entry, now):
            entry.prefetching = True
            r.prefetch(req.query)
        req.outcome = Outcome.CACHED
        out = personalise(entry.render(int(now - entry.stored)), req.query)
        # Every client may take 512 bytes: only a longer answer needs its limit.
        if len(out) > wire.CLASSIC_UDP_LIMIT and not req.tcp and len(out) > req.query.max_udp:
            return wire.truncated(req.query, out)
        return out


class Resolver:
    """Owns the chain and the state it works on; `handle` is shared by UDP and TCP."""

    def __init__(self, config: Config, policy: Policy, forwarder: Forwarder, recorder=None):
        self.config = config
        self.policy = policy
        self.forwarder = forwarder
        self.recorder = recorder
        self.cache = Cache(config.cache)
        self.counts = [0] * len(Outcome)
        #: blocked queries per service id (or category for lists and custom rules)
        self.blocked_by: dict[str, int] = {}
        self.error_budget: dict[str, list[float]] = {}
        self.inflight: dict[bytes, _Pending] = {}
        #: bound of `inflight`; the server lowers it when file descriptors are scarce
        self.max_inflight = MAX_INFLIGHT
        self.waiting = 0
        self.steps = self.build_chain(config)

    def build_chain(self, config: Config) -> list:
        steps: list = []
        # Refuse strangers before doing any work for them: we are not an open resolver.
        steps.append(AccessGuard(config.allow_networks))
        # Rate limit before policy and cache, so a flood costs a dict lookup per packet.
        if config.rate_limit.per_client > 0:
            steps.append(
                RateLimiter(
                    config.rate_limit.per_client,
                    config.rate_limit.window,
                    config.rate_limit.exempt,
                    on_refused=self._record_refused,
                )
            )
        # CHAOS queries are about this server, not the internet: never forward them.
        steps.append(ChaosGuard(config.version_string))
        # Policy before the cache: a name blocked a second ago must not be served from it.
        steps.append(Blocker(self))
        # Then the cache; what it misses goes upstream (the terminal step, async).
        steps.append(CacheStep(self))
        return steps

    def reconfigure(self, config: Config, policy: Policy, forwarder: Forwarder) -> None:
        """Swap in a new config: each piece is replaced whole, never half-applied.

        The cache keeps its entries under its new bounds; the rate limiter starts with
        full buckets.
        """
        self.config = config
        self.policy = policy
        self.forwarder = forwarder
        self.cache.reconfigure(config.cache)
        self.steps = self.build_chain(config)

    def _record_refused(self, req: Request) -> None:
        """A blocked name asked by a client over its rate limit is an attempt all the
        same: the record of attempts must not depend on the limiter."""
        if self.recorder is None:
            return
        v = self.policy.verdict(req.query, req.client)
        if v is None:
            return
        limited = v.limited
        if limited is None:
            qname, qtype = v.record[0], v.record[1]
            limited = v.limited = Verdict(b"", v.rule, v.pattern, RATE_LIMITED_ACTION, qname, qtype)
        self.recorder.hit(req.client, limited)

    def traffic_totals(self) -> list[int]:
        """queries, blocked, forwarded, cached, failed, refused (for the traffic table)."""
        c = self.counts
        return [
            sum(c) - c[Outcome.DROPPED],
            c[Outcome.BLOCKED],
            c[Outcome.FORWARDED],
            c[Outcome.CACHED] + c[Outcome.STALE],
            c[Outcome.FAILED],
            c[Outcome.REFUSED] + c[Outcome.RATE_LIMITED],
        ]

    def handle(
        self,
        data: bytes,
        client: str,
        tcp: bool = False,
        sink: Sink | None = None,
        addr: Any = None,
    ) -> bytes | None | Coroutine:
        """Answer bytes, or None (dropped, or forwarded: `sink.send(answer, addr)` later).

        Without a sink, a forwarded query returns a coroutine that resolves to the answer.
        """
        try:
            q = wire.parse_query(data)
        except WireError as exc:
            return self._refuse_malformed(data, exc, client)
        except Exception:  # noqa: BLE001 - no packet may stop the server
            log.exception("unexpected error parsing a query")
            self.counts[Outcome.FORMERR] += 1
            return wire.error_response(data, Rcode.FORMERR)
        req = Request(q, client, tcp)
        for step in self.steps:
            out = step(req)
            if out is not None:
                self.counts[req.outcome] += 1
                return out
        if self.waiting >= MAX_WAITING:
            return self._fail(req)
        if sink is not None:
            self.forward_to(req, sink, addr)
            return None
        return self.forward(req)

    def _refuse_malformed(self, data: bytes, exc: WireError, client: str) -> bytes | None:
        if exc.rcode is None or not self._may_answer_error(client):
            self.counts[Outcome.DROPPED] += 1
            return None
        self.counts[Outcome.NOTIMP if exc.rcode == Rcode.NOTIMP else Outcome.FORMERR] += 1
        return wire.error_response(data, exc.rcode)

    def _may_answer_error(self, client: str) -> bool:
        """Token bucket for FORMERR/NOTIMP answers: a flood of garbage costs a dict
        lookup per packet instead of a send, so real queries keep their share."""
        now = time.monotonic()
        bucket = self.error_budget.get(client)
        if bucket is None:
            if len(self.error_budget) >= RATE_LIMIT_TABLE_SIZE:
                self.error_budget.clear()
            bucket = self.error_budget[client] = [ERROR_ANSWER_BURST, now]
        tokens = min(ERROR_ANSWER_BURST, bucket[0] + (now - bucket[1]) * ERROR_ANSWERS_PER_SECOND)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def blocked(self, req: Request, match) -> bytes:
        rule, pattern = match
        policy = self.policy
        q = req.query
        req.outcome = Outcome.BLOCKED
        key = rule.service or rule.category
        self.blocked_by[key] = self.blocked_by.get(key, 0) + 1
        responder = policy.responder(rule)
        if self.recorder is not None:
            verdict = Verdict(b"", rule, pattern, responder.action, q.name, q.qtype)
            self.recorder.hit(req.client, verdict)
        return responder.answer(q)

    def prefetch(self, q: Query) -> None:
        """Refresh a popular cached answer shortly before it expires."""
        if q.key in self.inflight or len(self.inflight) >= self.max_inflight:
            return
        pending = self.inflight[q.key] = _Pending(self, q)
        self._start(pending)

    def _start(self, pending: _Pending) -> None:
        try:
            exchange = self.forwarder.start(pending.query, pending.finished)
        except Exception:  # noqa: BLE001 - the question must not stay in flight forever
            log.exception("error forwarding %s", pending.query.name)
            self._fetched(pending, None)
            return
        if self.inflight.get(pending.query.key) is pending:
            pending.exchange = exchange

    def forward_to(self, req: Request, sink: Sink, addr: Any) -> None:
        """Ask upstream; `sink.send(answer, addr)` gets the answer (maybe before this returns).

        The first asker of a question starts the exchange; identical questions
        asked meanwhile wait on it (retries are not multiplied upstream).
        """
        q = req.query
        pending = self.inflight.get(q.key)
        if pending is None:
            if len(self.inflight) >= self.max_inflight:
                out = self._fail(req)
                if out is not None:
                    sink.send(out, addr)
                return
            pending = self.inflight[q.key] = _Pending(self, q)
            pending.waiters.append((req, sink, addr))
            self.waiting += 1
            self._start(pending)
        else:
            pending.waiters.append((req, sink, addr))
            self.waiting += 1

    async def forward(self, req: Request) -> bytes | None:
        """`forward_to` for coroutines (TCP connections)."""
        sink = _FutureSink()
        self.forward_to(req, sink, None)
        return await sink.future

    def _fetched(self, pending: _Pending, result: tuple[bytes, Any] | None) -> None:
        q = pending.query
        pending.exchange = None
        if self.inflight.get(q.key) is pending:
            del self.inflight[q.key]
        if result is not None:
            result = (wire.forwarded_flags(result[0]), result[1])
            try:
                self.cache.store(q, result[0], result[1])
            except Exception:  # noqa: BLE001 - the answer still goes out, uncached
                log.exception("error caching the answer for %s", q.name)
        # Taken, not read: an exchange that fails and then answers anyway delivers once.
        waiters, pending.waiters = pending.waiters, []
        for req, sink, addr in waiters:
            self.waiting -= 1
            try:
                out = self._answer(req, result)
                if out is not None:
                    sink.send(out, addr)
            except Exception:  # noqa: BLE001 - one client's answer must not stop the others
                log.exception("error answering %s for %s", req.query.name, req.client)

    def _answer(self, req: Request, result: tuple[bytes, Any] | None) -> bytes | None:
        q = req.query
        if result is None:
            stale = self.cache.get_stale(q, time.monotonic())
            if stale is not None:
                self.counts[Outcome.STALE] += 1
                req.outcome = Outcome.STALE
                return self._deliver(req, personalise(stale.render(0, STALE_ANSWER_TTL), q))
            return self._fail(req)
        data, answer = result
        for name in answer.cnames:
            match = self.policy.decide(name, req.client)
            if match is not None:
                # The CNAME chain enters a blocked name: the whole answer is blocked.
                out = self.blocked(req, match)
                self.counts[Outcome.BLOCKED] += 1
                return out
        self.counts[Outcome.FORWARDED] += 1
        out = q.wire[:2] + data[2:12] + q.question + data[q.question_end :]
        return self._deliver(req, out)

    def abandon(self) -> None:
        """At shutdown: stop every exchange still waiting on an upstream."""
        for pending in list(self.inflight.values()):
            if pending.exchange is not None:
                pending.exchange.cancel()
        self.inflight.clear()

    def _deliver(self, req: Request, out: bytes) -> bytes:
        if not req.tcp and len(out) > req.query.max_udp:
            return wire.truncated(req.query, out)
        return out

    def _fail(self, req: Request) -> bytes | None:
        self.counts[Outcome.FAILED] += 1
        return wire.error_response(req.query.wire, Rcode.SERVFAIL)
