"""Long fuzz run of resolver/wire.py: atheris (coverage-guided) when installed, else random."""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

try:
    import atheris
except ImportError:  # the random mode below needs nothing but the standard library
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from resolver import wire
else:
    from resolver import wire

CORPUS = ROOT / "tests" / "corpus"
#: A query the answers are scanned against (scan_answer needs the question asked).
SEED_QUERY = (
    struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 1)
    + b"\x03www\x07example\x04test\x00\x00\x01\x00\x01"
    + b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00"
)
QUERY = wire.parse_query(SEED_QUERY)
SEED_ANSWER = (
    struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 2, 1, 0)
    + SEED_QUERY[12:41]
    + b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x01\x2c\x00\x06\x03cdn\xc0\x10"
    + b"\xc0\x29\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"
    + b"\xc0\x10\x00\x06\x00\x01\x00\x00\x00\x3c\x00\x16\x02ns\xc0\x10\x02hm\xc0\x10"
    + b"\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04\x00\x00\x00\x3c"
)


class Stats:
    runs = 0
    parsed = 0
    rejected = 0
    scanned = 0


def one_input(data: bytes) -> None:
    """The property: only WireError escapes, and every error answer is a valid header."""
    Stats.runs += 1
    try:
        wire.parse_query(data)
        Stats.parsed += 1
    except wire.WireError:
        Stats.rejected += 1
    for rcode in (wire.Rcode.FORMERR, wire.Rcode.REFUSED, wire.Rcode.BADVERS):
        out = wire.error_response(data, rcode)
        if out is not None:
            assert len(out) >= 12 and out[:2] == data[:2] and out[2] & 0x80, out
    # Answers are compared with our query's question: give the input that question.
    answer = data[:2] + b"\x81\x80" + data[4:12] + SEED_QUERY[12:41] + data[12:]
    for candidate in (data, answer):
        try:
            wire.scan_answer(candidate, QUERY)
            Stats.scanned += 1
        except wire.WireError:
            pass


def seeds() -> list[bytes]:
    found = [p.read_bytes() for p in sorted(CORPUS.glob("*.bin"))]
    return found + [SEED_QUERY, SEED_ANSWER]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        if op == 0 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 1:
            buf.insert(rng.randrange(len(buf) + 1), rng.choice((0, 0x3F, 0x40, 0xC0, 0xFF)))
        elif op == 2 and buf:
            del buf[rng.randrange(len(buf)) :]
        elif op == 3 and len(buf) >= 12:
            struct.pack_into("!H", buf, rng.choice((4, 6, 8, 10)), rng.randrange(65536))
        else:
            buf += rng.randbytes(rng.randint(1, 16))
    return bytes(buf)


def random_run(seconds: float, seed: int) -> dict:
    rng = random.Random(seed)
    pool = seeds()
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        for _ in range(1000):
            if rng.random() < 0.2:
                data = rng.randbytes(rng.randint(0, 600))
            else:
                data = mutate(rng, rng.choice(pool))
            one_input(data)
    elapsed = time.monotonic() - start
    return {"mode": "random mutation", "seconds": round(elapsed, 1), "runs": Stats.runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--mode", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--seed", type=int, default=7)
    args, rest = parser.parse_known_args()
    mode = args.mode
    if mode == "auto":
        mode = "atheris" if atheris is not None else "random"
    if mode == "random":
        result = random_run(args.seconds, args.seed)
        rate = result["runs"] / max(result["seconds"], 1e-9)
        print(
            f"{result['mode']}: {result['runs']} inputs in {result['seconds']} s "
            f"({rate:.0f}/s), parsed {Stats.parsed}, rejected {Stats.rejected}, "
            f"answers scanned {Stats.scanned}; no exception other than WireError"
        )
        return 0
    work = Path(tempfile.mkdtemp(prefix="sinkhole-fuzz-"))
    for i, data in enumerate(seeds()):
        (work / f"seed-{i:03d}").write_bytes(data)
    argv = [
        sys.argv[0],
        f"-max_total_time={int(args.seconds)}",
        f"-seed={args.seed}",
        "-max_len=1024",
        "-print_final_stats=1",
        f"-artifact_prefix={ROOT / 'bench'}{os.sep}crash-",
        *rest,
        str(work),
    ]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
