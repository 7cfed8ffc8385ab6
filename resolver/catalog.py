"""The shipped service catalog: reads and validates blocklists/*.yaml."""

from __future__ import annotations

import datetime
import encodings.idna  # noqa: F401 - loaded now: a reload after dropping privileges can't
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from resolver.config import SINKHOLE_MODES
from resolver.errors import ListError

CATALOG_ENV = "SINKHOLE_CATALOG"
CATALOG_GLOBS = ("*.yaml", "*.yml")
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
#: Values a catalog entry may give for `answer`; a YAML null (or no key) means
#: "the configured sinkhole mode". "null" quoted is the mode that answers 0.0.0.0/::.
#: A service's own answer mode: the same modes as `sinkhole.mode` in the config.
ANSWERS = SINKHOLE_MODES
FILE_KEYS = frozenset({"category", "description", "services"})
SERVICE_KEYS = frozenset(
    {"name", "domains", "keep", "api", "sources", "verified", "notes", "answer"}
)
SERVICE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")

# Everything a label may hold after lower-casing; '_' appears in real names (SRV,
# _dns.resolver.arpa, DKIM) and blocking them must stay possible.
_VALID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_."
_STRIP_VALID = str.maketrans("", "", _VALID_CHARS)


@dataclass(frozen=True)
class Service:
    """One blockable service (or bypass mechanism) from a catalog file."""

    id: str
    name: str
    category: str
    domains: tuple[str, ...]
    keep: tuple[str, ...]
    api: tuple[str, ...]
    sources: tuple[str, ...]
    verified: str | None
    notes: str | None
    answer: str | None  # None: the configured sinkhole mode
    file: str


@dataclass(frozen=True)
class Catalog:
    """All services of a catalog directory, grouped by category in file order."""

    directory: Path
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    def resolve(self, name: str) -> tuple[str, ...]:
        """Turn a category name or a service id into service ids.

        Raises:
            ListError: the name is neither; the message lists the valid ones.
        """
        if name in self.categories:
            return self.categories[name]
        if name in self.services:
            return (name,)
        raise ListError(
            f"unknown list {name!r}; categories: {', '.join(self.categories) or '(none)'}; "
            f"services: {', '.join(sorted(self.services)) or '(none)'}"
        )


def normalize_name(name: str) -> str:
    """Lower-case a domain name, drop one trailing dot, IDNA-encode unicode.

    A leading "*." (names under the rest) is kept. Underscores are allowed.

    Raises:
        ValueError: the name is not a valid domain name; the message says why.
    """
    if not isinstance(name, str):
        raise ValueError("not a string")
    # Fast path first: nearly every name in a real list is plain ASCII.
    if name.isascii():
        s = name.lower()
    else:
        s = _idna_encode(name.strip())
    if s.endswith("."):
        s = s[:-1]
    if not s:
        raise ValueError("empty name")
    wildcard = s.startswith("*.")
    body = s[2:] if wildcard else s
    bad = body.translate(_STRIP_VALID)
    if bad:
        if "*" in bad:
            raise ValueError("'*' is only allowed as a leading '*.'")
        raise ValueError(f"bad character {bad[0]!r}")
    if len(body) > MAX_NAME_LENGTH:
        raise ValueError(f"longer than {MAX_NAME_LENGTH} characters")
    if not body or body[0] == "." or body[-1] == "." or ".." in body:
        raise ValueError("empty label")
    # A name of at most 63 characters cannot hold a longer label: skip the split,
    # which is most of the cost on million-line lists.
    if len(body) > MAX_LABEL_LENGTH:
        for label in body.split("."):
            if len(label) > MAX_LABEL_LENGTH:
                raise ValueError(f"label longer than {MAX_LABEL_LENGTH} characters")
    # No top-level domain is all digits, so such a "name" is an IPv4 address.
    if body.rpartition(".")[2].isdigit():
        raise ValueError("an IP address, not a domain name")
    return s


def _idna_encode(name: str) -> str:
    """Encode a unicode name label by label (IDNA 2003, the stdlib codec)."""
    wildcard = name.startswith("*.")
    body = name[2:] if wildcard else name
    labels = []
    for label in body.split("."):
        if label.isascii():
            labels.append(label.lower())
            continue
        try:
            labels.append(label.encode("idna").decode("ascii").lower())
        except UnicodeError as exc:
            raise ValueError(f"cannot IDNA-encode label {label!r}: {exc}") from None
    encoded = ".".join(labels)
    return f"*.{encoded}" if wildcard else encoded


def covers(pattern: str, name: str) -> bool:
    """True when `pattern` matches `name`: equal or under it; "*.x" only under x."""
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern or name.endswith("." + pattern)


def default_catalog_dir() -> Path:
    """$SINKHOLE_CATALOG, else the blocklists shipped in the wheel, else the checkout's."""
    env = os.environ.get(CATALOG_ENV)
    if env:
        return Path(env)
    package_dir = Path(__file__).resolve().parent
    installed = package_dir / "blocklists"
    if installed.is_dir():
        return installed
    return package_dir.parent / "blocklists"


def load_catalog(directory: Path | None = None) -> Catalog:
    """Read and validate every catalog file in `directory`.

    Raises:
        ListError: the first problem found (file, key and reason).
    """
    catalog, problems = _scan(directory)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ListError(problems[0] + more)
    return catalog


def check_catalog(directory: Path | None = None) -> list[str]:
    """Every problem in the catalog, one line each; empty when it is fine."""
    return _scan(directory)[1]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last.

    PyYAML silently keeps the second of two equal keys, which would let a
    duplicated service id hide half of its entry.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                duplicate = False  # an unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            try:
                seen.add(key)
            except TypeError:
                pass
        return super().construct_mapping(node, deep=deep)


def _scan(directory: Path | None) -> tuple[Catalog, list[str]]:
    """Load what can be loaded and collect every problem on the way."""
    directory = Path(directory) if directory is not None else default_catalog_dir()
    problems: list[str] = []
    categories: dict[str, tuple[str, ...]] = {}
    services: dict[str, Service] = {}
    if not directory.is_dir():
        problems.append(f"{directory}: catalog directory not found")
        return Catalog(directory, categories, services), problems
    files = sorted({p for pattern in CATALOG_GLOBS for p in directory.glob(pattern)})
    if not files:
        problems.append(f"{directory}: no catalog files (*.yaml)")
    owner: dict[str, str] = {}  # service id -> file that defined it first
    pattern_owner: dict[str, str] = {}  # domain pattern -> service id
    for path in files:
        label = f"{directory.name}/{path.name}"
        data = _read_yaml(path, label, problems)
        if data is None:
            continue
        _check_file(data, path, label, problems, categories, services, owner, pattern_owner)
    for cat in categories:
        if cat in services:
            problems.append(f"service id {cat!r} is also a category name; rename one")
    return Catalog(directory, categories, services), problems


def _read_yaml(path: Path, label: str, problems: list[str]) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"{label}: not UTF-8 text (byte {exc.start})")
        return None
    except OSError as exc:
        problems.append(f"{label}: cannot read: {exc.strerror or exc}")
        return None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        reason = exc.problem or exc.context or "invalid YAML"
        problems.append(f"{where}: YAML error: {reason}")
        return None
    except yaml.YAMLError as exc:
        problems.append(f"{label}: YAML error: {exc}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{label}: expected a mapping with category and services")
        return None
    return data


def _check_file(
    data: dict,
    path: Path,
    label: str,
    problems: list[str],
    categories: dict[str, tuple[str, ...]],
    services: dict[str, Service],
    owner: dict[str, str],
    pattern_owner: dict[str, str],
) -> None:
    for key in data:
        if key not in FILE_KEYS:
            problems.append(f"{label}: unknown key {key!r} (valid: {', '.join(sorted(FILE_KEYS))})")
    category = data.get("category")
    if not isinstance(category, str) or not SERVICE_ID_RE.match(category):
        problems.append(f"{label}: category: missing or not a lower-case id like 'ai-chatbots'")
        return
    if category in categories:
        problems.append(f"{label}: category: {category!r} is already used by another file")
        return
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        problems.append(f"{label}: description: must be text")
    entries = data.get("services")
    if not isinstance(entries, dict) or not entries:
        problems.append(f"{label}: services: missing or not a mapping of service ids")
        categories[category] = ()
        return
    ids: list[str] = []
    for sid, entry in entries.items():
        where = f"{label}: services.{sid}"
        if not isinstance(sid, str) or not SERVICE_ID_RE.match(sid):
            problems.append(f"{where}: service id must be lower-case letters, digits and '-'")
            continue
        if sid in owner:
            problems.append(f"{where}: service id already defined in {owner[sid]}")
            continue
        service = _check_service(sid, entry, category, path, where, problems)
        if service is None:
            continue
        for i, pattern in enumerate(service.domains):
            other = pattern_owner.get(pattern)
            if other is not None and other != sid:
                problems.append(
                    f"{where}.domains[{i}]: {pattern!r} is also listed by service {other!r}"
                )
            pattern_owner.setdefault(pattern, sid)
        owner[sid] = label
        services[sid] = service
        ids.append(sid)
    categories[category] = tuple(ids)


def _check_service(
    sid: str, entry: Any, category: str, path: Path, where: str, problems: list[str]
) -> Service | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected a mapping with name, domains and sources")
        return None
    before = len(problems)
    for key in entry:
        if key not in SERVICE_KEYS:
            problems.append(
                f"{where}: unknown key {key!r} (valid: {', '.join(sorted(SERVICE_KEYS))})"
            )
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{where}.name: missing or empty")
    notes = entry.get("notes")
    if notes is not None and not isinstance(notes, str):
        problems.append(f"{where}.notes: must be text")
        notes = None
    raw_domains = entry.get("domains")
    if raw_domains is None:
        problems.append(f"{where}.domains: missing")
    elif raw_domains == [] and not notes:
        # A service DNS cannot separate (e.g. a path on a shared host) is listed
        # with no domains so that the gap shows; notes must say why.
        problems.append(f"{where}.domains: empty; a service DNS cannot block needs notes")
    domains = _names(raw_domains, f"{where}.domains", problems)
    keep = _names(entry.get("keep", []), f"{where}.keep", problems)
    api = _names(entry.get("api", []), f"{where}.api", problems)
    for key, names in (("keep", keep), ("api", api)):
        for i, n in enumerate(names):
            if not any(covers(d, n.removeprefix("*.")) or d == n for d in domains):
                problems.append(
                    f"{where}.{key}[{i}]: {n!r} is not under any of the service's domains"
                )
    sources = entry.get("sources")
    if not isinstance(sources, list) or not sources:
        problems.append(f"{where}.sources: missing or empty; say where each entry was verified")
        sources = []
    for i, src in enumerate(sources):
        if not isinstance(src, str) or not src.startswith(("https://", "http://")):
            problems.append(f"{where}.sources[{i}]: {src!r} is not an http(s) URL")
    verified = entry.get("verified")
    if isinstance(verified, datetime.date):
        verified = verified.isoformat()  # YAML reads an unquoted date as a date
    if verified is not None and (not isinstance(verified, str) or not DATE_RE.match(verified)):
        problems.append(f"{where}.verified: {verified!r} is not a date like 2026-11-29")
    answer = entry.get("answer")
    if answer is not None and answer not in ANSWERS:
        problems.append(f"{where}.answer: {answer!r} is not one of {', '.join(ANSWERS)} (or null)")
    if len(problems) != before:
        return None
    return Service(
        id=sid,
        name=name.strip(),
        category=category,
        domains=domains,
        keep=keep,
        api=api,
        sources=tuple(sources),
        verified=verified,
        notes=notes.strip() if notes else None,
        answer=answer,
        file=str(path),
    )


def _names(value: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    """Normalise a list of domain names, reporting each bad one by index."""
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(f"{where}: must be a list of domain names")
        return ()
    out: list[str] = []
    for i, raw in enumerate(value):
        if not isinstance(raw, str):
            problems.append(f"{where}[{i}]: {raw!r} is not a domain name")
            continue
        try:
            n = normalize_name(raw.strip())
        except ValueError as exc:
            problems.append(f"{where}[{i}]: {raw!r} is not a valid domain name ({exc})")
            continue
        if "." not in n.removeprefix("*."):
            # A single label would take a whole top-level domain off the network.
            problems.append(f"{where}[{i}]: {raw!r} is a single label (a whole TLD)")
            continue
        if n in out:
            problems.append(f"{where}[{i}]: {raw!r} is listed twice")
            continue
        out.append(n)
    return tuple(out)
