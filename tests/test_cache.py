"""The answer cache on real wire bytes: TTLs, expiry, negative entries, DO bit, case."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from resolver.cache import STALE_ANSWER_TTL, Cache
from resolver.config import CacheConfig
from resolver.wire import parse_query, personalise, scan_answer


def make(name: str, rdtype: str = "A", do: bool = False, edns: bool = True):
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, want_dnssec=do)
    return q, parse_query(q.to_wire())


def answer_for(q: dns.message.Message, ttl: int = 300, *records: str) -> bytes:
    r = dns.message.make_response(q)
    rdtype = q.question[0].rdtype
    r.answer.append(
        dns.rrset.from_text(q.question[0].name, ttl, "IN", rdtype, *(records or ("192.0.2.7",)))
    )
    return r.to_wire()


def negative_for(q: dns.message.Message, rcode: int, soa_ttl: int, minimum: int) -> bytes:
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    r.authority.append(
        dns.rrset.from_text(
            "example.test.",
            soa_ttl,
            "IN",
            "SOA",
            f"ns.example.test. h.example.test. 1 2 3 4 {minimum}",
        )
    )
    return r.to_wire()


def stored(cache: Cache, name: str, wire: bytes, q, now: float = 1000.0):
    cache.store(q, wire, scan_answer(wire, q), now=now)


def test_ttl_decreases_with_age_and_entry_expires():
    cache = Cache(CacheConfig())
    dq, q = make("host.example.test")
    stored(cache, "host.example.test", answer_for(dq, 300), q, now=1000.0)
    entry = cache.get(q, 1000.0 + 100.4)
    out = dns.message.from_wire(personalise(entry.render(100), q))
    assert out.answer[0].ttl == 200
    assert cache.get(q, 1000.0 + 300.0) is None


def test_min_and_max_ttl_bound_the_cached_ttl():
    cache = Cache(CacheConfig(min_ttl=60, max_ttl=120))
    for ttl, expected in ((5, 60), (300, 120)):
        dq, q = make(f"t{ttl}.example.test")
        stored(cache, "", answer_for(dq, ttl), q)
        entry = cache.get(q, 1000.0)
        assert dns.message.from_wire(entry.render(0)).answer[0].ttl == expected
        assert entry.expires == 1000.0 + expected


def test_ttl_with_the_top_bit_set_is_kept_as_zero():
    """RFC 2181 8: such a TTL means 0, for the entry's lifetime and for the TTL it serves."""
    cache = Cache(CacheConfig(min_ttl=60, max_ttl=120))
    dq, q = make("top.example.test", edns=False)
    wire = bytearray(answer_for(dq, 300))
    wire[-10:-6] = (0x80000001).to_bytes(4, "big")  # the A record's TTL (its rdata is 4 bytes)
    stored(cache, "top.example.test", bytes(wire), q, now=1000.0)
    entry = cache.get(q, 1000.0)
    assert entry.expires == 1060.0
    out = dns.message.from_wire(personalise(entry.render(0), q))
    assert out.answer[0].ttl == 60


def test_negative_answer_cached_for_soa_minimum():
    cache = Cache(CacheConfig())
    dq, q = make("nx.example.test")
    stored(cache, "", negative_for(dq, dns.rcode.NXDOMAIN, soa_ttl=3600, minimum=30), q)
    entry = cache.get(q, 1000.0)
    assert entry is not None and entry.ttl == 30  # RFC 2308 5: min(SOA TTL, MINIMUM)
    assert cache.get(q, 1031.0) is None


def test_negative_answer_without_soa_is_not_cached():
    cache = Cache(CacheConfig())
    dq, q = make("nx2.example.test")
    r = dns.message.make_response(dq)
    r.set_rcode(dns.rcode.NXDOMAIN)
    stored(cache, "", r.to_wire(), q)
    assert cache.get(q, 1000.0) is None


def test_servfail_and_truncated_answers_are_not_cached():
    cache = Cache(CacheConfig())
    dq, q = make("sf.example.test")
    r = dns.message.make_response(dq)
    r.set_rcode(dns.rcode.SERVFAIL)
    stored(cache, "", r.to_wire(), q)
    assert cache.get(q, 1000.0) is None
    r = dns.message.make_response(dq)
    r.flags |= dns.flags.TC
    stored(cache, "", r.to_wire(), q)
    assert cache.get(q, 1000.0) is None


def test_do_bit_and_edns_presence_are_separate_entries():
    cache = Cache(CacheConfig())
    dq, q = make("s.example.test", do=False)
    stored(cache, "", answer_for(dq, 300, "192.0.2.1"), q)
    _, q_do = make("s.example.test", do=True)
    _, q_plain = make("s.example.test", edns=False)
    assert cache.get(q_do, 1000.0) is None
    assert cache.get(q_plain, 1000.0) is None
    assert cache.get(q, 1000.0) is not None


def test_answer_takes_the_clients_id_and_case():
    cache = Cache(CacheConfig())
    dq, q = make("mixed.example.test")
    stored(cache, "", answer_for(dq, 300), q)
    dq2, q2 = make("MiXeD.ExAmPlE.tEsT")
    entry = cache.get(q2, 1000.0)
    out = personalise(entry.render(0), q2)
    assert out[:2] == dq2.to_wire()[:2]
    assert dns.message.from_wire(out).question[0].name.to_text() == "MiXeD.ExAmPlE.tEsT."


def test_stale_entry_served_only_within_stale_ttl_with_30s_ttl():
    cache = Cache(CacheConfig(stale_ttl=600))
    dq, q = make("stale.example.test")
    stored(cache, "", answer_for(dq, 60), q)
    assert cache.get(q, 1100.0) is None
    stale = cache.get_stale(q, 1100.0)
    assert stale is not None
    out = dns.message.from_wire(stale.render(0, STALE_ANSWER_TTL))
    assert out.answer[0].ttl == STALE_ANSWER_TTL  # RFC 8767 4
    assert cache.get_stale(q, 1000.0 + 60 + 601) is None


def test_size_bound_evicts_oldest():
    cache = Cache(CacheConfig(size=10))
    for i in range(25):
        dq, q = make(f"n{i}.example.test")
        stored(cache, "", answer_for(dq, 300), q)
    assert len(cache) <= 10
    _, last = make("n24.example.test")
    _, first = make("n0.example.test")
    assert cache.get(last, 1000.0) is not None
    assert cache.get(first, 1000.0) is None


def put(cache: Cache, name: str, ttl: int, now: float) -> None:
    dq, q = make(name)
    wire = answer_for(dq, ttl)
    cache.store(q, wire, scan_answer(wire, q), now=now)


def fresh(cache: Cache, name: str, now: float) -> bool:
    return cache.get(make(name)[1], now) is not None


def test_full_cache_frees_a_tenth_at_once_expired_entries_first():
    # One eviction pass per hundred stores here, not one per store: a flood of new
    # names that never expire must not cost a scan of the whole cache per answer.
    cache = Cache(CacheConfig(size=1000))
    for i in range(1000):
        # Every tenth entry lives 10 s, the rest 300 s.
        put(cache, f"n{i}.example.test", 10 if i % 10 == 0 else 300, 1000.0)
    assert len(cache) == 1000
    put(cache, "new.example.test", 300, 1020.0)
    assert len(cache) == 901  # 100 freed at once, then the new one
    # The hundred that had expired went; every fresh one stayed, however old.
    assert [i for i in range(1000) if fresh(cache, f"n{i}.example.test", 1020.0)] == [
        i for i in range(1000) if i % 10
    ]
    # With nothing expired, the oldest insertions go.
    for i in range(1000, 1099):
        put(cache, f"n{i}.example.test", 300, 1021.0)
    assert len(cache) == 1000
    put(cache, "last.example.test", 300, 1022.0)
    assert len(cache) == 901
    survivors = [i for i in range(1099) if fresh(cache, f"n{i}.example.test", 1022.0)]
    assert survivors == [i for i in range(1000) if i % 10][100:] + list(range(1000, 1099))
    assert fresh(cache, "new.example.test", 1022.0)
    assert fresh(cache, "last.example.test", 1022.0)


def test_entries_that_expire_after_a_pass_that_found_none_still_go_first():
    # A pass that finds nothing expired is skipped while no entry can have expired;
    # an entry stored since with a shorter TTL must still be found when it has.
    cache = Cache(CacheConfig(size=100))
    for i in range(100):
        put(cache, f"long{i}.example.test", 300, 1000.0)
    put(cache, "trigger.example.test", 300, 1010.0)  # nothing expired: the oldest go
    assert len(cache) == 91
    assert not fresh(cache, "long0.example.test", 1010.0)
    for i in range(9):
        put(cache, f"short{i}.example.test", 5, 1011.0)
    assert len(cache) == 100
    # The short ones have expired by now: the nine go first, then the oldest long one.
    put(cache, "late.example.test", 300, 1020.0)
    assert len(cache) == 91
    assert [n for n in range(9) if cache.get_stale(make(f"short{n}.example.test")[1], 1020.0)] == []
    assert [i for i in range(100) if fresh(cache, f"long{i}.example.test", 1020.0)] == list(
        range(11, 100)
    )
    assert fresh(cache, "late.example.test", 1020.0)


def test_prefetch_wanted_for_popular_entry_near_expiry():
    cache = Cache(CacheConfig())
    dq, q = make("pop.example.test")
    stored(cache, "", answer_for(dq, 100), q)
    for _ in range(5):
        entry = cache.get(q, 1010.0)
    assert not cache.wants_prefetch(entry, 1010.0)
    assert cache.wants_prefetch(entry, 1095.0)
