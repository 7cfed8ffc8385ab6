"""Compiles catalog, imported lists and custom rules into a Matcher; decides and answers."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from resolver import wire
from resolver.config import Config, SinkholeConfig
from resolver.wire import QType, Query, Rcode

#: Bounded memo of client address -> group label, so the hot path does no ipaddress work.
CLIENT_MEMO_SIZE = 65_536


# eq=False: rules are compared and hashed by identity (one object per service or
# list), which keeps them cheap as dict keys on the hot path.
@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """Where a block came from: one object per service or list, shared by its patterns."""

    category: str  #: "ai-chatbots", "bypass", "custom" or "list:<name>"
    service: str | None = None  #: catalog service id
    service_name: str | None = None  #: human name, e.g. "ChatGPT (OpenAI)"
    action: str | None = None  #: None: the configured sinkhole mode
    source: str = ""  #: catalog file, list name or "rule"

    @property
    def label(self) -> str:
        if self.service_name:
            return self.service_name
        return self.category[5:] if self.category.startswith("list:") else self.category


@dataclass(frozen=True, slots=True)
class Allow:
    """Where an allow came from; an allow beats every block rule."""

    source: str  #: "rule", "keep of <service>", "api of <service>", "list:<name>"


class _Node:
    """Several rules on one name; a name with one plain block rule stores the Rule itself."""

    __slots__ = ("block", "block_below", "allow", "allow_below")

    def __init__(self, block: Rule | None = None) -> None:
        self.block = block
        self.block_below: Rule | None = None
        self.allow: Allow | None = None
        self.allow_below: Allow | None = None


Match = tuple[Rule, str]  # the rule and the pattern that matched ("x.com" or "*.x.com")


@dataclass
class Decision:
    """The full reasoning for `sinkhole check`."""

    name: str
    blocked: bool
    match: Match | None = None
    allow: tuple[Allow, str] | None = None
    exempted: list[Match] = field(default_factory=list)
    group: str | None = None


class Matcher:
    """Patterns in one dict keyed by name; a lookup walks the name's suffixes.

    The cost of a lookup is the number of labels in the name, whatever the
    number of patterns, so a million-name list costs memory, not time.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, Rule | _Node] = {}
        self.block_count = 0
        self.allow_count = 0

    def add_block(self, pattern: str, rule: Rule) -> None:
        below = pattern.startswith("*.")
        name = pattern[2:] if below else pattern
        nodes = self.nodes
        current = nodes.get(name)
        if current is None and not below:
            nodes[name] = rule
            self.block_count += 1
            return
        node = self._as_node(name, current)
        # The first rule for a pattern wins: custom rules, then the catalog, then lists.
        if below:
            if node.block_below is None:
                node.block_below = rule
                self.block_count += 1
        elif node.block is None:
            node.block = rule
            self.block_count += 1

    def add_allow(self, pattern: str, allow: Allow) -> None:
        below = pattern.startswith("*.")
        name = pattern[2:] if below else pattern
        node = self._as_node(name, self.nodes.get(name))
        if below:
            node.allow_below = node.allow_below or allow
        else:
            node.allow = node.allow or allow
        self.allow_count += 1

    def _as_node(self, name: str, current: Rule | _Node | None) -> _Node:
        if type(current) is _Node:
            return current
        node = self.nodes[name] = _Node(current)
        return node

    def lookup(self, name: str, exempt: frozenset[str] = frozenset()) -> Match | None:
        """The most specific block rule for name, or None if allowed or unmatched."""
        nodes = self.nodes
        found = None
        n = name
        below = False
        while True:
            entry = nodes.get(n)
            if entry is not None:
                if type(entry) is Rule:
                    if found is None and (not exempt or entry.service not in exempt):
                        found = (entry, n)
                else:
                    if entry.allow is not None or (below and entry.allow_below is not None):
                        return None
                    if found is None:
                        if entry.block is not None and (
                            not exempt or entry.block.service not in exempt
                        ):
                            found = (entry.block, n)
                        elif (
                            below
                            and entry.block_below is not None
                            and (not exempt or entry.block_below.service not in exempt)
                        ):
                            found = (entry.block_below, "*." + n)
            i = n.find(".")
            if i < 0:
                return found
            n = n[i + 1 :]
            below = True

    def explain(self, name: str, exempt: frozenset[str] = frozenset()) -> Decision:
        """Every rule on the name's way up, for humans."""
        d = Decision(name=name, blocked=False)
        n, below = name, False
        while True:
            entry = self.nodes.get(n)
            if entry is not None:
                node = entry if type(entry) is _Node else _Node(entry)
                if d.allow is None:
                    if node.allow is not None:
                        d.allow = (node.allow, n)
                    elif below and node.allow_below is not None:
                        d.allow = (node.allow_below, "*." + n)
                candidates = [(node.block, n)]
                if below:
                    candidates.append((node.block_below, "*." + n))
                for rule, pattern in candidates:
                    if rule is None:
                        continue
                    if rule.service in exempt:
                        d.exempted.append((rule, pattern))
                    elif d.match is None:
                        d.match = (rule, pattern)
            i = n.find(".")
            if i < 0:
                break
            n, below = n[i + 1 :], True
        d.blocked = d.match is not None and d.allow is None
        return d


class Verdict:
    """A blocked question's answer (bytes after the ID) and what to record about it.

    The policy keeps one per distinct question, so the recorder counts hits by
    (second, client, verdict) with an identity hash: a pointer, not six strings
    (resolver.store.recorder.HitBatcher).

    The `t_*` slots are the recorder's, not the policy's: the tally of the lookups of
    this question by one client, kept on the object the query path already holds (a
    dict slot, a list and its items elsewhere cost cache misses per query). Only the
    `HitBatcher` named in `t_owner` reads or writes them; see HitBatcher.hit.
    """

    # What every blocked query reads or writes first, side by side in memory: the
    # answer, the counter's key and the fast path of the recorder's tally.
    __slots__ = (
        "answer_tail",
        "counted_as",
        "t_owner",
        "t_from",
        "t_to",
        "t_client",
        "t_count",
        "t_last",
        "rule",
        "pattern",
        "action",
        "record",
        "limited",
        # The rest of the recorder's tally (HitBatcher).
        "t_end",
    )

    def __init__(
        self,
        answer_tail: bytes,
        rule: Rule,
        pattern: str,
        action: str,
        qname: str,
        qtype: int | str,
    ) -> None:
        self.answer_tail = answer_tail
        self.rule = rule
        self.pattern = pattern
        self.action = action
        #: The `hits` columns qname, qtype, service, category, rule and action.
        self.record = (
            qname,
            qtype if isinstance(qtype, str) else wire.qtype_name(qtype),
            rule.service,
            rule.category,
            pattern,
            action,
        )
        #: The same question refused by the rate limiter, recorded with its own action.
        self.limited: Verdict | None = None
        #: The key of the server's blocked-queries counter: the service, or the category.
        self.counted_as: str = rule.service or rule.category
        #: No recorder counts this question yet (HitBatcher.hit reads `t_owner` first).
        self.t_owner = None


NOT_BLOCKED = object()
NO_EXEMPT: frozenset[str] = frozenset()
#: Verdicts remembered per exemption set; cleared whole when full.
VERDICT_MEMO_SIZE = 50_000


class Responder:
    """Precomputed answer parts for one (action, text) pair; building is concatenation."""

    __slots__ = ("rcode", "a", "aaaa", "soa", "ede", "action")

    def __init__(self, action: str, sink: SinkholeConfig, text: str, serial: int) -> None:
        self.action = action
        ttl = sink.ttl
        self.rcode = {"nxdomain": Rcode.NXDOMAIN, "refused": Rcode.REFUSED}.get(
            action, Rcode.NOERROR
        )
        if action in ("null", "ip"):
            v4 = sink.ipv4 if action == "ip" else "0.0.0.0"
            v6 = sink.ipv6 if action == "ip" else "::"
            self.a = wire.rr(QType.A, ttl, wire.a_rdata(v4))
            self.aaaa = wire.rr(QType.AAAA, ttl, wire.aaaa_rdata(v6))
        else:
            self.a = self.aaaa = None
        # RFC 2308: a negative answer carries the SOA whose minimum bounds its caching.
        self.soa = (
            None if action == "refused" else wire.rr(QType.SOA, ttl, wire.soa_rdata(serial, ttl))
        )
        self.ede = wire.ede_option(wire.EDE_BLOCKED, text)

    def answer(self, q: Query) -> bytes:
        qtype = q.qtype
        if q.qclass != wire.CLASS_IN and qtype != QType.ANY:
            records = None
        elif qtype == QType.A or qtype == QType.ANY:
            # RFC 8482: ANY gets a minimal answer, here the sinkhole A record.
            records = self.a
        elif qtype == QType.AAAA:
            records = self.aaaa
        else:
            records = None
        if records is not None:
            body, an, ns = records, 1, 0
        elif self.soa is not None:
            body, an, ns = self.soa, 0, 1
        else:
            body, an, ns = b"", 0, 0
        return wire.local_answer(q, self.rcode, an, ns, body, self.ede)


class Policy:
    """A compiled, immutable policy: swapped whole on reload, never half-built."""

    def __init__(
        self,
        matcher: Matcher,
        config: Config,
        version: int = 0,
        group_exempt: dict[str, set[str]] | None = None,
    ) -> None:
        self.matcher = matcher
        self.version = version
        self.sink = config.sinkhole
        self._responders: dict[tuple[str, str], Responder] = {}
        self._by_rule: dict[Rule, Responder] = {}
        self._verdicts: dict[frozenset[str], dict[bytes, Verdict | object]] = {}
        #: The verdict memo of clients no group exempts from anything (`verdict` fills
        #: it; cleared in place when full); None when the config has client groups,
        #: whose exemptions `verdict` must look up. The Blocker uses it as the token of
        #: this policy's verdicts in the queries' shared memo (wire.Query.memo).
        self.plain_memo: dict[bytes, Verdict | object] | None = None
        self._groups = [
            (
                g.name,
                [ipaddress.ip_network(n, strict=False) for n in g.networks],
                frozenset(g.exempt) | frozenset((group_exempt or {}).get(g.name, ())),
            )
            for g in config.clients.groups.values()
        ]
        self._client_memo: dict[str, tuple[str | None, frozenset[str]]] = {}
        self.enabled_services: frozenset[str] = frozenset()
        if not self._groups:
            self.plain_memo = self._verdicts[NO_EXEMPT] = {}

    def client_info(self, client: str) -> tuple[str | None, frozenset[str]]:
        """(group label or None, exempt service ids) of a client address."""
        info = self._client_memo.get(client)
        if info is None:
            info = (None, frozenset())
            if self._groups:
                try:
                    addr = ipaddress.ip_address(client)
                except ValueError:
                    addr = None
                for label, nets, exempt in self._groups:
                    if addr is not None and any(addr in n for n in nets):
                        info = (label, exempt)
                        break
            if len(self._client_memo) >= CLIENT_MEMO_SIZE:
                self._client_memo.clear()
            self._client_memo[client] = info
        return info

    def decide(self, name: str, client: str) -> Match | None:
        if self._groups:
            return self.matcher.lookup(name, self.client_info(client)[1])
        return self.matcher.lookup(name)

    def verdict(self, q: Query, client: str) -> Verdict | None:
        """The answer to a query under this policy, memoised by its bytes after the ID.

        None: not blocked. The memo lives and dies with this Policy, so a reload
        can never serve an answer decided under the old rules.
        """
        exempt = self.client_info(client)[1] if self._groups else NO_EXEMPT
        memo = self._verdicts.get(exempt)
        if memo is None:
            memo = self._verdicts[exempt] = {}
        tail = q.tail  # the bytes after the ID, hashed once by the parse memo
        known = memo.get(tail)
        if known is None:
            match = self.matcher.lookup(q.name, exempt)
            if match is None:
                known = NOT_BLOCKED
            else:
                rule, pattern = match
                responder = self.responder(rule)
                known = Verdict(
                    responder.answer(q)[2:], rule, pattern, responder.action, q.name, q.qtype
                )
            if len(memo) >= VERDICT_MEMO_SIZE:
                memo.clear()
            memo[tail] = known
        return None if known is NOT_BLOCKED else known

    def verdict_of(self, q: Query, match: Match) -> Verdict:
        """The verdict on the asked question when `match` blocks a name its answer
        leads to (a CNAME target): the sinkhole answer to the question as asked."""
        rule, pattern = match
        responder = self.responder(rule)
        return Verdict(responder.answer(q)[2:], rule, pattern, responder.action, q.name, q.qtype)

    def explain(self, name: str, client: str | None = None) -> Decision:
        group, exempt = self.client_info(client) if client else (None, frozenset())
        d = self.matcher.explain(name, exempt)
        d.group = group
        return d

    def action_of(self, rule: Rule) -> str:
        return rule.action or self.sink.mode

    def responder(self, rule: Rule) -> Responder:
        r = self._by_rule.get(rule)
        if r is None:
            key = (rule.action or self.sink.mode, rule.label)
            r = self._responders.get(key)
            if r is None:
                r = self._responders[key] = Responder(
                    key[0], self.sink, f"blocked by policy: {rule.label}", self.version
                )
            self._by_rule[rule] = r
        return r


@dataclass
class ImportedList:
    name: str
    enabled: bool
    domains: Iterable[str] = ()
    allow: Iterable[str] = ()


@dataclass
class PolicyState:
    """What the administrator chose; kept in the database, seeded from the config."""

    enabled_services: set[str] = field(default_factory=set)
    disabled_api: set[str] = field(default_factory=set)
    lists: list[ImportedList] = field(default_factory=list)
    block: list[tuple[str, str | None]] = field(default_factory=list)  # (pattern, comment)
    allow: list[tuple[str, str | None]] = field(default_factory=list)
    version: int = 0
    #: Services each client group may use, set with `sinkhole groups exempt`; added to
    #: the config's `clients.groups.<label>.exempt` (the group's networks stay there).
    group_exempt: dict[str, set[str]] = field(default_factory=dict)


def policy_sources(catalog, state: PolicyState) -> Iterator[tuple[str, Iterable[str], Any]]:
    """What the policy of `state` blocks and allows, in the order a Policy is built:
    (kind 'block' or 'allow', patterns, the Rule or Allow they match with). Custom rules,
    then each enabled catalog service (its keep and allowed API parts, its names), then
    each enabled imported list. `build_policy` compiles them; `sinkhole export` writes
    them out."""
    yield "allow", [p for p, _ in state.allow], Allow("rule")
    yield "block", [p for p, _ in state.block], Rule("custom", source="rule")
    for sid, svc in catalog.services.items():
        if sid not in state.enabled_services:
            continue
        yield "allow", svc.keep, Allow(f"keep of {sid}")
        if sid in state.disabled_api:
            yield "allow", svc.api, Allow(f"api of {sid}, allowed")
        rule = Rule(svc.category, sid, svc.name, svc.answer, source=str(svc.file))
        yield "block", (*svc.domains, *svc.api), rule
    for lst in state.lists:
        if not lst.enabled:
            continue
        yield "allow", lst.allow, Allow(f"list:{lst.name}")
        yield "block", lst.domains, Rule(f"list:{lst.name}", source=lst.name)


def build_policy(catalog, state: PolicyState, config: Config) -> Policy:
    """Compile custom rules, catalog services and imported lists into one Policy."""
    m = Matcher()
    for kind, patterns, tag in policy_sources(catalog, state):
        add = m.add_block if kind == "block" else m.add_allow
        for pattern in patterns:
            add(pattern, tag)
    policy = Policy(m, config, state.version, state.group_exempt)
    policy.enabled_services = frozenset(s for s in state.enabled_services if s in catalog.services)
    return policy
