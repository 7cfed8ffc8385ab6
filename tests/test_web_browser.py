"""The dashboard in a real browser: Debian's Chromium, headless, driven through chromedriver.

`sinkhole serve` answers DNS and records hits; `sinkhole web` reads the same database;
dig and dnspython ask the questions. Screenshots go to tests/artifacts/ (not in git).
Selenium is given /usr/bin/chromedriver and /usr/bin/chromium, so it never downloads
a browser or a driver.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dns.message
import dns.name
import dns.query
import pytest

from resolver.presentation import display_name
from tests.dnstest import require_tool
from tests.dnstest.webserver import WebProcess

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (test extra) missing")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ADMIN = ("it-admin", "a long admin passphrase")
VIEWER = ("dpo", "a long viewer passphrase")
#: What the issue asks of the live log and of a policy change: within 2 seconds.
LIVE_DEADLINE = 2.0
PAGE_WAIT = 15.0
TZ = "Europe/Paris"


@pytest.fixture
def browser(request) -> Iterator[webdriver.Chrome]:
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1100",
        "--lang=en-US",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
    ):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"intl.accept_languages": "en-US,en"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            driver.save_screenshot(str(ARTIFACTS / f"{request.node.name}.png"))
        finally:
            driver.quit()


@pytest.fixture
def office(sinkhole, dashboard) -> tuple:
    """A running DNS server and the dashboard on its database, with two users."""
    dns_server = sinkhole({"timezone": TZ, "privacy": {"clients": "ip"}})
    web = dashboard(
        {"database": dns_server.config["database"], "timezone": TZ, "privacy": {"clients": "ip"}},
        start=False,
    )
    web.add_user(ADMIN[0], "admin", ADMIN[1])
    web.add_user(VIEWER[0], "viewer", VIEWER[1])
    web.start()
    return dns_server, web


def ask(server, name: str | dns.name.Name, source: str = "127.0.0.1") -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    host, port = server.address
    return dns.query.udp(q, host, port=port, timeout=5, source=source)


def dig(server, name: str) -> str:
    tool = require_tool("dig")
    host, port = server.address
    r = subprocess.run(
        [tool, f"@{host}", "-p", str(port), "+short", "+time=2", "+tries=2", name, "A"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


def hits_of(db: str, qname: str) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute(
            "SELECT COALESCE(SUM(count), 0) FROM hits WHERE qname = ?", (qname,)
        ).fetchone()
    return n


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def log_in(driver, web: WebProcess, user: tuple[str, str], path: str = "/") -> None:
    driver.get(web.url + path)
    wait = WebDriverWait(driver, PAGE_WAIT)
    wait.until(lambda d: "/login" in d.current_url)
    driver.find_element(By.NAME, "username").send_keys(user[0])
    driver.find_element(By.NAME, "password").send_keys(user[1])
    driver.find_element(By.ID, "login-submit").click()
    wait.until(lambda d: d.find_elements(By.ID, "who"))


def fetch(driver, path: str, csrf: bool, body: dict | None = None) -> int:
    """POST from the page, as its scripts would, with or without the session's token."""
    return driver.execute_async_script(
        """
        const [path, csrf, body, done] = arguments;
        const session = await (await fetch('/api/session')).json();
        const headers = {'Content-Type': 'application/json'};
        if (csrf) headers['X-CSRF-Token'] = session.csrf_token;
        const r = await fetch(path, {method: 'POST', headers, body: JSON.stringify(body)});
        done(r.status);
        """,
        path,
        csrf,
        body or {},
    )


def number(text: str) -> int:
    return int("".join(ch for ch in text if ch.isdigit()))


def test_log_in_and_see_counters_that_match_the_database(office, browser):
    dns_server, web = office
    db = dns_server.config["database"]
    for name in ("chatgpt.com", "claude.ai"):
        for _ in range(3):
            assert dig(dns_server, name) == "0.0.0.0"
    wait_for(lambda: hits_of(db, "claude.ai") >= 3, 15, "the hits are recorded")
    today = datetime.now(ZoneInfo(TZ)).date().isoformat()
    r = web.cli("report", "--since", today, "--format", "json")
    totals = json.loads(r.stdout)["totals"]
    assert totals["blocked"] >= 6 and totals["attempts"] >= 1

    log_in(browser, web, ADMIN)
    assert browser.current_url.rstrip("/") == web.url
    counter = browser.find_element(By.CSS_SELECTOR, "#today-attempts .n").text
    assert number(counter) == totals["attempts"]
    blocked = browser.find_element(By.CSS_SELECTOR, "#today-attempts small").text
    assert number(blocked) == totals["blocked"]
    services = browser.find_element(By.ID, "top-services").text
    assert "ChatGPT" in services and "Claude" in services
    assert "127.0.0.1" in browser.find_element(By.ID, "top-clients").text
    # A click on today's bar opens the log of that day.
    browser.find_element(By.CSS_SELECTOR, f'rect.bar[data-date="{today}"]').click()
    WebDriverWait(browser, PAGE_WAIT).until(lambda d: "/attempts?" in d.current_url)
    assert f"since={today}" in browser.current_url
    rows = browser.find_elements(By.CSS_SELECTOR, "#attempt-rows tr.attempt")
    assert {r.find_element(By.CSS_SELECTOR, ".qname").text for r in rows} >= {
        "chatgpt.com",
        "claude.ai",
    }
    # The hourly trend: a bar per hour, the current one opening its hour.
    browser.get(web.url + "/?range=24h")
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.chart-hours rect.bar")
    assert len(bars) == 24
    bars[-1].click()
    WebDriverWait(browser, PAGE_WAIT).until(lambda d: "/attempts?" in d.current_url)
    assert browser.find_elements(By.CSS_SELECTOR, "#attempt-rows tr.attempt")


def test_a_blocked_query_appears_in_the_live_log_within_2s(office, browser):
    dns_server, web = office
    log_in(browser, web, VIEWER, "/attempts")
    WebDriverWait(browser, PAGE_WAIT).until(
        lambda d: "connected" in d.find_element(By.ID, "live-state").get_attribute("class")
    )
    assert not browser.find_elements(By.CSS_SELECTOR, "#attempt-rows tr.attempt")
    assert dig(dns_server, "chat.mistral.ai") == "0.0.0.0"

    def shown() -> bool:
        cells = browser.find_elements(By.CSS_SELECTOR, "#attempt-rows tr.attempt .qname")
        return any(c.text == "chat.mistral.ai" for c in cells)

    wait_for(shown, LIVE_DEADLINE, "the attempt in the live log")
    row = browser.find_element(By.CSS_SELECTOR, "#attempt-rows tr.attempt")
    assert "Le Chat" in row.text or "Mistral" in row.text
    assert row.find_element(By.CSS_SELECTOR, ".client").text == "127.0.0.1"
    # No reload happened: the page is the same document.
    assert browser.execute_script("return performance.getEntriesByType('navigation').length") == 1


def test_an_admin_disables_a_service_and_dns_follows_within_2s(office, browser):
    dns_server, web = office
    assert ask(dns_server, "chatgpt.com").answer[0][0].address == "0.0.0.0"
    log_in(browser, web, ADMIN, "/services")
    row = browser.find_element(By.ID, "svc-openai-chatgpt")
    assert "blocked" in row.find_element(By.CSS_SELECTOR, ".state").text
    row.find_element(By.CSS_SELECTOR, "input.comment").send_keys("pilot <b>project</b>")
    row.find_element(By.CSS_SELECTOR, "button.toggle").click()

    def forwarded() -> bool:
        answer = ask(dns_server, "chatgpt.com")
        return not any(rr.to_text() == "0.0.0.0" for rrset in answer.answer for rr in rrset)

    wait_for(forwarded, LIVE_DEADLINE, "DNS stops blocking chatgpt.com")
    WebDriverWait(browser, PAGE_WAIT).until(
        lambda d: "allowed" in d.find_element(By.CSS_SELECTOR, "#svc-openai-chatgpt .state").text
    )
    browser.get(web.url + "/audit")
    first = browser.find_element(By.CSS_SELECTOR, "#audit tbody tr")
    assert first.find_element(By.CSS_SELECTOR, ".user").text == ADMIN[0]
    assert "web: lists disable openai-chatgpt" in first.text
    assert "pilot <b>project</b>" in first.text  # shown as text, not markup
    assert not browser.find_elements(By.CSS_SELECTOR, "#audit b")


def test_a_viewer_is_refused_a_change(office, browser):
    dns_server, web = office
    log_in(browser, web, VIEWER, "/services")
    assert not browser.find_elements(By.CSS_SELECTOR, "button.toggle")
    assert fetch(browser, "/api/services/openai-chatgpt/disable", csrf=True) == 403
    assert fetch(browser, "/api/rules/allow", csrf=True, body={"name": "chatgpt.com"}) == 403
    assert ask(dns_server, "chatgpt.com").answer[0][0].address == "0.0.0.0"
    browser.get(web.url + "/rules")
    assert not browser.find_elements(By.ID, "rule-form")


def test_a_request_without_the_csrf_token_is_refused(office, browser):
    dns_server, web = office
    log_in(browser, web, ADMIN, "/rules")
    assert fetch(browser, "/api/rules/allow", csrf=False, body={"name": "chatgpt.com"}) == 403
    assert ask(dns_server, "chatgpt.com").answer[0][0].address == "0.0.0.0"
    # The page's own form carries the token and works.
    browser.find_element(By.ID, "rule-name").send_keys("chat.example.org")
    browser.find_element(By.ID, "rule-block").click()
    WebDriverWait(browser, PAGE_WAIT).until(lambda d: "chat.example.org" in d.page_source)
    wait_for(
        lambda: ask(dns_server, "chat.example.org").answer,
        LIVE_DEADLINE + 3,
        "the new rule blocks",
    )


def test_hostile_names_are_rendered_harmless(office, browser):
    dns_server, web = office
    db = dns_server.config["database"]
    # Labels with markup and control bytes, as any client may send them.
    labels = [b"<img src=x onerror=alert(1)>", b"\x1b[31m\x07<b>", b"chatgpt", b"com", b""]
    ask(dns_server, dns.name.Name(labels))
    # And a row as an older version stored it: the raw text.
    raw = "<script>alert(2)</script>.claude.ai"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO hits (ts, client, qname, qtype, service, category, rule, action, count)"
            " VALUES (?, '127.0.0.9', ?, 'A', 'anthropic-claude', 'ai-chatbots', 'claude.ai',"
            " 'null', 1)",
            (int(time.time()), raw),
        )
    wait_for(lambda: hits_of(db, raw), 5, "the raw row")
    with sqlite3.connect(db) as conn:
        wait_for(
            lambda: conn.execute(
                "SELECT COUNT(*) FROM hits WHERE qname LIKE '%chatgpt.com'"
            ).fetchone()[0],
            15,
            "the hostile query is recorded",
        )
        (stored,) = conn.execute(
            "SELECT qname FROM hits WHERE qname LIKE '%chatgpt.com'"
        ).fetchone()
    log_in(browser, web, VIEWER, "/attempts")
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#attempt-rows .qname")]
    assert display_name(stored) in cells and display_name(raw) in cells
    assert all("<" not in c and "\x1b" not in c for c in cells)
    assert not browser.find_elements(
        By.CSS_SELECTOR, "#attempts img, #attempts script, #attempts b"
    )
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - raises when no alert() ran
    # The live log renders them the same way.
    ask(dns_server, dns.name.Name([b"<svg onload=alert(3)>", b"claude", b"ai", b""]))
    wait_for(
        lambda: any(
            "\\060svg" in c.text
            for c in browser.find_elements(By.CSS_SELECTOR, "#attempt-rows .qname")
        ),
        5,
        "the hostile name in the live log",
    )
    assert not browser.find_elements(By.CSS_SELECTOR, "#attempts svg")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018


def test_the_french_pages(office, browser):
    dns_server, web = office
    db = dns_server.config["database"]
    # A busy day for the number format: 1234 lookups in one row, as the recorder folds them.
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO hits (ts, client, qname, qtype, service, category, rule, action, count)"
            " VALUES (?, '127.0.0.7', 'chatgpt.com', 'A', 'openai-chatgpt', 'ai-chatbots',"
            " 'chatgpt.com', 'null', 1234)",
            (int(time.time()) - 30,),
        )
    log_in(browser, web, VIEWER)
    assert "1,234" in browser.find_element(By.ID, "today-attempts").text
    browser.find_element(By.CSS_SELECTOR, "a.lang-fr").click()
    WebDriverWait(browser, PAGE_WAIT).until(
        lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("lang") == "fr"
    )
    nav = browser.find_element(By.CSS_SELECTOR, "header nav").text
    assert "Vue d'ensemble" in nav and "Tentatives" in nav and "Overview" not in nav
    today = browser.find_element(By.ID, "today-attempts").text
    assert "tentatives aujourd'hui" in today
    assert "1\u202f234" in today or "1\u00a0234" in today  # French groups digits with a space
    browser.get(web.url + "/attempts")
    assert "Tentatives bloquées, en direct" in browser.find_element(By.TAG_NAME, "h1").text
    months = (
        "janv.",
        "févr.",
        "mars",
        "avr.",
        "mai",
        "juin",
        "juil.",
        "août",
        "sept.",
        "oct.",
        "nov.",
        "déc.",
    )
    when = browser.find_element(By.CSS_SELECTOR, "#attempt-rows td.when").text
    assert any(m in when for m in months), when
    browser.get(web.url + "/services")
    assert "Services du catalogue" in browser.page_source
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "french-services.png"))
    browser.get(web.url + "/")
    browser.save_screenshot(str(ARTIFACTS / "french-overview.png"))


def test_the_french_report_page_and_charts(office, browser):
    """The report page, the report in its frame and the charts' titles and tooltips, in
    French: figures and dates as French writes them, from the data of last week."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from resolver import report as rpt

    dns_server, web = office
    db = dns_server.config["database"]
    start, _ = rpt.week_bounds(None, TZ)  # the page's default: the last complete week
    tuesday = start + timedelta(days=1, hours=12)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO hits (ts, client, qname, qtype, service, category, rule, action, count)"
            " VALUES (?, '127.0.0.7', 'chatgpt.com', 'A', 'openai-chatgpt', 'ai-chatbots',"
            " 'chatgpt.com', 'null', 1234)",
            (int(tuesday.timestamp()),),
        )
        # And one today, for the overview's charts.
        conn.execute(
            "INSERT INTO hits (ts, client, qname, qtype, service, category, rule, action, count)"
            " VALUES (?, '127.0.0.7', 'claude.ai', 'A', 'anthropic-claude', 'ai-chatbots',"
            " 'claude.ai', 'null', 2)",
            (int(time.time()) - 30,),
        )
    conn.close()
    log_in(browser, web, VIEWER, "/report")
    browser.get(web.url + "/report?lang=fr")
    wait = WebDriverWait(browser, PAGE_WAIT)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("lang") == "fr")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Rapport hebdomadaire"
    blocked = browser.find_element(By.ID, "report-blocked").text
    assert "1\u202f234" in blocked and "requêtes bloquées" in blocked, blocked
    links = [
        a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, ".downloads a")
    ]
    assert links and all("lang=fr" in href for href in links)
    frame = browser.find_element(By.CSS_SELECTOR, "iframe.report-frame")
    browser.switch_to.frame(frame)
    try:
        wait.until(lambda d: d.find_elements(By.TAG_NAME, "h2"))
        year, week, _ = start.isocalendar()
        assert browser.find_element(By.TAG_NAME, "h1").text == (
            f"Rapport sinkhole, semaine {year}-W{week:02d}"
        )
        headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
        assert headings[:3] == ["Résumé", "Services", "Par jour"]
        assert "Modifications de la politique" in headings
        cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "td")]
        assert "Requêtes bloquées" in cells and "1\u202f234" in cells
        chart = browser.find_element(By.CSS_SELECTOR, "svg.chart-days")
        assert chart.get_attribute("aria-label") == "Requêtes bloquées par jour"
        bar = browser.find_element(By.CSS_SELECTOR, f'rect.bar[data-date="{tuesday.date()}"]')
        tip = bar.find_element(By.TAG_NAME, "title").get_attribute("textContent")
        months = (
            "janvier février mars avril mai juin juillet août septembre octobre novembre décembre"
        )
        day = tuesday.astimezone(ZoneInfo(TZ)).date()
        date_fr = f"{day.day} {months.split()[day.month - 1]} {day.year}"
        assert re.fullmatch(rf"{date_fr}\u00a0: 1\u202f234 bloquées, 1 tentatives?", tip), tip
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "french-report.png"))
    finally:
        browser.switch_to.default_content()
    # The overview's charts: the day chart of the week and the hour chart of 24 hours.
    browser.get(web.url + "/?range=week")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.chart-services"))
    services = browser.find_element(By.CSS_SELECTOR, "svg.chart-services")
    assert services.get_attribute("aria-label") == "Requêtes bloquées par service"
    title = services.find_element(By.CSS_SELECTOR, "rect.bar title").get_attribute("textContent")
    assert title.endswith("\u00a0: 2 bloquées"), title
    browser.get(web.url + "/?range=24h")
    hours = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "svg.chart-hours"))
    assert hours.get_attribute("aria-label") == "Requêtes bloquées par heure"
    tips = [
        t.get_attribute("textContent")
        for t in hours.find_elements(By.CSS_SELECTOR, "rect.bar title")
    ]
    assert any(re.search(r"\u00a0: 2 bloquées, 1 tentatives?$", t) for t in tips), tips
