"""Store, Recorder and Pseudonymizer on real SQLite files: schema, faults, privacy, retention."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest
import sqlite_utils

from resolver.errors import StoreError
from resolver.policy import Rule, Verdict
from resolver.store import Recorder, Store
from resolver.store.db import connect
from resolver.store.migrations import MIGRATIONS, Migration
from resolver.store.pseudonyms import Pseudonymizer
from resolver.store.rollups import ROLLUP_BY_BATCH, write_hits
from resolver.store.schema import SCHEMA_VERSION, migrate, pending, schema_version
from tests.test_report import assert_rollups_exact

CHATGPT = Rule("ai-chatbots", "openai-chatgpt", "ChatGPT (OpenAI)")
CLAUDE = Rule("ai-chatbots", "anthropic-claude", "Claude (Anthropic)")
CUSTOM = Rule("custom", source="rule")


@functools.cache
def verdict(name: str, qtype: str) -> Verdict:
    """One per question, as the policy keeps them."""
    rule = CLAUDE if name.endswith("claude.ai") else CHATGPT
    return Verdict(b"", rule, name.removeprefix("www."), "null", name, qtype)


def hit(rec: Recorder, client: str, name: str = "chatgpt.com", qtype: str = "A") -> None:
    rec.hit(client, verdict(name, qtype))


def rows(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def total(path: Path) -> int:
    return rows(path, "SELECT COALESCE(SUM(count), 0) FROM hits")[0][0]


class Lock:
    """Another connection holding the write lock, as a second writer would."""

    def __init__(self, path: Path) -> None:
        # Released from a timer thread in one test.
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def __enter__(self) -> Lock:
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("COMMIT")
        self.conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "sinkhole.db"
    Store(path).close()
    return path


# -- schema -----------------------------------------------------------------------------


def test_new_database_is_private_wal_versioned_with_busy_timeout(tmp_path):
    path = tmp_path / "sub" / "sinkhole.db"
    with Store(path) as store:
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert store.setting("schema_version") == str(SCHEMA_VERSION)
        tables = set(store.db.table_names())
    assert {"hits", "traffic", "lists", "list_domains", "rules", "settings", "audit"} <= tables
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_opening_a_current_database_takes_no_write_lock(db):
    # The server opens the store twice a second to poll the policy version; a
    # writer holding the lock (a CLI import, a backup) must not make that fail.
    with Lock(db):
        with Store(db, timeout=0.05) as store:
            assert store.policy_version() == 0


@pytest.mark.parametrize("round_", range(40))
def test_concurrent_first_opens_create_the_schema_once(tmp_path, round_):
    # Workers and the CLI opening a new file together: the switch to WAL is
    # refused without the busy handler, a few percent of rounds, so many rounds.
    path = tmp_path / "race.db"
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def open_it() -> None:
        start.wait()
        try:
            Store(path).close()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert rows(path, "SELECT name FROM _sqlite_migrations") == [
        ("m001_initial",),
        ("m002_hits_5min",),
        ("m003_attempts_and_hourly_rollups",),
        ("m004_web_users",),
        ("m005_list_sources",),
        ("m006_central_outbox",),
        ("m007_group_exemptions",),
    ]
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]


def _one_more() -> tuple[Migration, ...]:
    return (*MIGRATIONS, Migration("m008_hits_note", ("ALTER TABLE hits ADD COLUMN note TEXT",)))


def test_forward_migration_keeps_data_and_raises_the_version(db):
    with Store(db) as store:
        store.add_rules(["example.com"], "block", command="test")
    db_ = sqlite_utils.Database(db)
    try:
        assert migrate(db_, _one_more()) == SCHEMA_VERSION + 1
        assert schema_version(db_) == SCHEMA_VERSION + 1
        assert "note" in db_["hits"].columns_dict
        assert [r["pattern"] for r in db_["rules"].rows] == ["example.com"]
        # Applying again changes nothing.
        assert migrate(db_, _one_more()) == SCHEMA_VERSION + 1
    finally:
        db_.close()
    # This code knows SCHEMA_VERSION migrations: a newer database is refused, not rewritten.
    with pytest.raises(StoreError, match="newer"):
        Store(db)
    assert rows(db, "SELECT value FROM settings WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION + 1),)
    ]


def test_failed_migration_changes_nothing(db):
    broken = Migration(
        "m008_broken", ("CREATE TABLE half_done (x)", "INSERT INTO nowhere VALUES (1)")
    )
    steps = (*MIGRATIONS, broken)
    db_ = sqlite_utils.Database(db)
    try:
        with pytest.raises(sqlite3.OperationalError, match="nowhere"):
            migrate(db_, steps)
        assert not db_["half_done"].exists()
        assert schema_version(db_) == SCHEMA_VERSION
        assert [m.name for m in pending(db_, steps)] == ["m008_broken"]
    finally:
        db_.close()


def test_each_migration_is_its_own_transaction(tmp_path):
    # A new file whose third migration fails keeps the first two, at version 2: the next
    # start (a fixed release) applies from the third on.
    path = tmp_path / "new.db"
    broken = Migration("m003_broken", ("CREATE TABLE half_done (x)", "SELECT * FROM nowhere"))
    conn = connect(path)
    try:
        with pytest.raises(sqlite3.OperationalError):
            migrate(conn, (*MIGRATIONS[:2], broken))
        assert schema_version(conn) == 2
        assert [m.name for m in pending(conn)] == [m.name for m in MIGRATIONS[2:]]
        assert migrate(conn) == SCHEMA_VERSION
    finally:
        conn.close()
    assert rows(path, "SELECT name FROM sqlite_master WHERE name = 'half_done'") == []


SCHEMA_SNAPSHOT = Path(__file__).with_name("schema.sql")


def schema_text(path: Path) -> str:
    """Every table, index and trigger of a database, as sqlite_master keeps its SQL."""
    return "".join(
        f"-- {kind} {name}\n{sql};\n\n"
        for kind, name, sql in rows(
            path, "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
        )
    )


#: sha256 (first 16 hex digits) of each released migration's statements, joined by NUL:
#: the SQL the migration ran when it was released, backfills included (which leave no
#: text in sqlite_master). A released migration never changes; a new one adds a line.
RELEASED = {
    "m001_initial": "2bd96adfd8129fb8",
    "m002_hits_5min": "9990f586bb2578c5",
    "m003_attempts_and_hourly_rollups": "f5f5a9b17c790391",
    "m004_web_users": "d25d7e9884574d78",
    "m005_list_sources": "3a4740777ccf6a92",
    "m006_central_outbox": "9fa1a35d13e4f37e",
    "m007_group_exemptions": "41acdaa984139c5c",
}


def test_released_migrations_never_change():
    got = {
        m.name: hashlib.sha256("\0".join(m.statements).encode()).hexdigest()[:16]
        for m in MIGRATIONS
    }
    assert got == RELEASED
    assert SCHEMA_VERSION == len(MIGRATIONS)


def test_a_new_database_gets_the_released_schema_byte_for_byte(tmp_path):
    # The migrations are frozen: what a new file gets is what every release made, to the
    # byte (the text of a trigger is its code). A new migration adds to tests/schema.sql.
    Store(tmp_path / "new.db").close()
    assert schema_text(tmp_path / "new.db") == SCHEMA_SNAPSHOT.read_text()


def test_not_a_database_is_one_clear_error(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="junk.db"):
        Store(path)


# -- recorder ---------------------------------------------------------------------------------


def test_recorder_writes_every_hit_with_its_fields(db):
    rec = Recorder(str(db), group_of=lambda c: "lab" if c == "10.1.9.7" else None)
    before = int(time.time())
    for _ in range(3):
        hit(rec, "10.1.9.7", "www.chatgpt.com", "AAAA")
    hit(rec, "192.0.2.1", "claude.ai", "HTTPS")
    rec.hit("192.0.2.1", Verdict(b"", CUSTOM, "blocked.example", "nxdomain", "blocked.example", 15))
    assert rec.flush()
    after = int(time.time())
    got = rows(
        db,
        "SELECT client, client_group, qname, qtype, service, category, rule, action, "
        "SUM(count), MIN(ts), MAX(ts) FROM hits GROUP BY client, qname, qtype ORDER BY qname",
    )
    assert [g[:9] for g in got] == [
        ("192.0.2.1", None, "blocked.example", "MX", None, "custom", "blocked.example",
         "nxdomain", 1),
        ("192.0.2.1", None, "claude.ai", "HTTPS", "anthropic-claude", "ai-chatbots",
         "claude.ai", "null", 1),
        ("10.1.9.7", "lab", "www.chatgpt.com", "AAAA", "openai-chatgpt", "ai-chatbots",
         "chatgpt.com", "null", 3),
    ]  # fmt: skip
    assert all(before <= g[9] <= g[10] <= after for g in got)
    assert rec.written == 5 and rec.backlog == 0


def test_identical_hits_in_one_second_share_a_row(db):
    rec = Recorder(str(db))
    for _ in range(1000):
        hit(rec, "192.0.2.1")
    assert rec.flush()
    assert total(db) == 1000
    # One row per second the loop spanned, not one per hit.
    assert rows(db, "SELECT COUNT(*) FROM hits")[0][0] <= 2


def test_locked_database_keeps_hits_and_writes_them_after(db, caplog):
    rec = Recorder(str(db))
    caplog.set_level(logging.INFO, logger="sinkhole.store")
    with Lock(db):
        for i in range(300):
            hit(rec, f"192.0.2.{i % 5}")
        for _ in range(3):
            assert not rec.flush()
            hit(rec, "192.0.2.9")
        assert rec.fault and "locked" in rec.fault
        assert rec.backlog == 303
    assert rec.flush()
    assert rec.fault is None and rec.backlog == 0
    assert total(db) == 303
    messages = [r.getMessage() for r in caplog.records]
    assert sum("kept in memory" in m for m in messages) == 1
    assert sum("writable again" in m for m in messages) == 1


def test_full_buffer_coalesces_per_minute_and_totals_stay_exact(db):
    rec = Recorder(str(db), buffer_rows=10)
    with Lock(db):
        # 500 distinct names: more distinct rows than the buffer holds.
        for i in range(500):
            hit(rec, "192.0.2.1", f"n{i}.chatgpt.com")
            hit(rec, "192.0.2.1", f"n{i}.chatgpt.com")
        assert not rec.flush()
        assert rec.backlog == 1000
    assert rec.flush()
    assert total(db) == 1000
    per_name = rows(db, "SELECT qname, SUM(count) FROM hits GROUP BY qname")
    assert len(per_name) == 500 and {n for _, n in per_name} == {2}
    coarse = rows(db, "SELECT COUNT(*) FROM hits WHERE ts % 60 = 0")[0][0]
    assert coarse >= 490  # all but the first few were kept per minute


class _Clock:
    """A wall clock the test sets, for the recorder (its `clock=`)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_tallies_count_every_client_and_second_of_a_shared_verdict(db):
    # A verdict counts one (second, client) at a time; another client, another second or
    # another recorder (a second server in one process, as in tests) moves its count on.
    clock = _Clock(1_800_000_000 - 1_800_000_000 % 60 + 7)
    a, b = Recorder(str(db), clock=clock.time), Recorder(str(db), clock=clock.time)
    v = verdict("chatgpt.com", "A")
    for rec, client, n in (
        (a, "10.1.9.7", 3), (a, "10.1.9.8", 1), (a, "10.1.9.7", 2), (b, "10.1.9.7", 1),
    ):  # fmt: skip
        for _ in range(n):
            rec.hit(client, v)
    clock.now += 1
    a.hit("10.1.9.7", v)
    # The tally is on the Verdict, which `b` took over (a's count went to a's pending):
    # a's lookup of the second after starts a new tally, which a's writer folds into
    # its window's later lookups all the same (the rows below).
    assert (a.backlog, b.backlog) == (7, 1) and a.batch.held_hits == 0
    assert a.flush() and b.flush()
    assert rows(
        db, "SELECT ts - ?, client, SUM(count) FROM hits GROUP BY 1, 2", (clock.now - 1,)
    ) == [
        (0, "10.1.9.7", 6),
        (0, "10.1.9.8", 1),
        (1, "10.1.9.7", 1),
    ]
    assert (a.backlog, b.backlog) == (0, 0)


def test_repeated_lookups_in_a_minute_make_two_rows(db):
    start = 1_800_000_000 - 1_800_000_000 % 60
    clock = _Clock(start)
    rec = Recorder(str(db), clock=clock.time)
    for second, n in ((5, 1), (6, 2), (17, 1), (35, 1)):
        clock.now = start + second
        for _ in range(n):
            hit(rec, "10.1.9.7")
        if second == 17:
            hit(rec, "10.1.9.8", "claude.ai")
        assert rec.flush(hold=True)
    # The first lookups went out at once; the later ones wait for the minute to end.
    assert rows(db, "SELECT ts, client, count FROM hits ORDER BY id") == [
        (start + 5, "10.1.9.7", 1),
        (start + 17, "10.1.9.8", 1),
    ]
    assert rec.batch.held_hits == 4 and rec.backlog == 0
    clock.now = start + 61  # over, but hits of its last second may not be handed over yet
    assert rec.flush(hold=True)
    assert total(db) == 2
    clock.now = start + 62
    hit(rec, "10.1.9.7")  # the next minute's first lookup: a row of its own
    assert rec.flush(hold=True)
    assert rows(db, "SELECT ts, client, count FROM hits ORDER BY ts, client") == [
        (start + 5, "10.1.9.7", 1),
        (start + 17, "10.1.9.8", 1),
        (start + 35, "10.1.9.7", 4),  # the last lookup's second, with the count of the rest
        (start + 62, "10.1.9.7", 1),
    ]
    assert rec.batch.held_hits == 0 and rec.written == 7
    assert_rollups_exact(db)


def test_a_reload_mid_minute_records_every_lookup_once_under_the_new_mode(db):
    # A reload swaps the policy (new Verdicts: the old ones keep their tallies until
    # handed over) and the privacy mode (from the next write on): the hits counted
    # before it are neither lost nor counted twice, and none is stored with its address.
    start = 1_800_000_000 - 1_800_000_000 % 60
    clock = _Clock(start + 5)
    rec = Recorder(str(db), clock=clock.time, secret=b"k" * 32)
    old = verdict("chatgpt.com", "A")
    new = Verdict(b"", old.rule, old.pattern, old.action, *old.record[:2])
    rec.hit("10.1.9.7", old)
    assert rec.flush(hold=True)
    clock.now = start + 12
    rec.hit("10.1.9.7", old)
    rec.hit("10.1.9.7", old)  # counted on the old Verdict, held to the minute's end
    assert rec.flush(hold=True)
    rec.reconfigure(privacy="hashed", retention_days=90)
    clock.now = start + 20
    rec.hit("10.1.9.7", new)
    assert rec.flush(hold=True)
    clock.now = start + 62
    assert rec.flush(hold=True)
    [(first, *ip), (last, *hashed)] = rows(
        db, "SELECT ts - ?, client, count FROM hits ORDER BY ts", (start,)
    )
    assert first == 5 and ip == ["10.1.9.7", 1]  # written before the reload, under `ip`
    assert last == 20 and hashed[0].startswith("h:") and hashed[1] == 3
    assert rec.written == 4 and rec.backlog == 0 and rec.batch.held_hits == 0
    assert_rollups_exact(db)


def test_flush_and_stop_write_the_held_lookups_too(db):
    clock = _Clock(1_800_000_000 - 1_800_000_000 % 60 + 10)
    rec = Recorder(str(db), clock=clock.time)
    for _ in range(3):
        hit(rec, "10.1.9.7")
        clock.now += 1
    assert rec.flush(hold=True) and total(db) == 1
    hit(rec, "10.1.9.7")
    assert rec.stop()  # no thread: stop() flushes everything itself
    assert total(db) == 4
    assert rows(db, "SELECT COUNT(*) FROM hits") == [(2,)]


def test_held_lookups_stay_bounded(db):
    # Past `buffer_rows` keys in a minute, lookups are written a row per second instead.
    clock = _Clock(1_800_000_000 - 1_800_000_000 % 60)
    rec = Recorder(str(db), buffer_rows=20, clock=clock.time)
    for _ in range(3):
        clock.now += 1
        for i in range(30):
            hit(rec, "192.0.2.1", f"n{i}.chatgpt.com")
        assert rec.flush(hold=True)
    assert sum(len(w) for w in rec.batch.held.values()) == 20
    assert rows(db, "SELECT COUNT(*) FROM hits") == [(20 + 10 * 3,)]
    assert rec.flush() and total(db) == 90


def test_hits_written_late_after_a_fault_keep_the_rollups_exact(db):
    # Two workers, one of which could not write for a while: its hits reach the database
    # after newer ones, and the attempt rule must be applied as if they had come in order.
    boundary = 1_800_000_000 - 1_800_000_000 % 3600  # an hour and a 5-minute boundary
    clock = _Clock(boundary - 50)
    late, live = Recorder(str(db), clock=clock.time), Recorder(str(db), clock=clock.time)
    with Lock(db):
        for _ in range(3):
            hit(late, "10.1.9.7")  # three lookups in one second: one row, count 3
        hit(late, "10.1.9.8", "claude.ai")
        assert not late.flush()
    assert late.fault and late.backlog == 4
    for delay, client in ((60, "10.1.9.7"), (400, "10.1.9.7"), (100, "10.1.9.8")):
        clock.now = boundary - 50 + delay
        hit(live, client, "claude.ai" if client == "10.1.9.8" else "chatgpt.com")
        assert live.flush()
    # 10.1.9.7 at +10 s and +350 s (340 s apart), 10.1.9.8 at +50 s.
    assert rows(db, "SELECT SUM(attempts) FROM hits_hour") == [(3,)]
    assert late.flush()  # 50 s before the boundary, after hits of 10 s and 350 s past it
    assert rows(db, "SELECT ts, count FROM hits WHERE client = '10.1.9.7' ORDER BY id") == [
        (boundary + 10, 1),
        (boundary + 350, 1),
        (boundary - 50, 3),
    ]
    # The late lookups start the attempts their neighbours 60 s and 100 s later had
    # started, and the one 340 s after the first neighbour still starts another.
    assert rows(
        db, "SELECT ident, SUM(blocked), SUM(attempts) FROM hits_hour_client GROUP BY ident"
    ) == [("10.1.9.7", 5, 2), ("10.1.9.8", 2, 1)]
    assert_rollups_exact(db)
    # The retention purge of the recorders keeps them exact too.
    with Store(db) as store:
        assert store.purge(boundary + 300) == 4
    assert_rollups_exact(db)
    assert rows(db, "SELECT SUM(blocked), SUM(attempts) FROM hits_hour") == [(1, 1)]


def test_the_recorders_trigger_switch_never_leaves_its_transaction(db):
    # While the recorder writes a batch, the per-hit trigger is off for its connection:
    # a settings row that no other connection sees, and that a failure takes back.
    row = (1_800_000_000, "10.1.9.7", "ai-lab", "chatgpt.com", "A", "openai-chatgpt",
           "ai-chatbots", "chatgpt.com", "null", 2)  # fmt: skip
    conn = connect(db)
    with pytest.raises(RuntimeError, match="transaction"):
        write_hits(conn, [row])  # in autocommit the row would be committed
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.IntegrityError):
        write_hits(conn, [row, (*row[:3], None, *row[4:])])  # a hit without a name
    switch = "SELECT * FROM settings WHERE key = ?"
    assert conn.execute(switch, (ROLLUP_BY_BATCH,)).fetchall() != []
    assert rows(db, switch, (ROLLUP_BY_BATCH,)) == []  # another connection: not there
    conn.execute("ROLLBACK")
    assert conn.execute(switch, (ROLLUP_BY_BATCH,)).fetchall() == []
    conn.close()
    assert total(db) == 0
    # The next writer's hits, the recorder's or not, are rolled up.
    with sqlite3.connect(db) as other:
        other.execute(f"INSERT INTO hits VALUES (NULL, {', '.join('?' * 10)})", row)
    other.close()
    rec = Recorder(str(db))
    hit(rec, "10.1.9.7")
    assert rec.flush()
    assert rows(db, "SELECT SUM(blocked), SUM(attempts) FROM hits_hour") == [(3, 2)]
    assert_rollups_exact(db)


def test_traffic_counters_are_written_per_minute(db):
    rec = Recorder(str(db))
    rec.counters[:] = [10, 4, 5, 1, 0, 0]
    assert rec.flush()
    rec.counters[:] = [15, 6, 7, 1, 1, 0]
    assert rec.flush()
    got = rows(db, "SELECT SUM(queries), SUM(blocked), SUM(forwarded), SUM(cached), "
               "SUM(failed) FROM traffic")  # fmt: skip
    assert got == [(15, 6, 7, 1, 1)]
    assert all(m % 60 == 0 for (m,) in rows(db, "SELECT minute FROM traffic"))


def test_stop_flushes_every_queued_hit(db):
    rec = Recorder(str(db), flush_interval=60)
    rec.start()
    for i in range(2000):
        hit(rec, f"192.0.2.{i % 7}", qtype=("A", "AAAA")[i % 2])
    assert rec.stop()
    assert total(db) == 2000


def test_stop_keeps_trying_while_the_database_is_locked(db):
    rec = Recorder(str(db), flush_interval=60)
    rec.start()
    for _ in range(50):
        hit(rec, "192.0.2.1")
    lock = Lock(db).__enter__()
    threading.Timer(1.0, lock.__exit__).start()
    assert rec.stop(timeout=3.0)
    assert total(db) == 50


def test_database_unavailable_at_start_loses_nothing(tmp_path):
    # A file where the database's folder should be: unopenable, even for root.
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    path = blocker / "sinkhole.db"
    rec = Recorder(str(path))
    hit(rec, "192.0.2.1")
    assert not rec.flush()
    assert rec.fault and "cannot open" in rec.fault
    blocker.unlink()
    assert rec.flush()
    assert total(path) == 1 and rec.fault is None


# -- privacy ------------------------------------------------------------------------------------


def test_pseudonymizer_modes():
    group_of = {"10.1.9.7": "lab"}.get
    secret = b"k" * 32
    assert Pseudonymizer("ip", secret, group_of)("10.1.9.7") == ("10.1.9.7", "lab")
    assert Pseudonymizer("group", secret, group_of)("10.1.9.7") == (None, "lab")
    assert Pseudonymizer("group", secret, group_of)("192.0.2.1") == (None, None)
    assert Pseudonymizer("none", secret, group_of)("10.1.9.7") == (None, None)
    hashed = Pseudonymizer("hashed", secret, group_of)
    a, group = hashed("10.1.9.7")
    assert group == "lab"
    assert a == Pseudonymizer("hashed", secret, group_of)("10.1.9.7")[0]
    assert a != hashed("10.1.9.8")[0]
    assert a != Pseudonymizer("hashed", b"x" * 32, group_of)("10.1.9.7")[0]
    assert "10.1.9.7" not in a
    assert a.removeprefix("h:") not in hashlib.sha256(b"10.1.9.7").hexdigest()


def test_hashed_pseudonym_is_stable_across_recorders_and_keyed_by_one_secret(db):
    for _ in range(2):
        rec = Recorder(str(db), privacy="hashed")
        hit(rec, "192.0.2.1")
        hit(rec, "192.0.2.2")
        assert rec.flush()
    clients = rows(db, "SELECT client, SUM(count) FROM hits GROUP BY client")
    assert len(clients) == 2 and {n for _, n in clients} == {2}
    assert len(rows(db, "SELECT value FROM settings WHERE key = 'client_secret'")) == 1
    with Store(db) as store:
        secret = store.secret()
    expected = Pseudonymizer("hashed", secret, lambda c: None)("192.0.2.1")[0]
    assert expected in {c for c, _ in clients}


def test_hits_buffered_before_the_secret_is_readable_never_store_the_address(db):
    rec = Recorder(str(db), privacy="hashed")
    with Lock(db):
        hit(rec, "192.0.2.77")
        assert not rec.flush()
    assert rec.flush()
    [(client,)] = rows(db, "SELECT client FROM hits")
    assert client.startswith("h:")
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert b"192.0.2.77" not in db.read_bytes()


@pytest.mark.parametrize("mode", ["group", "none"])
def test_group_and_none_store_no_address(db, mode):
    rec = Recorder(str(db), privacy=mode, group_of={"10.1.9.7": "lab"}.get)
    for client in ("10.1.9.7", "10.1.9.7", "192.0.2.1"):
        hit(rec, client)
    assert rec.flush()
    got = sorted(rows(db, "SELECT client, client_group, SUM(count) FROM hits "
                          "GROUP BY client, client_group"), key=str)  # fmt: skip
    if mode == "group":
        assert got == sorted([(None, "lab", 2), (None, None, 1)], key=str)
    else:
        assert got == [(None, None, 3)]


# -- retention ------------------------------------------------------------------------------------


def _age(db: Path, days_ago: list[float]) -> None:
    now = int(time.time())
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO hits (ts, client, qname, qtype, service, category, rule, action, count) "
            "VALUES (?, '192.0.2.1', 'chatgpt.com', 'A', 'openai-chatgpt', 'ai-chatbots', "
            "'chatgpt.com', 'null', 1)",
            [(now - int(d * 86_400),) for d in days_ago],
        )
    conn.close()


def test_recorder_purges_old_hits_when_it_starts(db):
    _age(db, [400, 31, 29, 1])
    rec = Recorder(str(db), retention_days=30)
    assert rec.flush()  # nothing to write: the start-up purge alone
    assert total(db) == 2


def test_store_purge_deletes_in_batches(db, monkeypatch):
    monkeypatch.setattr("resolver.store.rollups.PURGE_BATCH_ROWS", 7)
    _age(db, [100] * 50 + [1] * 5)
    with Store(db) as store:
        assert store.purge(int(time.time()) - 90 * 86_400) == 50
    assert total(db) == 5


# -- the seam -------------------------------------------------------------------------------------


def test_the_sqlite_store_is_a_policy_store(db):
    # Every method of the protocol, with the parameters it names: a central store is
    # written against PolicyStore, and the SQLite one must keep honouring it.
    import inspect

    from resolver.store import PolicyStore

    with Store(db) as store:
        assert isinstance(store, PolicyStore)
    for name, member in vars(PolicyStore).items():
        if name.startswith("_") or not callable(member):
            continue
        want = list(inspect.signature(member).parameters)
        assert list(inspect.signature(getattr(Store, name)).parameters) == want, name


def test_store_errors_carry_their_parts(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError) as err:
        Store(blocker / "sinkhole.db")
    assert err.value.where == str(blocker / "sinkhole.db")
    assert err.value.reason.startswith("cannot open database: ")
    assert str(err.value) == f"{err.value.where}: {err.value.reason}"
