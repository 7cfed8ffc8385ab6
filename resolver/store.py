"""SQLite (sqlite-utils): schema and migrations, policy state, audit trail, the hit recorder."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import getpass
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from resolver.errors import StoreError
from resolver.policy import ImportedList, PolicyState, Verdict

log = logging.getLogger("sinkhole.store")

BUSY_TIMEOUT = 5.0
#: The recorder writes at least this often (seconds), or sooner when this many hits wait.
FLUSH_INTERVAL = 1.0
#: A hit written later than this after it happened counts as `recorder_lag`: more than
#: the minute a repeated lookup is held (FOLD_SECONDS), and more than a few flushes.
RECORDER_LATE_SECONDS = 120
#: A client's repeated lookups of one name and type are written as at most two rows per
#: this many seconds: the first lookup's second, and the last's with the count of the rest.
FOLD_SECONDS = 60
#: A window is written this long after it ends, so the hits the loop has not handed
#: over yet (HANDOFF_INTERVAL) still fold into it.
FOLD_MARGIN = 2
#: How often the event loop hands its counted hits to the writer thread (seconds).
HANDOFF_INTERVAL = 0.5
#: Distinct hits held while the database is unavailable; past it, new hits are
#: coalesced per minute instead of per second, so totals stay exact.
HIT_BUFFER_ROWS = 100_000
PURGE_BATCH_ROWS = 5_000
PURGE_EVERY = 86_400
#: After a failed purge, try again this much later (seconds).
PURGE_RETRY = 3_600
#: The recorder's busy timeout: short, since it retries at the next flush anyway.
RECORDER_BUSY_TIMEOUT = 0.5
#: At exit, how long the recorder keeps retrying a faulty database before giving up.
FINAL_FLUSH_SECONDS = 3.0
#: How long the traffic counters are kept: they hold no personal data.
TRAFFIC_RETENTION_DAYS = 800

migrations = Migrations("sinkhole")


# Each migration is one statement per execute(), never executescript(): executescript
# commits the open transaction first, and a migration must apply whole or not at all.
@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    for statement in (
        """CREATE TABLE hits (
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
        )""",
        "CREATE INDEX hits_ts ON hits(ts)",
        "CREATE INDEX hits_service_ts ON hits(service, ts)",
        """CREATE TABLE traffic (
            minute INTEGER PRIMARY KEY,
            queries INTEGER NOT NULL DEFAULT 0,
            blocked INTEGER NOT NULL DEFAULT 0,
            forwarded INTEGER NOT NULL DEFAULT 0,
            cached INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            refused INTEGER NOT NULL DEFAULT 0,
            recorder_lag INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT)",
        """CREATE TABLE lists (
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
        )""",
        """CREATE TABLE list_domains (
            list TEXT NOT NULL REFERENCES lists(name) ON DELETE CASCADE,
            domain TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'block'
        )""",
        "CREATE INDEX list_domains_list ON list_domains(list)",
        """CREATE TABLE rules (
            id INTEGER PRIMARY KEY,
            pattern TEXT NOT NULL,
            action TEXT NOT NULL,        -- block | allow
            comment TEXT,
            created TEXT NOT NULL,
            user TEXT,
            UNIQUE (pattern, action)
        )""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            user TEXT,
            command TEXT NOT NULL,
            comment TEXT,
            detail TEXT
        )""",
    ):
        db.execute(statement)


#: Width of a `hits_5min` (m002) and `hits_attempts` (m003) bucket in seconds: the
#: report's attempt gap, so the gap rule only ever compares a bucket with the one before.
ROLLUP_SECONDS = 300
#: How the report names who and what a hit is about; the rollups are keyed by the same
#: expressions so the report can read them or the hits. Without a client address the
#: group stands in for the client.
IDENT_SQL = "COALESCE({p}client, 'group:' || COALESCE({p}client_group, 'other'))"
SVC_SQL = "COALESCE({p}service, {p}category, 'custom')"
GRP_SQL = "COALESCE({p}client_group, 'other')"


@migrations()
def m002_hits_5min(db: sqlite_utils.Database) -> None:
    # The weekly report over a million hits spent its time sorting them; this rollup holds
    # one row per 5-minute bucket, client, service, group and name, so the report reads
    # far fewer rows, already in the order it groups them. A trigger keeps it in the
    # transaction that inserts the hits, whoever inserts them (recorder, import, tests).
    new = {k: v.format(p="NEW.") for k, v in (("i", IDENT_SQL), ("s", SVC_SQL), ("g", GRP_SQL))}
    old = {k: v.format(p="") for k, v in (("i", IDENT_SQL), ("s", SVC_SQL), ("g", GRP_SQL))}
    for statement in (
        """CREATE TABLE hits_5min (
            bucket INTEGER NOT NULL,     -- ts / 300
            ident TEXT NOT NULL,         -- client, or 'group:<group>' when none is recorded
            svc TEXT NOT NULL,           -- service, else category, else 'custom'
            grp TEXT NOT NULL,           -- client_group, else 'other'
            qname TEXT NOT NULL,
            category TEXT,
            blocked INTEGER NOT NULL,    -- SUM(count)
            first_ts INTEGER NOT NULL,
            last_ts INTEGER NOT NULL,
            PRIMARY KEY (bucket, ident, svc, grp, qname)
        ) WITHOUT ROWID""",
        f"""CREATE TRIGGER hits_5min_add AFTER INSERT ON hits BEGIN
            INSERT INTO hits_5min VALUES (NEW.ts / {ROLLUP_SECONDS}, {new["i"]}, {new["s"]},
                {new["g"]}, NEW.qname, NEW.category, NEW.count, NEW.ts, NEW.ts)
            ON CONFLICT DO UPDATE SET blocked = blocked + excluded.blocked,
                first_ts = MIN(first_ts, excluded.first_ts),
                last_ts = MAX(last_ts, excluded.last_ts),
                category = COALESCE(MAX(category, excluded.category), category,
                                    excluded.category);
        END""",
        f"""INSERT INTO hits_5min
            SELECT ts / {ROLLUP_SECONDS}, {old["i"]}, {old["s"]}, {old["g"]}, qname,
                   MAX(category), SUM(count), MIN(ts), MAX(ts)
            FROM hits GROUP BY 1, 2, 3, 4, 5""",
    ):
        db.execute(statement)


#: Width of the rollups of m003 in seconds. A local midnight 30 or 45 minutes off UTC
#: (Asia/Kolkata, Asia/Kathmandu) or off any grid (Africa/Monrovia in 1970) falls inside
#: an hour: the report reads such hours from `hits`.
HOUR_SECONDS = 3600
#: The category as a key column, which cannot be NULL; the report reads '' as NULL.
CAT_SQL = "COALESCE({p}category, '')"
#: The rollups of m003 that hold sums over hits, by their key columns; each has `blocked`
#: (the sum of `count`) and, but for `hits_hour_name`, `attempts` (the attempts whose
#: first lookup is in that row: see `hits_attempts`).
HIT_ROLLUPS = {
    "hits_hour": ("hour", "svc", "grp", "cat"),
    "hits_hour_client": ("hour", "ident", "svc", "grp", "cat"),
    "hits_hour_name": ("hour", "svc", "cat", "qname"),
}


def key_sql(column: str, p: str = "") -> str:
    """The expression that gives a rollup key column from a hit (`p`: 'NEW.' in a trigger)."""
    return {
        "bucket": f"{p}ts / {ROLLUP_SECONDS}",
        "hour": f"{p}ts / {HOUR_SECONDS}",
        "ident": IDENT_SQL.format(p=p),
        "svc": SVC_SQL.format(p=p),
        "grp": GRP_SQL.format(p=p),
        "cat": CAT_SQL.format(p=p),
        "qname": f"{p}qname",
    }[column]


def _attempt_sql(table: str, sign: str, row: str) -> str:
    """Add (sign '+') or take (sign '-') one attempt of the `hits_attempts` row `row`
    ('NEW' or 'OLD') in `table`, the hour rollup it belongs to."""
    cols = HIT_ROLLUPS[table]
    vals = [
        f"{row}.bucket / {HOUR_SECONDS // ROLLUP_SECONDS}" if c == "hour" else f"{row}.{c}"
        for c in cols
    ]
    if sign == "-":
        where = " AND ".join(f"{c} = {v}" for c, v in zip(cols, vals, strict=True))
        return f"UPDATE {table} SET attempts = attempts - 1 WHERE {row}.start AND {where}"
    return (
        f"INSERT INTO {table} ({', '.join(cols)}, blocked, attempts) "
        f"SELECT {', '.join(vals)}, 0, 1 WHERE {row}.start "
        "ON CONFLICT DO UPDATE SET attempts = attempts + 1"
    )


#: While this key is in `settings`, the per-hit trigger on `hits` does nothing. Only the
#: recorder's write transaction adds it, and takes it out again before it commits: see
#: `write_hits`.
ROLLUP_BY_BATCH = "rollup_by_batch"
#: The statements that add hits to the m003 rollups, by name, and the values each adds
#: (`count`: the sum of `count`; `first`, `last`: the first and last second).
ROLLUP_PARAMS = {
    "hits_hour": ("hour", "svc", "grp", "cat", "count"),
    "hits_hour_client": ("hour", "ident", "svc", "grp", "cat", "count"),
    "hits_hour_name": ("hour", "svc", "cat", "qname", "count"),
    "hits_attempts": ("bucket", "ident", "svc", "first", "last", "grp", "cat"),
    "next_bucket": ("bucket", "ident", "svc", "last"),
}
#: Those values for one hit, in the trigger on `hits`.
NEW_VALUES = {
    **{c: key_sql(c, "NEW.") for c in ("bucket", "hour", "ident", "svc", "grp", "cat", "qname")},
    "count": "NEW.count",
    "first": "NEW.ts",
    "last": "NEW.ts",
}


def _rollup_sql(name: str, v: dict[str, str]) -> str:
    """The statement `name` of ROLLUP_PARAMS, adding the values `v` (SQL expressions): of
    one hit in the trigger on `hits`, or parameters bound by `write_hits` to the sums of
    the hits of a batch that share a key."""
    if name in HIT_ROLLUPS:
        cols = [*HIT_ROLLUPS[name], "blocked"] + (["attempts"] if name != "hits_hour_name" else [])
        vals = [v[c] for c in ROLLUP_PARAMS[name]] + (["0"] if name != "hits_hour_name" else [])
        return (
            f"INSERT INTO {name} ({', '.join(cols)}) VALUES ({', '.join(vals)}) "
            "ON CONFLICT DO UPDATE SET blocked = blocked + excluded.blocked"
        )
    gap = ROLLUP_SECONDS
    if name == "hits_attempts":
        # The rule against the bucket before as it is now; a first lookup that moves
        # earlier takes over the start, attributed to its group and category.
        return f"""INSERT INTO hits_attempts VALUES ({v["bucket"]}, {v["ident"]}, {v["svc"]},
                {v["first"]}, {v["last"]}, {v["grp"]}, {v["cat"]},
                NOT EXISTS (SELECT 1 FROM hits_attempts WHERE bucket = {v["bucket"]} - 1
                            AND ident = {v["ident"]} AND svc = {v["svc"]}
                            AND last_ts >= {v["first"]} - {gap}))
            ON CONFLICT DO UPDATE SET
                last_ts = MAX(last_ts, excluded.last_ts),
                grp = iif(excluded.first_ts < first_ts, excluded.grp, grp),
                cat = iif(excluded.first_ts < first_ts, excluded.cat, cat),
                start = iif(excluded.first_ts < first_ts, excluded.start, start),
                first_ts = MIN(first_ts, excluded.first_ts)"""
    # A late hit at most 300 s before the next bucket's first lookup ends its attempt.
    return f"""UPDATE hits_attempts SET start = 0
            WHERE bucket = {v["bucket"]} + 1 AND ident = {v["ident"]} AND svc = {v["svc"]}
              AND start AND first_ts <= {v["last"]} + {gap}"""


@migrations()
def m003_attempts_and_hourly_rollups(db: sqlite_utils.Database) -> None:
    # The report over a week of a million hits still read one `hits_5min` row per
    # (bucket, client, service, name), ~660,000 on random data, and found the attempts
    # by two seeks per row. Now the attempt rule is applied when a hit is written, and the
    # report reads hourly sums without the name (per service and group for the days, per
    # client for the rest of the figures) and a small (hour, service, name) rollup for the
    # top names. The category is a key column, so the bypass filter applies hit by hit.
    # `hits_5min` is replaced and dropped; this migration fills the new tables from the
    # hits already there, in the transaction of the migration.
    #
    # `hits_attempts` has a row per 5-minute bucket, client and service with its first
    # and last second; only the first lookup of a bucket can start an attempt (any other
    # is less than 300 s after it), and it does unless the bucket before holds a lookup
    # at most 300 s earlier: `start`, attributed to that lookup's group and category.
    # A hit that arrives late (buffered during a fault) may become its bucket's first
    # lookup, and may end the next bucket's attempt: the trigger on `hits` does both;
    # triggers on `hits_attempts` keep the `attempts` of the hour rollups equal to its
    # starts. Same-second ties go to the hit written first, as ORDER BY ts, id would.
    # The recorder runs the trigger's statements once per key of its batch instead
    # (`write_hits`): per hit, they cost it three times what m002's trigger did.
    gap = ROLLUP_SECONDS
    statements = [
        "DROP TRIGGER hits_5min_add",
        "DROP TABLE hits_5min",
        # Nothing reads hits by service (the report has the rollups): the index only cost
        # every insert its upkeep (~1.4 us a hit).
        "DROP INDEX hits_service_ts",
        """CREATE TABLE hits_attempts (
            bucket INTEGER NOT NULL,     -- ts / 300
            ident TEXT NOT NULL,         -- as in the hour rollups
            svc TEXT NOT NULL,
            first_ts INTEGER NOT NULL,   -- the bucket's first lookup (ties: lowest id)
            last_ts INTEGER NOT NULL,
            grp TEXT NOT NULL,           -- group and category of that first lookup
            cat TEXT NOT NULL,
            start INTEGER NOT NULL,      -- 1: no lookup in the 300 s before first_ts
            PRIMARY KEY (bucket, ident, svc)
        ) WITHOUT ROWID""",
        """CREATE TABLE hits_hour (
            hour INTEGER NOT NULL,       -- ts / 3600
            svc TEXT NOT NULL,           -- service, else category, else 'custom'
            grp TEXT NOT NULL,           -- client_group, else 'other'
            cat TEXT NOT NULL,           -- category, else ''
            blocked INTEGER NOT NULL,    -- SUM(count)
            attempts INTEGER NOT NULL,   -- attempts whose first lookup is in this row
            PRIMARY KEY (hour, svc, grp, cat)
        ) WITHOUT ROWID""",
        """CREATE TABLE hits_hour_client (
            hour INTEGER NOT NULL,
            ident TEXT NOT NULL,         -- client, or 'group:<group>' when none is recorded
            svc TEXT NOT NULL,
            grp TEXT NOT NULL,
            cat TEXT NOT NULL,
            blocked INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            PRIMARY KEY (hour, ident, svc, grp, cat)
        ) WITHOUT ROWID""",
        """CREATE TABLE hits_hour_name (
            hour INTEGER NOT NULL,
            svc TEXT NOT NULL,
            cat TEXT NOT NULL,
            qname TEXT NOT NULL,
            blocked INTEGER NOT NULL,
            PRIMARY KEY (hour, svc, cat, qname)
        ) WITHOUT ROWID""",
        # Backfill, before the triggers exist.
        f"""INSERT INTO hits_attempts
            SELECT bucket, ident, svc, ts, last_ts, grp, cat, 0 FROM (
                SELECT {key_sql("bucket")} AS bucket, {key_sql("ident")} AS ident,
                       {key_sql("svc")} AS svc, ts, {key_sql("grp")} AS grp,
                       {key_sql("cat")} AS cat, ROW_NUMBER() OVER w AS n,
                       MAX(ts) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING
                                     AND UNBOUNDED FOLLOWING) AS last_ts
                FROM hits
                WINDOW w AS (PARTITION BY {key_sql("bucket")}, {key_sql("ident")},
                             {key_sql("svc")} ORDER BY ts, id))
            WHERE n = 1""",
        f"""UPDATE hits_attempts AS a SET start = 1 WHERE NOT EXISTS (
                SELECT 1 FROM hits_attempts p WHERE p.bucket = a.bucket - 1
                AND p.ident = a.ident AND p.svc = a.svc AND p.last_ts >= a.first_ts - {gap})""",
    ]
    for table, cols in HIT_ROLLUPS.items():
        keys = ", ".join(cols)
        if table == "hits_hour_name":
            exprs = ", ".join(f"{key_sql(c)} AS {c}" for c in cols)
            statements.append(
                f"INSERT INTO {table} SELECT {exprs}, SUM(count) FROM hits GROUP BY {keys}"
            )
            continue
        attempt_keys = ", ".join(
            f"bucket / {HOUR_SECONDS // ROLLUP_SECONDS}" if c == "hour" else c for c in cols
        )
        statements.append(
            f"""INSERT INTO {table} SELECT {keys}, SUM(blocked), SUM(attempts) FROM (
                SELECT {", ".join(f"{key_sql(c)} AS {c}" for c in cols)},
                       count AS blocked, 0 AS attempts FROM hits
                UNION ALL
                SELECT {attempt_keys}, 0, 1 FROM hits_attempts WHERE start)
            GROUP BY {keys}"""
        )
    statements += [
        # Per hit, for whoever inserts hits but the recorder, which applies the same
        # statements once per key of its batch while ROLLUP_BY_BATCH is set: `write_hits`.
        f"""CREATE TRIGGER hits_rollup_add AFTER INSERT ON hits
        WHEN NOT EXISTS (SELECT 1 FROM settings WHERE key = '{ROLLUP_BY_BATCH}') BEGIN
            {";".join(_rollup_sql(name, NEW_VALUES) for name in ROLLUP_PARAMS)};
        END""",
        f"""CREATE TRIGGER hits_attempts_add AFTER INSERT ON hits_attempts WHEN NEW.start
        BEGIN
            {_attempt_sql("hits_hour", "+", "NEW")};
            {_attempt_sql("hits_hour_client", "+", "NEW")};
        END""",
        f"""CREATE TRIGGER hits_attempts_move AFTER UPDATE OF start, grp, cat ON hits_attempts
        WHEN OLD.start <> NEW.start OR (NEW.start AND (OLD.grp <> NEW.grp OR OLD.cat <> NEW.cat))
        BEGIN
            {_attempt_sql("hits_hour", "-", "OLD")};
            {_attempt_sql("hits_hour_client", "-", "OLD")};
            {_attempt_sql("hits_hour", "+", "NEW")};
            {_attempt_sql("hits_hour_client", "+", "NEW")};
        END""",
        f"""CREATE TRIGGER hits_attempts_drop AFTER DELETE ON hits_attempts WHEN OLD.start
        BEGIN
            {_attempt_sql("hits_hour", "-", "OLD")};
            {_attempt_sql("hits_hour_client", "-", "OLD")};
        END""",
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m004_web_users(db: sqlite_utils.Database) -> None:
    # The dashboard's accounts (issue 15). Sessions are signed cookies, not rows; a
    # user's `session_epoch` grows when the password changes or the user is removed and
    # added again, which ends every cookie signed before. Failed logins are counted per
    # key ('user:NAME', 'ip:ADDRESS') so that a guessing client is slowed, then refused.
    for statement in (
        """CREATE TABLE web_users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,          -- admin | viewer
            password TEXT NOT NULL,      -- scrypt$N$r$p$salt$hash (resolver/users.py)
            created TEXT NOT NULL,
            session_epoch INTEGER NOT NULL DEFAULT 1
        )""",
        """CREATE TABLE web_login_failures (
            key TEXT PRIMARY KEY,        -- user:NAME | ip:ADDRESS
            failures INTEGER NOT NULL,
            first_ts INTEGER NOT NULL,
            last_ts INTEGER NOT NULL
        )""",
    ):
        db.execute(statement)


@migrations()
def m005_list_sources(db: sqlite_utils.Database) -> None:
    # `lists update` fetches URL lists again with conditional requests, so a list keeps
    # the validators its server gave (RFC 9110 §8.8) and the AdGuard services it was cut
    # to; `added` is when a catalog service was first seen (NULL: with the first catalog,
    # or before this migration), so `sinkhole lists` and the report can say what is new.
    for statement in (
        "ALTER TABLE lists ADD COLUMN etag TEXT",
        "ALTER TABLE lists ADD COLUMN last_modified TEXT",
        "ALTER TABLE lists ADD COLUMN services TEXT",  # JSON list of ids/groups, or NULL
        "ALTER TABLE lists ADD COLUMN checked TEXT",  # last fetch, changed or not
        "ALTER TABLE lists ADD COLUMN added TEXT",
        """CREATE TABLE list_updates (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            list TEXT NOT NULL,
            added INTEGER NOT NULL,
            removed INTEGER NOT NULL,
            names INTEGER NOT NULL       -- block names after the update
        )""",
        "CREATE INDEX list_updates_ts ON list_updates(ts)",
    ):
        db.execute(statement)


INSERT_HITS = (
    "INSERT INTO hits (ts, client, client_group, qname, qtype, service, category, rule, "
    "action, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: ROLLUP_PARAMS's statements with their values as parameters, for `write_hits`.
BATCH_SQL = {
    name: _rollup_sql(name, {c: f"?{i}" for i, c in enumerate(params, 1)})
    for name, params in ROLLUP_PARAMS.items()
}


def write_hits(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    """Insert hit rows (ts, client, client_group, qname, qtype, service, category, rule,
    action, count) and add them to the rollups, in the caller's write transaction.

    The recorder's write. The rollups come out as the trigger on `hits` makes them hit by
    hit, but its statements run once per key of the batch, with the sum of `count` and
    the first and last second of the hits that share it, instead of once per hit: a
    flood of lookups makes a few keys a second but for the names. The trigger is off
    meanwhile: the `settings` row that says so is never committed, so no other
    connection sees it, and a crash rolls it back with the hits. `ts` must be an int.
    """
    if not conn.in_transaction:
        raise RuntimeError("write_hits needs a write transaction")
    if not rows:
        return
    hour: dict[tuple, int] = {}
    client: dict[tuple, int] = {}
    name: dict[tuple, int] = {}
    attempts: dict[tuple, list] = {}
    for ts, ip, group, qname, _, service, category, _, _, n in rows:
        # The keys as key_sql makes them.
        if ts < 0:  # SQL's / truncates toward zero, Python's // floors
            hr, bucket = -(-ts // HOUR_SECONDS), -(-ts // ROLLUP_SECONDS)
        else:
            hr, bucket = ts // HOUR_SECONDS, ts // ROLLUP_SECONDS
        grp = "other" if group is None else group
        ident = "group:" + grp if ip is None else ip
        svc = service if service is not None else "custom" if category is None else category
        cat = "" if category is None else category
        key = (hr, svc, grp, cat)
        hour[key] = hour.get(key, 0) + n
        key = (hr, ident, svc, grp, cat)
        client[key] = client.get(key, 0) + n
        key = (hr, svc, cat, qname)
        name[key] = name.get(key, 0) + n
        key = (bucket, ident, svc)
        a = attempts.get(key)
        if a is None:
            attempts[key] = [ts, ts, grp, cat]
        elif ts < a[0]:  # a tie goes to the hit written first, as to the lowest id
            a[0], a[2], a[3] = ts, grp, cat
        elif ts > a[1]:
            a[1] = ts
    # The last bucket with hits before this batch: no bucket after it has a row to end.
    (last,) = conn.execute(f"SELECT MAX(ts) / {ROLLUP_SECONDS} FROM hits").fetchone()
    conn.execute("INSERT OR REPLACE INTO settings VALUES (?, 'on')", (ROLLUP_BY_BATCH,))
    conn.executemany(INSERT_HITS, rows)
    conn.execute("DELETE FROM settings WHERE key = ?", (ROLLUP_BY_BATCH,))
    for table, sums in (
        ("hits_hour", hour),
        ("hits_hour_client", client),
        ("hits_hour_name", name),
    ):
        conn.executemany(BATCH_SQL[table], [(*k, n) for k, n in sums.items()])
    # Bucket after bucket, so that each sees the batch's hits of the bucket before; then
    # the rows already there in the bucket after one of the batch (a late hit's).
    groups = sorted(attempts.items())
    conn.executemany(BATCH_SQL["hits_attempts"], [(*k, *a) for k, a in groups])
    if last is not None:
        conn.executemany(BATCH_SQL["next_bucket"], [(*k, a[1]) for k, a in groups if k[0] < last])


#: The number of migrations this code knows; kept in settings as `schema_version`.
SCHEMA_VERSION = 5


def schema_version(db: sqlite_utils.Database) -> int:
    """The schema version a database says it has (0: a new, empty file)."""
    if not db["settings"].exists():
        return 0
    row = db.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(db: sqlite_utils.Database, migration_set: Migrations = migrations) -> int:
    """Bring the schema forward; returns its version.

    Reads only when the schema is current, so opening a database for reading
    takes no write lock. Otherwise one IMMEDIATE transaction: two processes
    starting at once (workers, the CLI) take turns instead of both creating tables.

    Raises:
        StoreError: the database was written by a newer sinkhole.
    """
    known = len(migration_set._migrations)
    current = schema_version(db)
    if current > known:
        raise StoreError(
            f"schema version {current} is newer than this sinkhole knows ({known}): "
            "it was written by a newer version"
        )
    if current == known and not migration_set.pending(db):
        return known
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated while we waited for the lock.
        applied = {m.name for m in migration_set.applied(db)}
        unknown = applied - {m.name for m in migration_set._migrations}
        if unknown:
            raise StoreError(
                f"schema has migrations this sinkhole does not know ({', '.join(sorted(unknown))}):"
                " it was written by a newer version"
            )
        # Nested in our transaction, apply() uses savepoints: all or nothing.
        migration_set.apply(db)
        version = len(migration_set.applied(db))
        conn.execute(
            "INSERT INTO settings VALUES ('schema_version', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(version),),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return version


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
        raise StoreError(f"{path}: cannot open database: {exc}") from None


@dataclass(frozen=True)
class ListChange:
    """What replacing an imported list changed: the block names added and removed."""

    added: list[str]
    removed: list[str]
    names: int


class Store:
    """The database: policy state the CLI edits and the server reads, hits, traffic, audit."""

    def __init__(self, path: str | os.PathLike, timeout: float = BUSY_TIMEOUT) -> None:
        self.path = str(path)
        self.conn = connect(path, timeout)
        self.db = sqlite_utils.Database(self.conn)
        try:
            migrate(self.db)
        except sqlite3.Error as exc:
            self.conn.close()
            raise StoreError(f"{self.path}: cannot prepare database: {exc}") from None
        except StoreError as exc:
            self.conn.close()
            raise StoreError(f"{self.path}: {exc}") from None

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
        existing = {name: kind for name, kind in self.conn.execute("SELECT name, kind FROM lists")}
        rows = []
        now = utcnow_text()
        # The first catalog a database sees is not news; a service that comes later (an
        # upgrade, a catalog edit) is, for `sinkhole lists` and the weekly report.
        added = now if "service" in existing.values() else None
        for sid, svc in catalog.services.items():
            if sid not in existing:
                rows.append((sid, "service", int(sid in wanted), svc.category, now, added))
            if svc.api and f"{sid}:api" not in existing:
                rows.append((f"{sid}:api", "api", 1, svc.category, now, None))
        if not rows:
            return

        def insert() -> None:
            self.conn.executemany(
                "INSERT OR IGNORE INTO lists (name, kind, enabled, category, updated, added) "
                "VALUES (?, ?, ?, ?, ?, ?)",
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
            "updated, etag, last_modified, services, checked, added FROM lists "
            "ORDER BY kind, name"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    def set_enabled(
        self,
        names: list[str],
        enabled: bool,
        *,
        command: str,
        comment: str | None = None,
        user: str | None = None,
    ) -> list[str]:
        """Enable or disable catalog services, API parts (`id:api`) or imported lists.

        `user`: who, for the audit trail (a dashboard user); default the OS user.
        """

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
            self._bump(user, command, comment, " ".join(names))
            return changed

        return self._write(change)

    def add_rules(
        self,
        patterns: list[str],
        action: str,
        *,
        command: str,
        comment: str | None = None,
        user: str | None = None,
    ) -> None:
        def change() -> None:
            for p in patterns:
                self.conn.execute(
                    "INSERT INTO rules (pattern, action, comment, created, user) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(pattern, action) "
                    "DO UPDATE SET comment = excluded.comment",
                    (p, action, comment, utcnow_text(), user or os_user()),
                )
            self._bump(user, command, comment, " ".join(patterns))

        self._write(change)

    def remove_rules(
        self,
        patterns: list[str],
        action: str,
        *,
        command: str,
        comment: str | None = None,
        user: str | None = None,
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
                self._bump(user, command, comment, " ".join(patterns))
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
        etag: str | None = None,
        last_modified: str | None = None,
        services: Iterable[str] = (),
        guard: bool = False,
    ) -> ListChange:
        """Create or atomically replace an imported list (one transaction).

        With `guard` (an update, not an import the administrator typed), a list that
        would lose half of its names or more, or end up empty, is kept as it was.

        Raises:
            StoreError: the name is a catalog service, or `guard` refused the change.
        """
        domains = list(domains)
        allow = list(allow)
        services = list(services)

        def change() -> ListChange:
            row = self.conn.execute("SELECT kind, enabled FROM lists WHERE name = ?", (name,))
            existing = row.fetchone()
            if existing and existing[0] != "imported":
                raise StoreError(f"{name!r} is a catalog service; pick another --name")
            old = {
                r[0]
                for r in self.conn.execute(
                    "SELECT domain FROM list_domains WHERE list = ? AND kind = 'block'", (name,)
                )
            }
            new = set(domains)
            diff = ListChange(sorted(new - old), sorted(old - new), len(new))
            if guard and old:
                if not new:
                    raise StoreError(f"{name}: the new list has no names; the old list is kept")
                if len(diff.removed) * 2 >= len(old):
                    raise StoreError(
                        f"{name}: the new list would drop {len(diff.removed)} of its "
                        f"{len(old)} names (half or more); the old list is kept. If that is "
                        f"right, import it again: sinkhole lists import {source} --name {name}"
                    )
            enabled = existing[1] if existing else 1
            now = utcnow_text()
            self.conn.execute("DELETE FROM list_domains WHERE list = ?", (name,))
            self.conn.execute(
                "INSERT OR REPLACE INTO lists (name, kind, enabled, category, source, format, "
                "domains, allows, errors, updated, etag, last_modified, services, checked) "
                "VALUES (?, 'imported', ?, ?, ?, ?, 0, 0, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    enabled,
                    f"list:{name}",
                    source,
                    fmt,
                    errors,
                    now,
                    etag,
                    last_modified,
                    json.dumps(services) if services else None,
                    now,
                ),
            )
            batch: list[tuple[str, str, str]] = []
            for kind, items in (("block", domains), ("allow", allow)):
                for d in items:
                    batch.append((name, d, kind))
                    if len(batch) >= 10_000:
                        self.conn.executemany("INSERT INTO list_domains VALUES (?, ?, ?)", batch)
                        batch.clear()
            if batch:
                self.conn.executemany("INSERT INTO list_domains VALUES (?, ?, ?)", batch)
            self.conn.execute(
                "UPDATE lists SET domains = ?, allows = ? WHERE name = ?",
                (len(domains), len(allow), name),
            )
            if existing:
                self.conn.execute(
                    "INSERT INTO list_updates (ts, list, added, removed, names) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (now, name, len(diff.added), len(diff.removed), len(new)),
                )
            detail = f"{name} from {source}: {len(domains)} names"
            if existing:
                detail += f" (+{len(diff.added)} -{len(diff.removed)})"
            self._bump(None, command, comment, detail)
            return diff

        return self._write(change)

    def url_lists(self, names: Iterable[str] = ()) -> list[dict]:
        """Imported lists whose source is an http(s) URL (those of `names`, or all).

        Raises:
            StoreError: a name is not an imported list, or was imported from a file.
        """
        rows = {r["name"]: r for r in self.lists() if r["kind"] == "imported"}
        names = list(names)
        for n in names:
            if n not in rows:
                raise StoreError(f"no imported list named {n!r} (see `sinkhole lists`)")
            if not (rows[n]["source"] or "").startswith(("http://", "https://")):
                raise StoreError(
                    f"{n}: imported from the file {rows[n]['source']}, not a URL; "
                    f"import the file again to replace it"
                )
        picked = names or [
            n for n, r in rows.items() if (r["source"] or "").startswith(("http://", "https://"))
        ]
        return [rows[n] for n in picked]

    def list_checked(self, name: str) -> None:
        """A conditional fetch found the list unchanged: note when."""
        self._write(
            lambda: self.conn.execute(
                "UPDATE lists SET checked = ? WHERE name = ?", (utcnow_text(), name)
            )
        )

    def mark_started(self) -> None:
        """The server starts: what the catalog adds from now on is new for `sinkhole lists`."""
        self._write(
            lambda: self.conn.execute(
                "INSERT INTO settings VALUES ('server_started', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (utcnow_text(),),
            )
        )

    def new_services(self) -> set[str]:
        """Catalog services first seen at the server's last start or since."""
        since = self.setting("server_started") or ""
        return {
            r[0]
            for r in self.conn.execute(
                "SELECT name FROM lists WHERE kind = 'service' AND added IS NOT NULL "
                "AND added >= ?",
                (since,),
            )
        }

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

    def audit(self, user: str | None, command: str, detail: str = "") -> None:
        """An audit row that changes no policy (a dashboard account added or removed)."""

        def write() -> None:
            self.conn.execute(
                "INSERT INTO audit (ts, user, command, comment, detail) VALUES (?, ?, ?, ?, ?)",
                (utcnow_text(), user or os_user(), command, None, detail),
            )

        self._write(write)

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
    """Delete hits older than `before`, rounded down to a 5-minute bucket, and take them
    out of the rollups; the number of hits deleted."""
    # Whole buckets go or stay, so `hits_attempts` always describes exactly the hits kept.
    before -= before % ROLLUP_SECONDS
    total = 0
    while True:
        # Small batches keep each write transaction short, so DNS never waits on it: the
        # oldest PURGE_BATCH_ROWS hits and the rest of the bucket of the last one.
        conn.execute("BEGIN IMMEDIATE")
        try:
            nth = conn.execute(
                "SELECT ts FROM hits WHERE ts < ? ORDER BY ts LIMIT 1 OFFSET ?",
                (before, PURGE_BATCH_ROWS - 1),
            ).fetchone()
            upto = (
                before
                if nth is None
                else min(before, nth[0] - nth[0] % ROLLUP_SECONDS + ROLLUP_SECONDS)
            )
            _unroll(conn, upto)
            cur = conn.execute("DELETE FROM hits WHERE ts < ?", (upto,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        total += cur.rowcount
        if upto == before:
            return total


def _unroll(conn: sqlite3.Connection, upto: int) -> None:
    """Take the hits before `upto` (a bucket boundary) out of the m003 rollups, in the
    transaction that deletes them: every commit leaves the rollups equal to the hits kept."""
    bucket = upto // ROLLUP_SECONDS
    # Their attempts (a trigger takes each start out of the hour rollups) ...
    conn.execute("DELETE FROM hits_attempts WHERE bucket < ?", (bucket,))
    # ... and a first lookup of the next bucket that followed one of them within 300 s
    # now starts an attempt among the hits kept.
    conn.execute("UPDATE hits_attempts SET start = 1 WHERE bucket = ? AND NOT start", (bucket,))
    for table, cols in HIT_ROLLUPS.items():
        keys = ", ".join(cols)
        gone = (
            f"SELECT {', '.join(f'{key_sql(c)} AS {c}' for c in cols)}, SUM(count) AS n "
            f"FROM hits WHERE ts < {int(upto)} GROUP BY {keys}"
        )
        match = " AND ".join(f"{table}.{c} = gone.{c}" for c in cols)
        conn.execute(
            f"UPDATE {table} SET blocked = blocked - gone.n FROM ({gone}) AS gone WHERE {match}"
        )
        # A row without hits has no attempts either: its attempts are lookups among them.
        conn.execute(
            f"DELETE FROM {table} WHERE ({keys}) IN (SELECT {keys} FROM ({gone})) AND blocked = 0"
        )


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

    The query path counts the hit on the policy's Verdict of the question while
    the same client asks it in the same second (its `tally_` slots), and then in a
    dict owned by the event loop thread (no lock, no SQL), keyed by (second,
    client, verdict), the verdict hashed by identity. Every HANDOFF_INTERVAL the
    loop hands that dict to a thread through a deque and starts a new one, and
    the thread writes batches. Under a flood of identical lookups the thread sees
    one entry per second, not one per query.

    A client's lookups of one name and type within a minute (FOLD_SECONDS, aligned
    to the clock) make at most two rows: the first lookup's second, written at the
    next flush, and the last lookup's second with the count of every later one,
    written once the minute is over (`held` until then). Totals, hourly sums and
    attempts come out as from one row per second: an attempt starts at a lookup
    with none of its client and service in the 300 s before, which only a
    minute's first lookup can be, and the minute's last lookup keeps its second.
    A flood that repeats names costs the database two rows a minute per name, not
    sixty.

    While the database is locked, read-only or full, hits wait in `buffer` as
    they came, and past `buffer_rows` entries in `coarse`, coalesced per minute by
    the columns they will be written with: the sum of `count` stays exact and
    memory stays bounded. Clients are pseudonymized when written, so a hit
    buffered before the hashing secret could be read is never stored with its
    address.
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
        buffer_rows: int = HIT_BUFFER_ROWS,
    ) -> None:
        self.path = path
        self.privacy = privacy
        self.retention_days = retention_days
        self.group_of = group_of
        self.flush_interval = flush_interval
        self.buffer_rows = buffer_rows
        #: Hits of the current interval, mutated only by the thread that calls hit().
        self.pending: dict[tuple, int] = {}
        #: Verdicts this recorder started a tally on since the last handoff.
        self._tallied: list[Verdict] = []
        #: Dicts handed over by that thread, waiting for the writer thread.
        self.queue: collections.deque = collections.deque()
        #: Hits handed off so far; with `pending` and `written` it gives the backlog.
        self.received = 0
        self._owner_hands_off = False
        self._handoff_timer: asyncio.TimerHandle | None = None
        #: (second, client, verdict): count, while the database cannot be written.
        self.buffer: dict[tuple, int] = {}
        #: (minute, client, verdict.record): count, once `buffer` is full.
        self.coarse: dict[tuple, int] = {}
        #: Window start: {(client, verdict): [first second, last second, later lookups]}.
        self.held: dict[int, dict[tuple, list[int]]] = {}
        #: Lookups in `held` (not the first second's, which went to `buffer`).
        self.held_hits = 0
        #: Sum of the buffer's counts, kept so other threads never iterate the dict.
        self.buffered = 0
        self.counters = [0] * 6  # incremented by the event loop thread only
        self._written_counters = [0] * 6
        self._pending_traffic: dict[int, list[int]] = {}
        #: The last minute given a traffic row.
        self._beat = -1
        #: Written once into `settings` as `first_start`: the report's recording begins here.
        self.created = int(time.time())
        self._first_start_written = False
        self._secret = secret
        #: Guards `_pseudo` and `privacy` between a reload (the loop) and a write (the thread).
        self._pseudo_lock = threading.Lock()
        self._pseudo: Pseudonymizer | None = self._new_pseudonymizer()
        self._migrated = False
        self._stop = threading.Event()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._final_deadline = 0.0
        #: None until the first purge, which runs at start: a server restarted daily
        #: would otherwise never reach PURGE_EVERY.
        self._last_purge: float | None = None
        self.fault: str | None = None
        self.written = 0
        self.on_fault: Callable[[str | None], None] | None = None
        #: queries, blocked, forwarded, cached, failed, refused: running totals from the server.
        self.traffic: Callable[[], list[int]] | None = None
        #: With the central store (resolver/central): retention deletes no hit at or after
        #: the second this gives (its oldest unshipped hit), None: no limit.
        self.purge_floor: Callable[[sqlite3.Connection], int | None] | None = None

    # Hot path: called by the event loop per blocked query.
    def hit(self, client: str, verdict: Verdict) -> None:
        """Count a blocked lookup; `verdict` says what to record (its `record`)."""
        now = int(time.time())
        if (
            verdict.tally_second == now
            and verdict.tally_client == client
            and verdict.tally_owner is self
        ):
            verdict.tally_count += 1
        else:
            self._tally(client, verdict, now)

    def _tally(self, client: str, verdict: Verdict, now: int) -> None:
        """Start counting (now, client) on `verdict`; what it counted goes to `pending`."""
        owner = verdict.tally_owner
        if owner is not None:  # its count so far: ours, or another recorder's (in tests)
            owner._spill(verdict)
        verdict.tally_owner = self
        verdict.tally_second = now
        verdict.tally_client = client
        verdict.tally_count = 1
        self._tallied.append(verdict)

    def _spill(self, verdict: Verdict) -> None:
        key = (verdict.tally_second, verdict.tally_client, verdict)
        pending = self.pending
        pending[key] = pending.get(key, 0) + verdict.tally_count
        verdict.tally_owner = None
        verdict.tally_count = 0

    def handoff(self) -> None:
        """Give this interval's hits to the writer; call from the thread that calls hit()."""
        for verdict in self._tallied:  # in the order the tallies started
            if verdict.tally_owner is self:
                self._spill(verdict)
        self._tallied = []
        if self.pending:
            self.received += sum(self.pending.values())
            self.queue.append(self.pending)
            self.pending = {}

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand hits over from `loop` every HANDOFF_INTERVAL (the server's event loop)."""
        self._owner_hands_off = True

        def tick() -> None:
            self.handoff()
            self._handoff_timer = loop.call_later(HANDOFF_INTERVAL, tick)

        self._handoff_timer = loop.call_later(HANDOFF_INTERVAL, tick)

    def detach(self) -> None:
        """Last handoff and no more timer; call from the loop before stop()."""
        if self._handoff_timer is not None:
            self._handoff_timer.cancel()
            self._handoff_timer = None
        self.handoff()
        self._owner_hands_off = False

    @property
    def backlog(self) -> int:
        """Hits received and not yet written, but those held until their minute ends."""
        # hit() does not count: the hits not handed off yet are in tallies and `pending`.
        tallied = sum(v.tally_count for v in set(self._tallied) if v.tally_owner is self)
        pending = sum(self.pending.values())
        return self.received + pending + tallied - self.written - self.held_hits

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sinkhole-recorder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = FINAL_FLUSH_SECONDS + 1.0) -> bool:
        """Flush everything and stop within `timeout`; True when nothing is left unwritten."""
        # The last attempt must end before the join gives up: a busy wait may be under way.
        self._final_deadline = time.monotonic() + max(0.0, timeout - RECORDER_BUSY_TIMEOUT - 0.2)
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self.flush()
        left = self.backlog
        if left:
            log.error("%d hits could not be written to %s before exit", left, self.path)
        return left == 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wakeup.wait(self.flush_interval)
            self._wakeup.clear()
            self._flush_safely(hold=True)
        # Final flush: keep trying briefly so a short fault does not lose hits at exit.
        while not self._flush_safely(hold=False) and time.monotonic() < self._final_deadline:
            time.sleep(0.2)

    def _flush_safely(self, hold: bool) -> bool:
        try:
            return self.flush(hold=hold)
        except Exception:  # noqa: BLE001 - a dead recorder thread would lose every later hit
            log.exception("unexpected error in the hit recorder")
            return False

    def _drain(self) -> None:
        if not self._owner_hands_off:
            self.handoff()  # no event loop: hit() and flush() share this thread
        q = self.queue
        while q:
            self._fold(q.popleft())

    def _fold(self, batch: dict[tuple, int]) -> None:
        """Hits of a minute's first second to the buffer; later ones of the minute held."""
        held = self.held
        rows: dict[tuple, int] = {}
        folded = 0
        window = later = None
        for key, n in batch.items():  # in the order the lookups came
            ts, client, verdict = key
            start = ts - ts % FOLD_SECONDS
            if start != window:
                window = start
                later = held.get(start)
                if later is None:
                    later = held[start] = {}
            k = (client, verdict)
            h = later.get(k)
            if h is None:
                if len(later) < self.buffer_rows:  # past it, rows per second: memory bound
                    later[k] = [ts, ts, 0]
            elif ts > h[0]:
                if ts > h[1]:
                    h[1] = ts
                h[2] += n
                folded += n
                continue
            rows[key] = n
        self.held_hits += folded
        self._buffer(rows)

    def _release(self, everything: bool) -> None:
        """Buffer the held rows of the windows that are over (all: at exit)."""
        over = int(time.time()) - FOLD_SECONDS - FOLD_MARGIN
        rows: dict[tuple, int] = {}
        for start in [w for w in self.held if everything or w <= over]:
            for (client, verdict), (_, last, n) in self.held.pop(start).items():
                if n:
                    rows[(last, client, verdict)] = n
        if rows:
            self.held_hits -= sum(rows.values())
            self._buffer(rows)

    def _buffer(self, rows: dict[tuple, int]) -> None:
        """Add rows (second, client, verdict): count to what the next write takes."""
        self.buffered += sum(rows.values())
        buf = self.buffer
        limit = self.buffer_rows
        if not buf and len(rows) <= limit:
            self.buffer = rows  # the usual case: the database was written last time
        elif len(buf) + len(rows) <= limit:
            get = buf.get
            for key, n in rows.items():
                buf[key] = get(key, 0) + n
        else:
            coarse = self.coarse
            for key, n in rows.items():
                if key in buf:
                    buf[key] += n
                elif len(buf) < limit:
                    buf[key] = n
                else:
                    ts, client, verdict = key
                    key = (ts - ts % 60, client, verdict.record)
                    coarse[key] = coarse.get(key, 0) + n

    def _traffic_delta(self) -> None:
        now = list(self.traffic()) if self.traffic is not None else self.counters[:]
        delta = [a - b for a, b in zip(now, self._written_counters, strict=True)]
        self._written_counters = now
        minute = int(time.time()) // 60 * 60
        # A row every minute the server runs, queries or not: a minute without one is a
        # gap in recording (report: "server-down"), an idle night is not.
        if not any(delta) and minute == self._beat:
            return
        self._beat = minute
        row = self._pending_traffic.setdefault(minute, [0] * 6)
        for i, d in enumerate(delta):
            row[i] += d

    def flush(self, *, hold: bool = False) -> bool:
        """Move queued hits to the buffer and try to write it; True when nothing is left.

        hold: keep the repeated lookups of the minutes not over yet in memory (the
        writer thread's flushes); by default they are written too.
        """
        self._traffic_delta()
        self._drain()
        self._release(everything=not hold)
        purge_due = self._last_purge is None or time.time() - self._last_purge >= PURGE_EVERY
        if not self.buffer and not self.coarse and not self._pending_traffic and not purge_due:
            return True
        try:
            conn = self._open()
        except StoreError as exc:
            self._set_fault(str(exc))
            return False
        try:
            self._write(conn)
        except sqlite3.Error as exc:
            self._set_fault(f"{self.path}: cannot write hits: {exc}")
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            conn.close()
            return False
        self._set_fault(None)
        if purge_due:
            self._purge(conn)
        conn.close()
        return not self.queue and not self.buffer and not self.coarse

    def _open(self) -> sqlite3.Connection:
        # The file is open only while a batch is written: an administrator can remount,
        # move or restore it, and a read-only or full filesystem shows at the next open.
        conn = connect(self.path, timeout=RECORDER_BUSY_TIMEOUT)
        try:
            if not self._migrated:
                migrate(sqlite_utils.Database(conn))
                self._migrated = True
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"{self.path}: cannot prepare database: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _new_pseudonymizer(self) -> Pseudonymizer | None:
        """For the current mode; None while `hashed` waits for the secret in the database."""
        if self.privacy == "hashed" and self._secret is None:
            return None
        return Pseudonymizer(self.privacy, self._secret or b"", self.group_of)

    def reconfigure(self, *, privacy: str, retention_days: int) -> None:
        """A reload's privacy mode and retention, from the next write on.

        Hits still in memory are written under the new mode: a stricter mode never
        lets an address through that it would not store. The pseudonym memo starts
        anew, so changed group labels apply too, and retention is applied at the
        next flush.
        """
        with self._pseudo_lock:
            self.privacy = privacy
            self.retention_days = retention_days
            self._pseudo = self._new_pseudonymizer()
        self._last_purge = None

    def forget_clients(self) -> None:
        """Drop the memo of clients' pseudonyms and groups (the groups may have changed)."""
        with self._pseudo_lock:
            self._pseudo = self._new_pseudonymizer()

    def _pseudonymizer(self, conn: sqlite3.Connection) -> Pseudonymizer:
        """Called inside the write transaction, so a new secret is created exactly once."""
        with self._pseudo_lock:
            if self._pseudo is None:
                row = conn.execute(
                    "SELECT value FROM settings WHERE key = 'client_secret'"
                ).fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO settings VALUES ('client_secret', ?)",
                        (secrets.token_hex(32),),
                    )
                    row = conn.execute(
                        "SELECT value FROM settings WHERE key = 'client_secret'"
                    ).fetchone()
                self._secret = bytes.fromhex(row[0])
                self._pseudo = Pseudonymizer(self.privacy, self._secret, self.group_of)
            return self._pseudo

    def _write(self, conn: sqlite3.Connection) -> None:
        # Hits written more than RECORDER_LATE_SECONDS late: the recorder was behind.
        late = int(time.time()) - RECORDER_LATE_SECONDS
        lag = 0
        conn.execute("BEGIN IMMEDIATE")
        if self.buffer or self.coarse:
            pseudo = self._pseudonymizer(conn)
            who = {c: pseudo(c) for c in {key[1] for key in self.buffer}}
            who.update((c, pseudo(c)) for c in {key[1] for key in self.coarse})
            # One row per second and written columns: clients that share a pseudonym (a
            # group, or none) share a row, and so do verdicts of one name asked twice.
            rows: dict[tuple, int] = {}
            get = rows.get
            for (ts, client, verdict), n in self.buffer.items():
                key = (ts, *who[client], *verdict.record)
                rows[key] = get(key, 0) + n
                if ts < late:
                    lag += n
            for (ts, client, record), n in self.coarse.items():
                key = (ts, *who[client], *record)
                rows[key] = get(key, 0) + n
                if ts < late:
                    lag += n
            write_hits(conn, [(*k, n) for k, n in rows.items()])
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
        if not self._first_start_written:
            conn.execute(
                "INSERT OR IGNORE INTO settings VALUES ('first_start', ?)", (str(self.created),)
            )
        conn.execute("COMMIT")
        self._first_start_written = True
        self.written += self.buffered
        self.buffer = {}
        self.coarse = {}
        self.buffered = 0
        self._pending_traffic.clear()

    def _purge(self, conn: sqlite3.Connection) -> None:
        now = time.time()
        try:
            before = int(now) - self.retention_days * 86_400
            floor = self.purge_floor(conn) if self.purge_floor is not None else None
            n = purge_hits(conn, before if floor is None else min(before, floor))
            conn.execute(
                "DELETE FROM traffic WHERE minute < ?",
                (int(now) - TRAFFIC_RETENTION_DAYS * 86_400,),
            )
        except sqlite3.Error as exc:
            # Try again later rather than at every flush: one warning, not one a second.
            self._last_purge = now - PURGE_EVERY + PURGE_RETRY
            log.warning("retention purge failed, retrying in an hour: %s", exc)
            return
        self._last_purge = now
        if n:
            log.info("purged %d hits older than %d days", n, self.retention_days)

    def _set_fault(self, fault: str | None) -> None:
        # One line when a fault starts and one when it ends, never one per attempt.
        if (fault is None) == (self.fault is None):
            self.fault = fault
            return
        if fault is None:
            log.warning("database %s is writable again; buffered hits written", self.path)
        else:
            log.error("%s; hits are kept in memory until it recovers", fault)
        self.fault = fault
        if self.on_fault is not None:
            self.on_fault(fault)
