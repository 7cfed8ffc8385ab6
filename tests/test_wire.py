"""Property tests of resolver/wire.py: agreement with dnslib, and only WireError on bad bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import dns.flags
import dns.message
import dnslib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resolver import wire
from resolver.wire import Rcode, WireError

CORPUS = Path(__file__).resolve().parent / "corpus"
LABEL = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=63
)
NAMES = st.lists(LABEL, min_size=1, max_size=6).filter(
    lambda labels: sum(len(x) + 1 for x in labels) <= 254
)
OPTIONS = st.lists(st.tuples(st.integers(0, 65535), st.binary(max_size=40)), max_size=3).map(
    lambda opts: b"".join(struct.pack("!HH", c, len(d)) + d for c, d in opts)
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encode(labels: list[str]) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in labels) + b"\x00"


@st.composite
def queries(draw) -> tuple[bytes, dict]:
    """A well-formed query (maybe with EDNS and unknown options) and what it says."""
    labels = draw(NAMES)
    qtype = draw(st.integers(0, 65535))
    qclass = draw(st.integers(0, 65535))
    ident = draw(st.integers(0, 65535))
    flags = draw(st.sampled_from([0x0000, 0x0100, 0x0110, 0x0120, 0x0140]))
    edns = draw(st.booleans())
    size = draw(st.integers(0, 65535))
    do = draw(st.booleans())
    version = draw(st.sampled_from([0, 0, 0, 1, 255]))
    options = draw(OPTIONS)
    packet = struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 1 if edns else 0)
    packet += encode(labels) + struct.pack("!HH", qtype, qclass)
    if edns:
        ttl = (version << 16) | (0x8000 if do else 0)
        packet += b"\x00" + struct.pack("!HHIH", 41, size, ttl, len(options)) + options
    facts = {"edns": edns, "size": size, "do": do, "version": version, "labels": labels}
    return packet, facts


@FAST
@given(queries())
def test_parse_query_agrees_with_dnslib(case):
    packet, facts = case
    ref = dnslib.DNSRecord.parse(packet)
    if facts["edns"] and facts["version"] > 0:
        with pytest.raises(WireError) as err:
            wire.parse_query(packet)
        assert err.value.rcode == Rcode.BADVERS
        return
    q = wire.parse_query(packet)
    assert q.id == ref.header.id
    assert q.name == str(ref.q.qname).rstrip(".").lower()
    assert q.qtype == ref.q.qtype and q.qclass == ref.q.qclass
    assert q.question == packet[12 : q.question_end]
    opts = [rr for rr in ref.ar if rr.rtype == 41]
    assert q.edns == bool(opts)
    if opts:
        assert q.udp_size == opts[0].rclass
        assert q.do == bool(opts[0].ttl & 0x8000)
        assert q.edns_version == (opts[0].ttl >> 16) & 0xFF


@FAST
@given(queries())
def test_upstream_query_keeps_question_and_opt_and_clears_z(case):
    packet, facts = case
    if facts["edns"] and facts["version"] > 0:
        return
    q = wire.parse_query(packet)
    out = wire.upstream_query(q, 0xBEEF)
    ref = dnslib.DNSRecord.parse(out)
    assert ref.header.id == 0xBEEF and not out[3] & 0x40
    assert out[12 : q.question_end] == packet[12 : q.question_end]
    assert (ref.header.a, ref.header.auth) == (0, 0)
    assert ref.header.ar == (1 if facts["edns"] else 0)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_parse_query_raises_only_wire_error_on_any_bytes(data):
    try:
        wire.parse_query(data)
    except WireError:
        pass


def mutations():
    return st.tuples(
        queries(),
        st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)), min_size=1, max_size=6),
        st.integers(0, 700),
    )


@settings(max_examples=1500, deadline=None)
@given(mutations())
def test_parse_query_raises_only_wire_error_on_mutated_queries(case):
    (packet, _), flips, cut = case
    buf = bytearray(packet)
    for pos, value in flips:
        if buf:
            buf[pos % len(buf)] = value
    try:
        wire.parse_query(bytes(buf[: max(cut, 12)]))
    except WireError:
        pass


SEED = wire.parse_query(
    struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    + b"\x03www\x07example\x04test\x00\x00\x01\x00\x01"
)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_scan_answer_raises_only_wire_error(body):
    # Give half of the inputs the right question, so scanning goes past it.
    for data in (body, body[:2] + b"\x81\x80" + body[4:12] + SEED.question + body[12:]):
        try:
            wire.scan_answer(data, SEED)
        except WireError:
            pass


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(list(Rcode)))
def test_error_response_is_always_well_formed(data, rcode):
    out = wire.error_response(data, rcode)
    if len(data) < 12 or data[2] & 0x80:
        assert out is None
        return
    assert out is not None
    # dnspython, not dnslib: labels are binary and dnslib wants them UTF-8.
    msg = dns.message.from_wire(out)
    assert msg.id == struct.unpack("!H", data[:2])[0]
    assert msg.flags & dns.flags.QR and not out[3] & 0x40
    assert msg.rcode() == int(rcode)
    assert len(msg.question) <= 1 and not msg.answer and not msg.authority


# -- hand-made malformed names -------------------------------------------------------------


def answer_with(rdata_name: bytes, ancount: int = 1) -> bytes:
    head = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, ancount, 0, 0) + SEED.question
    return (
        head
        + b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c"
        + struct.pack("!H", len(rdata_name))
        + rdata_name
    )


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (b"\xc0\x2d", "pointer to itself"),  # offset of this very pointer in the packet
        (b"\xc0\x40", "forward pointer"),
        (b"\x01a\xc0\x2d", "loop through a label"),
        (b"\x40" + b"a" * 64 + b"\x00", "label over 63"),
        ((b"\x3f" + b"a" * 63) * 5 + b"\x00", "name over 255"),
        (b"\x05ab", "label past the end"),
        (b"\x80a\x00", "reserved label type"),
    ],
)
def test_bad_names_in_answers_are_wire_errors(name, why):
    data = answer_with(name)
    with pytest.raises(WireError):
        wire.scan_answer(data, SEED)


def test_scan_answer_rejects_a_question_of_another_type_that_differs_only_in_case():
    # HTTPS is 0x0041 ('A'), TYPE97 is 0x0061 ('a'): only the name is case-insensitive.
    https = wire.parse_query(
        struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x01x\x04test\x00\x00\x41\x00\x01"
    )
    other = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\x01X\x04TEST\x00\x00\x61\x00\x01"
    with pytest.raises(WireError):
        wire.scan_answer(other, https)
    same = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\x01X\x04TEST\x00\x00\x41\x00\x01"
    assert wire.scan_answer(same, https).rcode == 0


def test_rd_and_cd_are_part_of_the_cache_key():
    base = b"\x01x\x04test\x00\x00\x01\x00\x01"
    keys = {
        wire.parse_query(struct.pack("!HHHHHH", 1, flags, 1, 0, 0, 0) + base).key
        for flags in (0x0000, 0x0100, 0x0010, 0x0110)
    }
    assert len(keys) == 4


def test_corpus_packets_are_all_rejected():
    files = sorted(CORPUS.glob("*.bin"))
    assert len(files) >= 25
    for path in files:
        with pytest.raises(WireError):
            wire.parse_query(path.read_bytes())
