-- table _sqlite_migrations
CREATE TABLE "_sqlite_migrations" (
   "id" INTEGER PRIMARY KEY,
   "migration_set" TEXT,
   "name" TEXT,
   "applied_at" TEXT
);

-- index idx__sqlite_migrations_migration_set_name
CREATE UNIQUE INDEX "idx__sqlite_migrations_migration_set_name"
    ON "_sqlite_migrations" ("migration_set", "name");

-- table hits
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

-- index hits_ts
CREATE INDEX hits_ts ON hits(ts);

-- table traffic
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

-- table settings
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT);

-- table lists
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
        , etag TEXT, last_modified TEXT, services TEXT, checked TEXT, added TEXT);

-- table list_domains
CREATE TABLE list_domains (
            list TEXT NOT NULL REFERENCES lists(name) ON DELETE CASCADE,
            domain TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'block'
        );

-- index list_domains_list
CREATE INDEX list_domains_list ON list_domains(list);

-- table rules
CREATE TABLE rules (
            id INTEGER PRIMARY KEY,
            pattern TEXT NOT NULL,
            action TEXT NOT NULL,        -- block | allow
            comment TEXT,
            created TEXT NOT NULL,
            user TEXT,
            UNIQUE (pattern, action)
        );

-- table audit
CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            user TEXT,
            command TEXT NOT NULL,
            comment TEXT,
            detail TEXT
        );

-- table hits_attempts
CREATE TABLE hits_attempts (
            bucket INTEGER NOT NULL,     -- ts / 300
            ident TEXT NOT NULL,         -- as in the hour rollups
            svc TEXT NOT NULL,
            first_ts INTEGER NOT NULL,   -- the bucket's first lookup (ties: lowest id)
            last_ts INTEGER NOT NULL,
            grp TEXT NOT NULL,           -- group and category of that first lookup
            cat TEXT NOT NULL,
            start INTEGER NOT NULL,      -- 1: no lookup in the 300 s before first_ts
            PRIMARY KEY (bucket, ident, svc)
        ) WITHOUT ROWID;

-- table hits_hour
CREATE TABLE hits_hour (
            hour INTEGER NOT NULL,       -- ts / 3600
            svc TEXT NOT NULL,           -- service, else category, else 'custom'
            grp TEXT NOT NULL,           -- client_group, else 'other'
            cat TEXT NOT NULL,           -- category, else ''
            blocked INTEGER NOT NULL,    -- SUM(count)
            attempts INTEGER NOT NULL,   -- attempts whose first lookup is in this row
            PRIMARY KEY (hour, svc, grp, cat)
        ) WITHOUT ROWID;

-- table hits_hour_client
CREATE TABLE hits_hour_client (
            hour INTEGER NOT NULL,
            ident TEXT NOT NULL,         -- client, or 'group:<group>' when none is recorded
            svc TEXT NOT NULL,
            grp TEXT NOT NULL,
            cat TEXT NOT NULL,
            blocked INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            PRIMARY KEY (hour, ident, svc, grp, cat)
        ) WITHOUT ROWID;

-- table hits_hour_name
CREATE TABLE hits_hour_name (
            hour INTEGER NOT NULL,
            svc TEXT NOT NULL,
            cat TEXT NOT NULL,
            qname TEXT NOT NULL,
            blocked INTEGER NOT NULL,
            PRIMARY KEY (hour, svc, cat, qname)
        ) WITHOUT ROWID;

-- trigger hits_rollup_add
CREATE TRIGGER hits_rollup_add AFTER INSERT ON hits
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
        END;

-- trigger hits_attempts_add
CREATE TRIGGER hits_attempts_add AFTER INSERT ON hits_attempts WHEN NEW.start
        BEGIN
            INSERT INTO hits_hour (hour, svc, grp, cat, blocked, attempts) SELECT NEW.bucket / 12, NEW.svc, NEW.grp, NEW.cat, 0, 1 WHERE NEW.start ON CONFLICT DO UPDATE SET attempts = attempts + 1;
            INSERT INTO hits_hour_client (hour, ident, svc, grp, cat, blocked, attempts) SELECT NEW.bucket / 12, NEW.ident, NEW.svc, NEW.grp, NEW.cat, 0, 1 WHERE NEW.start ON CONFLICT DO UPDATE SET attempts = attempts + 1;
        END;

-- trigger hits_attempts_move
CREATE TRIGGER hits_attempts_move AFTER UPDATE OF start, grp, cat ON hits_attempts
        WHEN OLD.start <> NEW.start OR (NEW.start AND (OLD.grp <> NEW.grp OR OLD.cat <> NEW.cat))
        BEGIN
            UPDATE hits_hour SET attempts = attempts - 1 WHERE OLD.start AND hour = OLD.bucket / 12 AND svc = OLD.svc AND grp = OLD.grp AND cat = OLD.cat;
            UPDATE hits_hour_client SET attempts = attempts - 1 WHERE OLD.start AND hour = OLD.bucket / 12 AND ident = OLD.ident AND svc = OLD.svc AND grp = OLD.grp AND cat = OLD.cat;
            INSERT INTO hits_hour (hour, svc, grp, cat, blocked, attempts) SELECT NEW.bucket / 12, NEW.svc, NEW.grp, NEW.cat, 0, 1 WHERE NEW.start ON CONFLICT DO UPDATE SET attempts = attempts + 1;
            INSERT INTO hits_hour_client (hour, ident, svc, grp, cat, blocked, attempts) SELECT NEW.bucket / 12, NEW.ident, NEW.svc, NEW.grp, NEW.cat, 0, 1 WHERE NEW.start ON CONFLICT DO UPDATE SET attempts = attempts + 1;
        END;

-- trigger hits_attempts_drop
CREATE TRIGGER hits_attempts_drop AFTER DELETE ON hits_attempts WHEN OLD.start
        BEGIN
            UPDATE hits_hour SET attempts = attempts - 1 WHERE OLD.start AND hour = OLD.bucket / 12 AND svc = OLD.svc AND grp = OLD.grp AND cat = OLD.cat;
            UPDATE hits_hour_client SET attempts = attempts - 1 WHERE OLD.start AND hour = OLD.bucket / 12 AND ident = OLD.ident AND svc = OLD.svc AND grp = OLD.grp AND cat = OLD.cat;
        END;

-- table web_users
CREATE TABLE web_users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,          -- admin | viewer
            password TEXT NOT NULL,      -- scrypt$N$r$p$salt$hash (resolver/users.py)
            created TEXT NOT NULL,
            session_epoch INTEGER NOT NULL DEFAULT 1
        );

-- table web_login_failures
CREATE TABLE web_login_failures (
            key TEXT PRIMARY KEY,        -- user:NAME | ip:ADDRESS
            failures INTEGER NOT NULL,
            first_ts INTEGER NOT NULL,
            last_ts INTEGER NOT NULL
        );

-- table list_updates
CREATE TABLE list_updates (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            list TEXT NOT NULL,
            added INTEGER NOT NULL,
            removed INTEGER NOT NULL,
            names INTEGER NOT NULL       -- block names after the update
        );

-- index list_updates_ts
CREATE INDEX list_updates_ts ON list_updates(ts);

-- table central_hits_outbox
CREATE TABLE central_hits_outbox (hit_id INTEGER PRIMARY KEY);

-- table central_traffic_outbox
CREATE TABLE central_traffic_outbox (
            minute INTEGER PRIMARY KEY, rev INTEGER NOT NULL);

-- trigger central_hits_out
CREATE TRIGGER central_hits_out AFTER INSERT ON hits
            WHEN EXISTS (SELECT 1 FROM settings WHERE key = 'central_site') BEGIN
            INSERT OR IGNORE INTO central_hits_outbox VALUES (NEW.id);
        END;

-- trigger central_hits_gone
CREATE TRIGGER central_hits_gone AFTER DELETE ON hits
            WHEN EXISTS (SELECT 1 FROM central_hits_outbox WHERE hit_id = OLD.id) BEGIN
            DELETE FROM central_hits_outbox WHERE hit_id = OLD.id;
            INSERT INTO settings VALUES ('central_dropped', 1)
                ON CONFLICT(key) DO UPDATE SET value = value + 1;
        END;

-- trigger central_traffic_new
CREATE TRIGGER central_traffic_new AFTER INSERT ON traffic
            WHEN EXISTS (SELECT 1 FROM settings WHERE key = 'central_site') BEGIN
            INSERT INTO central_traffic_outbox VALUES (NEW.minute, 1)
                ON CONFLICT(minute) DO UPDATE SET rev = rev + 1;
        END;

-- trigger central_traffic_changed
CREATE TRIGGER central_traffic_changed AFTER UPDATE ON traffic
            WHEN EXISTS (SELECT 1 FROM settings WHERE key = 'central_site') BEGIN
            INSERT INTO central_traffic_outbox VALUES (NEW.minute, 1)
                ON CONFLICT(minute) DO UPDATE SET rev = rev + 1;
        END;

-- table group_exemptions
CREATE TABLE group_exemptions (
            label TEXT NOT NULL,
            service TEXT NOT NULL,
            created TEXT NOT NULL,
            user TEXT,
            PRIMARY KEY (label, service));

