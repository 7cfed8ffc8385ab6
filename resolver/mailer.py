"""Mailing the weekly report: one multipart/alternative message over SMTP."""

from __future__ import annotations

import smtplib
import ssl
from datetime import date
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from resolver.errors import SinkholeError
from resolver.report import language_of, render_html, render_text

#: Long enough for a slow relay, short enough that a weekly timer never hangs.
SMTP_TIMEOUT_SECONDS = 30
DEFAULT_PORT = 25
DEFAULT_FROM = "sinkhole@localhost"


def default_subject(report: dict[str, Any]) -> str:
    """The subject line of a report mail, in the report's language: the week, or the
    period's first day."""
    lang = language_of(report)
    period = report["period"]
    blocked = report["totals"]["blocked"]
    if period["week"]:
        when = lang._("week %(week)s", week=period["week"])
    else:
        start = date.fromisoformat(period["start"][:10])
        when = lang._(
            "%(day)s onwards", day=start.isoformat() if lang.english else lang.long_date(start)
        )
    return lang.ngettext(
        "Sinkhole report, %(when)s: %(n)s blocked query",
        "Sinkhole report, %(when)s: %(n)s blocked queries",
        blocked,
        when=when,
    )


def build_message(
    report: dict[str, Any], *, to: list[str], sender: str, subject: str | None = None
) -> EmailMessage:
    """The report as an email: text/plain first, text/html as the preferred alternative."""
    msg = EmailMessage()
    msg["Subject"] = subject or default_subject(report)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg.set_content(render_text(report))
    msg.add_alternative(render_html(report), subtype="html")
    # After the parts: set_content clears every Content-* header of the message.
    msg["Content-Language"] = language_of(report).lang  # RFC 3282
    return msg


def _read_password(path: str) -> str:
    try:
        # A trailing newline is how editors and `echo >` leave the file, never the password.
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SinkholeError(f"cannot read SMTP password file {path}: {exc.strerror}") from exc


def send_report(
    report: dict[str, Any], *, to: list[str], smtp: dict[str, Any], subject: str | None = None
) -> None:
    """Mail the report to every address in to through the relay smtp describes.

    smtp: {host, port, starttls, user, password_file, from}; port 25, no STARTTLS and
    sinkhole@localhost when left out; no login without user.

    Raises:
        SinkholeError: one line naming host:port and why the mail was not sent.
    """
    if not to:
        raise SinkholeError("no recipient for the report mail")
    host = smtp.get("host")
    if not host:
        raise SinkholeError("smtp.host is not set in the config")
    port = int(smtp.get("port") or DEFAULT_PORT)
    user = smtp.get("user")
    password = _read_password(smtp["password_file"]) if user and smtp.get("password_file") else ""
    msg = build_message(report, to=to, sender=smtp.get("from") or DEFAULT_FROM, subject=subject)
    where = f"{host}:{port}"
    try:
        with smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT_SECONDS) as client:
            if smtp.get("starttls"):
                client.starttls(context=ssl.create_default_context())
            if user:
                client.login(user, password)
            refused = client.send_message(msg, to_addrs=to)
    except smtplib.SMTPResponseException as exc:
        reason = exc.smtp_error.decode("utf-8", "replace") if exc.smtp_error else ""
        raise SinkholeError(f"mail to {where} failed: {exc.smtp_code} {reason}".rstrip()) from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise SinkholeError(
            f"mail to {where} failed: recipients refused: {', '.join(exc.recipients)}"
        ) from None
    except (smtplib.SMTPException, ssl.SSLError) as exc:
        raise SinkholeError(f"mail to {where} failed: {exc}") from None
    except OSError as exc:
        # ConnectionRefusedError, timeouts and unknown host names all land here.
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise SinkholeError(f"cannot reach SMTP server {where}: {reason}") from None
    if refused:
        raise SinkholeError(
            f"mail to {where} partly failed: recipients refused: {', '.join(sorted(refused))}"
        )
