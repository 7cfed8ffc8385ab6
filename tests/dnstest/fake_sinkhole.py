"""A stand-in for `python -m resolver serve` used to test SinkholeProcess itself."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

import yaml
from dnslib import QTYPE, RR, A, DNSRecord


def main(argv: list[str] | None = None) -> int:
    """Answer every A query with 0.0.0.0 on the config's first listen address until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--exit-early", type=int, default=None, help="exit with this code")
    parser.add_argument("--ignore-term", action="store_true", help="survive SIGTERM")
    parser.add_argument("--never-listen", action="store_true", help="run but never answer")
    parser.add_argument("--echo", action="store_true", help="send each query back unchanged")
    parser.add_argument(
        "--in-use-once",
        metavar="FILE",
        help="the first start (FILE absent) exits as a server whose port was taken",
    )
    opts = parser.parse_args(argv)
    with open(opts.config) as f:
        config = yaml.safe_load(f)
    print(f"config database={config.get('database')}", file=sys.stderr, flush=True)
    if opts.exit_early is not None:
        print("fatal: told to exit early", file=sys.stderr, flush=True)
        return opts.exit_early
    host, _, port = config["listen"][0].rpartition(":")
    if opts.in_use_once and not Path(opts.in_use_once).exists():
        Path(opts.in_use_once).write_text(port)
        print(
            f"sinkhole: cannot listen on udp {host}:{port}: address already in use "
            "(another server running?)",
            file=sys.stderr,
            flush=True,
        )
        return 1
    stopping = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    def on_hup(signum: int, frame: FrameType | None) -> None:
        print("reloaded", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, signal.SIG_IGN if opts.ignore_term else on_term)
    signal.signal(signal.SIGHUP, on_hup)
    if opts.never_listen:
        while not stopping:
            time.sleep(0.1)
        return 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host.strip("[]"), int(port)))
        sock.settimeout(0.1)  # wake up to see a SIGTERM
        while not stopping:
            try:
                data, addr = sock.recvfrom(65535)
            except (TimeoutError, InterruptedError):
                continue
            if opts.echo:  # what a probe that autobound to this port would read back
                sock.sendto(data, addr)
                continue
            request = DNSRecord.parse(data)
            reply = request.reply()
            if request.q.qtype == QTYPE.A:
                reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=10, rdata=A("0.0.0.0")))
            sock.sendto(reply.pack(), addr)
    print("stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
