"""A throwaway PostgreSQL 15 cluster for the central-store tests (issue 14).

initdb + pg_ctl in a temp folder, listening on a free loopback high port, its unix socket
inside that folder. initdb and the postmaster refuse to run as root: when the tests run
as root the cluster belongs to the `postgres` user (the folder is chowned to it and every
PostgreSQL program is started through `runuser -u postgres --`). The cluster is stopped
with `pg_ctl stop -m fast` and, should that fail, by the postmaster's own PID.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.dnstest import find_tool
from tests.dnstest.daemons import free_port

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin")
START_TIMEOUT = 60
PG_USER = "postgres"


class PgError(RuntimeError):
    """The cluster could not be created or started; the message holds its log."""


def pg_tool(name: str) -> str | None:
    """The path of a PostgreSQL program: Debian's versioned folder first, then PATH."""
    for folder in PG_BIN_DIRS:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return find_tool(name)


class PgCluster:
    """One PostgreSQL cluster of our own; `dsn(db)` for clients, `stop()` by PID."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="sinkhole-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log_path = self.root / "postgres.log"
        self.port = 0
        self.user = "sinkhole"
        self.as_root = os.geteuid() == 0
        self.initdb = pg_tool("initdb")
        self.pg_ctl = pg_tool("pg_ctl")
        if self.initdb is None or self.pg_ctl is None:
            raise PgError("initdb/pg_ctl not found (Debian package postgresql)")

    # -- running PostgreSQL's programs as their user ------------------------------------
    def _argv(self, argv: list[str]) -> list[str]:
        if self.as_root:
            return ["runuser", "-u", PG_USER, "--", *argv]
        return argv

    def _run(self, argv: list[str], timeout: float = START_TIMEOUT) -> str:
        done = subprocess.run(
            self._argv(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
        )
        if done.returncode != 0:
            raise PgError(
                f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
                f"\n{self.log_text()}"
            )
        return done.stdout

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # -- life cycle ---------------------------------------------------------------------
    def create(self) -> PgCluster:
        """initdb a new cluster that trusts loopback and its socket (no password)."""
        self.sockets.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            owner = pwd.getpwnam(PG_USER)
            for path in (self.root, self.sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run(
            [
                self.initdb,
                "-D",
                str(self.data),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        return self

    def start(self) -> PgCluster:
        """Start the postmaster on a free loopback port and wait until it accepts clients."""
        if not self.port:
            self.port = free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.sockets} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
        )
        self._run(
            [
                self.pg_ctl,
                "-D",
                str(self.data),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-w",
                "-t",
                str(START_TIMEOUT),
                "start",
            ]
        )
        return self

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        """pg_ctl stop -m fast; then SIGQUIT/SIGKILL the postmaster's PID if still there."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        try:
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"], 30)
        except (PgError, subprocess.TimeoutExpired):
            pass
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- clients ------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its DSN."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)
