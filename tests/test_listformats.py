"""Tests for resolver.listformats: list import, and export checked by the real resolvers."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import AAAA, QTYPE, RR, A
from dnslib.server import BaseResolver, DNSServer

from resolver.errors import ListError
from resolver.listformats import (
    EXPORT_FORMATS,
    detect_format,
    export,
    format_error,
    parse_lines,
    read_source,
    v2fly_includes,
)

SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def require_tool(name: str) -> str:
    """Path of a command-line tool; skip without it locally, fail without it in CI."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))
    if path:
        return path
    message = f"{name} is not installed"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (required in CI)")
    pytest.skip(message)


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- import ---------------------------------------------------------------------------


def test_hosts_lines_give_names_and_skip_localhost_entries() -> None:
    lines = [
        "# a hosts file",
        "127.0.0.1 localhost",
        "::1 localhost ip6-localhost ip6-loopback",
        "0.0.0.0 ads.example.com tracker.example.net # two names",
        "127.0.0.1\tAds.Example.ORG.",
        "",
        ":: v6only.example.com",
    ]
    result = parse_lines(lines, "hosts")
    assert result.domains == [
        "ads.example.com",
        "tracker.example.net",
        "ads.example.org",
        "v6only.example.com",
    ]
    assert result.errors == []
    assert result.lines == 7


def test_hosts_bad_address_and_bad_name_are_reported_per_line() -> None:
    lines = ["0.0.0.0 good.example.com", "300.1.1.1 bad-ip.example.com", "0.0.0.0 bad..name"]
    result = parse_lines(lines, "hosts")
    assert result.domains == ["good.example.com"]
    assert [line for line, _ in result.errors] == [2, 3]
    assert "'300.1.1.1' is not an IP address" in result.errors[0][1]
    assert "empty label" in result.errors[1][1]


def test_domains_lines_with_comments_and_wildcards() -> None:
    lines = [
        "# comment",
        "! also a comment",
        "example.com",
        "*.wild.example.net",
        "UPPER.example.org.  # trailing comment",
        "example.com",
        "two names.example",
    ]
    result = parse_lines(lines, "domains")
    assert result.domains == ["example.com", "*.wild.example.net", "upper.example.org"]
    assert result.errors == [(7, "expected one domain name per line")]


def test_adblock_rules_and_exceptions_go_to_domains_and_allow() -> None:
    lines = [
        "[Adblock Plus 2.0]",
        "! Title: test",
        "||ads.example.com^",
        "||tracker.example.net^$important",
        "@@||ok.ads.example.com^",
        "||*.wild.example.org^",
        "||end.example.com^|",
    ]
    result = parse_lines(lines, "adblock")
    assert result.domains == [
        "ads.example.com",
        "tracker.example.net",
        "*.wild.example.org",
        "end.example.com",
    ]
    assert result.allow == ["ok.ads.example.com"]
    assert result.errors == []


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("||example.com^$third-party", "options"),
        ("||example.com^$important,dnstype=AAAA", "options"),
        ("||example.com/ads/banner.png", "path"),
        ("||example.com^/path", "path"),
        ("/ads[0-9]+\\.example\\.com/", "regular expression"),
        ("example.com##.banner", "not a ||domain^ rule"),
        ("|https://example.com/|", "not a ||domain^ rule"),
    ],
)
def test_adblock_rules_with_options_paths_or_regex_are_unsupported(rule: str, why: str) -> None:
    result = parse_lines(["||fine.example.com^", rule], "adblock")
    assert result.domains == ["fine.example.com"]
    assert len(result.errors) == 1
    line, reason = result.errors[0]
    assert line == 2
    assert reason.startswith("unsupported adblock rule")
    assert why in reason


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["# hosts", "127.0.0.1 localhost", "0.0.0.0 a.example.com"], "hosts"),
        (["::1 localhost", ":: a.example.com"], "hosts"),
        (["# list", "a.example.com", "b.example.com"], "domains"),
        (["! comment", "||a.example.com^", "||b.example.com^"], "adblock"),
        (["[Adblock Plus 2.0]", "a.example.com"], "adblock"),
        (["@@||a.example.com^"], "adblock"),
        ([], "domains"),
    ],
)
def test_detect_format_recognises_each_format(lines: list[str], expected: str) -> None:
    assert detect_format(lines) == expected
    if lines and expected != "domains":
        assert parse_lines(iter(lines)).format == expected


def test_broken_lines_are_reported_as_file_line_reason(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text(
        "# header\ngood.example.com\n\nbad..example.com\ngood2.example.com\ncom\nx.*.example.com\n",
        encoding="utf-8",
    )
    result = parse_lines(read_source(str(path)), "auto", source=str(path))
    assert result.format == "domains"
    assert result.domains == ["good.example.com", "good2.example.com"]
    messages = result.messages()
    assert [m.split(": ", 1)[0] for m in messages] == [f"{path}:4", f"{path}:6", f"{path}:7"]
    assert "empty label" in messages[0]
    assert "whole top-level domain" in messages[1]
    assert messages[0] == format_error(str(path), 4, result.errors[0][1])


def test_format_error_is_source_line_reason() -> None:
    assert format_error("lists/ads.txt", 12, "bad name") == "lists/ads.txt:12: bad name"


def test_list_with_only_bad_lines_is_a_list_error() -> None:
    with pytest.raises(ListError, match=r"^src: no valid domains entries .*line 1:"):
        parse_lines(["bad..one", "bad..two"], "domains", source="src")


def test_list_with_only_comments_is_empty_not_an_error() -> None:
    result = parse_lines(["# nothing here", ""], "auto")
    assert result.domains == [] and result.errors == []


def test_unknown_format_is_a_list_error() -> None:
    with pytest.raises(ListError, match="unknown list format 'csv'"):
        parse_lines(["a.example.com"], "csv")


def test_read_source_missing_file_is_a_list_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(ListError, match=f"^{missing}: no such file$"):
        read_source(str(missing))


def test_read_source_rejects_non_utf8_text(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"ok.example.com\ncaf\xe9.example.com\n")
    with pytest.raises(ListError, match=r"not UTF-8 text \(line 2"):
        read_source(str(path))


def test_read_source_strips_a_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfa.example.com\r\nb.example.com\r\n")
    assert read_source(str(path)) == ["a.example.com", "b.example.com"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An http.server on 127.0.0.1, port 0, serving a temp directory; stopped afterwards."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_read_source_fetches_a_url_and_reports_progress(http_dir: tuple[str, Path]) -> None:
    base, root = http_dir
    body = "".join(f"||host{i}.example.com^\n" for i in range(50_000))
    (root / "list.txt").write_text(body, encoding="utf-8")
    calls: list[tuple[int, int | None]] = []
    lines = read_source(
        f"{base}/list.txt", progress=lambda done, total: calls.append((done, total))
    )
    result = parse_lines(lines, source=f"{base}/list.txt")
    assert result.format == "adblock"
    assert len(result.domains) == 50_000
    assert calls and calls[-1] == (len(body), len(body))


def test_read_source_http_404_is_a_list_error(http_dir: tuple[str, Path]) -> None:
    base, _ = http_dir
    with pytest.raises(ListError, match=r"/nope\.txt: HTTP 404"):
        read_source(f"{base}/nope.txt")


def test_read_source_refused_connection_is_a_list_error() -> None:
    port = free_port(socket.SOCK_STREAM)
    with pytest.raises(ListError, match=f"^http://127.0.0.1:{port}/x: "):
        read_source(f"http://127.0.0.1:{port}/x", timeout=5)


def test_million_generated_names_are_all_parsed() -> None:
    lines = [f"0.0.0.0 host{i}.zone{i % 977}.example" for i in range(1_000_000)]
    result = parse_lines(lines)
    assert result.format == "hosts"
    assert len(result.domains) == 1_000_000
    assert result.errors == []
    assert result.lines == 1_000_000


# --- export ---------------------------------------------------------------------------

BLOCK = [
    "blocked.test",
    "Ads.Example.com.",
    "*.wild.example.org",
    "_dmarc.example.net",
    "xn--bcher-kva.example",
]
ALLOW = ["ok.ads.example.com"]


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_writes_header_as_comments(fmt: str) -> None:
    text = export(BLOCK, ALLOW, fmt, header="sinkhole export\nline two")
    first = text.splitlines()[0]
    assert first[0] in "#;!" and first.endswith("sinkhole export")


def test_dnsmasq_accepts_dnsmasq_export(tmp_path: Path) -> None:
    dnsmasq = require_tool("dnsmasq")
    conf = tmp_path / "export.conf"
    conf.write_text(export(BLOCK, ALLOW, "dnsmasq", ipv4="192.0.2.1", ipv6="2001:db8::1"))
    run = subprocess.run(
        [dnsmasq, "--test", f"--conf-file={conf}"], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    text = conf.read_text()
    assert "address=/ads.example.com/192.0.2.1" in text
    assert "address=/ads.example.com/2001:db8::1" in text
    assert "address=/*.wild.example.org/192.0.2.1" in text
    assert "server=/ok.ads.example.com/#" in text


def test_dnsmasq_rejects_a_broken_file_so_the_check_can_fail(tmp_path: Path) -> None:
    dnsmasq = require_tool("dnsmasq")
    conf = tmp_path / "broken.conf"
    conf.write_text("address=/x.test/999.1.1.1\n")
    run = subprocess.run([dnsmasq, "--test", f"--conf-file={conf}"], capture_output=True)
    assert run.returncode != 0


@pytest.mark.parametrize(("ipv4", "ipv6"), [("0.0.0.0", "::"), ("192.0.2.1", "2001:db8::1")])
def test_unbound_checkconf_accepts_unbound_export(tmp_path: Path, ipv4: str, ipv6: str) -> None:
    checkconf = require_tool("unbound-checkconf")
    part = tmp_path / "sinkhole.conf"
    part.write_text(export(BLOCK, ALLOW, "unbound", ipv4=ipv4, ipv6=ipv6))
    main = tmp_path / "unbound.conf"
    main.write_text(
        f'server:\n    username: ""\n    chroot: ""\n    directory: "{tmp_path}"\n'
        f'include: "{part}"\n'
    )
    run = subprocess.run([checkconf, str(main)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr
    text = part.read_text()
    if ipv4 == "0.0.0.0":
        assert 'local-zone: "ads.example.com." always_null' in text
    else:
        assert 'local-zone: "ads.example.com." redirect' in text
        assert f'local-data: "ads.example.com. 10 IN A {ipv4}"' in text
    assert 'local-zone: "ok.ads.example.com." transparent' in text
    # A local-zone always covers its apex: a wildcard is left out, never widened.
    assert '"wild.example.org."' not in text


def test_named_checkzone_accepts_rpz_export(tmp_path: Path) -> None:
    checkzone = require_tool("named-checkzone")
    zone = tmp_path / "rpz.zone"
    zone.write_text(export(BLOCK, ALLOW + ["*.ads.example.com"], "rpz", ttl=30))
    run = subprocess.run(
        [checkzone, "rpz.test", str(zone)], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = zone.read_text().splitlines()
    assert "$TTL 30" in lines
    assert "blocked.test CNAME ." in lines and "*.blocked.test CNAME ." in lines
    assert "*.wild.example.org CNAME ." in lines and "wild.example.org CNAME ." not in lines
    assert "ok.ads.example.com CNAME rpz-passthru." in lines


class _FixedUpstream(BaseResolver):
    """Answers every A/AAAA question with documentation addresses, as a stand-in upstream."""

    def resolve(self, request, handler):  # type: ignore[no-untyped-def]
        reply = request.reply()
        qname = request.q.qname
        if request.q.qtype == QTYPE.A:
            reply.add_answer(RR(qname, QTYPE.A, rdata=A("192.0.2.53"), ttl=60))
        elif request.q.qtype == QTYPE.AAAA:
            reply.add_answer(RR(qname, QTYPE.AAAA, rdata=AAAA("2001:db8::53"), ttl=60))
        return reply


@pytest.fixture
def fixed_upstream() -> Iterator[int]:
    server = DNSServer(_FixedUpstream(), address="127.0.0.1", port=0)
    server.start_thread()
    try:
        yield server.server.server_address[1]
    finally:
        server.stop()
        server.server.server_close()


def dig(port: int, name: str, qtype: str = "A") -> list[str]:
    tool = require_tool("dig")
    run = subprocess.run(
        [tool, "@127.0.0.1", "-p", str(port), "+short", "+time=2", "+tries=3", name, qtype],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.split()


def test_dnsmasq_serving_the_export_blocks_listed_names_and_forwards_others(
    tmp_path: Path, fixed_upstream: int
) -> None:
    dnsmasq = require_tool("dnsmasq")
    require_tool("dig")
    conf = tmp_path / "export.conf"
    conf.write_text(export(BLOCK, ALLOW, "dnsmasq"))
    port = free_port()
    proc = subprocess.Popen(
        [
            dnsmasq,
            "--keep-in-foreground",
            f"--conf-file={conf}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--port={port}",
            "--no-resolv",
            "--no-hosts",
            "--no-dhcp-interface=",
            "--pid-file=",
            "--cache-size=0",
            f"--server=127.0.0.1#{fixed_upstream}",
            "--log-facility=-",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert dig(port, "ads.example.com") == ["0.0.0.0"]
        assert dig(port, "deep.sub.ads.example.com") == ["0.0.0.0"]
        assert dig(port, "ads.example.com", "AAAA") == ["::"]
        assert dig(port, "x.wild.example.org") == ["0.0.0.0"]
        # "*.x" blocks only the names under x; allow beats block.
        assert dig(port, "wild.example.org") == ["192.0.2.53"]
        assert dig(port, "ok.ads.example.com") == ["192.0.2.53"]
        assert dig(port, "www.example.com") == ["192.0.2.53"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def test_hosts_export_lists_both_addresses_and_says_wildcards_cannot_be_expressed() -> None:
    lines = export(BLOCK, ALLOW, "hosts", ipv4="0.0.0.0", ipv6="::").splitlines()
    assert "0.0.0.0 ads.example.com" in lines
    assert ":: ads.example.com" in lines
    wildcard = [line for line in lines if "wild.example.org" in line]
    assert len(wildcard) == 1 and wildcard[0].startswith("#")
    assert "wildcard" in wildcard[0]
    # What a hosts export says must read back as the same names.
    assert sorted(parse_lines(lines, "hosts").domains) == sorted(
        ["_dmarc.example.net", "ads.example.com", "blocked.test", "xn--bcher-kva.example"]
    )


@pytest.mark.parametrize("fmt", ["adblock", "domains"])
def test_export_reads_back_as_the_same_patterns(fmt: str) -> None:
    result = parse_lines(export(BLOCK, ALLOW, fmt).splitlines(), fmt)
    assert sorted(result.domains) == sorted(
        [
            "blocked.test",
            "ads.example.com",
            "*.wild.example.org",
            "_dmarc.example.net",
            "xn--bcher-kva.example",
        ]
    )
    assert result.allow == (ALLOW if fmt == "adblock" else [])


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_allow_beats_block_in_every_export(fmt: str) -> None:
    block = ["a.example.com", "sub.b.example.com", "*.c.example.com"]
    allow = ["a.example.com", "b.example.com", "*.c.example.com"]
    # Every block pattern is covered by an allow, so nothing may be blocked.
    for raw in export(block, allow, fmt).splitlines():
        line = raw.strip()
        if not line or line[0] in "#;!@$" or line == "server:":
            continue
        for fragment in ("passthru", "transparent", "server=/", "localhost"):
            if fragment in line:
                break
        else:
            pytest.fail(f"{fmt}: {line!r} blocks an allowed name")


def test_export_rejects_unknown_format_and_bad_addresses() -> None:
    with pytest.raises(ListError, match="unknown export format 'bind'"):
        export(["a.example.com"], [], "bind")
    with pytest.raises(ListError, match="sinkhole address"):
        export(["a.example.com"], [], "hosts", ipv4="not-an-ip")
    with pytest.raises(ListError, match="ipv4 must be IPv4"):
        export(["a.example.com"], [], "hosts", ipv4="::1")
    with pytest.raises(ListError, match="'bad..name' is not a valid domain name"):
        export(["bad..name"], [], "domains")


@pytest.fixture
def truncating_server() -> Iterator[int]:
    """A loopback HTTP server that promises 1000 bytes, sends 20 and hangs up."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\na.example.com\nb.ex")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(timeout=5)


def test_read_source_cut_off_download_is_a_list_error(truncating_server: int) -> None:
    url = f"http://127.0.0.1:{truncating_server}/list.txt"
    with pytest.raises(ListError, match=f"^{url}: "):
        read_source(url, timeout=5)


# --- v2fly data files and AdGuard services JSON ---------------------------------------------

V2FLY_MAIN = """\
# A service file, as in v2fly/domain-list-community data/
include:helper
include:regional @cn
example-chat.com
domain:chat-cdn.net
full:api.example-host.org   # one host of a shared domain
keyword:chatbot
regexp:^chat-\\d+\\.example\\.net$
full:browser-intake.example-metrics.com @ads
shop.example-chat.com @cn &other
bad..name
"""


def write_v2fly(tmp_path: Path) -> Path:
    (tmp_path / "helper").write_text("helper-ai.io\ninclude:main\n")
    (tmp_path / "regional").write_text("cn-chat.cn @cn\nglobal-chat.com @!cn\n")
    main = tmp_path / "main"
    main.write_text(V2FLY_MAIN)
    return main


def test_v2fly_file_follows_includes_and_keeps_domain_and_full_entries(tmp_path: Path) -> None:
    main = write_v2fly(tmp_path)
    source = str(main)
    result = parse_lines(read_source(source), "auto", source, include=v2fly_includes(source))
    assert result.format == "v2fly"
    assert result.domains == [
        "helper-ai.io",
        "cn-chat.cn",  # the include's @cn filter drops global-chat.com
        "example-chat.com",
        "chat-cdn.net",
        "api.example-host.org",
        "shop.example-chat.com",
    ]
    assert result.origin["helper-ai.io"] == "helper"
    assert result.origin["chat-cdn.net"] == "main"
    reasons = dict(result.errors)
    # The include back to main is a loop, reported where helper was included.
    assert "includes itself" in reasons[2]
    assert "keyword rule 'chatbot'" in reasons[7] and "cannot express" in reasons[7]
    assert "regexp rule" in reasons[8]
    assert "'bad..name' is not a valid domain name" in reasons[11]
    # The @ads host is skipped, not blocked and not an error.
    assert "browser-intake.example-metrics.com" not in result.domains
    assert 9 not in reasons


def test_v2fly_include_without_a_directory_or_missing_file_is_reported(tmp_path: Path) -> None:
    lines = ["include:nowhere", "example-chat.com"]
    result = parse_lines(lines, "v2fly", "data/x")
    assert result.domains == ["example-chat.com"]
    assert result.errors and "not followed" in result.errors[0][1]
    include = v2fly_includes(str(tmp_path / "x"))
    result = parse_lines(lines, "v2fly", str(tmp_path / "x"), include=include)
    assert result.errors[0][0] == 1 and "no such file" in result.errors[0][1]


def test_v2fly_includes_are_read_from_the_same_url_directory(http_dir: tuple[str, Path]) -> None:
    base, root = http_dir
    write_v2fly(root)
    source = f"{base}/main"
    result = parse_lines(read_source(source), "auto", source, include=v2fly_includes(source))
    assert "helper-ai.io" in result.domains and "cn-chat.cn" in result.domains


ADGUARD_JSON = """\
{
  "blocked_services": [
    {
      "id": "examplechat",
      "name": "Example Chat",
      "rules": [
        "||example-chat.com^",
        "||chat-cdn.net^",
        "||example-chat.com/path^"
      ],
      "group": "ai"
    },
    {
      "id": "videos",
      "name": "Videos",
      "rules": [
        "||videos.example^"
      ],
      "group": "streaming"
    }
  ]
}
"""


def test_adguard_services_json_gives_names_per_service_and_errors_at_their_line() -> None:
    lines = ADGUARD_JSON.splitlines()
    result = parse_lines(lines, "auto", "services.json")
    assert result.format == "adguard-services"
    assert result.domains == ["example-chat.com", "chat-cdn.net", "videos.example"]
    assert result.origin["chat-cdn.net"] == "Example Chat (examplechat)"
    assert len(result.errors) == 1
    line, reason = result.errors[0]
    assert line == 9 and reason.startswith("service examplechat: unsupported adblock rule")


def test_adguard_services_filter_by_group_or_id() -> None:
    lines = ADGUARD_JSON.splitlines()
    assert parse_lines(lines, "adguard-services", services=["ai"]).domains == [
        "example-chat.com",
        "chat-cdn.net",
    ]
    assert parse_lines(lines, "adguard-services", services=["videos"]).domains == ["videos.example"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"blocked_services": [', "services.json:1: not valid JSON"),
        ('{"groups": []}', 'no "blocked_services" list'),
    ],
)
def test_broken_adguard_services_json_is_one_list_error(text: str, expected: str) -> None:
    with pytest.raises(ListError, match=expected):
        parse_lines(text.splitlines(), "adguard-services", "services.json")
