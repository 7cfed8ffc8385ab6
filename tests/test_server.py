"""The resolver on real sockets: sinkhole answers, transparent forwarding, guards, failover."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import hostport, query, raw_tcp, raw_udp, run_cli
from tests.dnstest import require_tool
from tests.dnstest.daemons import dnsmasq, free_port, unbound

BLOCKED = "chatgpt.com"


def rrsets(section) -> set:
    """A section as comparable text, TTLs aside."""
    out = set()
    for rrset in section:
        for rd in rrset:
            out.add((rrset.name.to_text().lower(), rrset.rdclass, rrset.rdtype, rd.to_text()))
    return out


def assert_same_answer(direct: dns.message.Message, via: dns.message.Message, what: str) -> None:
    assert via.rcode() == direct.rcode(), what
    assert via.flags & dns.flags.TC == direct.flags & dns.flags.TC, what
    if via.flags & dns.flags.TC:
        return  # both truncated: the client retries over TCP, compared there
    # We are a recursive resolver, not the authority: AA cleared, RA set (RFC 1035 4.1.1),
    # whatever the upstream said; every other flag as it came.
    assert not via.flags & dns.flags.AA, what
    assert via.flags & dns.flags.RA, what
    assert via.flags & dns.flags.AD == direct.flags & dns.flags.AD, what
    assert via.flags & dns.flags.CD == direct.flags & dns.flags.CD, what
    assert rrsets(via.answer) == rrsets(direct.answer), what
    assert rrsets(via.authority) == rrsets(direct.authority), what
    assert (via.edns >= 0) == (direct.edns >= 0), what
    assert via.ednsflags & dns.flags.DO == direct.ednsflags & dns.flags.DO, what


def ede_texts(msg: dns.message.Message) -> list[tuple[int, str]]:
    return [(o.code, o.text) for o in msg.options if isinstance(o, dns.edns.EDEOption)]


# -- blocking ---------------------------------------------------------------------------


def test_blocked_name_gets_null_addresses_over_udp_and_tcp(sinkhole, upstream):
    server = sinkhole()
    for tcp in (False, True):
        a = query(server.address, BLOCKED, "A", tcp=tcp)
        aaaa = query(server.address, "chat." + BLOCKED, "AAAA", tcp=tcp)
        assert [rd.address for rd in a.answer[0]] == ["0.0.0.0"]
        assert [rd.address for rd in aaaa.answer[0]] == ["::"]
        assert a.flags & dns.flags.RA and not a.flags & dns.flags.AA
        assert a.answer[0].ttl == 10
    assert upstream.count() == upstream.count(qname="sinkhole-probe.example.test")


@pytest.mark.parametrize("rdtype", ["HTTPS", "MX", "TXT", "SVCB", "CAA", "NS"])
def test_other_types_of_blocked_name_get_nodata_with_soa(sinkhole, upstream, rdtype):
    server = sinkhole()
    r = query(server.address, "www." + BLOCKED, rdtype)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.answer == []
    assert len(r.authority) == 1 and r.authority[0].rdtype == dns.rdatatype.SOA
    # RFC 2308: the SOA minimum and TTL bound negative caching to the sinkhole ttl.
    assert r.authority[0][0].minimum == 10 and r.authority[0].ttl == 10
    assert upstream.count(qname="www." + BLOCKED) == 0


def test_any_for_blocked_name_is_minimal(sinkhole):
    server = sinkhole()
    r = query(server.address, BLOCKED, "ANY")
    assert len(r.answer) == 1 and r.answer[0].rdtype == dns.rdatatype.A


def test_ip_mode_answers_configured_addresses(sinkhole):
    server = sinkhole({"sinkhole": {"mode": "ip", "ipv4": "192.0.2.1", "ipv6": "2001:db8::1"}})
    assert query(server.address, BLOCKED, "A").answer[0][0].address == "192.0.2.1"
    assert query(server.address, BLOCKED, "AAAA").answer[0][0].address == "2001:db8::1"


@pytest.mark.parametrize(
    ("mode", "rcode", "soa"),
    [
        ("nxdomain", dns.rcode.NXDOMAIN, True),
        ("nodata", dns.rcode.NOERROR, True),
        ("refused", dns.rcode.REFUSED, False),
    ],
)
def test_negative_modes(sinkhole, upstream, mode, rcode, soa):
    server = sinkhole({"sinkhole": {"mode": mode}})
    for rdtype in ("A", "AAAA", "HTTPS"):
        r = query(server.address, BLOCKED, rdtype)
        assert r.rcode() == rcode
        assert r.answer == []
        assert bool(r.authority) == soa
    assert upstream.count(qname=BLOCKED) == 0


def test_blocked_answer_keeps_id_and_case_and_carries_ede(sinkhole):
    server = sinkhole()
    q = dns.message.make_query("ChAtGpT.CoM", "A", use_edns=0)
    wire = q.to_wire()
    answer = raw_udp(server.address, wire)
    assert answer[:2] == wire[:2]
    # The question comes back byte for byte (0x20 case preserved).
    assert answer[12 : 12 + len(wire) - 12 - 11] == wire[12 : len(wire) - 11]
    r = dns.message.from_wire(answer)
    assert ede_texts(r) == [(15, "blocked by policy: ChatGPT (OpenAI)")]


def test_no_opt_in_answer_when_query_had_no_edns(sinkhole):
    server = sinkhole()
    r = query(server.address, BLOCKED, "A", edns=False)
    assert r.edns == -1 and r.answer[0][0].address == "0.0.0.0"


def test_cname_into_blocked_name_is_blocked(sinkhole, upstream, zone):
    server = sinkhole()
    for name in zone.blocked_targets:
        r = query(server.address, name, "A")
        assert [rd.address for rd in r.answer[0]] == ["0.0.0.0"], name
        assert ede_texts(r)[0][0] == 15
        # Asked upstream (that's how we learned the CNAME), never for the blocked target.
        assert upstream.count(qname=name) >= 1
    assert upstream.count(qname="chatgpt.com") == 0


def test_wildcard_rule_blocks_only_names_under_it(sinkhole, upstream, tmp_path):
    db = tmp_path / "rules.db"
    run_cli("block", "*.host-001.example.test", "--db", str(db), check=True)
    server = sinkhole({"database": str(db)})
    assert query(server.address, "a.host-001.example.test").answer[0][0].address == "0.0.0.0"
    direct = query(upstream.address, "host-001.example.test")
    assert_same_answer(direct, query(server.address, "host-001.example.test"), "exact name")


def test_allow_rule_beats_block_rule(sinkhole, upstream, tmp_path):
    db = tmp_path / "rules.db"
    run_cli("block", "example.test", "--db", str(db), check=True)
    run_cli("allow", "host-002.example.test", "--db", str(db), check=True)
    server = sinkhole({"database": str(db)})
    assert query(server.address, "host-003.example.test").answer[0][0].address == "0.0.0.0"
    direct = query(upstream.address, "host-002.example.test")
    assert_same_answer(direct, query(server.address, "host-002.example.test"), "allowed")
    assert query(server.address, "HOST-002.Example.Test.").answer[0][0].address != "0.0.0.0"


# -- transparency -------------------------------------------------------------------------


def test_forwarded_answers_equal_the_upstreams(sinkhole, upstream, zone):
    server = sinkhole()
    cases = [(n, t) for n, t in zone.names() if n not in zone.blocked_targets]
    assert len(cases) >= 200
    checked = 0
    for do in (False, True):
        for tcp in (False, True):
            for name, rdtype in cases:
                what = f"{name} {rdtype} do={do} tcp={tcp}"
                direct = query(upstream.address, name, rdtype, tcp=tcp, do=do)
                via = query(server.address, name, rdtype, tcp=tcp, do=do)
                assert_same_answer(direct, via, what)
                checked += 1
    assert checked == 4 * len(cases)


def test_dnssec_records_pass_through_with_do(sinkhole, upstream):
    server = sinkhole()
    plain = query(server.address, "signed.example.test", "A")
    signed = query(server.address, "signed.example.test", "A", do=True)
    assert not any(r.rdtype == dns.rdatatype.RRSIG for r in plain.answer)
    assert any(r.rdtype == dns.rdatatype.RRSIG for r in signed.answer)
    assert signed.ednsflags & dns.flags.DO


def test_large_answer_truncated_over_udp_then_complete_over_tcp(sinkhole, upstream):
    server = sinkhole()
    udp = query(server.address, "big-txt.example.test", "TXT")
    assert udp.flags & dns.flags.TC
    tcp = query(server.address, "big-txt.example.test", "TXT", tcp=True)
    direct = query(upstream.address, "big-txt.example.test", "TXT", tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert rrsets(tcp.answer) == rrsets(direct.answer)
    assert sum(len(s) for rd in tcp.answer[0] for s in rd.strings) > 1400


def test_cached_answer_ttl_decreases_and_case_follows_the_query(sinkhole, upstream):
    server = sinkhole()
    first = query(server.address, "host-010.example.test")
    time.sleep(1.2)
    second = query(server.address, "HoSt-010.ExAmPlE.TeSt")
    assert upstream.count(qname="host-010.example.test") == 1
    assert second.answer[0].ttl < first.answer[0].ttl
    assert second.question[0].name.to_text() == "HoSt-010.ExAmPlE.TeSt."


def test_popular_name_is_refreshed_before_it_expires(sinkhole, upstream):
    # Entries live 10 s here; in the last tenth of that, a name asked 3 times or more is
    # asked upstream again while the cached answer is served, so it never goes missing.
    server = sinkhole({"cache": {"max_ttl": 10}})
    name = "host-011.example.test"
    query(server.address, name)
    stored = time.monotonic()
    for _ in range(3):
        assert query(server.address, name).answer[0].ttl >= 9
    assert upstream.count(qname=name) == 1
    time.sleep(max(0.0, stored + 9.3 - time.monotonic()))
    late = query(server.address, name)
    assert late.answer[0].ttl <= 1  # still the first answer, nearly expired
    deadline = time.monotonic() + 2.0
    while upstream.count(qname=name) < 2:
        assert time.monotonic() < deadline, "no refresh before the entry expired"
        time.sleep(0.02)
    time.sleep(max(0.0, stored + 10.5 - time.monotonic()))
    fresh = query(server.address, name)  # past the first answer's life: the refreshed one
    assert fresh.answer[0].ttl >= 8
    assert upstream.count(qname=name) == 2


def test_dig_gets_sinkhole_and_forwarded_answers(sinkhole):
    dig = require_tool("dig")
    server = sinkhole()
    host, port = server.address
    for extra in ([], ["+tcp"]):
        out = subprocess.run(
            [dig, f"@{host}", "-p", str(port), "+short", *extra, BLOCKED],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.split()
        assert out == ["0.0.0.0"]
        out = subprocess.run(
            [dig, f"@{host}", "-p", str(port), "+short", *extra, "host-005.example.test"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.split()
        assert out == ["192.0.2.5"] or (out and out[0] != "0.0.0.0")


def test_tcp_connection_carries_several_queries(sinkhole):
    server = sinkhole()
    with socket.create_connection(server.address, timeout=5) as s:
        for i in range(5):
            q = dns.message.make_query(f"host-{i:03d}.example.test", "A")
            dns.query.send_tcp(s, q)
            r, _ = dns.query.receive_tcp(s, expiration=time.time() + 5)
            assert r.id == q.id and r.rcode() == dns.rcode.NOERROR


def test_ipv6_listener(sinkhole):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    port = free_port()
    server = sinkhole({"listen": [f"[::1]:{port}"]})
    assert query(("::1", port), BLOCKED).answer[0][0].address == "0.0.0.0"
    assert query(("::1", port), BLOCKED, tcp=True).answer[0][0].address == "0.0.0.0"
    assert server.address == ("::1", port)


# -- guards -------------------------------------------------------------------------------


def test_client_outside_allow_networks_is_refused(sinkhole, upstream):
    server = sinkhole({"allow_networks": ["10.0.0.0/8"]}, start=False)
    server.probe_name = BLOCKED
    server.start()
    for name in (BLOCKED, "host-001.example.test"):
        assert query(server.address, name).rcode() == dns.rcode.REFUSED
    assert upstream.count(qname="host-001.example.test") == 0


def header(ident=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


QUESTION = b"\x07example\x04test\x00\x00\x01\x00\x01"


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.IQUERY, 3])
def test_unknown_opcode_gets_notimp(sinkhole, opcode):
    server = sinkhole()
    for packet in (header(flags=opcode << 11) + QUESTION, header(flags=opcode << 11, qd=0)):
        r = raw_udp(server.address, packet)
        assert r is not None and r[:2] == packet[:2]
        assert r[3] & 0xF == dns.rcode.NOTIMP


@pytest.mark.parametrize("qd", [0, 2])
def test_qdcount_other_than_one_gets_formerr(sinkhole, qd):
    server = sinkhole()
    packet = header(qd=qd) + QUESTION * qd
    r = raw_udp(server.address, packet)
    assert r is not None and r[3] & 0xF == dns.rcode.FORMERR


def test_response_packets_are_dropped(sinkhole):
    server = sinkhole()
    assert raw_udp(server.address, header(flags=0x8180) + QUESTION, timeout=0.5) is None


MALFORMED = [
    b"",
    b"\x12",
    header()[:11],
    header() + b"\x07example",  # question cut in the name
    header() + b"\x07example\x04test\x00\x00",  # cut in the type
    header() + b"\xc0\x0c\x00\x01\x00\x01",  # pointer to itself
    header() + b"\xc0\x20\x00\x01\x00\x01",  # forward pointer
    header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # label over 63
    header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",  # name over 255
    header(ar=1) + QUESTION + b"\x00\x00\x29\x04",  # OPT cut short
    header(ar=2) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" * 2,  # two OPTs
    header(an=5) + QUESTION,  # counts that lie
    bytes(range(256)),
    b"\xff" * 512,
]


def test_malformed_packets_get_formerr_or_nothing_and_server_keeps_answering(sinkhole):
    server = sinkhole()
    for packet in MALFORMED:
        r = raw_udp(server.address, packet, timeout=0.3)
        if r is not None:
            assert r[:2] == packet[:2] and r[3] & 0xF in (dns.rcode.FORMERR, dns.rcode.NOTIMP)
        assert query(server.address, BLOCKED).answer[0][0].address == "0.0.0.0"
        try:
            if len(packet) < 65535:
                raw_tcp(server.address, packet, timeout=1)
        except (ConnectionError, TimeoutError, OSError):
            pass
    assert query(server.address, BLOCKED, tcp=True).answer[0][0].address == "0.0.0.0"
    assert server.process.poll() is None


def test_edns_version_above_zero_gets_badvers(sinkhole):
    server = sinkhole()
    q = dns.message.make_query(BLOCKED, "A", use_edns=1)
    r = dns.message.from_wire(raw_udp(server.address, q.to_wire()))
    assert r.rcode() == dns.rcode.BADVERS and r.edns == 0


# -- upstream failover ----------------------------------------------------------------------


def test_first_upstream_down_second_answers(sinkhole, upstream):
    dead = free_port()  # nothing listens: ICMP port unreachable
    server = sinkhole({"upstreams": [f"127.0.0.1:{dead}", hostport(upstream.address)]})
    # A closed port answers ICMP at once: no waiting for the first upstream's timeout.
    r = query(server.address, "host-020.example.test", timeout=2.0)
    assert r.rcode() == dns.rcode.NOERROR and r.answer


def test_blackholed_first_upstream_fails_over_within_budget(sinkhole, upstream):
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    hole.bind(("127.0.0.1", 0))
    try:
        server = sinkhole({"upstreams": [hostport(hole.getsockname()), hostport(upstream.address)]})
        # Within the 2 s budget: a client that waits no longer still gets the answer.
        r = query(server.address, "host-021.example.test", timeout=2.0)
        assert r.rcode() == dns.rcode.NOERROR and r.answer
    finally:
        hole.close()


def test_servfail_within_budget_when_no_upstream_answers(sinkhole):
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))
    try:
        server = sinkhole({"upstreams": [hostport(hole.getsockname())]}, start=False)
        server.probe_name = BLOCKED
        server.start()
        r = query(server.address, "host-022.example.test", timeout=3.0)
        assert r.rcode() == dns.rcode.SERVFAIL
        # Blocked names keep working with every upstream down.
        assert query(server.address, BLOCKED).answer[0][0].address == "0.0.0.0"
    finally:
        hole.close()


# -- interop with Debian's servers -----------------------------------------------------------


def test_interop_dnsmasq_as_upstream(sinkhole, zone, tmp_path):
    require_tool("dnsmasq")
    with dnsmasq(zone, workdir=tmp_path / "dnsmasq", cache_size=0) as dm:
        server = sinkhole({"upstreams": [hostport(dm.address)]})
        names = [f"host-{i:03d}.example.test" for i in range(30)] + ["cname-1.example.test"]
        for name in names:
            assert_same_answer(query(dm.address, name), query(server.address, name), name)
        assert query(server.address, BLOCKED).answer[0][0].address == "0.0.0.0"


def test_interop_unbound_as_upstream(sinkhole, zone, tmp_path):
    require_tool("unbound")
    with unbound(zone, workdir=tmp_path / "unbound") as ub:
        server = sinkhole({"upstreams": [hostport(ub.address)]})
        for name, rdtype in zone.names()[:60]:
            if name in zone.blocked_targets:
                continue
            for tcp in (False, True):
                direct = query(ub.address, name, rdtype, tcp=tcp)
                assert_same_answer(direct, query(server.address, name, rdtype, tcp=tcp), name)


def test_dnsmasq_forwarding_to_sinkhole_sees_the_sinkhole(sinkhole, tmp_path):
    require_tool("dnsmasq")
    server = sinkhole()
    with dnsmasq(upstream=server.address, workdir=tmp_path / "dm2", cache_size=0) as dm:
        assert query(dm.address, BLOCKED).answer[0][0].address == "0.0.0.0"
        assert query(dm.address, "host-030.example.test").answer


# -- lifecycle and CLI ----------------------------------------------------------------------


def test_startup_says_what_it_listens_on_and_sigterm_stops_cleanly(sinkhole, upstream):
    server = sinkhole()
    text = server.stderr_text()
    assert f"listening on udp+tcp {hostport(server.address)}" in text
    assert f"upstreams: {hostport(upstream.address)}" in text
    assert "blocking" in text and "patterns" in text
    assert server.stop(signal.SIGTERM) == 0
    assert "Traceback" not in server.stderr_text()


def test_sigint_stops_cleanly(sinkhole):
    server = sinkhole()
    assert server.stop(signal.SIGINT) == 0


def test_bad_config_names_file_and_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sinkhole:\n  mode: blackhole\n")
    r = run_cli("serve", "--config", str(cfg))
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == (
        f"Error: {cfg}: sinkhole.mode: must be one of null, ip, nxdomain, nodata, refused "
        "(got 'blackhole')"
    )
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("listen: [nowhere]\n", "listen[0]"),
        ("cache: {size: -1}\n", "cache.size"),
        ("privacy: {clients: everyone}\n", "privacy.clients"),
        ("upstreams: 8.8.8.8:99999\n", "upstreams[0]"),
        ("lisen: []\n", "did you mean 'listen'"),
        ("sinkhole: [\n", "invalid YAML"),
        ("clients: {groups: {lab: {networks: [10.0.0.0/33]}}}\n", "clients.groups.lab.networks"),
    ],
)
def test_config_errors_are_one_line(tmp_path, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    r = run_cli("config", "check", "--config", str(cfg))
    assert r.returncode == 1
    assert needle in r.stderr and str(cfg) in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_config_file_is_one_line(tmp_path):
    r = run_cli("serve", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode != 0 and "nope.yaml: no such file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_port_in_use_is_one_clear_line(upstream, tmp_path):
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        port = busy.getsockname()[1]
        r = run_cli(
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            hostport(upstream.address),
            "--db",
            str(tmp_path / "x.db"),
        )
        assert r.returncode != 0
        assert f"cannot listen on udp 127.0.0.1:{port}: address already in use" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        busy.close()


def test_check_says_why(tmp_path):
    r = run_cli("check", "chat.chatgpt.com")
    assert r.returncode == 0
    assert "BLOCKED" in r.stdout and "chatgpt.com" in r.stdout and "openai-chatgpt" in r.stdout
    r = run_cli("check", "www.wikipedia.org")
    assert r.returncode == 0 and "allowed" in r.stdout


def test_serve_without_config_uses_embedded_defaults(tmp_path, upstream):
    # The contract of `make serve`: no config file, 127.0.0.1:1053, the catalog blocked,
    # the database in the working directory. The upstream is given on the command line
    # only so that nothing (forwarded names, health probes) leaves loopback in tests.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("127.0.0.1", 1053))
    except OSError:
        pytest.fail("port 1053 is busy: something else listens on the default port")
    finally:
        probe.close()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("SINKHOLE_DB", None)
    env.pop("SINKHOLE_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "resolver", "serve", "--upstream", hostport(upstream.address)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        answer = None
        while time.monotonic() < deadline and answer is None:
            try:
                answer = query(("127.0.0.1", 1053), BLOCKED, timeout=0.5)
            except dns.exception.Timeout:
                pass  # not listening yet
        assert answer is not None, "no answer on 127.0.0.1:1053"
        assert answer.answer[0][0].address == "0.0.0.0"
        assert query(("127.0.0.1", 1053), "host-007.example.test").answer
        assert (tmp_path / "sinkhole.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode()
