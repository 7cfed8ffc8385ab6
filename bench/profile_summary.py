"""Summarise a py-spy raw profile (bench/profile.sh): inclusive share per function, per line.

Usage: python bench/profile_summary.py OUTDIR/pyspy.txt [TOP]
"""

from __future__ import annotations

import collections
import re
import sys


def summarise(path: str, top: int = 30) -> list[str]:
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            for name in {re.sub(r":\d+\)", ")", fr) for fr in frames}:
                inclusive[name] += n
            leaf[frames[-1]] += n
    if not total:
        return ["no samples"]
    out = [f"samples: {total}", "inclusive, per function:"]
    out += [f"{100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    out.append("leaf, per line:")
    out += [f"{100 * n / total:5.1f}%  {name}" for name, n in leaf.most_common(top)]
    return out


if __name__ == "__main__":
    print("\n".join(summarise(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30)))
