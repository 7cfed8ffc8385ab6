"""What sinkhole records and shows is true: reloads reach the recorder, names from the
wire are shown safely, answers carry the right flags, gaps and rate-limited attempts."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import struct
import time
from datetime import datetime
from pathlib import Path

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import sqlite_utils
import yaml

from resolver.store.db import connect
from resolver.store.schema import migrate
from tests.conftest import query, raw_udp, run_cli, wait_for
from tests.dnstest.daemons import free_port

BLOCKED = "chatgpt.com"
#: A control byte sinkhole did not put there itself: C0, DEL, C1.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def rows(db: str, sql: str, *args) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []  # not created yet
    finally:
        conn.close()


def reload_with(server, **changes) -> None:
    """Rewrite the server's config file with `changes`, SIGHUP, wait for the reload line."""
    before = server.stderr_text().count("reloaded config")
    config = yaml.safe_load(server.config_path.read_text())
    config.update(changes)
    server.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    server.reload()
    assert wait_for(lambda: server.stderr_text().count("reloaded config") > before), (
        server.stderr_text()
    )


def raw_query(labels: list[bytes], qtype: int = 1, ident: int = 0x5151, flags: int = 0x0100):
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    return struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1)


# -- a reload reaches what is recorded ---------------------------------------------------------


def test_sighup_privacy_ip_to_hashed_stores_no_address_from_the_next_query_on(sinkhole):
    server = sinkhole({"privacy": {"clients": "ip"}})
    db = server.config["database"]
    assert query(server.address, "before.chatgpt.com").rcode() == dns.rcode.NOERROR
    assert wait_for(lambda: rows(db, "SELECT client FROM hits WHERE qname LIKE 'before.%'"))
    assert rows(db, "SELECT client FROM hits WHERE qname LIKE 'before.%'") == [("127.0.0.1",)]
    # Asked again within the minute: held in memory, written when the minute is over.
    for _ in range(3):
        query(server.address, "before.chatgpt.com")
    reload_with(server, privacy={"clients": "hashed"})
    for i in range(5):
        query(server.address, f"after{i}.chatgpt.com")
    assert wait_for(lambda: len(rows(db, "SELECT 1 FROM hits WHERE qname LIKE 'after%'")) == 5)
    server.stop()
    after = rows(db, "SELECT client FROM hits WHERE qname LIKE 'after%'")
    assert after and all(c.startswith("h:") for (c,) in after), after
    # The held lookups were written after the reload: under the stricter mode too.
    held = rows(db, "SELECT client, count FROM hits WHERE qname LIKE 'before.%' ORDER BY id")
    assert held[0] == ("127.0.0.1", 1)
    assert [c for c, _ in held[1:]] and all(c.startswith("h:") for c, _ in held[1:]), held
    assert sum(n for _, n in held) == 4
    assert not rows(db, "SELECT 1 FROM hits WHERE client = '127.0.0.1' AND qname LIKE 'after%'")
    assert "privacy.clients hashed" in server.stderr_text()


def test_sighup_group_labels_reach_the_recorder(sinkhole):
    groups = {"town-hall": {"networks": ["127.0.0.0/8"]}}
    server = sinkhole({"privacy": {"clients": "group"}, "clients": {"groups": groups}})
    db = server.config["database"]
    query(server.address, "g1.chatgpt.com")
    assert wait_for(
        lambda: rows(db, "SELECT client_group FROM hits WHERE qname = 'g1.chatgpt.com'")
    )
    reload_with(server, clients={"groups": {"library": {"networks": ["127.0.0.0/8"]}}})
    query(server.address, "g2.chatgpt.com")
    assert wait_for(lambda: rows(db, "SELECT 1 FROM hits WHERE qname = 'g2.chatgpt.com'"))
    assert rows(db, "SELECT client, client_group FROM hits ORDER BY id") == [
        (None, "town-hall"),
        (None, "library"),
    ]


def test_sighup_retention_purges_at_the_next_flush(sinkhole, tmp_path: Path):
    db = str(tmp_path / "kept.db")
    conn = connect(db)
    migrate(sqlite_utils.Database(conn))
    old = int(time.time()) - 10 * 86_400
    with conn:
        conn.executemany(
            "INSERT INTO hits (ts, client, client_group, qname, qtype, service, category, rule,"
            " action, count) VALUES (?, '10.0.0.1', NULL, 'old.chatgpt.com', 'A',"
            " 'openai-chatgpt', 'ai-chatbots', 'chatgpt.com', 'null', 1)",
            [(old + i,) for i in range(20)],
        )
    conn.close()
    server = sinkhole({"database": db, "privacy": {"clients": "ip", "retention_days": 30}})
    query(server.address, "fresh.chatgpt.com")
    assert wait_for(lambda: rows(db, "SELECT 1 FROM hits WHERE qname = 'fresh.chatgpt.com'"))
    assert len(rows(db, "SELECT 1 FROM hits WHERE qname = 'old.chatgpt.com'")) == 20
    reload_with(server, privacy={"clients": "ip", "retention_days": 7})
    assert wait_for(lambda: not rows(db, "SELECT 1 FROM hits WHERE qname = 'old.chatgpt.com'"))
    # The rollups follow the hits: the report counts what is kept, nothing more.
    (blocked,) = rows(db, "SELECT SUM(blocked) FROM hits_hour")[0]
    assert blocked == 1
    assert rows(db, "SELECT qname FROM hits") == [("fresh.chatgpt.com",)]


def test_sighup_cache_bounds_and_rate_limit_apply(sinkhole, upstream):
    server = sinkhole({"cache": {"size": 1000}})
    name = "host-031.example.test"
    query(server.address, name)
    query(server.address, name)
    assert upstream.count(name + ".") == 1  # the second came from the cache
    reload_with(server, cache={"size": 0}, rate_limit={"per_client": 3, "window": 60})
    answers = [query(server.address, name).rcode() for _ in range(6)]
    # size 0: nothing cached any more; the limiter lets 3 through, then refuses.
    assert answers[:3] == [dns.rcode.NOERROR] * 3
    assert answers[3:] == [dns.rcode.REFUSED] * 3
    assert upstream.count(name + ".") == 4


def test_reload_names_the_keys_that_need_a_restart(sinkhole):
    server = sinkhole()
    reload_with(server, workers=2, metrics_listen="127.0.0.1:1")
    line = [x for x in server.stderr_text().splitlines() if "reloaded config" in x][-1]
    assert "applied only after a restart: workers, metrics_listen" in line
    # The server keeps serving on what it was started with.
    assert query(server.address, BLOCKED).answer[0][0].address == "0.0.0.0"


def test_config_check_names_the_keys_that_need_a_restart(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("listen: ['127.0.0.1:15353']\n")
    result = run_cli("config", "check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "listen, workers, database, metrics_listen, user" in result.stdout


# -- names from the wire -----------------------------------------------------------------------

HOSTILE_LABELS = [
    b"\x1b]0;pwned\x07\x1b[2J",  # OSC title + clear screen
    b"nul\x00byte",
    b"high\xc3\xa9\xff",
    b"<script>alert(1)</script>",
    b"[click here](http:",  # a markdown link, split over labels by the slash-free parts
    b"a|b|c",  # table pipes
    b"=HYPERLINK(1)",  # a formula
    b"dot.inside",  # one label holding a dot
]


def test_hostile_names_are_shown_in_presentation_format_everywhere(sinkhole, tmp_path: Path):
    server = sinkhole({"privacy": {"clients": "ip"}})
    db = server.config["database"]
    sent = [[label, b"chatgpt", b"com"] for label in HOSTILE_LABELS]
    sent.append([b"dot", b"inside", b"chatgpt", b"com"])  # two labels, for comparison
    sent.append([b"evil", b"example/login)", b"chatgpt", b"com"])
    for i, labels in enumerate(sent):
        answer = raw_udp(server.address, raw_query(labels, ident=0x100 + i))
        assert answer is not None and answer[3] & 0x0F == 0, labels  # blocked: NOERROR
    assert wait_for(lambda: len(rows(db, "SELECT DISTINCT qname FROM hits")) == len(sent))
    server.stop()
    env = {"SINKHOLE_DB": db}
    outputs: dict[str, str] = {}
    for args in (["hits", "--limit", "100"], ["hits", "--json", "--limit", "100"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr
        outputs[" ".join(args)] = result.stdout
    for fmt in ("text", "markdown", "html", "csv", "json"):
        result = run_cli("report", "--since", "1d", "--format", fmt, env=env)
        assert result.returncode == 0, result.stderr
        outputs[fmt] = result.stdout
    for what, out in outputs.items():
        assert not CONTROL.search(out), (what, CONTROL.search(out))
        assert "<script" not in out, what
        assert "](http" not in out, what
    # The two spellings of dot.inside are told apart, in text and JSON alike.
    stored = {qname for (qname,) in rows(db, "SELECT qname FROM hits")}
    assert "dot\\.inside.chatgpt.com" in stored and "dot.inside.chatgpt.com" in stored
    listed = {r["qname"] for r in json.loads(outputs["hits --json --limit 100"])}
    assert listed == stored
    # ASCII letters lower-cased (RFC 4343), every other octet as \DDD.
    assert "\\027\\0930\\059pwned\\007\\027\\0912j.chatgpt.com" in stored
    assert "nul\\000byte.chatgpt.com" in stored
    assert "high\\195\\169\\255.chatgpt.com" in stored
    assert "dot\\.inside.chatgpt.com" in outputs["hits --limit 100"]
    # Every name of the report's top names is one of the stored names, as stored.
    report = json.loads(outputs["json"])
    assert {n["name"] for n in report["top_names"]} <= stored
    # Markdown: names are code spans, nothing else of them is syntax.
    md_names = re.findall(r"\| `([^`]*)` \|", outputs["markdown"])
    assert set(md_names) == {n["name"] for n in report["top_names"]}
    # HTML: the escaped names appear as text, and no tag but ours.
    assert "&lt;" not in outputs["html"]  # '<' from the wire never reaches the page at all
    tags = set(re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", outputs["html"]))
    assert tags <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "section",
        "table", "thead", "tbody", "tr", "th", "td", "svg", "line", "rect", "text",
    }, tags  # fmt: skip
    # CSV: no cell opens a formula.
    for row in csv.reader(io.StringIO(outputs["csv"])):
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row), row


def test_legacy_raw_names_in_the_database_are_escaped_on_output(tmp_path: Path):
    """A row written by an older version holds the raw octets: shown safely all the same."""
    db = str(tmp_path / "old.db")
    conn = connect(db)
    migrate(sqlite_utils.Database(conn))
    with conn:
        conn.execute(
            "INSERT INTO hits (ts, client, client_group, qname, qtype, service, category, rule,"
            " action, count) VALUES (?, '10.0.0.1', NULL, ?, 'A', 'openai-chatgpt',"
            " 'ai-chatbots', 'chatgpt.com', 'null', 1)",
            (int(time.time()) - 60, "\x1b[2J<b>x</b>[a](http://e).chatgpt.com"),
        )
    conn.close()
    env = {"SINKHOLE_DB": db}
    for args in (["hits"], ["hits", "--json"], ["report", "--since", "1d", "--format", "markdown"]):
        out = run_cli(*args, env=env).stdout
        assert not CONTROL.search(out), args
        assert "<b>" not in out and "](http" not in out, (args, out)
        if "--json" in args:
            out = json.loads(out)[0]["qname"]
        assert "\\027\\0912J\\060b\\062x" in out, (args, out)


# -- header flags ------------------------------------------------------------------------------


def test_forwarded_answers_from_an_authoritative_upstream_carry_ra_and_no_aa(sinkhole, upstream):
    server = sinkhole()
    name = "host-041.example.test"
    direct = dns.query.udp(
        dns.message.make_query(name, "A"), upstream.address[0], port=upstream.address[1], timeout=5
    )
    assert direct.flags & dns.flags.AA  # our test upstream is authoritative
    for tcp in (False, True, False):  # forwarded, then cached
        via = query(server.address, name, tcp=tcp)
        assert via.rcode() == dns.rcode.NOERROR
        assert not via.flags & dns.flags.AA
        assert via.flags & dns.flags.RA
        assert via.flags & dns.flags.RD
        assert {rd.to_text() for rrset in via.answer for rd in rrset} == {
            rd.to_text() for rrset in direct.answer for rd in rrset
        }
    nx = query(server.address, "nope-nope.example.test")
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert not nx.flags & dns.flags.AA and nx.flags & dns.flags.RA
    assert nx.authority  # the upstream's SOA passes through
    blocked = query(server.address, BLOCKED)
    assert blocked.flags & dns.flags.RA


def test_notimp_answers_to_other_opcodes_carry_no_ra(sinkhole):
    server = sinkhole()
    for opcode in (dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE):
        packet = raw_query([b"example", b"test"], flags=(opcode << 11))
        answer = raw_udp(server.address, packet)
        assert answer is not None, opcode
        msg = dns.message.from_wire(answer)
        assert msg.rcode() == dns.rcode.NOTIMP, opcode
        assert msg.opcode() == opcode
        assert not msg.flags & dns.flags.RA, opcode


# -- the evidence ------------------------------------------------------------------------------


def test_fresh_database_report_shows_no_outage_before_the_first_start(sinkhole):
    server = sinkhole()
    db = server.config["database"]
    query(server.address, BLOCKED)
    assert wait_for(lambda: rows(db, "SELECT value FROM settings WHERE key = 'first_start'"))
    server.stop()
    result = run_cli("report", "--since", "1d", "--format", "json", env={"SINKHOLE_DB": db})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    kinds = [g["kind"] for g in report["gaps"]]
    assert "server-down" not in kinds, report["gaps"]
    assert kinds == ["not-yet-running"]
    (first,) = rows(db, "SELECT value FROM settings WHERE key = 'first_start'")[0]
    end = datetime.fromisoformat(report["gaps"][0]["end"]).timestamp()
    assert end == int(first) - int(first) % 60  # to the minute, not an hour early
    text = run_cli("report", "--since", "1d", env={"SINKHOLE_DB": db}).stdout
    assert "server-down" not in text and "not-yet-running" in text


def test_blocked_queries_of_a_rate_limited_client_are_all_recorded(sinkhole):
    server = sinkhole({"rate_limit": {"per_client": 5, "window": 3600}})
    db = server.config["database"]
    rcodes = [query(server.address, f"n{i}.chatgpt.com").rcode() for i in range(20)]
    # The start-up probe took a token or two of the five.
    answered, refused = rcodes.count(dns.rcode.NOERROR), rcodes.count(dns.rcode.REFUSED)
    assert answered + refused == 20 and 1 <= answered <= 5 and refused >= 15
    server.stop()
    by_action = dict(rows(db, "SELECT action, SUM(count) FROM hits GROUP BY action"))
    assert by_action == {"null": answered, "rate-limited": refused}
    assert len(rows(db, "SELECT DISTINCT qname FROM hits")) == 20
    # One line for the client, naming the keys that raise or lift its limit.
    lines = [x for x in server.stderr_text().splitlines() if "over its rate limit" in x]
    assert len(lines) == 1
    assert "rate_limit.per_client" in lines[0] and "rate_limit.exempt" in lines[0]
    report = json.loads(
        run_cli("report", "--since", "1d", "--format", "json", env={"SINKHOLE_DB": db}).stdout
    )
    assert report["totals"]["blocked"] == 20


def test_sighup_upstreams_apply_to_the_next_miss(sinkhole, upstream):
    server = sinkhole({"upstream_timeout": 1.0, "cache": {"serve_stale": False}})
    assert query(server.address, "host-061.example.test").rcode() == dns.rcode.NOERROR
    # A port nothing listens on: the new upstream never answers.
    reload_with(server, upstreams=[f"127.0.0.1:{free_port()}"])
    assert query(server.address, "host-062.example.test").rcode() == dns.rcode.SERVFAIL
    assert upstream.count("host-062.example.test.") == 0
    line = [x for x in server.stderr_text().splitlines() if "reloaded config" in x][-1]
    assert "1 upstreams" in line
