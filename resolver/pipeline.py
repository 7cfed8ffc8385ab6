"""The chain a query walks through, from the first guard to the upstream.

Each step is built with what it needs (networks, policy, cache, recorder,
forwarder), never the resolver, and is called with the `Request`: it returns the
answer's bytes, or None to pass the request on. The last step, `Forward`, always
takes the request: it answers at once (SERVFAIL when saturated) or parks it and
answers later through the request's sink. `Resolver.finish` is the one place a
request ends: its outcome is counted there and a UDP answer too long for the
client is truncated there.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Any, Protocol

from resolver import wire
from resolver.cache import STALE_ANSWER_TTL, Cache
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
#: A client over its rate limit is named in the log once per this many seconds.
RATE_LIMIT_LOG_EVERY = 60.0
#: Error answers (FORMERR, NOTIMP) per client and second; past it malformed packets
#: are dropped. Well-formed queries never draw on this budget.
ERROR_ANSWERS_PER_SECOND = 50.0
ERROR_ANSWER_BURST = 100.0

Clock = Callable[[], float]


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


# The members as module globals for the query path: `Outcome.BLOCKED` goes through the
# enum type's attribute lookup (~80 ns here), a global costs a dict lookup.
(
    O_BLOCKED, O_FORWARDED, O_CACHED, O_STALE, O_REFUSED, O_RATE_LIMITED, O_FAILED,
    O_FORMERR, O_NOTIMP, O_DROPPED, O_LOCAL,
) = Outcome  # fmt: skip


class Sink(Protocol):
    """Where a request's later answer goes: the UDP listener, or a TCP connection.

    `expect` is called when a request is parked on an upstream; each call is
    followed by exactly one `send` for it, unless the server shuts down first.
    """

    def send(self, out: bytes, addr: Any) -> None: ...

    def expect(self) -> None: ...


class Request:
    """One query on its way through the chain, and where its answer goes."""

    __slots__ = ("query", "client", "tcp", "sink", "addr", "outcome")

    def __init__(self, query: Query, client: str, tcp: bool, sink: Sink, addr: Any) -> None:
        self.query = query
        self.client = client
        self.tcp = tcp
        self.sink = sink
        self.addr = addr


_new_request = object.__new__
#: The Blocker's token when its policy has client groups: never in a query's `memo`.
_NO_TOKEN = object()

Step = Callable[[Request], "bytes | None"]


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
        # The memo first: an allowed client, the common case, costs no further call.
        if self.memo.get(req.client) or self.allowed(req.client):
            return None
        req.outcome = O_REFUSED
        return wire.error_response(req.query.wire, Rcode.REFUSED)


class TokenBuckets:
    """`capacity` tokens per key, refilled at `rate` per second, on an injected clock."""

    def __init__(self, capacity: float, rate: float, clock: Clock) -> None:
        self.capacity = capacity
        self.rate = rate
        self.clock = clock
        self.buckets: dict[str, list[float]] = {}

    def take(self, key: str) -> bool:
        """One token for `key`; False when it has none left."""
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= RATE_LIMIT_TABLE_SIZE:
                self.buckets.clear()
            bucket = self.buckets[key] = [self.capacity, now]
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False


class RateLimiter:
    """Token bucket per client: `per_client` queries per `window` seconds, then REFUSED."""

    def __init__(
        self,
        per_client: int,
        window: int,
        exempt: tuple[str, ...],
        clock: Clock = time.monotonic,
    ) -> None:
        self.per_client = per_client
        self.window = window
        self.clock = clock
        #: Called with each refused request, so that a blocked name is recorded all the
        #: same; set to the current policy's `Blocker.limited` by `Resolver.set_policy`.
        self.on_refused: Callable[[Request], None] | None = None
        self.exempt = AccessGuard(exempt) if exempt else None
        self.tokens = TokenBuckets(float(per_client), per_client / window if window else 0.0, clock)
        self.logged: dict[str, float] = {}

    def __call__(self, req: Request) -> bytes | None:
        client = req.client
        tokens = self.tokens
        if client not in tokens.buckets and self.exempt is not None and self.exempt.allowed(client):
            return None
        if tokens.take(client):
            return None
        self._log(client)
        req.outcome = O_RATE_LIMITED
        if self.on_refused is not None:
            self.on_refused(req)
        return wire.error_response(req.query.wire, Rcode.REFUSED)

    def _log(self, client: str) -> None:
        """One line per client per minute, not one per refused query."""
        now = self.clock()
        last = self.logged.get(client)
        if last is not None and now - last < RATE_LIMIT_LOG_EVERY:
            return
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


class ChaosGuard:
    """CHAOS class (version.bind, hostname.bind): answered here, never forwarded."""

    def __init__(self, version_string: str | None) -> None:
        self.version = version_string

    def __call__(self, req: Request) -> bytes | None:
        q = req.query
        if q.qclass != wire.CLASS_CH:
            return None
        if self.version and q.name in ("version.bind", "version.server") and q.qtype in (16, 255):
            req.outcome = O_LOCAL
            return wire.chaos_txt(q, self.version)
        req.outcome = O_REFUSED
        return wire.error_response(q.wire, Rcode.REFUSED)


class Blocker:
    """A blocked name gets the sinkhole answer; nothing about it goes upstream.

    The one place a blocked answer is made and a hit handed to the recorder: for
    the asked name (this step), for a CNAME target (`CnameGuard`) and for a blocked
    name refused by the rate limiter (`limited`).
    """

    def __init__(self, policy: Policy, recorder: Any, blocked_by: dict[str, int]) -> None:
        self.policy = policy
        #: The policy's verdict memo of clients without exemptions (None when client
        #: groups may exempt), as the token of the verdicts this Blocker keeps in the
        #: queries' shared `memo` (wire.Query): an identical query finds its verdict
        #: there, without a call or a lookup. A new policy has a new token.
        plain = policy.plain_memo
        self.token = plain if plain is not None else _NO_TOKEN
        self.plain = plain is not None
        #: The recorder's `hit(client, verdict)`, fetched once: one call per blocked query.
        self.hit = recorder.hit if recorder is not None else None
        #: blocked queries per service id (or category), shared with the resolver's stats
        self.blocked_by = blocked_by

    def __call__(self, req: Request) -> bytes | None:
        memo = req.query.memo
        if memo[0] is self.token:
            v = memo[1]
        else:
            v = self.policy.verdict(req.query, req.client)
            if self.plain:
                memo[0], memo[1] = self.token, v
        if v is None:
            return None
        # `block`, inline: a call less per blocked query.
        req.outcome = O_BLOCKED
        blocked_by, key = self.blocked_by, v.counted_as
        blocked_by[key] = blocked_by.get(key, 0) + 1
        if self.hit is not None:
            self.hit(req.client, v)
        return req.query.wire[:2] + v.answer_tail

    def block(self, req: Request, v: Verdict) -> bytes:
        req.outcome = O_BLOCKED
        blocked_by, key = self.blocked_by, v.counted_as
        blocked_by[key] = blocked_by.get(key, 0) + 1
        if self.hit is not None:
            self.hit(req.client, v)
        return req.query.wire[:2] + v.answer_tail

    def block_match(self, req: Request, match: tuple) -> bytes:
        """The sinkhole answer to the asked question, blocked by `match` (a CNAME target)."""
        return self.block(req, self.policy.verdict_of(req.query, match))

    def limited(self, req: Request) -> None:
        """A blocked name asked by a client over its rate limit is an attempt all the
        same: the record of attempts must not depend on the limiter."""
        if self.hit is None:
            return
        v = self.policy.verdict(req.query, req.client)
        if v is None:
            return
        limited = v.limited
        if limited is None:
            qname, qtype = v.record[0], v.record[1]
            limited = v.limited = Verdict(b"", v.rule, v.pattern, RATE_LIMITED_ACTION, qname, qtype)
        self.hit(req.client, limited)


class CnameGuard:
    """An answer whose CNAME chain enters a blocked name is blocked whole."""

    __slots__ = ("policy", "blocker")

    def __init__(self, policy: Policy, blocker: Blocker) -> None:
        self.policy = policy
        self.blocker = blocker

    def __call__(self, req: Request, cnames: tuple[str, ...] | list[str]) -> bytes | None:
        for name in cnames:
            match = self.policy.decide(name, req.client)
            if match is not None:
                return self.blocker.block_match(req, match)
        return None


class CacheStep:
    """A fresh cached answer, patched with the client's ID, question and aged TTLs."""

    def __init__(
        self,
        cache: Cache,
        cnames: CnameGuard,
        prefetch: Callable[[Query], None],
        clock: Clock = time.monotonic,
    ) -> None:
        self.cache = cache
        self.cnames = cnames
        self.prefetch = prefetch
        self.clock = clock

    def __call__(self, req: Request) -> bytes | None:
        cache = self.cache
        now = self.clock()
        entry = cache.get(req.query, now)
        if entry is None:
            return None
        if entry.cnames:
            out = self.cnames(req, entry.cnames)
            if out is not None:
                return out
        if now >= entry.prefetch_from and cache.wants_prefetch(entry, now):
            entry.prefetching = True
            self.prefetch(req.query)
        req.outcome = O_CACHED
        q = req.query
        age = int(now - entry.stored)
        if age == entry.age:
            # The same query asked in the same second of age: the answer after the ID.
            out = entry.outs.get(q.tail)
            if out is not None:
                return q.wire[:2] + out
        return entry.answer(age, q)


class _Pending:
    """A question waiting on an upstream, and the requests that asked it meanwhile."""

    __slots__ = ("forward", "query", "waiters", "exchange")

    def __init__(self, forward: Forward, query: Query) -> None:
        self.forward = forward
        self.query = query
        self.waiters: list[Request] = []
        self.exchange = None

    def finished(self, result: tuple[bytes, Any] | None) -> None:
        self.forward._fetched(self, result)


class Forward:
    """The terminal step: ask the upstreams, once per distinct question.

    The first asker of a question starts the exchange; identical questions asked
    meanwhile wait on it (retries are not multiplied upstream). Answers are
    cached, checked by the CNAME guard, and delivered through each request's sink
    after `finish`. When every upstream fails, a stale cached answer (RFC 8767)
    or SERVFAIL.
    """

    def __init__(
        self,
        forwarder: Forwarder,
        cache: Cache,
        finish: Callable[[Request, bytes], bytes],
        clock: Clock = time.monotonic,
    ) -> None:
        self.forwarder = forwarder
        self.cache = cache
        self.finish = finish
        self.clock = clock
        #: Set by `Resolver.set_policy`: answers arriving from then on are checked under it.
        self.cnames: CnameGuard | None = None
        self.inflight: dict[bytes, _Pending] = {}
        #: bound of `inflight`; the server lowers it when file descriptors are scarce
        self.max_inflight = MAX_INFLIGHT
        self.waiting = 0

    def __call__(self, req: Request) -> bytes | None:
        if self.waiting >= MAX_WAITING:
            return fail(req)
        q = req.query
        pending = self.inflight.get(q.key)
        if pending is None:
            if len(self.inflight) >= self.max_inflight:
                return fail(req)
            pending = self.inflight[q.key] = _Pending(self, q)
            self._park(pending, req)
            self._start(pending)
        else:
            self._park(pending, req)
        return None

    def _park(self, pending: _Pending, req: Request) -> None:
        pending.waiters.append(req)
        self.waiting += 1
        req.sink.expect()

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

    def _fetched(self, pending: _Pending, result: tuple[bytes, Any] | None) -> None:
        q = pending.query
        pending.exchange = None
        if self.inflight.get(q.key) is pending:
            del self.inflight[q.key]
        if result is not None:
            # ID 0 and our flags: cached as it is, and each waiter's ID spliced in.
            result = (wire.forwarded_flags(result[0]), result[1])
            try:
                self.cache.store(q, result[0], result[1])
            except Exception:  # noqa: BLE001 - the answer still goes out, uncached
                log.exception("error caching the answer for %s", q.name)
        # Taken, not read: an exchange that fails and then answers anyway delivers once.
        waiters, pending.waiters = pending.waiters, []
        for req in waiters:
            self.waiting -= 1
            try:
                out = self._answer(req, result)
            except Exception:  # noqa: BLE001 - one client's answer must not stop the others
                log.exception("error answering %s for %s", req.query.name, req.client)
                out = fail(req)
            try:
                req.sink.send(self.finish(req, out), req.addr)
            except Exception:  # noqa: BLE001
                log.exception("error sending the answer to %s", req.client)

    def _answer(self, req: Request, result: tuple[bytes, Any] | None) -> bytes:
        q = req.query
        if result is None:
            stale = self.cache.get_stale(q, self.clock())
            if stale is None:
                return fail(req)
            req.outcome = O_STALE
            out = wire.personalise(stale.render(0, STALE_ANSWER_TTL), q)
            return wire.with_ede(out, stale.opt_at, wire.EDE_STALE)
        data, answer = result
        if answer.cnames and self.cnames is not None:
            out = self.cnames(req, answer.cnames)
            if out is not None:
                return out
        req.outcome = O_FORWARDED
        return wire.personalise(data, q)

    def abandon(self) -> None:
        """At shutdown: stop every exchange still waiting on an upstream."""
        for pending in list(self.inflight.values()):
            if pending.exchange is not None:
                pending.exchange.cancel()
        self.inflight.clear()


def fail(req: Request) -> bytes:
    """SERVFAIL: no usable answer for a well-formed query."""
    req.outcome = O_FAILED
    return wire.error_response(req.query.wire, Rcode.SERVFAIL)  # type: ignore[return-value]


class Resolver:
    """Owns the chain and the counters; `handle` is shared by UDP and TCP."""

    def __init__(
        self,
        config: Config,
        policy: Policy,
        forwarder: Forwarder,
        recorder: Any = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.recorder = recorder
        self.clock = clock
        self.cache = Cache(config.cache)
        self.counts = [0] * len(Outcome)
        #: blocked queries per service id (or category for lists and custom rules)
        self.blocked_by: dict[str, int] = {}
        self.errors = TokenBuckets(ERROR_ANSWER_BURST, ERROR_ANSWERS_PER_SECOND, clock)
        self.forward = Forward(forwarder, self.cache, self.finish, clock)
        self.reconfigure(config, policy, forwarder)

    def reconfigure(self, config: Config, policy: Policy, forwarder: Forwarder) -> None:
        """Swap in a new config: each piece is replaced whole, never half-applied.

        The cache keeps its entries under its new bounds; the rate limiter starts with
        full buckets; questions already in flight finish on the old forwarder.
        """
        self.config = config
        self.cache.reconfigure(config.cache)
        self.forward.forwarder = forwarder
        self.access = AccessGuard(config.allow_networks)
        rl = config.rate_limit
        self.limiter = (
            RateLimiter(rl.per_client, rl.window, rl.exempt, self.clock)
            if rl.per_client > 0
            else None
        )
        self.chaos = ChaosGuard(config.version_string)
        self.set_policy(policy)

    def set_policy(self, policy: Policy) -> None:
        """Swap in a new policy: the steps that read it are rebuilt, the others kept."""
        self.policy = policy
        blocker = Blocker(policy, self.recorder, self.blocked_by)
        cnames = CnameGuard(policy, blocker)
        if self.limiter is not None:
            self.limiter.on_refused = blocker.limited
        self.forward.cnames = cnames
        self.chain = self.build_chain(blocker, cnames)
        #: The steps' bound `__call__`s: calling a bound method costs half of what calling
        #: an instance does (type slot lookup), and a query makes three to six such calls.
        self.steps: list[Step] = [step.__call__ for step in self.chain]

    def build_chain(self, blocker: Blocker, cnames: CnameGuard) -> list[Step]:
        return [
            # Refuse strangers before doing any work for them: we are not an open resolver.
            self.access,
            # Rate limit before policy and cache, so a flood costs a dict lookup per packet.
            *([self.limiter] if self.limiter is not None else []),
            # CHAOS queries are about this server, not the internet: never forward them.
            self.chaos,
            # Policy before the cache: a name blocked a second ago must not be served from it.
            blocker,
            # The cache; an entry whose CNAME chain enters a blocked name is blocked.
            CacheStep(self.cache, cnames, self.forward.prefetch, self.clock),
            # Terminal: what nothing above answered goes upstream (answered later).
            self.forward,
        ]

    def handle(self, data: bytes, client: str, sink: Sink, addr: Any, tcp: bool = False):
        """The answer to send now, or None: dropped, or parked (then `sink.send` later)."""
        try:
            q = wire.parse_query(data)
        except WireError as exc:
            return self._refuse_malformed(data, exc, client)
        except Exception:  # noqa: BLE001 - no packet may stop the server
            log.exception("unexpected error parsing a query")
            self.counts[O_FORMERR] += 1
            return wire.error_response(data, Rcode.FORMERR)
        # Request(q, client, tcp, sink, addr) without the call of its __init__.
        req = _new_request(Request)
        req.query, req.client, req.tcp, req.sink, req.addr = q, client, tcp, sink, addr
        for step in self.steps:
            out = step(req)
            if out is not None:
                return self.finish(req, out)
        return None

    def finish(self, req: Request, out: bytes) -> bytes:
        """Where every request ends: its outcome counted, a long UDP answer truncated."""
        self.counts[req.outcome] += 1
        # Every client may take 512 bytes: only a longer answer needs its limit.
        if len(out) > wire.CLASSIC_UDP_LIMIT and not req.tcp and len(out) > req.query.max_udp:
            return wire.truncated(req.query, out)
        return out

    def _refuse_malformed(self, data: bytes, exc: WireError, client: str) -> bytes | None:
        """FORMERR or NOTIMP within the client's error budget; past it, nothing: a flood
        of garbage costs a dict lookup per packet instead of a send."""
        if exc.rcode is None or not self.errors.take(client):
            self.counts[O_DROPPED] += 1
            return None
        self.counts[O_NOTIMP if exc.rcode == Rcode.NOTIMP else O_FORMERR] += 1
        return wire.error_response(data, exc.rcode)

    def abandon(self) -> None:
        self.forward.abandon()

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters, taken on the event loop (see `Server.stats`)."""
        cache = self.cache
        return {
            "counts": list(self.counts),
            "blocked_by": dict(self.blocked_by),
            "cache_entries": len(cache.entries),
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
            "inflight": len(self.forward.inflight),
            "waiting": self.forward.waiting,
        }

    def traffic_totals(self) -> list[int]:
        """queries, blocked, forwarded, cached, failed, refused (for the traffic table)."""
        c = self.counts
        return [
            sum(c) - c[O_DROPPED],
            c[O_BLOCKED],
            c[O_FORWARDED],
            c[O_CACHED] + c[O_STALE],
            c[O_FAILED],
            c[O_REFUSED] + c[O_RATE_LIMITED],
        ]
