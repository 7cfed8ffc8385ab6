"""`sinkhole catalog compare`: what a public list has that the enabled policy does not block."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from publicsuffixlist import PublicSuffixList

from resolver.catalog import covers
from resolver.listformats import ParseResult, parse_lines, read_source
from resolver.policy import Policy

#: Beside the catalog: names no catalog entry may block (office suites, search, code
#: hosting, social networks, app stores, CDNs, namesakes). A domains-format list.
MUST_NOT_BLOCK_FILE = "must-not-block.txt"
#: A name under a "*.x" pattern, to ask the policy whether the pattern is covered.
PROBE_LABEL = "sinkhole-probe"

_PSL: PublicSuffixList | None = None


@dataclass
class Comparison:
    """A list's names sorted into what the policy blocks, what it leaves, what is shared."""

    total: int
    blocked: int
    #: Registrable domain (the "second-level" domain under its public suffix) -> names.
    missing: dict[str, list[str]] = field(default_factory=dict)
    #: Names the must-not-block list says are shared: left out on purpose.
    shared: list[str] = field(default_factory=list)


def registrable_domain(name: str) -> str:
    """example.co.uk for chat.example.co.uk: the ICANN public suffix and one label more."""
    global _PSL
    if _PSL is None:
        # The list ships inside the package: no download at run time.
        _PSL = PublicSuffixList(only_icann=True)
    bare = name.removeprefix("*.")
    return _PSL.privatesuffix(bare) or bare


def must_not_block(catalog_dir: Path) -> list[str]:
    """The must-not-block names kept beside the catalog (empty when there is no such file)."""
    path = Path(catalog_dir) / MUST_NOT_BLOCK_FILE
    if not path.is_file():
        return []
    return parse_lines(read_source(str(path)), "domains", str(path)).domains


def compare(result: ParseResult, policy: Policy, shared: Iterable[str] = ()) -> Comparison:
    """Sort the block names of a parsed list by what `policy` does with them."""
    shared = list(shared)
    out = Comparison(total=len(result.domains), blocked=0)
    for name in result.domains:
        probe = f"{PROBE_LABEL}.{name[2:]}" if name.startswith("*.") else name
        if policy.explain(probe).blocked:
            out.blocked += 1
            continue
        if any(covers(name, s) or covers(s, probe) for s in shared):
            out.shared.append(name)
            continue
        out.missing.setdefault(registrable_domain(name), []).append(name)
    out.missing = dict(sorted(out.missing.items()))
    return out
