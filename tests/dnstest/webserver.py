"""Runs the real dashboard (`python -m resolver web`) as a subprocess for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .daemons import free_port, stop_by_pid

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0


class WebStartError(RuntimeError):
    """The dashboard exited early or never answered /health; the message holds its stderr."""


class WebProcess:
    """`sinkhole web` on a free loopback port, configured from a dict, stopped by its PID."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.config = dict(config)
        web = dict(self.config.get("web") or {})
        web.setdefault("listen", f"127.0.0.1:{free_port()}")
        self.config["web"] = web
        self.config.setdefault("metrics_listen", "")
        self.config_path = self.workdir / "web.yaml"
        self.stderr_path = self.workdir / "web.stderr"
        self.process: subprocess.Popen[bytes] | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    @property
    def url(self) -> str:
        return f"http://{self.config['web']['listen']}"

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["SINKHOLE_DB"] = self.config["database"]
        return env

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def start(self) -> WebProcess:
        with open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "resolver", "web", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=self.workdir,
                env=self.environ(),
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise WebStartError(f"sinkhole web exited early:\n{self.stderr_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise WebStartError(f"no /health within {START_TIMEOUT}s:\n{self.stderr_text()}")
            time.sleep(0.1)

    def stop(self) -> int | None:
        return stop_by_pid(self.process)

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        """The real `sinkhole` command on this dashboard's config and database."""
        return subprocess.run(
            [sys.executable, "-m", "resolver", *args, "--config", str(self.config_path)],
            input=input,
            capture_output=True,
            text=True,
            env=self.environ(),
            timeout=120,
        )

    def add_user(self, name: str, role: str, password: str) -> None:
        r = self.cli("users", "add", name, "--role", role, "--password-stdin", input=password)
        assert r.returncode == 0, r.stderr
