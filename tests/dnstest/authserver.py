"""An in-process authoritative DNS server on loopback for tests, with injectable faults."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import struct
import threading
from collections.abc import Iterator
from types import TracebackType

import dnslib
from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSHeader, DNSQuestion, DNSRecord

from .zone import Zone, normalize

MIN_UDP_SIZE = 512  #: RFC 1035 limit for a query without EDNS
SERVER_UDP_SIZE = 1232  #: the EDNS size we advertise (DNS flag day 2020)
RELAY_TIMEOUT = 3.0
HANDLER_THREADS = 16  #: handle() runs here, so a slow relay or override blocks no other query
TCP_IDLE_TIMEOUT = 10.0
BIND_ATTEMPTS = 50
HUGE_TARGET_BYTES = 60_000
FAULTS = (
    "drop",
    "delay:SECONDS",
    "garbage",
    "wrong_id",
    "wrong_question",
    "other_port",
    "tc",
    "servfail",
    "refused",
    "huge",
    "truncated_packet",
)

LogEntry = tuple[str, str, str, bool]


class QueryLog:
    """Thread-safe record of (qname_lower, qtype_name, proto, do_bit) for each query received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[LogEntry] = []

    def append(self, entry: LogEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    def snapshot(self) -> list[LogEntry]:
        """A copy of the entries so far."""
        with self._lock:
            return list(self._entries)

    def count(self, qname: str | None = None, qtype: str | None = None) -> int:
        """How many queries matched QNAME and QTYPE (None matches any)."""
        name = normalize(qname) if qname is not None else None
        kind = qtype.upper() if qtype is not None else None
        return sum(
            1
            for q, t, _, _ in self.snapshot()
            if (name is None or q == name) and (kind is None or t == kind)
        )

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __iter__(self) -> Iterator[LogEntry]:
        return iter(self.snapshot())

    def __getitem__(self, index: int) -> LogEntry:
        with self._lock:
            return self._entries[index]


def _edns_size(request: DNSRecord) -> int | None:
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(MIN_UDP_SIZE, rr.edns_len)
    return None


def do_bit(request: DNSRecord) -> bool:
    """True when the query carries EDNS with the DNSSEC OK bit (RFC 3225)."""
    return any(rr.rtype == QTYPE.OPT and rr.ttl & 0x8000 for rr in request.ar)


def truncated(reply: DNSRecord) -> DNSRecord:
    """The same reply with TC=1 and no records but the OPT (RFC 2181 9)."""
    out = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap), q=reply.q)
    out.header.tc = 1
    out.ar = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
    return out


class AuthServer:
    """An authoritative DNS server for tests on 127.0.0.1 (UDP and TCP on one port), in a thread."""

    def __init__(
        self,
        zone: Zone | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        relay: tuple[str, int] | None = None,
    ) -> None:
        self.zone = zone
        self.host = host
        self.port = port
        self.relay = relay
        #: lowercased qname (no trailing dot) -> fault name; tests may change it at any time
        self.faults: dict[str, str] = {}
        self.log = QueryLog()
        self._udp_sock: socket.socket | None = None
        self._tcp_sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) where the server listens for both UDP and TCP."""
        if self._udp_sock is None:
            raise RuntimeError("AuthServer is not started")
        return self.host, self._udp_sock.getsockname()[1]

    def _bind(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        last_error: OSError | None = None
        # Port 0 picks a UDP port; the TCP side may find it taken, so try again.
        for _ in range(BIND_ATTEMPTS if self.port == 0 else 1):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                udp.bind((self.host, self.port))
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.host, udp.getsockname()[1]))
                tcp.listen(128)
            except OSError as exc:
                udp.close()
                tcp.close()
                last_error = exc
                continue
            udp.setblocking(False)
            tcp.setblocking(False)
            self._udp_sock, self._tcp_sock = udp, tcp
            return
        raise OSError(f"cannot bind UDP and TCP on {self.host}:{self.port}: {last_error}")

    def start(self) -> AuthServer:
        """Bind, start the serving thread and return once queries are answered."""
        if self._thread is not None:
            raise RuntimeError("AuthServer already started")
        self._bind()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            HANDLER_THREADS, thread_name_prefix="authserver-handle"
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="authserver", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self.stop()
            raise self._startup_error
        return self

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:  # surfaced to start()
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        server = self

        class _Udp(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                server._spawn(server._serve_udp(data, addr))

            def error_received(self, exc: Exception) -> None:
                pass  # ICMP port unreachable from a client that left: nothing to do

        self._udp_transport, _ = await loop.create_datagram_endpoint(_Udp, sock=self._udp_sock)
        self._tcp_server = await asyncio.start_server(self._serve_tcp, sock=self._tcp_sock)

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self) -> None:
        if self._tcp_server is not None:
            self._tcp_server.close()
        for writer in list(self._writers):
            writer.close()
        if self._udp_transport is not None:
            self._udp_transport.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp_server is not None:
            await self._tcp_server.wait_closed()

    def stop(self) -> None:
        """Stop serving, join the threads and close the sockets (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._close(), loop)
            try:
                future.result(timeout=10)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for sock in (self._udp_sock, self._tcp_sock):
            if sock is not None:
                sock.close()
        self._thread = None
        self._pool = None

    def __enter__(self) -> AuthServer:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def count(self, qname: str | None = None, qtype: str | None = None) -> int:
        """Shortcut for self.log.count()."""
        return self.log.count(qname, qtype)

    def set_fault(self, qname: str, fault: str | None) -> None:
        """Set (or with None, clear) the fault for QNAME, normalizing the name."""
        if fault is None:
            self.faults.pop(normalize(qname), None)
        else:
            self.faults[normalize(qname)] = fault

    # -- answering -------------------------------------------------------

    def handle(self, request: DNSRecord, wire: bytes, proto: str) -> bytes | DNSRecord | None:
        """Answer one query: from the relay, else from the zone; override in a subclass.

        Return a DNSRecord (sized to the client's UDP limit for you), raw bytes (sent as
        they are), or None to send nothing.
        """
        if self.relay is not None:
            return self._relay(wire, proto)
        reply = request.reply()
        reply.header.ra = 0
        qname = str(request.q.qname)
        if self.zone is None or not self.zone.in_zone(qname):
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return reply
        rcode, answer, authority = self.zone.lookup(qname, request.q.qtype, do_bit(request))
        reply.header.rcode = rcode
        for rr in answer:
            reply.add_answer(rr)
        for rr in authority:
            reply.add_auth(rr)
        return reply

    def _relay(self, wire: bytes, proto: str) -> bytes | None:
        assert self.relay is not None
        family = socket.AF_INET6 if ":" in self.relay[0] else socket.AF_INET
        try:
            if proto == "udp":
                with socket.socket(family, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(RELAY_TIMEOUT)
                    sock.sendto(wire, self.relay)
                    return sock.recv(65535)
            with socket.create_connection(self.relay, timeout=RELAY_TIMEOUT) as sock:
                sock.sendall(struct.pack("!H", len(wire)) + wire)
                return _recv_tcp_message(sock)
        except OSError:
            return None  # a silent relay looks like a silent server to the client

    def _fault_reply(self, request: DNSRecord, fault: str, proto: str) -> DNSRecord | None:
        """Replies for the faults that replace the answer; None when the fault does not."""
        if fault in ("servfail", "refused"):
            reply = self._base_reply(request)
            reply.header.rcode = RCODE.SERVFAIL if fault == "servfail" else RCODE.REFUSED
            return reply
        if fault == "tc" and proto == "udp":
            reply = self._base_reply(request)
            reply.header.tc = 1
            return reply
        if fault == "huge":
            reply = self._base_reply(request)
            if proto == "udp":
                reply.header.tc = 1
                return reply
            for rr in _huge_records(request):
                reply.add_answer(rr)
            return reply
        if fault == "wrong_question":
            other = "wrong-question." + normalize(request.q.qname) + "."
            reply = self._base_reply(request)
            reply.questions = [DNSQuestion(other, QTYPE.A)]
            reply.header.q = 1
            reply.add_answer(RR(other, QTYPE.A, ttl=60, rdata=A("192.0.2.254")))
            return reply
        return None

    def _base_reply(self, request: DNSRecord) -> DNSRecord:
        reply = request.reply()
        reply.header.ra = 0
        if _edns_size(request) is not None:
            reply.add_ar(EDNS0(udp_len=SERVER_UDP_SIZE, flags="do" if do_bit(request) else ""))
        return reply

    def _to_wire(self, request: DNSRecord, reply: DNSRecord, proto: str) -> bytes:
        if _edns_size(request) is not None and not any(rr.rtype == QTYPE.OPT for rr in reply.ar):
            reply.add_ar(EDNS0(udp_len=SERVER_UDP_SIZE, flags="do" if do_bit(request) else ""))
        data = reply.pack()
        if proto == "udp":
            limit = _edns_size(request) or MIN_UDP_SIZE
            if len(data) > limit:
                data = truncated(reply).pack()
        return data

    def _respond(self, wire: bytes, proto: str) -> tuple[bytes | None, float, str | None]:
        """(answer bytes or None, delay in seconds, fault) for one query; runs in the pool."""
        try:
            request = DNSRecord.parse(wire)
        except (dnslib.DNSError, struct.error, IndexError, ValueError):
            if len(wire) >= 2:
                # FORMERR with the ID, as a real server does for a packet it cannot parse.
                header = DNSHeader(id=struct.unpack("!H", wire[:2])[0], qr=1, rcode=RCODE.FORMERR)
                return bytes(DNSRecord(header).pack()), 0.0, None
            return None, 0.0, None
        if not request.questions:
            reply = request.reply()
            reply.header.rcode = RCODE.FORMERR
            return bytes(reply.pack()), 0.0, None
        qname = normalize(request.q.qname)
        self.log.append((qname, QTYPE.get(request.q.qtype), proto, do_bit(request)))
        fault = self.faults.get(qname)
        delay = 0.0
        if fault is not None and fault.startswith("delay:"):
            delay = float(fault.split(":", 1)[1])
            fault = None
        if fault == "drop":
            return None, delay, fault
        if fault == "garbage":
            junk = bytearray(os.urandom(48))
            # Make sure the junk can never pass for the answer by its ID.
            junk[0:2] = struct.pack("!H", request.header.id ^ 0xFFFF)
            return bytes(junk), delay, fault
        result: bytes | DNSRecord | None = None
        if fault is not None:
            result = self._fault_reply(request, fault, proto)
        if result is None:
            result = self.handle(request, wire, proto)
        if result is None:
            return None, delay, fault
        if isinstance(result, DNSRecord):
            if fault == "truncated_packet":
                return bytes(_cut_in_record(request, result)), delay, fault
            data = bytes(self._to_wire(request, result, proto))
        else:
            data = bytes(result)
        if fault == "wrong_id":
            data = struct.pack("!H", struct.unpack("!H", data[:2])[0] ^ 0x5A5A) + data[2:]
        elif fault == "truncated_packet":
            data = data[: max(12, len(data) - 7)]
        return data, delay, fault

    async def _serve_udp(self, wire: bytes, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        data, delay, fault = await loop.run_in_executor(self._pool, self._respond, wire, "udp")
        if data is None:
            return
        if delay:
            await asyncio.sleep(delay)
        if fault == "other_port":
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as other:
                other.bind((self.host, 0))
                other.sendto(data, addr)
            return
        if self._udp_transport is not None and not self._udp_transport.is_closing():
            self._udp_transport.sendto(data, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        loop = asyncio.get_running_loop()
        try:
            # RFC 7766: several queries may arrive on one connection; answer each in turn.
            while True:
                async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    wire = await reader.readexactly(length)
                data, delay, _ = await loop.run_in_executor(self._pool, self._respond, wire, "tcp")
                if delay:
                    await asyncio.sleep(delay)
                if data is None:
                    continue
                writer.write(struct.pack("!H", len(data)) + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-message")
        buf += chunk
    return buf


def _recv_tcp_message(sock: socket.socket) -> bytes:
    (length,) = struct.unpack("!H", _recv_exactly(sock, 2))
    return _recv_exactly(sock, length)


def _huge_records(request: DNSRecord) -> list[RR]:
    """About 60 KB of records of the asked type (A, AAAA, else TXT), under the 64 KB limit."""
    qname = request.q.qname
    if request.q.qtype == QTYPE.A:
        count = HUGE_TARGET_BYTES // 16  # 2-byte name pointer + 10 header + 4 rdata
        return [
            RR(qname, QTYPE.A, ttl=60, rdata=A(f"198.18.{i // 256}.{i % 256}"))
            for i in range(count)
        ]
    if request.q.qtype == QTYPE.AAAA:
        count = HUGE_TARGET_BYTES // 28
        return [
            RR(qname, QTYPE.AAAA, ttl=60, rdata=dnslib.AAAA(f"2001:db8:ffff::{i:x}"))
            for i in range(count)
        ]
    count = HUGE_TARGET_BYTES // 268
    return [
        RR(qname, QTYPE.TXT, ttl=60, rdata=dnslib.TXT([f"{i:04d}".ljust(255, "x")]))
        for i in range(count)
    ]


def _cut_in_record(request: DNSRecord, reply: DNSRecord) -> bytes:
    """Pack REPLY and cut it in the middle of its first answer record (adding one if needed)."""
    if not reply.rr:
        reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=60, rdata=A("192.0.2.253")))
    head = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap), q=reply.q)
    head_len = len(head.pack())
    data = reply.pack()
    # The first answer starts right after the question; 6 bytes in is inside its header.
    return data[: head_len + 6]
