"""The migrations of the SQLite schema, frozen: each holds its SQL as the literal text it
ran when it was released, and a released migration never changes.

A new schema is a new migration appended to MIGRATIONS, never an edit of one here: the
SQL of m002 and m003 was once built from live helpers, so editing a helper for a later
change would have changed what they create on a new database. The text of every table,
index and trigger a new database gets is kept in tests/schema.sql and compared with
sqlite_master (tests/test_store.py). Rollup SQL the code runs today lives in
`resolver.store.rollups`; it may change, these may not.

Each statement runs in its own execute(), never executescript(): executescript commits
the open transaction first, and a migration must apply whole or not at all.
"""

# ruff: noqa: E501 - frozen SQL keeps its released text, long lines included

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """A released change of the schema: its name and its statements, as literal text."""

    name: str
    statements: tuple[str, ...]

    def apply(self, conn: sqlite3.Connection) -> None:
        for statement in self.statements:
            conn.execute(statement)


m001_initial = Migration(
    "m001_initial",
    (
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
        """CREATE INDEX hits_ts ON hits(ts)""",
        """CREATE INDEX hits_service_ts ON hits(service, ts)""",
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
        """CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT)""",
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
        """CREATE INDEX list_domains_list ON list_domains(list)""",
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
    ),
)

# The weekly report over a million hits spent its time sorting them; this rollup holds
# one row per 5-minute bucket, client, service, group and name, so the report reads
# far fewer rows, already in the order it groups them. A trigger keeps it in the
# transaction that inserts the hits, whoever inserts them (recorder, import, tests).
m002_hits_5min = Migration(
    "m002_hits_5min",
    (
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
        """CREATE TRIGGER hits_5min_add AFTER INSERT ON hits BEGIN
            INSERT INTO hits_5min VALUES (NEW.ts / 300, COALESCE(NEW.client, 'group:' || COALESCE(NEW.client_group, 'other')), COALESCE(NEW.service, NEW.category, 'custom'),
                COALESCE(NEW.client_group, 'other'), NEW.qname, NEW.category, NEW.count, NEW.ts, NEW.ts)
            ON CONFLICT DO UPDATE SET blocked = blocked + excluded.blocked,
                first_ts = MIN(first_ts, excluded.first_ts),
                last_ts = MAX(last_ts, excluded.last_ts),
                category = COALESCE(MAX(category, excluded.category), category,
                                    excluded.category);
        END""",
        """INSERT INTO hits_5min
            SELECT ts / 300, COALESCE(client, 'group:' || COALESCE(client_group, 'other')), COALESCE(service, category, 'custom'), COALESCE(client_group, 'other'), qname,
                   MAX(category), SUM(count), MIN(ts), MAX(ts)
            FROM hits GROUP BY 1, 2, 3, 4, 5""",
    ),
)

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
m003_attempts_and_hourly_rollups = Migration(
    "m003_attempts_and_hourly_rollups",
    (
        """DROP TRIGGER hits_5min_add""",
        """DROP TABLE hits_5min""",
        # Nothing reads hits by service (the report has the rollups): the index only cost
        # every insert its upkeep (~1.4 us a hit).
        """DROP INDEX hits_service_ts""",
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
        """INSERT INTO hits_attempts
            SELECT bucket, ident, svc, ts, last_ts, grp, cat, 0 FROM (
                SELECT ts / 300 AS bucket, COALESCE(client, 'group:' || COALESCE(client_group, 'other')) AS ident,
                       COALESCE(service, category, 'custom') AS svc, ts, COALESCE(client_group, 'other') AS grp,
                       COALESCE(category, '') AS cat, ROW_NUMBER() OVER w AS n,
                       MAX(ts) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING
                                     AND UNBOUNDED FOLLOWING) AS last_ts
                FROM hits
                WINDOW w AS (PARTITION BY ts / 300, COALESCE(client, 'group:' || COALESCE(client_group, 'other')),
                             COALESCE(service, category, 'custom') ORDER BY ts, id))
            WHERE n = 1""",
        """UPDATE hits_attempts AS a SET start = 1 WHERE NOT EXISTS (
                SELECT 1 FROM hits_attempts p WHERE p.bucket = a.bucket - 1
                AND p.ident = a.ident AND p.svc = a.svc AND p.last_ts >= a.first_ts - 300)""",
        """INSERT INTO hits_hour SELECT hour, svc, grp, cat, SUM(blocked), SUM(attempts) FROM (
                SELECT ts / 3600 AS hour, COALESCE(service, category, 'custom') AS svc, COALESCE(client_group, 'other') AS grp, COALESCE(category, '') AS cat,
                       count AS blocked, 0 AS attempts FROM hits
                UNION ALL
                SELECT bucket / 12, svc, grp, cat, 0, 1 FROM hits_attempts WHERE start)
            GROUP BY hour, svc, grp, cat""",
        """INSERT INTO hits_hour_client SELECT hour, ident, svc, grp, cat, SUM(blocked), SUM(attempts) FROM (
                SELECT ts / 3600 AS hour, COALESCE(client, 'group:' || COALESCE(client_group, 'other')) AS ident, COALESCE(service, category, 'custom') AS svc, COALESCE(client_group, 'other') AS grp, COALESCE(category, '') AS cat,
                       count AS blocked, 0 AS attempts FROM hits
                UNION ALL
                SELECT bucket / 12, ident, svc, grp, cat, 0, 1 FROM hits_attempts WHERE start)
            GROUP BY hour, ident, svc, grp, cat""",
        """INSERT INTO hits_hour_name SELECT ts / 3600 AS hour, COALESCE(service, category, 'custom') AS svc, COALESCE(category, '') AS cat, qname AS qname, SUM(count) FROM hits GROUP BY hour, svc, cat, qname""",
        # Per hit, for whoever inserts hits but the recorder, which applies the same
        # statements once per key of its batch while rollup_by_batch is set: `write_hits`.
        """CREATE TRIGGER hits_rollup_add AFTER INSERT ON hits
        WHEN NOT EXISTS (SELECT 1 FROM settings WHERE key = 'rollup_by_batch') BEGIN
            INSERT INTO hits_hour (hour, svc, grp, cat, blocked, attempts) VALUES (NEW.ts / 3600, COALESCE(NEW.service, NEW.category, 'custom'), COALESCE(NEW.client_group, 'other'), COALESCE(NEW.category, ''), NEW.count, 0) ON CONFLICT DO UPDATE SET blocked = blocked + excluded.blocked;INSERT INTO hits_hour_client (hour, ident, svc, grp, cat, blocked, attempts) VALUES (NEW.ts / 3600, COALESCE(NEW.client, 'group:' || COALESCE(NEW.client_group, 'other')), COALESCE(NEW.service, NEW.category, 'custom'), COALESCE(NEW.client_group, 'other'), COALESCE(NEW.category, ''), NEW.count, 0) ON CONFLICT DO UPDATE SET blocked = blocked + excluded.blocked;INSERT INTO hits_hour_name (hour, svc, cat, qname, blocked) VALUES (NEW.ts / 3600, COALESCE(NEW.service, NEW.category, 'custom'), COALESCE(NEW.category, ''), NEW.qname, NEW.count) ON CONFLICT DO UPDATE SET blocked = blocked + excluded.blocked;INSERT INTO hits_attempts VALUES (NEW.ts / 300, COALESCE(NEW.client, 'group:' || COALESCE(NEW.client_group, 'other')), COALESCE(NEW.service, NEW.category, 'custom'),
                NEW.ts, NEW.ts, COALESCE(NEW.client_group, 'other'), COALESCE(NEW.category, ''),
                NOT EXISTS (SELECT 1 FROM hits_attempts WHERE bucket = NEW.ts / 300 - 1
                            AND ident = COALESCE(NEW.client, 'group:' || COALESCE(NEW.client_group, 'other')) AND svc = COALESCE(NEW.service, NEW.category, 'custom')
                            AND last_ts >= NEW.ts - 300))
            ON CONFLICT DO UPDATE SET
                last_ts = MAX(last_ts, excluded.last_ts),
                grp = iif(excluded.first_ts < first_ts, excluded.grp, grp),
                cat = iif(excluded.first_ts < first_ts, excluded.cat, cat),
                start = iif(excluded.first_ts < first_ts, excluded.start, start),
                first_ts = MIN(first_ts, excluded.first_ts);UPDATE hits_attempts SET start = 0
            WHERE bucket = NEW.ts / 300 + 1 AND ident = COALESCE(NEW.client, 'group:' || COALESCE(NEW.client_group, 'other')) AND svc = COALESCE(NEW.service, NEW.category, 'custom')
              AND start AND first_ts <= NEW.ts + 300;
        END""",
        """CREATE TRIGGER hits_attempts_add AFTER INSERT ON hits_attempts WHEN NEW.start
        BEGIN
            INSERT INTO hits_hour (hour, svc, grp, cat, blocked, attempts) SELECT NEW.bucket / 12, NEW.svc, NEW.grp, NEW.cat, 0, 1 WHERE NEW.start ON CONFLICT DO UPDATE SET attempts = attempts + 1;
            INSERT INTO hits_hour_client (hour, ident, svc, grp, cat, blocked, attempts) SELECT NEW.bucket / 12, NEW.ident, NEW.svc, NEW.grp, NEW.cat, 0, 1 WHERE NEW.start ON CONFLICT DO UPDATE SET attempts = attempts + 1;
        END""",
        """CREATE TRIGGER hits_attempts_move AFTER UPDATE OF start, grp, cat ON hits_attempts
        WHEN OLD.start <> NEW.start OR (NEW.start AND (OLD.grp <> NEW.grp OR OLD.cat <> NEW.cat))
        BEGIN
            UPDATE hits_hour SET attempts = attempts - 1 WHERE OLD.start AND hour = OLD.bucket / 12 AND svc = OLD.svc AND grp = OLD.grp AND cat = OLD.cat;
            UPDATE hits_hour_client SET attempts = attempts - 1 WHERE OLD.start AND hour = OLD.bucket / 12 AND ident = OLD.ident AND svc = OLD.svc AND grp = OLD.grp AND cat = OLD.cat;
            INSERT INTO hits_hour (hour, svc, grp, cat, blocked, attempts) SELECT NEW.bucket / 12, NEW.svc, NEW.grp, NEW.cat, 0, 1 WHERE NEW.start ON CONFLICT DO UPDATE SET attempts = attempts + 1;
            INSERT INTO hits_hour_client (hour, ident, svc, grp, cat, blocked, attempts) SELECT NEW.bucket / 12, NEW.ident, NEW.svc, NEW.grp, NEW.cat, 0, 1 WHERE NEW.start ON CONFLICT DO UPDATE SET attempts = attempts + 1;
        END""",
        """CREATE TRIGGER hits_attempts_drop AFTER DELETE ON hits_attempts WHEN OLD.start
        BEGIN
            UPDATE hits_hour SET attempts = attempts - 1 WHERE OLD.start AND hour = OLD.bucket / 12 AND svc = OLD.svc AND grp = OLD.grp AND cat = OLD.cat;
            UPDATE hits_hour_client SET attempts = attempts - 1 WHERE OLD.start AND hour = OLD.bucket / 12 AND ident = OLD.ident AND svc = OLD.svc AND grp = OLD.grp AND cat = OLD.cat;
        END""",
    ),
)

# The dashboard's accounts (issue 15). Sessions are signed cookies, not rows; a
# user's `session_epoch` grows when the password changes or the user is removed and
# added again, which ends every cookie signed before. Failed logins are counted per
# key ('user:NAME', 'ip:ADDRESS') so that a guessing client is slowed, then refused.
m004_web_users = Migration(
    "m004_web_users",
    (
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
    ),
)

# `lists update` fetches URL lists again with conditional requests, so a list keeps
# the validators its server gave (RFC 9110 §8.8) and the AdGuard services it was cut
# to; `added` is when a catalog service was first seen (NULL: with the first catalog,
# or before this migration), so `sinkhole lists` and the report can say what is new.
m005_list_sources = Migration(
    "m005_list_sources",
    (
        """ALTER TABLE lists ADD COLUMN etag TEXT""",
        """ALTER TABLE lists ADD COLUMN last_modified TEXT""",
        """ALTER TABLE lists ADD COLUMN services TEXT""",
        """ALTER TABLE lists ADD COLUMN checked TEXT""",
        """ALTER TABLE lists ADD COLUMN added TEXT""",
        """CREATE TABLE list_updates (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            list TEXT NOT NULL,
            added INTEGER NOT NULL,
            removed INTEGER NOT NULL,
            names INTEGER NOT NULL       -- block names after the update
        )""",
        """CREATE INDEX list_updates_ts ON list_updates(ts)""",
    ),
)

# The central store (issue 14, resolver/central/outbox.py): the SQLite file is the
# site's outbox. `central_hits_outbox` holds the hits PostgreSQL has not confirmed yet,
# `central_traffic_outbox` the traffic minutes changed since last shipped (`rev` grows
# at each change, so a change made while a batch is on its way keeps the minute there).
# The triggers act only while `settings` has `central_site` (written by the shipper):
# without `central` the outbox stays empty. A hit deleted while waiting (retention at
# `central.outbox_cap_rows`) is counted in `settings.central_dropped`.
m006_central_outbox = Migration(
    "m006_central_outbox",
    (
        """CREATE TABLE central_hits_outbox (hit_id INTEGER PRIMARY KEY)""",
        """CREATE TABLE central_traffic_outbox (
            minute INTEGER PRIMARY KEY, rev INTEGER NOT NULL)""",
        """CREATE TRIGGER central_hits_out AFTER INSERT ON hits
            WHEN EXISTS (SELECT 1 FROM settings WHERE key = 'central_site') BEGIN
            INSERT OR IGNORE INTO central_hits_outbox VALUES (NEW.id);
        END""",
        """CREATE TRIGGER central_hits_gone AFTER DELETE ON hits
            WHEN EXISTS (SELECT 1 FROM central_hits_outbox WHERE hit_id = OLD.id) BEGIN
            DELETE FROM central_hits_outbox WHERE hit_id = OLD.id;
            INSERT INTO settings VALUES ('central_dropped', 1)
                ON CONFLICT(key) DO UPDATE SET value = value + 1;
        END""",
        """CREATE TRIGGER central_traffic_new AFTER INSERT ON traffic
            WHEN EXISTS (SELECT 1 FROM settings WHERE key = 'central_site') BEGIN
            INSERT INTO central_traffic_outbox VALUES (NEW.minute, 1)
                ON CONFLICT(minute) DO UPDATE SET rev = rev + 1;
        END""",
        """CREATE TRIGGER central_traffic_changed AFTER UPDATE ON traffic
            WHEN EXISTS (SELECT 1 FROM settings WHERE key = 'central_site') BEGIN
            INSERT INTO central_traffic_outbox VALUES (NEW.minute, 1)
                ON CONFLICT(minute) DO UPDATE SET rev = rev + 1;
        END""",
    ),
)

# m007: the services a client group may use, kept in the policy state (and so, with
# `central`, in the central policy every site copies in). A site's policy is the union
# of these and its config's `clients.groups.<label>.exempt`; a group's networks stay in
# the config (they describe the site's address plan).
m007_group_exemptions = Migration(
    "m007_group_exemptions",
    (
        """CREATE TABLE group_exemptions (
            label TEXT NOT NULL,
            service TEXT NOT NULL,
            created TEXT NOT NULL,
            user TEXT,
            PRIMARY KEY (label, service))""",
    ),
)

#: Every migration, in the order they apply; the schema version is their number.
MIGRATIONS = (
    m001_initial,
    m002_hits_5min,
    m003_attempts_and_hourly_rollups,
    m004_web_users,
    m005_list_sources,
    m006_central_outbox,
    m007_group_exemptions,
)
