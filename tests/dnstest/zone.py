"""The deterministic test zone: its records, authoritative lookup and master-file text."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

from dnslib import QTYPE, RCODE, RR

DEFAULT_ORIGIN = "example.test"
DEFAULT_TTL = 300
SOA_MINIMUM = 60  #: negative-caching TTL (RFC 2308 section 5)
#: the records served only to queries with the DO bit, as a signed zone would
DNSSEC_TYPES = ("RRSIG", "NSEC", "NSEC3")
HOSTS = 120
V6_HOSTS = 40
DUAL_HOSTS = 20
MAIL_NAMES = 10
TXT_NAMES = 30
SRV_NAMES = 10
CAA_NAMES = 5
NXDOMAIN_NAMES = 20
MANY_A_COUNT = 32
BIG_TXT_STRINGS = 8
BIG_TXT_STRING_LEN = 200


def normalize(name: str) -> str:
    """Lowercase a domain name and drop its trailing dot, the form every key here uses."""
    return str(name).rstrip(".").lower()


def _b64(seed: str, size: int) -> str:
    """Deterministic base64 bytes, so the zone is identical on every run."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return base64.b64encode(out[:size]).decode()


@dataclass
class Zone:
    """An authoritative zone held in memory, answering like nsd would."""

    origin: str
    records: list[RR]
    text_lines: list[str]
    nxdomain: list[str] = field(default_factory=list)  #: names that must NOT exist
    nodata: list[tuple[str, str]] = field(default_factory=list)  #: (name, type) absent types
    blocked_targets: dict[str, str] = field(default_factory=dict)  #: name -> blocked CNAME end
    out_of_zone: dict[str, str] = field(default_factory=dict)  #: name -> out-of-zone target

    def __post_init__(self) -> None:
        self.origin = normalize(self.origin)
        self._nodes: dict[str, dict[str, list[RR]]] = {}
        for rr in self.records:
            node = self._nodes.setdefault(normalize(rr.rname), {})
            node.setdefault(QTYPE.get(rr.rtype), []).append(rr)
        # Empty non-terminals exist (RFC 8020): they answer NODATA, never NXDOMAIN.
        self._ents: set[str] = set()
        for name in self._nodes:
            labels = name.split(".")
            for i in range(1, len(labels)):
                parent = ".".join(labels[i:])
                if parent == self.origin or not self.in_zone(parent):
                    break
                if parent not in self._nodes:
                    self._ents.add(parent)

    @property
    def soa(self) -> RR:
        """The apex SOA record."""
        return self._nodes[self.origin]["SOA"][0]

    def in_zone(self, name: str) -> bool:
        """True when NAME is the apex or below it."""
        name = normalize(name)
        return name == self.origin or name.endswith("." + self.origin)

    def exists(self, name: str) -> bool:
        """True when NAME owns records or is an empty non-terminal."""
        name = normalize(name)
        return name in self._nodes or name in self._ents

    def rrset(self, name: str, qtype: str) -> list[RR]:
        """The records of one RRset (empty when absent)."""
        return list(self._nodes.get(normalize(name), {}).get(qtype.upper(), []))

    def _with_sigs(self, node: dict[str, list[RR]], rtype: str, do: bool) -> list[RR]:
        rrs = list(node.get(rtype, []))
        if do:
            rrs += [sig for sig in node.get("RRSIG", []) if QTYPE.get(sig.rdata.covered) == rtype]
        return rrs

    def _negative_soa(self) -> RR:
        # RFC 2308 section 3: the SOA's TTL is min(SOA TTL, SOA MINIMUM).
        soa = self.soa
        return RR(soa.rname, QTYPE.SOA, ttl=min(soa.ttl, soa.rdata.times[-1]), rdata=soa.rdata)

    def lookup(
        self, qname: str, qtype: str | int, do: bool = False
    ) -> tuple[int, list[RR], list[RR]]:
        """Answer (rcode, answer, authority) for one question, chasing CNAMEs inside the zone."""
        qtype_name = QTYPE.get(qtype) if isinstance(qtype, int) else str(qtype).upper()
        name = normalize(qname)
        if not self.in_zone(name):
            return RCODE.REFUSED, [], []
        answer: list[RR] = []
        seen: set[str] = set()
        while True:
            if name in seen:  # a CNAME loop: stop where a real server would
                return RCODE.SERVFAIL, answer, []
            seen.add(name)
            node = self._nodes.get(name)
            if node is None:
                if name in self._ents:
                    return RCODE.NOERROR, answer, [self._negative_soa()]
                # RFC 6604: the rcode describes the last name of the chain.
                return RCODE.NXDOMAIN, answer, [self._negative_soa()]
            if qtype_name == "ANY":
                for rtype in node:
                    if rtype != "RRSIG" or do:
                        answer += node[rtype]
                return RCODE.NOERROR, answer, []
            if qtype_name in node and (
                qtype_name not in DNSSEC_TYPES or do or qtype_name == "RRSIG"
            ):
                answer += self._with_sigs(node, qtype_name, do)
                return RCODE.NOERROR, answer, []
            if "CNAME" in node and qtype_name != "CNAME":
                answer += self._with_sigs(node, "CNAME", do)
                name = normalize(node["CNAME"][0].rdata.label)
                if not self.in_zone(name):
                    # An authoritative server stops at its zone's edge (RFC 1034 4.3.2).
                    return RCODE.NOERROR, answer, []
                continue
            return RCODE.NOERROR, answer, [self._negative_soa()]

    def names(self) -> list[tuple[str, str]]:
        """Every (name, type) worth asking: each RRset, then the NODATA and NXDOMAIN cases."""
        out: list[tuple[str, str]] = []
        for name, node in self._nodes.items():
            for rtype in node:
                if rtype != "RRSIG":
                    out.append((name, rtype))
        out += self.nodata
        out += [(name, "A") for name in self.nxdomain]
        return out

    def owner_names(self) -> list[str]:
        """Every name that owns records."""
        return list(self._nodes)

    def to_zonefile(self) -> str:
        """The zone in RFC 1035 master format (accepted by nsd, unbound and named-checkzone)."""
        header = [f"$ORIGIN {self.origin}.", f"$TTL {DEFAULT_TTL}"]
        return "\n".join(header + self.text_lines) + "\n"


def build_zone(origin: str = DEFAULT_ORIGIN) -> Zone:
    """Build the test zone: the same 250+ names, records and edge cases on every call."""
    o = normalize(origin)
    lines: list[str] = []

    def add(owner: str, rtype: str, rdata: str, ttl: int = DEFAULT_TTL) -> None:
        fqdn = f"{o}." if owner == "@" else f"{owner}.{o}."
        lines.append(f"{fqdn} {ttl} IN {rtype} {rdata}")

    add("@", "SOA", f"ns1.{o}. hostmaster.{o}. 2024010101 3600 600 86400 {SOA_MINIMUM}", 3600)
    add("@", "NS", f"ns1.{o}.")
    add("ns1", "A", "127.0.0.1")
    add("@", "A", "192.0.2.1")
    add("@", "MX", f"10 mail-00.{o}.")
    add("@", "TXT", '"v=spf1 -all"')
    add("www", "CNAME", f"host-000.{o}.")
    for i in range(HOSTS):
        add(f"host-{i:03d}", "A", f"192.0.2.{i + 2}")
    for i in range(V6_HOSTS):
        add(f"v6-{i:03d}", "AAAA", f"2001:db8::{i + 1:x}")
    for i in range(DUAL_HOSTS):
        add(f"dual-{i:03d}", "A", f"198.51.100.{i + 1}")
        add(f"dual-{i:03d}", "AAAA", f"2001:db8:1::{i + 1:x}")
    for i in range(MAIL_NAMES):
        add(f"mail-{i:02d}", "A", f"203.0.113.{i + 1}")
        add(f"mail-{i:02d}", "MX", f"10 mail-{i:02d}.{o}.")
        add(f"mail-{i:02d}", "MX", f"20 host-{i:03d}.{o}.")
    for i in range(TXT_NAMES):
        add(f"txt-{i:02d}", "TXT", f'"record {i}" "second string {i}"')
    for i in range(SRV_NAMES):
        add(f"_svc{i:02d}._tcp", "SRV", f"{i} 5 {5000 + i} host-{i:03d}.{o}.")
    for i in range(CAA_NAMES):
        add(f"caa-{i:02d}", "CAA", '0 issue "letsencrypt.org"')
        add(f"caa-{i:02d}", "A", f"203.0.113.{100 + i}")
    # CNAME chains inside the zone: 1, 2 and 3 hops, each ending at an address.
    add("cname-1", "CNAME", f"host-001.{o}.")
    add("cname-2", "CNAME", f"cname-2b.{o}.")
    add("cname-2b", "CNAME", f"host-002.{o}.")
    add("cname-3", "CNAME", f"cname-3b.{o}.")
    add("cname-3b", "CNAME", f"cname-3c.{o}.")
    add("cname-3c", "CNAME", f"dual-000.{o}.")
    add("cname-out", "CNAME", "www.example.net.")
    add("cname-dangling", "CNAME", f"nx-dangling.{o}.")
    # CNAMEs into names a sinkhole blocks: the sinkhole must block these answers too.
    add("to-chatgpt", "CNAME", "chatgpt.com.")
    add("to-gemini", "CNAME", "gemini.google.com.")
    add("to-chatgpt-2hop", "CNAME", f"to-chatgpt.{o}.")
    # A signed name: RRSIGs (and the apex DNSKEY) go only to queries with DO.
    key = _b64("dnskey", 64)
    add("@", "DNSKEY", f"257 3 13 {key}")
    add("signed", "A", "192.0.2.250")
    add("signed", "TXT", '"signed data"')
    sig_tail = f"20300101000000 20240101000000 12345 {o}."
    add("@", "RRSIG", f"DNSKEY 13 2 {DEFAULT_TTL} {sig_tail} {_b64('sig-dnskey', 64)}")
    add("signed", "RRSIG", f"A 13 3 {DEFAULT_TTL} {sig_tail} {_b64('sig-a', 64)}")
    add("signed", "RRSIG", f"TXT 13 3 {DEFAULT_TTL} {sig_tail} {_b64('sig-txt', 64)}")
    # Over 1400 bytes of TXT: too big for UDP at 512 or 1232 bytes, so TC=1 then TCP.
    strings = " ".join(
        f'"{chr(ord("a") + i) * BIG_TXT_STRING_LEN}"' for i in range(BIG_TXT_STRINGS)
    )
    add("big-txt", "TXT", strings)
    for i in range(MANY_A_COUNT):
        add("many-a", "A", f"198.51.100.{100 + i}")
    # An empty non-terminal: "ent" exists only because "deep.ent" does.
    add("deep.ent", "A", "192.0.2.240")

    nodata = [
        (f"host-000.{o}", "AAAA"),
        (f"host-001.{o}", "MX"),
        (f"v6-000.{o}", "A"),
        (f"txt-00.{o}", "A"),
        (f"mail-00.{o}", "TXT"),
        (f"ent.{o}", "A"),
        (f"signed.{o}", "AAAA"),
    ]
    nxdomain = [f"nx-{i:03d}.{o}" for i in range(NXDOMAIN_NAMES)]
    nxdomain += [f"nope.host-000.{o}", f"nx-dangling.{o}"]
    zone = Zone(
        origin=o,
        records=RR.fromZone("\n".join(lines)),
        text_lines=lines,
        nxdomain=nxdomain,
        nodata=nodata,
        blocked_targets={
            f"to-chatgpt.{o}": "chatgpt.com",
            f"to-gemini.{o}": "gemini.google.com",
            f"to-chatgpt-2hop.{o}": "chatgpt.com",
        },
        out_of_zone={f"cname-out.{o}": "www.example.net"},
    )
    for name in zone.nxdomain:
        assert not zone.exists(name), name  # the data must keep its promises
    return zone
