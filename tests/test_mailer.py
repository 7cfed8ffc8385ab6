"""Tests of mailing the report through a real SMTP server on loopback."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from resolver import report as rpt
from resolver.errors import SinkholeError
from resolver.mailer import send_report

SMTP_USER = "sinkhole"
SMTP_PASSWORD = "s3cret pass"


class _Inbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"


class _LoopbackController(Controller):
    """Controller on port 0: aiosmtpd's readiness probe needs the port the kernel chose."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = (
        isinstance(data, LoginPassword)
        and data.login.decode() == SMTP_USER
        and data.password.decode() == SMTP_PASSWORD
    )
    # handled=False: aiosmtpd then answers 535 itself instead of staying silent.
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtpd() -> Iterator[tuple[_LoopbackController, _Inbox]]:
    inbox = _Inbox()
    controller = _LoopbackController(
        inbox,
        hostname="127.0.0.1",
        port=0,
        authenticator=_authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield controller, inbox
    finally:
        controller.stop()


def make_db(path: Path) -> Path:
    """The two tables the report reads, as store.py creates them."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """CREATE TABLE hits (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, client TEXT,
             client_group TEXT, qname TEXT NOT NULL, qtype TEXT NOT NULL, service TEXT,
             category TEXT, rule TEXT NOT NULL, action TEXT NOT NULL,
             count INTEGER NOT NULL DEFAULT 1);
           CREATE INDEX hits_ts ON hits(ts);
           CREATE TABLE traffic (minute INTEGER PRIMARY KEY,
             queries INTEGER NOT NULL DEFAULT 0, blocked INTEGER NOT NULL DEFAULT 0,
             forwarded INTEGER NOT NULL DEFAULT 0, cached INTEGER NOT NULL DEFAULT 0,
             failed INTEGER NOT NULL DEFAULT 0, refused INTEGER NOT NULL DEFAULT 0,
             recorder_lag INTEGER NOT NULL DEFAULT 0);
           CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT);"""
    )
    conn.close()
    return path


@pytest.fixture
def report(tmp_path: Path) -> dict[str, Any]:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", "Europe/Paris")
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "INSERT INTO hits (ts, client, client_group, qname, qtype, service, category, rule,"
            " action) VALUES (?, '10.1.9.7', 'ai-lab', 'chatgpt.com', 'A', 'openai-chatgpt',"
            " 'ai-chatbots', 'chatgpt.com', 'null')",
            (int(start.timestamp()) + 9 * 3600,),
        )
    conn.close()
    return rpt.build_report(
        db,
        start=start,
        end=end,
        tz="Europe/Paris",
        privacy="ip",
        retention_days=90,
        groups={"ai-lab": ["10.1.9.0/24"]},
        service_names={"openai-chatgpt": "ChatGPT (OpenAI)"},
        now=datetime(2026, 4, 1, tzinfo=UTC),
    )


def smtp_config(port: int, **extra: Any) -> dict[str, Any]:
    base = {"host": "127.0.0.1", "port": port, "starttls": False, "from": "sinkhole@example.org"}
    return base | extra


def free_port() -> int:
    """A loopback port nobody listens on: bound, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_report_mail_has_text_and_html_parts(
    smtpd: tuple[_LoopbackController, _Inbox], report: dict[str, Any]
) -> None:
    controller, inbox = smtpd
    send_report(report, to=["it@example.org", "dpo@example.org"], smtp=smtp_config(controller.port))
    assert len(inbox.messages) == 1
    sender, rcpts, msg = inbox.messages[0]
    assert sender == "sinkhole@example.org"
    assert rcpts == ["it@example.org", "dpo@example.org"]
    assert msg["Subject"] == "Sinkhole report, week 2026-W13: 1 blocked query"
    assert msg.get_content_type() == "multipart/alternative"
    # SMTP carries CRLF line ends; the renderers write LF.
    parts = {p.get_content_type(): p.get_content().replace("\r\n", "\n") for p in msg.iter_parts()}
    assert set(parts) == {"text/plain", "text/html"}
    assert parts["text/plain"] == rpt.render_text(report)
    assert "ChatGPT (OpenAI)" in parts["text/plain"]
    assert parts["text/html"].startswith("<!DOCTYPE html>")
    assert 'class="bar"' in parts["text/html"]


def test_login_uses_the_password_file(
    smtpd: tuple[_LoopbackController, _Inbox], report: dict[str, Any], tmp_path: Path
) -> None:
    controller, inbox = smtpd
    secret = tmp_path / "smtp.pass"
    secret.write_text(SMTP_PASSWORD + "\n")
    cfg = smtp_config(controller.port, user=SMTP_USER, password_file=str(secret))
    send_report(report, to=["it@example.org"], smtp=cfg, subject="Weekly evidence")
    assert [m["Subject"] for _, _, m in inbox.messages] == ["Weekly evidence"]
    secret.write_text("wrong\n")
    where = rf"127\.0\.0\.1:{controller.port}"
    with pytest.raises(SinkholeError, match=rf"^mail to {where} failed: 535"):
        send_report(report, to=["it@example.org"], smtp=cfg)
    assert len(inbox.messages) == 1


def test_unreachable_server_is_one_clear_error(report: dict[str, Any]) -> None:
    port = free_port()
    with pytest.raises(SinkholeError) as err:
        send_report(report, to=["it@example.org"], smtp=smtp_config(port))
    message = str(err.value)
    assert message.startswith(f"cannot reach SMTP server 127.0.0.1:{port}: ")
    assert "\n" not in message and "refused" in message.lower()


def test_starttls_without_server_support_is_an_error(
    smtpd: tuple[_LoopbackController, _Inbox], report: dict[str, Any]
) -> None:
    controller, inbox = smtpd
    with pytest.raises(SinkholeError, match="STARTTLS"):
        send_report(report, to=["it@example.org"], smtp=smtp_config(controller.port, starttls=True))
    assert inbox.messages == []


def test_missing_password_file_names_the_file(report: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "nope.pass"
    cfg = smtp_config(free_port(), user=SMTP_USER, password_file=str(missing))
    with pytest.raises(SinkholeError, match=f"cannot read SMTP password file {missing}"):
        send_report(report, to=["it@example.org"], smtp=cfg)


def test_no_recipient_or_host_is_refused_before_connecting(report: dict[str, Any]) -> None:
    with pytest.raises(SinkholeError, match="no recipient"):
        send_report(report, to=[], smtp=smtp_config(free_port()))
    with pytest.raises(SinkholeError, match="smtp.host"):
        send_report(report, to=["it@example.org"], smtp={"port": 25})


def test_french_mail_from_the_config_through_the_cli(
    smtpd: tuple[_LoopbackController, _Inbox], tmp_path: Path
) -> None:
    """`report.lang: fr` in the config: `sinkhole report --mail-to` sends the French report,
    subject included, to a real SMTP server."""
    import yaml

    from resolver.store import Store
    from tests.conftest import run_cli

    controller, inbox = smtpd
    db = tmp_path / "store.db"
    Store(db).close()
    start, _ = rpt.week_bounds("2026-W13", "Europe/Paris")
    with sqlite3.connect(db) as conn:  # one blocked query, Monday 09:00
        conn.execute(
            "INSERT INTO hits (ts, client, client_group, qname, qtype, service, category, rule,"
            " action) VALUES (?, '10.1.9.7', NULL, 'chatgpt.com', 'A', 'openai-chatgpt',"
            " 'ai-chatbots', 'chatgpt.com', 'null')",
            (int(start.timestamp()) + 9 * 3600,),
        )
    conn.close()
    config = tmp_path / "sinkhole.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": str(db),
                "timezone": "Europe/Paris",
                "report": {"lang": "fr"},
                "smtp": smtp_config(controller.port),
            }
        )
    )
    env = {"SINKHOLE_CONFIG": str(config), "SINKHOLE_DB": str(db)}
    r = run_cli("report", "--week", "2026-W13", "--mail-to", "dpo@example.org", env=env)
    assert r.returncode == 0, r.stderr
    (_, rcpts, msg) = inbox.messages[0]
    assert rcpts == ["dpo@example.org"]
    assert msg["Subject"] == "Rapport sinkhole, semaine 2026-W13\u00a0: 1 requête bloquée"
    assert msg["Content-Language"] == "fr"
    parts = {p.get_content_type(): p.get_content().replace("\r\n", "\n") for p in msg.iter_parts()}
    text, page = parts["text/plain"], parts["text/html"]
    assert text.startswith("Rapport sinkhole, semaine 2026-W13\n")
    assert "du lun. 23 mars 2026 au dim. 29 mars 2026" in text
    assert "\nRésumé\n" in text and "Requêtes bloquées" in text and "Blocked" not in text
    assert '<html lang="fr">' in page and "<h2>Par jour</h2>" in page
    # --lang on the command line beats the config, for the subject too.
    r = run_cli(
        "report", "--week", "2026-W13", "--lang", "en", "--mail-to", "it@example.org", env=env
    )
    assert r.returncode == 0, r.stderr
    assert inbox.messages[1][2]["Subject"] == "Sinkhole report, week 2026-W13: 1 blocked query"


def test_french_subject_counts_in_french(report: dict[str, Any]) -> None:
    from resolver.mailer import default_subject

    fr = {**report, "lang": "fr", "totals": {**report["totals"], "blocked": 12345}}
    assert (
        default_subject(fr)
        == "Rapport sinkhole, semaine 2026-W13\u00a0: 12\u202f345 requêtes bloquées"
    )
    fr["period"] = {**fr["period"], "week": None}
    assert default_subject(fr).startswith("Rapport sinkhole, à partir du 23 mars 2026\u00a0: ")
