"""Hits and traffic a real server records in a real database file, through faults and changes."""

from __future__ import annotations

import collections
import errno
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from resolver.store import Store
from tests.conftest import query, run_cli

#: Several clients: all of 127.0.0.0/8 is local on Linux, so each is its own source address.
CLIENTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
#: Blocked names (one in capitals: stored lowercased) and what each hit must say.
BLOCKED = {
    "chatgpt.com": ("openai-chatgpt", "chatgpt.com"),
    "www.chatgpt.com": ("openai-chatgpt", "chatgpt.com"),
    "CLAUDE.ai": ("anthropic-claude", "claude.ai"),
    "gemini.google.com": ("google-gemini", "gemini.google.com"),
    "perplexity.ai": ("perplexity", "perplexity.ai"),
}
TYPES = ("A", "AAAA", "HTTPS", "TXT", "MX")
FAULT_STARTS = "hits are kept in memory until it recovers"
FAULT_ENDS = "is writable again"
#: How long a test waits for something the server does on its own (not an assertion).
PATIENCE = 20.0

Job = tuple[str, str, str]  # (source address, name, type)


# -- sending ----------------------------------------------------------------------------------


def sinkholed(name: str, rdtype: str, msg: dns.message.Message) -> str | None:
    """None when msg is the sinkhole answer (mode null) to name/rdtype, else what is wrong."""
    if msg.rcode() != dns.rcode.NOERROR:
        return f"rcode {dns.rcode.to_text(msg.rcode())}"
    if msg.question[0].name.to_text().rstrip(".") != name:
        return "question changed"
    addresses = [rd.to_text() for rrset in msg.answer for rd in rrset]
    want = {"A": ["0.0.0.0"], "AAAA": ["::"]}.get(rdtype, [])
    return None if addresses == want else f"answer {addresses}"


def ask_many(
    address: tuple[str, int],
    jobs: list[Job],
    check: Callable[[str, str, dns.message.Message], str | None] = sinkholed,
    window: int = 32,
    timeout: float = 5.0,
) -> tuple[collections.Counter, list[str]]:
    """Send every job over UDP from its source address, pipelined; (answered, failures)."""
    by_source: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for src, name, rdtype in jobs:
        by_source[src].append((name, rdtype))
    answered: collections.Counter = collections.Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def run(src: str, items: list[tuple[str, str]]) -> None:
        ok: collections.Counter = collections.Counter()
        bad: list[str] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((src, 0))
            s.settimeout(timeout)
            pending: dict[int, tuple[str, str]] = {}
            todo = iter(items)
            qid = 0
            while True:
                while len(pending) < window:
                    item = next(todo, None)
                    if item is None:
                        break
                    qid = (qid + 1) & 0xFFFF
                    msg = dns.message.make_query(item[0], item[1], use_edns=0)
                    msg.id = qid
                    s.sendto(msg.to_wire(), address)
                    pending[qid] = item
                if not pending:
                    break
                try:
                    reply = dns.message.from_wire(s.recv(65535))
                except TimeoutError:
                    bad += [f"{src} {n} {t}: no answer" for n, t in pending.values()]
                    break
                item = pending.pop(reply.id, None)
                if item is None:
                    continue
                wrong = check(item[0], item[1], reply)
                if wrong:
                    bad.append(f"{src} {item[0]} {item[1]}: {wrong}")
                else:
                    ok[(src, item[0].lower(), item[1])] += 1
        with lock:
            answered.update(ok)
            failures.extend(bad)

    threads = [threading.Thread(target=run, args=kv) for kv in by_source.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answered, failures


def blocked_jobs(repeat: int, clients: tuple[str, ...] = CLIENTS, names=BLOCKED) -> list[Job]:
    return [(c, n, t) for _ in range(repeat) for c in clients for n in names for t in TYPES]


# -- reading the database -------------------------------------------------------------------------


def db_rows(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def hit_counts(path: Path) -> collections.Counter:
    return collections.Counter(
        {
            (c, q, t): n
            for c, q, t, n in db_rows(
                path, "SELECT client, qname, qtype, SUM(count) FROM hits GROUP BY 1, 2, 3"
            )
        }
    )


def traffic(path: Path) -> dict[str, int]:
    cols = ("queries", "blocked", "forwarded", "cached", "failed")
    sums = db_rows(path, f"SELECT {', '.join(f'COALESCE(SUM({c}), 0)' for c in cols)} FROM traffic")
    return dict(zip(cols, sums[0], strict=True))


def settled_traffic(path: Path) -> dict[str, int]:
    """Counters once the start-up probes are written: the baseline a test counts from."""
    deadline = time.monotonic() + PATIENCE
    last = None
    while time.monotonic() < deadline:
        now = traffic(path) if path.exists() else None
        if now and now["queries"] and now == last:
            return now
        last = now
        time.sleep(1.5)  # longer than the recorder's flush interval
    raise AssertionError(f"the server wrote no traffic counters to {path}")


def wait_for(what: str, cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def assert_exact(db: Path, sent: collections.Counter, before: dict, extra_queries: int = 0) -> None:
    """Every answered blocked query is one counted hit, and the counters agree."""
    assert hit_counts(db) == sent
    n = sum(sent.values())
    assert db_rows(db, "SELECT SUM(count) FROM hits")[0][0] == n
    after = traffic(db)
    assert after["blocked"] - before["blocked"] == n
    assert after["queries"] - before["queries"] == n + extra_queries
    assert after["failed"] == before["failed"]


def stop(server) -> str:
    assert server.stop() == 0
    return server.stderr_text()


# -- exact counts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_every_blocked_query_is_one_hit_with_its_fields(sinkhole, workers):
    server = sinkhole({"workers": workers})
    db = Path(server.config["database"])
    before = settled_traffic(db)
    t0 = int(time.time())
    jobs = blocked_jobs(30)  # 4 clients x 5 names x 5 types x 30 = 3000
    forwarded = [(c, f"host-{i:03d}.example.test", "A") for c in CLIENTS for i in range(50)]
    answered, failures = ask_many(server.address, jobs)
    ok_fwd, fwd_failures = ask_many(
        server.address, forwarded, check=lambda n, t, m: None if m.answer else "no answer"
    )
    t1 = int(time.time())
    assert failures == [] and fwd_failures == []
    assert sum(answered.values()) == len(jobs) == 3000
    stop(server)

    assert_exact(db, answered, before, extra_queries=len(forwarded))
    after = traffic(db)
    fwd = after["forwarded"] + after["cached"] - before["forwarded"] - before["cached"]
    assert fwd == len(forwarded)
    # Only blocked attempts are stored per query.
    assert db_rows(db, "SELECT COUNT(*) FROM hits WHERE qname LIKE '%example.test'") == [(0,)]
    rows = db_rows(
        db, "SELECT ts, client, client_group, qname, qtype, service, rule, action FROM hits"
    )
    expected = {n.lower(): v for n, v in BLOCKED.items()}
    for ts, client, group, qname, qtype, service, rule, action in rows:
        assert t0 <= ts <= t1
        assert client in CLIENTS and group is None
        assert (service, rule) == expected[qname]
        assert qtype in TYPES and action == "null"


def test_hits_command_shows_recent_attempts(sinkhole):
    server = sinkhole()
    db = Path(server.config["database"])
    answered, failures = ask_many(server.address, blocked_jobs(2, CLIENTS[:1]))
    assert failures == []
    stop(server)
    env = {"SINKHOLE_DB": str(db)}
    out = run_cli("hits", "--since", "1h", "--limit", "3", "--json", env=env)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert len(shown) == 3
    assert [r["ts"] for r in shown] == sorted((r["ts"] for r in shown), reverse=True)
    assert {"ts", "client", "qname", "qtype", "service", "rule", "action", "count"} <= set(shown[0])
    text = run_cli("hits", env=env)
    assert text.returncode == 0, text.stderr
    assert "claude.ai" in text.stdout and "127.0.0.2" in text.stdout
    old = run_cli("hits", "--since", "1s", env=env)
    assert old.returncode == 0
    bad = run_cli("hits", "--since", "yesterday", env=env)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


# -- faults ---------------------------------------------------------------------------------------


class Loop:
    """Blocked queries from several clients in a background thread, until stopped."""

    def __init__(self, address: tuple[str, int], distinct: bool = False) -> None:
        self.address = address
        self.distinct = distinct
        self.answered: collections.Counter = collections.Counter()
        self.failures: list[str] = []
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            names = dict(BLOCKED)
            if self.distinct:
                # New names each round: every write needs new pages (a full disk shows).
                names = {f"r{self.rounds}-{i}.chatgpt.com": None for i in range(20)}
            answered, failures = ask_many(self.address, blocked_jobs(1, names=names))
            self.answered.update(answered)
            self.failures.extend(failures)
            self.rounds += 1
            time.sleep(0.05)

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def fault_test(server, fault: Callable[[], None], repair: Callable[[], None], **loop) -> None:
    """Queries before, during and after the fault; none fails, every one is one hit."""
    db = Path(server.config["database"])
    before = settled_traffic(db)
    with Loop(server.address, **loop) as sender:
        wait_for("queries before the fault", lambda: sender.rounds >= 3)
        fault()
        try:
            start = sender.rounds
            wait_for("the recorder to notice", lambda: FAULT_STARTS in server.stderr_text())
            wait_for("queries during the fault", lambda: sender.rounds >= start + 10)
        finally:
            repair()
        wait_for("the recorder to recover", lambda: FAULT_ENDS in server.stderr_text())
        start = sender.rounds
        wait_for("queries after the fault", lambda: sender.rounds >= start + 3)
    stderr = stop(server)
    print(f"{sum(sender.answered.values())} blocked queries across the fault")
    assert sender.failures == []
    assert sum(sender.answered.values()) >= 16 * 100
    assert_exact(db, sender.answered, before)
    # One line when the fault starts, one when it ends: not one per hit or per retry.
    assert stderr.count(FAULT_STARTS) == 1, stderr
    assert stderr.count(FAULT_ENDS) == 1, stderr
    assert "could not be written" not in stderr


def test_write_lock_held_10s_loses_nothing(sinkhole):
    server = sinkhole()
    db = Path(server.config["database"])
    holder = sqlite3.connect(db, isolation_level=None, timeout=10)
    released = threading.Event()

    def lock() -> None:
        holder.execute("BEGIN IMMEDIATE")
        # Held 10 s whatever happens, from here, while the loop keeps querying.
        threading.Timer(10.0, released.set).start()

    def unlock() -> None:
        released.wait()
        holder.execute("COMMIT")
        holder.close()

    fault_test(server, lock, unlock)


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of our own: real full-disk and read-only faults, even for root."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    reason = None
    if os.geteuid() != 0:
        reason = "mounting a tmpfs needs root"
    else:
        r = _mount("-t", "tmpfs", "-o", "size=4m,mode=0700", "sinkhole-test", str(mnt))
        if r.returncode != 0:
            reason = f"cannot mount a tmpfs: {r.stderr.strip()}"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_read_only_database_loses_nothing(tmpfs, sinkhole):
    server = sinkhole({"database": str(tmpfs / "sinkhole.db")})

    def read_only() -> None:
        # The server opens the file only while writing or polling: retry into a gap.
        deadline = time.monotonic() + PATIENCE
        while (r := _mount("-o", "remount,ro", str(tmpfs))).returncode != 0:
            assert time.monotonic() < deadline, r.stderr
            time.sleep(0.01)
        with pytest.raises(OSError) as err:
            (tmpfs / "probe").write_text("x")
        assert err.value.errno == errno.EROFS

    def writable() -> None:
        r = _mount("-o", "remount,rw", str(tmpfs))
        assert r.returncode == 0, r.stderr

    fault_test(server, read_only, writable)


def test_full_disk_loses_no_hit(tmpfs, sinkhole):
    server = sinkhole({"database": str(tmpfs / "sinkhole.db")})
    filler = tmpfs / "filler"

    def fill() -> None:
        fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            for size in (1 << 20, 1 << 16, 1 << 12, 1):
                try:
                    while os.write(fd, b"\0" * size):
                        pass
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)

    fault_test(server, fill, filler.unlink, distinct=True)


# -- live changes ---------------------------------------------------------------------------------


def _address(server, name: str) -> str:
    msg = query(server.address, name, timeout=2.0)
    return msg.answer[0][0].to_text() if msg.answer else dns.rcode.to_text(msg.rcode())


def answered_well(name: str, rdtype: str, msg: dns.message.Message) -> str | None:
    # Our upstream refuses names outside example.test: chatgpt.com while not blocked.
    fine = (dns.rcode.NOERROR, dns.rcode.REFUSED) if name == "chatgpt.com" else (0,)
    return None if msg.rcode() in fine else f"rcode {dns.rcode.to_text(msg.rcode())}"


def _within_2s(server, name: str, want: str) -> float:
    """Seconds from now until `name` answers `want`; fails after 2 s (the contract)."""
    t0 = time.monotonic()
    while (got := _address(server, name)) != want:
        assert time.monotonic() - t0 <= 2.0, f"{name} still answers {got} after 2 s"
        time.sleep(0.02)
    return time.monotonic() - t0


@pytest.mark.parametrize("workers", [1, 2])
def test_cli_changes_reach_the_running_server_within_2s(sinkhole, tmp_path, workers):
    server = sinkhole({"workers": workers})
    cli = ("--config", str(server.config_path), "--db", server.config["database"])
    name, real = "host-005.example.test", "192.0.2.7"
    listed = tmp_path / "office.txt"
    listed.write_text("host-010.example.test\n")
    failures: list[str] = []
    stop_loop = threading.Event()

    def loop() -> None:
        # Many source addresses, so every worker (SO_REUSEPORT) answers some of them.
        names = (name, "host-010.example.test", "chatgpt.com")
        jobs = [(c, n, "A") for c in CLIENTS for n in names]
        while not stop_loop.is_set():
            _, bad = ask_many(server.address, jobs, check=answered_well, timeout=2.0)
            failures.extend(bad)

    sender = threading.Thread(target=loop)
    sender.start()
    try:
        assert _address(server, name) == real
        for args, target, want in [
            (("block", name), name, "0.0.0.0"),
            (("allow", name), name, real),
            (("unallow", name), name, "0.0.0.0"),
            (("unblock", name), name, real),
            (("lists", "disable", "openai-chatgpt"), "chatgpt.com", "REFUSED"),
            (("lists", "enable", "openai-chatgpt"), "chatgpt.com", "0.0.0.0"),
            (("lists", "import", str(listed), "--name", "office"), "host-010.example.test",
             "0.0.0.0"),
            (("lists", "disable", "office"), "host-010.example.test", "192.0.2.12"),
        ]:  # fmt: skip
            out = run_cli(*args, *cli)
            assert out.returncode == 0, out.stderr
            print(f"{' '.join(args[:2])}: {_within_2s(server, target, want):.2f} s")
    finally:
        stop_loop.set()
        sender.join()
    assert failures == []
    listing = run_cli("lists", "--json", *cli)
    assert listing.returncode == 0, listing.stderr
    stop(server)


def test_database_beats_config_after_first_start(sinkhole, tmp_path):
    db = tmp_path / "shared.db"
    first = sinkhole({"database": str(db), "lists": ["ai-chatbots"]})
    assert _address(first, "claude.ai") == "0.0.0.0"
    out = run_cli("lists", "disable", "anthropic-claude", "--config", str(first.config_path),
                  "--db", str(db))  # fmt: skip
    assert out.returncode == 0, out.stderr
    stop(first)
    # The same config at the next start: the administrator's latest word stands.
    second = sinkhole({"database": str(db), "lists": ["ai-chatbots"]})
    assert _address(second, "claude.ai") == "REFUSED"
    assert _address(second, "chatgpt.com") == "0.0.0.0"
    stop(second)


# -- privacy and retention ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ip", "hashed", "group", "none"])
def test_privacy_modes(sinkhole, tmp_path, mode):
    db = tmp_path / f"{mode}.db"
    config = {
        "database": str(db),
        "privacy": {"clients": mode},
        "clients": {"groups": {"lab": {"networks": ["127.0.0.2/32"]}}},
    }
    sent: collections.Counter = collections.Counter()
    # Two runs on one database: a hashed pseudonym must survive the restart.
    for _ in range(2):
        server = sinkhole(config)
        answered, failures = ask_many(
            server.address, [(c, "chatgpt.com", "A") for c in CLIENTS[:2] for _ in range(5)]
        )
        assert failures == []
        sent.update(answered)
        stop(server)
    got = dict(
        ((c, g), n)
        for c, g, n in db_rows(
            db, "SELECT client, client_group, SUM(count) FROM hits GROUP BY 1, 2"
        )
    )
    assert sum(got.values()) == sum(sent.values()) == 20
    if mode == "ip":
        assert got == {("127.0.0.2", "lab"): 10, ("127.0.0.3", None): 10}
    elif mode == "hashed":
        assert sorted(got.values()) == [10, 10]
        pseudonyms = {c for c, _ in got}
        assert len(pseudonyms) == 2 and {g for _, g in got} == {"lab", None}
        for ip in CLIENTS[:2]:
            bare = hashlib.sha256(ip.encode()).hexdigest()
            assert all(ip not in p and p.removeprefix("h:") not in bare for p in pseudonyms)
        assert len(db_rows(db, "SELECT value FROM settings WHERE key = 'client_secret'")) == 1
    elif mode == "group":
        assert got == {(None, "lab"): 10, (None, None): 10}
    else:
        assert got == {(None, None): 20}
    if mode != "ip":
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert b"127.0.0.3" not in db.read_bytes()


def _old_hits(db: Path, days_ago: list[int]) -> None:
    now = int(time.time())
    with Store(db) as store:
        store.conn.executemany(
            "INSERT INTO hits (ts, client, qname, qtype, service, category, rule, action) "
            "VALUES (?, '192.0.2.1', 'chatgpt.com', 'A', 'openai-chatgpt', 'ai-chatbots', "
            "'chatgpt.com', 'null')",
            [(now - d * 86_400,) for d in days_ago],
        )


def _ages(db: Path) -> list[int]:
    now = time.time()
    return sorted(round((now - ts) / 86_400) for (ts,) in db_rows(db, "SELECT ts FROM hits"))


def test_server_purges_hits_older_than_retention_at_start(sinkhole, tmp_path):
    db = tmp_path / "retention.db"
    _old_hits(db, [400, 31, 29, 2])
    server = sinkhole({"database": str(db), "privacy": {"retention_days": 30}})
    wait_for("the start-up purge", lambda: _ages(db) == [2, 29])
    stop(server)
    assert "purged 2 hits older than 30 days" in server.stderr_text()


def test_purge_command(tmp_path):
    db = tmp_path / "purge.db"
    config = tmp_path / "sinkhole.yaml"
    config.write_text(f"database: {db}\nprivacy: {{retention_days: 30}}\n")
    _old_hits(db, [400, 31, 29, 10, 2, 0])
    env = {"SINKHOLE_DB": str(db)}
    out = run_cli("purge", "--config", str(config), env=env)
    assert out.returncode == 0, out.stderr
    assert "deleted 2 hits" in out.stdout
    assert _ages(db) == [0, 2, 10, 29]
    out = run_cli("purge", "--older-than", "7d", "--config", str(config), env=env)
    assert out.returncode == 0 and "deleted 2 hits" in out.stdout
    assert _ages(db) == [0, 2]
    bad = run_cli("purge", "--older-than", "soon", env=env)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
