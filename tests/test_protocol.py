"""Protocol conformance of the real server (RFC 8906, 6891, 7766, 8482): every query answered."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from tests.conftest import hostport, query, raw_tcp, raw_udp
from tests.dnstest.authserver import AuthServer
from tests.dnstest.sinkhole import SinkholeProcess

BLOCKED = "chatgpt.com"
FORWARDED = "host-001.example.test"
VERSION = "sinkhole-test 1.0"
Z = 0x0040


@pytest.fixture(scope="module")
def server(auth: AuthServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SinkholeProcess]:
    """One server for the module: these tests only ask, they change nothing."""
    work: Path = tmp_path_factory.mktemp("protocol")
    db = str(work / "sinkhole.db")
    cfg = {
        "upstreams": [hostport(auth.address)],
        "rate_limit": {"per_client": 0},
        "version_string": VERSION,
        "database": db,
    }
    proc = SinkholeProcess(cfg, work, env={"SINKHOLE_DB": db})
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


def header(
    ident: int = 0x4242, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def question(name: str, qtype: int = 1, qclass: int = 1) -> bytes:
    labels = b"".join(bytes([len(x)]) + x.encode() for x in name.split("."))
    return labels + b"\x00" + struct.pack("!HH", qtype, qclass)


def opt(size: int = 1232, version: int = 0, do: bool = False, options: bytes = b"") -> bytes:
    ttl = (version << 16) | (0x8000 if do else 0)
    return b"\x00" + struct.pack("!HHIH", 41, size, ttl, len(options)) + options


def ask(server: SinkholeProcess, packet: bytes) -> bytes:
    """A raw UDP exchange that must get an answer with the query's ID."""
    out = raw_udp(server.address, packet, timeout=4.0)
    assert out is not None, f"no answer to {packet!r}"
    assert out[:2] == packet[:2] and out[2] & 0x80
    return out


def rcode_of(data: bytes) -> int:
    return dns.message.from_wire(data, ignore_trailing=True).rcode()


@pytest.mark.parametrize("name", [BLOCKED, FORWARDED])
@pytest.mark.parametrize(
    ("qtype", "qclass"),
    [(65280, 1), (0, 1), (4242, 1), (1, 4), (1, 254), (1, 255), (16, 0x1234), (255, 1)],
)
def test_unknown_types_and_classes_get_an_answer(server, name, qtype, qclass):
    # RFC 8906 3.1.1 and 3.1.3: unknown types and classes still get an answer.
    packet = header() + question(name, qtype, qclass)
    out = ask(server, packet)
    assert out[12 : len(packet)] == packet[12:]
    assert out[2] & 0x78 == 0


@pytest.mark.parametrize("opcode", [1, 2, 3, 4, 5, 6, 9, 15])
def test_unknown_opcode_is_notimp_also_header_only(server, opcode):
    # RFC 8906 3.1.4: an unknown opcode gets NOTIMP, with or without a question.
    for packet in (
        header(flags=opcode << 11) + question(FORWARDED),
        header(flags=opcode << 11, qd=0),
    ):
        out = ask(server, packet)
        assert out[3] & 0xF == dns.rcode.NOTIMP
        assert (out[2] >> 3) & 0xF == opcode


def test_edns_version_above_zero_is_badvers_with_version_zero_opt(server):
    # RFC 6891 6.1.3: BADVERS, and the OPT says the highest version we speak.
    for name in (BLOCKED, FORWARDED):
        out = ask(server, header(ar=1) + question(name) + opt(version=1))
        msg = dns.message.from_wire(out)
        assert msg.rcode() == dns.rcode.BADVERS and msg.edns == 0
        assert not msg.answer


def test_unknown_edns_options_are_ignored(server):
    # RFC 6891 6.1.2: options we do not understand are ignored, and not echoed.
    unknown = dns.edns.GenericOption(65001, b"hello")
    for name, want in ((BLOCKED, "0.0.0.0"), (FORWARDED, "192.0.2.3")):
        q = dns.message.make_query(name, "A", use_edns=0, options=[unknown])
        out = ask(server, q.to_wire())
        msg = dns.message.from_wire(out)
        assert msg.rcode() == dns.rcode.NOERROR
        assert msg.answer[0][0].address == want
        assert all(o.otype != 65001 for o in msg.options)


def test_two_opt_records_are_formerr(server):
    # RFC 6891 6.1.1: more than one OPT makes the query malformed.
    out = ask(server, header(ar=2) + question(FORWARDED) + opt() + opt())
    assert out[3] & 0xF == dns.rcode.FORMERR


@pytest.mark.parametrize("qd", [0, 2, 3])
def test_qdcount_other_than_one_is_formerr(server, qd):
    packet = header(qd=qd) + question(FORWARDED) * qd
    assert ask(server, packet)[3] & 0xF == dns.rcode.FORMERR


def test_z_bit_is_never_echoed(server):
    # RFC 1035 4.1.1: Z must be zero in every response, whatever the query carried.
    cases = [
        header(flags=0x0100 | Z) + question(BLOCKED),
        header(flags=0x0100 | Z) + question("host-070.example.test"),  # forwarded
        header(flags=0x0100 | Z) + question("host-070.example.test"),  # then cached
        header(flags=0x0100 | Z, ar=1) + question("host-071.example.test") + opt(),
        header(flags=0x0100 | Z, qd=0),  # FORMERR
        header(flags=(4 << 11) | Z) + question(FORWARDED),  # NOTIMP
        header(flags=0x0100 | Z) + question("version.bind", 16, 3),  # CHAOS
    ]
    for packet in cases:
        out = ask(server, packet)
        assert not out[3] & Z, packet


def test_any_for_a_blocked_name_is_minimal_and_local(server, auth):
    # RFC 8482 4.2: one RRset (or HINFO) instead of everything.
    before = auth.count(qname=BLOCKED)
    for tcp in (False, True):
        msg = query(server.address, "www." + BLOCKED, "ANY", tcp=tcp)
        assert msg.rcode() == dns.rcode.NOERROR
        assert len(msg.answer) <= 1
    assert auth.count(qname="www." + BLOCKED) == before == 0


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("many-a.example.test", "A"),
        ("big-txt.example.test", "TXT"),
        ("signed.example.test", "A"),
        ("www.example.test", "A"),
        (BLOCKED, "TXT"),
        (BLOCKED, "A"),
    ],
)
def test_udp_answers_fit_the_clients_size_or_are_truncated(server, name, rdtype):
    # RFC 6891 6.2.5 and RFC 1035 4.2.1: never more than the client can take; TC=1 instead.
    for payload in (None, 100, 512, 600, 1232, 4096):
        for _ in range(2):  # forwarded, then from the cache
            q = dns.message.make_query(
                name,
                rdtype,
                use_edns=False if payload is None else 0,
                payload=payload or 512,
                want_dnssec=payload is not None,
            )
            out = ask(server, q.to_wire())
            limit = max(payload or 512, 512)
            assert len(out) <= limit, (payload, len(out))
            msg = dns.message.from_wire(out)
            if msg.flags & dns.flags.TC:
                assert not msg.answer
    full = query(server.address, name, rdtype, tcp=True, do=True)
    assert not full.flags & dns.flags.TC
    assert full.answer or rdtype != "A"


def test_truncated_answer_is_complete_over_tcp_with_the_same_id(server):
    q = dns.message.make_query("many-a.example.test", "A", use_edns=False)
    udp = dns.message.from_wire(ask(server, q.to_wire()))
    assert udp.flags & dns.flags.TC
    tcp = dns.message.from_wire(raw_tcp(server.address, q.to_wire()))
    assert tcp.id == q.id and len(tcp.answer[0]) == 32


def test_chaos_version_bind_is_the_configured_string_and_never_forwarded(server, auth):
    q = dns.message.make_query("version.bind", "TXT", "CH")
    msg = dns.message.from_wire(ask(server, q.to_wire()))
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.answer[0].rdclass == dns.rdataclass.CH
    assert msg.answer[0][0].strings == (VERSION.encode(),)
    for other in ("hostname.bind", "id.server", "authors.bind"):
        q = dns.message.make_query(other, "TXT", "CH")
        assert dns.message.from_wire(ask(server, q.to_wire())).rcode() == dns.rcode.REFUSED
    assert auth.count(qname="version.bind") == 0 and auth.count(qname="hostname.bind") == 0


def test_chaos_version_bind_is_refused_without_a_version_string(sinkhole, upstream):
    server = sinkhole()
    q = dns.message.make_query("version.bind", "TXT", "CH")
    assert dns.message.from_wire(ask(server, q.to_wire())).rcode() == dns.rcode.REFUSED
    assert upstream.count(qname="version.bind") == 0


def test_every_answer_echoes_id_and_question_case(server):
    # 0x20 case randomisation (draft-vixie-dnsext-dns0x20) needs the question as asked.
    for name in ("ChAtGpT.CoM", "HoSt-002.ExAmPlE.tEsT", "HoSt-002.ExAmPlE.tEsT"):
        packet = header(ident=0x7777) + question(name)
        out = ask(server, packet)
        assert out[12 : len(packet)] == packet[12:]
        assert rcode_of(out) == dns.rcode.NOERROR
