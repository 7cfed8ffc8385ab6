"""The central schema on PostgreSQL: versioned migrations and the monthly partitions.

`sinkhole central init` runs `migrate`, which applies each migration not yet applied in
one transaction under an advisory lock, so two sites upgraded at once take turns. The
hits, the traffic and the rollups (resolver/central/rollups.py) are partitioned by month
of their timestamp (unix seconds); `ensure_partitions` creates the months a batch needs before it is
inserted, and `drop_partitions_before` is the retention: it drops whole months.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from resolver.central import rollups
from resolver.errors import StoreError

#: pg_advisory_xact_lock key for migrations and partition creation ("sinkhole" in ASCII).
SCHEMA_LOCK = 0x73696E6B686F6C65

#: The partitioned tables, each with the column it is partitioned on.
PARTITIONED = {"hits": "ts", "traffic": "minute", "hits_hour": "hour", **rollups.PARTITIONED}


def _m001(cur) -> None:
    for statement in (
        """CREATE TABLE central_meta (key text PRIMARY KEY, value text NOT NULL)""",
        """CREATE TABLE sites (
            site text PRIMARY KEY,
            first_seen timestamptz NOT NULL DEFAULT now(),
            last_seen timestamptz,            -- the site's last contact
            last_shipped timestamptz,         -- its last batch committed here
            backlog bigint NOT NULL DEFAULT 0,   -- rows waiting in its SQLite outbox
            oldest_unshipped bigint,          -- unix seconds of its oldest waiting hit
            dropped bigint NOT NULL DEFAULT 0,   -- unshipped hits deleted by its hard cap
            policy_version bigint,            -- the policy version it applies
            software_version text,
            first_start bigint,               -- unix seconds the site first recorded
            shipped_hits bigint NOT NULL DEFAULT 0
        )""",
        # The local columns of a hit, plus the site and the hit's local id. The primary
        # key holds `ts` because PostgreSQL wants the partition key in every unique key;
        # (site, local_id) with its ts is what a batch sent twice repeats.
        """CREATE TABLE hits (
            site text NOT NULL,
            local_id bigint NOT NULL,
            ts bigint NOT NULL,
            client text,
            client_group text,
            qname text NOT NULL,
            qtype text NOT NULL,
            service text,
            category text,
            rule text NOT NULL,
            action text NOT NULL,
            count integer NOT NULL DEFAULT 1,
            PRIMARY KEY (site, local_id, ts)
        ) PARTITION BY RANGE (ts)""",
        "CREATE INDEX hits_ts ON hits (ts, site)",
        """CREATE TABLE traffic (
            site text NOT NULL,
            minute bigint NOT NULL,
            queries bigint NOT NULL DEFAULT 0,
            blocked bigint NOT NULL DEFAULT 0,
            forwarded bigint NOT NULL DEFAULT 0,
            cached bigint NOT NULL DEFAULT 0,
            failed bigint NOT NULL DEFAULT 0,
            refused bigint NOT NULL DEFAULT 0,
            recorder_lag bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (site, minute)
        ) PARTITION BY RANGE (minute)""",
        # Kept by the shipper from the hits each batch really inserted (not those a
        # repeated batch brought again): sums per site, hour, service, group, category.
        """CREATE TABLE hits_hour (
            site text NOT NULL,
            hour bigint NOT NULL,             -- unix seconds of the hour's start
            svc text NOT NULL,
            grp text NOT NULL,
            cat text NOT NULL,
            blocked bigint NOT NULL,
            PRIMARY KEY (site, hour, svc, grp, cat)
        ) PARTITION BY RANGE (hour)""",
    ):
        cur.execute(statement)


def _m002(cur) -> None:
    # One policy for all sites (resolver/central/policy.py): one row, the policy tables
    # of a site database as JSON, its version; NOTIFY sinkhole_policy wakes the sites.
    cur.execute(
        """CREATE TABLE policy (
            id integer PRIMARY KEY CHECK (id = 1),
            version bigint NOT NULL,
            tables jsonb NOT NULL,            -- {table: {"columns": [...], "rows": [...]}}
            updated timestamptz NOT NULL DEFAULT now(),
            updated_by text
        )"""
    )


def _m003(cur) -> None:
    # The rollups the cross-site report reads (resolver/central/rollups.py), kept by the
    # shipper, built here from the hits already stored.
    cur.execute("ALTER TABLE hits_hour ADD COLUMN attempts bigint NOT NULL DEFAULT 0")
    for statement in rollups.TABLES:
        cur.execute(statement)
    cur.execute(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'hits'"""
    )
    for (child,) in cur.fetchall():
        try:
            m = dt.datetime(int(child[-7:-3]), int(child[-2:]), 1, tzinfo=dt.UTC)
        except ValueError:
            continue
        for table in rollups.PARTITIONED:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {partition_name(table, m)} PARTITION OF {table} "
                f"FOR VALUES FROM ({int(m.timestamp())}) TO ({int(next_month(m).timestamp())})"
            )
    rollups.backfill(cur)


#: The migrations, in order; their number is the schema version.
MIGRATIONS: list[tuple[str, Callable]] = [
    ("m001_initial", _m001),
    ("m002_policy", _m002),
    ("m003_rollups", _m003),
]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn) -> int:
    """The version the central database has (0: empty)."""
    row = conn.execute("SELECT to_regclass('central_migrations') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    return conn.execute("SELECT COUNT(*) FROM central_migrations").fetchone()[0]


def migrate(conn) -> tuple[int, int]:
    """Create or bring the central schema forward; (version before, version after).

    Raises:
        StoreError: the database was migrated by a newer sinkhole.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS central_migrations (
                version integer PRIMARY KEY, name text NOT NULL,
                applied timestamptz NOT NULL DEFAULT now())"""
        )
        before = schema_version(conn)
        if before > SCHEMA_VERSION:
            raise StoreError(
                f"central schema version {before} is newer than this sinkhole knows "
                f"({SCHEMA_VERSION}): upgrade sinkhole on this machine"
            )
        with conn.cursor() as cur:
            for version, (name, apply) in enumerate(MIGRATIONS, 1):
                if version <= before:
                    continue
                apply(cur)
                cur.execute(
                    "INSERT INTO central_migrations (version, name) VALUES (%s, %s)",
                    (version, name),
                )
    return before, SCHEMA_VERSION


def require_schema(conn) -> None:
    """Raise StoreError unless the central schema is the one this code knows."""
    version = schema_version(conn)
    if version == 0:
        raise StoreError("central store has no schema yet: run `sinkhole central init`")
    if version != SCHEMA_VERSION:
        newer = version > SCHEMA_VERSION
        raise StoreError(
            f"central schema version {version}, this sinkhole knows {SCHEMA_VERSION}: "
            + ("upgrade sinkhole here" if newer else "run `sinkhole central init` to migrate")
        )


def month_start(ts: int) -> dt.datetime:
    day = dt.datetime.fromtimestamp(ts, dt.UTC)
    return day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: dt.datetime) -> dt.datetime:
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def partition_name(table: str, start: dt.datetime) -> str:
    return f"{table}_y{start.year:04d}m{start.month:02d}"


def months(lo: int, hi: int) -> list[dt.datetime]:
    """The first instants of the months that hold unix seconds lo..hi (inclusive)."""
    out = []
    m = month_start(lo)
    while int(m.timestamp()) <= hi:
        out.append(m)
        m = next_month(m)
    return out


def ensure_partitions(conn, lo: int, hi: int, known: set[str] | None = None) -> None:
    """Create the monthly partitions of every partitioned table for seconds lo..hi.

    Its own transaction under the schema lock: sites shipping at once do not race on
    CREATE TABLE. `known` caches the partitions already seen to exist.
    """
    wanted = [
        (table, m)
        for m in months(lo, hi)
        for table in PARTITIONED
        if known is None or partition_name(table, m) not in known
    ]
    if not wanted:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        for table, m in wanted:
            name = partition_name(table, m)
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} "
                f"FOR VALUES FROM ({int(m.timestamp())}) TO ({int(next_month(m).timestamp())})"
            )
            if known is not None:
                known.add(name)


def drop_partitions_before(conn, before: int) -> list[str]:
    """Drop every monthly partition that ends at or before `before`; their names."""
    dropped = []
    boundary: int | None = None
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        rows = conn.execute(
            """SELECT c.relname, p.relname FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
               WHERE p.relname = ANY(%s) ORDER BY c.relname""",
            (list(PARTITIONED),),
        ).fetchall()
        for child, _parent in rows:
            try:
                year, month = int(child[-7:-3]), int(child[-2:])
            except ValueError:
                continue
            start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
            end = int(next_month(start).timestamp())
            if end <= before:
                conn.execute(f"DROP TABLE {child}")
                dropped.append(child)
                boundary = end if boundary is None else max(boundary, end)
        if boundary is not None:
            with conn.cursor() as cur:
                rollups.after_drop(cur, boundary)
    return dropped
