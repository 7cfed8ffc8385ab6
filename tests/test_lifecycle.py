"""Lifecycle of the real server: reload and stop under load, bind errors, database faults, user."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import dns.exception
import dns.rcode
import pytest
import yaml

from tests.conftest import REPO_ROOT, hostport, query, wait_for
from tests.dnstest import require_tool
from tests.dnstest.daemons import free_port
from tests.dnstest.sinkhole import SERVE_COMMAND

BLOCKED = "chatgpt.com"
STOP_BOUND = 5.0  # SIGTERM under load: exit within this (the contract)


def hits(db: str | Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COALESCE(SUM(count), 0) FROM hits").fetchone()[0]


class Load:
    """A client thread asking a blocked and an allowed name in turn, checking each answer."""

    def __init__(self, address: tuple[str, int], extra: str | None = None) -> None:
        self.address = address
        self.extra = extra
        self.stop = threading.Event()
        self.blocked_answered = 0
        self.errors: list[str] = []
        self.extra_seen: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 60  # bounded even if the test never stops it
        i = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            i += 1
            try:
                r = query(self.address, BLOCKED, timeout=2)
                if r.answer and r.answer[0][0].address == "0.0.0.0":
                    self.blocked_answered += 1
                elif r.rcode() != dns.rcode.NXDOMAIN:  # the reload test switches to nxdomain
                    self.errors.append(f"blocked name answered {r}")
                r = query(self.address, f"host-{i % 30:03d}.example.test", timeout=2)
                if r.answer[0][0].address != f"192.0.2.{i % 30 + 2}":
                    self.errors.append(f"allowed name answered {r}")
                if self.extra:
                    r = query(self.address, self.extra, timeout=2)
                    self.extra_seen.append(r.answer[0][0].address if r.answer else "none")
            except (dns.exception.Timeout, OSError) as exc:
                if not self.stop.is_set():
                    self.errors.append(repr(exc))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


# -- SIGHUP ---------------------------------------------------------------------------------------


def test_sighup_under_load_keeps_old_policy_on_bad_files_and_swaps_whole(sinkhole, tmp_path):
    catalog = tmp_path / "catalog"
    shutil.copytree(REPO_ROOT / "blocklists", catalog)
    chatbots = catalog / "ai-chatbots.yaml"
    good = chatbots.read_text()
    server = sinkhole({"catalog": str(catalog)})
    config_text = server.config_path.read_text()
    with Load(server.address, extra="host-050.example.test") as load:
        # A broken list: the reload fails and the running policy stays.
        chatbots.write_text(good + "\nservices: [\n")
        server.reload()
        assert wait_for(lambda: server.stderr_text().count("reload failed") >= 1)
        # A broken config file: the same.
        server.config_path.write_text(config_text + "\nsinkhole: {mode: blackhole}\n")
        server.reload()
        assert wait_for(lambda: server.stderr_text().count("reload failed") >= 2)
        assert query(server.address, "host-050.example.test").answer[0][0].address != "0.0.0.0"
        # A good change: a new blocked name, several reloads in a row.
        chatbots.write_text(
            good.replace(
                "      - chatgpt.com\n", "      - chatgpt.com\n      - host-050.example.test\n"
            )
        )
        server.config_path.write_text(config_text)
        for _ in range(3):
            server.reload()
        assert wait_for(
            lambda: query(server.address, "host-050.example.test").answer[0][0].address == "0.0.0.0"
        )
        time.sleep(0.5)
    assert not load.errors, load.errors[:3]
    assert load.blocked_answered > 10
    # Never half-loaded: once the new policy served, the old one never came back.
    seen = load.extra_seen
    assert "0.0.0.0" in seen
    first = seen.index("0.0.0.0")
    assert all(a == "0.0.0.0" for a in seen[first:])
    assert server.process.poll() is None


# -- SIGTERM --------------------------------------------------------------------------------------


def test_sigterm_under_load_exits_in_time_with_every_hit_flushed(sinkhole):
    server = sinkhole()
    db = server.config["database"]
    with Load(server.address) as load:
        assert wait_for(lambda: load.blocked_answered >= 50)
        t0 = time.monotonic()
        code = server.stop(signal.SIGTERM)
        elapsed = time.monotonic() - t0
        load.stop.set()
    assert code == 0 and elapsed < STOP_BOUND
    # Every blocked answer a client got is in the database (a hit is queued before
    # the answer leaves, so there may be more hits than answers received, never fewer).
    assert hits(db) >= load.blocked_answered
    assert "could not be written" not in server.stderr_text()
    assert "Traceback" not in server.stderr_text()


# -- bind errors ---------------------------------------------------------------------------


def run_serve(
    args: list[str],
    env_extra: dict | None = None,
    prefix: list[str] | None = None,
    timeout: float = 15.0,
) -> subprocess.CompletedProcess:
    """Start `sinkhole serve`; it must exit by itself (killed by PID if it does not)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **(env_extra or {}))
    proc = subprocess.Popen(
        [*(prefix or []), *SERVE_COMMAND, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"sinkhole serve did not exit: {err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_tcp_port_in_use_is_one_clear_line(upstream, tmp_path):
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        r = run_serve(
            [
                "--listen",
                f"127.0.0.1:{port}",
                "--upstream",
                hostport(upstream.address),
                "--db",
                str(tmp_path / "x.db"),
            ]
        )
    finally:
        busy.close()
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"cannot listen on tcp 127.0.0.1:{port}: address already in use" in lines[0]


def test_missing_permission_to_bind_is_one_clear_line(upstream, tmp_path):
    setpriv = require_tool("setpriv")
    if os.getuid() != 0:
        pytest.skip("needs root to drop the capability for the test")
    # Without CAP_NET_BIND_SERVICE a port below 1024 cannot be bound: nothing listens.
    r = run_serve(
        [
            "--listen",
            "127.0.0.1:853",
            "--upstream",
            hostport(upstream.address),
            "--db",
            str(tmp_path / "x.db"),
        ],
        prefix=[
            setpriv,
            "--bounding-set",
            "-net_bind_service",
            "--inh-caps",
            "-net_bind_service",
            "--",
        ],
    )
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "permission denied" in lines[0], r.stderr


# -- database faults --------------------------------------------------------------------------


def test_corrupt_database_at_startup_does_not_stop_dns(sinkhole, tmp_path):
    db = tmp_path / "corrupt.db"
    db.write_bytes(b"this is not a database" * 200)
    server = sinkhole({"database": str(db)})
    assert query(server.address, BLOCKED).answer[0][0].address == "0.0.0.0"
    assert query(server.address, "host-001.example.test").answer[0][0].address == "192.0.2.3"
    assert server.stop() == 0


@pytest.mark.parametrize("fault", ["deleted", "corrupted"])
def test_database_fault_at_runtime_does_not_stop_dns(sinkhole, fault):
    server = sinkhole()
    db = Path(server.config["database"])
    with Load(server.address) as load:
        assert wait_for(lambda: load.blocked_answered >= 20)
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(db) + suffix)
            if fault == "deleted":
                p.unlink(missing_ok=True)
            elif p.exists():
                p.write_bytes(b"\xde\xad" * 4096)
        seen = load.blocked_answered
        assert wait_for(lambda: load.blocked_answered >= seen + 50)
    assert not load.errors, load.errors[:3]
    assert server.process.poll() is None
    assert server.stop() == 0


# -- privilege -----------------------------------------------------------------------------


def test_drops_to_an_unprivileged_user_and_keeps_recording(sinkhole):
    if os.getuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run this test as root", pytrace=False)
        pytest.skip("needs root")
    nobody = pwd.getpwnam("nobody")
    # The database folder must be writable by that user (SQLite adds -wal and -shm).
    work = Path(tempfile.mkdtemp(prefix="sinkhole-user-"))
    try:
        os.chown(work, nobody.pw_uid, nobody.pw_gid)
        db = work / "sinkhole.db"
        server = sinkhole({"user": "nobody", "database": str(db)}, env={"SINKHOLE_DB": str(db)})
        status = Path(f"/proc/{server.pid}/status").read_text()
        uids = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1:]
        assert uids == [str(nobody.pw_uid)] * 4
        for _ in range(5):
            assert query(server.address, BLOCKED).answer[0][0].address == "0.0.0.0"
        assert query(server.address, "host-001.example.test").answer[0][0].address == "192.0.2.3"
        # Read-only at runtime (the user cannot write, unlike root): DNS goes on and
        # the hits wait in memory until the database is writable again.
        os.chmod(work, 0o555)
        for suffix in ("", "-wal", "-shm"):
            if Path(str(db) + suffix).exists():
                os.chmod(str(db) + suffix, 0o444)
        for _ in range(5):
            assert query(server.address, BLOCKED).answer[0][0].address == "0.0.0.0"
        # Until the recorder's next write has failed: the hits are in memory, not lost.
        assert wait_for(lambda: "hits are kept in memory" in server.stderr_text())
        os.chmod(work, 0o755)
        for suffix in ("", "-wal", "-shm"):
            if Path(str(db) + suffix).exists():
                os.chmod(str(db) + suffix, 0o644)
        assert server.stop() == 0
        assert hits(db) == 10, server.stderr_text()
        assert "Traceback" not in server.stderr_text()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_listen_port_is_free_after_stop(sinkhole):
    port = free_port()
    server = sinkhole({"listen": [f"127.0.0.1:{port}"]})
    assert server.stop() == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # nothing of ours still holds it
    assert yaml.safe_load(server.config_path.read_text())["listen"] == [f"127.0.0.1:{port}"]
