"""The deploy/ files agree with the code: config keys, CLI commands and options, ports, unit."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from resolver.cli import cli
from resolver.config import load_config, parse_hostport
from tests.conftest import REPO_ROOT, run_cli

DEPLOY = REPO_ROOT / "deploy"
EXAMPLE_CONFIG = DEPLOY / "config.example.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "sinkhole.service"
#: Where both the image and the unit expect the production config.
CONFIG_PATH = "/etc/sinkhole/config.yaml"


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        word, _, args = pending.partition(" ")
        out.append((word.upper(), args.strip()))
        pending = ""
    return out


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT/CMD (shell form would hide signals)."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def unit_values(path: Path = UNIT) -> dict[str, list[str]]:
    """KEY -> every value it is given in the unit (keys may repeat)."""
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        values.setdefault(key.strip(), []).append(value.strip())
    return values


def parse_sinkhole_args(args: list[str]) -> tuple[str, dict]:
    """Resolve `sinkhole ARGS` to its click command and parsed options, as the CLI would.

    An unknown command or option fails here with click's own usage error.
    """
    command: click.Command = cli
    path = []
    rest = list(args)
    while isinstance(command, click.Group):
        assert rest, f"`sinkhole {shlex.join(args)}` names no subcommand"
        name, rest = rest[0], rest[1:]
        assert name in command.commands, f"`sinkhole {name}`: no such command"
        command = command.commands[name]
        path.append(name)
    ctx = command.make_context(" ".join(["sinkhole", *path]), rest)
    return " ".join(path), ctx.params


def example_ports() -> set[str]:
    """The ports the example config listens on, as EXPOSE writes them."""
    config = load_config(EXAMPLE_CONFIG)
    ports = set()
    for _, port in config.listen_addresses():
        ports |= {f"{port}/udp", f"{port}/tcp"}
    _, metrics_port = parse_hostport(config.metrics_listen, 9153)
    ports.add(f"{metrics_port}/tcp")
    return ports


def test_example_config_passes_config_check() -> None:
    result = run_cli("config", "check", "--config", str(EXAMPLE_CONFIG))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_example_config_is_a_production_config() -> None:
    config = load_config(EXAMPLE_CONFIG)
    assert set(config.listen) == {"0.0.0.0:53", "[::]:53"}
    assert len(config.upstreams) == 2
    assert config.clients.groups, "client groups are part of the example"
    assert config.privacy.clients == "hashed"
    assert config.metrics_listen
    # Both the unit (StateDirectory) and the image (VOLUME) keep state in /var/lib/sinkhole.
    assert Path(config.database).parent == Path("/var/lib/sinkhole")


def test_dockerfile_runs_a_real_cli_command_on_the_shipped_config() -> None:
    instr = dockerfile_instructions()
    entrypoint = [exec_form(a) for w, a in instr if w == "ENTRYPOINT"]
    cmd = [exec_form(a) for w, a in instr if w == "CMD"]
    assert len(entrypoint) == 1 and len(cmd) == 1
    argv = entrypoint[0] + cmd[0]
    assert argv[0] == "sinkhole"
    command, params = parse_sinkhole_args(argv[1:])
    assert command == "serve"
    assert params["config_path"] == CONFIG_PATH
    copies = [a.split() for w, a in instr if w == "COPY"]
    assert ["deploy/config.example.yaml", CONFIG_PATH] in copies


def test_dockerfile_base_user_and_volume() -> None:
    instr = dockerfile_instructions()
    assert instr[0] == ("FROM", "python:3.11-slim")
    users = [a for w, a in instr if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the server must not run as root"
    volumes = " ".join(a for w, a in instr if w == "VOLUME")
    assert "/var/lib/sinkhole" in volumes
    # Port 53 as a non-root user needs the capability somewhere in the build.
    assert any("cap_net_bind_service" in a for w, a in instr if w == "RUN")


def test_dockerfile_exposes_the_example_config_ports() -> None:
    exposed = set()
    for word, args in dockerfile_instructions():
        if word == "EXPOSE":
            exposed |= {p if "/" in p else f"{p}/tcp" for p in args.split()}
    assert exposed == example_ports()


def test_dockerfile_healthcheck_asks_health_on_the_metrics_port() -> None:
    checks = [a for w, a in dockerfile_instructions() if w == "HEALTHCHECK"]
    assert len(checks) == 1
    config = load_config(EXAMPLE_CONFIG)
    _, port = parse_hostport(config.metrics_listen, 9153)
    assert re.search(rf"http://127\.0\.0\.1:{port}/health\b", checks[0]), checks[0]


def test_unit_runs_a_real_cli_command_on_the_production_config() -> None:
    values = unit_values()
    (exec_start,) = values["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "sinkhole"
    command, params = parse_sinkhole_args(argv[1:])
    assert command == "serve"
    assert params["config_path"] == CONFIG_PATH


def test_unit_is_unprivileged_and_hardened() -> None:
    values = unit_values()
    last = {k: v[-1] for k, v in values.items()}
    assert last.get("User") not in (None, "root") or last.get("DynamicUser") == "yes"
    assert last["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert last["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert last["StateDirectory"] == "sinkhole"
    assert "-HUP" in last["ExecReload"] and "$MAINPID" in last["ExecReload"]
    for key, want in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
    }.items():
        assert last.get(key) == want, key
    assert "@system-service" in values["SystemCallFilter"]
    families = set(last["RestrictAddressFamilies"].split())
    # asyncio needs AF_UNIX for its self-pipe; DNS needs both IP families.
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing in CI: install the systemd package")
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart exists: point it at this interpreter running the CLI.
    text = UNIT.read_text()
    exec_start = shlex.split(unit_values()["ExecStart"][0])
    real = shlex.join([sys.executable, "-m", "resolver", *exec_start[1:]])
    copy = tmp_path / "sinkhole.service"
    copy.write_text(re.sub(r"(?m)^ExecStart=.*$", lambda _m: f"ExecStart={real}", text))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    output = (result.stdout + result.stderr).strip()
    # verify prints unknown keys and bad values but still exits 0: any line about our
    # unit is an error. Lines about the host's own units are not ours to judge.
    ours = [line for line in output.splitlines() if str(copy) in line or "sinkhole" in line]
    assert result.returncode == 0 and not ours, output


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is reported."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    copy = tmp_path / "sinkhole.service"
    copy.write_text(
        re.sub(
            r"(?m)^ExecStart=.*$",
            f"ExecStart={sys.executable} -m resolver serve\nProtectSytem=strict",
            UNIT.read_text(),
        )
    )
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert "ProtectSytem" in result.stdout + result.stderr


LISTS_UPDATE = DEPLOY / "sinkhole-lists-update.service"
LISTS_TIMER = DEPLOY / "sinkhole-lists-update.timer"


def test_lists_update_unit_runs_the_real_command_weekly() -> None:
    (exec_start,) = unit_values(LISTS_UPDATE)["ExecStart"]
    argv = shlex.split(exec_start)
    command, _params = parse_sinkhole_args(argv[1:])
    assert command == "lists update"
    assert unit_values(LISTS_UPDATE)["Environment"] == [f"SINKHOLE_CONFIG={CONFIG_PATH}"]
    timer = unit_values(LISTS_TIMER)
    assert timer["Unit"] == [LISTS_UPDATE.name]
    assert timer["OnCalendar"][0].startswith("Sun ")


def test_systemd_analyze_verify_accepts_the_lists_update_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing in CI: install the systemd package")
        pytest.skip("systemd-analyze is not installed")
    exec_start = shlex.split(unit_values(LISTS_UPDATE)["ExecStart"][0])
    real = shlex.join([sys.executable, "-m", "resolver", *exec_start[1:]])
    service = tmp_path / LISTS_UPDATE.name
    service.write_text(
        re.sub(r"(?m)^ExecStart=.*$", lambda _m: f"ExecStart={real}", LISTS_UPDATE.read_text())
    )
    timer = tmp_path / LISTS_TIMER.name
    timer.write_text(LISTS_TIMER.read_text())
    result = subprocess.run(
        [analyze, "verify", str(service), str(timer)], capture_output=True, text=True, timeout=60
    )
    output = (result.stdout + result.stderr).strip()
    ours = [line for line in output.splitlines() if str(tmp_path) in line or "sinkhole" in line]
    assert result.returncode == 0 and not ours, output


WEB_UNIT = DEPLOY / "sinkhole-web.service"


def test_web_unit_runs_the_dashboard_on_the_production_config() -> None:
    values = unit_values(WEB_UNIT)
    (exec_start,) = values["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "sinkhole"
    command, params = parse_sinkhole_args(argv[1:])
    assert command == "web"
    assert params["config_path"] == CONFIG_PATH
    last = {k: v[-1] for k, v in values.items()}
    # The same user and state directory as the DNS server: one database.
    assert last["User"] == unit_values()["User"][-1] and last["StateDirectory"] == "sinkhole"
    assert last["CapabilityBoundingSet"] == "" and last["NoNewPrivileges"] == "yes"
    assert last["ProtectSystem"] == "strict"


def test_systemd_analyze_verify_accepts_the_web_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing in CI: install the systemd package")
        pytest.skip("systemd-analyze is not installed")
    exec_start = shlex.split(unit_values(WEB_UNIT)["ExecStart"][0])
    real = shlex.join([sys.executable, "-m", "resolver", *exec_start[1:]])
    copy = tmp_path / "sinkhole-web.service"
    text = WEB_UNIT.read_text()
    copy.write_text(re.sub(r"(?m)^ExecStart=.*$", lambda _m: f"ExecStart={real}", text))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    output = (result.stdout + result.stderr).strip()
    ours = [line for line in output.splitlines() if str(copy) in line or "sinkhole" in line]
    assert result.returncode == 0 and not ours, output
