"""The upstream sockets on the real server: random ports and IDs, shared sockets bounded,
and nothing spoofed accepted on a shared socket (RFC 5452).

A query goes upstream on a connected UDP socket that the queries sent to that upstream
within its first SOCKET_QUERIES queries and SOCKET_AGE seconds share (ARCHITECTURE.md,
"Upstream sockets"). These tests watch what an upstream sees: the source ports and IDs,
how many queries one port carries, and what an attacker who knows a shared port and the
IDs waiting on it can get accepted (nothing). `make test` runs this file again without
the C speedups.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Iterator

import dns.message
import dns.rcode
import pytest
from dnslib import QTYPE, RR, A, DNSQuestion, DNSRecord

from resolver.upstream import SOCKET_AGE, SOCKET_QUERIES
from tests.conftest import hostport, query
from tests.dnstest.daemons import free_port
from tests.test_faults import UdpPeer

BLOCKED = "chatgpt.com"
REAL = "192.0.2.80"
FORGED = "6.6.6.6"


class Recorder(UdpPeer):
    """An upstream that notes (source port, ID, name) of every query and answers it
    with REAL, at once or, for names given in `hold`, when the test releases it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[int, int, str]] = []
        self.held: dict[str, tuple[DNSRecord, tuple[str, int]]] = {}
        self.hold: set[str] = set()
        #: called (under no lock) with the held queries once all of `hold` arrived
        self.on_held = None
        super().__init__()  # starts the thread: the state above must be there first

    def answer(self, request: DNSRecord, address: str = REAL, **kw) -> bytes:
        reply = request.reply()
        if "ident" in kw:
            reply.header.id = kw["ident"]
        name = str(request.q.qname)
        if "qname" in kw:
            name = kw["qname"]
            reply.questions = [DNSQuestion(name, QTYPE.A)]
        reply.add_answer(RR(name, QTYPE.A, ttl=300, rdata=A(address)))
        return reply.pack()

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        request = DNSRecord.parse(data)
        name = str(request.q.qname).rstrip(".").lower()
        with self.lock:
            self.seen.append((addr[1], request.header.id, name))
            if name not in self.hold:
                self.sock.sendto(self.answer(request), addr)
                return
            self.held[name] = (request, addr)
            ready = set(self.held) == self.hold
        if ready and self.on_held is not None:
            self.on_held(dict(self.held))

    def ports(self, names: set[str] | None = None) -> list[int]:
        with self.lock:
            return [port for port, _, name in self.seen if names is None or name in names]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    peer = Recorder()
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
def server(sinkhole, recorder):
    proc = sinkhole({"upstreams": [hostport(recorder.address)]}, start=False)
    proc.probe_name = BLOCKED  # the upstream here knows no zone: probe with a local answer
    proc.start()
    return proc


def burst(address: tuple[str, int], names: list[str], timeout: float = 5.0) -> dict[str, str]:
    """Send a query for every name at once from one socket; name -> first A (or rcode)."""
    host, port = address
    answers: dict[str, str] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        ids = {}
        for i, name in enumerate(names):
            q = dns.message.make_query(name, "A")
            q.id = i + 1
            ids[q.id] = name
            s.sendto(q.to_wire(), (host, port))
        deadline = time.monotonic() + timeout
        while len(answers) < len(names) and time.monotonic() < deadline:
            try:
                data, _ = s.recvfrom(65535)
            except TimeoutError:
                continue
            r = dns.message.from_wire(data)
            answers[ids[r.id]] = (
                r.answer[0][0].address if r.answer else dns.rcode.to_text(r.rcode())
            )
    return answers


def test_ports_and_ids_vary_and_no_port_carries_more_than_its_share(server, recorder):
    names = [f"burst-{i}.example.test" for i in range(300)]
    answers: dict[str, str] = {}
    for wave in range(0, len(names), 60):  # waves that no socket buffer drops
        answers |= burst(server.address, names[wave : wave + 60])
    assert answers == dict.fromkeys(names, REAL)
    with recorder.lock:
        seen = list(recorder.seen)
    assert len(seen) == len(names)
    per_port = collections.Counter(port for port, _, _ in seen)
    # Each port carried at most SOCKET_QUERIES queries, so there were at least that many
    # ports; the kernel picked them (random ephemeral ports, never one fixed port).
    assert max(per_port.values()) <= SOCKET_QUERIES
    assert len(per_port) >= -(-len(names) // SOCKET_QUERIES)
    # IDs: unique among the queries of a port, random across all (a 16-bit draw each:
    # 300 of them collide about once; a counter or a fixed ID would fail here).
    by_port = collections.defaultdict(list)
    for port, ident, _ in seen:
        by_port[port].append(ident)
    assert all(len(ids) == len(set(ids)) for ids in by_port.values())
    ids = [ident for _, ident, _ in seen]
    assert len(set(ids)) >= len(ids) - 5
    steps = {(b - a) % 65536 for a, b in zip(ids, ids[1:], strict=False)}
    assert len(steps) > len(ids) // 2


def test_one_query_at_a_time_gets_a_fresh_port_each(server, recorder):
    # A socket closes as soon as no query waits on it: at low load, a port per query.
    names = [f"alone-{i}.example.test" for i in range(20)]
    for name in names:
        assert query(server.address, name).answer[0][0].address == REAL
    ports = recorder.ports(set(names))
    assert len(ports) == len(names)
    assert len(set(ports)) >= len(names) - 2  # two random draws may meet, rarely


def test_a_socket_takes_no_new_query_after_its_age(server, recorder):
    slow, later = "slow.example.test", "later.example.test"
    recorder.hold = {slow}  # never answered: its socket stays open for the 2 s budget
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        q = dns.message.make_query(slow, "A")
        s.sendto(q.to_wire(), server.address)
        time.sleep(SOCKET_AGE + 0.3)
        # The slow query (and its retry) still wait on their socket, but that socket is
        # too old to take a new query: the next one opens another, on another port.
        assert query(server.address, later).answer[0][0].address == REAL
    slow_ports = set(recorder.ports({slow}))
    (later_port,) = recorder.ports({later})
    assert slow_ports and later_port not in slow_ports


class Crosser(Recorder):
    """Holds two queries that share a port, then sends every forgery an attacker who
    knows that port and both IDs could send, then the real answers."""

    def __init__(self, names: tuple[str, str]) -> None:
        super().__init__()
        self.hold = set(names)
        self.names = names
        self.same_port = None
        self.on_held = self.cross

    def cross(self, held: dict[str, tuple[DNSRecord, tuple[str, int]]]) -> None:
        (r1, a1), (r2, a2) = held[self.names[0]], held[self.names[1]]
        self.same_port = a1 == a2
        id1, id2 = r1.header.id, r2.header.id
        unused = next(i for i in range(1, 65536) if i not in (id1, id2))
        forged = [
            (self.answer(r1, FORGED, ident=id2), a1),  # name 1's answer under name 2's ID
            (self.answer(r2, FORGED, ident=id1), a2),  # and the other way round
            (self.answer(r1, FORGED, ident=unused), a1),  # an ID no query waits for
            (self.answer(r1, FORGED, qname="other." + self.names[0]), a1),  # another name
            (b"\x00", a1),  # too short for an ID
        ]
        for packet, addr in forged:
            self.sock.sendto(packet, addr)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.bind(("127.0.0.1", 0))  # right ID and question, wrong source port
            other.sendto(self.answer(r1, FORGED), a1)
            other.sendto(self.answer(r2, FORGED), a2)
        time.sleep(0.05)
        self.sock.sendto(self.answer(r1), a1)
        self.sock.sendto(self.answer(r2), a2)


def test_forgeries_on_a_shared_socket_are_ignored_and_the_real_answers_win(sinkhole):
    names = ("first.example.test", "second.example.test")
    peer = Crosser(names)
    try:
        server = sinkhole({"upstreams": [hostport(peer.address)]}, start=False)
        server.probe_name = BLOCKED
        server.start()
        answers = burst(server.address, list(names))
        assert peer.same_port is True  # the two queries did share a socket
        assert answers == dict.fromkeys(names, REAL)
        # The real answers were cached, the forgeries never: asked again (the same way),
        # nothing goes upstream.
        assert burst(server.address, list(names)) == dict.fromkeys(names, REAL)
        assert len(peer.ports()) == 2
    finally:
        peer.close()


def test_a_closed_port_fails_over_every_query_of_a_shared_socket(sinkhole, upstream):
    dead = free_port()  # nothing listens: ICMP port unreachable
    server = sinkhole({"upstreams": [f"127.0.0.1:{dead}", hostport(upstream.address)]})
    names = [f"host-{i:03d}.example.test" for i in range(60, 120)]
    answers = burst(server.address, names)
    # Each its own address from the second upstream, none a SERVFAIL.
    assert answers == {n: f"192.0.2.{i + 2}" for i, n in zip(range(60, 120), names, strict=True)}
    assert all(upstream.count(qname=n) >= 1 for n in names)
