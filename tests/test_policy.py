"""Matching rules: suffixes, wildcards, allow beats block, keep, API parts, group exemptions."""

from __future__ import annotations

import random

import pytest

from resolver.catalog import load_catalog
from resolver.config import parse_config
from resolver.policy import ImportedList, Matcher, PolicyState, Rule, build_policy

CUSTOM = Rule("custom", source="rule")


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def matcher(block=(), allow=()) -> Matcher:
    m = Matcher()
    for p in allow:
        from resolver.policy import Allow

        m.add_allow(p, Allow("rule"))
    for p in block:
        m.add_block(p, CUSTOM)
    return m


def test_pattern_blocks_name_and_everything_under_it():
    m = matcher(["example.com"])
    assert m.lookup("example.com") == (CUSTOM, "example.com")
    assert m.lookup("a.b.example.com") == (CUSTOM, "example.com")
    assert m.lookup("notexample.com") is None
    assert m.lookup("example.com.evil") is None
    assert m.lookup("com") is None


def test_wildcard_blocks_only_names_under_it():
    m = matcher(["*.example.com"])
    assert m.lookup("example.com") is None
    assert m.lookup("www.example.com") == (CUSTOM, "*.example.com")


def test_allow_rule_beats_block_rule_at_any_depth():
    m = matcher(["example.com", "deep.keep.example.com"], ["keep.example.com"])
    assert m.lookup("keep.example.com") is None
    assert m.lookup("deep.keep.example.com") is None
    assert m.lookup("other.example.com") == (CUSTOM, "example.com")


def test_most_specific_block_rule_is_reported():
    m = Matcher()
    outer, inner = Rule("a"), Rule("b")
    m.add_block("example.com", outer)
    m.add_block("chat.example.com", inner)
    assert m.lookup("x.chat.example.com") == (inner, "chat.example.com")


def test_policy_blocks_every_catalog_domain_and_random_subdomains(catalog):
    config = parse_config({})
    state = PolicyState(enabled_services=set(catalog.services))
    policy = build_policy(catalog, state, config)
    rnd = random.Random(7)
    checked = 0
    for svc in catalog.services.values():
        keep = set(svc.keep)
        for domain in svc.domains:
            name = domain.removeprefix("*.")
            sub = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(10))
            if not domain.startswith("*.") and name not in keep:
                assert policy.decide(name, "10.0.0.1") is not None, name
            if f"{sub}.{name}" not in keep:
                assert policy.decide(f"{sub}.{name}", "10.0.0.1") is not None, name
            checked += 1
    assert checked >= 50


POPULAR = [
    "www.google.com",
    "google.com",
    "mail.google.com",
    "docs.google.com",
    "drive.google.com",
    "bing.com",
    "www.bing.com",
    "www.microsoft.com",
    "login.microsoftonline.com",
    "outlook.office365.com",
    "teams.microsoft.com",
    "github.com",
    "apple.com",
    "icloud.com",
    "wikipedia.org",
    "fr.wikipedia.org",
    "x.com",
    "facebook.com",
    "www.youtube.com",
    "huggingface.co",
    "amazon.com",
    "linkedin.com",
    "service-public.fr",
    "impots.gouv.fr",
]


def test_popular_names_are_not_blocked_by_the_whole_catalog(catalog):
    config = parse_config({})
    policy = build_policy(catalog, PolicyState(enabled_services=set(catalog.services)), config)
    for name in POPULAR:
        assert policy.decide(name, "10.0.0.1") is None, name


def test_group_exemption_applies_only_to_its_networks(catalog):
    config = parse_config(
        {
            "clients": {
                "groups": {"ai-lab": {"networks": ["10.1.9.0/24"], "exempt": ["openai-chatgpt"]}}
            }
        }
    )
    policy = build_policy(catalog, PolicyState(enabled_services=set(catalog.services)), config)
    assert policy.decide("chatgpt.com", "10.1.9.20") is None
    assert policy.decide("chatgpt.com", "10.1.8.20") is not None
    # The exemption is per service: the lab is still blocked from the others.
    assert policy.decide("claude.ai", "10.1.9.20") is not None
    assert policy.explain("chatgpt.com", "10.1.9.20").group == "ai-lab"


def test_disabled_api_part_resolves_while_chat_stays_blocked(catalog):
    svc = next(s for s in catalog.services.values() if s.api)
    config = parse_config({})
    state = PolicyState(enabled_services={svc.id}, disabled_api={svc.id})
    policy = build_policy(catalog, state, config)
    api = svc.api[0].removeprefix("*.")
    assert policy.decide(api, "10.0.0.1") is None
    assert policy.decide(svc.domains[0].removeprefix("*."), "10.0.0.1") is not None
    blocked = build_policy(catalog, PolicyState(enabled_services={svc.id}), config)
    assert blocked.decide(api, "10.0.0.1") is not None


def test_imported_list_blocks_and_its_allow_entries_win():
    config = parse_config({"lists": []})
    from resolver.catalog import Catalog

    state = PolicyState(
        lists=[ImportedList("extra", True, ["ads.example", "track.example"], ["ok.ads.example"])]
    )
    policy = build_policy(Catalog(directory=None), state, config)
    rule, pattern = policy.decide("x.ads.example", "10.0.0.1")
    assert rule.category == "list:extra" and pattern == "ads.example"
    assert policy.decide("ok.ads.example", "10.0.0.1") is None
    state.lists[0].enabled = False
    assert build_policy(Catalog(directory=None), state, config).decide("ads.example", "1") is None


def test_lookup_of_a_million_name_list_still_walks_only_the_labels():
    m = Matcher()
    rule = Rule("list:big")
    for i in range(1_000_000):
        m.add_block(f"n{i}.big.example", rule)
    assert m.block_count == 1_000_000
    assert m.lookup("www.n999999.big.example") == (rule, "n999999.big.example")
    assert m.lookup("n1000000.big.example") is None


# -- one meaning of a pattern ------------------------------------------------------------------

_LABELS = ["a", "b", "ai", "chat", "example", "com"]


def _name(rng: random.Random, depth: int) -> str:
    return ".".join(rng.choice(_LABELS) for _ in range(depth))


def test_matcher_agrees_with_catalog_covers_on_random_patterns():
    """The trie (hot path) and `catalog.covers` (catalog checks, compare) are two
    implementations of one rule: "x" is x and every name under it, "*.x" only the
    names under it, an allow beats a block. Thousands of random cases, both ways."""
    from resolver.catalog import covers
    from resolver.policy import Allow

    rng = random.Random(20261202)
    for _ in range(300):
        blocks = [
            ("*." if rng.random() < 0.3 else "") + _name(rng, rng.randint(1, 3)) for _ in range(4)
        ]
        allows = [
            ("*." if rng.random() < 0.3 else "") + _name(rng, rng.randint(1, 3)) for _ in range(2)
        ]
        m = Matcher()
        for p in allows:
            m.add_allow(p, Allow("rule"))
        for p in blocks:
            m.add_block(p, Rule("custom", source="rule"))
        for _ in range(20):
            name = _name(rng, rng.randint(1, 4))
            expected = any(covers(p, name) for p in blocks) and not any(
                covers(p, name) for p in allows
            )
            assert (m.lookup(name) is not None) == expected, (blocks, allows, name)
