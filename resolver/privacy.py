"""The privacy trail: which mode the hits were recorded with and when, and rewriting stored
hits to a stricter mode (`sinkhole privacy apply`).

Both live in the `audit` table, as rows whose `detail` is a JSON object with a
"privacy" key: "mode" when the server starts recording with another mode (from, to),
"apply" when `sinkhole privacy apply` rewrote stored hits (to which mode, up to which
second, how many). The report reads them back to say which mode held when.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from resolver.config import PRIVACY_MODES
from resolver.errors import SinkholeError, StoreError
from resolver.store.policy_state import Store, os_user, utcnow_text
from resolver.store.pseudonyms import Pseudonymizer, client_secret
from resolver.store.rollups import (
    HOUR_SECONDS,
    ROLLUP_SECONDS,
    add_sums_sql,
    first_lookups_sql,
    judge_attempts,
    rollup_sums_sql,
    take_sums_sql,
)

#: How the `detail` of a privacy row of `audit` begins; no other row's detail does (they
#: are names, patterns and sources).
DETAIL_PREFIX = '{"privacy":'
#: The modes from the one that stores most about a client to the one that stores least.
STRICTNESS = PRIVACY_MODES
#: One transaction of `apply` rewrites the 5-minute buckets that hold about this many
#: hits (whole buckets, so their attempts are rebuilt from their hits): ~0.1 s of write
#: lock, well under the recorder's busy timeout of 0.5 s.
APPLY_BATCH_ROWS = 5_000
#: After each transaction `apply` waits at least this long, and as long as it held the
#: write lock: the recorder always gets its turn.
APPLY_MIN_PAUSE = 0.02


def stricter(a: str, b: str) -> str:
    """The stricter of two privacy modes."""
    return a if STRICTNESS.index(a) >= STRICTNESS.index(b) else b


# -- the trail --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeChange:
    """The server records with `mode` from `ts` on (`previous`: None in the first row)."""

    ts: int
    mode: str
    previous: str | None


@dataclass(frozen=True)
class Rewrite:
    """`sinkhole privacy apply`, started at `ts`, left every hit before `done` in `mode`
    or a stricter one (`done` < `until` when it was interrupted)."""

    ts: int
    mode: str
    until: int
    done: int
    rewritten: int


def _epoch(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp())


def read_trail(conn: sqlite3.Connection) -> tuple[list[ModeChange], list[Rewrite]]:
    """The privacy rows of `audit`, oldest first; a row that cannot be read is left out,
    and a database without `audit` (made by other tools) has no trail."""
    changes: list[ModeChange] = []
    rewrites: list[Rewrite] = []
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'"
    ).fetchone():
        return changes, rewrites
    rows = conn.execute(
        "SELECT ts, detail FROM audit WHERE detail LIKE ? ORDER BY id", (DETAIL_PREFIX + "%",)
    )
    for stamp, detail in rows:
        try:
            d = json.loads(detail)
            ts = _epoch(stamp)
            if d["privacy"] == "mode" and d["to"] in STRICTNESS:
                changes.append(ModeChange(ts, d["to"], d.get("from")))
            elif d["privacy"] == "apply" and d["to"] in STRICTNESS:
                rewrites.append(
                    Rewrite(ts, d["to"], int(d["until"]), int(d["done"]), int(d["rewritten"]))
                )
        except (ValueError, KeyError, TypeError):
            continue  # written by hand or by a newer version: not ours to interpret
    return changes, rewrites


def last_mode(conn: sqlite3.Connection) -> ModeChange | None:
    """The mode the server said last it records with; None before any was recorded."""
    changes, _ = read_trail(conn)
    return changes[-1] if changes else None


def record_mode(
    conn: sqlite3.Connection,
    mode: str,
    *,
    reason: str,
    user: str | None = None,
    at: int | None = None,
) -> bool:
    """Add an audit row when `mode` is not the last mode recorded, in one write
    transaction; True when it added one. The server calls it at start and at every reload
    with the mode it records with from then on (`at`: that moment, default now)."""
    if mode not in STRICTNESS:
        raise SinkholeError(f"unknown privacy mode {mode!r} (one of {', '.join(STRICTNESS)})")
    conn.execute("BEGIN IMMEDIATE")
    try:
        last = last_mode(conn)
        previous = last.mode if last else None
        if previous == mode:
            conn.execute("COMMIT")
            return False
        detail = json.dumps({"privacy": "mode", "from": previous, "to": mode})
        conn.execute(
            "INSERT INTO audit (ts, user, command, comment, detail) VALUES (?, ?, ?, ?, ?)",
            (
                utcnow_text() if at is None else datetime.fromtimestamp(at, UTC).isoformat(),
                user or os_user(),
                f"privacy.clients {previous or '(none recorded)'} -> {mode}",
                f"recorded by the server at {reason}",
                detail,
            ),
        )
        conn.execute("COMMIT")
        return True
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def record_server_mode(db_path: str, mode: str, reason: str) -> bool:
    """`record_mode` on the database file at `db_path` (the server, off its event loop).

    Raises:
        StoreError: the database cannot be opened or written.
    """
    with Store(db_path) as store:
        try:
            return record_mode(store.conn, mode, reason=reason)
        except sqlite3.Error as exc:
            raise StoreError(f"{db_path}: cannot record the privacy mode: {exc}") from None


@dataclass(frozen=True)
class Period:
    """A stretch of time whose stored hits hold `clients` (a mode), recorded with
    `recorded`; `rewritten`: when `sinkhole privacy apply` rewrote them to `clients`
    where they held more (None: never)."""

    start: int
    end: int
    clients: str
    recorded: str
    rewritten: int | None


def periods(
    changes: list[ModeChange], rewrites: list[Rewrite], t0: int, t1: int, default: str
) -> list[Period]:
    """The modes the hits of [t0, t1) are stored with, in time order, adjacent equal
    stretches merged.

    Without any recorded mode (a database older than the trail) the whole period is
    `default`, the config's mode; before the first recorded mode, the first one.
    """

    def recorded(t: int) -> str:
        if not changes:
            return default
        mode = changes[0].mode
        for c in changes:
            if c.ts > t:
                break
            mode = c.mode
        return mode

    cuts = sorted(
        {t0, t1}
        | {c.ts for c in changes if t0 < c.ts < t1}
        | {r.done for r in rewrites if t0 < r.done < t1}
    )
    out: list[Period] = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        rec = recorded(a)
        clients, when = rec, None
        # Oldest first; the last that leaves the hits in their mode says when. It may not
        # have changed them: the mode of hits older than the trail is a guess.
        for r in rewrites:
            if r.done > a and stricter(clients, r.mode) == r.mode:
                clients, when = r.mode, r.ts
        if out and (out[-1].clients, out[-1].recorded, out[-1].rewritten) == (clients, rec, when):
            out[-1] = Period(out[-1].start, b, clients, rec, when)
        else:
            out.append(Period(a, b, clients, rec, when))
    return out


# -- rewriting stored hits ---------------------------------------------------------------------

#: Hits that hold more than each mode allows.
_NEEDS_REWRITE = {
    "ip": "0",
    "hashed": "client IS NOT NULL AND client NOT LIKE 'h:%'",
    "group": "client IS NOT NULL",
    "none": "(client IS NOT NULL OR client_group IS NOT NULL)",
}
#: What each mode leaves of them; `sinkhole_pseudonym` is registered on the connection.
_REWRITE = {
    "hashed": "client = sinkhole_pseudonym(client)",
    "group": "client = NULL",
    "none": "client = NULL, client_group = NULL",
}


@dataclass
class ApplyResult:
    """What `apply` did (or, with dry_run, would do)."""

    mode: str
    until: int
    rewritten: int = 0
    batches: int = 0
    done: int = 0
    complete: bool = False
    #: The write-ahead log was emptied into the database at the end, so the old values
    #: are in neither file; False when another connection kept it busy.
    checkpointed: bool = False


def pending(conn: sqlite3.Connection, mode: str, until: int) -> int:
    """The hits before `until` that hold more than `mode` allows."""
    return conn.execute(
        f"SELECT COUNT(*) FROM hits WHERE ts < ? AND {_NEEDS_REWRITE[mode]}", (until,)
    ).fetchone()[0]


def _rewrite_batch(conn: sqlite3.Connection, mode: str, lo: int, hi: int) -> int:
    """Rewrite the hits of [lo, hi) (5-minute bucket bounds) and bring the rollups along,
    in the caller's write transaction; the number of hits rewritten.

    The rollups end as m003's backfill builds them from the hits: the batch's hits are
    taken out of the hour rollups by their old keys and put back by their new ones, and
    its buckets' attempts are rebuilt, the first against the bucket before as it is
    stored now, and the bucket after the batch is judged again against the rewritten
    hits, so every commit leaves the rollups equal to the hits, even when the run stops
    there. `hits_hour_name` has neither client nor group in its key and stays as it is.
    """
    b0, b1 = lo // ROLLUP_SECONDS, hi // ROLLUP_SECONDS
    where = f"ts >= {int(lo)} AND ts < {int(hi)}"
    # The attempts first: a trigger takes each start off its hour rows.
    conn.execute("DELETE FROM hits_attempts WHERE bucket >= ? AND bucket < ?", (b0, b1))
    for table in ("hits_hour", "hits_hour_client"):
        conn.execute(take_sums_sql(table, rollup_sums_sql(table, where)))
        # A row without hits has no attempts either: they are lookups among its hits.
        conn.execute(
            f"DELETE FROM {table} WHERE hour >= ? AND hour <= ? AND blocked = 0",
            (lo // HOUR_SECONDS, (hi - 1) // HOUR_SECONDS),
        )
    n = conn.execute(
        f"UPDATE hits SET {_REWRITE[mode]} WHERE {where} AND {_NEEDS_REWRITE[mode]}"
    ).rowcount
    for table in ("hits_hour", "hits_hour_client"):
        conn.execute(add_sums_sql(table, rollup_sums_sql(table, where)))
    # m003's backfill for these buckets; each start then adds its attempt to the hour rows
    # through the trigger on `hits_attempts`.
    conn.execute(first_lookups_sql(where))
    judge_attempts(conn, b0, b1)
    return n


def _batch_end(conn: sqlite3.Connection, lo: int, until: int, rows: int) -> int:
    """The end of the batch from `lo`: the bucket of its `rows`-th hit, at most the bucket
    of `until`."""
    last = -(-until // ROLLUP_SECONDS) * ROLLUP_SECONDS
    nth = conn.execute(
        "SELECT ts FROM hits WHERE ts >= ? ORDER BY ts LIMIT 1 OFFSET ?",
        (lo, rows - 1),
    ).fetchone()
    if nth is None:
        return last
    return min(last, nth[0] - nth[0] % ROLLUP_SECONDS + ROLLUP_SECONDS)


def apply(
    conn: sqlite3.Connection,
    mode: str,
    *,
    command: str,
    comment: str | None = None,
    until: int | None = None,
    dry_run: bool = False,
    progress: Callable[[ApplyResult], None] | None = None,
    pause: float = APPLY_MIN_PAUSE,
    batch_rows: int = APPLY_BATCH_ROWS,
) -> ApplyResult:
    """Rewrite the stored hits before `until` (default: now) that hold more than `mode`
    allows, some APPLY_BATCH_ROWS hits per write transaction, oldest first; never the
    other way.

    ip -> hashed makes the recorder's pseudonym (`Pseudonymizer`, with the `client_secret`
    of `settings`); group drops the client, none the client and its group. Each
    transaction brings the rollups along and updates one audit row with the counts so
    far (created with the first), so the run can stop anywhere and run again.
    With dry_run nothing is written and the result holds what would be rewritten.
    """
    if mode not in STRICTNESS:
        raise SinkholeError(f"unknown privacy mode {mode!r} (one of {', '.join(STRICTNESS)})")
    until = int(time.time()) if until is None else until
    result = ApplyResult(mode, until)
    if mode == "ip":
        result.complete = True  # nothing stores more than an address
        return result
    if dry_run:
        result.rewritten = pending(conn, mode, until)
        return result
    # What is rewritten must leave the file: SQLite overwrites freed content with zeros,
    # and the checkpoint at the end takes the old pages out of the write-ahead log.
    conn.execute("PRAGMA secure_delete = ON")
    # The pseudonymizer is made in the first write transaction, which creates the key
    # when no hashed hit was ever written.
    pseudo: list[Pseudonymizer] = []
    conn.create_function(
        "sinkhole_pseudonym",
        1,
        lambda c: None if c is None else pseudo[0](c)[0],
        deterministic=True,
    )
    audit_id: int | None = None
    cursor = 0
    needs = _NEEDS_REWRITE[mode]

    def detail() -> str:
        return json.dumps(
            {
                "privacy": "apply",
                "to": mode,
                "until": until,
                "done": result.done,
                "rewritten": result.rewritten,
                "batches": result.batches,
                "complete": result.complete,
            }
        )

    while True:
        began = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                f"SELECT ts FROM hits WHERE ts >= ? AND ts < ? AND {needs} ORDER BY ts LIMIT 1",
                (cursor, until),
            ).fetchone()
            if row is None:
                result.done, result.complete = until, True
            else:
                if mode == "hashed" and not pseudo:
                    pseudo.append(Pseudonymizer("hashed", client_secret(conn), lambda c: None))
                lo = row[0] - row[0] % ROLLUP_SECONDS
                cursor = _batch_end(conn, lo, until, batch_rows)
                result.rewritten += _rewrite_batch(conn, mode, lo, cursor)
                result.batches += 1
                result.done = min(cursor, until)
            if audit_id is None and result.rewritten:
                audit_id = conn.execute(
                    "INSERT INTO audit (ts, user, command, comment, detail) VALUES (?, ?, ?, ?, ?)",
                    (utcnow_text(), os_user(), command, comment, detail()),
                ).lastrowid
            elif audit_id is not None:
                conn.execute("UPDATE audit SET detail = ? WHERE id = ?", (detail(), audit_id))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if result.complete:
            if result.rewritten:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                result.checkpointed = not busy
            return result
        if progress is not None:
            progress(result)
        if pause:
            time.sleep(max(pause, time.monotonic() - began))
