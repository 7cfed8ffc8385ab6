"""The SQLite file: created private, opened in WAL with a busy timeout, written in one
IMMEDIATE transaction at a time."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from resolver.errors import StoreError

#: Seconds a connection waits for another's write lock before it gives up.
BUSY_TIMEOUT = 5.0

T = TypeVar("T")


def _create_private(path: Path) -> None:
    """Create the file 0600 before SQLite does: it holds who tried what."""
    if str(path) == ":memory:" or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


def _use_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch the file to WAL, waiting for other connections that are doing the same.

    The switch needs an exclusive lock, and SQLite reports SQLITE_BUSY for it
    without calling the busy handler when another connection is opening the same
    new file at that moment (workers and the CLI starting together), so the wait
    is ours: retry within the busy timeout.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if ("locked" not in text and "busy" not in text) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def connect(path: str | os.PathLike, timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """A connection with WAL and a busy timeout; raises StoreError with the path."""
    p = Path(path)
    try:
        _create_private(p)
        conn = sqlite3.connect(str(p), timeout=timeout, isolation_level=None)
        _use_wal(conn, timeout)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open database: {exc}", where=str(path)) from None


def immediate(conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
    """Run `fn` in one BEGIN IMMEDIATE transaction: committed whole or rolled back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn()
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def open_existing(path: str | os.PathLike) -> sqlite3.Connection:
    """A connection to a database that must exist and hold the record (`hits`, `traffic`):
    the report's. It never creates an empty database where the real one is missing.

    Raises:
        StoreError: no such file, or not a sinkhole database.
    """
    p = Path(path)
    if not p.is_file():
        raise StoreError("database not found", where=str(p))
    try:
        conn = sqlite3.connect(f"file:{p.resolve()}?mode=rw", uri=True, timeout=10)
        conn.execute("SELECT 1 FROM hits LIMIT 0")
        conn.execute("SELECT 1 FROM traffic LIMIT 0")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the report tables: {exc}", where=str(p)) from exc
    return conn
