"""Shared fixtures: the test zone, our authoritative upstream, and real sinkhole servers."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.dnstest.authserver import AuthServer
from tests.dnstest.sinkhole import SinkholeProcess
from tests.dnstest.webserver import WebProcess
from tests.dnstest.zone import Zone, build_zone
from tests.pgtest import PgCluster, PgError, pg_tool

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's config or database."""
    monkeypatch.delenv("SINKHOLE_CONFIG", raising=False)
    monkeypatch.setenv("SINKHOLE_DB", str(tmp_path / "cli.db"))


@pytest.fixture(scope="session")
def zone() -> Zone:
    return build_zone()


@pytest.fixture(scope="module")
def auth(zone: Zone) -> Iterator[AuthServer]:
    """Our authoritative test server for example.test on loopback."""
    with AuthServer(zone) as server:
        yield server


@pytest.fixture
def upstream(auth: AuthServer) -> Iterator[AuthServer]:
    """The module's AuthServer with a clean log and no faults left by another test."""
    auth.faults.clear()
    auth.log.clear()
    yield auth
    auth.faults.clear()


def hostport(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


SinkholeFactory = Callable[..., SinkholeProcess]


@pytest.fixture
def sinkhole(tmp_path: Path, upstream: AuthServer) -> Iterator[SinkholeFactory]:
    """Start real `sinkhole serve` processes; every one is stopped by PID at teardown."""
    started: list[SinkholeProcess] = []

    def start(config: dict[str, Any] | None = None, *, start: bool = True, **kw) -> SinkholeProcess:
        cfg: dict[str, Any] = {
            "upstreams": [hostport(upstream.address)],
            # Tests send thousands of queries from one address.
            "rate_limit": {"per_client": 0},
        }
        cfg.update(config or {})
        work = tmp_path / f"sinkhole{len(started)}"
        work.mkdir()
        cfg.setdefault("database", str(work / "sinkhole.db"))
        # $SINKHOLE_DB would beat the config's database (as it should): point it there.
        env = {"SINKHOLE_DB": cfg["database"], **kw.pop("env", {})}
        proc = SinkholeProcess(cfg, work, env=env, **kw)
        started.append(proc)
        if start:
            proc.start()
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster for the session (tests/pgtest.py), stopped by PID.

    Its folder is a new one under /tmp, not pytest's: those are private to root, and the
    cluster runs as `postgres` when the tests run as root.
    """
    if pg_tool("initdb") is None or pg_tool("pg_ctl") is None:
        message = "PostgreSQL's initdb/pg_ctl are not installed (Debian package postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    pytest.importorskip("psycopg")
    cluster = PgCluster()
    try:
        cluster.create().start()
    except PgError as exc:
        cluster.destroy()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def central_dsn(pg_cluster: PgCluster, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's cluster, for one test."""
    if not pg_cluster.running():
        pg_cluster.start()  # a test that stopped it and failed before starting it again
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    return pg_cluster.create_database(name)


WebFactory = Callable[..., WebProcess]


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[WebFactory]:
    """Real `sinkhole web` processes on free loopback ports; each stopped by PID at teardown.

    dashboard(config, start=True): the config dict of the dashboard (database defaults to a
    fresh file in tmp_path); call .start() later with start=False, after adding users.
    """
    started: list[WebProcess] = []

    def make(config: dict[str, Any] | None = None, *, start: bool = True) -> WebProcess:
        cfg: dict[str, Any] = {"timezone": "Europe/Paris", **(config or {})}
        work = tmp_path / f"web{len(started)}"
        cfg.setdefault("database", str(work / "sinkhole.db"))
        proc = WebProcess(cfg, work)
        started.append(proc)
        if start:
            proc.start()
        return proc

    yield make
    for proc in started:
        proc.stop()


def query(
    address: tuple[str, int],
    name: str,
    rdtype: str = "A",
    *,
    tcp: bool = False,
    edns: bool = True,
    do: bool = False,
    timeout: float = 5.0,
    payload: int = 1232,
) -> dns.message.Message:
    """Ask with dnspython over UDP or TCP."""
    q = dns.message.make_query(
        name, rdtype, use_edns=0 if edns else False, want_dnssec=do, payload=payload
    )
    host, port = address
    if tcp:
        return dns.query.tcp(q, host, port=port, timeout=timeout)
    return dns.query.udp(q, host, port=port, timeout=timeout, ignore_trailing=True)


def raw_udp(address: tuple[str, int], packet: bytes, timeout: float = 2.0) -> bytes | None:
    """Send raw bytes; the answer, or None when nothing came back in time."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, address)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def raw_tcp(address: tuple[str, int], packet: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(struct.pack("!H", len(packet)) + packet)
        size = struct.unpack("!H", _recv_exactly(s, 2))[0]
        return _recv_exactly(s, size)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = False, **kw):
    """The real `sinkhole` command in a subprocess."""
    environ = dict(os.environ)
    environ["PYTHONPATH"] = str(REPO_ROOT)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "resolver", *args],
        capture_output=True,
        text=True,
        env=environ,
        check=check,
        timeout=120,
        **kw,
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
