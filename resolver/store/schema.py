"""The migration runner: versioned, one transaction per migration.

Applied migrations are rows of `_sqlite_migrations` (the table sqlite-utils' Migrations
created for the databases of earlier releases, kept as it is); the version is their
number, also kept in `settings` as `schema_version`.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from resolver.errors import StoreError
from resolver.store.migrations import MIGRATIONS, Migration

__all__ = ["MIGRATIONS", "Migration", "SCHEMA_VERSION", "applied", "migrate", "pending"]

if TYPE_CHECKING:
    import sqlite_utils

#: The number of migrations this code knows; kept in settings as `schema_version`.
SCHEMA_VERSION = len(MIGRATIONS)
#: The migration set the rows of `_sqlite_migrations` belong to.
MIGRATION_SET = "sinkhole"
#: As sqlite-utils created it for databases of earlier releases, text included.
MIGRATIONS_TABLE = (
    'CREATE TABLE "_sqlite_migrations" (\n'
    '   "id" INTEGER PRIMARY KEY,\n'
    '   "migration_set" TEXT,\n'
    '   "name" TEXT,\n'
    '   "applied_at" TEXT\n'
    ")",
    'CREATE UNIQUE INDEX "idx__sqlite_migrations_migration_set_name"\n'
    '    ON "_sqlite_migrations" ("migration_set", "name")',
)


def _conn(db: sqlite3.Connection | sqlite_utils.Database) -> sqlite3.Connection:
    return db if isinstance(db, sqlite3.Connection) else db.conn


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def applied(db: sqlite3.Connection | sqlite_utils.Database) -> list[str]:
    """The names of the migrations applied to the database, in the order they were."""
    conn = _conn(db)
    if not _has_table(conn, "_sqlite_migrations"):
        return []
    return [
        name
        for (name,) in conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY rowid",
            (MIGRATION_SET,),
        )
    ]


def pending(
    db: sqlite3.Connection | sqlite_utils.Database, steps: Sequence[Migration] | None = None
) -> list[Migration]:
    """The migrations of `steps` (default: all this code knows) not applied yet."""
    done = set(applied(db))
    return [m for m in _steps(steps) if m.name not in done]


def _steps(steps: Sequence[Migration] | None) -> Sequence[Migration]:
    return MIGRATIONS if steps is None else steps


def schema_version(db: sqlite3.Connection | sqlite_utils.Database) -> int:
    """The schema version a database says it has (0: a new, empty file)."""
    conn = _conn(db)
    if not _has_table(conn, "settings"):
        return 0
    row = conn.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def _check_known(names: list[str], steps: Sequence[Migration]) -> None:
    unknown = set(names) - {m.name for m in steps}
    if unknown:
        raise StoreError(
            f"schema has migrations this sinkhole does not know ({', '.join(sorted(unknown))}):"
            " it was written by a newer version"
        )


def migrate(
    db: sqlite3.Connection | sqlite_utils.Database, steps: Sequence[Migration] | None = None
) -> int:
    """Bring the schema forward through `steps` (default: MIGRATIONS); returns its version.

    Reads only when the schema is current, so opening a database for reading takes no
    write lock. Otherwise each pending migration is one IMMEDIATE transaction with its
    record and the new `schema_version`: two processes starting at once (workers, the
    CLI) take turns instead of both creating tables, and a migration that fails leaves
    the database at the version before it.

    Raises:
        StoreError: the database was written by a newer sinkhole.
    """
    conn = _conn(db)
    steps = _steps(steps)
    known = len(steps)
    current = schema_version(conn)
    if current > known:
        raise StoreError(
            f"schema version {current} is newer than this sinkhole knows ({known}): "
            "it was written by a newer version"
        )
    if current == known and not pending(conn, steps):
        return known
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the lock.
            done = applied(conn)
            _check_known(done, steps)
            todo = [m for m in steps if m.name not in set(done)]
            if not todo:
                conn.execute("COMMIT")
                return len(done)
            if not _has_table(conn, "_sqlite_migrations"):
                for statement in MIGRATIONS_TABLE:
                    conn.execute(statement)
            step = todo[0]
            step.apply(conn)
            conn.execute(
                "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES (?, ?, ?)",
                (MIGRATION_SET, step.name, str(dt.datetime.now(dt.UTC))),
            )
            conn.execute(
                "INSERT INTO settings VALUES ('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(len(done) + 1),),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
