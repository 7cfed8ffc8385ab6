"""The PostgreSQL harness itself: a real cluster of our own, on loopback, stopped by PID."""

from __future__ import annotations

import os

import psycopg

from tests.pgtest import PgCluster


def test_cluster_answers_on_loopback(pg_cluster: PgCluster, central_dsn: str) -> None:
    with psycopg.connect(central_dsn) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()[0]
        listen = conn.execute("SHOW listen_addresses").fetchone()[0]
        sockets = conn.execute("SHOW unix_socket_directories").fetchone()[0]
    assert int(version) >= 150000
    assert listen == "127.0.0.1"
    assert sockets == str(pg_cluster.sockets)
    assert pg_cluster.port > 1024


def test_stop_and_start_again_keeps_the_data(pg_cluster: PgCluster, central_dsn: str) -> None:
    with psycopg.connect(central_dsn) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    pid = pg_cluster.postmaster_pid()
    assert pid is not None and pg_cluster.running()
    pg_cluster.stop()
    assert not pg_cluster.running()
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
    pg_cluster.start()
    with psycopg.connect(central_dsn) as conn:
        assert conn.execute("SELECT n FROM kept").fetchone()[0] == 42


def test_each_test_gets_a_fresh_database(central_dsn: str) -> None:
    with psycopg.connect(central_dsn) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()[0]
    assert rows == 0
