"""TTL cache of upstream answers, stored as wire bytes and patched on the way out."""

from __future__ import annotations

import itertools
import math
import time

from resolver.config import CacheConfig
from resolver.wire import U16, U32, Answer, Query, Z, personalise

#: RFC 8767 4: a stale answer is served with this TTL.
STALE_ANSWER_TTL = 30
#: Prefetch when less than this share of the original TTL is left (and the entry is popular).
PREFETCH_SHARE = 0.1
PREFETCH_MIN_HITS = 3
#: Share of the size a full cache frees at once, so eviction is not a scan per store.
EVICT_SHARE = 0.1
#: Cap on how long a SERVFAIL-free negative answer without SOA may be kept.
NO_SOA_NEGATIVE_TTL = 0
#: Personalised answers an entry keeps per second of age (`Entry.outs`): one per
#: distinct query (bytes after the ID) asking it; past it the memo starts anew.
PERSONAL_MEMO_SIZE = 8


class Entry:
    """One cached answer: its bytes with ID 0, where its TTLs are, and when it expires."""

    __slots__ = (
        "wire",
        "ttl_offsets",
        "ttls",
        "stored",
        "expires",
        "ttl",
        "cnames",
        "hits",
        "age_wire",
        "age",
        "prefetching",
        "prefetch_from",
        "opt_at",
        "outs",
    )

    def __init__(self, wire: bytes, answer: Answer, ttl: int, now: float, ttls: list[int]) -> None:
        self.wire = wire
        self.ttl_offsets = answer.ttl_offsets
        self.ttls = ttls
        self.stored = now
        self.ttl = ttl
        self.expires = now + ttl
        #: From then on a popular entry is refreshed (`Cache.wants_prefetch`): a float to
        #: compare on the hot path instead of a call.
        self.prefetch_from = self.expires - ttl * PREFETCH_SHARE
        self.cnames = tuple(answer.cnames) if answer.cnames else ()
        self.opt_at = answer.opt_at
        self.hits = 0
        # No rendering yet: the stored TTLs may differ from the wire's (min/max_ttl).
        self.age = -1
        self.age_wire = wire
        self.prefetching = False

    def render(self, age: int, cap: int | None = None) -> bytes:
        """The answer with every TTL lowered by age (and capped), ID still 0."""
        if cap is None and age == self.age:
            return self.age_wire
        buf = bytearray(self.wire)
        for off, ttl in zip(self.ttl_offsets, self.ttls, strict=True):
            left = ttl - age
            if left < 0:
                left = 0
            if cap is not None and left > cap:
                left = cap
            U32.pack_into(buf, off, left)
        out = bytes(buf)
        if cap is None:
            # Many hits land in the same second: render once per second of age.
            self.age, self.age_wire = age, out
            self.outs = {}
        return out

    def answer(self, age: int, query: Query) -> bytes:
        """The answer to `query` at `age`: rendered, with the client's ID and question
        (`wire.personalise`). What follows the ID is kept in `outs` by the query's bytes
        after the ID, which it is a function of (with the age), so the next identical
        query of this second of age costs a lookup and a concatenation
        (`pipeline.CacheStep`)."""
        out = personalise(self.render(age), query)
        outs = self.outs
        if len(outs) >= PERSONAL_MEMO_SIZE:
            outs.clear()
        outs[query.tail] = out[2:]
        return out


class Cache:
    """Answers keyed by the lowercased question plus the DO bit, EDNS presence and CD bit."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.size = config.size
        self.entries: dict[bytes, Entry] = {}
        #: No entry expires before this (a lower bound): while it is ahead, an eviction
        #: need not look for expired entries, as in a flood of new names.
        self.soonest = math.inf
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()

    def reconfigure(self, config: CacheConfig) -> None:
        """New bounds from a reload. A smaller size drops the oldest entries at once; new
        TTL bounds drop every entry, since each was kept under the old ones."""
        old = self.config
        self.config = config
        self.size = config.size
        if (old.min_ttl, old.max_ttl, old.negative_ttl) != (
            config.min_ttl,
            config.max_ttl,
            config.negative_ttl,
        ):
            self.entries.clear()
        excess = len(self.entries) - max(self.size, 0)
        if excess > 0:
            for key in list(itertools.islice(self.entries, excess)):
                del self.entries[key]

    def store(
        self, query: Query, response: bytes, answer: Answer, now: float | None = None
    ) -> None:
        """Keep an upstream answer for its TTL within [min_ttl, max_ttl]."""
        if self.size <= 0 or answer.tc or answer.rcode not in (0, 3):
            return
        cfg = self.config
        ttl = answer.ttl
        if answer.negative:
            if ttl < 0:
                ttl = NO_SOA_NEGATIVE_TTL
            ttl = min(ttl, cfg.negative_ttl)
        min_ttl, max_ttl = cfg.min_ttl, cfg.max_ttl
        if ttl < min_ttl:
            ttl = min_ttl
        if ttl > max_ttl:
            ttl = max_ttl
        if ttl <= 0:
            return
        if now is None:
            now = time.monotonic()
        ttls = answer.ttls  # as the scan read them at answer.ttl_offsets
        if min_ttl or (ttls and max_ttl < max(ttls)):
            ttls = [min(max(t, min_ttl), max_ttl) for t in ttls]
        if response[0] or response[1] or response[3] & Z:
            buf = bytearray(response)
            U16.pack_into(buf, 0, 0)
            buf[3] &= ~Z & 0xFF  # never replay an upstream's Z bit (RFC 1035 4.1.1)
            response = bytes(buf)
        # else as Forward hands it over (wire.forwarded_flags): kept without a copy
        entries = self.entries
        if len(entries) >= self.size and query.key not in entries:
            self._evict(now)
        entry = entries[query.key] = Entry(response, answer, ttl, now, ttls)
        if entry.expires < self.soonest:
            self.soonest = entry.expires

    def _evict(self, now: float) -> None:
        """Make room for a tenth of the size at once: expired entries first, then the
        oldest insertions (dicts keep insertion order).

        One pass over the entries per EVICT_SHARE of the size stored, not one per
        store: a full cache of names that never expire (a flood of new names) would
        otherwise cost a scan of every entry for each answer it keeps. No pass at all
        while no entry can have expired (`soonest`).
        """
        entries = self.entries
        target = self.size - max(1, int(self.size * EVICT_SHARE))
        excess = len(entries) - target
        if excess <= 0:
            return
        doomed: list[bytes] = []
        if self.soonest <= now:
            # Some may have expired: one pass takes them and finds the next bound.
            soonest = math.inf
            for k, e in entries.items():
                expires = e.expires
                if expires <= now and len(doomed) < excess:
                    doomed.append(k)
                elif expires < soonest:
                    soonest = expires
            self.soonest = soonest
        if len(doomed) < excess:
            gone = set(doomed)
            oldest = (k for k in entries if k not in gone)
            doomed += itertools.islice(oldest, excess - len(doomed))
        for k in doomed:
            del entries[k]

    def get(self, query: Query, now: float) -> Entry | None:
        """A fresh entry for the query, or None (stale entries stay for serve-stale)."""
        entry = self.entries.get(query.key)
        if entry is None or entry.expires <= now:
            self.misses += 1
            return None
        self.hits += 1
        entry.hits += 1
        return entry

    def get_stale(self, query: Query, now: float) -> Entry | None:
        """An expired entry still within stale_ttl (RFC 8767), for when upstreams fail."""
        if not self.config.serve_stale:
            return None
        entry = self.entries.get(query.key)
        if entry is None or now - entry.expires > self.config.stale_ttl:
            return None
        return entry

    def wants_prefetch(self, entry: Entry, now: float) -> bool:
        if not self.config.prefetch or entry.prefetching or entry.hits < PREFETCH_MIN_HITS:
            return False
        return entry.expires - now < entry.ttl * PREFETCH_SHARE
