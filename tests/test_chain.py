"""Each step of the chain on its own, built with what it needs and driven by a clock
the test moves: no sockets, no sleeps, no elapsed times.

Queries and answers are real DNS messages (dnspython builds them, resolver.wire
parses them); the policy is compiled from the shipped catalog and real rules.
The only stand-ins are the collaborators a step is handed and that are not under
test: the recorder (a list of hits) and, for `Forward`, a forwarder whose
answers the test hands back when it chooses.
"""

from __future__ import annotations

import logging

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from resolver.cache import STALE_ANSWER_TTL, Cache
from resolver.catalog import load_catalog
from resolver.config import CacheConfig, parse_config
from resolver.pipeline import (
    ERROR_ANSWER_BURST,
    MAX_WAITING,
    RATE_LIMITED_ACTION,
    AccessGuard,
    Blocker,
    CacheStep,
    ChaosGuard,
    CnameGuard,
    Forward,
    Outcome,
    RateLimiter,
    Request,
    Resolver,
)
from resolver.policy import PolicyState, build_policy
from resolver.wire import EDE_OPTION, EDE_STALE, parse_query, scan_answer

CLIENT = "192.0.2.10"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sink:
    """Keeps what the chain sends later, and counts what it said would come."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, object]] = []
        self.expected = 0

    def expect(self) -> None:
        self.expected += 1

    def send(self, out: bytes, addr: object) -> None:
        self.sent.append((out, addr))


class Hits:
    """The recorder's side of the contract: `hit(client, verdict)`."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, tuple]] = []

    def hit(self, client: str, verdict) -> None:  # noqa: ANN001 - a policy.Verdict
        self.hits.append((client, verdict.record))


class Upstream:
    """A forwarder whose answers the test delivers: `start` only takes note."""

    def __init__(self) -> None:
        self.started: list = []

    def start(self, query, done, budget=None):  # noqa: ANN001 - Forwarder.start's signature
        self.started.append((query, done))
        return None


def message(name: str, rdtype: str = "A", ident: int = 1, edns: bool = True, **kw):
    m = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, **kw)
    m.id = ident
    return m


def request(m: dns.message.Message, client: str = CLIENT, tcp: bool = False, sink=None):
    return Request(parse_query(m.to_wire()), client, tcp, sink or Sink(), ("127.0.0.1", 5300))


def config(**extra):
    return parse_config({"upstreams": ["127.0.0.1:9"], **extra})


def policy_for(cfg, block: tuple[str, ...] = (), services: bool = True):
    catalog = load_catalog(cfg.catalog)
    state = PolicyState(
        enabled_services=set(catalog.services) if services else set(),
        block=[(p, None) for p in block],
    )
    return build_policy(catalog, state, cfg)


def answer(m: dns.message.Message, *rrsets: tuple[str, int, str, str]) -> bytes:
    r = dns.message.make_response(m)
    for owner, ttl, rdtype, value in rrsets:
        r.answer.append(dns.rrset.from_text(owner, ttl, "IN", rdtype, value))
    return r.to_wire()


def read(out: bytes) -> dns.message.Message:
    return dns.message.from_wire(out)


# -- AccessGuard -------------------------------------------------------------------------------


def test_access_guard_refuses_strangers_and_passes_members():
    guard = AccessGuard(("192.0.2.0/24", "2001:db8::/32"))
    assert guard(request(message("a.test"), client="192.0.2.77")) is None
    assert guard(request(message("a.test"), client="::ffff:192.0.2.77")) is None  # v4-mapped
    assert guard(request(message("a.test"), client="2001:db8::5")) is None
    stranger = request(message("a.test", ident=7), client="198.51.100.1")
    out = read(guard(stranger))
    assert (out.id, out.rcode(), stranger.outcome) == (7, dns.rcode.REFUSED, Outcome.REFUSED)
    assert guard(request(message("a.test"), client="not-an-address")) is not None


# -- RateLimiter -------------------------------------------------------------------------------


def test_rate_limiter_refuses_past_the_budget_and_refills_with_the_clock():
    clock = Clock()
    limiter = RateLimiter(3, 1, (), clock)
    passed = [limiter(request(message("a.test", ident=i))) is None for i in range(5)]
    assert passed == [True, True, True, False, False]
    clock.now += 1 / 3  # one token back
    assert limiter(request(message("a.test"))) is None
    refused = request(message("a.test"))
    assert read(limiter(refused)).rcode() == dns.rcode.REFUSED
    assert refused.outcome == Outcome.RATE_LIMITED
    clock.now += 10  # a full bucket, never more than the budget
    assert [limiter(request(message("a.test"))) is None for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    # Another client has its own bucket.
    assert limiter(request(message("a.test"), client="192.0.2.11")) is None


def test_rate_limiter_exempt_clients_are_never_refused():
    limiter = RateLimiter(1, 60, ("192.0.2.0/28",), Clock())
    assert all(limiter(request(message("a.test"))) is None for _ in range(50))
    assert limiter(request(message("a.test"), client="192.0.2.200")) is None
    assert limiter(request(message("a.test"), client="192.0.2.200")) is not None


def test_rate_limiter_names_a_client_once_a_minute_and_reports_each_refusal(caplog):
    clock = Clock()
    limiter = RateLimiter(1, 60, (), clock)
    refused: list[Request] = []
    limiter.on_refused = refused.append
    caplog.set_level(logging.WARNING, logger="sinkhole.pipeline")
    limiter(request(message("a.test")))
    for _ in range(3):
        limiter(request(message("a.test")))
    clock.now += 30
    limiter(request(message("a.test")))
    lines = [r for r in caplog.records if "over its rate limit" in r.getMessage()]
    assert len(lines) == 1 and "rate_limit.per_client" in lines[0].getMessage()
    clock.now += 31  # a token back after a minute, then over again
    limiter(request(message("a.test")))
    limiter(request(message("a.test")))
    assert len([r for r in caplog.records if "over its rate limit" in r.getMessage()]) == 2
    assert len(refused) == 5


# -- ChaosGuard --------------------------------------------------------------------------------


def test_chaos_guard_answers_version_and_refuses_other_chaos_names():
    guard = ChaosGuard("sinkhole test")
    req = request(message("version.bind", "TXT", rdclass="CH", ident=9))
    out = read(guard(req))
    assert out.id == 9 and out.flags & dns.flags.AA and req.outcome == Outcome.LOCAL
    assert [r.strings for r in out.answer[0]] == [(b"sinkhole test",)]
    other = request(message("hostname.bind", "TXT", rdclass="CH"))
    assert read(guard(other)).rcode() == dns.rcode.REFUSED and other.outcome == Outcome.REFUSED
    assert read(
        ChaosGuard(None)(request(message("version.bind", "TXT", rdclass="CH")))
    ).rcode() == (dns.rcode.REFUSED)
    assert guard(request(message("version.bind", "TXT"))) is None  # class IN: not ours


# -- Blocker and CnameGuard --------------------------------------------------------------------


def test_blocker_answers_the_sinkhole_counts_and_records():
    cfg = config()
    hits, tally = Hits(), {}
    blocker = Blocker(policy_for(cfg), hits, tally)
    req = request(message("chatgpt.com", ident=4242))
    out = read(blocker(req))
    assert out.id == 4242 and req.outcome == Outcome.BLOCKED
    assert out.answer[0].name.to_text() == "chatgpt.com."
    [(client, record)] = hits.hits
    service = record[2]
    assert client == CLIENT and record[:2] == ("chatgpt.com", "A") and service
    assert record[3:] == ("ai-chatbots", "chatgpt.com", cfg.sinkhole.mode)
    assert tally == {service: 1}
    assert blocker(request(message("example.org"))) is None
    assert len(hits.hits) == 1 and tally == {service: 1}


def test_blocker_never_answers_from_a_swapped_out_policys_verdict():
    # Identical queries share the parse memo's `memo`, where the Blocker keeps its
    # policy's verdict under that policy's token: a new policy decides anew.
    cfg = config()
    blocking, allowing = policy_for(cfg, block=("office.test",)), policy_for(cfg)
    m = message("www.office.test", ident=7)
    assert read(Blocker(blocking, None, {})(request(m))).id == 7
    assert read(Blocker(blocking, None, {})(request(m))).id == 7  # from the shared memo
    assert Blocker(allowing, None, {})(request(m)) is None
    assert read(Blocker(blocking, None, {})(request(m))).id == 7
    # With client groups the verdict depends on the client: never kept in the query.
    grouped_cfg = config(clients={"groups": {"lab": {"networks": ["10.1.0.0/16"]}}})
    grouped = policy_for(grouped_cfg, block=("office.test",))
    assert grouped.plain_memo is None
    assert read(Blocker(grouped, None, {})(request(m))).id == 7
    assert Blocker(allowing, None, {})(request(m)) is None


def test_blocker_records_a_limited_blocked_name_with_its_own_action():
    hits = Hits()
    blocker = Blocker(policy_for(config()), hits, {})
    blocker.limited(request(message("chatgpt.com")))
    blocker.limited(request(message("example.org")))  # not blocked: nothing to record
    assert [record[5] for _, record in hits.hits] == [RATE_LIMITED_ACTION]


def test_cname_guard_blocks_the_asked_question_when_a_target_is_blocked():
    cfg = config()
    hits = Hits()
    policy = policy_for(cfg, block=("tracker.test",))
    guard = CnameGuard(policy, Blocker(policy, hits, {}))
    req = request(message("www.Office.test", ident=77))
    assert guard(req, ["cdn.office.test"]) is None
    out = read(guard(req, ["cdn.office.test", "x.tracker.test"]))
    assert out.id == 77 and req.outcome == Outcome.BLOCKED
    assert out.question[0].name.to_text() == "www.Office.test."  # the question as asked
    assert hits.hits[0][1][:2] == ("www.office.test", "A") and hits.hits[0][1][4] == "tracker.test"


# -- CacheStep ---------------------------------------------------------------------------------


def cached(cache: Cache, m: dns.message.Message, *rrsets, now: float) -> None:
    q = parse_query(m.to_wire())
    data = answer(m, *rrsets)
    cache.store(q, data, scan_answer(data, q), now)


def test_cache_step_ages_ttls_with_the_clock_and_lets_expired_entries_through():
    clock = Clock()
    cfg = config()
    policy = policy_for(cfg)
    cache = Cache(CacheConfig())
    step = CacheStep(cache, CnameGuard(policy, Blocker(policy, None, {})), lambda q: None, clock)
    cached(cache, message("office.test"), ("office.test.", 300, "A", "192.0.2.1"), now=clock.now)
    clock.now += 100
    req = request(message("OFFICE.test", ident=5))
    out = read(step(req))
    assert (out.id, out.answer[0].ttl, req.outcome) == (5, 200, Outcome.CACHED)
    assert out.question[0].name.to_text() == "OFFICE.test."
    clock.now += 200
    assert step(request(message("office.test"))) is None


def test_cache_step_answers_each_query_of_a_second_with_its_own_id_question_and_edns():
    # The answers of one second of age are memoised by the query's bytes after the ID:
    # a repeated query gets its own ID, one differing in case or EDNS size its own answer.
    clock = Clock()
    policy = policy_for(config())
    cache = Cache(CacheConfig())
    step = CacheStep(cache, CnameGuard(policy, Blocker(policy, None, {})), lambda q: None, clock)
    cached(cache, message("office.test"), ("office.test.", 300, "A", "192.0.2.1"), now=clock.now)
    clock.now += 10.2
    asked = [
        message("office.test", ident=1),
        message("office.test", ident=2),
        message("OFFICE.test", ident=3),
        message("office.test", ident=4, payload=4096),
        message("OFFICE.test", ident=5),
    ]
    outs = [read(step(request(m))) for m in asked]
    assert [o.id for o in outs] == [1, 2, 3, 4, 5]
    assert [o.question[0].name.to_text() for o in outs] == [
        "office.test.", "office.test.", "OFFICE.test.", "office.test.", "OFFICE.test.",
    ]  # fmt: skip
    assert all(o.answer[0].ttl == 290 for o in outs)
    clock.now += 1  # the next second of age: TTLs one lower, for a memoised query too
    assert read(step(request(asked[1]))).answer[0].ttl == 289
    assert read(step(request(asked[1]))).id == 2


def test_cache_step_blocks_an_entry_whose_cname_is_now_blocked_and_prefetches_popular_ones():
    clock = Clock()
    cfg = config()
    cache = Cache(CacheConfig(prefetch=True))
    prefetched = []
    allowing = policy_for(cfg)
    step = CacheStep(
        cache, CnameGuard(allowing, Blocker(allowing, None, {})), prefetched.append, clock
    )
    m = message("app.office.test")
    cached(
        cache,
        m,
        ("app.office.test.", 100, "CNAME", "edge.tracker.test."),
        ("edge.tracker.test.", 100, "A", "192.0.2.9"),
        now=clock.now,
    )
    for _ in range(3):
        assert step(request(m)) is not None
    clock.now += 95  # popular and within the last tenth of its TTL
    assert step(request(m)) is not None
    assert [q.name for q in prefetched] == ["app.office.test"]
    blocking = policy_for(cfg, block=("tracker.test",))
    step = CacheStep(
        cache, CnameGuard(blocking, Blocker(blocking, None, {})), prefetched.append, clock
    )
    req = request(m)
    out = read(step(req))
    assert req.outcome == Outcome.BLOCKED and out.answer[0].rdtype == dns.rdatatype.A
    assert out.answer[0][0].address != "192.0.2.9"


# -- Forward -----------------------------------------------------------------------------------


def forward_step(cache: Cache | None = None, block: tuple[str, ...] = ()):
    cfg = config()
    upstream = Upstream()
    finished: list[Request] = []

    def finish(req: Request, out: bytes) -> bytes:
        finished.append(req)
        return out

    forward = Forward(upstream, Cache(CacheConfig()) if cache is None else cache, finish, Clock())
    policy = policy_for(cfg, block=block)
    forward.cnames = CnameGuard(policy, Blocker(policy, None, {}))
    return forward, upstream, finished


def test_forward_asks_once_for_identical_questions_and_answers_each_with_its_id():
    forward, upstream, finished = forward_step()
    sink = Sink()
    first, second = message("office.test", ident=1), message("Office.TEST", ident=2)
    assert forward(request(first, sink=sink)) is None
    assert forward(request(second, sink=sink)) is None
    assert len(upstream.started) == 1 and sink.expected == 2 and forward.waiting == 2
    query, done = upstream.started[0]
    data = answer(first, ("office.test.", 60, "A", "192.0.2.3"))
    done((data, scan_answer(data, query)))
    answers = [read(out) for out, _ in sink.sent]
    assert [(a.id, a.question[0].name.to_text()) for a in answers] == [
        (1, "office.test."),
        (2, "Office.TEST."),
    ]
    assert all(a.flags & dns.flags.RA and not a.flags & dns.flags.AA for a in answers)
    assert [r.outcome for r in finished] == [Outcome.FORWARDED, Outcome.FORWARDED]
    assert forward.inflight == {} and forward.waiting == 0
    assert len(forward.cache) == 1


def test_forward_serves_stale_with_its_extended_error_then_servfail():
    cache = Cache(CacheConfig(serve_stale=True, stale_ttl=600))
    forward, upstream, finished = forward_step(cache)
    m = message("office.test", ident=3)
    cached(cache, m, ("office.test.", 60, "A", "192.0.2.4"), now=forward.clock() - 120)
    sink = Sink()
    forward(request(m, sink=sink))
    upstream.started[0][1](None)  # every upstream failed
    out = read(sink.sent[0][0])
    assert finished[0].outcome == Outcome.STALE and out.answer[0].ttl == STALE_ANSWER_TTL
    ede = [o for o in out.options if o.otype == EDE_OPTION]
    assert [(o.code, o.text) for o in ede] == [(EDE_STALE, None)]
    # No stale entry for this one: SERVFAIL.
    forward(request(message("other.test"), sink=sink))
    upstream.started[1][1](None)
    assert read(sink.sent[1][0]).rcode() == dns.rcode.SERVFAIL
    assert finished[1].outcome == Outcome.FAILED


def test_forward_blocks_an_answer_whose_cname_enters_a_blocked_name():
    forward, upstream, finished = forward_step(block=("tracker.test",))
    sink = Sink()
    m = message("app.office.test")
    forward(request(m, sink=sink))
    query, done = upstream.started[0]
    data = answer(
        m,
        ("app.office.test.", 60, "CNAME", "x.tracker.test."),
        ("x.tracker.test.", 60, "A", "192.0.2.5"),
    )
    done((data, scan_answer(data, query)))
    assert finished[0].outcome == Outcome.BLOCKED
    assert read(sink.sent[0][0]).answer[0][0].address != "192.0.2.5"


def test_forward_answers_servfail_at_once_when_saturated():
    forward, upstream, _ = forward_step()
    forward.max_inflight = 1
    forward(request(message("one.test")))
    req = request(message("two.test", ident=8))
    out = read(forward(req))
    assert (out.id, out.rcode(), req.outcome) == (8, dns.rcode.SERVFAIL, Outcome.FAILED)
    forward.waiting = MAX_WAITING
    assert read(forward(request(message("one.test")))).rcode() == dns.rcode.SERVFAIL
    assert len(upstream.started) == 1


# -- Resolver: handle and finish ---------------------------------------------------------------


def test_finish_counts_every_outcome_and_truncates_only_long_udp_answers():
    cfg = config()
    resolver = Resolver(cfg, policy_for(cfg), Upstream(), clock=Clock())
    long_answer = answer(
        message("big.test"), *[("big.test.", 60, "TXT", f'"{"x" * 200} {i}"') for i in range(4)]
    )
    udp = request(message("big.test", edns=False))
    udp.outcome = Outcome.FORWARDED
    out = read(resolver.finish(udp, long_answer))
    assert out.flags & dns.flags.TC and not out.answer
    tcp = request(message("big.test", edns=False), tcp=True)
    tcp.outcome = Outcome.FORWARDED
    assert resolver.finish(tcp, long_answer) == long_answer
    assert resolver.counts[Outcome.FORWARDED] == 2


def test_handle_runs_the_chain_in_order():
    cfg = config(allow_networks=["192.0.2.0/24"], version_string="v")
    resolver = Resolver(cfg, policy_for(cfg), Upstream(), clock=Clock())
    sink = Sink()
    assert read(resolver.handle(message("chatgpt.com").to_wire(), CLIENT, sink, None)).answer
    refused = resolver.handle(message("chatgpt.com").to_wire(), "198.51.100.9", sink, None)
    assert read(refused).rcode() == dns.rcode.REFUSED
    assert resolver.handle(message("office.test").to_wire(), CLIENT, sink, None) is None
    assert sink.expected == 1
    c = resolver.counts
    assert (c[Outcome.BLOCKED], c[Outcome.REFUSED]) == (1, 1)


def test_error_answers_are_budgeted_per_client_on_the_clock():
    clock = Clock()
    cfg = config()
    resolver = Resolver(cfg, policy_for(cfg), Upstream(), clock=clock)
    garbage = message("x.test").to_wire()[:12] + b"\x05abc"  # question truncated
    outs = [
        resolver.handle(garbage, CLIENT, Sink(), None) for _ in range(int(ERROR_ANSWER_BURST) + 5)
    ]
    assert sum(o is not None for o in outs) == ERROR_ANSWER_BURST
    assert resolver.counts[Outcome.DROPPED] == 5
    clock.now += 0.1  # 50 per second: five more
    outs = [resolver.handle(garbage, CLIENT, Sink(), None) for _ in range(10)]
    assert sum(o is not None for o in outs) == 5


def test_a_policy_swap_keeps_the_rate_limiters_buckets():
    clock = Clock()
    cfg = config(allow_networks=["192.0.2.0/24"], rate_limit={"per_client": 2, "window": 60})
    hits = Hits()
    resolver = Resolver(cfg, policy_for(cfg, services=False), Upstream(), hits, clock)
    sink = Sink()
    for _ in range(2):
        resolver.handle(message("chatgpt.com").to_wire(), CLIENT, sink, None)
    assert hits.hits == []  # not blocked yet: forwarded
    resolver.set_policy(policy_for(cfg))
    out = resolver.handle(message("chatgpt.com").to_wire(), CLIENT, sink, None)
    assert read(out).rcode() == dns.rcode.REFUSED  # still over its budget
    assert [r[5] for _, r in hits.hits] == [RATE_LIMITED_ACTION]  # recorded under the new policy


def test_opt_record_position_survives_in_the_cached_entry():
    cache = Cache(CacheConfig())
    m = message("office.test", payload=1232)
    m.use_edns(0, 0, 1232, options=[dns.edns.GenericOption(65001, b"xy")])
    cached(cache, m, ("office.test.", 60, "A", "192.0.2.1"), now=0.0)
    entry = cache.get(parse_query(m.to_wire()), 1.0)
    assert entry is not None and entry.wire[entry.opt_at : entry.opt_at + 2] == b"\x00\x29"
