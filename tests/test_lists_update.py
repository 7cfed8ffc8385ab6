"""`sinkhole lists update`: URL lists fetched again from a real HTTP server on loopback."""

from __future__ import annotations

import http.server
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import run_cli

FIRST = [f"chat{i}.example-ai.com" for i in range(10)]


@dataclass
class ListSite:
    """What the loopback server serves at /ai.txt, changed by the tests between updates."""

    names: list[str] = field(default_factory=lambda: list(FIRST))
    etag: str = '"v1"'
    last_modified: str = "Mon, 30 Nov 2026 08:00:00 GMT"
    #: None: serve the list; an int: answer with that status; "empty", "half", "cut".
    fault: int | str | None = None
    requests: list[dict[str, str]] = field(default_factory=list)

    def body(self) -> bytes:
        return "".join(f"{n}\n" for n in ["# an AI list", *self.names]).encode()


def make_handler(site: ListSite) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            site.requests.append(dict(self.headers))
            if self.path != "/ai.txt":
                self.send_error(404)
                return
            if isinstance(site.fault, int):
                self.send_error(site.fault)
                return
            if self.headers.get("If-None-Match") == site.etag:
                self.send_response(304)
                self.send_header("ETag", site.etag)
                self.end_headers()
                return
            body = site.body()
            length = len(body)
            if site.fault == "empty":
                body, length = b"", 0
            elif site.fault == "half":
                half = site.names[: len(site.names) // 2]
                body = "".join(f"{n}\n" for n in half).encode()
                length = len(body)
            elif site.fault == "cut":
                body = body[: len(body) // 2]  # Content-Length still says the whole
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(length))
            self.send_header("ETag", site.etag)
            self.send_header("Last-Modified", site.last_modified)
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def site() -> Iterator[tuple[ListSite, str]]:
    """A ThreadingHTTPServer on 127.0.0.1, port 0; shut down afterwards."""
    state = ListSite()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/ai.txt"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def names_in(db: Path, name: str = "extra-ai") -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT domain FROM list_domains WHERE list = ? AND kind = 'block' ORDER BY domain",
            (name,),
        ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def imported(tmp_path: Path, site: tuple[ListSite, str]) -> tuple[ListSite, str, Path]:
    state, url = site
    db = tmp_path / "s.db"
    r = run_cli("lists", "import", url, "--name", "extra-ai", "--db", str(db))
    assert r.returncode == 0, r.stderr
    assert names_in(db) == sorted(FIRST)
    return state, url, db


def update(db: Path, *names: str):
    return run_cli("lists", "update", *names, "--db", str(db))


def test_update_applies_and_prints_additions_and_removals(imported) -> None:
    state, url, db = imported
    state.names = [*FIRST[2:], "new1.example-ai.com", "new2.example-ai.com"]
    state.etag = '"v2"'
    r = update(db)
    assert r.returncode == 0, r.stderr
    assert f"extra-ai: 10 names, +2 -2 ({url})" in r.stdout
    assert "  + new1.example-ai.com" in r.stdout and "  + new2.example-ai.com" in r.stdout
    assert f"  - {FIRST[0]}" in r.stdout and f"  - {FIRST[1]}" in r.stdout
    assert names_in(db) == sorted(state.names)
    # The request was conditional on what the import stored.
    assert state.requests[-1]["If-None-Match"] == '"v1"'
    assert state.requests[-1]["If-Modified-Since"] == "Mon, 30 Nov 2026 08:00:00 GMT"
    history = run_cli("lists", "history", "--db", str(db)).stdout
    assert "sinkhole lists update extra-ai" in history.splitlines()[0]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT list, added, removed, names FROM list_updates").fetchall() == [
            ("extra-ai", 2, 2, 10)
        ]
        detail = conn.execute("SELECT detail FROM audit ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert detail == f"extra-ai from {url}: 10 names (+2 -2)"


def test_not_modified_changes_nothing(imported) -> None:
    state, url, db = imported
    with sqlite3.connect(db) as conn:
        audits = conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    r = update(db, "extra-ai")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"extra-ai: not modified since the last fetch ({url})"
    assert names_in(db) == sorted(FIRST)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == audits
        assert conn.execute("SELECT COUNT(*) FROM list_updates").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        (500, "HTTP 500"),
        (404, "HTTP 404"),
        ("empty", "has no names"),
        ("half", "would drop 5 of its 10 names"),
        ("cut", "download cut off"),
    ],
)
def test_a_bad_fetch_keeps_the_old_list_and_exits_non_zero(imported, fault, why: str) -> None:
    state, url, db = imported
    state.names = [*FIRST, "new1.example-ai.com"]  # a change, so nothing is a 304
    state.etag = '"v2"'
    state.fault = fault
    r = update(db)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("sinkhole: extra-ai: "), line
    assert why in line and "the old list is kept" in line, line
    assert "Traceback" not in r.stderr
    assert names_in(db) == sorted(FIRST)
    # Once the server is well again, the next update goes through.
    state.fault = None
    r = update(db)
    assert r.returncode == 0, r.stderr
    assert names_in(db) == sorted(state.names)


def test_update_of_one_bad_list_still_updates_the_others(tmp_path: Path, site) -> None:
    state, url = site
    db = tmp_path / "s.db"
    assert run_cli("lists", "import", url, "--name", "good", "--db", str(db)).returncode == 0
    gone = url.replace("/ai.txt", "/gone.txt")
    # A list whose file vanished later: import it from the good URL, then point it away.
    assert run_cli("lists", "import", url, "--name", "gone", "--db", str(db)).returncode == 0
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE lists SET source = ?, etag = NULL WHERE name = 'gone'", (gone,))
    state.names = [*FIRST, "new1.example-ai.com"]
    state.etag = '"v2"'
    r = update(db)
    assert r.returncode == 1
    assert "good: 11 names, +1 -0" in r.stdout
    assert f"sinkhole: gone: {gone}: HTTP 404" in r.stderr
    assert names_in(db, "good") == sorted(state.names)
    assert names_in(db, "gone") == sorted(FIRST)


def test_update_refuses_a_file_list_and_an_unknown_name(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    listfile = tmp_path / "local.txt"
    listfile.write_text("chat.example-ai.com\n")
    assert (
        run_cli("lists", "import", str(listfile), "--name", "local", "--db", str(db)).returncode
        == 0
    )
    r = update(db, "local")
    assert r.returncode == 1 and "imported from the file" in r.stderr
    r = update(db, "nope")
    assert r.returncode == 1 and "no imported list named 'nope'" in r.stderr
    r = update(db)
    assert r.returncode == 0 and "nothing to update" in r.stdout
