"""The `sinkhole` command: lists, rules, import, export, audit trail, config, errors."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from resolver.cli import cli
from tests.conftest import run_cli
from tests.dnstest import require_tool
from tests.dnstest.daemons import free_port


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "policy.db")


def sh(db: str, *args: str, ok: bool = True):
    result = CliRunner().invoke(cli, [*args, "--db", db], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def blocked(db: str, name: str, client: str | None = None) -> bool:
    args = ["check", name, "--json"] + (["--client", client] if client else [])
    return json.loads(sh(db, *args).stdout)["blocked"]


def test_lists_shows_catalog_services_enabled_with_counts(db):
    rows = json.loads(sh(db, "lists", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["openai-chatgpt"]["enabled"] is True
    assert by_name["openai-chatgpt"]["domains"] >= 3
    assert by_name["firefox-canary"]["category"] == "bypass"
    text = sh(db, "lists").stdout
    assert "openai-chatgpt" in text and "ChatGPT" in text


def test_disable_and_enable_a_service_and_a_category(db):
    sh(db, "lists", "disable", "openai-chatgpt")
    assert not blocked(db, "chatgpt.com")
    assert blocked(db, "claude.ai")
    sh(db, "lists", "disable", "ai-chatbots")
    assert not blocked(db, "claude.ai")
    assert blocked(db, "use-application-dns.net")  # bypass is another category
    sh(db, "lists", "enable", "ai-chatbots")
    assert blocked(db, "chatgpt.com") and blocked(db, "claude.ai")


def test_api_part_can_be_allowed_while_the_chat_stays_blocked(db):
    sh(db, "lists", "disable", "openai-chatgpt:api", "--comment", "approved integration")
    assert not blocked(db, "api.openai.com")
    assert blocked(db, "chatgpt.com")


def test_unknown_list_is_one_line_and_exit_1(db):
    r = run_cli("lists", "enable", "no-such-thing", "--db", db)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "unknown list 'no-such-thing'" in r.stderr


def test_block_allow_and_their_removal_with_audit_trail(db):
    sh(db, "block", "Chat.Example.ORG.", "--comment", "ticket 4711")
    assert blocked(db, "x.chat.example.org")
    sh(db, "allow", "ok.chat.example.org")
    assert not blocked(db, "ok.chat.example.org")
    sh(db, "unallow", "ok.chat.example.org")
    assert blocked(db, "ok.chat.example.org")
    sh(db, "unblock", "chat.example.org")
    assert not blocked(db, "x.chat.example.org")
    history = json.loads(sh(db, "lists", "history", "--json").stdout)
    commands = [h["command"] for h in history]
    assert len(history) == 4
    assert history[-1]["comment"] == "ticket 4711"
    assert all(h["user"] for h in history)
    assert any("block" in c for c in commands)


def test_unblocking_what_is_not_blocked_fails(db):
    r = sh(db, "unblock", "never.example", ok=False)
    assert r.exit_code == 1 and "no block rule for never.example" in r.output


def test_invalid_name_is_rejected(db):
    r = sh(db, "block", "bad..name", ok=False)
    assert r.exit_code == 2 and "bad..name" in r.output


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("hosts", "# comment\n0.0.0.0 ads.example tracker.example\n127.0.0.1 localhost\n"),
        ("domains", "ads.example\n! comment\ntracker.example\n"),
        ("adblock", "[Adblock Plus 2.0]\n||ads.example^\n||tracker.example^\n"),
    ],
)
def test_import_each_format_detected_automatically(db, tmp_path, fmt, text):
    src = write(tmp_path, f"list.{fmt}", text)
    r = sh(db, "lists", "import", src, "--name", "extra")
    assert f"as {fmt}" in r.stdout and "imported 2 names" in r.stdout
    assert blocked(db, "www.ads.example") and blocked(db, "tracker.example")
    rows = {x["name"]: x for x in json.loads(sh(db, "lists", "--json").stdout)}
    assert rows["extra"]["domains"] == 2 and rows["extra"]["enabled"]


def test_import_reports_bad_lines_with_file_and_line(db, tmp_path):
    src = write(
        tmp_path, "mixed.txt", "good.example\nbad..example\nalso-good.example\nbad name.example\n"
    )
    r = run_cli("lists", "import", src, "--name", "mixed", "--db", db)
    assert r.returncode == 0
    errors = r.stderr.strip().splitlines()
    assert errors[0].startswith(f"{src}:2: ") and errors[1].startswith(f"{src}:4: ")
    assert "imported 2 names" in r.stdout and "2 invalid lines skipped" in r.stdout


def test_reimport_replaces_the_list(db, tmp_path):
    sh(db, "lists", "import", write(tmp_path, "a.txt", "old.example\n"), "--name", "x")
    sh(db, "lists", "import", write(tmp_path, "b.txt", "new.example\n"), "--name", "x")
    assert not blocked(db, "old.example") and blocked(db, "new.example")
    sh(db, "lists", "disable", "x")
    assert not blocked(db, "new.example")
    sh(db, "lists", "remove", "x")
    names = [x["name"] for x in json.loads(sh(db, "lists", "--json").stdout)]
    assert "x" not in names


def test_import_from_a_url_on_loopback(db, tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "ai.txt").write_text("||remote-chat.example^\n")
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www")
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        sh(db, "lists", "import", f"{url}/ai.txt", "--name", "remote")
        assert blocked(db, "remote-chat.example")
        r = run_cli("lists", "import", f"{url}/missing.txt", "--name", "r2", "--db", db)
        assert r.returncode == 1 and "404" in r.stderr and "Traceback" not in r.stderr
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_import_of_a_missing_file_is_one_line(db, tmp_path):
    r = run_cli("lists", "import", str(tmp_path / "nope.txt"), "--name", "n", "--db", db)
    assert r.returncode == 1 and "nope.txt" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_list_name_cannot_shadow_a_catalog_service(db, tmp_path):
    r = sh(
        db,
        "lists",
        "import",
        write(tmp_path, "a.txt", "a.example\n"),
        "--name",
        "openai-chatgpt",
        ok=False,
    )
    assert r.exit_code == 1 and "catalog service" in r.output


def export(db: str, fmt: str, tmp_path: Path) -> Path:
    out = tmp_path / f"export.{fmt}"
    sh(db, "export", "--format", fmt, "-o", str(out))
    return out


def test_dnsmasq_accepts_the_dnsmasq_export(db, tmp_path):
    tool = require_tool("dnsmasq")
    sh(db, "allow", "status.openai.com")
    out = export(db, "dnsmasq", tmp_path)
    assert "address=/chatgpt.com/0.0.0.0" in out.read_text()
    r = subprocess.run([tool, "--test", f"--conf-file={out}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_unbound_accepts_the_unbound_export(db, tmp_path):
    tool = require_tool("unbound-checkconf")
    out = export(db, "unbound", tmp_path)
    conf = tmp_path / "unbound.conf"
    conf.write_text(f'server:\n  chroot: ""\n  username: ""\ninclude: "{out}"\n')
    r = subprocess.run([tool, str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_named_checkzone_accepts_the_rpz_export(db, tmp_path):
    tool = require_tool("named-checkzone")
    out = export(db, "rpz", tmp_path)
    r = subprocess.run([tool, "rpz.sinkhole", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_domains_export_lists_what_is_enabled(db, tmp_path):
    sh(db, "lists", "disable", "ai-chatbots")
    sh(db, "block", "custom.example")
    text = export(db, "domains", tmp_path).read_text()
    assert "custom.example" in text and "chatgpt.com" not in text
    assert "use-application-dns.net" in text


def test_check_with_a_client_in_an_exempt_group(db, tmp_path):
    cfg = write(
        tmp_path,
        "c.yaml",
        "clients: {groups: {ai-lab: {networks: [10.1.9.0/24], exempt: [openai-chatgpt]}}}\n",
    )
    r = sh(db, "check", "chatgpt.com", "--client", "10.1.9.20", "--config", cfg)
    assert "allowed" in r.stdout and "group ai-lab is exempt" in r.stdout
    r = sh(db, "check", "chatgpt.com", "--client", "10.1.8.20", "--config", cfg)
    assert "BLOCKED" in r.stdout


def test_config_init_writes_a_config_that_checks(tmp_path):
    out = tmp_path / "sinkhole.yaml"
    r = CliRunner().invoke(cli, ["config", "init", "-o", str(out)])
    assert r.exit_code == 0 and out.exists()
    r = CliRunner().invoke(cli, ["config", "check", "--config", str(out)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["config", "init", "-o", str(out)])
    assert r.exit_code == 1 and "exists already" in r.output


def test_config_check_lists_every_catalog_problem(tmp_path):
    broken = tmp_path / "catalog"
    broken.mkdir()
    (broken / "a.yaml").write_text(
        "category: a\nservices:\n  s1:\n    name: S1\n    domains: [bad..name]\n"
        "    sources: [https://example.org]\n    verified: 2026-11-29\n"
    )
    (broken / "b.yaml").write_text("category: b\nservices: [\n")
    cfg = write(tmp_path, "c.yaml", f"catalog: {broken}\nlists: [a]\n")
    r = run_cli("config", "check", "--config", cfg)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) >= 2
    assert any("a.yaml" in x and "bad..name" in x for x in lines)
    assert any("b.yaml" in x for x in lines)
    assert "Traceback" not in r.stderr


def test_every_command_has_help_and_is_in_the_readme():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            yield f"{prefix}{name}", cmd
            if hasattr(cmd, "commands"):
                yield from walk(cmd, f"{prefix}{name} ")

    for path, cmd in walk(cli, ""):
        assert cmd.help, f"sinkhole {path} has no help"
        first = path.split()[0]
        assert f"sinkhole {first}" in readme or f"|{first}" in readme, path


def test_config_check_lists_every_config_problem(tmp_path):
    cfg = write(
        tmp_path,
        "bad.yaml",
        "listen: [nowhere]\ncache: {size: -1}\nprivacy: {clients: everyone}\nlisen: 3\n",
    )
    r = run_cli("config", "check", "--config", cfg)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "listen[0]",
        "cache.size",
        "privacy.clients",
        "lisen",
    ]


def test_import_shows_a_progress_bar_on_a_terminal_only(db, tmp_path):
    script = require_tool("script")  # util-linux: runs the command on a pseudo-terminal
    src = write(tmp_path, "big.txt", "".join(f"n{i}.big.example\n" for i in range(50_000)))
    cmd = shlex.join(
        [sys.executable, "-m", "resolver", "lists", "import", src, "--name", "big", "--db", db]
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    on_tty = subprocess.run(
        [script, "-qec", cmd, "/dev/null"], capture_output=True, text=True, env=env, timeout=120
    )
    assert on_tty.returncode == 0, on_tty.stdout
    assert f"reading {src}" in on_tty.stdout and "100%" in on_tty.stdout
    piped = run_cli("lists", "import", src, "--name", "big", "--db", db)
    assert piped.returncode == 0 and "reading" not in piped.stderr + piped.stdout


def test_the_readme_config_example_is_a_valid_config():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    from resolver.config import parse_config

    config = parse_config(yaml.safe_load(block), "README.md")
    assert config.listen == ("127.0.0.1:1053",) and config.clients.groups["ai-lab"].exempt
