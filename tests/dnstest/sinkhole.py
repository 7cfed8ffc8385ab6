"""Runs the real sinkhole server (`python -m resolver serve`) as a subprocess for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import dns.message
import yaml

from .daemons import free_port, probe_socket, stop_by_pid

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
PROBE_INTERVAL = 0.2
PROBE_NAME = "sinkhole-probe.example.test."
SERVE_COMMAND = (sys.executable, "-m", "resolver", "serve")


class SinkholeStartError(RuntimeError):
    """The server under test exited early or never answered; the message holds its stderr."""


def parse_listen(spec: str) -> tuple[str, int]:
    """'127.0.0.1:1053' or '[::1]:1053' -> (host, port)."""
    host, _, port = spec.rpartition(":")
    return host.strip("[]"), int(port)


class SinkholeProcess:
    """The sinkhole server in a subprocess, configured from a dict, stopped by its PID."""

    def __init__(
        self,
        config: Mapping[str, Any],
        tmp_path: Path,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = SERVE_COMMAND,
        probe_name: str = PROBE_NAME,
    ) -> None:
        self.tmp_path = Path(tmp_path)
        self.config: dict[str, Any] = dict(config)
        #: the listen port is ours to change if another socket takes it before the server binds
        self.port_chosen_here = "listen" not in self.config
        self.config.setdefault("listen", [f"127.0.0.1:{free_port()}"])
        self.config.setdefault("database", str(self.tmp_path / "sinkhole.db"))
        self.config.setdefault("metrics_listen", "")
        self.config_path = self.tmp_path / "sinkhole.yaml"
        self.stdout_path = self.tmp_path / "sinkhole.stdout"
        self.stderr_path = self.tmp_path / "sinkhole.stderr"
        self.args = list(args)
        self.env = dict(env) if env is not None else None
        #: the program before `--config`; tests of this helper swap in a stand-in
        self.command = list(command)
        self.probe_name = probe_name
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the first listen address."""
        return parse_listen(self.config["listen"][0])

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("sinkhole is not started")
        return self.process.pid

    @property
    def argv(self) -> list[str]:
        return [*self.command, "--config", str(self.config_path), *self.args]

    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far."""
        if not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")

    def stdout_text(self) -> str:
        if not self.stdout_path.exists():
            return ""
        return self.stdout_path.read_text(errors="replace")

    def _environ(self) -> dict[str, str]:
        environ = dict(os.environ)
        # `-m resolver` must import the checkout even though we run in tmp_path.
        paths = [str(REPO_ROOT), environ.get("PYTHONPATH", "")]
        environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        environ.update(self.env or {})
        return environ

    def start(self, timeout: float = START_TIMEOUT) -> SinkholeProcess:
        """Write the config, start the server and wait until it answers a UDP query.

        A port that free_port() chose can be taken by another socket before the
        server binds it (the kernel hands it out as an ephemeral port): then the
        server is started again on a new one, at most twice.
        """
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except SinkholeStartError as exc:
                if not (self.port_chosen_here and attempt < 2 and "in use" in str(exc)):
                    raise
                self.process = None
                self.config["listen"] = [f"127.0.0.1:{free_port()}"]
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> SinkholeProcess:
        if self.process is not None:
            raise RuntimeError("sinkhole already started")
        self.tmp_path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.tmp_path,
                env=self._environ(),
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except SinkholeStartError:
            self.stop(timeout=2)
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        host, port = self.address
        deadline = time.monotonic() + timeout
        sent: set[int] = set()
        # One socket for all probes: a slow answer (e.g. SERVFAIL after an upstream
        # timeout) to an early probe still counts.
        with probe_socket(host, port) as sock:
            sock.connect((host, port))
            while True:
                if self.process.poll() is not None:
                    raise SinkholeStartError(
                        f"sinkhole exited early with code {self.process.returncode}; "
                        f"stderr:\n{self.stderr_text()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SinkholeStartError(
                        f"sinkhole gave no DNS answer on {host}:{port} within {timeout}s; "
                        f"stderr:\n{self.stderr_text()}"
                    )
                query = dns.message.make_query(self.probe_name, "A")
                sent.add(query.id)
                try:
                    sock.send(query.to_wire())
                except OSError:
                    pass  # ECONNREFUSED from an earlier probe: not listening yet
                sock.settimeout(min(PROBE_INTERVAL, remaining))
                try:
                    while True:
                        data = sock.recv(65535)
                        # QR set: an answer, never our own query come back to us.
                        if (
                            len(data) >= 12
                            and data[2] & 0x80
                            and int.from_bytes(data[:2], "big") in sent
                        ):
                            return
                except (TimeoutError, ConnectionRefusedError):
                    continue
                except OSError:
                    time.sleep(PROBE_INTERVAL)

    def reload(self) -> None:
        """Send SIGHUP to the server's PID."""
        os.kill(self.pid, signal.SIGHUP)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Send SIG to the PID, SIGKILL it after TIMEOUT; return the exit code (idempotent)."""
        return stop_by_pid(self.process, sig, timeout)

    def __enter__(self) -> SinkholeProcess:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
