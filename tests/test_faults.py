"""Upstream faults on the real server: nothing spoofed accepted, SERVFAIL in budget, failover."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.rcode
import pytest
from dnslib import QTYPE, RR, A, DNSQuestion, DNSRecord

from tests.conftest import hostport, query
from tests.dnstest.authserver import AuthServer
from tests.dnstest.daemons import free_port

BLOCKED = "chatgpt.com"
BUDGET = 2.0
#: SERVFAIL must come within the budget; this much on top covers process scheduling.
BUDGET_SLACK = 1.0


def blocked_still_works(server) -> None:
    for tcp in (False, True):
        assert query(server.address, BLOCKED, tcp=tcp).answer[0][0].address == "0.0.0.0"


class UdpPeer:
    """A bound loopback UDP socket served by a thread until close(); subclasses say how."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.datagram(data, addr)

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class Blackhole(UdpPeer):
    """Never answers; counts what it receives."""

    received = 0

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    try:
        yield hole
    finally:
        hole.close()


# -- each fault of our test upstream -------------------------------------------------------


@pytest.mark.parametrize(
    "fault", ["drop", "garbage", "wrong_id", "wrong_question", "other_port", "truncated_packet"]
)
def test_spoofed_or_broken_answers_are_never_accepted_nor_cached(sinkhole, upstream, fault):
    server = sinkhole()
    name = "host-040.example.test"
    upstream.set_fault(name, fault)
    # RFC 5452 9.1: an answer from the wrong port, with the wrong ID or for another
    # question is ignored; nothing else comes, so SERVFAIL within the budget: a client
    # that waits no longer than the budget and some slack gets it, never a timeout.
    r = query(server.address, name, timeout=BUDGET + BUDGET_SLACK)
    assert r.rcode() == dns.rcode.SERVFAIL and not r.answer
    blocked_still_works(server)
    # Nothing of the attempt was cached: the fixed upstream is asked, its answer kept.
    upstream.set_fault(name, None)
    before = upstream.count(qname=name)
    r = query(server.address, name)
    assert [rd.address for rd in r.answer[0]] == ["192.0.2.42"]
    assert upstream.count(qname=name) == before + 1
    assert query(server.address, name).answer[0][0].address == "192.0.2.42"
    assert upstream.count(qname=name) == before + 1


@pytest.mark.parametrize("fault", ["servfail", "refused"])
def test_upstream_errors_are_passed_on_not_cached(sinkhole, upstream, fault):
    server = sinkhole()
    name = "host-041.example.test"
    upstream.set_fault(name, fault)
    for _ in range(2):
        r = query(server.address, name)
        assert r.rcode() in (dns.rcode.SERVFAIL, dns.rcode.REFUSED) and not r.answer
    asked = upstream.count(qname=name)
    assert asked >= 2  # the error was not served from the cache
    upstream.set_fault(name, None)
    assert query(server.address, name).answer[0][0].address == "192.0.2.43"


def test_slow_upstream_within_the_budget_still_answers(sinkhole, upstream):
    server = sinkhole()
    upstream.set_fault("host-042.example.test", "delay:1.5")
    r = query(server.address, "host-042.example.test", timeout=6)
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "192.0.2.44"


def test_tc_from_upstream_is_retried_over_tcp(sinkhole, upstream):
    server = sinkhole()
    upstream.set_fault("host-043.example.test", "tc")
    r = query(server.address, "host-043.example.test")
    assert not r.flags & dns.flags.TC and r.answer[0][0].address == "192.0.2.45"
    assert upstream.log.snapshot()[-1][2] == "tcp"


def test_huge_answer_truncated_over_udp_complete_over_tcp(sinkhole, upstream):
    server = sinkhole()
    name = "host-044.example.test"
    upstream.set_fault(name, "huge")
    udp = query(server.address, name)
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = query(server.address, name, tcp=True)
    direct = query(upstream.address, name, tcp=True)
    assert len(tcp.answer[0]) == len(direct.answer[0]) > 3000


def test_one_slow_name_does_not_delay_others(sinkhole, upstream):
    server = sinkhole()
    upstream.set_fault("host-045.example.test", "delay:1.5")
    done: list[str] = []

    def slow() -> None:
        query(server.address, "host-045.example.test", timeout=6)
        done.append("slow")

    t = threading.Thread(target=slow)
    t.start()
    try:
        time.sleep(0.1)
        for i in range(5):
            assert query(server.address, f"host-{50 + i:03d}.example.test").answer
            done.append("fast")
    finally:
        t.join(10)
    assert done[:5] == ["fast"] * 5 and done[5] == "slow"


def test_identical_client_retries_are_not_multiplied_upstream(sinkhole, upstream):
    server = sinkhole()
    name = "host-046.example.test"
    upstream.set_fault(name, "delay:1.0")
    answers: list[dns.message.Message] = []

    def ask() -> None:
        answers.append(query(server.address, name, timeout=6))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(answers) == 20 and all(a.answer[0][0].address == "192.0.2.48" for a in answers)
    # One exchange: the first attempt and at most one retry before the delayed answer.
    assert 1 <= upstream.count(qname=name) <= 2


# -- whole upstreams down --------------------------------------------------------------------


def test_closed_port_only_upstream_servfails_fast_and_blocking_goes_on(sinkhole):
    server = sinkhole({"upstreams": [f"127.0.0.1:{free_port()}"]}, start=False)
    server.probe_name = BLOCKED
    server.start()
    r = query(server.address, "host-047.example.test", timeout=BUDGET + BUDGET_SLACK)
    assert r.rcode() == dns.rcode.SERVFAIL
    blocked_still_works(server)


def test_every_upstream_blackholed_servfails_within_budget(sinkhole, blackhole):
    other = Blackhole()
    try:
        server = sinkhole(
            {"upstreams": [hostport(blackhole.address), hostport(other.address)]}, start=False
        )
        server.probe_name = BLOCKED
        server.start()
        for i in range(3):
            r = query(
                server.address, f"host-{60 + i:03d}.example.test", timeout=BUDGET + BUDGET_SLACK
            )
            assert r.rcode() == dns.rcode.SERVFAIL
        blocked_still_works(server)
    finally:
        other.close()


def test_dead_first_upstream_is_skipped_then_retried_later(sinkhole, upstream, blackhole):
    server = sinkhole({"upstreams": [hostport(blackhole.address), hostport(upstream.address)]})
    for i in range(12):
        assert query(server.address, f"host-{70 + i:03d}.example.test").answer
    # After a few timeouts the silent upstream is put last: the rest skip it.
    asked_early = blackhole.received
    assert 1 <= asked_early <= 4
    time.sleep(2.5)  # past the first backoff (upstream.BACKOFF_START)
    assert query(server.address, "host-090.example.test").answer
    assert blackhole.received > asked_early  # tried again: it may have come back


def test_upstream_recovers_without_restart(sinkhole, zone):
    port = free_port()
    server = sinkhole({"upstreams": [f"127.0.0.1:{port}"]}, start=False)
    server.probe_name = BLOCKED
    server.start()
    for _ in range(4):  # enough failures to be put in backoff
        assert query(server.address, "host-091.example.test", timeout=6).rcode() == (
            dns.rcode.SERVFAIL
        )
    with AuthServer(zone, port=port):
        deadline = time.monotonic() + 10
        r = None
        while time.monotonic() < deadline:
            r = query(server.address, "host-092.example.test", timeout=6)
            if r.rcode() == dns.rcode.NOERROR:
                break
            time.sleep(0.2)
        assert r is not None and r.answer[0][0].address == "192.0.2.94"


def test_forwarding_loop_to_ourselves_fails_cleanly(sinkhole):
    port = free_port()
    me = f"127.0.0.1:{port}"
    server = sinkhole({"listen": [me], "upstreams": [me]}, start=False)
    server.probe_name = BLOCKED
    server.start()
    for i in range(3):
        r = query(server.address, f"loop-{i}.example.test", timeout=BUDGET + BUDGET_SLACK)
        assert r.rcode() == dns.rcode.SERVFAIL
    blocked_still_works(server)
    assert server.process.poll() is None
    assert "this server's own address" in server.stderr_text()


# -- an attacker racing the real answer ---------------------------------------------------------


class SpoofRace(UdpPeer):
    """An upstream that first sends forged answers (every way), then the real one."""

    FORGED = "6.6.6.6"
    REAL = "192.0.2.77"
    queries = 0

    def _answer(
        self, request: DNSRecord, address: str, ident: int | None = None, qname: str | None = None
    ) -> bytes:
        reply = request.reply()
        if ident is not None:
            reply.header.id = ident
        name = qname or str(request.q.qname)
        if qname is not None:
            reply.questions = [DNSQuestion(qname, QTYPE.A)]
        reply.add_answer(RR(name, QTYPE.A, ttl=300, rdata=A(address)))
        return reply.pack()

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        req = DNSRecord.parse(data)
        real_id = req.header.id
        forged = [
            self._answer(req, self.FORGED, ident=real_id ^ 0x0101),
            self._answer(req, self.FORGED, qname="other." + str(req.q.qname)),
            b"\x00" * 3,
            data[:2] + b"\x81\x80" + b"\xff" * 40,
        ]
        for packet in forged:
            self.sock.sendto(packet, addr)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.bind(("127.0.0.1", 0))
            other.sendto(self._answer(req, self.FORGED), addr)  # right ID, wrong port
        time.sleep(0.05)
        self.sock.sendto(self._answer(req, self.REAL), addr)


def test_forged_answers_lose_the_race_and_the_real_one_is_cached(sinkhole):
    race = SpoofRace()
    try:
        server = sinkhole({"upstreams": [hostport(race.address)]}, start=False)
        server.probe_name = BLOCKED
        server.start()
        for tcp in (False, True, False):
            r = query(server.address, "target.example.test", tcp=tcp)
            assert [rd.address for rd in r.answer[0]] == [SpoofRace.REAL]
        assert race.queries == 1  # the real answer was cached, the forgeries never
    finally:
        race.close()
