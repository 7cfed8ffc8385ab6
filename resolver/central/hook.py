"""What the server does for the central store: start the shipper, feed /metrics."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING

from resolver.central import outbox

if TYPE_CHECKING:
    from resolver.central.policy import PolicyWatcher
    from resolver.central.shipper import Shipper
    from resolver.server import Server

log = logging.getLogger("sinkhole.central")


def start_shipper(server: Server) -> Shipper | None:
    """The shipper of this server's site, started; None (logged) when it cannot run.

    The outbox is turned on before the first hit is written, retention is told to keep
    unshipped hits, and the recorder re-reads the pseudonym key when the central one
    replaces the local one.
    """
    central = server.config.central
    if central is None:
        return None
    try:
        from resolver.central import psycopg
        from resolver.central.shipper import Shipper

        psycopg()
    except Exception as exc:
        log.error("%s; hits stay in the local database only", exc)
        return None
    from resolver.store.db import connect

    try:
        conn = connect(server.db_path)
        try:
            outbox.install(conn, central.site)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.error("central outbox: %s: %s; the shipper will try again", server.db_path, exc)
    recorder = server.recorder
    # Retention keeps what is not shipped yet (unless outbox_cap_rows is passed).
    recorder.sink = outbox.OutboxSink(server.db_path, central.outbox_cap_rows)

    def adopt_secret() -> None:
        # The recorder reads the key from `settings` again at its next write.
        with recorder._pseudo_lock:
            recorder._secret = None
            recorder._pseudo = None
        log.info("central: using the pseudonym key shared by all sites")

    shipper = Shipper(
        central,
        server.db_path,
        policy_version=lambda: server.policy_version,
        on_secret=adopt_secret,
    )
    shipper.start()
    log.info("central: shipping to %s as site %s", central.dsn.split("?", 1)[0], central.site)
    return shipper


def start_policy_watcher(server: Server, loop) -> PolicyWatcher | None:
    """The thread that copies each new central policy into the site's SQLite file and
    has the server reload it at once (its own poll of the file would within 0.5 s)."""
    central = server.config.central
    if central is None:
        return None
    try:
        from resolver.central import psycopg
        from resolver.central.policy import PolicyWatcher

        psycopg()
    except Exception as exc:
        log.error("%s; enforcing the local policy only", exc)
        return None

    def changed(version: int) -> None:
        # The server's poll of the file reloads a version it has not loaded; the same
        # number with other content (a site that had its own policy) needs a word.
        if server.policy_version == version:
            loop.call_soon_threadsafe(lambda: server.spawn(server.reload_policy(version)))

    watcher = PolicyWatcher(central, server.db_path, changed)
    watcher.start()
    return watcher


def metric_families(shipper: Shipper | None) -> Iterator:
    """/metrics: backlog, shipping lag, central store reachable (nothing without central)."""
    if shipper is None:
        return
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield GaugeMetricFamily(
        "sinkhole_central_reachable",
        "1 while the central store (PostgreSQL) answers the shipper.",
        value=1 if shipper.reachable else 0,
    )
    yield GaugeMetricFamily(
        "sinkhole_central_backlog",
        "Rows (hits and traffic minutes) in the local outbox, not yet in the central store.",
        value=shipper.backlog,
    )
    yield GaugeMetricFamily(
        "sinkhole_central_lag_seconds",
        "Age of the oldest hit not yet shipped to the central store (0: none waits).",
        value=shipper.lag,
    )
    yield CounterMetricFamily(
        "sinkhole_central_shipped_hits",
        "Hits this process shipped to the central store.",
        value=shipper.shipped_hits,
    )
    yield GaugeMetricFamily(
        "sinkhole_central_dropped",
        "Unshipped hits deleted because the outbox reached central.outbox_cap_rows.",
        value=shipper.dropped,
    )
