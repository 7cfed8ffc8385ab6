"""SQLite (sqlite-utils): schema and migrations, policy state, audit trail, the hit recorder."""

from __future__ import annotations

import collections
import datetime as dt
import getpass
import hashlib
import hmac
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from resolver.errors import StoreError
from resolver.policy import ImportedList, PolicyState

log = logging.getLogger("sinkhole.store")

BUSY_TIMEOUT = 5.0
#: The recorder writes at least this often (seconds), or sooner when this many hits wait.
FLUSH_INTERVAL = 1.0
HIT_BATCH_ROWS = 500
#: Distinct hits held while the database is unavailable; past it, new hits are
#: coalesced per minute instead of per second, so totals stay exact.
HIT_BUFFER_ROWS = 100_000
PURGE_BATCH_ROWS = 5_000
PURGE_EVERY = 86_400
#: How long the traffic counters are kept: they hold no personal data.
TRAFFIC_RETENTION_DAYS = 800

migrations = Migrations("sinkhole")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE hits (
            id INTEGER PRIMARY KEY,
            ts INTEGER NOT NULL,
            client TEXT,
            client_group TEXT,
            qname TEXT NOT NULL,
            qtype TEXT NOT NULL,
            service TEXT,
            category TEXT,
            rule TEXT NOT NULL,
            action TEXT NOT NULL,
            count INTEGER NOT NULL DEFAULT 1
        );
        CREATE INDEX hits_ts ON hits(ts);
        CREATE INDEX hits_service_ts ON hits(service, ts);
        CREATE TABLE traffic (
            minute INTEGER PRIMARY KEY,
            queries INTEGER NOT NULL DEFAULT 0,
            blocked INTEGER NOT NULL DEFAULT 0,
            forwarded INTEGER NOT NULL DEFAULT 0,
            cached INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            refused INTEGER NOT NULL DEFAULT 0,
            recorder_lag INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT);
        CREATE TABLE lists (
            name TEXT PRIMARY KEY,
            kind TEXT NOT NULL,          -- service | api | imported
            enabled INTEGER NOT NULL,
            category TEXT,
            source TEXT,
            format TEXT,
            domains INTEGER NOT NULL DEFAULT 0,
            allows INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            updated TEXT
        );
        CREATE TABLE list_domains (
            list TEXT NOT NULL REFERENCES lists(name) ON DELETE CASCADE,
            domain TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'block'
        );
        CREATE INDEX list_domains_list ON list_domains(list);
        CREATE TABLE rules (
            id INTEGER PRIMARY KEY,
            pattern TEXT NOT NULL,
            action TEXT NOT NULL,        -- block | allow
            comment TEXT,
            created TEXT NOT NULL,
            user TEXT,
            UNIQUE (pattern, action)
        );
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            user TEXT,
            command TEXT NOT NULL,
            comment TEXT,
            detail TEXT
        );
        """
    )


SCHEMA_VERSION = 1


def utcnow_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _create_private(path: Path) -> None:
    """Create the file 0600 before SQLite does: it holds who tried what."""
    if str(path) == ":memory:" or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


def connect(path: str | os.PathLike, timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """A connection with WAL and a busy timeout; raises StoreError with the path."""
    p = Path(path)
    try:
        _create_private(p)
        conn = sqlite3.connect(str(p), timeout=timeout, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"{path}: cannot open database: {exc}") from None


class Store:
    """The database: policy state the CLI edits and the server reads, hits, traffic, audit."""

    def __init__(self, path: str | os.PathLike, timeout: float = BUSY_TIMEOUT) -> None:
        self.path = str(path)
        self.conn = connect(path, timeout)
        self.db = sqlite_utils.Database(self.conn)
        try:
            migrations.apply(self.db)
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise StoreError(f"{self.path}: cannot prepare database: {exc}") from None
        try:
            self.conn.execute(
                "INSERT OR IGNORE INTO settings VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
        except sqlite3.Error:
            pass  # read-only: the schema is already there

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- settings ---------------------------------------------------------------

    def setting(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_setting(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, value))

    def secret(self) -> bytes:
        """The HMAC key for hashed client pseudonyms, created once."""
        value = self.setting("client_secret")
        if value is None:
            self.conn.execute(
                "INSERT OR IGNORE INTO settings VALUES ('client_secret', ?)",
                (secrets.token_hex(32),),
            )
            value = self.setting("client_secret")
        return bytes.fromhex(value)

    def policy_version(self) -> int:
        return int(self.setting("policy_version", "0") or 0)

    def _bump(self, user: str | None, command: str, comment: str | None, detail: str) -> None:
        self.conn.execute(
            "INSERT INTO settings VALUES ('policy_version', '1') ON CONFLICT(key) "
            "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )
        self.conn.execute(
            "INSERT INTO audit (ts, user, command, comment, detail) VALUES (?, ?, ?, ?, ?)",
            (utcnow_text(), user or os_user(), command, comment, detail),
        )

    def _write(self, fn: Callable[[], Any]) -> Any:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn()
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot write: {exc}") from None

    # -- policy state -------------------------------------------------------------

    def seed(self, catalog, enabled_names: Iterable[str]) -> None:
        """Give every catalog service a row; the config's `lists` seed which are enabled.

        Rows that exist are the administrator's latest word and stay as they are.
        """
        wanted: set[str] = set()
        for name in enabled_names:
            if name in catalog.categories or name in catalog.services:
                wanted.update(catalog.resolve(name))
        existing = {r[0] for r in self.conn.execute("SELECT name FROM lists")}
        rows = []
        now = utcnow_text()
        for sid, svc in catalog.services.items():
            if sid not in existing:
                rows.append((sid, "service", int(sid in wanted), svc.category, now))
            if svc.api and f"{sid}:api" not in existing:
                rows.append((f"{sid}:api", "api", 1, svc.category, now))
        if not rows:
            return

        def insert() -> None:
            self.conn.executemany(
                "INSERT OR IGNORE INTO lists (name, kind, enabled, category, updated) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )

        try:
            self._write(insert)
        except StoreError as exc:
            log.warning("%s", exc)

    def policy_state(self) -> PolicyState:
        state = PolicyState(version=self.policy_version())
        lists = []
        for name, kind, enabled in self.conn.execute("SELECT name, kind, enabled FROM lists"):
            if kind == "service" and enabled:
                state.enabled_services.add(name)
            elif kind == "api" and not enabled:
                state.disabled_api.add(name[: -len(":api")])
            elif kind == "imported":
                lists.append((name, bool(enabled)))
        for name, enabled in lists:
            block = [
                r[0]
                for r in self.conn.execute(
                    "SELECT domain FROM list_domains WHERE list = ? AND kind = 'block'", (name,)
                )
            ]
            allow = [
                r[0]
                for r in self.conn.execute(
                    "SELECT domain FROM list_domains WHERE list = ? AND kind = 'allow'", (name,)
                )
            ]
            state.lists.append(ImportedList(name, enabled, block, allow))
        for pattern, action, comment in self.conn.execute(
            "SELECT pattern, action, comment FROM rules ORDER BY id"
        ):
            (state.block if action == "block" else state.allow).append((pattern, comment))
        return state

    def lists(self) -> list[dict]:
        cur = self.conn.execute(
            "SELECT name, kind, enabled, category, source, format, domains, allows, errors, "
            "updated FROM lists ORDER BY kind, name"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    def set_enabled(
        self, names: list[str], enabled: bool, *, command: str, comment: str | None = None
    ) -> list[str]:
        """Enable or disable catalog services, API parts (`id:api`) or imported lists."""

        def change() -> list[str]:
            changed = []
            for name in names:
                cur = self.conn.execute(
                    "UPDATE lists SET enabled = ?, updated = ? WHERE name = ?",
                    (int(enabled), utcnow_text(), name),
                )
                if cur.rowcount == 0:
                    raise StoreError(f"no list or service named {name!r}")
                changed.append(name)
            self._bump(None, command, comment, " ".join(names))
            return changed

        return self._write(change)

    def add_rules(
        self, patterns: list[str], action: str, *, command: str, comment: str | None = None
    ) -> None:
        def change() -> None:
            for p in patterns:
                self.conn.execute(
                    "INSERT INTO rules (pattern, action, comment, created, user) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(pattern, action) "
                    "DO UPDATE SET comment = excluded.comment",
                    (p, action, comment, utcnow_text(), os_user()),
                )
            self._bump(None, command, comment, " ".join(patterns))

        self._write(change)

    def remove_rules(
        self, patterns: list[str], action: str, *, command: str, comment: str | None = None
    ) -> list[str]:
        """Remove rules; returns the patterns that were not there."""

        def change() -> list[str]:
            missing = []
            for p in patterns:
                cur = self.conn.execute(
                    "DELETE FROM rules WHERE pattern = ? AND action = ?", (p, action)
                )
                if cur.rowcount == 0:
                    missing.append(p)
            if len(missing) < len(patterns):
                self._bump(None, command, comment, " ".join(patterns))
            return missing

        return self._write(change)

    def rules(self) -> list[dict]:
        cur = self.conn.execute(
            "SELECT pattern, action, comment, created, user FROM rules ORDER BY id"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    def import_list(
        self,
        name: str,
        domains: Iterable[str],
        allow: Iterable[str],
        *,
        source: str,
        fmt: str,
        errors: int,
        command: str,
        comment: str | None = None,
    ) -> None:
        """Create or atomically replace an imported list (one transaction)."""

        def change() -> None:
            row = self.conn.execute("SELECT kind, enabled FROM lists WHERE name = ?", (name,))
            existing = row.fetchone()
            if existing and existing[0] != "imported":
                raise StoreError(f"{name!r} is a catalog service; pick another --name")
            enabled = existing[1] if existing else 1
            self.conn.execute("DELETE FROM list_domains WHERE list = ?", (name,))
            self.conn.execute(
                "INSERT OR REPLACE INTO lists (name, kind, enabled, category, source, format, "
                "domains, allows, errors, updated) VALUES (?, 'imported', ?, ?, ?, ?, 0, 0, ?, ?)",
                (name, enabled, f"list:{name}", source, fmt, errors, utcnow_text()),
            )
            n_block = n_allow = 0
            batch: list[tuple[str, str, str]] = []
            for kind, items in (("block", domains), ("allow", allow)):
                for d in items:
                    batch.append((name, d, kind))
                    if kind == "block":
                        n_block += 1
                    else:
                        n_allow += 1
                    if len(batch) >= 10_000:
                        self.conn.executemany("INSERT INTO list_domains VALUES (?, ?, ?)", batch)
                        batch.clear()
            if batch:
                self.conn.executemany("INSERT INTO list_domains VALUES (?, ?, ?)", batch)
            self.conn.execute(
                "UPDATE lists SET domains = ?, allows = ? WHERE name = ?", (n_block, n_allow, name)
            )
            self._bump(None, command, comment, f"{name} from {source}: {n_block} names")

        self._write(change)

    def remove_list(self, name: str, *, command: str, comment: str | None = None) -> None:
        def change() -> None:
            row = self.conn.execute("SELECT kind FROM lists WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise StoreError(f"no imported list named {name!r}")
            if row[0] != "imported":
                raise StoreError(f"{name!r} is a catalog service: use `lists disable {name}`")
            self.conn.execute("DELETE FROM list_domains WHERE list = ?", (name,))
            self.conn.execute("DELETE FROM lists WHERE name = ?", (name,))
            self._bump(None, command, comment, name)

        self._write(change)

    def history(self, limit: int = 50) -> list[dict]:
        cur = self.conn.execute(
            "SELECT ts, user, command, comment, detail FROM audit ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    # -- hits -----------------------------------------------------------------------

    def recent_hits(self, since: int, limit: int) -> list[dict]:
        cur = self.conn.execute(
            "SELECT ts, client, client_group, qname, qtype, service, category, rule, action, "
            "count FROM hits WHERE ts >= ? ORDER BY ts DESC, id DESC LIMIT ?",
            (since, limit),
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    def purge(self, before: int) -> int:
        """Delete hits older than `before` (unix seconds) in small batches; rows deleted."""
        return purge_hits(self.conn, before)


def purge_hits(conn: sqlite3.Connection, before: int) -> int:
    total = 0
    while True:
        # Small batches keep each write transaction short, so DNS never waits on it.
        cur = conn.execute(
            "DELETE FROM hits WHERE id IN (SELECT id FROM hits WHERE ts < ? LIMIT ?)",
            (before, PURGE_BATCH_ROWS),
        )
        total += cur.rowcount
        if cur.rowcount < PURGE_BATCH_ROWS:
            return total


class Pseudonymizer:
    """Turns a client address into what the privacy mode allows us to store."""

    def __init__(self, mode: str, secret: bytes, group_of: Callable[[str], str | None]) -> None:
        self.mode = mode
        self.secret = secret
        self.group_of = group_of
        self._memo: dict[str, tuple[str | None, str | None]] = {}

    def __call__(self, client: str) -> tuple[str | None, str | None]:
        """(client column, client_group column)."""
        out = self._memo.get(client)
        if out is None:
            group = self.group_of(client)
            if self.mode == "ip":
                out = (client, group)
            elif self.mode == "hashed":
                # Keyed: a bare hash of an IPv4 address is reversed by hashing all 2^32.
                digest = hmac.new(self.secret, client.encode(), hashlib.sha256).hexdigest()
                out = ("h:" + digest[:16], group)
            elif self.mode == "group":
                out = (None, group)
            else:
                out = (None, None)
            if len(self._memo) > 65_536:
                self._memo.clear()
            self._memo[client] = out
        return out


# Indexes of the traffic counters the server increments.
Q_QUERIES, Q_BLOCKED, Q_FORWARDED, Q_CACHED, Q_FAILED, Q_REFUSED = range(6)


class Recorder:
    """Writes hits and per-minute traffic off the hot path; never loses a hit.

    The query path appends to a deque (thread-safe, no lock, no SQL); a thread
    writes batches. While the database is locked, read-only or full, hits wait
    in `buffer`, coalesced by (second, client, name, type, rule): the sum of
    `count` stays exact. Past HIT_BUFFER_ROWS distinct rows they are coalesced
    per minute instead.
    """

    def __init__(
        self,
        path: str,
        *,
        privacy: str = "ip",
        retention_days: int = 90,
        group_of: Callable[[str], str | None] = lambda c: None,
        secret: bytes | None = None,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.path = path
        self.privacy = privacy
        self.retention_days = retention_days
        self.group_of = group_of
        self.flush_interval = flush_interval
        self.queue: collections.deque = collections.deque()
        self.buffer: dict[tuple, int] = {}
        self.counters = [0] * 6  # incremented by the event loop thread only
        self._written_counters = [0] * 6
        self._pending_traffic: dict[int, list[int]] = {}
        self._secret = secret
        self._pseudo: Pseudonymizer | None = None
        self._conn: sqlite3.Connection | None = None
        self._stop = threading.Event()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_purge = 0.0
        self.fault: str | None = None
        self.written = 0
        self.on_fault: Callable[[str | None], None] | None = None
        #: queries, blocked, forwarded, cached, failed, refused: running totals from the server.
        self.traffic: Callable[[], list[int]] | None = None

    # Hot path: called by the event loop per blocked query.
    def hit(self, client: str, qname: str, qtype: str, rule, pattern: str, action: str) -> None:
        self.queue.append((int(time.time()), client, qname, qtype, rule, pattern, action))
        if len(self.queue) >= HIT_BATCH_ROWS:
            self._wakeup.set()

    @property
    def backlog(self) -> int:
        return len(self.queue) + sum(self.buffer.values())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sinkhole-recorder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 4.0) -> bool:
        """Flush everything and stop; True when nothing is left unwritten."""
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self.flush()
            self._reset()
        left = self.backlog
        if left:
            log.error("%d hits could not be written to %s before exit", left, self.path)
        return left == 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wakeup.wait(self.flush_interval)
            self._wakeup.clear()
            self.flush()
        # Final flush: keep trying briefly so a short fault does not lose hits at exit.
        deadline = time.monotonic() + 3.0
        while True:
            self.flush()
            if not self.backlog or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self._reset()

    def _drain(self) -> None:
        q = self.queue
        buf = self.buffer
        pseudo = self._pseudo
        coarse = len(buf) >= HIT_BUFFER_ROWS
        while q:
            ts, client, qname, qtype, rule, pattern, action = q.popleft()
            if pseudo is not None:
                c, g = pseudo(client)
            else:
                c, g = client, self.group_of(client)
            if coarse or len(buf) >= HIT_BUFFER_ROWS:
                coarse = True
                ts -= ts % 60
            key = (ts, c, g, qname, qtype, rule.service, rule.category, pattern, action)
            buf[key] = buf.get(key, 0) + 1

    def _traffic_delta(self) -> None:
        now = list(self.traffic()) if self.traffic is not None else self.counters[:]
        delta = [a - b for a, b in zip(now, self._written_counters, strict=True)]
        self._written_counters = now
        minute = int(time.time()) // 60 * 60
        row = self._pending_traffic.setdefault(minute, [0] * 6)
        for i, d in enumerate(delta):
            row[i] += d

    def flush(self) -> None:
        """Move queued hits to the buffer and try to write buffer and traffic."""
        self._traffic_delta()
        if self._pseudo is None and self._open():
            pass
        self._drain()
        if self._conn is None and not self._open():
            return
        try:
            self._write()
        except sqlite3.Error as exc:
            self._set_fault(f"cannot write hits to {self.path}: {exc}")
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc):
                self._reset()
            return
        self._set_fault(None)
        if time.time() - self._last_purge > PURGE_EVERY:
            self._purge()

    def _open(self) -> bool:
        try:
            if self._conn is None:
                self._conn = connect(self.path, timeout=0.5)
                store_conn = self._conn
                db = sqlite_utils.Database(store_conn)
                migrations.apply(db)
            if self._pseudo is None:
                secret = self._secret
                if secret is None and self.privacy == "hashed":
                    st = self._conn.execute(
                        "SELECT value FROM settings WHERE key = 'client_secret'"
                    ).fetchone()
                    if st is None:
                        self._conn.execute(
                            "INSERT OR IGNORE INTO settings VALUES ('client_secret', ?)",
                            (secrets.token_hex(32),),
                        )
                        st = self._conn.execute(
                            "SELECT value FROM settings WHERE key = 'client_secret'"
                        ).fetchone()
                    secret = bytes.fromhex(st[0])
                self._pseudo = Pseudonymizer(self.privacy, secret or b"", self.group_of)
            return True
        except (StoreError, sqlite3.Error, OSError) as exc:
            self._set_fault(f"cannot open {self.path}: {exc}")
            self._reset()
            return False

    def _reset(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._conn = None

    def _write(self) -> None:
        conn = self._conn
        rows = [(*k, n) for k, n in self.buffer.items()]
        lag = len(self.queue)
        conn.execute("BEGIN IMMEDIATE")
        if rows:
            conn.executemany(
                "INSERT INTO hits (ts, client, client_group, qname, qtype, service, category, "
                "rule, action, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        for minute, c in self._pending_traffic.items():
            conn.execute(
                "INSERT INTO traffic (minute, queries, blocked, forwarded, cached, failed, "
                "refused, recorder_lag) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(minute) DO UPDATE SET queries = queries + excluded.queries, "
                "blocked = blocked + excluded.blocked, forwarded = forwarded + excluded.forwarded,"
                " cached = cached + excluded.cached, failed = failed + excluded.failed, "
                "refused = refused + excluded.refused, "
                "recorder_lag = max(recorder_lag, excluded.recorder_lag)",
                (minute, *c, lag),
            )
        conn.execute("COMMIT")
        self.written += sum(n for *_k, n in rows)
        self.buffer.clear()
        self._pending_traffic.clear()

    def _purge(self) -> None:
        self._last_purge = time.time()
        try:
            n = purge_hits(self._conn, int(time.time()) - self.retention_days * 86_400)
            self._conn.execute(
                "DELETE FROM traffic WHERE minute < ?",
                (int(time.time()) - TRAFFIC_RETENTION_DAYS * 86_400,),
            )
            if n:
                log.info("purged %d hits older than %d days", n, self.retention_days)
        except sqlite3.Error as exc:
            log.warning("retention purge failed: %s", exc)

    def _set_fault(self, fault: str | None) -> None:
        if fault == self.fault:
            return
        if fault is None:
            log.warning("database %s is writable again; buffered hits written", self.path)
        elif self.fault is None:
            log.error("%s; hits are kept in memory until it recovers", fault)
        self.fault = fault
        if self.on_fault is not None:
            self.on_fault(fault)
