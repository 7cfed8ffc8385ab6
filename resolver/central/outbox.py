"""The local side of the central store: the SQLite file as the site's durable outbox.

Two small tables say what PostgreSQL has not confirmed yet, kept by triggers in the
transaction that writes the rows, whoever writes them (the recorder, an import, tests):

- `central_hits_outbox (hit_id)`: the hits not shipped yet; a row goes when the batch
  that carried its hit is committed in PostgreSQL.
- `central_traffic_outbox (minute, rev)`: the minutes whose counters changed since they
  were last shipped; `rev` grows at each change, so a change made while a batch was on
  its way keeps the minute in the outbox.

The tables and triggers are the SQLite migration m006 (resolver/store/migrations.py); they
act only while `settings` holds `central_site` (the shipper writes it), so a database
that never used the central store keeps an empty outbox. Retention never
deletes a hit of the outbox (`purge_floor`) unless `outbox_cap_rows` is passed; a hit
deleted while waiting is counted in `settings.central_dropped` by a trigger.
"""

from __future__ import annotations

import sqlite3

from resolver.errors import StoreError
from resolver.store.recorder import SqliteHitSink

SITE_KEY = "central_site"
#: Waiting hits read to find the oldest (outbox.state), each second of the shipper.
OLDEST_SCAN = 10_000
DROPPED_KEY = "central_dropped"


def install(conn: sqlite3.Connection, site: str) -> bool:
    """Turn the outbox on for SITE (idempotent); True when it was off.

    Turning it on queues every hit and traffic minute already there: a site that joins
    the central store sends its history (`sinkhole central push` does the same).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT value FROM settings WHERE key = ?", (SITE_KEY,)).fetchone()
        new = row is None
        if new or row[0] != site:
            conn.execute(
                "INSERT INTO settings VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                "SET value = excluded.value",
                (SITE_KEY, site),
            )
            conn.execute("INSERT OR IGNORE INTO central_hits_outbox SELECT id FROM hits")
            conn.execute(
                "INSERT OR IGNORE INTO central_traffic_outbox SELECT minute, 1 FROM traffic"
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return new


def installed(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'central_hits_outbox'"
    ).fetchone()
    return row is not None


def state(conn: sqlite3.Connection) -> dict:
    """backlog (hits and traffic minutes waiting), oldest waiting hit, hits dropped."""
    if not installed(conn):
        return {"backlog": 0, "backlog_traffic": 0, "oldest_unshipped": None, "dropped": 0}
    (backlog,) = conn.execute("SELECT COUNT(*) FROM central_hits_outbox").fetchone()
    # Among the first OLDEST_SCAN ids waiting: a batch's hits come in any order, later
    # batches hold later hits (but for one written late); a bounded read, not a scan.
    (oldest,) = conn.execute(
        "SELECT MIN(h.ts) FROM (SELECT hit_id FROM central_hits_outbox ORDER BY hit_id "
        "LIMIT ?) o JOIN hits h ON h.id = o.hit_id",
        (OLDEST_SCAN,),
    ).fetchone()
    (traffic,) = conn.execute("SELECT COUNT(*) FROM central_traffic_outbox").fetchone()
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (DROPPED_KEY,)).fetchone()
    return {
        "backlog": backlog,
        "backlog_traffic": traffic,
        "oldest_unshipped": oldest,
        "dropped": int(row[0]) if row else 0,
    }


class OutboxSink(SqliteHitSink):
    """The recorder's SQLite sink on a site of the central store: retention keeps the
    hits not shipped yet, unless more than `cap` wait (then the oldest go, counted)."""

    def __init__(self, path: str, cap: int) -> None:
        super().__init__(path)
        self.cap = cap

    def purge(self, hits_before: int, traffic_before: int) -> int:
        conn = self._open()
        try:
            floor = purge_floor(conn, self.cap)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot purge: {exc}", where=self.path) from None
        finally:
            conn.close()
        return super().purge(
            hits_before if floor is None else min(hits_before, floor), traffic_before
        )


def purge_floor(conn: sqlite3.Connection, cap: int) -> int | None:
    """The second before which retention may delete hits: the oldest unshipped hit's,
    or, when more than `cap` hits wait, the one that keeps the newest `cap` of them."""
    if not installed(conn):
        return None
    (waiting,) = conn.execute("SELECT COUNT(*) FROM central_hits_outbox").fetchone()
    if waiting == 0:
        return None
    over = waiting - cap
    row = conn.execute(
        "SELECT h.ts FROM central_hits_outbox o JOIN hits h ON h.id = o.hit_id "
        "ORDER BY h.ts LIMIT 1 OFFSET ?",
        (max(over, 0),),
    ).fetchone()
    return None if row is None else row[0]
