"""Reading blocklists (hosts, plain domains, adblock, v2fly data files, AdGuard services
JSON) and writing them for other resolvers."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from resolver.catalog import normalize_name
from resolver.errors import ListError

FORMATS = ("hosts", "domains", "adblock", "v2fly", "adguard-services")
EXPORT_FORMATS = ("hosts", "domains", "dnsmasq", "unbound", "rpz", "adblock")
#: Lines looked at by detect_format; enough to get past any header comments.
DETECT_SAMPLE_LINES = 500
#: Refuse bigger downloads/files: the largest public lists are ~100 MB.
MAX_SOURCE_BYTES = 512 * 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
USER_AGENT = "sinkhole-lists/1"
#: Names every hosts file carries for the machine itself; they are not blocklist entries.
HOSTS_LOCAL_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "localhost4",
        "localhost4.localdomain4",
        "localhost6",
        "localhost6.localdomain6",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    }
)
ADBLOCK_UNSUPPORTED = "unsupported adblock rule"
#: Prefixes of a v2fly domain-list-community data line (data/<name> files).
V2FLY_PREFIXES = ("domain:", "full:", "keyword:", "regexp:", "include:")
#: v2fly marks ad and tracking hosts inside a service's file with this attribute; they
#: are shared by many sites (browser-intake-datadoghq.com) and are no chatbot.
V2FLY_SKIPPED_ATTRIBUTE = "ads"
#: How deep v2fly `include:` lines may nest (the real files nest two or three deep).
V2FLY_MAX_INCLUDE_DEPTH = 8

#: Reads the lines of another v2fly data file by name, for `include:`; None: no includes.
IncludeReader = Callable[[str], list[str]]


@dataclass
class ParseResult:
    """What a list yielded: blocked and allowed names, and the lines that were skipped."""

    domains: list[str]
    allow: list[str]
    errors: list[tuple[int, str]]
    format: str
    lines: int
    source: str = "<list>"
    skipped: int = field(default=0)  # comments, blank and local-host lines
    #: Where a name came from when the format says so: the AdGuard service or the
    #: v2fly file that listed it, for `catalog compare`.
    origin: dict[str, str] = field(default_factory=dict)

    def messages(self) -> list[str]:
        """The errors as "source:line: reason" lines."""
        return [format_error(self.source, line, reason) for line, reason in self.errors]


def format_error(source: str, line: int, reason: str) -> str:
    """One problem in a list, in the compiler style editors can jump to."""
    return f"{source}:{line}: {reason}"


def _is_ip(token: str) -> bool:
    try:
        ipaddress.ip_address(token)
    except ValueError:
        return False
    return True


def detect_format(lines: list[str]) -> str:
    """Guess "hosts", "adblock" or "domains" from the first meaningful lines."""
    hosts = adblock = plain = 0
    seen = 0
    head = "".join(lines[:5]).lstrip()
    if head.startswith("{") and '"blocked_services"' in "".join(lines[:DETECT_SAMPLE_LINES]):
        return "adguard-services"
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line.startswith(V2FLY_PREFIXES):
            return "v2fly"
        if line.startswith("[adblock") or line.startswith("[Adblock"):
            return "adblock"
        if line[0] in "#!":
            continue
        if line.startswith(("||", "@@", "|")):
            adblock += 1
        else:
            first = line.split(None, 1)[0]
            if (first[0].isdigit() or ":" in first) and _is_ip(first):
                hosts += 1
            else:
                plain += 1
        seen += 1
        if seen >= DETECT_SAMPLE_LINES:
            break
    if adblock and adblock >= hosts and adblock >= plain / 10:
        return "adblock"
    if hosts and hosts >= plain:
        return "hosts"
    return "domains"


def parse_lines(
    lines: Iterable[str],
    fmt: str = "auto",
    source: str = "<list>",
    *,
    include: IncludeReader | None = None,
    services: Iterable[str] = (),
) -> ParseResult:
    """Parse a list; bad lines are collected as (line number, reason) and skipped.

    `include` reads the v2fly data files that `include:` lines name; `services` keeps
    only those AdGuard services (ids or groups such as "ai"), all when empty.

    Raises:
        ListError: unknown format, or not one valid entry but some bad lines.
    """
    if fmt not in FORMATS and fmt != "auto":
        raise ListError(f"unknown list format {fmt!r}; valid: auto, {', '.join(FORMATS)}")
    if fmt == "auto":
        if not isinstance(lines, list):
            lines = list(lines)
        fmt = detect_format(lines)
    result = ParseResult([], [], [], fmt, 0, source)
    if fmt == "v2fly":
        _parse_v2fly(lines, result, include)
    elif fmt == "adguard-services":
        _parse_adguard_services(lines, result, frozenset(services))
    else:
        parser = {"hosts": _parse_hosts, "domains": _parse_domains, "adblock": _parse_adblock}
        parser[fmt](lines, result)
    # Lists repeat names (several mirrors merged); keep first occurrence, drop the rest.
    result.domains = list(dict.fromkeys(result.domains))
    result.allow = list(dict.fromkeys(result.allow))
    if not result.domains and not result.allow and result.errors:
        line, reason = result.errors[0]
        raise ListError(
            f"{source}: no valid {fmt} entries in {result.lines} lines "
            f"({len(result.errors)} errors; first: line {line}: {reason})"
        )
    return result


def _check_name(token: str) -> str:
    """normalize_name plus the rule that a list entry may not be a whole TLD."""
    name = normalize_name(token)
    if "." not in name:
        raise ValueError("a single label would block a whole top-level domain")
    return name


def _parse_hosts(lines: Iterable[str], result: ParseResult) -> None:
    domains, errors = result.domains, result.errors
    # Hosts files use one or two addresses on a million lines: validate each once.
    good_ips: set[str] = set()
    n = 0
    skipped = 0
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip() if "#" in raw else raw.strip()
        if not line:
            skipped += 1
            continue
        parts = line.split()
        ip = parts[0]
        if ip not in good_ips:
            if not _is_ip(ip):
                errors.append((n, f"{ip!r} is not an IP address"))
                continue
            good_ips.add(ip)
        if len(parts) == 1:
            errors.append((n, "no host name after the address"))
            continue
        for token in parts[1:]:
            if token in HOSTS_LOCAL_NAMES or token.lower() in HOSTS_LOCAL_NAMES:
                skipped += 1
                continue
            if token.startswith("*"):
                errors.append((n, f"{token!r}: hosts files cannot hold wildcards"))
                continue
            try:
                domains.append(_check_name(token))
            except ValueError as exc:
                errors.append((n, f"{token!r} is not a valid domain name: {exc}"))
    result.lines = n
    result.skipped = skipped


def _parse_domains(lines: Iterable[str], result: ParseResult) -> None:
    domains, errors = result.domains, result.errors
    n = 0
    skipped = 0
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line[0] in "#!":
            skipped += 1
            continue
        if "#" in line:
            line = line.split("#", 1)[0].rstrip()
        if " " in line or "\t" in line:
            errors.append((n, "expected one domain name per line"))
            continue
        try:
            domains.append(_check_name(line))
        except ValueError as exc:
            errors.append((n, f"{line!r} is not a valid domain name: {exc}"))
    result.lines = n
    result.skipped = skipped


def _parse_adblock(lines: Iterable[str], result: ParseResult) -> None:
    domains, allow, errors = result.domains, result.allow, result.errors
    n = 0
    skipped = 0
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line[0] == "!" or line[0] == "[":
            skipped += 1
            continue
        if line[0] == "#" and not line.startswith("##"):
            skipped += 1  # AdGuard DNS lists also use '#' comments
            continue
        target = domains
        body = line
        if body.startswith("@@"):
            target = allow
            body = body[2:]
        if body.startswith("||"):
            name = body[2:-1]
            # Nearly every rule is a plain "||name^": take it without the full split.
            if body[-1] != "^" or "^" in name or "/" in name or ":" in name:
                name, reason = _adblock_name(body[2:])
                if reason:
                    errors.append((n, reason))
                    continue
        elif len(body) > 1 and body[0] == "/" and body.endswith("/"):
            errors.append((n, f"{ADBLOCK_UNSUPPORTED}: regular expression"))
            continue
        elif "#" in body or "$" in body or "/" in body or "^" in body or "|" in body:
            errors.append((n, f"{ADBLOCK_UNSUPPORTED}: not a ||domain^ rule"))
            continue
        else:
            name = body  # AdGuard DNS syntax allows a bare host name
        try:
            target.append(_check_name(name))
        except ValueError as exc:
            errors.append((n, f"{name!r} is not a valid domain name: {exc}"))
    result.lines = n
    result.skipped = skipped


def _parse_v2fly(lines: Iterable[str], result: ParseResult, include: IncludeReader | None) -> None:
    """A v2fly domain-list-community data file, with its `include:` lines followed.

    `domain:x` and a bare `x` match x and the names under it, as our patterns do;
    `full:x` matches x alone, which no pattern expresses: it becomes x, which also
    covers the names under that one host. `keyword:` and `regexp:` match substrings
    of any name, which DNS patterns cannot express: they are reported and skipped.
    Entries marked `@ads` are shared ad and tracking hosts and are skipped.
    """
    lines = list(lines)
    result.lines = len(lines)
    origin = result.source.rsplit("/", 1)[-1]
    _v2fly_lines(lines, result, include, origin, (), [origin], None)


def _v2fly_lines(
    lines: list[str],
    result: ParseResult,
    include: IncludeReader | None,
    origin: str,
    only: tuple[str, ...],
    stack: list[str],
    parent_line: int | None,
) -> None:
    """Parse one data file; `only` is the attribute filter of the include that read it
    ("cn", "-!cn"); errors inside an included file are reported at the include line."""
    for n, raw in enumerate(lines, 1):
        where = n if parent_line is None else parent_line
        line = raw.split("#", 1)[0].strip()
        if not line:
            if parent_line is None:
                result.skipped += 1
            continue
        tokens = line.split()
        entry = tokens[0]
        attrs = {t[1:] for t in tokens[1:] if t.startswith("@")}
        # "&name" affiliations and anything else after the entry do not change it.
        if entry.startswith("include:"):
            _v2fly_include(entry[8:], tokens[1:], result, include, stack, where, n)
            continue
        if not _v2fly_wanted(attrs, only):
            continue
        if V2FLY_SKIPPED_ATTRIBUTE in attrs:
            if parent_line is None:
                result.skipped += 1
            continue
        kind, _, value = entry.partition(":") if ":" in entry else ("domain", "", entry)
        if kind in ("keyword", "regexp"):
            reason = f"{kind} rule {value!r}: a substring match that DNS patterns cannot express"
            result.errors.append((where, _in_file(reason, stack, n, parent_line)))
            continue
        if kind not in ("domain", "full"):
            reason = f"unknown v2fly rule type {kind!r}"
            result.errors.append((where, _in_file(reason, stack, n, parent_line)))
            continue
        try:
            name = _check_name(value)
        except ValueError as exc:
            reason = f"{value!r} is not a valid domain name: {exc}"
            result.errors.append((where, _in_file(reason, stack, n, parent_line)))
            continue
        result.domains.append(name)
        result.origin.setdefault(name, origin)


def _v2fly_wanted(attrs: set[str], only: tuple[str, ...]) -> bool:
    """An include's filter: "@cn" keeps entries with the attribute, "@-cn" those without."""
    for want in only:
        if want.startswith("-"):
            if want[1:] in attrs:
                return False
        elif want not in attrs:
            return False
    return True


def _v2fly_include(
    name: str,
    tail: list[str],
    result: ParseResult,
    include: IncludeReader | None,
    stack: list[str],
    where: int,
    n: int,
) -> None:
    parent = stack[-1]
    inner = len(stack) > 1
    if include is None:
        reason = f"include:{name}: the data directory is unknown, so it is not followed"
        result.errors.append((where, _in_file(reason, stack, n, where if inner else None)))
        return
    if name in stack:
        result.errors.append((where, f"include:{name}: includes itself (via {' > '.join(stack)})"))
        return
    if len(stack) > V2FLY_MAX_INCLUDE_DEPTH:
        result.errors.append((where, f"include:{name}: nested more than 8 deep"))
        return
    try:
        lines = include(name)
    except ListError as exc:
        result.errors.append((where, f"include:{name} (in {parent}): {exc}"))
        return
    only = tuple(t[1:] for t in tail if t.startswith("@"))
    _v2fly_lines(lines, result, include, name, only, [*stack, name], where)


def _in_file(reason: str, stack: list[str], n: int, parent_line: int | None) -> str:
    """A reason for a line of an included file names that file and its line."""
    if parent_line is None:
        return reason
    return f"{stack[-1]}:{n}: {reason}"


def _parse_adguard_services(lines: Iterable[str], result: ParseResult, wanted: frozenset) -> None:
    """AdGuard's blocked-services JSON: {"blocked_services": [{id, name, rules}]}.

    Each rule is an adblock rule; a bad one is reported at the line that holds it.
    `wanted` keeps the services with those ids or groups (all when empty).
    """
    lines = list(lines)
    result.lines = len(lines)
    text = "\n".join(lines)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ListError(
            f"{result.source}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})"
        ) from None
    services = data.get("blocked_services") if isinstance(data, dict) else None
    if not isinstance(services, list):
        raise ListError(f'{result.source}: no "blocked_services" list: not AdGuard services JSON')
    # JSON keeps no line numbers: find each rule's line by searching forward from the
    # last one found, which is exact for the published (one rule a line) file.
    cursor = 0
    for i, svc in enumerate(services):
        if not isinstance(svc, dict) or not isinstance(svc.get("rules"), list):
            line, cursor = _line_of(lines, '"id"', cursor)
            result.errors.append((line, f"blocked_services[{i}]: expected id, name and rules"))
            continue
        sid = str(svc.get("id", i))
        line, cursor = _line_of(lines, json.dumps(sid), cursor)
        if wanted and sid not in wanted and svc.get("group") not in wanted:
            continue
        label = f"{svc.get('name') or sid} ({sid})"
        for rule in svc["rules"]:
            if not isinstance(rule, str):
                result.errors.append((line, f"service {sid}: rule {rule!r} is not text"))
                continue
            line, cursor = _line_of(lines, json.dumps(rule), cursor)
            one = ParseResult([], [], [], "adblock", 0, result.source)
            _parse_adblock([rule], one)
            for _, reason in one.errors:
                result.errors.append((line, f"service {sid}: {reason}"))
            for name in one.domains:
                result.domains.append(name)
                result.origin.setdefault(name, label)
            result.allow.extend(one.allow)
            result.skipped += one.skipped


def _line_of(lines: list[str], needle: str, start: int) -> tuple[int, int]:
    """The 1-based line at or after index `start` that holds `needle`, and its index."""
    for i in range(start, len(lines)):
        if needle in lines[i]:
            return i + 1, i
    return start + 1, start


def _adblock_name(rest: str) -> tuple[str, str]:
    """Split "name^[$important]" into the name, or say why the rule is unsupported."""
    caret = rest.find("^")
    if caret < 0:
        if "/" in rest:
            return "", f"{ADBLOCK_UNSUPPORTED}: path"
        return "", f"{ADBLOCK_UNSUPPORTED}: missing '^' after the domain"
    name, tail = rest[:caret], rest[caret + 1 :]
    if "/" in name or ":" in name:
        return "", f"{ADBLOCK_UNSUPPORTED}: path or port"
    if tail.startswith("|"):
        tail = tail[1:]  # "^|" anchors the end: same meaning for a domain
    if tail in ("", "$important"):
        return name, ""
    if tail.startswith("$"):
        return "", f"{ADBLOCK_UNSUPPORTED}: options {tail!r}"
    return "", f"{ADBLOCK_UNSUPPORTED}: path"


@dataclass
class Fetched:
    """A list as read: its lines, or None when the server said it had not changed (304),
    and the validators a later conditional request sends back."""

    lines: list[str] | None
    etag: str | None = None
    last_modified: str | None = None


def read_source(
    source: str,
    progress: Callable[[int, int | None], None] | None = None,
    timeout: float = 30,
) -> list[str]:
    """Read a list from a file path or an http(s):// URL, as lines of UTF-8 text.

    `progress(bytes_read, total_or_None)` is called as data arrives.

    Raises:
        ListError: "SOURCE: reason" for a missing file, an HTTP error, a timeout,
            an oversized or non-UTF-8 source.
    """
    lines = fetch_source(source, progress=progress, timeout=timeout).lines
    assert lines is not None  # no validators sent, so never "not modified"
    return lines


def fetch_source(
    source: str,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    timeout: float = 30,
) -> Fetched:
    """Read a list like `read_source`; for a URL, ask only for a newer one than the
    validators given (If-None-Match, If-Modified-Since: RFC 9110 §13.1).

    Raises:
        ListError: as `read_source`.
    """
    if source.startswith(("http://", "https://")):
        headers = {"User-Agent": USER_AGENT}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        data, meta = _fetch(source, progress, timeout, headers)
        if data is None:
            return Fetched(None, etag, last_modified)
        got = Fetched(None, meta.get("ETag"), meta.get("Last-Modified"))
    else:
        data = _read_file(source, progress)
        got = Fetched(None)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ListError(f"{source}: not UTF-8 text (line {line}, byte {exc.start})") from None
    got.lines = text.splitlines()
    return got


def v2fly_includes(source: str, timeout: float = 30) -> IncludeReader:
    """Reads the data files a v2fly file includes: its siblings, on disk or on the web."""
    base = source.rsplit("/", 1)[0] if "/" in source else "."

    def read(name: str) -> list[str]:
        if not name or "/" in name or name.startswith(".") or any(c.isspace() for c in name):
            raise ListError(f"{name!r} is not a data file name")
        if base.startswith(("http://", "https://")):
            return read_source(f"{base}/{urllib.parse.quote(name)}", timeout=timeout)
        return read_source(str(Path(base) / name), timeout=timeout)

    return read


def _read_file(source: str, progress: Callable[[int, int | None], None] | None) -> bytes:
    path = Path(source)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ListError(f"{source}: is a directory, not a list file")
        if size > MAX_SOURCE_BYTES:
            raise ListError(f"{source}: larger than {MAX_SOURCE_BYTES // 2**20} MiB")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ListError(f"{source}: no such file") from None
    except PermissionError:
        raise ListError(f"{source}: permission denied") from None
    except OSError as exc:
        raise ListError(f"{source}: cannot read: {exc.strerror or exc}") from None
    if progress:
        progress(len(data), size)
    return data


def _fetch(
    url: str,
    progress: Callable[[int, int | None], None] | None,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> tuple[bytes | None, dict[str, str]]:
    """The body and headers of a GET; (None, {}) for 304 Not Modified."""
    request = urllib.request.Request(url, headers=headers or {"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > MAX_SOURCE_BYTES:
                raise ListError(f"{url}: larger than {MAX_SOURCE_BYTES // 2**20} MiB")
            chunks: list[bytes] = []
            done = 0
            while True:
                chunk = response.read(READ_CHUNK_BYTES)
                if not chunk:
                    break
                chunks.append(chunk)
                done += len(chunk)
                if done > MAX_SOURCE_BYTES:
                    raise ListError(f"{url}: larger than {MAX_SOURCE_BYTES // 2**20} MiB")
                if progress:
                    progress(done, total)
            # http.client returns a short body quietly when the peer hangs up early;
            # a half list imported as the whole one would silently unblock names.
            if total is not None and done != total:
                raise ListError(f"{url}: download cut off after {done} of {total} bytes")
            meta = {k: v for k in ("ETag", "Last-Modified") if (v := response.headers.get(k))}
            return b"".join(chunks), meta
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return None, {}
        raise ListError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise ListError(f"{url}: {exc.reason}") from None
    except TimeoutError:
        raise ListError(f"{url}: timed out after {timeout:g}s") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # A connection cut mid-body or a malformed response: report, never a traceback.
        raise ListError(f"{url}: {exc}") from None


def export(
    block: Iterable[str],
    allow: Iterable[str],
    fmt: str,
    ipv4: str = "0.0.0.0",
    ipv6: str = "::",
    ttl: int = 10,
    header: str = "",
) -> str:
    """Write block and allow patterns in a format another resolver or blocker reads.

    A pattern "x" means x and every name under it, "*.x" only the names under x;
    allow beats block. Block patterns an allow pattern covers are left out, since
    some formats (dnsmasq, hosts) let the more specific rule win instead.

    Raises:
        ListError: unknown format, bad address or a bad name.
    """
    if fmt not in EXPORT_FORMATS:
        raise ListError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")
    try:
        v4 = ipaddress.ip_address(ipv4)
        v6 = ipaddress.ip_address(ipv6)
    except ValueError as exc:
        raise ListError(f"sinkhole address: {exc}") from None
    if v4.version != 4 or v6.version != 6:
        raise ListError("sinkhole addresses: ipv4 must be IPv4 and ipv6 must be IPv6")
    allow_set = set(_normalize_all(allow, "allow"))
    allows = sorted(allow_set)
    blocks = sorted(set(_normalize_all(block, "block")))
    if allow_set:
        blocks = [b for b in blocks if not _allowed(b, allow_set)]
    writer = {
        "hosts": _export_hosts,
        "domains": _export_domains,
        "dnsmasq": _export_dnsmasq,
        "unbound": _export_unbound,
        "rpz": _export_rpz,
        "adblock": _export_adblock,
    }[fmt]
    comment = {"rpz": ";", "adblock": "!"}.get(fmt, "#")
    head = [f"{comment} {line}".rstrip() for line in header.splitlines()]
    body = writer(blocks, allows, str(v4), str(v6), ttl, comment)
    return "\n".join(head + body) + "\n"


def _allowed(pattern: str, allows: set[str]) -> bool:
    """True when every name `pattern` blocks is allowed (a set lookup per suffix)."""
    if pattern in allows:
        return True
    wildcard = pattern.startswith("*.")
    labels = pattern.removeprefix("*.").split(".")
    for i in range(len(labels)):
        suffix = ".".join(labels[i:])
        if suffix in allows:
            return True
        # "*.y" allows names strictly under y: all of pattern when pattern is
        # strictly under y, or when pattern itself is "*.y".
        if (i > 0 or wildcard) and "*." + suffix in allows:
            return True
    return False


def _normalize_all(names: Iterable[str], what: str) -> list[str]:
    out = []
    for raw in names:
        try:
            out.append(normalize_name(raw.strip()))
        except ValueError as exc:
            raise ListError(f"{what}: {raw!r} is not a valid domain name: {exc}") from None
    return out


def _export_hosts(
    blocks: list[str], allows: list[str], v4: str, v6: str, ttl: int, c: str
) -> list[str]:
    out = [f"{c} hosts entries match exact names only; names under them are not blocked"]
    for b in blocks:
        if b.startswith("*."):
            out.append(f"{c} {b}: a hosts file cannot express a wildcard (names under {b[2:]})")
            continue
        out.append(f"{v4} {b}")
        out.append(f"{v6} {b}")
    return out


def _export_domains(
    blocks: list[str], allows: list[str], v4: str, v6: str, ttl: int, c: str
) -> list[str]:
    out = [f"{c} allowed, not expressible in this format: {a}" for a in allows]
    return out + blocks


def _export_dnsmasq(
    blocks: list[str], allows: list[str], v4: str, v6: str, ttl: int, c: str
) -> list[str]:
    # dnsmasq: /x/ matches x and all names under it, /*.x/ only names under x, and
    # the most specific domain wins, so server=/allowed/# carves out an exception.
    out = []
    for b in blocks:
        out.append(f"address=/{b}/{v4}")
        out.append(f"address=/{b}/{v6}")
    for a in allows:
        out.append(f"server=/{a}/#")
    return out


def _export_unbound(
    blocks: list[str], allows: list[str], v4: str, v6: str, ttl: int, c: str
) -> list[str]:
    out = ["server:"]
    # always_null answers exactly 0.0.0.0 and ::; other addresses need a redirect zone.
    null = v4 == "0.0.0.0" and v6 == "::"
    for b in blocks:
        if b.startswith("*."):
            # A local-zone always covers its apex; blocking x itself could take a
            # shared host down, so the entry is left out rather than widened.
            out.append(
                f"    {c} {b}: local-zone cannot block only the names under {b[2:]};"
                " use the rpz export"
            )
            continue
        if null:
            out.append(f'    local-zone: "{b}." always_null')
        else:
            out.append(f'    local-zone: "{b}." redirect')
            out.append(f'    local-data: "{b}. {ttl} IN A {v4}"')
            out.append(f'    local-data: "{b}. {ttl} IN AAAA {v6}"')
    for a in allows:
        if a.startswith("*."):
            out.append(f"    {c} {a}: local-zone cannot allow only the names under {a[2:]}")
            continue
        out.append(f'    local-zone: "{a}." transparent')
    return out


def _export_rpz(
    blocks: list[str], allows: list[str], v4: str, v6: str, ttl: int, c: str
) -> list[str]:
    # RPZ owner names are relative to the zone origin the loading server gives.
    # "CNAME ." rewrites to NXDOMAIN; "CNAME rpz-passthru." exempts a name, and an
    # exact owner beats a wildcard, so allows under a blocked domain win.
    serial = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d00")
    out = [
        f"$TTL {ttl}",
        f"@ IN SOA localhost. hostmaster.localhost. {serial} 3600 600 86400 {ttl}",
        "@ IN NS localhost.",
    ]
    owners: dict[str, str] = {}
    for b in blocks:
        if not b.startswith("*."):
            owners[b] = "."
        owners["*." + b.removeprefix("*.")] = "."
    # Allows go in last so that an owner both blocked and allowed is allowed:
    # two CNAMEs at one owner would make the zone invalid.
    for a in allows:
        if not a.startswith("*."):
            owners[a] = "rpz-passthru."
        owners["*." + a.removeprefix("*.")] = "rpz-passthru."
    out.extend(f"{owner} CNAME {target}" for owner, target in owners.items())
    return out


def _export_adblock(
    blocks: list[str], allows: list[str], v4: str, v6: str, ttl: int, c: str
) -> list[str]:
    return [f"||{b}^" for b in blocks] + [f"@@||{a}^" for a in allows]
