"""Several worker processes on one port (SO_REUSEPORT), supervised and feeding one database."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

import dns.message
import dns.query

from tests.conftest import query


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def udp_ports_of(pid: int) -> set[int]:
    """Local ports of the UDP sockets a process holds (from /proc, no external tool)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].split(":")[1], 16))
    return ports


def ask_from_many_ports(address, name: str, count: int) -> int:
    """Send from `count` different source ports (the kernel spreads them over workers)."""
    answered = 0
    for _ in range(count):
        q = dns.message.make_query(name, "A")
        r = dns.query.udp(q, address[0], port=address[1], timeout=3)
        if r.answer and r.answer[0][0].address == "0.0.0.0":
            answered += 1
    return answered


def test_two_workers_share_the_port_and_record_every_hit(sinkhole):
    server = sinkhole({"workers": 2})
    port = server.address[1]
    deadline = time.monotonic() + 10
    kids: list[int] = []
    while time.monotonic() < deadline:
        kids = children(server.pid)
        if len(kids) == 2 and all(port in udp_ports_of(k) for k in kids):
            break
        time.sleep(0.1)
    assert len(kids) == 2
    assert all(port in udp_ports_of(k) for k in kids)
    assert ask_from_many_ports(server.address, "chatgpt.com", 300) == 300
    assert server.stop() == 0
    with sqlite3.connect(server.config["database"]) as db:
        total = db.execute("SELECT SUM(count) FROM hits WHERE qname = 'chatgpt.com'").fetchone()
    # 300 answers plus nothing else: the readiness probe is not a blocked name.
    assert total[0] == 300


def test_a_dead_worker_is_replaced_and_dns_goes_on(sinkhole):
    server = sinkhole({"workers": 2})
    port = server.address[1]
    deadline = time.monotonic() + 10
    while len(children(server.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    victim = children(server.pid)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    replaced = False
    while time.monotonic() < deadline:
        kids = children(server.pid)
        if len(kids) == 2 and victim not in kids and all(port in udp_ports_of(k) for k in kids):
            replaced = True
            break
        time.sleep(0.2)
    assert replaced
    assert query(server.address, "chatgpt.com").answer[0][0].address == "0.0.0.0"
    assert server.stop() == 0


def test_workers_port_in_use_exits_with_one_line(sinkhole):
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        server = sinkhole(
            {"workers": 2, "listen": [f"127.0.0.1:{busy.getsockname()[1]}"]}, start=False
        )
        try:
            server.start(timeout=8)
        except Exception:  # noqa: BLE001 - expected: it never answers
            pass
        assert server.process.wait(10) != 0
        assert "address already in use" in server.stderr_text()
        assert "Traceback" not in server.stderr_text()
    finally:
        busy.close()
