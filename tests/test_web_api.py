"""The dashboard over HTTP: every route and role, sessions, CSRF, the login throttle, i18n.

`sinkhole web` runs as a subprocess on a free loopback port; httpx is the client; the
data is a real SQLite file written as the recorder writes it; the CLI answers are the
real `sinkhole` command's.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from resolver.presentation import display_name
from resolver.store import Store
from tests.dnstest.webserver import WebProcess

pytest.importorskip("starlette", reason="the web extra is not installed")

ADMIN, VIEWER = ("root-admin", "a long admin passphrase"), ("reader", "a long viewer passphrase")
PAGES = ("/", "/attempts", "/services", "/rules", "/report", "/audit")
API_GETS = (
    "/api/session",
    "/api/report",
    "/api/attempts",
    "/api/services",
    "/api/rules",
    "/api/audit",
)
API_POSTS = (
    "/api/services/openai-chatgpt/disable",
    "/api/services/openai-chatgpt/enable",
    "/api/rules/block",
    "/api/rules/unblock",
    "/api/rules/allow",
    "/api/rules/unallow",
)
#: A fixed past week, so the report of the dashboard and of the CLI are the same bytes.
WEEK = "2026-W10"
WEEK_TS = int(datetime(2026, 3, 5, 10, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp())
HIT = (
    "INSERT INTO hits (ts, client, client_group, qname, qtype, service, category, rule, "
    "action, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def add_hits(db: str, rows: list[tuple]) -> None:
    """Hits as rows of (ts, client, group, qname, service); the rollups follow by trigger."""
    Store(db).close()
    with sqlite3.connect(db) as conn:
        conn.executemany(
            HIT,
            [
                (ts, c, g, q, "A", s, "ai-chatbots", q.split(".", 1)[-1], "null", 1)
                for ts, c, g, q, s in rows
            ],
        )


class Browserless(httpx.Client):
    """An httpx client that a `with` block may take after its first request (the login)."""

    def __enter__(self) -> Browserless:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def login(web: WebProcess, user: tuple[str, str]) -> Browserless:
    client = Browserless(base_url=web.url, timeout=30)
    r = client.post("/login", data={"username": user[0], "password": user[1]})
    assert r.status_code == 303, r.text
    return client


def csrf(client: httpx.Client) -> str:
    return client.get("/api/session").json()["csrf_token"]


@pytest.fixture
def site(dashboard) -> WebProcess:
    web = dashboard(
        {
            "web": {"login_delay": 0.2},
            "clients": {"groups": {"finance": {"networks": ["10.2.0.0/16"]}}},
        },
        start=False,
    )
    web.add_user(ADMIN[0], "admin", ADMIN[1])
    web.add_user(VIEWER[0], "viewer", VIEWER[1])
    now = int(time.time())
    add_hits(
        web.config["database"],
        [
            (WEEK_TS, "10.2.0.5", "finance", "chatgpt.com", "openai-chatgpt"),
            (WEEK_TS + 1, "10.2.0.5", "finance", "chatgpt.com", "openai-chatgpt"),
            (WEEK_TS + 3600, "10.9.0.7", None, "claude.ai", "anthropic-claude"),
            (now - 60, "10.9.0.7", None, "gemini.google.com", "google-gemini"),
        ],
    )
    return web.start()


def test_logged_out_pages_go_to_login_and_the_api_answers_401(site):
    with httpx.Client(base_url=site.url, timeout=30) as c:
        for path in PAGES:
            r = c.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
        for path in (*API_GETS, "/api/stream", "/api/sites"):
            assert c.get(path).status_code == 401, path
        for path in API_POSTS:
            assert c.post(path, json={"name": "x.example"}).status_code == 401, path
        health = c.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        form = c.get("/login")
        assert form.status_code == 200
        assert 'name="username"' in form.text and 'name="password"' in form.text
        assert 'action="/login"' in form.text


def test_login_sets_a_signed_httponly_samesite_cookie(site):
    with httpx.Client(base_url=site.url, timeout=30) as c:
        bad = c.post("/login", data={"username": ADMIN[0], "password": "wrong password"})
        assert bad.status_code == 401 and "sinkhole_session" not in bad.headers.get(
            "set-cookie", ""
        )
        r = c.post("/login", data={"username": ADMIN[0], "password": ADMIN[1], "next": "/audit"})
        assert r.status_code == 303 and r.headers["location"] == "/audit"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=43200" in cookie
        session = c.get("/api/session").json()
        assert session["user"] == ADMIN[0] and session["role"] == "admin"
        assert len(session["csrf_token"]) >= 32
        # A cookie whose signature does not match is no session.
        value = c.cookies["sinkhole_session"]
        c.cookies.set("sinkhole_session", value[:-2] + ("AA" if value[-2:] != "AA" else "BB"))
        assert c.get("/api/session").status_code == 401


def test_login_never_redirects_off_site(site):
    with httpx.Client(base_url=site.url, timeout=30) as c:
        for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
            r = c.post("/login", data={"username": ADMIN[0], "password": ADMIN[1], "next": target})
            assert r.status_code == 303 and r.headers["location"] == "/", target


def test_cross_site_login_is_refused(site):
    with httpx.Client(base_url=site.url, timeout=30) as c:
        r = c.post(
            "/login",
            data={"username": ADMIN[0], "password": ADMIN[1]},
            headers={"Origin": "https://evil.example"},
        )
        assert r.status_code == 403 and "sinkhole_session" not in r.headers.get("set-cookie", "")


def test_every_page_and_get_route_answers_both_roles(site):
    for user in (ADMIN, VIEWER):
        with login(site, user) as c:
            for path in (*PAGES, *API_GETS, "/?range=24h", "/?range=30d", "/overview/health"):
                r = c.get(path)
                assert r.status_code == 200, (user[0], path, r.text[:300])
            assert c.get("/api/session").json()["role"] == ("admin" if user is ADMIN else "viewer")


def test_api_sites_is_for_a_central_store_only(site):
    # One site, no central store: no sites to list (tests/test_central.py has the rest).
    with login(site, VIEWER) as c:
        r = c.get("/api/sites")
        assert r.status_code == 404 and "no central store" in r.json()["error"]
        assert 'id="sites"' not in c.get("/").text


def test_api_report_is_the_cli_report(site):
    with login(site, VIEWER) as c:
        for query, args in (
            (f"week={WEEK}", ["--week", WEEK]),
            (
                "since=2026-03-02&until=2026-03-06",
                ["--since", "2026-03-02", "--until", "2026-03-06"],
            ),
        ):
            r = c.get(f"/api/report?{query}")
            assert r.status_code == 200
            cli = site.cli("report", *args, "--format", "json")
            assert cli.returncode == 0, cli.stderr
            assert r.json() == json.loads(cli.stdout)
            assert r.json()["totals"]["blocked"] == 3
        # Every format downloads, named after the week.
        for fmt, marker in (
            ("html", "<svg"),
            ("csv", "date,service"),
            ("markdown", "#"),
            ("text", ""),
        ):
            r = c.get(f"/api/report?week={WEEK}&format={fmt}&download=1")
            assert r.status_code == 200 and marker in r.text, fmt
            assert f"report-{WEEK}." in r.headers["content-disposition"]
        assert c.get("/api/report?week=2026-W99").status_code == 400
        assert c.get("/api/report?format=pdf").status_code == 400


def test_api_attempts_is_cli_hits(site):
    with login(site, VIEWER) as c:
        for since in ("24h", "400d"):
            r = c.get(f"/api/attempts?since={since}&limit=10")
            cli = site.cli("hits", "--since", since, "--limit", "10", "--json")
            assert r.status_code == 200 and cli.returncode == 0, cli.stderr
            assert r.json() == json.loads(cli.stdout)
        assert len(c.get("/api/attempts?since=400d").json()) == 4
        assert [h["qname"] for h in c.get("/api/attempts?since=24h").json()] == [
            "gemini.google.com"
        ]
        assert c.get("/api/attempts?since=forever").status_code == 400


def test_a_viewer_reads_but_cannot_change_the_policy(site):
    with login(site, VIEWER) as c:
        token = csrf(c)
        for path in API_POSTS:
            r = c.post(path, json={"name": "x.example"}, headers={"X-CSRF-Token": token})
            assert r.status_code == 403, path
        assert "toggle" not in c.get("/services").text
    with Store(site.config["database"]) as store:
        assert store.rules() == []
        assert "openai-chatgpt" in store.policy_state().enabled_services


def test_a_change_without_the_csrf_token_is_refused(site):
    with login(site, ADMIN) as c:
        for headers in ({}, {"X-CSRF-Token": "not-the-token"}):
            r = c.post("/api/services/openai-chatgpt/disable", json={}, headers=headers)
            assert r.status_code == 403 and "CSRF" in r.json()["error"]
        r = c.post("/api/rules/block", data={"name": "x.example", "csrf_token": "wrong"})
        assert r.status_code == 403
        # Another session's token is not this one's.
        with login(site, ADMIN) as other:
            r = c.post(
                "/api/rules/block",
                json={"name": "x.example"},
                headers={"X-CSRF-Token": csrf(other)},
            )
            assert r.status_code == 403
        assert c.post("/logout").status_code == 403
    with Store(site.config["database"]) as store:
        assert store.rules() == [] and "openai-chatgpt" in store.policy_state().enabled_services


def test_an_admin_changes_the_policy_and_the_audit_names_them(site):
    with login(site, ADMIN) as c:
        h = {"X-CSRF-Token": csrf(c)}
        r = c.post(
            "/api/services/openai-chatgpt:api/disable", json={"comment": "ticket 12"}, headers=h
        )
        assert r.status_code == 200 and r.json() == {"name": "openai-chatgpt:api", "enabled": False}
        assert c.post("/api/services/openai-chatgpt/disable", headers=h).status_code == 200
        r = c.post(
            "/api/rules/block", json={"names": ["Chat.Example.COM."], "comment": "x"}, headers=h
        )
        assert r.status_code == 200 and r.json()["patterns"] == ["chat.example.com"]
        # The form the rules page posts, with its token in a field.
        r = c.post("/api/rules/allow", data={"name": "ok.example", "csrf_token": h["X-CSRF-Token"]})
        assert r.status_code == 303
        assert (
            c.post("/api/rules/unallow", json={"name": "ok.example"}, headers=h).status_code == 200
        )
        assert (
            c.post("/api/rules/unallow", json={"name": "ok.example"}, headers=h).status_code == 404
        )
        assert c.post("/api/rules/block", json={"name": "bad..name"}, headers=h).status_code == 400
        assert c.post("/api/rules/block", json={}, headers=h).status_code == 400
        assert c.post("/api/services/no-such/enable", headers=h).status_code == 404
        assert c.post("/api/services/openai-chatgpt/explode", headers=h).status_code == 404
        services = {s["id"]: s for s in c.get("/api/services").json()}
        assert services["openai-chatgpt"]["enabled"] is False
        assert services["openai-chatgpt"]["api_blocked"] is False
        audit = c.get("/api/audit?limit=10").json()
    with Store(site.config["database"]) as store:
        state = store.policy_state()
        assert "openai-chatgpt" not in state.enabled_services
        assert "openai-chatgpt" in state.disabled_api
        assert [p for p, _ in state.block] == ["chat.example.com"] and state.allow == []
        assert store.rules()[0]["user"] == ADMIN[0]
    mine = [a for a in audit if a["command"].startswith("web: ")]
    assert len(mine) == 5 and {a["user"] for a in mine} == {ADMIN[0]}
    assert mine[-1]["command"] == "web: lists disable openai-chatgpt:api"
    assert mine[-1]["comment"] == "ticket 12"
    # The CLI's audit trail shows the same rows.
    cli = site.cli("lists", "history", "--json", "--limit", "10")
    assert json.loads(cli.stdout) == audit


def test_logout_and_user_removal_end_the_session(site):
    c = login(site, ADMIN)
    assert c.post("/logout", headers={"X-CSRF-Token": csrf(c)}).status_code == 303
    assert c.get("/api/session").status_code == 401
    c = login(site, VIEWER)
    assert c.get("/api/session").status_code == 200
    r = site.cli("users", "remove", VIEWER[0])
    assert r.returncode == 0, r.stderr
    assert c.get("/api/session").status_code == 401
    assert c.get("/").status_code == 303


def test_a_new_password_voids_the_old_sessions(site):
    c = login(site, VIEWER)
    r = site.cli(
        "users", "add", VIEWER[0], "--role", "viewer", "--password-stdin", "--replace",
        input="another long passphrase\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert c.get("/api/session").status_code == 401
    login(site, (VIEWER[0], "another long passphrase")).close()


def test_stream_sends_new_attempts_as_server_sent_events(site):
    db = site.config["database"]
    events: list[dict] = []
    connected = threading.Event()

    def read() -> None:
        with login(site, VIEWER) as c, c.stream("GET", "/api/stream", timeout=30) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            connected.set()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    assert connected.wait(30)
    time.sleep(0.5)  # the stream starts after the newest hit at connection: add one after
    add_hits(db, [(int(time.time()), "10.2.0.9", "finance", "chat.deepseek.com", "deepseek")])
    t.join(10)
    assert events and events[0]["qname"] == "chat.deepseek.com"
    assert events[0]["client"] == "10.2.0.9" and events[0]["count"] == 1


def test_security_headers_on_every_answer(site):
    with login(site, VIEWER) as c:
        for path in ("/", "/login", "/api/session", "/health"):
            r = c.get(path)
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("style-src")[0]
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-frame-options"] == "DENY"
            assert "no-store" in r.headers["cache-control"]
        page = c.get("/").text
        # No inline script: every <script> has a src.
        assert page.count("<script") == page.count("<script src=")
        report = c.get(f"/api/report?week={WEEK}&format=html")
        assert "script-src" not in report.headers["content-security-policy"]
        assert "<script" not in report.text


def test_hostile_requests_get_a_clear_status(site):
    with login(site, ADMIN) as c:
        h = {"X-CSRF-Token": csrf(c)}
        assert c.get("/?range=forever").status_code == 400
        assert c.get("/attempts?since=garbage").status_code == 400
        assert c.get("/attempts?limit=-3").status_code == 400
        assert c.get("/attempts?name=" + "x" * 300).status_code == 400
        assert c.get("/api/stream?after=abc").status_code == 400
        assert c.get("/no/such/page").status_code == 404
        assert c.put("/api/rules/block", headers=h).status_code == 405
        r = c.post(
            "/api/rules/block",
            content=b"{not json",
            headers={**h, "content-type": "application/json"},
        )
        assert r.status_code == 400
        r = c.post("/api/rules/block", content=b"[1, 2]", headers=h)
        assert r.status_code == 400
        big = c.post(
            "/api/rules/block",
            content=b"x" * 200_000,
            headers={**h, "content-type": "application/x-www-form-urlencoded"},
        )
        assert big.status_code == 413
        r = c.post("/api/rules/block", json={"name": "x.example", "comment": 5}, headers=h)
        assert r.status_code == 400
        weird = c.get(
            "/attempts", params={"name": "\x00<script>\udcff".encode("utf-8", "surrogatepass")}
        )
        assert weird.status_code in (200, 400)
    assert "Traceback" not in site.stderr_text()


def test_hostile_names_are_shown_in_presentation_format(dashboard):
    web = dashboard({"privacy": {"clients": "ip"}}, start=False)
    web.add_user(VIEWER[0], "viewer", VIEWER[1])
    now = int(time.time())
    # Rows as an older version stored them: raw octets, markup and control bytes.
    hostile = ["<script>alert(1)</script>.chatgpt.com", "a\x1b[31mred\x07.chatgpt.com"]
    add_hits(
        web.config["database"],
        [(now - 5 + i, "10.0.0.1", None, q, "openai-chatgpt") for i, q in enumerate(hostile)],
    )
    web.start()
    with login(web, VIEWER) as c:
        page = c.get("/attempts").text
        assert "<script>alert" not in page and "\x1b" not in page and "\x07" not in page
        for q in hostile:
            shown = display_name(q)
            assert "<" not in shown and "\\" in shown
            assert f"<code>{shown}</code>" in page
        # The API gives the names in presentation format, as `sinkhole hits --json` does.
        assert {h["qname"] for h in c.get("/api/attempts").json()} == {
            display_name(q) for q in hostile
        }


def test_group_privacy_shows_no_client_anywhere(dashboard):
    web = dashboard({"privacy": {"clients": "group"}}, start=False)
    web.add_user(VIEWER[0], "viewer", VIEWER[1])
    add_hits(
        web.config["database"],
        [(int(time.time()) - 5, None, "finance", "claude.ai", "anthropic-claude")],
    )
    web.start()
    with login(web, VIEWER) as c:
        for path in ("/", "/attempts", "/?range=24h"):
            text = c.get(path).text
            assert 'class="client"' not in text and "Top clients" not in text, path
            assert ">Client<" not in text, path
        assert "finance" in c.get("/attempts").text
        # A client filter is ignored: there is nothing to filter on.
        assert "claude.ai" in c.get("/attempts?client=10.0.0.1").text


def test_the_dashboard_speaks_french(site):
    with login(site, VIEWER) as c:
        en = c.get("/attempts?since=365d")
        assert en.status_code == 200 and "Attempts" in en.text and "Tentatives" not in en.text
        fr = c.get("/attempts?since=365d", headers={"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.5"})
        assert "Vue d'ensemble" in fr.text and "Tentatives bloquées, en direct" in fr.text
        assert '<html lang="fr">' in fr.text
        # The switch beats the browser's language, and sticks.
        r = c.get("/", params={"lang": "en"}, headers={"Accept-Language": "fr"})
        assert "Overview" in r.text and c.cookies.get("sinkhole_lang") == "en"
        assert "Overview" in c.get("/", headers={"Accept-Language": "fr"}).text
        c.get("/", params={"lang": "fr"})
        # Dates as the language writes them: 5 mars 2026 (Paris time) for the hit above.
        text = c.get("/attempts?since=2026-03-01&until=2026-03-08").text
        assert "5 mars 2026" in text and "10:00:00" in text
        en = c.get("/attempts?since=2026-03-01&until=2026-03-08&lang=en").text
        assert "Mar 5, 2026" in en


def test_brute_force_is_slowed_then_refused(dashboard):
    web = dashboard(
        {"web": {"login_free": 2, "login_refuse_after": 5, "login_delay": 0.4, "login_window": 4}},
        start=False,
    )
    web.add_user(ADMIN[0], "admin", ADMIN[1])
    web.add_user(VIEWER[0], "viewer", VIEWER[1])
    web.start()
    with httpx.Client(base_url=web.url, timeout=30) as c:
        guess = {"username": ADMIN[0], "password": "guess"}
        for i in range(5):
            started = time.monotonic()
            r = c.post("/login", data=guess)
            assert r.status_code == 401, i
            if i >= 2:  # past the free failures, each answer waits at least the delay
                assert time.monotonic() - started >= 0.4 * 2 ** (i - 2) * 0.99
        # Refused now, even with the right password; Retry-After says for how long.
        r = c.post("/login", data={"username": ADMIN[0], "password": ADMIN[1]})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "sinkhole_session" not in r.headers.get("set-cookie", "")
        # Another account from the same address is not locked out by these guesses.
        login(web, VIEWER).close()
        # The lock ends with the window: wait for it with a deadline.
        deadline = time.monotonic() + 30
        while True:
            r = c.post("/login", data={"username": ADMIN[0], "password": ADMIN[1]})
            if r.status_code == 303:
                break
            assert r.status_code == 429 and time.monotonic() < deadline
            time.sleep(0.5)
    assert "failed login" in web.stderr_text() and "Traceback" not in web.stderr_text()


def test_users_cli_adds_lists_and_removes(dashboard):
    web = dashboard(start=False)
    web.add_user("alice", "admin", "correct horse battery")
    r = web.cli("users", "list", "--json")
    assert [u["name"] for u in json.loads(r.stdout)] == ["alice"]
    for args, inp, message in (
        (["users", "add", "alice", "--role", "admin", "--password-stdin"], "x" * 20, "exists"),
        (["users", "add", "bob", "--role", "root", "--password-stdin"], "x" * 20, "root"),
        (["users", "add", "bob", "--role", "viewer", "--password-stdin"], "short", "at least"),
        (["users", "add", "b<o>b", "--role", "viewer", "--password-stdin"], "x" * 20, "user name"),
        (["users", "remove", "nobody"], None, "nobody"),
    ):
        r = web.cli(*args, input=inp)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
        # One line, or click's usage error whose last line says what is wrong.
        assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("Error")
    with Store(web.config["database"]) as store:
        stored = store.conn.execute("SELECT password FROM web_users").fetchone()[0]
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert web.cli("users", "remove", "alice").returncode == 0
    assert json.loads(web.cli("users", "list", "--json").stdout) == []


def test_a_network_listen_needs_tls_or_a_proxy(tmp_path):
    from tests.conftest import run_cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text("web: {listen: '0.0.0.0:8053'}\n")
    r = run_cli("web", "--config", str(cfg))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "web.listen" in r.stderr and "tls_cert" in r.stderr
    cfg.write_text(
        "web: {listen: '0.0.0.0:8053', tls_cert: /nonexistent.pem, tls_key: /nonexistent.key}\n"
    )
    r = run_cli("web", "--config", str(cfg), "--db", str(tmp_path / "x.db"))
    assert r.returncode == 1 and "web.tls_cert" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("web", "--listen", "192.0.2.1:8053", "--db", str(tmp_path / "x.db"))
    assert r.returncode == 2 and "--listen" in r.stderr and "Traceback" not in r.stderr


def test_behind_proxy_the_client_is_the_forwarded_one_and_cookies_are_secure(dashboard):
    web = dashboard({"web": {"behind_proxy": True}}, start=False)
    web.add_user(VIEWER[0], "viewer", VIEWER[1])
    web.start()
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    with httpx.Client(base_url=web.url, timeout=30) as c:
        r = c.post("/login", data={"username": VIEWER[0], "password": "wrong"}, headers=proxy)
        assert r.status_code == 401
        r = c.post("/login", data={"username": VIEWER[0], "password": VIEWER[1]}, headers=proxy)
        # The proxy terminates TLS: the cookie is Secure.
        assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()
    with Store(web.config["database"]) as store:
        keys = [k for (k,) in store.conn.execute("SELECT key FROM web_login_failures")]
    # Failed logins count against the office client, not against the proxy's address.
    assert keys == ["ip:203.0.113.9"]
    assert "login of reader (viewer) from 203.0.113.9" in web.stderr_text()


def test_i18n_catalogue_translates_every_message():
    from babel.messages.extract import extract_from_dir
    from babel.messages.pofile import read_po

    root = Path(__file__).resolve().parents[1]
    po = root / "resolver/web/locale/fr/LC_MESSAGES/messages.po"
    with po.open("rb") as f:
        catalog = read_po(f)
    method_map = [("**.py", "python"), ("templates/**.html", "jinja2")]
    found = {
        msg
        for _file, _line, msg, _comments, _ctx in extract_from_dir(
            root / "resolver/web", method_map
        )
        if isinstance(msg, str)
    }
    assert len(found) > 80
    missing = sorted(m for m in found if not (catalog.get(m) and catalog.get(m).string))
    assert missing == [], f"untranslated in {po.name}: {missing}"


def test_sigterm_ends_open_live_logs_and_exits_cleanly(site):
    c = login(site, VIEWER)
    with c.stream("GET", "/api/stream", timeout=30) as r:
        assert r.status_code == 200
        # uvicorn re-raises the signal once it has shut down (systemd counts that as clean).
        assert site.stop() in (0, -signal.SIGTERM)
        # The stream ended with the server instead of being cut off after a timeout.
        assert b"".join(r.iter_raw()).startswith(b"retry:")
    c.close()
    err = site.stderr_text()
    assert "ERROR" not in err and "Traceback" not in err, err
