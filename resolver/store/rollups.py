"""The rollups and the attempt rule, in one place: what a hit adds to `hits_hour`,
`hits_hour_client`, `hits_hour_name` and `hits_attempts`, and what deleting or rewriting
hits takes out of them.

An attempt starts at a lookup with none of its client and service in the ROLLUP_SECONDS
before; `hits_attempts` holds the first and last second of each (5-minute bucket,
client, service) and whether its first lookup starts one. The trigger on `hits` that
m003 created applies the rule hit by hit for whoever inserts hits; `write_hits` (the
recorder) applies the same statements once per key of a batch; `purge_hits` and
`resolver.privacy` take hits out and rebuild their buckets' attempts with the
statements here. The frozen text of m003 (`resolver.store.migrations`) is the rule as
released; a change of the rule is a new migration that replaces its trigger.
"""

from __future__ import annotations

import sqlite3

#: Width of a `hits_5min` (m002) and `hits_attempts` (m003) bucket in seconds: the
#: report's attempt gap, so the gap rule only ever compares a bucket with the one before.
ROLLUP_SECONDS = 300
#: How the report names who and what a hit is about; the rollups are keyed by the same
#: expressions so the report can read them or the hits. Without a client address the
#: group stands in for the client.
IDENT_SQL = "COALESCE({p}client, 'group:' || COALESCE({p}client_group, 'other'))"
SVC_SQL = "COALESCE({p}service, {p}category, 'custom')"
GRP_SQL = "COALESCE({p}client_group, 'other')"


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


PURGE_BATCH_ROWS = 5_000


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
        gone = rollup_sums_sql(table, f"ts < {int(upto)}")
        conn.execute(take_sums_sql(table, gone))
        # A row without hits has no attempts either: its attempts are lookups among them.
        conn.execute(
            f"DELETE FROM {table} WHERE ({keys}) IN (SELECT {keys} FROM ({gone})) AND blocked = 0"
        )


def rollup_sums_sql(table: str, where: str) -> str:
    """The sums of `count` of the hits `where`, by the key columns of the rollup `table`
    (as they are now): a SELECT of those columns and `n`."""
    cols = HIT_ROLLUPS[table]
    return (
        f"SELECT {', '.join(f'{key_sql(c)} AS {c}' for c in cols)}, SUM(count) AS n "
        f"FROM hits WHERE {where} GROUP BY {', '.join(cols)}"
    )


def take_sums_sql(table: str, sums: str) -> str:
    """Take the sums `sums` (rollup_sums_sql) off the `blocked` of the rollup `table`."""
    match = " AND ".join(f"{table}.{c} = s.{c}" for c in HIT_ROLLUPS[table])
    return f"UPDATE {table} SET blocked = blocked - s.n FROM ({sums}) AS s WHERE {match}"


def add_sums_sql(table: str, sums: str) -> str:
    """Add the sums `sums` (rollup_sums_sql) to the `blocked` of the hour rollup `table`,
    a new row having no attempts yet."""
    keys = ", ".join(HIT_ROLLUPS[table])
    return (
        f"INSERT INTO {table} ({keys}, blocked, attempts) SELECT {keys}, n, 0 "
        f"FROM ({sums}) WHERE true "
        "ON CONFLICT DO UPDATE SET blocked = blocked + excluded.blocked"
    )


def first_lookups_sql(where: str) -> str:
    """Give `hits_attempts` the rows of the hits `where`, not starting yet: per bucket,
    client and service, the first lookup (ties: lowest id), its group and category, and
    the last second. m003's backfill, for any range of whole buckets."""
    bucket, ident, svc = key_sql("bucket"), key_sql("ident"), key_sql("svc")
    return f"""INSERT INTO hits_attempts
            SELECT bucket, ident, svc, ts, last_ts, grp, cat, 0 FROM (
                SELECT {bucket} AS bucket, {ident} AS ident,
                       {svc} AS svc, ts, {key_sql("grp")} AS grp,
                       {key_sql("cat")} AS cat, ROW_NUMBER() OVER w AS n,
                       MAX(ts) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING
                                     AND UNBOUNDED FOLLOWING) AS last_ts
                FROM hits WHERE {where}
                WINDOW w AS (PARTITION BY {bucket}, {ident}, {svc} ORDER BY ts, id))
            WHERE n = 1"""


#: The attempt rule for the `hits_attempts` row `a`: true when the bucket before holds a
#: lookup of its client and service at most ROLLUP_SECONDS before its first one, so that
#: it starts no attempt.
FOLLOWS_SQL = f"""EXISTS (SELECT 1 FROM hits_attempts p WHERE p.bucket = a.bucket - 1
                  AND p.ident = a.ident AND p.svc = a.svc
                  AND p.last_ts >= a.first_ts - {ROLLUP_SECONDS})"""


def judge_attempts(conn: sqlite3.Connection, b0: int, b1: int) -> None:
    """Apply the attempt rule to the rows of buckets [b0, b1) that `first_lookups_sql`
    wrote (none starting yet), and judge bucket b1 again against them; a trigger on
    `hits_attempts` brings each change of `start` to the hour rollups."""
    conn.execute(
        f"UPDATE hits_attempts AS a SET start = 1 WHERE bucket >= ? AND bucket < ? "
        f"AND NOT {FOLLOWS_SQL}",
        (b0, b1),
    )
    conn.execute(
        f"UPDATE hits_attempts AS a SET start = NOT {FOLLOWS_SQL} "
        f"WHERE bucket = ? AND start = {FOLLOWS_SQL}",
        (b1,),
    )
