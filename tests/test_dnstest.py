"""Proves the DNS test harness (zone, AuthServer, daemons, SinkholeProcess) does what it says."""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdata
import dns.rdatatype
import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from tests.dnstest import require_tool
from tests.dnstest.authserver import AuthServer
from tests.dnstest.daemons import (
    Daemon,
    DaemonError,
    dnsmasq,
    free_port,
    nsd,
    pids_mentioning,
    rdata_texts,
    unbound,
    wait_for_dns,
)
from tests.dnstest.sinkhole import SinkholeProcess, SinkholeStartError
from tests.dnstest.zone import Zone, build_zone

ORIGIN = "example.test"
FAKE_SINKHOLE = Path(__file__).parent / "dnstest" / "fake_sinkhole.py"
TIMEOUT = 3.0
SAMPLE = [
    ("host-005.example.test", "A"),
    ("v6-003.example.test", "AAAA"),
    ("dual-004.example.test", "AAAA"),
    ("mail-02.example.test", "MX"),
    ("txt-07.example.test", "TXT"),
    ("_svc03._tcp.example.test", "SRV"),
    ("caa-01.example.test", "CAA"),
    ("cname-1.example.test", "A"),
    ("cname-2.example.test", "A"),
    ("cname-3.example.test", "AAAA"),
    ("cname-out.example.test", "A"),
    ("to-chatgpt.example.test", "A"),
    ("to-gemini.example.test", "AAAA"),
    ("to-chatgpt-2hop.example.test", "A"),
    ("cname-dangling.example.test", "A"),
    ("signed.example.test", "A"),
    ("example.test", "DNSKEY"),
    ("example.test", "SOA"),
    ("many-a.example.test", "A"),
    ("host-000.example.test", "AAAA"),
    ("ent.example.test", "A"),
    ("nx-003.example.test", "A"),
    ("nope.host-000.example.test", "TXT"),
]


@pytest.fixture(scope="session")
def zone() -> Zone:
    return build_zone(ORIGIN)


@pytest.fixture(scope="module")
def server(zone: Zone) -> Iterator[AuthServer]:
    with AuthServer(zone) as srv:
        yield srv


@pytest.fixture
def fresh(zone: Zone) -> Iterator[AuthServer]:
    """A server of its own, for tests that set faults or read the log."""
    with AuthServer(zone) as srv:
        yield srv


def ask(
    address: tuple[str, int],
    qname: str,
    qtype: str,
    proto: str = "udp",
    do: bool = False,
    payload: int | None = 4096,
) -> dns.message.Message:
    query = dns.message.make_query(
        qname, qtype, use_edns=0 if payload else False, payload=payload or 512, want_dnssec=do
    )
    query.flags &= ~dns.flags.RD
    if proto == "udp":
        return dns.query.udp(query, address[0], port=address[1], timeout=TIMEOUT)
    return dns.query.tcp(query, address[0], port=address[1], timeout=TIMEOUT)


def expected(zone: Zone, qname: str, qtype: str, do: bool = False) -> tuple[str, set]:
    """The zone's answer in the same (name, type, rdata) form as rdata_texts()."""
    rcode, answer, _ = zone.lookup(qname, qtype, do)
    record = DNSRecord.question(qname, qtype)
    for rr in answer:
        record.add_answer(rr)
    # Through the wire and dnspython, so both sides print rdata the same way.
    return RCODE.get(rcode), rdata_texts(dns.message.from_wire(bytes(record.pack())))


def raw_udp(address: tuple[str, int], wire: bytes, timeout: float = TIMEOUT) -> tuple[bytes, tuple]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(wire, address)
        return sock.recvfrom(65535)


def raw_tcp(address: tuple[str, int], wire: bytes) -> dns.message.Message:
    """One query over TCP without dnspython's checks that the answer matches."""
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        response, _ = dns.query.receive_tcp(sock, expiration=time.time() + TIMEOUT)
        return response


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- the zone ------------------------------------------------------------------


def test_zone_has_every_kind_of_case(zone: Zone) -> None:
    owners = zone.owner_names()
    assert len(owners) >= 250
    kinds = {t for _, t in zone.names()}
    assert {"A", "AAAA", "MX", "TXT", "SRV", "CAA", "CNAME", "DNSKEY", "SOA", "NS"} <= kinds
    assert zone.nxdomain and zone.nodata
    assert zone.rrset("to-chatgpt.example.test", "CNAME")[0].rdata.label == "chatgpt.com."
    assert zone.rrset("to-gemini.example.test", "CNAME")[0].rdata.label == "gemini.google.com."
    assert len(zone.rrset("many-a.example.test", "A")) >= 20
    big = zone.rrset("big-txt.example.test", "TXT")[0]
    assert len(big.rdata.data) > 1 and sum(len(s) for s in big.rdata.data) > 1400
    assert zone.to_zonefile() == build_zone(ORIGIN).to_zonefile()  # deterministic


def test_zone_lookup_semantics(zone: Zone) -> None:
    rcode, answer, authority = zone.lookup("cname-3.example.test", "A")
    assert rcode == RCODE.NOERROR and [QTYPE.get(r.rtype) for r in answer] == ["CNAME"] * 3 + ["A"]
    rcode, answer, authority = zone.lookup("nx-000.example.test", "A")
    assert rcode == RCODE.NXDOMAIN and not answer and QTYPE.get(authority[0].rtype) == "SOA"
    assert authority[0].ttl == 60  # RFC 2308: min(SOA TTL, MINIMUM)
    for name, qtype in zone.nodata:
        rcode, answer, authority = zone.lookup(name, qtype)
        assert (rcode, answer, len(authority)) == (RCODE.NOERROR, [], 1), (name, qtype)
    assert zone.lookup("chatgpt.com", "A")[0] == RCODE.REFUSED
    _, plain, _ = zone.lookup("signed.example.test", "A", do=False)
    _, signed, _ = zone.lookup("signed.example.test", "A", do=True)
    assert "RRSIG" not in {QTYPE.get(r.rtype) for r in plain}
    assert "RRSIG" in {QTYPE.get(r.rtype) for r in signed}


def test_zonefile_passes_named_checkzone(zone: Zone, tmp_path: Path) -> None:
    tool = require_tool("named-checkzone")
    path = tmp_path / "example.test.zone"
    path.write_text(zone.to_zonefile())
    result = subprocess.run([tool, ORIGIN, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_named_checkzone_rejects_a_broken_zonefile(zone: Zone, tmp_path: Path) -> None:
    tool = require_tool("named-checkzone")
    path = tmp_path / "broken.zone"
    path.write_text(zone.to_zonefile() + "cname-1 IN A 192.0.2.9\n")  # CNAME and other data
    result = subprocess.run([tool, ORIGIN, str(path)], capture_output=True, text=True)
    assert result.returncode != 0


# -- AuthServer answers ------------------------------------------------------------


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_authserver_answers_every_zone_case(zone: Zone, server: AuthServer, proto: str) -> None:
    for qname, qtype in zone.names():
        response = ask(server.address, qname, qtype, proto)
        rcode, texts = expected(zone, qname, qtype)
        assert dns.rcode.to_text(response.rcode()) == rcode, (qname, qtype)
        assert rdata_texts(response) == texts, (qname, qtype)
        assert response.flags & dns.flags.AA, (qname, qtype)
        assert not response.flags & dns.flags.TC
        if not texts and rcode in ("NOERROR", "NXDOMAIN"):
            # RFC 2308: negative answers carry the zone's SOA in the authority section.
            assert [r.rdtype for r in response.authority] == [dns.rdatatype.SOA], (qname, qtype)


def test_authserver_refuses_names_outside_the_zone(server: AuthServer) -> None:
    for proto in ("udp", "tcp"):
        response = ask(server.address, "chatgpt.com", "A", proto)
        assert response.rcode() == dns.rcode.REFUSED


def _dig(address: tuple[str, int], qname: str, qtype: str, *opts: str) -> str:
    tool = require_tool("dig")
    argv = [tool, f"@{address[0]}", "-p", str(address[1]), qname, qtype]
    argv += ["+norec", "+time=3", "+tries=1", "+noall", "+comments", "+answer", *opts]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _dig_answer(output: str) -> tuple[str, set]:
    status = output.split("status: ", 1)[1].split(",", 1)[0]
    answers = set()
    for line in output.splitlines():
        if line and not line.startswith(";"):
            name, _ttl, _cls, rtype, rdata = line.split(None, 4)
            answers.add((name.lower(), rtype, " ".join(rdata.split())))
    return status, answers


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_dig_sees_the_same_answers(server: AuthServer, proto: str) -> None:
    for qname, qtype in SAMPLE:
        opts = ["+tcp"] if proto == "tcp" else []
        status, answers = _dig_answer(_dig(server.address, qname, qtype, *opts))
        response = ask(server.address, qname, qtype, "tcp")
        assert status == dns.rcode.to_text(response.rcode()), (qname, qtype)
        # dig and dnspython split base64 at different places: compare without spaces.
        dig_set = {(n, t, "".join(r.split())) for n, t, r in answers}
        ours = {(n, t, "".join(r.split())) for n, t, r in rdata_texts(response)}
        assert dig_set == ours, (qname, qtype)


def test_rrsig_only_with_do_bit(server: AuthServer) -> None:
    for proto in ("udp", "tcp"):
        plain = ask(server.address, "signed.example.test", "A", proto, do=False)
        signed = ask(server.address, "signed.example.test", "A", proto, do=True)
        assert {t for _, t, _ in rdata_texts(plain)} == {"A"}
        assert {t for _, t, _ in rdata_texts(signed)} == {"A", "RRSIG"}
        assert signed.ednsflags & dns.flags.DO
        keys = ask(server.address, ORIGIN, "DNSKEY", proto, do=False)
        assert {t for _, t, _ in rdata_texts(keys)} == {"DNSKEY"}
        keys = ask(server.address, ORIGIN, "DNSKEY", proto, do=True)
        assert {t for _, t, _ in rdata_texts(keys)} == {"DNSKEY", "RRSIG"}
    _, answers = _dig_answer(_dig(server.address, "signed.example.test", "A", "+dnssec"))
    assert "RRSIG" in {t for _, t, _ in answers}
    _, answers = _dig_answer(_dig(server.address, "signed.example.test", "A"))
    assert "RRSIG" not in {t for _, t, _ in answers}


def test_big_txt_is_truncated_over_udp_and_whole_over_tcp(server: AuthServer) -> None:
    for payload in (None, 1232):
        udp = ask(server.address, "big-txt.example.test", "TXT", "udp", payload=payload)
        assert udp.flags & dns.flags.TC and not udp.answer
    tcp = ask(server.address, "big-txt.example.test", "TXT", "tcp")
    assert not tcp.flags & dns.flags.TC
    strings = tcp.answer[0][0].strings
    assert len(strings) > 1 and sum(len(s) for s in strings) > 1400
    # dig retries over TCP by itself after TC=1, as a stub resolver should.
    assert "flags: qr aa tc" in _dig(server.address, "big-txt.example.test", "TXT", "+ignore")
    _, answers = _dig_answer(_dig(server.address, "big-txt.example.test", "TXT"))
    assert len(answers) == 1


def test_udp_size_follows_the_clients_edns_size(server: AuthServer) -> None:
    small = ask(server.address, "many-a.example.test", "A", "udp", payload=None)
    assert small.flags & dns.flags.TC
    large = ask(server.address, "many-a.example.test", "A", "udp", payload=1232)
    assert not large.flags & dns.flags.TC and len(large.answer[0]) == 32


def test_tcp_serves_several_queries_per_connection(server: AuthServer) -> None:
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        queries = [dns.message.make_query(f"host-{i:03d}.example.test", "A") for i in range(5)]
        for query in queries:
            wire = query.to_wire()
            sock.sendall(struct.pack("!H", len(wire)) + wire)
        for query in queries:
            response, _ = dns.query.receive_tcp(sock, expiration=time.time() + TIMEOUT)
            assert query.is_response(response)


def test_concurrent_clients_all_get_answers(zone: Zone, server: AuthServer) -> None:
    errors: list[str] = []

    def client(index: int) -> None:
        proto = "tcp" if index % 2 else "udp"
        for i in range(40):
            name = f"host-{(index * 40 + i) % 120:03d}.example.test"
            try:
                response = ask(server.address, name, "A", proto)
                if rdata_texts(response) != expected(zone, name, "A")[1]:
                    errors.append(f"{name}: wrong answer")
            except dns.exception.DNSException as exc:
                errors.append(f"{name}: {exc!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_log_records_each_query(fresh: AuthServer) -> None:
    ask(fresh.address, "Host-001.Example.Test", "A", "udp", do=True)
    ask(fresh.address, "host-001.example.test", "AAAA", "tcp")
    assert list(fresh.log) == [
        ("host-001.example.test", "A", "udp", True),
        ("host-001.example.test", "AAAA", "tcp", False),
    ]
    assert fresh.log.count("host-001.example.test.") == 2
    assert fresh.count(qtype="AAAA") == 1
    fresh.log.clear()
    assert len(fresh.log) == 0


def test_handle_can_be_overridden(zone: Zone) -> None:
    class Silent(AuthServer):
        def handle(self, request: DNSRecord, wire: bytes, proto: str) -> bytes | None:
            if str(request.q.qname).startswith("raw"):
                reply = request.reply()
                reply.header.rcode = RCODE.NXDOMAIN
                return reply.pack()
            return None

    with Silent(zone) as srv:
        assert ask(srv.address, "raw.example.test", "A").rcode() == dns.rcode.NXDOMAIN
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(
                dns.message.make_query("host-001.example.test", "A"),
                srv.address[0],
                port=srv.address[1],
                timeout=0.5,
            )


def test_relay_mode_returns_the_relays_answers(zone: Zone, server: AuthServer) -> None:
    with AuthServer(relay=server.address) as relay:
        for qname, qtype in SAMPLE:
            for proto in ("udp", "tcp"):
                got = ask(relay.address, qname, qtype, proto, do=True)
                want = ask(server.address, qname, qtype, proto, do=True)
                assert got.rcode() == want.rcode() and rdata_texts(got) == rdata_texts(want)
        assert relay.count() == len(SAMPLE) * 2


# -- faults -------------------------------------------------------------------------

NAME = "host-010.example.test"


def test_fault_drop(fresh: AuthServer) -> None:
    fresh.faults[NAME] = "drop"
    for proto in ("udp", "tcp"):
        with pytest.raises(dns.exception.Timeout):
            query = dns.message.make_query(NAME, "A")
            getattr(dns.query, proto)(query, fresh.address[0], port=fresh.address[1], timeout=0.5)
    assert fresh.count(NAME) == 2  # received, just never answered
    assert ask(fresh.address, "host-011.example.test", "A").answer  # other names unaffected


def test_fault_delay_does_not_block_other_queries(fresh: AuthServer) -> None:
    fresh.faults[NAME] = "delay:1.0"
    slow_q = dns.message.make_query(NAME, "A")
    fast_q = dns.message.make_query("host-011.example.test", "A")
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as slow,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fast,
    ):
        slow.sendto(slow_q.to_wire(), fresh.address)
        fast.sendto(fast_q.to_wire(), fresh.address)
        readable, _, _ = select.select([slow, fast], [], [], TIMEOUT)
        assert readable == [fast]  # the undelayed answer overtakes the delayed one
        readable, _, _ = select.select([slow], [], [], TIMEOUT)
        assert readable == [slow]
        assert slow_q.is_response(dns.message.from_wire(slow.recv(65535)))
    assert ask(fresh.address, NAME, "A", "tcp").answer


def test_fault_garbage(fresh: AuthServer) -> None:
    fresh.faults[NAME] = "garbage"
    query = dns.message.make_query(NAME, "A")
    data, _ = raw_udp(fresh.address, query.to_wire())
    try:
        parsed = dns.message.from_wire(data)
    except dns.exception.DNSException:
        return
    assert not query.is_response(parsed)


def test_fault_wrong_id(fresh: AuthServer) -> None:
    fresh.faults[NAME] = "wrong_id"
    query = dns.message.make_query(NAME, "A")
    reply = dns.message.from_wire(raw_udp(fresh.address, query.to_wire())[0])
    assert reply.id != query.id and reply.question == query.question


def test_fault_wrong_question(fresh: AuthServer) -> None:
    fresh.faults[NAME] = "wrong_question"
    for proto in ("udp", "tcp"):
        query = dns.message.make_query(NAME, "A")
        if proto == "udp":
            reply = dns.message.from_wire(raw_udp(fresh.address, query.to_wire())[0])
        else:
            reply = raw_tcp(fresh.address, query.to_wire())
        assert reply.id == query.id and reply.question != query.question


def test_fault_other_port(fresh: AuthServer) -> None:
    fresh.faults[NAME] = "other_port"
    query = dns.message.make_query(NAME, "A")
    data, source = raw_udp(fresh.address, query.to_wire())
    assert source[1] != fresh.address[1]
    assert query.is_response(dns.message.from_wire(data))


def test_fault_tc(fresh: AuthServer) -> None:
    fresh.faults[NAME] = "tc"
    udp = ask(fresh.address, NAME, "A", "udp")
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = ask(fresh.address, NAME, "A", "tcp")
    assert not tcp.flags & dns.flags.TC and tcp.answer


@pytest.mark.parametrize("fault", ["servfail", "refused"])
def test_fault_rcodes(fresh: AuthServer, fault: str) -> None:
    fresh.faults[NAME] = fault
    for proto in ("udp", "tcp"):
        assert dns.rcode.to_text(ask(fresh.address, NAME, "A", proto).rcode()) == fault.upper()


@pytest.mark.parametrize("qtype", ["A", "AAAA", "TXT"])
def test_fault_huge(fresh: AuthServer, qtype: str) -> None:
    fresh.faults[NAME] = "huge"
    udp = ask(fresh.address, NAME, qtype, "udp")
    assert udp.flags & dns.flags.TC
    tcp = ask(fresh.address, NAME, qtype, "tcp")
    assert 50_000 < len(tcp.to_wire()) < 65_536
    assert tcp.answer[0].rdtype == dns.rdatatype.from_text(qtype)


def test_fault_truncated_packet(fresh: AuthServer) -> None:
    fresh.faults[NAME] = "truncated_packet"
    query = dns.message.make_query(NAME, "A")
    data, _ = raw_udp(fresh.address, query.to_wire())
    with socket.create_connection(fresh.address, timeout=TIMEOUT) as sock:
        wire = query.to_wire()
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", sock.recv(2, socket.MSG_WAITALL))
        tcp_data = sock.recv(length, socket.MSG_WAITALL)
    for packet in (data, tcp_data):
        assert struct.unpack("!H", packet[:2])[0] == query.id
        assert struct.unpack("!H", packet[6:8])[0] >= 1  # ANCOUNT promises a record...
        with pytest.raises(dns.exception.FormError):  # ...that is cut short
            dns.message.from_wire(packet)


def test_faults_are_per_name_and_removable(fresh: AuthServer) -> None:
    fresh.set_fault("HOST-010.example.test.", "servfail")
    assert ask(fresh.address, NAME, "A").rcode() == dns.rcode.SERVFAIL
    assert ask(fresh.address, "host-012.example.test", "A").rcode() == dns.rcode.NOERROR
    fresh.set_fault(NAME, None)
    assert ask(fresh.address, NAME, "A").rcode() == dns.rcode.NOERROR


# -- lifecycle -----------------------------------------------------------------------


def test_stop_joins_threads_and_frees_the_port(zone: Zone) -> None:
    before = threading.active_count()
    srv = AuthServer(zone).start()
    address = srv.address
    ask(address, NAME, "A", "udp")
    ask(address, NAME, "A", "tcp")
    srv.stop()
    srv.stop()  # idempotent
    assert threading.active_count() == before
    # Both sockets are closed: the same port binds again for UDP and TCP.
    with AuthServer(zone, port=address[1]) as again:
        assert again.address == address
        assert ask(address, NAME, "A").answer


def test_free_port_and_wait_for_dns(server: AuthServer) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", port))
        with pytest.raises(TimeoutError):
            wait_for_dns(("127.0.0.1", port), timeout=0.5)  # bound but silent
    # Any answer proves the server is up, even REFUSED for the root SOA.
    assert wait_for_dns(server.address, timeout=2).rcode() == dns.rcode.REFUSED


# -- Debian daemons --------------------------------------------------------------------


def _interop(zone: Zone, server: AuthServer, daemon: Daemon, cases: list) -> None:
    with daemon:
        for qname, qtype in cases:
            for proto, do in (("udp", False), ("tcp", True)):
                got = ask(daemon.address, qname, qtype, proto, do=do)
                want = ask(server.address, qname, qtype, proto, do=do)
                where = (daemon.name, qname, qtype, proto, do)
                if qname in RCODE_MAY_DIFFER:
                    assert got.rcode() in RCODE_MAY_DIFFER[qname], where
                else:
                    assert got.rcode() == want.rcode(), where
                assert rdata_texts(got) == rdata_texts(want), where
    assert daemon.stop() is not None
    assert pid_gone(daemon.pid)
    # nsd forks workers: none of them may outlive the main PID.
    assert pids_mentioning(str(daemon.workdir)) == []


#: RFC 6604 says NXDOMAIN for a CNAME to a missing name; unbound and dnsmasq say NOERROR.
RCODE_MAY_DIFFER = {
    "cname-dangling.example.test": {dns.rcode.NOERROR, dns.rcode.NXDOMAIN},
}


def _sample(zone: Zone) -> list[tuple[str, str]]:
    return SAMPLE + zone.names()[::7]


def test_nsd_serves_the_same_answers(zone: Zone, server: AuthServer, tmp_path: Path) -> None:
    require_tool("nsd")
    _interop(zone, server, nsd(zone, tmp_path), _sample(zone))


def test_unbound_serves_the_same_answers(zone: Zone, server: AuthServer, tmp_path: Path) -> None:
    require_tool("unbound")
    _interop(zone, server, unbound(zone, tmp_path), _sample(zone))


def test_dnsmasq_forwarding_to_authserver(zone: Zone, server: AuthServer, tmp_path: Path) -> None:
    require_tool("dnsmasq")
    # Without its cache: dnsmasq caches the dangling CNAME's target as NODATA.
    daemon = dnsmasq(upstream=server.address, workdir=tmp_path, cache_size=0)
    _interop(zone, server, daemon, _sample(zone))


def test_dnsmasq_serving_zone_data(zone: Zone, server: AuthServer, tmp_path: Path) -> None:
    require_tool("dnsmasq")
    # What dnsmasq can hold itself: addresses, in-zone CNAMEs, TXT, MX, SRV; no DNSSEC.
    cases = [
        ("host-005.example.test", "A"),
        ("v6-003.example.test", "AAAA"),
        ("dual-004.example.test", "A"),
        ("dual-004.example.test", "AAAA"),
        ("mail-02.example.test", "MX"),
        ("txt-07.example.test", "TXT"),
        ("_svc03._tcp.example.test", "SRV"),
        ("cname-1.example.test", "A"),
        ("cname-3.example.test", "AAAA"),
        ("many-a.example.test", "A"),
        ("nx-003.example.test", "A"),
    ]
    _interop(zone, server, dnsmasq(zone=zone, workdir=tmp_path), cases)


def test_daemon_failure_names_the_cause(zone: Zone, tmp_path: Path) -> None:
    require_tool("dnsmasq")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        daemon = dnsmasq(zone=zone, workdir=tmp_path, port=taken.getsockname()[1])
        with pytest.raises(DaemonError, match="(?i)address.*in use"):
            daemon.start(timeout=5)
    assert pid_gone(daemon.pid)


# -- SinkholeProcess, against a stand-in for `python -m resolver serve` ---------------------


def _fake(tmp_path: Path, *args: str, config: dict | None = None) -> SinkholeProcess:
    return SinkholeProcess(
        config or {"upstreams": ["127.0.0.1:1"]},
        tmp_path,
        args=list(args),
        command=[sys.executable, str(FAKE_SINKHOLE), "serve"],
    )


def test_sinkhole_process_runs_answers_reloads_and_stops(tmp_path: Path) -> None:
    proc = _fake(tmp_path)
    with proc:
        config = proc.config_path.read_text()
        assert "127.0.0.1:" in config and "metrics_listen: ''" in config
        assert str(tmp_path / "sinkhole.db") in config
        response = ask(proc.address, "chatgpt.com", "A", payload=None)
        assert {r for _, _, r in rdata_texts(response)} == {"0.0.0.0"}
        proc.reload()
        deadline = time.monotonic() + 5
        while "reloaded" not in proc.stderr_text() and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a log file: there is no event to wait on
        assert "reloaded" in proc.stderr_text()
    assert proc.stop() == 0
    assert pid_gone(proc.pid)
    assert "stopped" in proc.stderr_text()


def test_sinkhole_process_reports_an_early_exit(tmp_path: Path) -> None:
    proc = _fake(tmp_path, "--exit-early", "3")
    with pytest.raises(SinkholeStartError, match="(?s)code 3.*told to exit early"):
        proc.start()
    assert proc.process is not None and proc.process.returncode == 3


def test_sinkhole_process_reports_a_silent_server(tmp_path: Path) -> None:
    proc = _fake(tmp_path, "--never-listen")
    with pytest.raises(SinkholeStartError, match="no DNS answer"):
        proc.start(timeout=1)
    assert pid_gone(proc.pid)


def test_sinkhole_process_takes_no_query_for_an_answer(tmp_path: Path) -> None:
    # A probe that connect() autobinds to the server's own (still free) port sends to
    # itself and reads its query back: that is not a server answering.
    proc = _fake(tmp_path, "--echo")
    try:
        with pytest.raises(SinkholeStartError, match="no DNS answer"):
            proc.start(timeout=1)
        assert pid_gone(proc.pid)
    finally:
        proc.stop()


def test_sinkhole_process_moves_to_a_new_port_when_its_port_was_taken(tmp_path: Path) -> None:
    marker = tmp_path / "first-port"
    proc = _fake(tmp_path, "--in-use-once", str(marker))
    with proc:
        first = int(marker.read_text())
        assert proc.address[1] != first
        response = ask(proc.address, "chatgpt.com", "A", payload=None)
        assert {r for _, _, r in rdata_texts(response)} == {"0.0.0.0"}


def test_sinkhole_process_keeps_a_given_port_that_is_taken(tmp_path: Path) -> None:
    port = free_port()
    proc = _fake(
        tmp_path,
        "--in-use-once",
        str(tmp_path / "first-port"),
        config={"listen": [f"127.0.0.1:{port}"], "upstreams": ["127.0.0.1:1"]},
    )
    with pytest.raises(SinkholeStartError, match="address already in use"):
        proc.start()
    assert proc.address == ("127.0.0.1", port)


def test_sinkhole_process_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    proc = _fake(tmp_path, "--ignore-term").start()
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    assert pid_gone(proc.pid)


def test_sinkhole_process_keeps_given_settings(tmp_path: Path) -> None:
    port = free_port()
    proc = _fake(tmp_path, config={"listen": [f"127.0.0.1:{port}"], "database": "x.db"})
    assert proc.address == ("127.0.0.1", port)
    assert proc.config["database"] == "x.db"
    assert proc.argv[-2:] == ["--config", str(tmp_path / "sinkhole.yaml")]


# -- require_tool ---------------------------------------------------------------------------


def test_require_tool_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_tool("no-such-dns-tool-xyz")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_tool("no-such-dns-tool-xyz")
    assert require_tool("python3")
