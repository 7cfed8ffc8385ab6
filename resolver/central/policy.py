"""One policy for all sites: lists, rules, group exemptions and the audit trail live in PostgreSQL.

The policy is kept centrally as one row of `policy`: its version and the rows of the
policy tables of a site database (`POLICY_TABLES`). Two sides:

- The CLI (`PolicyStore`): a command that reads or edits the policy gets a Store on a
  temporary SQLite file filled from the central row, which it locks (SELECT ... FOR
  UPDATE) for the whole command; every Store method works as on a site. Each write
  transaction that changes the policy writes the new rows and version back and wakes
  the sites (pg_notify) in one PostgreSQL transaction, committed before the SQLite one:
    an edit is applied whole or not at all. While PostgreSQL is unreachable, reading
  commands read this machine's last copy and an edit fails with one line
  (`OfflinePolicyStore`).
- Each site (`PolicyWatcher`, a thread in the server): LISTEN for the wake-up, and a poll
  as the fallback (a notification sent while the site was away is lost); a new central
  version is copied into the site's SQLite file, which the server reloads from, so a
  site restarted during an outage enforces the last policy it saw.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from resolver.central import CentralError, connect, first_line, psycopg, redact
from resolver.config import CentralConfig
from resolver.errors import SinkholeError
from resolver.store.policy_state import Store

log = logging.getLogger("sinkhole.central")

#: The tables of a site database that make the policy, parents before children.
POLICY_TABLES = ("lists", "list_domains", "rules", "audit", "list_updates", "group_exemptions")
CHANNEL = "sinkhole_policy"
#: The local setting holding the central policy version copied in last.
APPLIED_KEY = "central_policy_version"
#: Seconds between two polls of the central version (the fallback of LISTEN).
POLL_INTERVAL = 0.5
RETRY_MIN, RETRY_MAX = 1.0, 15.0


def dump_tables(conn: sqlite3.Connection) -> dict:
    out = {}
    for table in POLICY_TABLES:
        cur = conn.execute(f"SELECT * FROM {table}")
        out[table] = {
            "columns": [c[0] for c in cur.description],
            "rows": [list(r) for r in cur.fetchall()],
        }
    return out


def load_tables(conn: sqlite3.Connection, tables: dict) -> None:
    """Replace the policy tables' rows, in the caller's write transaction. Columns this
    database lacks are left out, so an older site takes a newer site's policy."""
    for table in reversed(POLICY_TABLES):
        conn.execute(f"DELETE FROM {table}")
    for table in POLICY_TABLES:
        data = tables.get(table)
        if not data:
            continue
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        keep = [i for i, c in enumerate(data["columns"]) if c in have]
        if not keep:
            continue
        cols = ", ".join(data["columns"][i] for i in keep)
        marks = ", ".join("?" * len(keep))
        conn.executemany(
            f"INSERT INTO {table} ({cols}) VALUES ({marks})",
            [[row[i] for i in keep] for row in data["rows"]],
        )


def _set(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO settings VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


# -- the CLI side ------------------------------------------------------------------------


class PolicyStore(Store):
    """A Store on a temporary copy of the central policy, written back on a clean close."""

    def __init__(self, central: CentralConfig) -> None:
        self.central = central
        self._pg = connect(central, autocommit=False)
        self._tmp = tempfile.mkdtemp(prefix="sinkhole-policy-")
        try:
            super().__init__(Path(self._tmp) / "policy.db")
            self.path = f"central store {redact(central.dsn)}"  # for messages
            pg = psycopg()
            try:
                from resolver.central.schema import require_schema

                require_schema(self._pg)
                row = self._pg.execute(
                    "SELECT version, tables FROM policy WHERE id = 1 FOR UPDATE"
                ).fetchone()
            except pg.Error as exc:
                raise CentralError(f"central store: {first_line(exc)}") from None
            self._exists = row is not None
            if row is not None:
                version, tables = row
                self.conn.execute("BEGIN IMMEDIATE")
                load_tables(self.conn, tables)
                _set(self.conn, "policy_version", str(version))
                self.conn.execute("COMMIT")
            self._base = self.policy_version()
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        try:
            self._pg.rollback()
            self._pg.close()
        except Exception:
            pass
        try:
            self.conn.close()
        except Exception:
            pass
        shutil.rmtree(self._tmp, ignore_errors=True)

    def close(self) -> None:
        if not self._pg.closed:
            self._discard()

    def _write(self, fn: Callable[[], object]) -> object:
        """Each write transaction that changes the policy is committed in PostgreSQL
        before it is in the temporary file: a command says "done" only when it is."""
        before = self.policy_version()

        def write_through() -> object:
            result = fn()
            if self.policy_version() != before:
                if not self._exists:
                    # A first edit would replace every site's own policy with defaults.
                    raise CentralError(
                        "central store has no policy yet: run `sinkhole central push` "
                        "first, on the site whose policy to keep; the policy was not changed"
                    )
                self._push()  # raises: the SQLite transaction rolls back too
            return result

        return super()._write(write_through)

    def _push(self) -> None:
        pg = psycopg()
        version = self.policy_version()
        tables = json.dumps(dump_tables(self.conn))
        try:
            self._pg.execute(
                "INSERT INTO policy (id, version, tables, updated, updated_by) "
                "VALUES (1, %s, %s::jsonb, now(), %s) ON CONFLICT (id) DO UPDATE SET "
                "version = excluded.version, tables = excluded.tables, updated = now(), "
                "updated_by = excluded.updated_by",
                (version, tables, self.central.site),
            )
            self._pg.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(version)))
            self._pg.commit()
            # Locked again for the command's next change, if any.
            self._pg.execute("SELECT version FROM policy WHERE id = 1 FOR UPDATE")
        except pg.Error as exc:
            raise CentralError(
                f"central store: the policy was not changed: {first_line(exc)}"
            ) from None


class OfflinePolicyStore(Store):
    """This machine's last copy of the central policy, while the central store is away:
    readable, never edited (an edit would be lost or fork the policy)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path)
        self.reason = reason

    def _refuse(self, *args, **kwargs):
        raise CentralError(f"{self.reason}: the policy was not changed")

    # Every policy edit, refused before it looks at the local copy.
    set_enabled = add_rules = remove_rules = import_list = remove_list = _refuse
    set_group_exempt = _refuse
    _bump = _refuse


def open_policy_store(central: CentralConfig, local_path: str) -> Store:
    """The store a policy command works on: central, or the local copy while it is away."""
    try:
        return PolicyStore(central)
    except CentralError as exc:
        if "unreachable" not in str(exc):
            raise
        return OfflinePolicyStore(local_path, str(exc))


def push_policy(central: CentralConfig, local_path: str) -> tuple[bool, int]:
    """Seed the central policy from a site database unless it has one; (seeded, version)."""
    pg = psycopg()
    with Store(local_path) as local:
        version = max(local.policy_version(), 1)
        tables = json.dumps(dump_tables(local.conn))
    try:
        with connect(central, autocommit=False) as conn:
            conn.execute("LOCK TABLE policy IN SHARE ROW EXCLUSIVE MODE")
            row = conn.execute("SELECT version FROM policy WHERE id = 1").fetchone()
            if row is not None:
                conn.rollback()
                return False, row[0]
            conn.execute(
                "INSERT INTO policy (id, version, tables, updated_by) VALUES (1, %s, %s, %s)",
                (version, tables, central.site),
            )
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(version)))
            conn.commit()
    except pg.Error as exc:
        raise CentralError(f"central store: {first_line(exc)}") from None
    return True, version


# -- the site side -----------------------------------------------------------------------


class PolicyWatcher:
    """Copies each new central policy version into the site's SQLite file."""

    def __init__(
        self, central: CentralConfig, db_path: str, on_change: Callable[[int], None]
    ) -> None:
        self.central = central
        self.db_path = db_path
        self.on_change = on_change
        self.applied: int | None = None
        self.reachable = False
        self.fault: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="central-policy", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        pg = psycopg()
        retry = RETRY_MIN
        while not self._stop.is_set():
            try:
                with connect(self.central) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.reachable = True
                    if self.fault is not None:
                        log.warning("central policy reachable again")
                        self.fault = None
                    retry = RETRY_MIN
                    while not self._stop.is_set():
                        self.check(conn)
                        for _ in conn.notifies(timeout=POLL_INTERVAL, stop_after=1):
                            pass
            except (SinkholeError, pg.Error, sqlite3.Error) as exc:
                self.reachable = False
                if self.fault is None:
                    log.warning(
                        "central policy: %s; enforcing the last policy seen", first_line(exc)
                    )
                self.fault = str(exc)
                self._stop.wait(retry)
                retry = min(retry * 2, RETRY_MAX)
            except Exception:  # never let the thread die
                log.exception("central policy watcher: unexpected error")
                self._stop.wait(retry)

    def check(self, conn) -> bool:
        """Copy the central policy in when its version is not the one applied; whether."""
        row = conn.execute("SELECT version FROM policy WHERE id = 1").fetchone()
        if row is None:
            return False  # no central policy yet: the site keeps its own
        version = row[0]
        if self.applied is None:
            self.applied = self._local_applied()
        if version == self.applied:
            return False
        (tables,) = conn.execute("SELECT tables FROM policy WHERE id = 1").fetchone()
        local = Store(self.db_path)
        try:
            local.conn.execute("BEGIN IMMEDIATE")
            try:
                load_tables(local.conn, tables)
                _set(local.conn, "policy_version", str(version))
                _set(local.conn, APPLIED_KEY, str(version))
                local.conn.execute("COMMIT")
            except BaseException:
                local.conn.execute("ROLLBACK")
                raise
        finally:
            local.close()
        self.applied = version
        log.info("central policy version %s copied in", version)
        self.on_change(version)
        return True

    def _local_applied(self) -> int | None:
        with Store(self.db_path) as local:
            value = local.setting(APPLIED_KEY)
        return int(value) if value is not None else None
