"""The report over a database filled by real queries through a running server."""

from __future__ import annotations

import json

import dns.message
import dns.query

from tests.conftest import run_cli

#: (client address, name, type, times): what the office "did" in this test.
TRAFFIC = [
    ("127.0.0.2", "chatgpt.com", "A", 3),
    ("127.0.0.2", "chatgpt.com", "AAAA", 3),
    ("127.0.0.2", "chatgpt.com", "HTTPS", 3),
    ("127.0.0.3", "claude.ai", "A", 2),
    ("127.0.0.3", "www.perplexity.ai", "A", 1),
    ("127.0.0.4", "use-application-dns.net", "A", 4),
]


def send(server, source: str, name: str, rdtype: str) -> None:
    q = dns.message.make_query(name, rdtype)
    host, port = server.address
    dns.query.udp(q, host, port=port, timeout=5, source=source)


def test_json_report_counts_what_the_server_blocked(sinkhole):
    config = {"clients": {"groups": {"finance": {"networks": ["127.0.0.2/32"]}}}}
    server = sinkhole(config)
    for source, name, rdtype, times in TRAFFIC:
        for _ in range(times):
            send(server, source, name, rdtype)
    for i in range(7):  # forwarded names count in traffic, never in hits
        send(server, "127.0.0.5", f"host-{i:03d}.example.test", "A")
    assert server.stop() == 0
    r = run_cli(
        "report",
        "--since",
        "1h",
        "--format",
        "json",
        "--config",
        str(server.config_path),
        "--db",
        server.config["database"],
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    totals = report["totals"]
    chatbots = [t for t in TRAFFIC if t[1] != "use-application-dns.net"]
    assert totals["blocked"] == sum(t[3] for t in chatbots) == 12
    # One browser burst per (client, service) within 5 minutes is one attempt.
    assert totals["attempts"] == 3
    assert totals["clients"] == 2
    # Every query the server answered: the probe, the blocked ones, the forwarded ones.
    assert totals["queries"] >= 12 + 4 + 7
    services = {s["id"]: s for s in report["services"]}
    assert services["openai-chatgpt"]["blocked"] == 9
    assert services["openai-chatgpt"]["attempts"] == 1
    assert services["anthropic-claude"]["blocked"] == 2
    assert services["perplexity"]["blocked"] == 1
    groups = {g["group"]: g for g in report["groups"]}
    assert groups["finance"]["blocked"] == 9 and groups["other"]["blocked"] == 3
    bypass = {b["id"]: b for b in report["bypass"]}
    assert bypass["firefox-canary"]["blocked"] == 4
    top = {c["client"]: c["blocked"] for c in report["top_clients"]}
    assert top == {"127.0.0.2": 9, "127.0.0.3": 3}
    names = {n["name"]: n["blocked"] for n in report["top_names"]}
    assert names["chatgpt.com"] == 9 and names["claude.ai"] == 2
    assert report["privacy"]["clients"] == "ip"
