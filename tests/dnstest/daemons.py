"""Debian DNS daemons (nsd, unbound, dnsmasq) run as subprocesses on loopback for interop tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rcode
from dnslib import QTYPE

from . import find_tool
from .zone import Zone

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
PROBE_TIMEOUT = 0.3  #: per probe; short so a daemon that comes up late is seen soon


class DaemonError(RuntimeError):
    """A daemon could not be started; the message holds its output."""


def free_port(host: str = "127.0.0.1", below: tuple[int, int] | None = None) -> int:
    """A port on HOST that is free for both UDP and TCP right now.

    With `below` (low, high), one drawn from that range instead of the kernel's
    ephemeral ports: the benchmark's servers must not take a port the kernel may
    hand to one of dnsperf's sockets between our probe and the server's bind.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    rng = random.Random()
    for _ in range(200):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((host, rng.randrange(*below) if below else 0))
            except OSError:
                continue
            port = udp.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError(f"no port free for UDP and TCP on {host}")


def probe_socket(host: str, port: int) -> socket.socket:
    """A UDP socket to probe (host, port) from, bound to any port but that one.

    Before a server has bound its port, that port is free, and a socket that
    sends to it unbound may be autobound to it by the kernel (seen here once in
    7,574 tries): it then reads its own query back while the server cannot bind
    and exits. Bind first, to a port the kernel picks, and never to the server's.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(20):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        if sock.getsockname()[1] != port:
            return sock
        sock.close()
    raise OSError(f"no probe port other than {port} on {host}")


def probe(address: tuple[str, int], qname: str = ".", qtype: str = "SOA") -> dns.message.Message:
    """One UDP query; any parseable answer, whatever its rcode, proves the server is up."""
    query = dns.message.make_query(qname, qtype)
    with probe_socket(*address) as sock:
        sock.setblocking(False)  # dnspython waits on a socket it is handed with its own timeout
        return dns.query.udp(query, address[0], port=address[1], timeout=PROBE_TIMEOUT, sock=sock)


def wait_for_dns(
    address: tuple[str, int],
    timeout: float = READY_TIMEOUT,
    qname: str = ".",
    qtype: str = "SOA",
    alive: subprocess.Popen[bytes] | None = None,
) -> dns.message.Message:
    """Query ADDRESS until it answers; raises TimeoutError at the deadline.

    With ALIVE, raises DaemonError as soon as that process has exited.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        if alive is not None and alive.poll() is not None:
            raise DaemonError(f"process {alive.pid} exited with {alive.returncode}")
        try:
            return probe(address, qname, qtype)
        except (dns.exception.DNSException, OSError) as exc:
            last = exc
            if isinstance(exc, OSError):
                # ECONNREFUSED comes back at once; pace the retries a little.
                time.sleep(0.05)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no DNS answer from {address[0]}:{address[1]} ({last})")


class Daemon:
    """A daemon run by PID in its own temp folder; stop() kills only that PID."""

    name = "daemon"

    def __init__(self, argv: list[str], workdir: Path, address: tuple[str, int]) -> None:
        self.argv = argv
        self.workdir = workdir
        self.address = address
        self.process: subprocess.Popen[bytes] | None = None
        self.stdout_path = workdir / f"{self.name}.stdout"
        self.stderr_path = workdir / f"{self.name}.stderr"
        self.log_path = workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.process.pid

    def output(self) -> str:
        """The daemon's stderr, stdout and log file, for error messages."""
        parts = []
        for path in (self.stderr_path, self.stdout_path, self.log_path):
            if path.exists():
                text = path.read_text(errors="replace").strip()
                if text:
                    parts.append(f"--- {path.name}\n{text[-4000:]}")
        return "\n".join(parts) or "(no output)"

    def start(self, timeout: float = READY_TIMEOUT) -> Daemon:
        """Start the process and wait until it answers DNS, or raise DaemonError with its output."""
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.workdir,
                start_new_session=True,  # our Ctrl-C goes to pytest, the daemon stops by PID
            )
        try:
            wait_for_dns(self.address, timeout, alive=self.process)
        except (TimeoutError, DaemonError) as exc:
            self.stop()
            raise DaemonError(
                f"{self.name} did not start on {self.address[0]}:{self.address[1]}: {exc}\n"
                f"command: {' '.join(self.argv)}\n{self.output()}"
            ) from None
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM to our PID, SIGKILL after TIMEOUT; returns the exit code (idempotent)."""
        return stop_by_pid(self.process, signal.SIGTERM, timeout)

    def __enter__(self) -> Daemon:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_by_pid(
    process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT
) -> int | None:
    """Send SIG to the process's own PID, SIGKILL it after TIMEOUT; its exit code.

    A process that leads its own session (started with start_new_session, as every
    daemon here is) has its PID as group id: the SIGKILL reaches the children it
    forked too (nsd's server and xfrd processes), and nothing else.
    """
    if process is None:
        return None
    if process.poll() is None:
        try:
            os.kill(process.pid, sig)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                if os.getpgid(process.pid) == process.pid:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        except ProcessLookupError:
            process.wait()
    return process.returncode


def _workdir(workdir: Path | None, name: str) -> Path:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix=f"dnstest-{name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise DaemonError(f"{name} is not installed")
    return path


class Nsd(Daemon):
    name = "nsd"


class Unbound(Daemon):
    name = "unbound"


class Dnsmasq(Daemon):
    name = "dnsmasq"


def nsd(zone: Zone, workdir: Path | None = None, port: int | None = None) -> Nsd:
    """An nsd serving ZONE from its zone file (not started: use start() or `with`)."""
    workdir = _workdir(workdir, "nsd")
    port = port or free_port()
    zonefile = workdir / f"{zone.origin}.zone"
    zonefile.write_text(zone.to_zonefile())
    conf = workdir / "nsd.conf"
    conf.write_text(
        f"""server:
    ip-address: 127.0.0.1@{port}
    port: {port}
    do-ip6: no
    username: ""
    chroot: ""
    zonesdir: "{workdir}"
    database: ""
    pidfile: "{workdir}/nsd.pid"
    xfrdfile: "{workdir}/xfrd.state"
    xfrdir: "{workdir}"
    zonelistfile: "{workdir}/zone.list"
    logfile: "{workdir}/nsd.log"
    server-count: 1
    verbosity: 1
    # Debian's nsd rate-limits to ~200 qps per source otherwise (see DESIGN.md).
    rrl-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: "{zone.origin}"
    zonefile: "{zonefile}"
"""
    )
    return Nsd([_tool("nsd"), "-d", "-c", str(conf)], workdir, ("127.0.0.1", port))


def unbound(zone: Zone, workdir: Path | None = None, port: int | None = None) -> Unbound:
    """An unbound serving ZONE as an auth-zone, recursing nowhere (not started)."""
    workdir = _workdir(workdir, "unbound")
    port = port or free_port()
    zonefile = workdir / f"{zone.origin}.zone"
    zonefile.write_text(zone.to_zonefile())
    conf = workdir / "unbound.conf"
    conf.write_text(
        f"""server:
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    username: ""
    chroot: ""
    directory: "{workdir}"
    pidfile: "{workdir}/unbound.pid"
    use-syslog: no
    logfile: "{workdir}/unbound.log"
    verbosity: 1
    do-daemonize: no
    num-threads: 1
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    # Never recurse to the internet: refuse all but the test zone.
    local-zone: "." refuse
    local-zone: "{zone.origin}." transparent
    do-not-query-localhost: no
    harden-glue: no
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@1
auth-zone:
    name: "{zone.origin}."
    zonefile: "{zonefile}"
    for-downstream: yes
    for-upstream: yes
    fallback-enabled: no
"""
    )
    return Unbound(
        [_tool("unbound"), "-d", "-c", str(conf)],
        workdir,
        ("127.0.0.1", port),
    )


def dnsmasq_records(zone: Zone) -> list[str]:
    """dnsmasq options for the zone data it can serve (A, AAAA, in-zone CNAME, TXT, MX, SRV)."""
    opts: list[str] = []
    for name in zone.owner_names():
        addrs = [str(rr.rdata) for t in ("A", "AAAA") for rr in zone.rrset(name, t)]
        for addr in addrs:
            opts.append(f"--host-record={name},{addr}")
        cname = zone.rrset(name, "CNAME")
        # dnsmasq only serves a CNAME whose target it knows itself.
        if cname and zone.in_zone(str(cname[0].rdata.label)):
            target = str(cname[0].rdata.label).rstrip(".")
            if zone.exists(target):
                opts.append(f"--cname={name},{target}")
        txt = zone.rrset(name, "TXT")
        if txt:
            # Passed in argv, not a config file: dnsmasq takes the strings unquoted.
            strings = ",".join(
                s.decode() if isinstance(s, bytes) else str(s) for s in txt[0].rdata.data
            )
            opts.append(f"--txt-record={name},{strings}")
        for rr in zone.rrset(name, "MX"):
            opts.append(f"--mx-host={name},{str(rr.rdata.label).rstrip('.')},{rr.rdata.preference}")
        for rr in zone.rrset(name, "SRV"):
            d = rr.rdata
            target = str(d.target).rstrip(".")
            opts.append(f"--srv-host={name},{target},{d.port},{d.priority},{d.weight}")
    return opts


def dnsmasq(
    zone: Zone | None = None,
    upstream: tuple[str, int] | None = None,
    workdir: Path | None = None,
    port: int | None = None,
    extra_args: list[str] | None = None,
    cache_size: int | None = None,
) -> Dnsmasq:
    """A dnsmasq forwarding to UPSTREAM (e.g. an AuthServer), or serving ZONE data itself.

    CACHE_SIZE None keeps dnsmasq's default cache; 0 makes it a plain forwarder.
    Not started: use start() or `with`.
    """
    if (zone is None) == (upstream is None):
        raise ValueError("give exactly one of zone or upstream")
    workdir = _workdir(workdir, "dnsmasq")
    port = port or free_port()
    argv = [
        _tool("dnsmasq"),
        "--keep-in-foreground",
        "--conf-file=/dev/null",  # Debian's /etc/dnsmasq.conf must not leak in
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        f"--port={port}",
        "--user=root",
        "--group=root",
        f"--pid-file={workdir}/dnsmasq.pid",
        f"--log-facility={workdir}/dnsmasq.log",
    ]
    if cache_size is not None:
        argv.append(f"--cache-size={cache_size}")
    if upstream is not None:
        argv.append(f"--server={upstream[0]}#{upstream[1]}")
    else:
        assert zone is not None
        # Answer NXDOMAIN for unknown names in the zone instead of forwarding them.
        argv.append(f"--local=/{zone.origin}/")
        argv += dnsmasq_records(zone)
    argv += extra_args or []
    return Dnsmasq(argv, workdir, ("127.0.0.1", port))


def rdata_texts(
    response: dns.message.Message, section: str = "answer"
) -> set[tuple[str, str, str]]:
    """(name, type, rdata) of a response section, TTL and order aside, for comparisons."""
    out = set()
    for rrset in getattr(response, section):
        for rdata in rrset:
            out.add((rrset.name.to_text().lower(), QTYPE.get(rrset.rdtype), rdata.to_text()))
    return out


def pids_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains TEXT (e.g. a daemon's workdir): to find leftovers."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue  # the process ended while we looked
            if text in cmdline and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


def rcode_text(response: dns.message.Message) -> str:
    return dns.rcode.to_text(response.rcode())
