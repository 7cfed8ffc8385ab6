"""Writes the malformed-packet corpus (tests/corpus/*.bin) replayed at the server."""

from __future__ import annotations

import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUESTION = b"\x07example\x04test\x00\x00\x01\x00\x01"
OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"


def header(ident: int, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0):
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def packets() -> dict[str, bytes]:
    """name -> packet; every ID is distinct so an answer can be told apart."""
    cases = {
        "empty": b"",
        "one-byte": b"\x12",
        "header-cut": header(0x0101)[:11],
        "name-cut": header(0x0102) + b"\x07example",
        "type-cut": header(0x0103) + b"\x07example\x04test\x00\x00",
        "class-cut": header(0x0104) + b"\x07example\x04test\x00\x00\x01\x00",
        "pointer-to-itself": header(0x0105) + b"\xc0\x0c\x00\x01\x00\x01",
        "forward-pointer": header(0x0106) + b"\xc0\x20\x00\x01\x00\x01" + b"\x00" * 20,
        "pointer-loop-pair": header(0x0107) + b"\x01a\xc0\x0e\x00\x01\x00\x01",
        "pointer-into-header": header(0x0108) + b"\xc0\x02\x00\x01\x00\x01",
        "label-64": header(0x0109) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
        "label-type-0x80": header(0x010A) + b"\x81a\x00\x00\x01\x00\x01",
        "name-256": header(0x010B) + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",
        "name-300": header(0x010C) + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",
        "label-past-end": header(0x010D) + b"\x3fshort",
        "qdcount-0-with-question": header(0x010E, qd=0) + QUESTION,
        "qdcount-2-one-question": header(0x010F, qd=2) + QUESTION,
        "qdcount-65535": header(0x0110, qd=0xFFFF) + QUESTION,
        "ancount-lies": header(0x0111, an=5) + QUESTION,
        "nscount-lies": header(0x0112, ns=0xFFFF) + QUESTION,
        "arcount-lies": header(0x0113, ar=3) + QUESTION + OPT,
        "opt-cut": header(0x0114, ar=1) + QUESTION + OPT[:4],
        "opt-rdlen-past-end": header(0x0115, ar=1) + QUESTION + OPT[:9] + b"\x00\x40",
        "two-opts": header(0x0116, ar=2) + QUESTION + OPT + OPT,
        "opt-owner-not-root": header(0x0117, ar=1) + QUESTION + b"\x01x" + OPT[1:],
        "answer-record-cut": header(0x0118, an=1) + QUESTION + b"\xc0\x0c\x00\x01\x00",
        "all-ff": b"\xff" * 512,
        "all-zero": b"\x00" * 512,
        "counting": bytes(range(256)),
        "header-only-query": header(0x011A, qd=0),
        "opt-version-cut": header(0x011B, ar=1) + QUESTION + b"\x00\x00\x29",
        "authority-name-loop-cut": header(0x011C, ns=1) + QUESTION + b"\x3f" + b"b" * 10,
    }
    return cases


def main() -> None:
    for old in HERE.glob("*.bin"):
        old.unlink()
    for name, data in packets().items():
        (HERE / f"{name}.bin").write_bytes(data)


if __name__ == "__main__":
    main()
