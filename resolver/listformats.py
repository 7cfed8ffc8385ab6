"""Reading blocklists (hosts, plain domains, adblock) and writing them for other resolvers."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from resolver.catalog import normalize_name
from resolver.errors import ListError

FORMATS = ("hosts", "domains", "adblock")
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
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
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


def parse_lines(lines: Iterable[str], fmt: str = "auto", source: str = "<list>") -> ParseResult:
    """Parse a list; bad lines are collected as (line number, reason) and skipped.

    Raises:
        ListError: unknown format, or not one valid entry but some bad lines.
    """
    if fmt not in FORMATS and fmt != "auto":
        raise ListError(f"unknown list format {fmt!r}; valid: auto, {', '.join(FORMATS)}")
    if fmt == "auto":
        if not isinstance(lines, list):
            lines = list(lines)
        fmt = detect_format(lines)
    parser = {"hosts": _parse_hosts, "domains": _parse_domains, "adblock": _parse_adblock}[fmt]
    result = ParseResult([], [], [], fmt, 0, source)
    parser(lines, result)
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
    if source.startswith(("http://", "https://")):
        data = _fetch(source, progress, timeout)
    else:
        data = _read_file(source, progress)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ListError(f"{source}: not UTF-8 text (line {line}, byte {exc.start})") from None
    return text.splitlines()


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


def _fetch(url: str, progress: Callable[[int, int | None], None] | None, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
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
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
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
