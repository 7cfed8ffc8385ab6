"""The weekly report's policy changes: new catalog services, imported lists imported, updated
and removed (from a real HTTP server on loopback), and the audit trail, week by week."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT, run_cli
from tests.test_catalog_server import NEW_SERVICE
from tests.test_lists_update import FIRST, site  # noqa: F401 - the loopback list server

UTC_CONFIG = {"timezone": "UTC"}


def iso_week(when: datetime) -> str:
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


def move_to(db: Path, when: datetime) -> None:
    """Date every audit row and list update so far at `when`, as if done a week earlier."""
    stamp = when.isoformat(timespec="seconds")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit SET ts = ?", (stamp,))
        conn.execute("UPDATE list_updates SET ts = ?", (stamp,))
    conn.close()


def report(env: dict[str, str], week: str, fmt: str) -> str:
    r = run_cli("report", "--week", week, "--format", fmt, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_report_lists_the_changes_of_its_week_only(tmp_path: Path, site) -> None:  # noqa: F811
    state, url = site
    catalog = tmp_path / "catalog"
    shutil.copytree(REPO_ROOT / "blocklists", catalog)
    db = tmp_path / "s.db"
    config = tmp_path / "sinkhole.yaml"
    config.write_text(yaml.safe_dump({**UTC_CONFIG, "database": str(db), "catalog": str(catalog)}))
    env = {"SINKHOLE_CONFIG": str(config), "SINKHOLE_DB": str(db)}
    assert run_cli("lists", env=env).returncode == 0  # the first catalog: nothing is new
    # Last week: an import, an update that adds two names and drops two, a removal.
    assert run_cli("lists", "import", url, "--name", "extra-ai", env=env).returncode == 0
    assert run_cli("lists", "import", url, "--name", "old-ai", env=env).returncode == 0
    state.names = [*FIRST[2:], "new1.example-ai.com", "new2.example-ai.com"]
    state.etag = '"v2"'
    r = run_cli("lists", "update", "extra-ai", env=env)
    assert r.returncode == 0 and "+2 -2" in r.stdout, r.stderr
    assert run_cli("lists", "remove", "old-ai", env=env).returncode == 0
    now = datetime.now(UTC)
    move_to(db, now - timedelta(days=7))
    # This week: an update that adds three and drops one, a rule, a catalog upgrade.
    fresh = [f"fresh{i}.example-ai.com" for i in range(3)]
    state.names = [*FIRST[3:], "new1.example-ai.com", "new2.example-ai.com", *fresh]
    state.etag = '"v3"'
    r = run_cli("lists", "update", env=env)
    assert r.returncode == 0, r.stderr
    assert "extra-ai: 12 names, +3 -1" in r.stdout
    r = run_cli("block", "chat.example.net", "--comment", "seen <b>in</b> the log", env=env)
    assert r.returncode == 0, r.stderr
    path = catalog / "ai-chatbots.yaml"
    path.write_text(path.read_text() + NEW_SERVICE)
    assert "example-new-chat" in run_cli("lists", env=env).stdout

    this_week, last_week = iso_week(now), iso_week(now - timedelta(days=7))
    changes = json.loads(report(env, this_week, "json"))["changes"]
    assert [(s["id"], s["name"], s["enabled"]) for s in changes["new_services"]] == [
        ("example-new-chat", "Example New Chat", True)
    ]
    assert [
        (c["list"], c["change"], c["added"], c["removed"], c["names"], c["source"])
        for c in changes["lists"]
    ] == [("extra-ai", "updated", 3, 1, 12, url)]
    assert [(c["command"], c["comment"]) for c in changes["policy"]] == [
        ("sinkhole block chat.example.net", "seen <b>in</b> the log")
    ]
    # The counts are the store's own record of the update.
    with sqlite3.connect(db) as conn:
        recorded = conn.execute(
            "SELECT added, removed, names FROM list_updates WHERE ts >= ?",
            ((now - timedelta(days=1)).isoformat(timespec="seconds"),),
        ).fetchall()
    conn.close()
    assert recorded == [(3, 1, 12)]

    before = json.loads(report(env, last_week, "json"))["changes"]
    assert before["new_services"] == [] and before["policy"] == []
    assert [
        (c["list"], c["change"], c["added"], c["removed"], c["names"]) for c in before["lists"]
    ] == [
        ("extra-ai", "imported", 10, 0, 10),
        ("old-ai", "imported", 10, 0, 10),
        ("extra-ai", "updated", 2, 2, 10),
        ("old-ai", "removed", 0, 10, 0),
    ]

    text = report(env, this_week, "text")
    section = text.split("\nImported lists\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section[1].split() == ["List", "Change", "When", "Added", "Removed", "Names", "Source"]
    (row,) = section[3:]
    cells = row.split()
    assert cells[:2] == ["extra-ai", "updated"] and cells[-4:] == ["+3", "-1", "12", url]
    assert "old-ai" not in text
    assert "Example New Chat  example-new-chat" in text
    assert "sinkhole block chat.example.net" in text
    old_text = report(env, last_week, "text")
    assert "old-ai" in old_text and "removed" in old_text and "example-new-chat" not in old_text
    assert "No service was added to the catalog." in old_text
    assert "No other policy change." in old_text

    # Every format carries the sections; the comment's markup stays text.
    html = report(env, this_week, "html")
    assert "<h2>Imported lists</h2>" in html and "seen &lt;b&gt;in&lt;/b&gt; the log" in html
    md = report(env, this_week, "markdown")
    assert "## New catalog services" in md and "| extra-ai | updated |" in md
