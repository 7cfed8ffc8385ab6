"""Batched datagram I/O (resolver/batchio.py, resolver/_batchio.c) on real sockets.

Every unit test runs twice: against the C speedups (recvmmsg/sendmmsg) and against
the pure-Python loop (recvfrom/sendto) the server falls back to, with the same
expectations, because the listener's logic relies on their sharing one contract.
The server-level tests start real servers in both modes and compare their answers.
In CI the C speedups must have been built: a missing build fails, it does not skip.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from resolver import batchio
from resolver.server import UDP_MAX_QUERY
from tests.conftest import hostport, query, raw_udp
from tests.dnstest.daemons import free_port

IN_CI = os.environ.get("CI") == "true"
BLOCKED = "chatgpt.com"


def c_module():
    try:
        from resolver import _batchio
    except ImportError:
        if IN_CI:
            pytest.fail("resolver._batchio was not built (gcc and python3-dev are needed)")
        pytest.skip("resolver._batchio is not built here")
    return _batchio


class CImpl:
    name = "c"

    def __init__(self) -> None:
        self.mod = c_module()

    def recv(self, sock, n, size=UDP_MAX_QUERY):
        return self.mod.recvmmsg(sock.fileno(), n, size)

    def send(self, sock, items, start=0):
        return self.mod.sendmmsg(sock.fileno(), sock.family, items, start)


class PyImpl:
    name = "python"

    def recv(self, sock, n, size=UDP_MAX_QUERY):
        return batchio._recv_batch_py(sock, n, size)

    def send(self, sock, items, start=0):
        return batchio._send_batch_py(sock, items, start)


@pytest.fixture(params=["c", "python"])
def impl(request):
    return CImpl() if request.param == "c" else PyImpl()


def udp(family: int = socket.AF_INET) -> socket.socket:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


def recv_all(impl, sock, expected: int, n: int = 64, timeout: float = 5.0) -> list:
    """Read with impl until `expected` datagrams came (or the timeout)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        select.select([sock], [], [], 0.2)
        batch = impl.recv(sock, n)
        assert len(batch) <= n
        got.extend(batch)
    return got


# -- the choice ----------------------------------------------------------------------------


def test_the_implementation_is_chosen_by_the_environment():
    if os.environ.get(batchio.DISABLE_ENV, "") not in ("", "0"):
        assert not batchio.SPEEDUPS
        assert batchio.recv_batch is batchio._recv_batch_py
        assert batchio.DISABLE_ENV in batchio.IMPLEMENTATION
    elif IN_CI:
        c_module()  # fails when not built
        assert batchio.SPEEDUPS and "recvmmsg" in batchio.IMPLEMENTATION
    else:
        assert batchio.SPEEDUPS == (batchio._batchio is not None)


# -- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_many_datagrams_from_several_senders_come_with_their_addresses(impl, family):
    server = udp(family)
    senders = [udp(family) for _ in range(3)]
    try:
        for i in range(150):
            s = senders[i % 3]
            s.sendto(b"q%03d" % i, server.getsockname())
        got = recv_all(impl, server, 150)
        assert len(got) == 150
        assert impl.recv(server, 64) == []  # drained: EAGAIN is an empty list
        for sender in senders:
            mine = [data for data, addr in got if addr == sender.getsockname()]
            assert mine == [b"q%03d" % i for i in range(150) if senders[i % 3] is sender]
        if family == socket.AF_INET6:
            assert all(len(addr) == 4 and addr[0] == "::1" for _, addr in got)
        else:
            assert all(len(addr) == 2 and addr[0] == "127.0.0.1" for _, addr in got)
    finally:
        for s in (server, *senders):
            s.close()


def test_addresses_are_those_recvfrom_gives(impl):
    for family in (socket.AF_INET, socket.AF_INET6):
        server, sender = udp(family), udp(family)
        try:
            sender.sendto(b"one", server.getsockname())
            sender.sendto(b"two", server.getsockname())
            select.select([server], [], [], 2)
            plain = server.recvfrom(UDP_MAX_QUERY)
            (batched,) = recv_all(impl, server, 1)
            assert plain == (b"one", sender.getsockname())
            assert batched == (b"two", plain[1])
        finally:
            server.close()
            sender.close()


def test_no_more_than_asked_is_read(impl):
    server, sender = udp(), udp()
    try:
        for i in range(10):
            sender.sendto(bytes([i]), server.getsockname())
        select.select([server], [], [], 2)
        time.sleep(0.05)
        first = impl.recv(server, 3)
        assert [d for d, _ in first] == [b"\x00", b"\x01", b"\x02"]
        rest = recv_all(impl, server, 7)
        assert [d for d, _ in rest] == [bytes([i]) for i in range(3, 10)]
    finally:
        server.close()
        sender.close()


def test_zero_length_datagrams_are_read_as_empty_bytes(impl):
    server, sender = udp(), udp()
    try:
        sender.sendto(b"", server.getsockname())
        sender.sendto(b"after", server.getsockname())
        got = recv_all(impl, server, 2)
        assert got == [(b"", sender.getsockname()), (b"after", sender.getsockname())]
    finally:
        server.close()
        sender.close()


@pytest.mark.parametrize("size", [UDP_MAX_QUERY, UDP_MAX_QUERY + 1, 5000, 65_507])
def test_oversized_datagrams_are_truncated_as_recvfrom_truncates_them(impl, size):
    server, sender = udp(), udp()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    payload = os.urandom(size)
    try:
        sender.sendto(payload, server.getsockname())
        sender.sendto(payload, server.getsockname())
        select.select([server], [], [], 2)
        plain, _ = server.recvfrom(UDP_MAX_QUERY)
        ((data, addr),) = recv_all(impl, server, 1)
        assert data == plain == payload[:UDP_MAX_QUERY]
        assert addr == sender.getsockname()
        assert impl.recv(server, 8) == []  # the rest of it is gone, not a second datagram
    finally:
        server.close()
        sender.close()


def test_an_icmp_error_is_raised_alone_and_reading_goes_on(impl):
    # A connected UDP socket is told of the port unreachable its datagram met.
    dead = free_port()
    s = udp()
    try:
        s.connect(("127.0.0.1", dead))
        s.send(b"anyone?")
        select.select([s], [], [], 2)
        with pytest.raises(ConnectionRefusedError):
            impl.recv(s, 16)
        assert impl.recv(s, 16) == []
    finally:
        s.close()


def test_a_closed_socket_raises_ebadf(impl):
    s = udp()
    peer = s.getsockname()
    s.close()
    with pytest.raises(OSError) as exc:
        impl.recv(s, 4)
    assert exc.value.errno == errno.EBADF
    with pytest.raises(OSError) as exc:
        impl.send(s, [(b"x", peer)])
    assert exc.value.errno == errno.EBADF


# -- sending ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_a_list_goes_out_in_order_to_each_address(impl, family):
    a, b, sender = udp(family), udp(family), udp(family)
    try:
        items = [(b"m%03d" % i, (a if i % 2 else b).getsockname()) for i in range(200)]
        sent = 0
        while sent < len(items):
            sent += impl.send(sender, items, sent)
        assert sent == 200
        assert [d for d, _ in recv_all(PyImpl(), a, 100)] == [d for d, x in items[1::2]]
        assert [d for d, _ in recv_all(PyImpl(), b, 100)] == [d for d, x in items[0::2]]
        assert impl.send(sender, items, 200) == 0
        assert impl.send(sender, items, 199) == 1
    finally:
        for s in (a, b, sender):
            s.close()


def test_one_host_object_with_many_ports_reaches_each_port(impl):
    # recvmmsg hands out one str per host for a wake-up's datagrams, and sendmmsg reads
    # only the port of an address whose host is the object the one before had.
    receivers = [udp() for _ in range(3)]
    sender = udp()
    host = "127.0.0.1"
    try:
        ports = [r.getsockname()[1] for r in receivers]
        items = [(b"p%02d" % i, (host, ports[i % 3])) for i in range(30)]
        assert impl.send(sender, items, 0) == 30
        for k, r in enumerate(receivers):
            assert [d for d, _ in recv_all(PyImpl(), r, 10)] == [d for d, _ in items[k::3]]
        # A bad port after a good one of the same host fails as sendto fails, alone.
        bad = [(b"a", (host, ports[0])), (b"b", (host, 70000)), (b"c", (host, ports[1]))]
        with pytest.raises(OverflowError):
            impl.send(sender, bad, 1)
        assert impl.send(sender, bad, 2) == 1
        assert [d for d, _ in recv_all(PyImpl(), receivers[1], 1)] == [b"c"]
    finally:
        for s in (*receivers, sender):
            s.close()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_no_address_sends_to_a_connected_sockets_peer(impl, family):
    peer, other, sender = udp(family), udp(family), udp(family)
    try:
        sender.connect(peer.getsockname())
        items = [(b"c%02d" % i, None) for i in range(20)]
        items.insert(10, (b"elsewhere", other.getsockname()))  # an address still wins
        sent = 0
        while sent < len(items):
            sent += impl.send(sender, items, sent)
        got = recv_all(PyImpl(), peer, 20)
        assert [d for d, _ in got] == [b"c%02d" % i for i in range(20)]
        assert {addr[:2] for _, addr in got} == {sender.getsockname()[:2]}
        assert [d for d, _ in recv_all(PyImpl(), other, 1)] == [b"elsewhere"]
    finally:
        for s in (peer, other, sender):
            s.close()


def test_an_unconnected_socket_cannot_send_without_an_address(impl):
    sender = udp()
    try:
        with pytest.raises(OSError) as caught:
            impl.send(sender, [(b"x", None)], 0)
        assert caught.value.errno in (errno.EDESTADDRREQ, errno.ENOTCONN)
    finally:
        sender.close()


def test_an_unreachable_address_fails_alone(impl):
    good, sender = udp(), udp()
    try:
        items = [(b"1", good.getsockname()), (b"2", ("127.0.0.1", 0)), (b"3", good.getsockname())]
        assert impl.send(sender, items, 0) == 1  # what went before the bad one
        with pytest.raises(OSError):
            impl.send(sender, items, 1)  # the bad one first: its error
        assert impl.send(sender, items, 2) == 1
        assert [d for d, _ in recv_all(PyImpl(), good, 2)] == [b"1", b"3"]
    finally:
        good.close()
        sender.close()


def test_a_full_send_buffer_takes_what_fits_then_blocks(impl, tmp_path: Path):
    # Over loopback UDP the kernel never holds a datagram back (it drops at the
    # receiver), so a full send buffer is made where it exists: a datagram socket
    # whose receiver does not read.
    path = str(tmp_path / "slow.sock")
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    slow.bind(path)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.setblocking(False)
    try:
        items = [(b"%04d" % i + b"x" * 500, path) for i in range(2000)]
        sent = 0
        with pytest.raises(BlockingIOError):
            while True:
                sent += impl.send(sender, items, sent)
        assert 0 < sent < len(items)
        slow.setblocking(False)
        drained = recv_all(PyImpl(), slow, sent, n=256)
        assert [d for d, _ in drained] == [d for d, _ in items[:sent]]
        assert impl.send(sender, items, sent) >= 1  # room again: the rest goes on from there
    finally:
        slow.close()
        sender.close()


class _Echo:
    """The listener's server, answering each datagram with "A" and the datagram: what
    is under test here is the listener's reading, sending and holding back."""

    class resolver:  # noqa: N801 - the attribute the listener reads
        @staticmethod
        def handle(data: bytes, client: str, sink: object, addr: object) -> bytes:
            return b"A" + data


def test_the_listener_answers_lone_datagrams_and_bursts_in_order_through_a_full_buffer(
    impl, tmp_path: Path, monkeypatch
):
    """One datagram per wake-up takes the plain path (recvfrom, sendto), a burst the
    batches; a client that does not read fills the send buffer, and every answer, from
    either path, waits in the backlog and then goes out in the order asked."""
    import asyncio

    from resolver import server as server_mod

    # The one socket whose send buffer fills is AF_UNIX, whose senders the C recvmmsg
    # does not name (the server listens on IP only): reading is the Python loop's in
    # both runs, sending is the implementation's.
    monkeypatch.setattr(server_mod, "recv_batch", batchio._recv_batch_py)
    if impl.name == "c":
        monkeypatch.setattr(
            server_mod, "send_batch", lambda sock, items, start: impl.send(sock, items, start)
        )
    else:
        monkeypatch.setattr(server_mod, "send_batch", batchio._send_batch_py)
    client_path, server_path = str(tmp_path / "client.sock"), str(tmp_path / "server.sock")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.bind(client_path)
    client.setblocking(False)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(server_path)
    sock.setblocking(False)
    sent: list[bytes] = []
    modes: list[tuple[int, bool]] = []

    async def settle() -> None:
        for _ in range(20):  # a few turns of the loop: the wake-up and its batches
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)

    async def run() -> server_mod.UdpListener:
        listener = server_mod.UdpListener(_Echo(), sock)
        assert listener.lone
        i = 0
        # Lone datagrams until the kernel holds the answers back, then bursts.
        while not listener.backlog:
            sent.append(b"%05d" % i + b"x" * 400)
            client.sendto(sent[-1], server_path)
            i += 1
            await settle()
            modes.append((1, listener.lone))
            assert i < 5000, "the send buffer never filled"
        for burst in (8, 1, 8, 1):  # within net.unix.max_dgram_qlen (10 by default)
            for _ in range(burst):
                sent.append(b"%05d" % i + b"x" * 400)
                client.sendto(sent[-1], server_path)
                i += 1
            await settle()
            modes.append((burst, listener.lone))
        # Room for a few answers and a new question, read before the backlog's writer
        # had its turn (the wake-up called here, as the loop would): the new answer,
        # which the kernel would take now, still goes behind those held back.
        assert listener.lone and listener.backlog
        got: list[bytes] = [client.recv(1000) for _ in range(3)]
        sent.append(b"%05d" % i + b"x" * 400)
        client.sendto(sent[-1], server_path)
        listener._readable()
        await settle()
        # The client reads on: the backlog drains as room comes.
        deadline = time.monotonic() + 10
        while len(got) < len(sent) and time.monotonic() < deadline:
            try:
                got.append(client.recv(1000))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        assert got == [b"A" + d for d in sent]
        assert not listener.backlog
        return listener

    loop = asyncio.new_event_loop()
    try:
        listener = loop.run_until_complete(run())
        listener.close()
    finally:
        loop.close()
        client.close()
    # After a lone datagram the listener stays on the plain path; a burst moves it to
    # batches, and the next lone datagram back.
    assert all(lone for n, lone in modes if n == 1)
    assert [lone for n, lone in modes if n > 1] == [False, False]


def test_the_c_code_takes_only_numeric_addresses_and_bytes_likes():
    mod = c_module()
    s = udp()
    try:
        with pytest.raises(ValueError):
            mod.sendmmsg(s.fileno(), s.family, [(b"x", ("localhost", 53))], 0)
        with pytest.raises(TypeError):
            mod.sendmmsg(s.fileno(), s.family, [("text", ("127.0.0.1", 53))], 0)
        with pytest.raises(OverflowError):
            mod.sendmmsg(s.fileno(), s.family, [(b"x", ("127.0.0.1", 70000))], 0)
        with pytest.raises(IndexError):
            mod.sendmmsg(s.fileno(), s.family, [], 1)
        with pytest.raises(ValueError):
            mod.recvmmsg(s.fileno(), 0, 512)
        with pytest.raises(ValueError):
            mod.recvmmsg(s.fileno(), 8, 0)
        assert mod.sendmmsg(s.fileno(), s.family, [(memoryview(b"ok"), s.getsockname())], 0) == 1
        assert recv_all(CImpl(), s, 1) == [(b"ok", s.getsockname())]
    finally:
        s.close()


# -- the server in both modes ---------------------------------------------------------------

MODES = {"speedups": {batchio.DISABLE_ENV: "0"}, "fallback": {batchio.DISABLE_ENV: "1"}}


def start(sinkhole, mode: str, config: dict | None = None):
    server = sinkhole(config, env=MODES[mode])
    text = server.stderr_text()
    if mode == "fallback":
        assert f"udp datagram i/o: recvfrom/sendto loop ({batchio.DISABLE_ENV} is set)" in text
    elif IN_CI or batchio._batchio is not None:
        assert "udp datagram i/o: recvmmsg/sendmmsg (C speedups)" in text
    return server


def ask(name: str, qid: int, rdtype: str = "A") -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=0)
    q.id = qid
    return q.to_wire()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_a_burst_from_several_clients_is_answered_in_full(sinkhole, mode, family):
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    server = start(sinkhole, mode, {"listen": [hostport((host, free_port()))]})
    clients = [udp(family) for _ in range(4)]
    try:
        for c in clients:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for i in range(400):  # sent before any answer is read: many per wake-up
            name = f"x{i}.{BLOCKED}"
            clients[i % 4].sendto(ask(name, i, "A" if i % 3 else "AAAA"), server.address)
        for k, c in enumerate(clients):
            answers = [dns.message.from_wire(d) for d, _ in recv_all(PyImpl(), c, 100)]
            assert sorted(a.id for a in answers) == list(range(k, 400, 4))
            for a in answers:
                assert a.question[0].name.to_text() == f"x{a.id}.{BLOCKED}."
                assert a.answer[0][0].address in ("0.0.0.0", "::")
    finally:
        for c in clients:
            c.close()


def padded(wire: bytes, size: int) -> bytes:
    return wire + b"\x00" * (size - len(wire))


HOSTILE = [
    b"",
    b"\x12",
    b"\xff" * 12,
    padded(ask(BLOCKED, 0x1111), UDP_MAX_QUERY),  # trailing bytes, within the limit
    padded(ask(BLOCKED, 0x2222), UDP_MAX_QUERY + 1),  # one byte over: truncated
    padded(ask(BLOCKED, 0x3333), 65_000),
    ask(BLOCKED, 0x4444) + struct.pack("!H", 0) * 3000,
]


def test_both_modes_answer_hostile_datagrams_alike(sinkhole):
    servers = {mode: start(sinkhole, mode) for mode in MODES}
    for packet in HOSTILE:
        answers = {mode: raw_udp(s.address, packet, timeout=0.5) for mode, s in servers.items()}
        assert answers["speedups"] == answers["fallback"], packet[:16]
        if len(packet) > UDP_MAX_QUERY:
            # A datagram over the limit is answered as its first UDP_MAX_QUERY bytes are.
            cut = raw_udp(servers["speedups"].address, packet[:UDP_MAX_QUERY], timeout=0.5)
            assert answers["speedups"] == cut
        if answers["speedups"] is not None:
            r = dns.message.from_wire(answers["speedups"], ignore_trailing=True)
            assert r.id == struct.unpack("!H", packet[:2])[0]
        for s in servers.values():
            assert query(s.address, BLOCKED).answer[0][0].address == "0.0.0.0"


def test_a_forwarded_name_comes_back_in_both_modes(sinkhole):
    for mode in MODES:
        server = start(sinkhole, mode)
        r = query(server.address, "host-030.example.test")
        assert r.rcode() == dns.rcode.NOERROR and r.answer
