"""The shipped catalog on a running server: what it blocks, what it leaves, bypass, exemptions."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import time
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import QTYPE, RR, A, DNSRecord

from resolver.catalog import load_catalog
from tests.conftest import REPO_ROOT, hostport, run_cli
from tests.dnstest.authserver import AuthServer
from tests.test_lifecycle import wait_for
from tests.test_policy import POPULAR

EVERYWHERE = "198.51.100.7"


class Everything(AuthServer):
    """An upstream that answers every A query with one address: whatever is not blocked shows."""

    def handle(self, request: DNSRecord, wire: bytes, proto: str) -> DNSRecord:
        reply = request.reply()
        if request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(EVERYWHERE), ttl=60))
        return reply


@pytest.fixture(scope="module")
def everything() -> Iterator[Everything]:
    with Everything() as server:
        yield server


def ask(server, name: str, rdtype: str = "A", source: str = "127.0.0.1") -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=0)
    host, port = server.address
    return dns.query.udp(q, host, port=port, timeout=5, source=source)


def first_address(r: dns.message.Message) -> str | None:
    for rrset in r.answer:
        if rrset.rdtype == dns.rdatatype.A:
            return rrset[0].address
    return None


def test_every_catalog_domain_and_a_random_subdomain_is_answered_locally(sinkhole, everything):
    catalog = load_catalog()
    server = sinkhole({"upstreams": [hostport(everything.address)]})
    rnd = random.Random(11)
    asked = 0
    for svc in catalog.services.values():
        expected_rcode = dns.rcode.NXDOMAIN if svc.answer == "nxdomain" else dns.rcode.NOERROR
        for domain in (*svc.domains, *svc.api):
            base = domain.removeprefix("*.")
            label = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8))
            names = [f"{label}.{base}"] + ([] if domain.startswith("*.") else [base])
            for name in names:
                if name in svc.keep:
                    continue
                r = ask(server, name)
                assert r.rcode() == expected_rcode, name
                assert first_address(r) in (None, "0.0.0.0"), name
                asked += 1
    assert asked >= 100
    assert everything.count() == everything.count(qname="sinkhole-probe.example.test")


def test_popular_names_resolve_through_the_upstream(sinkhole, everything):
    server = sinkhole({"upstreams": [hostport(everything.address)]})
    for name in POPULAR:
        assert first_address(ask(server, name)) == EVERYWHERE, name


def test_bypass_names_are_answered_as_browsers_expect_and_recorded(sinkhole, everything):
    server = sinkhole({"upstreams": [hostport(everything.address)]})
    assert ask(server, "use-application-dns.net").rcode() == dns.rcode.NXDOMAIN
    assert ask(server, "mask.icloud.com").rcode() == dns.rcode.NXDOMAIN
    assert ask(server, "mask-h2.icloud.com", "AAAA").rcode() == dns.rcode.NXDOMAIN
    ddr = ask(server, "_dns.resolver.arpa", "SVCB")
    assert ddr.rcode() == dns.rcode.NOERROR and ddr.answer == []
    assert first_address(ask(server, "dns.google")) == "0.0.0.0"
    assert server.stop() == 0
    with sqlite3.connect(server.config["database"]) as db:
        rows = db.execute(
            "SELECT qname, category, action FROM hits WHERE category = 'bypass' ORDER BY id"
        ).fetchall()
    assert [r[0] for r in rows] == [
        "use-application-dns.net",
        "mask.icloud.com",
        "mask-h2.icloud.com",
        "_dns.resolver.arpa",
        "dns.google",
    ]
    assert rows[0][2] == "nxdomain" and rows[3][2] == "nodata"


def test_exempt_group_resolves_its_service_and_others_get_the_sinkhole(sinkhole, everything):
    server = sinkhole(
        {
            "upstreams": [hostport(everything.address)],
            "clients": {
                "groups": {
                    "ai-lab": {"networks": ["127.0.0.5/32"], "exempt": ["openai-chatgpt"]},
                    "staff": {"networks": ["127.0.0.0/8"]},
                }
            },
        }
    )
    assert first_address(ask(server, "chatgpt.com", source="127.0.0.5")) == EVERYWHERE
    assert first_address(ask(server, "chatgpt.com", source="127.0.0.6")) == "0.0.0.0"
    # Exempt from ChatGPT only, not from every chatbot.
    assert first_address(ask(server, "claude.ai", source="127.0.0.5")) == "0.0.0.0"
    # The exempt answer was forwarded and cached: the other client still gets the sinkhole.
    assert first_address(ask(server, "chatgpt.com", source="127.0.0.6")) == "0.0.0.0"
    assert server.stop() == 0
    with sqlite3.connect(server.config["database"]) as db:
        rows = db.execute(
            "SELECT client, client_group, qname, SUM(count) FROM hits "
            "GROUP BY client, client_group, qname ORDER BY client"
        ).fetchall()
    assert rows == [
        ("127.0.0.5", "ai-lab", "claude.ai", 1),
        ("127.0.0.6", "staff", "chatgpt.com", 2),
    ]


NEW_SERVICE = """
  example-new-chat:
    name: Example New Chat
    domains: [new-chat.example.test]
    keep: []
    api: []
    sources: [https://example.test/network]
    verified: 2026-12-02
"""


def test_a_new_catalog_service_is_blocked_after_an_upgrade_and_marked_new(
    sinkhole, everything, tmp_path
):
    catalog = tmp_path / "catalog"
    shutil.copytree(REPO_ROOT / "blocklists", catalog)
    server = sinkhole({"upstreams": [hostport(everything.address)], "catalog": str(catalog)})
    assert first_address(ask(server, "new-chat.example.test")) == EVERYWHERE
    env = {"SINKHOLE_CONFIG": str(server.config_path), "SINKHOLE_DB": server.config["database"]}
    before = run_cli("lists", env=env)
    assert before.returncode == 0 and " NEW" not in before.stdout
    # An admin disables one catalog service; the upgrade must not undo that choice.
    assert run_cli("lists", "disable", "phind", env=env).returncode == 0
    # The upgrade: a new service in the enabled category, then a reload (no command).
    path = catalog / "ai-chatbots.yaml"
    path.write_text(path.read_text() + NEW_SERVICE)
    server.reload()
    assert wait_for(lambda: first_address(ask(server, "new-chat.example.test")) == "0.0.0.0")
    assert first_address(ask(server, "www.phind.com")) == EVERYWHERE
    after = run_cli("lists", env=env)
    (line,) = [ln for ln in after.stdout.splitlines() if ln.startswith("example-new-chat")]
    assert line.split()[1] == "yes" and line.endswith("  NEW")
    assert "NEW: 1 services" in after.stdout
    # After the next start it is no longer new, and still blocked. The start and the
    # `added` stamps are whole seconds (a service added in the second of a start is one
    # of that start's): the restart must come in a later second than the reload.
    assert server.stop() == 0
    time.sleep(1.05 - time.time() % 1)
    restarted = sinkhole(
        {
            "upstreams": [hostport(everything.address)],
            "catalog": str(catalog),
            "database": server.config["database"],
        }
    )
    assert first_address(ask(restarted, "new-chat.example.test")) == "0.0.0.0"
    again = run_cli("lists", env=env)
    assert again.returncode == 0 and " NEW" not in again.stdout


def test_group_exemption_set_by_the_cli_applies_within_2s(sinkhole, everything):
    # The group's networks are in the config; what it may use is set in the policy.
    server = sinkhole(
        {
            "upstreams": [hostport(everything.address)],
            "clients": {
                "groups": {
                    "ai-lab": {"networks": ["127.0.0.5/32"]},
                    "staff": {"networks": ["127.0.0.0/8"], "exempt": ["anthropic-claude"]},
                }
            },
        }
    )
    config = str(server.config_path)
    # The CLI on the server's database ($SINKHOLE_DB would beat the config's).
    env = {"SINKHOLE_DB": server.config["database"]}
    assert first_address(ask(server, "chatgpt.com", source="127.0.0.5")) == "0.0.0.0"
    done = run_cli(
        "groups",
        "exempt",
        "ai-lab",
        "openai-chatgpt",
        "--comment",
        "pilot",
        "--config",
        config,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "group ai-lab may now use: openai-chatgpt" in done.stdout
    assert wait_for(
        lambda: first_address(ask(server, "chatgpt.com", source="127.0.0.5")) == EVERYWHERE, 2.0
    ), server.stderr_text()
    # Only that group, only that service; the config's exemptions still hold beside it.
    assert first_address(ask(server, "chatgpt.com", source="127.0.0.6")) == "0.0.0.0"
    assert first_address(ask(server, "claude.ai", source="127.0.0.5")) == "0.0.0.0"
    assert first_address(ask(server, "claude.ai", source="127.0.0.6")) == EVERYWHERE
    listing = run_cli("groups", "--json", "--config", config, env=env)
    assert listing.returncode == 0, listing.stderr
    rows = {g["label"]: g for g in json.loads(listing.stdout)}
    assert rows["ai-lab"]["exempt_policy"] == ["openai-chatgpt"]
    assert rows["staff"]["exempt_config"] == ["anthropic-claude"]
    history = run_cli("lists", "history", "--json", "--config", config, env=env)
    entry = json.loads(history.stdout)[0]
    assert entry["command"] == "sinkhole groups exempt ai-lab openai-chatgpt"
    assert entry["comment"] == "pilot"

    undone = run_cli("groups", "unexempt", "ai-lab", "openai-chatgpt", "--config", config, env=env)
    assert undone.returncode == 0, undone.stderr
    assert wait_for(
        lambda: first_address(ask(server, "chatgpt.com", source="127.0.0.5")) == "0.0.0.0", 2.0
    )
    bad = run_cli("groups", "exempt", "ai-lab", "no-such-service", "--config", config, env=env)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "unknown service 'no-such-service'" in bad.stderr
    assert server.stop() == 0
