"""The central store's rollups (m003): what the cross-site report reads instead of `hits`.

The same figures as a site's SQLite rollups (resolver/store/rollups.py), per site, in
PostgreSQL, with times in unix seconds (`hour`, `bucket`: the first second):

- `hits_hour` (m001; `attempts` since m003): per site, hour, service, group, category.
- `hits_hour_client`: per site, hour, client (`ident`), service, group, category.
- `hits_hour_name`: per site, hour, service, category, name; blocked only.
- `hits_bucket`: per site, 5-minute bucket, client and service, the first and last
  second and the group and category of the first lookup (ties: the lowest site, then
  local id, as the hits were ordered when the report copied them), and whether that
  first lookup starts an attempt (the rule of resolver/store/rollups.py).

Blocked queries add up across sites; attempts do not (a client whose lookups a
redundant pair of resolvers shared makes one attempt, not two). So `hits_bucket` and
`hits_hour_client` also hold the rows of ALL = '*' (not a site name: config.SITE_CHARS),
all sites together with the rule applied across them; the report of a subset of sites
applies it at report time (`subset_attempts_sql`).

The shipper adds each batch's really inserted hits (`add_batch`) under ROLLUP_LOCK, so
two sites' batches judge attempts one after the other; `backfill` (m003) builds them from
the hits; `after_drop` keeps them equal to the hits when retention drops whole months.
"""

from __future__ import annotations

from resolver.store.rollups import HOUR_SECONDS, ROLLUP_SECONDS, key_sql

#: The rows of all sites together.
ALL = "*"
#: pg_advisory_xact_lock key held while rollups are changed ("rollups!" in ASCII).
ROLLUP_LOCK = 0x726F6C6C75707321
GAP = ROLLUP_SECONDS
H = HOUR_SECONDS

#: The new tables of m003, partitioned by month on their time column like `hits`.
TABLES = (
    f"""CREATE TABLE hits_hour_client (
        site text NOT NULL,               -- a site, or '{ALL}'
        hour bigint NOT NULL,
        ident text NOT NULL,
        svc text NOT NULL,
        grp text NOT NULL,
        cat text NOT NULL,
        blocked bigint NOT NULL DEFAULT 0,
        attempts bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (site, hour, ident, svc, grp, cat)
    ) PARTITION BY RANGE (hour)""",
    """CREATE TABLE hits_hour_name (
        site text NOT NULL,
        hour bigint NOT NULL,
        svc text NOT NULL,
        cat text NOT NULL,
        qname text NOT NULL,
        blocked bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (site, hour, svc, cat, qname)
    ) PARTITION BY RANGE (hour)""",
    f"""CREATE TABLE hits_bucket (
        site text NOT NULL,               -- a site, or '{ALL}'
        bucket bigint NOT NULL,           -- unix seconds, a multiple of {GAP}
        ident text NOT NULL,
        svc text NOT NULL,
        first_ts bigint NOT NULL,
        first_site text NOT NULL,
        first_id bigint NOT NULL,
        last_ts bigint NOT NULL,
        grp text NOT NULL,
        cat text NOT NULL,
        start boolean NOT NULL DEFAULT false,
        PRIMARY KEY (site, bucket, ident, svc)
    ) PARTITION BY RANGE (bucket)""",
)
PARTITIONED = {"hits_hour_client": "hour", "hits_hour_name": "hour", "hits_bucket": "bucket"}

_KEYS = {c: key_sql(c) for c in ("ident", "svc", "grp", "cat")}
#: The keys of a hit row (of `hits` or the shipper's `ins_hits`), as the site's rollups.
HIT_KEYS = (
    f"ts / {H} * {H} AS hour, ts / {GAP} * {GAP} AS bucket, {_KEYS['ident']} AS ident, "
    f"{_KEYS['svc']} AS svc, {_KEYS['grp']} AS grp, {_KEYS['cat']} AS cat"
)
#: The rule: the bucket before holds a lookup of its client and service at most GAP
#: seconds before the first one of the row `a`.
FOLLOWS = f"""EXISTS (SELECT 1 FROM hits_bucket p WHERE p.site = a.site
              AND p.bucket = a.bucket - {GAP} AND p.ident = a.ident AND p.svc = a.svc
              AND p.last_ts >= a.first_ts - {GAP})"""


def lock(cur) -> None:
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (ROLLUP_LOCK,))


def add_batch(cur, site: str) -> None:
    """Add the hits of temp table `ins_hits` (this batch's really inserted rows of SITE)
    to the rollups, in the shipper's transaction."""
    lock(cur)
    cur.execute(
        f"""CREATE TEMP TABLE IF NOT EXISTS ins_keys ON COMMIT DELETE ROWS AS
            SELECT {HIT_KEYS}, qname, local_id, ts, count FROM ins_hits WITH NO DATA"""
    )
    cur.execute(f"INSERT INTO ins_keys SELECT {HIT_KEYS}, qname, local_id, ts, count FROM ins_hits")
    # Temp tables have no statistics but these: without them the planner may scan the
    # rollups whole instead of looking the batch's keys up by their primary keys.
    cur.execute("ANALYZE ins_keys")
    p = {"site": site, "all": ALL}
    cur.execute(
        """INSERT INTO hits_hour (site, hour, svc, grp, cat, blocked)
           SELECT %(site)s, hour, svc, grp, cat, SUM(count) FROM ins_keys GROUP BY 2, 3, 4, 5
           ON CONFLICT (site, hour, svc, grp, cat)
           DO UPDATE SET blocked = hits_hour.blocked + excluded.blocked""",
        p,
    )
    cur.execute(
        """INSERT INTO hits_hour_client (site, hour, ident, svc, grp, cat, blocked)
           SELECT s.site, hour, ident, svc, grp, cat, SUM(count)
           FROM ins_keys CROSS JOIN (VALUES (%(site)s), (%(all)s)) AS s (site)
           GROUP BY 1, 2, 3, 4, 5, 6
           ON CONFLICT (site, hour, ident, svc, grp, cat)
           DO UPDATE SET blocked = hits_hour_client.blocked + excluded.blocked""",
        p,
    )
    cur.execute(
        """INSERT INTO hits_hour_name (site, hour, svc, cat, qname, blocked)
           SELECT %(site)s, hour, svc, cat, qname, SUM(count) FROM ins_keys
           GROUP BY 2, 3, 4, 5
           ON CONFLICT (site, hour, svc, cat, qname)
           DO UPDATE SET blocked = hits_hour_name.blocked + excluded.blocked""",
        p,
    )
    # The batch's buckets: the first lookup of each (ties: lowest local id), the last.
    cur.execute(
        """CREATE TEMP TABLE IF NOT EXISTS batch_buckets (bucket bigint, ident text,
             svc text, first_ts bigint, first_id bigint, last_ts bigint, grp text, cat text)
           ON COMMIT DELETE ROWS"""
    )
    cur.execute(
        """INSERT INTO batch_buckets
           SELECT DISTINCT ON (bucket, ident, svc) bucket, ident, svc, ts, local_id,
                  MAX(ts) OVER (PARTITION BY bucket, ident, svc), grp, cat
           FROM ins_keys ORDER BY bucket, ident, svc, ts, local_id"""
    )
    # The rows whose start may change: the batch's, and those of the bucket after.
    cur.execute(
        """CREATE TEMP TABLE IF NOT EXISTS touched (bucket bigint, ident text, svc text)
           ON COMMIT DELETE ROWS"""
    )
    cur.execute(
        """CREATE TEMP TABLE IF NOT EXISTS moved (hour bigint, ident text, svc text,
             grp text, cat text, n integer) ON COMMIT DELETE ROWS"""
    )
    cur.execute(
        f"""INSERT INTO touched SELECT bucket, ident, svc FROM batch_buckets
            UNION SELECT bucket + {GAP}, ident, svc FROM batch_buckets"""
    )
    cur.execute("ANALYZE touched")
    for scope in (site, ALL):
        _add_buckets(cur, scope, site)


def _add_buckets(cur, scope: str, site: str) -> None:
    """Upsert the batch's buckets into SCOPE's `hits_bucket`, judge again the rows of
    temp table `touched`, and move the attempts of the hour rollups by the difference."""
    cur.execute("TRUNCATE moved")
    key = "a.bucket = t.bucket AND a.ident = t.ident AND a.svc = t.svc"
    earlier = (
        "(excluded.first_ts, excluded.first_site, excluded.first_id) < "
        "(hits_bucket.first_ts, hits_bucket.first_site, hits_bucket.first_id)"
    )
    taken = ", ".join(
        f"{c} = CASE WHEN {earlier} THEN excluded.{c} ELSE hits_bucket.{c} END"
        for c in ("grp", "cat", "first_site", "first_id", "first_ts")
    )
    # One statement: its query sees the rows as they were before its upsert, so the
    # attempts they started are taken out where they were counted.
    cur.execute(
        f"""WITH upsert AS (
              INSERT INTO hits_bucket (site, bucket, ident, svc, first_ts, first_site,
                                       first_id, last_ts, grp, cat)
              SELECT %(scope)s, bucket, ident, svc, first_ts, %(site)s, first_id, last_ts,
                     grp, cat FROM batch_buckets
              ON CONFLICT (site, bucket, ident, svc) DO UPDATE SET
                  last_ts = GREATEST(hits_bucket.last_ts, excluded.last_ts), {taken})
            INSERT INTO moved SELECT a.bucket / {H} * {H}, a.ident, a.svc, a.grp, a.cat, -1
            FROM touched t JOIN hits_bucket a ON a.site = %(scope)s AND {key}
            WHERE a.start""",
        {"scope": scope, "site": site},
    )
    # The rule again for those rows, against the bucket before as it is now; the
    # attempts they start now are added.
    cur.execute(
        f"""WITH judged AS (
              SELECT a.bucket, a.ident, a.svc, a.grp, a.cat, a.start,
                     NOT COALESCE(p.last_ts >= a.first_ts - {GAP}, false) AS starts
              FROM touched t JOIN hits_bucket a ON a.site = %(scope)s AND {key}
              LEFT JOIN hits_bucket p ON p.site = %(scope)s AND p.bucket = a.bucket - {GAP}
                   AND p.ident = a.ident AND p.svc = a.svc),
            flipped AS (
              UPDATE hits_bucket h SET start = j.starts FROM judged j
              WHERE h.site = %(scope)s AND h.bucket = j.bucket AND h.ident = j.ident
                AND h.svc = j.svc AND h.start <> j.starts)
            INSERT INTO moved SELECT bucket / {H} * {H}, ident, svc, grp, cat, 1
            FROM judged WHERE starts""",
        {"scope": scope},
    )
    _apply_moved(cur, scope)


def _apply_moved(cur, scope: str) -> None:
    """Add the attempts of temp table `moved` to SCOPE's hour rollups."""
    cur.execute(
        """INSERT INTO hits_hour_client (site, hour, ident, svc, grp, cat, attempts)
           SELECT %(scope)s, hour, ident, svc, grp, cat, SUM(n) FROM moved
           GROUP BY 2, 3, 4, 5, 6 HAVING SUM(n) <> 0
           ON CONFLICT (site, hour, ident, svc, grp, cat)
           DO UPDATE SET attempts = hits_hour_client.attempts + excluded.attempts""",
        {"scope": scope},
    )
    if scope != ALL:
        cur.execute(
            """INSERT INTO hits_hour (site, hour, svc, grp, cat, blocked, attempts)
               SELECT %(scope)s, hour, svc, grp, cat, 0, SUM(n) FROM moved
               GROUP BY 2, 3, 4, 5 HAVING SUM(n) <> 0
               ON CONFLICT (site, hour, svc, grp, cat)
               DO UPDATE SET attempts = hits_hour.attempts + excluded.attempts""",
            {"scope": scope},
        )


def buckets_sql(where: str, per_site: bool) -> str:
    """The `hits_bucket` rows (but `start`) of the hits `where`: per site, or of all of
    them together as ALL."""
    part = "h.site, " if per_site else ""
    site = "h.site" if per_site else f"'{ALL}'"
    return f"""SELECT DISTINCT ON ({part}bucket, ident, svc) {site} AS site, bucket, ident,
                      svc, ts AS first_ts, site AS first_site, local_id AS first_id,
                      MAX(ts) OVER (PARTITION BY {part}bucket, ident, svc) AS last_ts,
                      grp, cat
               FROM (SELECT site, local_id, ts, {HIT_KEYS} FROM hits WHERE {where}) h
               ORDER BY {part}bucket, ident, svc, h.ts, h.site, h.local_id"""


def backfill(cur) -> None:
    """Build every rollup from the hits (m003, on a database that already holds hits)."""
    lock(cur)
    cur.execute("DELETE FROM hits_hour")
    cur.execute(
        f"""INSERT INTO hits_hour (site, hour, svc, grp, cat, blocked)
            SELECT site, hour, svc, grp, cat, SUM(count)
            FROM (SELECT site, count, {HIT_KEYS} FROM hits) h GROUP BY 1, 2, 3, 4, 5"""
    )
    cur.execute(
        f"""INSERT INTO hits_hour_client (site, hour, ident, svc, grp, cat, blocked)
            SELECT s, hour, ident, svc, grp, cat, SUM(count)
            FROM (SELECT site, count, {HIT_KEYS} FROM hits) h,
                 LATERAL (VALUES (h.site), ('{ALL}')) AS v (s)
            GROUP BY 1, 2, 3, 4, 5, 6"""
    )
    cur.execute(
        f"""INSERT INTO hits_hour_name (site, hour, svc, cat, qname, blocked)
            SELECT site, hour, svc, cat, qname, SUM(count)
            FROM (SELECT site, count, qname, {HIT_KEYS} FROM hits) h GROUP BY 1, 2, 3, 4, 5"""
    )
    for per_site in (True, False):
        cur.execute(
            "INSERT INTO hits_bucket (site, bucket, ident, svc, first_ts, first_site, "
            f"first_id, last_ts, grp, cat) {buckets_sql('true', per_site)}"
        )
    cur.execute(f"UPDATE hits_bucket a SET start = true WHERE NOT {FOLLOWS}")
    _add_starts(cur, "true")


def _add_starts(cur, where: str) -> None:
    """Add the starts of the `hits_bucket` rows `where` to the attempts of the hour
    rollups (of each site, and of ALL)."""
    starts = f"""SELECT site, bucket / {H} * {H} AS hour, ident, svc, grp, cat
                 FROM hits_bucket WHERE start AND {where}"""
    cur.execute(
        f"""INSERT INTO hits_hour_client (site, hour, ident, svc, grp, cat, attempts)
            SELECT site, hour, ident, svc, grp, cat, COUNT(*) FROM ({starts}) s
            GROUP BY 1, 2, 3, 4, 5, 6
            ON CONFLICT (site, hour, ident, svc, grp, cat)
            DO UPDATE SET attempts = hits_hour_client.attempts + excluded.attempts"""
    )
    cur.execute(
        f"""INSERT INTO hits_hour (site, hour, svc, grp, cat, blocked, attempts)
            SELECT site, hour, svc, grp, cat, 0, COUNT(*) FROM ({starts}) s
            WHERE site <> '{ALL}' GROUP BY 1, 2, 3, 4, 5
            ON CONFLICT (site, hour, svc, grp, cat)
            DO UPDATE SET attempts = hits_hour.attempts + excluded.attempts"""
    )


def after_drop(cur, boundary: int) -> None:
    """The months before `boundary` are gone: a first lookup of the first bucket kept
    that followed one of theirs within GAP seconds now starts an attempt (as the
    report of the hits kept would count it)."""
    lock(cur)
    cur.execute(
        """CREATE TEMP TABLE IF NOT EXISTS moved_sites (site text, hour bigint, ident text,
             svc text, grp text, cat text) ON COMMIT DROP"""
    )
    cur.execute(
        f"""WITH changed AS (UPDATE hits_bucket SET start = true
                WHERE bucket = {int(boundary)} AND NOT start
                RETURNING site, bucket / {H} * {H}, ident, svc, grp, cat)
            INSERT INTO moved_sites SELECT * FROM changed"""
    )
    cur.execute(
        """INSERT INTO hits_hour_client (site, hour, ident, svc, grp, cat, attempts)
           SELECT site, hour, ident, svc, grp, cat, COUNT(*) FROM moved_sites
           GROUP BY 1, 2, 3, 4, 5, 6
           ON CONFLICT (site, hour, ident, svc, grp, cat)
           DO UPDATE SET attempts = hits_hour_client.attempts + excluded.attempts"""
    )
    cur.execute(
        f"""INSERT INTO hits_hour (site, hour, svc, grp, cat, blocked, attempts)
            SELECT site, hour, svc, grp, cat, 0, COUNT(*) FROM moved_sites
            WHERE site <> '{ALL}' GROUP BY 1, 2, 3, 4, 5
            ON CONFLICT (site, hour, svc, grp, cat)
            DO UPDATE SET attempts = hits_hour.attempts + excluded.attempts"""
    )
    cur.execute("DROP TABLE moved_sites")


def subset_attempts_sql(lo: int, hi: int) -> str:
    """The starting first lookups of the buckets [lo, hi) of SITES together (two or more,
    not all): per bucket, client and service, the first lookup over those sites and the
    last, then the rule against the bucket before. Columns: bucket, ident, svc, first_ts,
    last_ts, grp, cat. `sites` are bound as %(sites)s."""
    rows = f"""hits_bucket WHERE site = ANY(%(sites)s) AND bucket >= {int(lo) - GAP}
               AND bucket < {int(hi)}"""
    return f"""SELECT bucket, ident, svc, first_ts, last_ts, grp, cat FROM (
        SELECT f.bucket, f.ident, f.svc, f.first_ts, l.last_ts, f.grp, f.cat,
               LAG(f.bucket) OVER w AS pb, LAG(l.last_ts) OVER w AS pl
        FROM (SELECT DISTINCT ON (bucket, ident, svc) bucket, ident, svc, first_ts, grp, cat
              FROM {rows} ORDER BY bucket, ident, svc, first_ts, first_site, first_id) f
        JOIN (SELECT bucket, ident, svc, MAX(last_ts) AS last_ts FROM {rows}
              GROUP BY 1, 2, 3) l USING (bucket, ident, svc)
        WINDOW w AS (PARTITION BY f.ident, f.svc ORDER BY f.bucket)) x
    WHERE bucket >= {int(lo)}
      AND NOT COALESCE(pb = bucket - {GAP} AND pl >= first_ts - {GAP}, false)"""
