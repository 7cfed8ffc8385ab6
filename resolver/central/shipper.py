"""The shipper: sends the site's outbox to the central store, in its own thread.

DNS never waits on it: it reads the local SQLite file with its own connection, talks to
PostgreSQL with its own, and sleeps when there is nothing to send or PostgreSQL is away.
Each batch goes in one PostgreSQL transaction (COPY into a temporary table, then one
INSERT ... ON CONFLICT DO NOTHING into `hits`, whose really inserted rows feed the
rollups of resolver/central/rollups.py, and an upsert of the traffic minutes); the outbox
rows leave SQLite only after that commit. A batch that is sent again (the site died
between the commit and the outbox delete) is stored once. While PostgreSQL is unreachable
the rows wait.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from resolver import __version__
from resolver.central import CentralError, connect, first_line, outbox, psycopg, rollups
from resolver.central.schema import ensure_partitions, require_schema
from resolver.config import CentralConfig
from resolver.errors import SinkholeError

log = logging.getLogger("sinkhole.central")

#: Seconds between two looks at an empty outbox; a full batch is followed at once.
IDLE_INTERVAL = 1.0
#: Seconds between reconnection attempts while PostgreSQL is away (doubling to the max).
RETRY_MIN, RETRY_MAX = 1.0, 15.0
#: Seconds between two updates of this site's row in `sites` when nothing is shipped.
HEARTBEAT = 5.0

HIT_COLUMNS = (
    "local_id, ts, client, client_group, qname, qtype, service, category, rule, action, count"
)
TRAFFIC_COLUMNS = ("queries", "blocked", "forwarded", "cached", "failed", "refused", "recorder_lag")


#: The advisory lock one shipper per site holds (worker processes share the database).
SITE_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext('sinkhole ship ' || %s))"


class Shipper:
    """Ships one site's SQLite outbox to PostgreSQL until stop()."""

    def __init__(
        self,
        central: CentralConfig,
        db_path: str,
        *,
        policy_version: Callable[[], int | None] = lambda: None,
        on_secret: Callable[[], None] | None = None,
        exclusive: bool = True,
    ) -> None:
        self.central = central
        self.site = central.site
        self.db_path = db_path
        self.policy_version = policy_version
        self.on_secret = on_secret
        #: Ship only while holding the site's lock (False: `central push`, alongside).
        self.exclusive = exclusive
        self._installed = False
        self.reachable = False
        self.fault: str | None = None
        self.backlog = 0
        self.oldest_unshipped: int | None = None
        self.dropped = 0
        self.first_start: int | None = None
        self.shipped_hits = 0
        self.shipped_traffic = 0
        self.last_shipped: float | None = None
        self._conn = None
        self._partitions: set[str] = set()
        self._lock_held = False
        self._last_beat = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="central-shipper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._close()

    @property
    def lag(self) -> float:
        """Seconds since the oldest hit still waiting was recorded (0: none waits)."""
        if self.oldest_unshipped is None:
            return 0.0
        return max(0.0, time.time() - self.oldest_unshipped)

    def _run(self) -> None:
        retry = RETRY_MIN
        while not self._stop.is_set():
            try:
                sent = self.ship_once()
                retry = RETRY_MIN
                if sent < self.central.batch_rows:
                    self._stop.wait(IDLE_INTERVAL)
            except SinkholeError as exc:  # unreachable, or a schema it does not know
                self._down(str(exc))
                self._stop.wait(retry)
                retry = min(retry * 2, RETRY_MAX)
            except sqlite3.Error as exc:
                self._set_fault(f"local database {self.db_path}: {exc}")
                self._stop.wait(retry)
                retry = min(retry * 2, RETRY_MAX)
            except Exception as exc:  # psycopg's errors, and anything else: never die
                pg = psycopg()
                if isinstance(exc, pg.Error):
                    self._down(f"central store: {first_line(exc)}")
                else:
                    log.exception("central shipper: unexpected error")
                    self._set_fault(f"central shipper: {first_line(exc)}")
                self._stop.wait(retry)
                retry = min(retry * 2, RETRY_MAX)

    def _down(self, message: str) -> None:
        self.reachable = False
        self._close()
        self._set_fault(message)

    def _set_fault(self, fault: str | None) -> None:
        # One line when a fault starts and one when it ends, never one per attempt.
        if fault is not None and self.fault is None:
            log.warning("%s; rows wait in the local database until it is back", fault)
        elif fault is None and self.fault is not None:
            log.warning("central store reachable again; shipping the backlog")
        self.fault = fault

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        self._lock_held = False
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    # -- PostgreSQL ---------------------------------------------------------------------
    def _central(self):
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = connect(self.central)
        try:
            require_schema(conn)
            (got,) = conn.execute(SITE_LOCK_SQL, (self.site,)).fetchone()
            self._conn = conn
            self._lock_held = bool(got)
            self._share_secret(conn)
            conn.execute(
                "INSERT INTO sites (site, last_seen, software_version) VALUES (%s, now(), %s) "
                "ON CONFLICT (site) DO UPDATE SET last_seen = now(), "
                "software_version = excluded.software_version",
                (self.site, __version__),
            )
        except BaseException:
            self._conn = None
            conn.close()
            raise
        self.reachable = True
        self._set_fault(None)
        return conn

    def _share_secret(self, conn) -> None:
        """One pseudonym key for all sites: the first site's, kept centrally."""
        local = self._local()
        try:
            row = local.execute("SELECT value FROM settings WHERE key = 'client_secret'").fetchone()
            conn.execute(
                "INSERT INTO central_meta VALUES ('client_secret', %s) ON CONFLICT DO NOTHING",
                (row[0] if row else _new_secret(),),
            )
            (shared,) = conn.execute(
                "SELECT value FROM central_meta WHERE key = 'client_secret'"
            ).fetchone()
            if row is None or row[0] != shared:
                local.execute(
                    "INSERT INTO settings VALUES ('client_secret', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (shared,),
                )
                local.commit()
                if self.on_secret is not None:
                    self.on_secret()
        finally:
            local.close()

    def _local(self) -> sqlite3.Connection:
        from resolver.store.db import connect as sqlite_connect

        return sqlite_connect(self.db_path)

    # -- one batch ----------------------------------------------------------------------
    def ship_once(self) -> int:
        """Send one batch of waiting hits and traffic minutes; the number of rows sent."""
        local = self._local()
        try:
            if not self._installed:
                outbox.install(local, self.site)
                self._installed = True
            self._count(local)
            conn = self._central()
            if self.exclusive and not self._lock_held:
                # Another worker process of this site ships; try for the lock again later.
                (got,) = conn.execute(SITE_LOCK_SQL, (self.site,)).fetchone()
                self._lock_held = bool(got)
                if not self._lock_held:
                    self._heartbeat(conn, force=False)
                    return 0
            n = self.central.batch_rows
            hits = local.execute(
                "SELECT h.id, h.ts, h.client, h.client_group, h.qname, h.qtype, h.service, "
                "h.category, h.rule, h.action, h.count FROM central_hits_outbox o "
                "JOIN hits h ON h.id = o.hit_id ORDER BY o.hit_id LIMIT ?",
                (n,),
            ).fetchall()
            traffic = local.execute(
                f"SELECT t.minute, {', '.join('t.' + c for c in TRAFFIC_COLUMNS)}, o.rev "
                "FROM central_traffic_outbox o JOIN traffic t ON t.minute = o.minute "
                "ORDER BY o.minute LIMIT ?",
                (n,),
            ).fetchall()
            if not hits and not traffic:
                self._heartbeat(conn, force=False)
                return 0
            stamps = [h[1] for h in hits] + [t[0] for t in traffic]
            ensure_partitions(conn, min(stamps), max(stamps), self._partitions)
            inserted = self._send(conn, hits, traffic)
            # Committed in PostgreSQL: now, and only now, the outbox rows may go.
            local.execute("BEGIN IMMEDIATE")
            local.executemany(
                "DELETE FROM central_hits_outbox WHERE hit_id = ?", [(h[0],) for h in hits]
            )
            local.executemany(
                "DELETE FROM central_traffic_outbox WHERE minute = ? AND rev = ?",
                [(t[0], t[-1]) for t in traffic],
            )
            local.execute("COMMIT")
            self.shipped_hits += inserted
            self.shipped_traffic += len(traffic)
            self.last_shipped = time.time()
            self._count(local)
            self._heartbeat(conn, force=True)
            return len(hits) + len(traffic)
        finally:
            if local.in_transaction:
                local.execute("ROLLBACK")
            local.close()

    def _send(self, conn, hits: list[tuple], traffic: list[tuple]) -> int:
        """One PostgreSQL transaction; the number of hits it really inserted."""
        inserted = 0
        with conn.transaction(), conn.cursor() as cur:
            if hits:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS stage_hits (local_id bigint, ts bigint, "
                    "client text, client_group text, qname text, qtype text, service text, "
                    "category text, rule text, action text, count integer) "
                    "ON COMMIT DELETE ROWS"
                )
                with cur.copy(f"COPY stage_hits ({HIT_COLUMNS}) FROM STDIN") as copy:
                    for row in hits:
                        copy.write_row(row)
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS ins_hits (local_id bigint, ts bigint, "
                    "client text, client_group text, qname text, service text, "
                    "category text, count integer) ON COMMIT DELETE ROWS"
                )
                cur.execute(
                    f"""WITH ins AS (
                        INSERT INTO hits (site, {HIT_COLUMNS})
                        SELECT %(site)s, {HIT_COLUMNS} FROM stage_hits
                        ON CONFLICT DO NOTHING
                        RETURNING local_id, ts, client, client_group, qname, service,
                                  category, count)
                    INSERT INTO ins_hits SELECT * FROM ins""",
                    {"site": self.site},
                )
                # The rollups from the hits this batch really inserted, not those a
                # repeated batch brought again (resolver/central/rollups.py).
                rollups.add_batch(cur, self.site)
                cur.execute("SELECT COUNT(*) FROM ins_hits")
                (inserted,) = cur.fetchone()
            if traffic:
                cols = ", ".join(TRAFFIC_COLUMNS)
                cur.executemany(
                    f"INSERT INTO traffic (site, minute, {cols}) VALUES "
                    f"(%s, %s, {', '.join(['%s'] * len(TRAFFIC_COLUMNS))}) "
                    "ON CONFLICT (site, minute) DO UPDATE SET "
                    + ", ".join(f"{c} = excluded.{c}" for c in TRAFFIC_COLUMNS),
                    [(self.site, *t[:-1]) for t in traffic],
                )
            cur.execute(
                "UPDATE sites SET last_shipped = now(), last_seen = now(), "
                "shipped_hits = shipped_hits + %s WHERE site = %s",
                (inserted, self.site),
            )
        return inserted

    def _count(self, local: sqlite3.Connection) -> None:
        st = outbox.state(local)
        if st["dropped"] > self.dropped:
            log.error(
                "central outbox full (%d hits): %d unshipped hits deleted by retention so far",
                self.central.outbox_cap_rows,
                st["dropped"],
            )
        self.backlog = st["backlog"] + st["backlog_traffic"]
        self.oldest_unshipped = st["oldest_unshipped"]
        self.dropped = st["dropped"]
        row = local.execute("SELECT value FROM settings WHERE key = 'first_start'").fetchone()
        self.first_start = int(row[0]) if row else None

    def _heartbeat(self, conn, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_beat < HEARTBEAT:
            return
        self._last_beat = now
        conn.execute(
            "UPDATE sites SET last_seen = now(), backlog = %s, oldest_unshipped = %s, "
            "dropped = %s, policy_version = %s, software_version = %s, "
            "first_start = LEAST(first_start, %s) WHERE site = %s",
            (
                self.backlog,
                self.oldest_unshipped,
                self.dropped,
                self.policy_version(),
                __version__,
                self.first_start,
                self.site,
            ),
        )


def _new_secret() -> str:
    import secrets

    return secrets.token_hex(32)


def ship_all(central: CentralConfig, db_path: str) -> tuple[int, int]:
    """Ship the whole outbox now (`sinkhole central push`); (rows sent, backlog left).

    Raises:
        CentralError: the central store is unreachable.
    """
    shipper = Shipper(central, db_path, exclusive=False)
    total = 0
    pg = psycopg()
    try:
        while True:
            sent = shipper.ship_once()
            total += sent
            if sent == 0:
                break
    except pg.Error as exc:
        raise CentralError(f"central store: {first_line(exc)}") from None
    finally:
        shipper._close()
    return total, shipper.backlog
