"""Byte-level DNS: parse a query's header and question, scan answers, build local answers.

The hot path never builds dnslib objects: a query is read straight from its
bytes, and local answers are a header, the question copied as asked (so 0x20
case survives) and precomputed record templates.
"""

from __future__ import annotations

import ipaddress
import struct
from enum import IntEnum

from resolver.presentation import name_from_labels

HEADER = struct.Struct("!HHHHHH")
U16 = struct.Struct("!H")
U32 = struct.Struct("!I")
RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength

#: Our advertised EDNS UDP payload size (DNS flag day 2020 value).
EDNS_PAYLOAD = 1232
#: A UDP answer without EDNS may not exceed this (RFC 1035 4.2.1).
CLASSIC_UDP_LIMIT = 512
MAX_NAME_LENGTH = 255
MAX_POINTER_JUMPS = 64

QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
Z = 0x0040  # must be zero in queries and responses (RFC 1035 4.1.1)
AD = 0x0020
CD = 0x0010
OPCODE_MASK = 0x7800


class QType(IntEnum):
    A = 1  #: IPv4 address
    NS = 2  #: name server
    CNAME = 5  #: canonical name
    SOA = 6  #: start of authority
    PTR = 12  #: pointer
    MX = 15  #: mail exchange
    TXT = 16  #: text
    AAAA = 28  #: IPv6 address
    SRV = 33  #: service locator
    DNAME = 39  #: delegation name
    OPT = 41  #: EDNS pseudo-record (RFC 6891)
    DS = 43  #: delegation signer
    RRSIG = 46  #: DNSSEC signature
    DNSKEY = 48  #: DNSSEC key
    SVCB = 64  #: service binding (RFC 9460)
    HTTPS = 65  #: HTTPS binding (RFC 9460)
    ANY = 255  #: everything (RFC 8482 answers it minimally)


class Rcode(IntEnum):
    NOERROR = 0  #: success
    FORMERR = 1  #: the query was malformed
    SERVFAIL = 2  #: no usable answer from upstream
    NXDOMAIN = 3  #: the name does not exist
    NOTIMP = 4  #: opcode not implemented
    REFUSED = 5  #: policy refuses to answer
    BADVERS = 16  #: EDNS version not supported (extended rcode, RFC 6891)


CLASS_IN = 1
CLASS_CH = 3
EDE_BLOCKED = 15  # RFC 8914 Extended DNS Error "Blocked"
EDE_OPTION = 15  # option code of EDE in OPT
EDE_STALE = 3  # RFC 8914 "Stale Answer"

_QTYPE_NAMES = {int(t): t.name for t in QType}


def qtype_name(qtype: int) -> str:
    """'A', 'HTTPS', ... or 'TYPE1234' as in RFC 3597."""
    name = _QTYPE_NAMES.get(qtype)
    return name if name is not None else f"TYPE{qtype}"


class WireError(Exception):
    """The packet cannot be answered normally; `rcode` is None when it must be dropped."""

    def __init__(self, reason: str, rcode: int | None = Rcode.FORMERR) -> None:
        super().__init__(reason)
        self.rcode = rcode


_FLAG_KEYS = {f: bytes([((f & RD) >> 8) | ((f & CD) >> 3)]) for f in (0, RD, CD, RD | CD)}


class Query:
    """A parsed query: header fields, the question as asked, and its EDNS state; `tail` is
    its bytes after the ID, the key of the parse memo and of the policy's verdict memo.

    `memo` is a two-item list shared by every Query parsed from the same bytes after the
    ID (it is in the parse memo): the place where a later layer keeps what it derived
    from those bytes, as [owner token, value], so that an identical query finds it
    without a lookup of its own (`pipeline.Blocker`: the policy's verdict). Whoever
    reads it checks the token; nothing here looks at it.
    """

    __slots__ = (
        "wire",
        "flags",
        "name",
        "qtype",
        "qclass",
        "qname_end",
        "question_end",
        "edns",
        "udp_size",
        "do",
        "edns_version",
        "opt",
        "key",
        "tail",
        "memo",
    )

    def __init__(self) -> None:
        self.memo = [None, None]
        self.opt = b""
        self.edns = False
        self.udp_size = CLASSIC_UDP_LIMIT
        self.do = False
        self.edns_version = 0

    @property
    def id(self) -> int:
        """The client's ID, read from the datagram: only the answers built here whole
        (error, local, truncated) read it, so a query does not pay for it."""
        return self.wire[0] << 8 | self.wire[1]

    @property
    def question(self) -> bytes:
        """The question section exactly as the client sent it."""
        return self.wire[12 : self.question_end]

    @property
    def max_udp(self) -> int:
        return max(self.udp_size, CLASSIC_UDP_LIMIT) if self.edns else CLASSIC_UDP_LIMIT


#: Parsed queries by their bytes after the ID: offices ask the same questions all day.
_PARSED: dict[bytes, tuple] = {}
PARSE_MEMO_SIZE = 20_000


def parse_query(wire: bytes) -> Query:
    """Parse a client's query; raise WireError with the rcode to answer (or None: drop).

    The result for the same bytes (ID aside) is memoised: everything but the ID is
    a function of them, and the label walk is the costliest part of a local answer.

    Raises:
        WireError: QR set or no header (drop), opcode not QUERY (NOTIMP),
            QDCOUNT != 1 or a malformed question or OPT (FORMERR), EDNS
            version > 0 (BADVERS).
    """
    tail = wire[2:]
    fields = _PARSED.get(tail)
    if fields is not None:
        q = _new_query(Query)
        q.wire = wire
        q.tail = tail
        (
            q.flags, q.name, q.qtype, q.qclass, q.qname_end, q.question_end,
            q.edns, q.udp_size, q.do, q.edns_version, q.opt, q.key, q.memo,
        ) = fields  # fmt: skip
        return q
    q = _parse_query(wire)
    q.tail = tail
    if len(_PARSED) >= PARSE_MEMO_SIZE:
        _PARSED.clear()
    _PARSED[tail] = (
        q.flags, q.name, q.qtype, q.qclass, q.qname_end, q.question_end,
        q.edns, q.udp_size, q.do, q.edns_version, q.opt, q.key, q.memo,
    )  # fmt: skip
    return q


_new_query = object.__new__


def _parse_query(wire: bytes) -> Query:
    if len(wire) < 12:
        raise WireError("shorter than a header", None)
    _, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(wire)
    if flags & QR:
        # A response sent to us: answering it could start a loop between servers.
        raise WireError("QR set", None)
    if flags & OPCODE_MASK:
        raise WireError("opcode not implemented", Rcode.NOTIMP)
    if qdcount != 1:
        raise WireError(f"QDCOUNT {qdcount}")
    q = Query()
    q.wire = wire
    q.flags = flags
    labels, pos = _question_name(wire)
    end = len(wire)
    if pos + 4 > end:
        raise WireError("question truncated")
    q.qname_end = pos
    q.qtype, q.qclass = wire[pos] << 8 | wire[pos + 1], wire[pos + 2] << 8 | wire[pos + 3]
    pos += 4
    q.question_end = pos
    q.name = name_from_labels(labels)
    if ancount or nscount or arcount:
        _parse_extra(q, wire, pos, ancount + nscount, arcount)
    # Lowercase only the name: qtype/qclass bytes may be ASCII letters, lengths never are.
    # RD and CD change what an upstream answers, so they are part of the key: a client
    # asking with RD=0 must not fill the cache for everyone else.
    q.key = (
        wire[12 : pos - 4].lower()
        + wire[pos - 4 : pos]
        + (b"\x01" if q.do else b"\x00" if q.edns else b"\x02")
        + _FLAG_KEYS[flags & (RD | CD)]
    )
    return q


def _parse_extra(q: Query, wire: bytes, pos: int, skip: int, arcount: int) -> None:
    for _ in range(skip):
        pos = _skip_rr(wire, pos)
    opts = 0
    for _ in range(arcount):
        start = pos
        pos = skip_name(wire, pos)
        if pos + 10 > len(wire):
            raise WireError("additional record truncated")
        rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(wire, pos)
        pos += 10 + rdlen
        if pos > len(wire):
            raise WireError("additional record truncated")
        if rtype == QType.OPT:
            opts += 1
            if opts > 1:
                raise WireError("more than one OPT record")  # RFC 6891 6.1.1
            if wire[start] != 0:
                raise WireError("OPT owner is not the root")
            q.edns = True
            q.opt = wire[start:pos]
            q.udp_size = rclass
            q.edns_version = (ttl >> 16) & 0xFF
            q.do = bool(ttl & 0x8000)
    if q.edns and q.edns_version > 0:
        raise WireError("EDNS version not supported", Rcode.BADVERS)


def skip_name(wire: bytes, pos: int) -> int:
    """Offset just past a (possibly compressed) name starting at pos."""
    end = len(wire)
    while True:
        if pos >= end:
            raise WireError("name truncated")
        n = wire[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            if pos + 2 > end:
                raise WireError("pointer truncated")
            return pos + 2
        if n > 63:
            raise WireError("bad label type")
        pos += n + 1


def _skip_rr(wire: bytes, pos: int) -> int:
    pos = skip_name(wire, pos)
    if pos + 10 > len(wire):
        raise WireError("record truncated")
    rdlen = U16.unpack_from(wire, pos + 8)[0]
    pos += 10 + rdlen
    if pos > len(wire):
        raise WireError("record truncated")
    return pos


def read_name(wire: bytes, pos: int) -> tuple[str, int]:
    """Decompress a name: (lowercase dotted text, offset just past it in place).

    Pointers may only point backwards (RFC 1035 4.1.4), which also rules out loops.
    """
    labels = []
    end_pos = -1
    jumps = 0
    total = 0
    limit = len(wire)
    while True:
        if pos >= limit:
            raise WireError("name truncated")
        n = wire[pos]
        if n == 0:
            if end_pos < 0:
                end_pos = pos + 1
            break
        if n & 0xC0 == 0xC0:
            if pos + 2 > limit:
                raise WireError("pointer truncated")
            target = ((n & 0x3F) << 8) | wire[pos + 1]
            if target >= pos:
                raise WireError("forward or looping compression pointer")
            if end_pos < 0:
                end_pos = pos + 2
            jumps += 1
            if jumps > MAX_POINTER_JUMPS:
                raise WireError("too many compression pointers")
            pos = target
            continue
        if n > 63:
            raise WireError("bad label type")
        total += n + 1
        if total > MAX_NAME_LENGTH:
            raise WireError("name longer than 255 bytes")
        labels.append(wire[pos + 1 : pos + 1 + n])
        pos += n + 1
    return name_from_labels(labels), end_pos


class Answer:
    """What a scan of an upstream answer tells the cache and the policy."""

    __slots__ = (
        "rcode",
        "tc",
        "ttl_offsets",
        "ttls",
        "ttl",
        "cnames",
        "negative",
        "question_end",
        "opt_at",
    )

    def __init__(self) -> None:
        #: Where the OPT record's fixed part (type, class, ttl, rdlength) starts; -1: none.
        self.opt_at = -1
        self.ttl_offsets: list[int] = []
        #: the TTL at each of ttl_offsets, as read (one with the top bit set: 0, RFC 2181 8)
        self.ttls: list[int] = []
        self.cnames: list[str] = []
        self.negative = False


def scan_answer(wire: bytes, query: Query) -> Answer:
    """Check an upstream answer against the query and find its TTLs and CNAME targets.

    Raises:
        WireError: not an answer to this question (the caller ignores it, RFC 5452).
    """
    if len(wire) < 12:
        raise WireError("short answer")
    ident, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(wire)
    if not flags & QR or qdcount != 1:
        raise WireError("not an answer")
    qend = query.question_end
    # The name compares case-insensitively (0x20 case may differ), type and class exactly:
    # lowering all of it would let TYPE97 ('a') answer a question for HTTPS (65, 'A').
    # Most upstreams echo the question as asked: one comparison then.
    if (
        wire[12:qend] != query.wire[12:qend]
        and (
            len(wire) < qend
            or wire[qend - 4 : qend] != query.wire[qend - 4 : qend]
            # the query's key starts with its name lowercased (parse_query)
            or wire[12 : qend - 4].lower() != query.key[: qend - 16]
        )
    ):
        raise WireError("answer for another question")
    # The Answer's fields set here, not in __init__: one Python call less per answer.
    a = _new_answer(Answer)
    a.rcode = rcode = flags & 0xF
    a.tc = bool(flags & TC)
    a.question_end = pos = qend
    a.opt_at = -1
    a.ttl_offsets = offsets = []
    a.ttls = ttls = []
    a.cnames = cnames = []
    end = len(wire)
    unpack_rr = RR_FIXED.unpack_from
    min_ttl = _NO_TTL
    soa_min = None
    # One loop over the records of the three sections; the index tells the section.
    authority = ancount + nscount
    for i in range(authority + arcount):
        name_start = pos
        # Most owners are a pointer (0xC00C: the name asked): two bytes, no walk.
        if pos < end and wire[pos] >= 0xC0:
            pos += 2
        else:
            pos = skip_name(wire, pos)
        if pos + 10 > end:
            raise WireError("record truncated")
        rtype, _rclass, ttl, rdlen = unpack_rr(wire, pos)
        rdata = pos + 10
        if rdata + rdlen > end:
            raise WireError("record truncated")
        if rtype == _OPT:
            a.opt_at = pos
        else:
            offsets.append(pos + 4)
            if ttl & 0x80000000:
                ttl = 0  # RFC 2181 8: a TTL with the top bit set is zero
            ttls.append(ttl)
            if ttl < min_ttl:
                min_ttl = ttl
            if i < ancount:
                if rtype == _CNAME:
                    cnames.append(read_name(wire, rdata)[0])
                elif rtype != _RRSIG and (wire[name_start] != 0xC0 or wire[name_start + 1] != 12):
                    # An owner other than the question's: a name to check as well.
                    owner = read_name(wire, name_start)[0]
                    if owner != query.name and owner not in cnames:
                        cnames.append(owner)
            elif rtype == _SOA and i < authority:
                mname_end = skip_name(wire, rdata)
                rname_end = skip_name(wire, mname_end)
                if rname_end + 20 <= rdata + rdlen:
                    soa_min = min(ttl, U32.unpack_from(wire, rname_end + 16)[0])
        pos = rdata + rdlen
    a.negative = negative = rcode == _NXDOMAIN or (rcode == _NOERROR and ancount == 0)
    if negative:
        a.ttl = soa_min if soa_min is not None else -1
    else:
        a.ttl = min_ttl if min_ttl != _NO_TTL else 0
    return a


_new_answer = object.__new__
#: Above every TTL (32 bits): the scan's "no record yet".
_NO_TTL = 1 << 32


# Plain ints for the scan's inner loop: comparing with an IntEnum member costs more.
_OPT, _CNAME, _RRSIG, _SOA = int(QType.OPT), int(QType.CNAME), int(QType.RRSIG), int(QType.SOA)
_NOERROR, _NXDOMAIN = int(Rcode.NOERROR), int(Rcode.NXDOMAIN)


def upstream_query(query: Query, ident: int) -> bytes:
    """The client's question and OPT under our own ID, Z cleared, to send upstream.

    Whatever else the client put in the other sections stays here: an upstream gets
    a plain query it cannot mistake for an update or a notify.
    """
    return (
        HEADER.pack(ident, query.flags & ~Z, 1, 0, 0, 1 if query.opt else 0)
        + query.wire[12 : query.question_end]
        + query.opt
    )


def header_flags(query: Query, rcode: int, aa: bool = False) -> int:
    """Response flags: QR, the query's opcode, RD and CD; RA; never the Z bit (RFC 1035)."""
    return QR | (query.flags & (OPCODE_MASK | RD | CD)) | RA | (AA if aa else 0) | (rcode & 0xF)


def forwarded_flags(response: bytes) -> bytes:
    """An upstream's answer as it is cached and forwarded: ID 0 (`personalise` puts each
    client's in), and the flags we answer with: AA cleared, since we are not the
    authority (RFC 1035 4.1.1), RA set, since we recurse for our clients, Z cleared
    whatever the upstream echoed; every other bit (TC, AD, CD, RCODE) as it came."""
    flags = ((response[2] << 8 | response[3]) & ~(AA | Z)) | RA
    # The 16-bit flags packed as 32 bits: a zero ID, then the flags, in one pack.
    return U32.pack(flags) + response[4:]


def opt_record(do: bool, ext_rcode: int = 0, options: bytes = b"") -> bytes:
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return b"\x00" + RR_FIXED.pack(QType.OPT, EDNS_PAYLOAD, ttl, len(options)) + options


def ede_option(info_code: int, text: str) -> bytes:
    body = U16.pack(info_code) + text.encode("utf-8")[:200]
    return U16.pack(EDE_OPTION) + U16.pack(len(body)) + body


def error_response(wire: bytes, rcode: int) -> bytes | None:
    """An error answer for a packet whose header is readable; the question echoed if it parses."""
    if len(wire) < 12:
        return None
    ident, flags = struct.unpack_from("!HH", wire)
    if flags & QR:
        return None
    question = b""
    qdcount = 0
    edns = False
    do = False
    try:
        q = parse_query(wire)
        question, qdcount, edns, do = q.question, 1, q.edns, q.do
    except WireError:
        # A BADVERS query parses up to its OPT: keep its question and answer with EDNS.
        if rcode == Rcode.BADVERS:
            try:
                end = _question_end(wire)
                question, qdcount, edns = wire[12:end], 1, True
            except WireError:
                pass
    # RA is defined for QUERY only (RFC 1035 4.1.1): a NOTIMP answer to another opcode
    # claims nothing about recursion (RFC 8906 §8).
    ra = RA if not flags & OPCODE_MASK else 0
    out_flags = QR | (flags & (OPCODE_MASK | RD | CD)) | ra | (rcode & 0xF)
    opt = opt_record(do, rcode >> 4) if edns or rcode > 15 else b""
    return HEADER.pack(ident, out_flags, qdcount, 0, 0, 1 if opt else 0) + question + opt


def _question_end(wire: bytes) -> int:
    """End of the first question, checked as strictly as parse_query checks it."""
    pos = _question_name(wire)[1]
    if pos + 4 > len(wire):
        raise WireError("question truncated")
    return pos + 4


def _question_name(wire: bytes) -> tuple[list[bytes], int]:
    """The question name's labels and the offset just past it, for a query."""
    pos = 12
    end = len(wire)
    labels = []
    length = 0
    while True:
        if pos >= end:
            raise WireError("question truncated")
        n = wire[pos]
        if n == 0:
            return labels, pos + 1
        if n > 63:
            # A pointer has nothing before the question to point to; 0x40/0x80 are reserved.
            raise WireError("label type or pointer in question")
        length += n + 1
        if length > MAX_NAME_LENGTH - 1:
            raise WireError("name longer than 255 bytes")
        labels.append(wire[pos + 1 : pos + 1 + n])
        pos += n + 1


def local_answer(
    query: Query,
    rcode: int,
    ancount: int,
    nscount: int,
    records: bytes,
    options: bytes = b"",
    aa: bool = False,
) -> bytes:
    """An answer made here (sinkhole, CHAOS): the question as asked, then `records`,
    then an OPT with `options` when the query had EDNS."""
    flags = header_flags(query, rcode, aa)
    if query.edns:
        return (
            HEADER.pack(query.id, flags, 1, ancount, nscount, 1)
            + query.wire[12 : query.question_end]
            + records
            + opt_record(query.do, 0, options)
        )
    return (
        HEADER.pack(query.id, flags, 1, ancount, nscount, 0)
        + query.wire[12 : query.question_end]
        + records
    )


def chaos_txt(query: Query, text: str) -> bytes:
    """The CHAOS TXT answer to version.bind / version.server."""
    txt = text.encode()[:255]
    rdata = bytes([len(txt)]) + txt
    record = b"\xc0\x0c" + RR_FIXED.pack(QType.TXT, CLASS_CH, 0, len(rdata)) + rdata
    return local_answer(query, Rcode.NOERROR, 1, 0, record, aa=True)


def personalise(response: bytes, query: Query) -> bytes:
    """An upstream or cached answer to `query`, with its ID and its question as the
    client asked it (0x20 case): the header after the ID and the records as given."""
    qend = query.question_end
    return query.wire[:2] + response[2:12] + query.wire[12:qend] + response[qend:]


def with_ede(response: bytes, opt_at: int, info_code: int, text: str = "") -> bytes:
    """`response` with an Extended DNS Error (RFC 8914) added to its OPT record, whose
    fixed part starts at `opt_at` (-1: no OPT, returned as it is)."""
    if opt_at < 0:
        return response
    option = ede_option(info_code, text)
    rdlen_at = opt_at + 8
    rdlen = U16.unpack_from(response, rdlen_at)[0]
    end = rdlen_at + 2 + rdlen
    return (
        response[:rdlen_at]
        + U16.pack(rdlen + len(option))
        + response[rdlen_at + 2 : end]
        + option
        + response[end:]
    )


def truncated(query: Query, response: bytes) -> bytes:
    """A TC=1 answer with just the question (and OPT): the client retries over TCP."""
    flags = U16.unpack_from(response, 2)[0] | TC
    opt = opt_record(query.do) if query.edns else b""
    return HEADER.pack(query.id, flags, 1, 0, 0, 1 if opt else 0) + query.question + opt


def encode_name(name: str) -> bytes:
    """'a.b' -> wire format (absolute)."""
    out = bytearray()
    for label in name.strip(".").split("."):
        if label:
            raw = label.encode("ascii")
            out.append(len(raw))
            out += raw
    out.append(0)
    return bytes(out)


def a_rdata(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


def aaaa_rdata(address: str) -> bytes:
    return ipaddress.IPv6Address(address).packed


def rr(rtype: int, ttl: int, rdata: bytes, owner: bytes = b"\xc0\x0c") -> bytes:
    """One record; the owner defaults to a pointer to the question name (offset 12)."""
    return owner + RR_FIXED.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata


def soa_rdata(serial: int, minimum: int) -> bytes:
    return (
        encode_name("sinkhole.invalid")
        + encode_name("hostmaster.sinkhole.invalid")
        + struct.pack("!IIIII", serial & 0xFFFFFFFF, 3600, 600, 86400, minimum)
    )
