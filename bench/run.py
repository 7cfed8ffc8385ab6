"""Side-by-side DNS benchmark: sinkhole against dnsmasq and unbound, driven by dnsperf."""

import argparse
import contextlib
import datetime
import os
import random
import re
import shutil
import signal
import socket
import statistics
import string
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.dnstest.daemons import free_port as _free_port  # noqa: E402
from tests.dnstest.daemons import stop_by_pid  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BLOCKLIST_DIR = REPO_ROOT / "blocklists"
RESULTS_PATH = BENCH_DIR / "RESULTS.md"

LOOPBACK = "127.0.0.1"
# Below Linux's ephemeral range (32768+), so a port we pick is not also handed to
# a dnsperf or upstream socket between our probe and the server's bind.
PORT_RANGE = (20000, 32000)
ZONE = "bench.test"
ZONE_NAMES = 300_000  # distinct names for the miss scenario: ~100k per run at 3 runs
MIN_ZONE_NAMES = 100_000
CACHED_NAMES = 400  # the small hot set of the cached scenario
RECORD_TTL = 3600  # long enough that no cached answer expires during a run
BLOCKED_SUBNAMES = 20  # random names under each catalog domain
MISS_WARMUP_NAMES = 2_000  # misses spent before the measured runs, never reused

# Throughput runs: 10 sockets with 100 queries in flight keep a single-core server
# saturated without overflowing its receive buffer (which would show up as loss).
DNSPERF_CLIENTS = 10
DNSPERF_OUTSTANDING = 100
DNSPERF_TIMEOUT_S = 2  # a lost query holds a slot this long; 5 s (default) drags qps down
LATENCY_QPS = 5_000
WARMUP_SECONDS = 1
BUSY_LOAD = 0.5  # a load average above this before the run means others share the cores
LOAD_FACT = "load average (1 min) before the run"
MIN_NOERROR_PCT = 99.0  # below this the setup is wrong (e.g. SERVFAIL), not slow

# Pinning: dnsperf needs a core of its own or it measures itself; the upstream
# (nsd) shares that core because it is not what we measure.
LOAD_CPU = "0"
SERVER_CPU = "1"

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0

NOTES_BEGIN = "<!-- notes -->"
NOTES_END = "<!-- /notes -->"
DEFAULT_NOTES = (
    "Hand-written notes go here and survive every run of bench/run.py: profiler\n"
    "findings, report timing, the load time of a 1M-name list, anything the\n"
    "tables do not show."
)

# Used only while blocklists/ is missing or has no domains, so the bench still runs.
FALLBACK_DOMAINS = [
    "chatgpt.com",
    "openai.com",
    "oaiusercontent.com",
    "chat.openai.com",
    "gemini.google.com",
    "bard.google.com",
    "claude.ai",
    "anthropic.com",
    "copilot.microsoft.com",
    "perplexity.ai",
    "poe.com",
    "character.ai",
    "mistral.ai",
    "chat.mistral.ai",
    "you.com",
    "huggingface.co",
    "deepseek.com",
    "chat.deepseek.com",
    "grok.com",
    "x.ai",
    "meta.ai",
    "pi.ai",
]

SERVER_NAMES = ("sinkhole", "dnsmasq", "unbound")
SCENARIO_NAMES = ("blocked", "cached", "miss", "latency", "recording", "allcores")
#: The scenarios every server runs; `recording` is sinkhole's alone.
COMPARED = ("blocked", "cached", "miss", "latency", "allcores")
#: recording: dnsperf's run on the blocked names while the server switches hit recording on
#: and off every TOGGLE_PERIOD seconds (bench/recording_toggle.py), per run.
TOGGLE_SECONDS = 30
TOGGLE_PERIOD = 1.0
#: Periods dropped at the start of a toggle run (warm-up); the last one is dropped too.
TOGGLE_SETTLE_PERIODS = 2
#: Where the toggling server writes "state rate" per period, and its period.
TOGGLE_RATES_ENV = "SINKHOLE_TOGGLE_RATES"
TOGGLE_PERIOD_ENV = "SINKHOLE_TOGGLE_PERIOD"


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


# --------------------------------------------------------------------------- processes


def log(message: str) -> None:
    """Progress on stderr, so stdout carries only the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    """Prefix argv with taskset when pinning is possible (taskset execs: same PID)."""
    return ["taskset", "-c", cpu, *argv] if cpu is not None else argv


@dataclass
class Daemon:
    """A server process we started, with its combined output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the process printed, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


@contextlib.contextmanager
def daemon(
    name: str,
    argv: list[str],
    workdir: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Daemon]:
    """Run argv for the duration of the with block; always stopped on the way out."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        # A session of its own: Ctrl-C reaches only us, and we stop it in order.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **env} if env else None,
            start_new_session=True,
        )
        try:
            yield Daemon(name, proc, log)
        finally:
            stop_by_pid(proc, timeout=STOP_TIMEOUT_S)


def free_port() -> int:
    """A high loopback port free for UDP and TCP, below the ephemeral range."""
    return _free_port(LOOPBACK, below=PORT_RANGE)


# --------------------------------------------------------------------------- tiny DNS client

QTYPE_A = 1
QTYPE_AAAA = 28


def build_query(qname: str, qtype: int, qid: int) -> bytes:
    """A recursive query in wire format (stdlib only, to stay free of dnslib)."""
    labels = b"".join(
        bytes([len(part)]) + part.encode("ascii") for part in qname.strip(".").split(".")
    )
    return (
        struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
        + labels
        + b"\0"
        + struct.pack("!HH", qtype, 1)
    )


def _skip_name(msg: bytes, pos: int) -> int:
    while True:
        length = msg[pos]
        if length >= 0xC0:
            return pos + 2
        if length == 0:
            return pos + 1
        pos += 1 + length


def parse_answer(msg: bytes) -> tuple[int, list[str]]:
    """Rcode and the A/AAAA addresses of a response."""
    _qid, flags, qdcount, ancount = struct.unpack("!HHHH", msg[:8])
    pos = 12
    for _ in range(qdcount):
        pos = _skip_name(msg, pos) + 4
    addresses: list[str] = []
    for _ in range(ancount):
        pos = _skip_name(msg, pos)
        rtype, _rclass, _ttl, rdlen = struct.unpack("!HHIH", msg[pos : pos + 10])
        pos += 10
        rdata = msg[pos : pos + rdlen]
        if rtype == QTYPE_A and rdlen == 4:
            addresses.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == QTYPE_AAAA and rdlen == 16:
            addresses.append(socket.inet_ntop(socket.AF_INET6, rdata))
        pos += rdlen
    return flags & 0x0F, addresses


def ask(port: int, qname: str, qtype: int = QTYPE_A, timeout: float = 1.0) -> list[str] | None:
    """Addresses in the NOERROR answer to qname, or None on timeout or error rcode."""
    qid = random.randrange(1 << 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(build_query(qname, qtype, qid), (LOOPBACK, port))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = sock.recv(4096)
                if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid:
                    rcode, addresses = parse_answer(data)
                    return addresses if rcode == 0 else None
        except (OSError, struct.error, IndexError):
            return None
    return None


def wait_until_answers(
    server: Daemon, port: int, checks: list[tuple[str, int, str]], timeout: float
) -> None:
    """Poll until every (qname, qtype, expected address) check holds.

    Raises:
        BenchError: the process exited, or the checks still fail at the deadline;
            the message carries the tail of the process's output.
    """
    deadline = time.monotonic() + timeout
    failing: list[str] = []
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(
                f"{server.name} exited with code {server.proc.returncode} before answering"
                f"\n{server.log_tail()}"
            )
        failing = []
        for qname, qtype, expected in checks:
            got = ask(port, qname, qtype, timeout=0.5)
            if got is None or expected not in got:
                failing.append(f"{qname} type {qtype}: expected {expected}, got {got}")
        if not failing:
            return
        time.sleep(0.2)
    raise BenchError(
        f"{server.name} did not answer correctly within {timeout:.0f} s: "
        + "; ".join(failing[:3])
        + f"\n{server.log_tail()}"
    )


# --------------------------------------------------------------------------- inputs


def read_catalog(directory: Path) -> tuple[list[str], list[str], list[str]]:
    """All blocked patterns, the subset answered with the sinkhole address, and keep names.

    The bypass category is blocked too (so block lists have the same size for every
    server) but not queried, because its entries may be answered differently.
    """
    all_domains: list[str] = []
    sinkholed: list[str] = []
    keep: list[str] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            print(f"warning: skipping {path.name}: {exc}", file=sys.stderr)
            continue
        if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
            continue
        bypass = data.get("category") == "bypass" or path.stem == "bypass"
        for service in data["services"].values():
            if not isinstance(service, dict):
                continue
            for entry in service.get("domains") or []:
                name = _domain_of(entry)
                if name:
                    all_domains.append(name)
                    if not bypass:
                        sinkholed.append(name)
            keep.extend(filter(None, (_domain_of(e) for e in service.get("keep") or [])))
    return _unique(all_domains), _unique(sinkholed), _unique(keep)


def _domain_of(entry: object) -> str | None:
    if isinstance(entry, dict):
        entry = entry.get("domain") or entry.get("name")
    if not isinstance(entry, str):
        return None
    # "*.example.com" blocks only the names under it; every query we send is one
    # of those or the name itself, so the plain name is the right list entry.
    name = entry.strip().lower().removeprefix("*.").strip(".")
    return name if name and "*" not in name and "/" not in name else None


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def under(name: str, domains: list[str]) -> bool:
    """Whether name equals or lies under one of domains."""
    return any(name == d or name.endswith("." + d) for d in domains)


def miss_name(i: int) -> str:
    return f"n{i:06d}.{ZONE}"


def miss_address(i: int) -> str:
    return f"10.{(i >> 16) & 0xFF}.{(i >> 8) & 0xFF}.{i & 0xFF}"


def cached_name(i: int) -> str:
    return f"c{i:04d}.{ZONE}"


def cached_address(i: int) -> str:
    return f"10.250.{(i >> 8) & 0xFF}.{i & 0xFF}"


def write_zone(path: Path, names: int) -> None:
    """The upstream's zone: `names` miss names plus the cached set, all A records."""
    lines = [
        f"$ORIGIN {ZONE}.",
        f"$TTL {RECORD_TTL}",
        f"@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 {RECORD_TTL}",
        f"@ IN NS ns.{ZONE}.",
        f"ns IN A {LOOPBACK}",
    ]
    lines += [
        f"{cached_name(i).split('.')[0]} IN A {cached_address(i)}" for i in range(CACHED_NAMES)
    ]
    lines += [f"{miss_name(i).split('.')[0]} IN A {miss_address(i)}" for i in range(names)]
    path.write_text("\n".join(lines) + "\n")


def write_queries(path: Path, queries: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{name} {qtype}\n" for name, qtype in queries))
    return path


def blocked_queries(
    domains: list[str], keep: list[str], rng: random.Random
) -> list[tuple[str, str]]:
    """Each catalog domain and random names under it, A and AAAA, shuffled."""
    names: list[str] = []
    alphabet = string.ascii_lowercase + string.digits
    for domain in domains:
        names.append(domain)
        for _ in range(BLOCKED_SUBNAMES):
            label = "".join(rng.choices(alphabet, k=rng.randint(3, 10)))
            names.append(f"{label}.{domain}")
    names = [n for n in names if not under(n, keep)]
    queries = [(n, t) for n in names for t in ("A", "AAAA")]
    rng.shuffle(queries)
    return queries


# --------------------------------------------------------------------------- dnsperf


@dataclass
class PerfRun:
    """The numbers of one dnsperf run."""

    sent: int
    completed: int
    lost: int
    qps: float
    latency_s: float
    noerror: int
    server_cpu_pct: float = 0.0
    others_cpu_pct: float = 0.0
    #: recording: the adjacent (on rate / off rate) ratios of the toggling server's periods
    toggle_ratios: list[float] = field(default_factory=list)


PERF_PATTERNS = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "latency_s": r"Average Latency \(s\):\s+([\d.]+)",
}


def parse_dnsperf(output: str) -> PerfRun:
    """Numbers from dnsperf's statistics block.

    Raises:
        BenchError: a field is missing (dnsperf failed or changed its output).
    """
    values: dict[str, float] = {}
    for key, pattern in PERF_PATTERNS.items():
        match = re.search(pattern, output)
        if not match:
            raise BenchError(f"dnsperf output lacks {key!r}:\n{output[-1500:]}")
        values[key] = float(match.group(1))
    match = re.search(r"NOERROR (\d+)", output)
    return PerfRun(
        sent=int(values["sent"]),
        completed=int(values["completed"]),
        lost=int(values["lost"]),
        qps=values["qps"],
        latency_s=values["latency_s"],
        noerror=int(match.group(1)) if match else 0,
    )


def dnsperf(
    port: int,
    datafile: Path,
    *,
    seconds: float | None,
    passes: int | None = None,
    clients: int = DNSPERF_CLIENTS,
    outstanding: int = DNSPERF_OUTSTANDING,
    max_qps: int | None = None,
    cpu: str | None = LOAD_CPU,
) -> PerfRun:
    """Run dnsperf once against 127.0.0.1:port and parse its statistics."""
    argv = ["dnsperf", "-s", LOOPBACK, "-p", str(port), "-d", str(datafile)]
    argv += ["-c", str(clients), "-q", str(outstanding), "-t", str(DNSPERF_TIMEOUT_S)]
    if seconds is not None:
        argv += ["-l", f"{seconds:g}"]
    if passes is not None:
        argv += ["-n", str(passes)]
    if max_qps is not None:
        argv += ["-Q", str(max_qps)]
    # Bounded even if dnsperf misbehaves; subprocess.run kills it by PID on timeout
    # and on Ctrl-C.
    limit = (seconds or 60) + DNSPERF_TIMEOUT_S + 30
    try:
        done = subprocess.run(
            pinned(cpu, argv), capture_output=True, text=True, timeout=limit, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"dnsperf did not finish within {limit:.0f} s") from exc
    if done.returncode != 0:
        raise BenchError(f"dnsperf failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
    return parse_dnsperf(done.stdout)


# --------------------------------------------------------------------------- the setup


@dataclass
class Setup:
    """Everything the servers and scenarios share during one benchmark."""

    workdir: Path
    nsd_port: int
    blocklist: list[str]
    files: dict[str, Path]
    miss_slices: list[Path]
    miss_warmup: Path
    check_blocked: str
    load_cpu: str | None
    server_cpu: str | None
    catalog_note: str
    #: The throwaway PostgreSQL cluster of the central variant (tests/pgtest.py), or None.
    central_cluster: object | None = None
    central_starts: int = 0
    #: The scenario the next server starts for (allcores: unpinned, every core).
    scenario: str = ""


def start_nsd(workdir: Path, cpu: str | None) -> tuple[int, contextlib.ExitStack]:
    """Start nsd on a free port and return it with the stack that stops it."""
    port = free_port()
    conf = workdir / "nsd.conf"
    # rrl-ratelimit 0: Debian's nsd otherwise answers only ~200 qps per source.
    conf.write_text(
        f"""server:
    ip-address: {LOOPBACK}
    port: {port}
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "{workdir}"
    pidfile: "{workdir}/nsd.pid"
    database: "{workdir}/nsd.db"
    xfrdfile: "{workdir}/xfrd.state"
    xfrdir: "{workdir}"
    zonelistfile: "{workdir}/zone.list"
    logfile: "{workdir}/nsd-server.log"
    verbosity: 0
    hide-version: yes
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: {ZONE}
    zonefile: "{workdir}/{ZONE}.zone"
"""
    )
    stack = contextlib.ExitStack()
    try:
        server = stack.enter_context(
            daemon("nsd", pinned(cpu, ["nsd", "-d", "-c", str(conf)]), workdir)
        )
        wait_until_answers(
            server, port, [(cached_name(0), QTYPE_A, cached_address(0))], START_TIMEOUT_S
        )
    except BaseException:
        stack.close()
        raise
    return port, stack


def prepare(workdir: Path, zone_names: int, runs: int, pin: bool) -> tuple[Setup, int]:
    """Write zone, block lists and query files; return the setup (nsd not yet started)."""
    rng = random.Random(20240611)  # same query files on every run of the bench
    all_domains, sinkholed, keep = read_catalog(BLOCKLIST_DIR)
    if len(sinkholed) >= 10:
        note = (
            f"{len(all_domains)} catalog patterns from blocklists/*.yaml "
            f"({len(sinkholed)} queried; bypass entries blocked but not queried)"
        )
    else:
        print(
            "warning: blocklists/ missing or nearly empty; using the fallback list", file=sys.stderr
        )
        all_domains = sinkholed = list(FALLBACK_DOMAINS)
        keep = []
        note = f"fallback list of {len(all_domains)} chatbot domains (blocklists/ was empty)"

    write_zone(workdir / f"{ZONE}.zone", zone_names)
    files = {
        "blocked": write_queries(workdir / "blocked.txt", blocked_queries(sinkholed, keep, rng)),
        "cached": write_queries(
            workdir / "cached.txt", [(cached_name(i), "A") for i in range(CACHED_NAMES)]
        ),
    }
    # Latency: an office's steady mix, half hot forwarded names and half blocked ones.
    blocked_sample = [q for q in blocked_queries(sinkholed, keep, rng) if q[1] == "A"]
    mixed: list[tuple[str, str]] = []
    for i in range(max(CACHED_NAMES, len(blocked_sample))):
        mixed.append((cached_name(i % CACHED_NAMES), "A"))
        mixed.append(blocked_sample[i % len(blocked_sample)])
    files["latency"] = write_queries(workdir / "latency.txt", mixed)

    # Disjoint slices of the zone, one per run, so that every query is new to the cache.
    order = list(range(zone_names))
    rng.shuffle(order)
    warm = order[:MISS_WARMUP_NAMES]
    rest = order[MISS_WARMUP_NAMES:]
    size = len(rest) // runs
    miss_warmup = write_queries(workdir / "miss-warmup.txt", [(miss_name(i), "A") for i in warm])
    slices = [
        write_queries(
            workdir / f"miss-{r}.txt",
            [(miss_name(i), "A") for i in rest[r * size : (r + 1) * size]],
        )
        for r in range(runs)
    ]
    check = next((d for d in sinkholed if not under(d, keep)), sinkholed[0])
    setup = Setup(
        workdir=workdir,
        nsd_port=0,
        blocklist=all_domains,
        files=files,
        miss_slices=slices,
        miss_warmup=miss_warmup,
        check_blocked=check,
        load_cpu=LOAD_CPU if pin else None,
        server_cpu=SERVER_CPU if pin else None,
        catalog_note=note,
    )
    return setup, size


# --------------------------------------------------------------------------- servers under test


#: The row of the server with hit recording stubbed out.
NO_RECORDING = "sinkhole (no recording)"
#: The row of the server on its pure-Python datagram loop (resolver/batchio.py).
NO_SPEEDUPS = "sinkhole (no speedups)"
#: The row of the server with `central` configured, shipping to PostgreSQL.
CENTRAL = "sinkhole (central)"
#: The row of one sinkhole process in the allcores scenario.
ONE_WORKER = "sinkhole (workers: 1)"
#: The row of the server that switches recording on and off (the `recording` scenario).
TOGGLE = "sinkhole (recording on/off)"


@dataclass
class Variant:
    """One configuration of one server under test, measured as its own row."""

    server: str
    label: str
    scenarios: tuple[str, ...]
    extra: dict[str, object] = field(default_factory=dict)
    note: str = ""
    #: sinkhole only: what `python` runs before `serve --config CONF`
    launcher: tuple[str, ...] = ("-m", "resolver")
    #: added to the server's environment
    env: dict[str, str] = field(default_factory=dict)
    #: sinkhole only: `central` configured against the bench's PostgreSQL cluster
    central: bool = False


VARIANTS = [
    Variant("sinkhole", "sinkhole", COMPARED, {"privacy": {"clients": "hashed"}}),
    # The in-server measure of what recording costs (issue 17's target): one server that
    # switches Recorder.hit on and off every second, so the VM's drift falls on both.
    Variant(
        "sinkhole",
        TOGGLE,
        ("recording",),
        {"privacy": {"clients": "hashed"}},
        note="bench/recording_toggle.py: the same server switching the body of Recorder.hit "
        f"on and off every {TOGGLE_PERIOD:g} s; the qps column is the whole run's",
        launcher=(str(BENCH_DIR / "recording_toggle.py"), "--serve"),
    ),
    # The whole per-query cost of recording: the same server with Recorder.hit
    # stubbed out by bench/no_recording.py (a bench-only launcher, not a switch).
    Variant(
        "sinkhole",
        NO_RECORDING,
        ("blocked",),
        note="Recorder.hit stubbed out (bench/no_recording.py): the baseline for recording cost",
        launcher=(str(BENCH_DIR / "no_recording.py"),),
    ),
    # The same server on the recvfrom/sendto loop instead of the C speedups'
    # recvmmsg/sendmmsg (issue 17): what batching the datagram I/O gains.
    Variant(
        "sinkhole",
        NO_SPEEDUPS,
        ("blocked", "cached"),
        {"privacy": {"clients": "hashed"}},
        note="SINKHOLE_NO_SPEEDUPS=1: the pure-Python datagram loop, the baseline of the speedups",
        env={"SINKHOLE_NO_SPEEDUPS": "1"},
    ),
    # The same server as the first row with `central` configured: its shipper sends the
    # hits to a throwaway PostgreSQL cluster while dnsperf runs (issue 14).
    Variant(
        "sinkhole",
        CENTRAL,
        ("blocked",),
        {"privacy": {"clients": "hashed"}},
        note="`central` configured: a fresh database on a throwaway PostgreSQL 15 cluster "
        "(tests/pgtest.py) on loopback per start, the shipper and the policy watcher running",
        central=True,
    ),
    # allcores with one process, as before `workers: auto`: what the workers gain.
    Variant(
        "sinkhole",
        ONE_WORKER,
        ("allcores",),
        {"privacy": {"clients": "hashed"}, "workers": 1},
        note="`workers: 1`, unpinned: the baseline of `workers: auto`",
    ),
    Variant("dnsmasq", "dnsmasq", COMPARED),
    Variant("unbound", "unbound", COMPARED),
]


def sinkhole_argv(setup: Setup, port: int, variant: Variant) -> tuple[list[str], Path | None]:
    db = setup.workdir / "sinkhole.db"
    # A fresh database per start, so no run pays for the hits of an earlier one.
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    config: dict[str, object] = {
        "listen": [f"{LOOPBACK}:{port}"],
        "upstreams": [f"{LOOPBACK}:{setup.nsd_port}"],
        "database": str(db),
        "metrics_listen": "",
        # Every dnsperf query comes from 127.0.0.1: the default per-client limit
        # would refuse nearly all of them.
        "rate_limit": {"per_client": 0},
        # allcores: one process per core on the same port (SO_REUSEPORT), as in deploy/.
        "workers": "auto" if setup.scenario == "allcores" else 1,
    }
    config.update(variant.extra)
    if variant.central:
        config["central"] = {"dsn": central_database(setup), "site": "bench"}
    conf = setup.workdir / "sinkhole.yaml"
    conf.write_text(yaml.safe_dump(config, sort_keys=False))
    return [sys.executable, *variant.launcher, "serve", "--config", str(conf)], REPO_ROOT


def central_database(setup: Setup) -> str:
    """A new, migrated central database on the bench's cluster; its DSN."""
    if setup.central_cluster is None:
        raise BenchError("no PostgreSQL cluster for the central variant (see the log)")
    from resolver.central import connect
    from resolver.central.schema import migrate
    from resolver.config import CentralConfig

    setup.central_starts += 1
    dsn = setup.central_cluster.create_database(f"bench_{setup.central_starts}")
    with connect(CentralConfig(dsn=dsn, site="bench")) as conn:
        migrate(conn)
    return dsn


def central_shipped(setup: Setup) -> int:
    """SUM(count) of the hits the last central start shipped to PostgreSQL."""
    import psycopg

    dsn = setup.central_cluster.dsn(f"bench_{setup.central_starts}")
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT COALESCE(SUM(count), 0) FROM hits").fetchone()[0])


def start_central(setup: Setup, stack: contextlib.ExitStack) -> None:
    """Start the throwaway PostgreSQL cluster of the central variant, if it can be."""
    try:
        import psycopg  # noqa: F401

        from tests.pgtest import PgCluster, PgError
    except ImportError as exc:
        log(f"central variant skipped: {exc} (pip install '.[postgres]')")
        return
    try:
        cluster = PgCluster()
        stack.callback(cluster.destroy)
        cluster.create().start()
    except PgError as exc:
        log(f"central variant skipped: {exc}")
        return
    setup.central_cluster = cluster
    log(f"PostgreSQL for the central variant on {LOOPBACK}:{cluster.port}")


def dnsmasq_argv(setup: Setup, port: int, _variant: Variant) -> tuple[list[str], Path | None]:
    conf = setup.workdir / "dnsmasq.conf"
    conf.write_text("".join(f"address=/{d}/0.0.0.0\naddress=/{d}/::\n" for d in setup.blocklist))
    return [
        "dnsmasq",
        f"--conf-file={conf}",  # instead of /etc/dnsmasq.conf
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        f"--server={LOOPBACK}#{setup.nsd_port}",
        f"--port={port}",
        f"--listen-address={LOOPBACK}",
        "--bind-interfaces",
        "--cache-size=10000",
        # The default of 150 queries in flight upstream would throttle the miss run.
        "--dns-forward-max=1000",
        "--pid-file=",
        "--keep-in-foreground",
        "--user=root",
    ], None


def unbound_argv(setup: Setup, port: int, _variant: Variant) -> tuple[list[str], Path | None]:
    workdir = setup.workdir
    zones = "".join(f'    local-zone: "{d}." always_null\n' for d in setup.blocklist)
    # allcores: a thread per core, each with its own socket on the port.
    threads = (os.cpu_count() or 1) if setup.scenario == "allcores" else 1
    conf = workdir / "unbound.conf"
    conf.write_text(
        f"""server:
    interface: {LOOPBACK}
    port: {port}
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{workdir}"
    pidfile: "{workdir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 0
    num-threads: {threads}
    so-reuseport: {"yes" if threads > 1 else "no"}
    # The upstream lives on 127.0.0.1, which unbound refuses to query by default.
    do-not-query-localhost: no
    # A forwarder without DNSSEC validation, like dnsmasq here.
    module-config: "iterator"
    num-queries-per-thread: 4096
    outgoing-range: 8192
    msg-cache-size: 64m
    rrset-cache-size: 128m
    access-control: 127.0.0.0/8 allow
    # RFC 6761 makes test. a default local zone; our upstream zone lives under it.
    local-zone: "test." nodefault
{zones}
remote-control:
    control-enable: no

forward-zone:
    name: "."
    forward-addr: {LOOPBACK}@{setup.nsd_port}
"""
    )
    return ["unbound", "-d", "-c", str(conf)], None


SERVER_ARGV: dict[str, Callable[[Setup, int, Variant], tuple[list[str], Path | None]]] = {
    "sinkhole": sinkhole_argv,
    "dnsmasq": dnsmasq_argv,
    "unbound": unbound_argv,
}


@contextlib.contextmanager
def server_under_test(setup: Setup, variant: Variant) -> Iterator[tuple[int, int]]:
    """Start one server under test, wait until it answers correctly; yield port and PID."""
    port = free_port()
    argv, cwd = SERVER_ARGV[variant.server](setup, port, variant)
    name = variant.label.split()[0]
    cpu = None if setup.scenario == "allcores" else setup.server_cpu
    env = dict(variant.env)
    if variant.label == TOGGLE:
        env[TOGGLE_RATES_ENV] = str(setup.workdir / "toggle-rates.txt")
        env[TOGGLE_PERIOD_ENV] = str(TOGGLE_PERIOD)
    with daemon(name, pinned(cpu, argv), setup.workdir, cwd=cwd, env=env) as server:
        wait_until_answers(
            server,
            port,
            [
                (cached_name(1), QTYPE_A, cached_address(1)),
                (setup.check_blocked, QTYPE_A, "0.0.0.0"),
                (setup.check_blocked, QTYPE_AAAA, "::"),
            ],
            START_TIMEOUT_S,
        )
        yield port, server.proc.pid


# --------------------------------------------------------------------------- scenarios


@dataclass
class Summary:
    """Medians over the runs of one scenario on one server."""

    runs: list[PerfRun]

    @property
    def qps(self) -> float:
        return statistics.median(r.qps for r in self.runs)

    @property
    def latency_ms(self) -> float:
        return statistics.median(r.latency_s for r in self.runs) * 1000

    @property
    def cpu_pct(self) -> float:
        return statistics.median(r.server_cpu_pct for r in self.runs)

    @property
    def others_pct(self) -> float:
        return statistics.median(r.others_cpu_pct for r in self.runs)

    @property
    def lost(self) -> int:
        return sum(r.lost for r in self.runs)

    @property
    def sent(self) -> int:
        return sum(r.sent for r in self.runs)

    @property
    def noerror_pct(self) -> float:
        completed = sum(r.completed for r in self.runs)
        return 100.0 * sum(r.noerror for r in self.runs) / completed if completed else 0.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads) and of its live child
    processes (sinkhole's workers), 0 if it is gone."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # Fields 4, 14 and 15 of proc(5), counted after the ")" that ends the command name.
        if entry.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def core_busy_seconds(cpu: str | None) -> float:
    """Non-idle time of one CPU, from /proc/stat (0 when unpinned or unreadable)."""
    if cpu is None:
        return 0.0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal: all but idle and iowait.
                return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def measured(pid: int, server_cpu: str | None, run: Callable[[], PerfRun]) -> PerfRun:
    """Run dnsperf and record how busy the server, and anything else, kept its core.

    A server near 100% set the pace; one well below it was waiting on dnsperf (or,
    for misses, on the upstream), or lost its core to other work on the machine.
    """
    before_cpu, before_core = cpu_seconds(pid), core_busy_seconds(server_cpu)
    before = time.monotonic()
    result = run()
    elapsed = time.monotonic() - before
    if elapsed > 0:
        server = cpu_seconds(pid) - before_cpu
        result.server_cpu_pct = 100 * server / elapsed
        if server_cpu is not None:
            others = core_busy_seconds(server_cpu) - before_core - server
            result.others_cpu_pct = max(0.0, 100 * others / elapsed)
    return result


def run_once(setup: Setup, port: int, pid: int, scenario: str, run: int, seconds: float) -> PerfRun:
    """Warm a freshly started server up where it matters, then measure one run."""
    cpu = setup.load_cpu
    files = setup.files
    if scenario == "blocked":
        dnsperf(port, files["blocked"], seconds=WARMUP_SECONDS, cpu=cpu)
        return measured(
            pid, setup.server_cpu, lambda: dnsperf(port, files["blocked"], seconds=seconds, cpu=cpu)
        )
    if scenario == "cached":
        # One gentle pass fills the cache; the run then asks only hot names.
        dnsperf(port, files["cached"], seconds=30, passes=1, clients=1, outstanding=10, cpu=cpu)
        return measured(
            pid, setup.server_cpu, lambda: dnsperf(port, files["cached"], seconds=seconds, cpu=cpu)
        )
    if scenario == "miss":
        # Warm the process (sockets, code paths) on names no run asks; every server
        # gets the same slice for run N, each new to its fresh cache.
        dnsperf(port, setup.miss_warmup, seconds=WARMUP_SECONDS, passes=1, cpu=cpu)
        datafile = setup.miss_slices[run]
        return measured(
            pid,
            setup.server_cpu,
            lambda: dnsperf(port, datafile, seconds=seconds, passes=1, cpu=cpu),
        )
    if scenario == "latency":
        dnsperf(port, files["latency"], seconds=30, passes=1, clients=1, outstanding=10, cpu=cpu)
        return measured(
            pid,
            setup.server_cpu,
            lambda: dnsperf(port, files["latency"], seconds=seconds, max_qps=LATENCY_QPS, cpu=cpu),
        )
    if scenario == "allcores":
        # The latency mix at the maximum rate, nothing pinned: the kernel spreads the
        # server's processes or threads, dnsperf and nsd over every core.
        dnsperf(port, files["latency"], seconds=30, passes=1, clients=1, outstanding=10)
        return measured(pid, None, lambda: dnsperf(port, files["latency"], seconds=seconds))
    if scenario == "recording":
        rates = setup.workdir / "toggle-rates.txt"
        perf = measured(
            pid,
            setup.server_cpu,
            lambda: dnsperf(port, files["blocked"], seconds=TOGGLE_SECONDS, cpu=cpu),
        )
        perf.toggle_ratios = toggle_ratios(read_toggle_rates(rates))
        return perf
    raise BenchError(f"unknown scenario {scenario!r}")


def read_toggle_rates(path: Path) -> list[tuple[int, float]]:
    """The (recording on?, blocked queries per second) of each period of a toggle run."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise BenchError(f"the toggling server wrote no rates ({exc})") from None
    # A third column, the CPU time per query (bench/recording_toggle.py), is not used here.
    return [(int(f[0]), float(f[1])) for f in (line.split() for line in lines)]


def busy_periods(rates: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The settled periods under load: dnsperf running (the server's checks before it
    ask a few names), the first TOGGLE_SETTLE_PERIODS and the last left out."""
    peak = max((rate for _, rate in rates), default=0.0)
    return [r for r in rates if r[1] > peak / 2][TOGGLE_SETTLE_PERIODS:-1]


def toggle_ratios(rates: list[tuple[int, float]]) -> list[float]:
    """on/off over each pair of adjacent settled periods: the same drift falls on both."""
    busy = busy_periods(rates)
    ratios = [
        (b[1] / a[1]) if b[0] else (a[1] / b[1])
        for a, b in zip(busy, busy[1:], strict=False)
        if a[0] != b[0]
    ]
    if not ratios:
        raise BenchError("no pair of periods under load: is dnsperf reaching the server?")
    return ratios


def recording_cost(summary: Summary | None) -> tuple[float, int] | None:
    """1 - the median on/off ratio over every pair of every toggle run, and the pairs."""
    ratios = [x for r in summary.runs for x in r.toggle_ratios] if summary else []
    return (1 - statistics.median(ratios), len(ratios)) if ratios else None


# --------------------------------------------------------------------------- report


def version_line(argv: list[str], pattern: str = "") -> str:
    """First output line of a version command matching pattern, or 'not found'."""
    if not shutil.which(argv[0]):
        return "not found"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in (done.stdout + done.stderr).splitlines():
        if re.search(pattern, line):
            return line.strip()
    return "unknown"


def git_state() -> str:
    """Short commit and dirty flag, read-only (no index refresh)."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "--no-optional-locks", "-C", str(REPO_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    try:
        head = git("rev-parse", "--short", "HEAD")
        status = git("status", "--porcelain")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git not runnable)"
    commit = head.stdout.strip() if head.returncode == 0 else "no commit yet"
    dirty = ", dirty" if status.returncode == 0 and status.stdout.strip() else ""
    return commit + dirty


def load_average() -> str:
    """The 1-minute load average: other work on the machine skews every number."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo: ratios hold for one kind of machine."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def machine_facts(load_before: str, started: str) -> list[tuple[str, str]]:
    cpu = cpu_model()
    return [
        ("CPU", cpu),
        ("cores", f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})"),
        ("python", sys.version.split()[0]),
        ("dnsperf", version_line(["dnsperf", "-h"], r"^Version")),
        ("dnsmasq", version_line(["dnsmasq", "--version"], r"^Dnsmasq version")),
        ("nsd", version_line(["nsd", "-v"], r"^NSD version")),
        ("unbound", version_line(["unbound", "-V"], r"^Version")),
        ("git", git_state()),
        (LOAD_FACT, load_before),
        ("date (start)", started),
    ]


def ratio(
    a: Summary | None, b: Summary | None, key: Callable[[PerfRun], float] = lambda r: r.qps
) -> float | None:
    """a over b (qps by default): the median of run-by-run ratios when the runs pair up.

    Runs with the same number ran back to back, so pairing them cancels most of the
    drift in the machine's other load; unpaired, the ratio of the medians.
    """
    if a is None or b is None or not a.runs or not b.runs:
        return None
    if len(a.runs) == len(b.runs) and all(key(r) for r in b.runs):
        return statistics.median(key(x) / key(y) for x, y in zip(a.runs, b.runs, strict=True))
    bottom = statistics.median(key(r) for r in b.runs)
    return statistics.median(key(r) for r in a.runs) / bottom if bottom else None


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


#: Issue 17's targets, each a ratio taken within one run of this bench.
TARGET_LOCAL = 1.0  # blocked and cached qps of dnsmasq's, on one pinned core
TARGET_MISS = 0.8  # miss qps of unbound's
TARGET_RECORDING = 0.05  # the in-server toggle's cost of hit recording, at most
TARGET_LATENCY = 1.5  # average latency at LATENCY_QPS of dnsmasq's, at most


def target_lines(scenario: str, rows: dict[str, Summary]) -> list[str]:
    """The ratios a scenario is judged by, each against its target."""
    sink, dnsmasq, unbound = rows.get("sinkhole"), rows.get("dnsmasq"), rows.get("unbound")
    lines: list[str] = []
    if scenario in ("blocked", "cached"):
        r = ratio(sink, dnsmasq)
        ok = None if r is None or sink is None else (r >= TARGET_LOCAL and sink.lost == 0)
        lines.append(
            f"- sinkhole/dnsmasq qps: **{fmt(r)}** (target >= {TARGET_LOCAL:.2f} with zero "
            f"lost): {verdict(ok)}"
        )
        plain = rows.get(NO_SPEEDUPS)
        if plain is not None:
            lines.append(
                f"- without the C speedups, sinkhole (no speedups)/dnsmasq qps: "
                f"**{fmt(ratio(plain, dnsmasq))}**; speedups gain, qps(sinkhole) / "
                f"qps(no speedups): **{fmt(ratio(sink, plain))}** (reference)"
            )
    if scenario == "blocked":
        kept = ratio(sink, rows.get(NO_RECORDING))
        if kept is not None:
            lines.append(
                f"- hit recording between runs, 1 - qps(sinkhole) / qps(no recording): "
                f"**{(1 - kept) * 100:.1f}%** (reference: runs taken one after the other, "
                "which the VM's drift moves by more than the cost; the target is judged by "
                "the recording scenario)"
            )
        central = ratio(rows.get(CENTRAL), sink)
        if central is not None:
            lines.append(
                f"- central store on, qps(central) / qps(sinkhole): **{fmt(central)}** "
                "(reference: what shipping to PostgreSQL costs the DNS path)"
            )
    if scenario == "recording":
        measured = recording_cost(rows.get(TOGGLE))
        if measured is not None:
            cost, pairs = measured
            toggled = rows[TOGGLE]
            lines.append(
                f"- hit recording (privacy hashed), 1 - median(qps on / qps off) over {pairs} "
                f"pairs of adjacent {TOGGLE_PERIOD:g} s periods: **{cost * 100:.1f}%** (target "
                f"<= {TARGET_RECORDING * 100:.0f}% with zero lost): "
                f"{verdict(cost <= TARGET_RECORDING and toggled.lost == 0)}"
            )
    if scenario == "miss":
        r = ratio(sink, unbound)
        ok = None if r is None or sink is None else (r >= TARGET_MISS and sink.lost == 0)
        lines.append(
            f"- sinkhole/unbound qps: **{fmt(r)}** (target >= {TARGET_MISS:.2f} with zero "
            f"lost): {verdict(ok)}"
        )
        lines.append(f"- sinkhole/dnsmasq qps: **{fmt(ratio(sink, dnsmasq))}** (reference)")
    if scenario == "latency":
        r = ratio(sink, dnsmasq, key=lambda run: run.latency_s)
        ok = None if r is None else r <= TARGET_LATENCY
        lines.append(
            f"- sinkhole/dnsmasq avg latency: **{fmt(r)}** (target <= {TARGET_LATENCY:.2f}): "
            f"{verdict(ok)}"
        )
    if scenario == "allcores":
        lines.append(
            f"- sinkhole (workers: auto)/dnsmasq qps: **{fmt(ratio(sink, dnsmasq))}**; "
            f"sinkhole/unbound (num-threads {os.cpu_count()}) qps: "
            f"**{fmt(ratio(sink, unbound))}**; workers: auto / workers: 1: "
            f"**{fmt(ratio(sink, rows.get(ONE_WORKER)))}** (reference: dnsperf and nsd share "
            "the cores)"
        )
    return lines


SCENARIO_TITLES = {
    "blocked": "blocked: catalog names and random names under them, A and AAAA, max rate",
    "cached": f"cached: {CACHED_NAMES} forwarded names asked over and over, warm cache, max rate",
    "miss": "miss: distinct forwarded names, each new to the cache (one pass per run), max rate",
    "latency": f"latency: half cached, half blocked names at a fixed {LATENCY_QPS} q/s",
    "recording": "recording: blocked names at max rate, hit recording switched on and off "
    f"every {TOGGLE_PERIOD:g} s inside one server",
    "allcores": "all cores, unpinned: the latency mix at max rate; sinkhole with "
    "`workers: auto`, unbound with a thread per core, dnsmasq (one thread)",
}


def render(
    facts: list[tuple[str, str]],
    results: dict[str, dict[str, Summary]],
    failures: list[str],
    params: str,
    notes: str,
) -> str:
    out = ["# sinkhole benchmark results", ""]
    out.append("Written by `bench/run.py` (`make bench`); only the notes section below is kept")
    out.append("between runs. See bench/README.md for what each scenario measures.")
    out += ["", "## Machine and versions", "", "| | |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in facts]
    out += ["", f"Parameters: {params}", ""]
    out.append("Ratios are medians of run-by-run ratios (run N of every server ran back to back).")
    out.append("")
    load = dict(facts).get(LOAD_FACT, "")
    with contextlib.suppress(ValueError):
        if float(load) > BUSY_LOAD:
            out.append(
                f"**Warning:** the load average was {load} before the run: other work shared"
                " the cores, so these numbers understate every server and vary from run to"
                " run. Take the numbers that count on an idle machine."
            )
            out.append("")
    for scenario in SCENARIO_NAMES:
        rows = results.get(scenario)
        if not rows:
            continue
        out += [f"## {SCENARIO_TITLES[scenario]}", ""]
        out.append(
            "| server | qps (median) | avg latency ms (median) | lost / sent | NOERROR % "
            "| server CPU % | rest of its core busy % | qps per run |"
        )
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for label, s in rows.items():
            per_run = ", ".join(f"{r.qps:.0f}" for r in s.runs)
            out.append(
                f"| {label} | {s.qps:.0f} | {s.latency_ms:.3f} | {s.lost} / {s.sent} "
                f"| {s.noerror_pct:.1f} | {s.cpu_pct:.0f} | {s.others_pct:.0f} | {per_run} |"
            )
        out.append("")
        notes_here = [v.note for v in VARIANTS if v.note and v.label in rows]
        out += [f"Note: {n}." for n in notes_here] + ([""] if notes_here else [])
        out += target_lines(scenario, rows) + [""]
    if failures:
        out += ["## Failures", ""]
        for failure in failures:
            first, _, rest = failure.partition("\n")
            out.append(f"- {first}")
            if rest:
                out += ["", "  ```", *(f"  {line}" for line in rest.splitlines()), "  ```"]
        out.append("")
    out += ["## Notes", "", NOTES_BEGIN, notes.strip("\n"), NOTES_END, ""]
    return "\n".join(out)


def read_notes(path: Path) -> str:
    """The hand-written section of an earlier RESULTS.md, or the placeholder."""
    with contextlib.suppress(OSError):
        text = path.read_text()
        start, end = text.find(NOTES_BEGIN), text.find(NOTES_END)
        if start != -1 and end > start:
            return text[start + len(NOTES_BEGIN) : end]
    return DEFAULT_NOTES


# --------------------------------------------------------------------------- main


def run_all(
    setup: Setup,
    args: argparse.Namespace,
    results: dict[str, dict[str, Summary]],
    failures: list[str],
) -> None:
    """Every scenario, run by run, each server in turn within a run.

    Interleaving servers run by run, instead of finishing one server before the
    next, spreads any drift in the machine's other load over all of them alike.
    Each measured run gets a freshly started server: no cache or hit table is
    carried over from an earlier run.
    """
    variants = [v for v in VARIANTS if v.server in args.servers]
    broken: set[str] = set()  # servers that would not start: no point retrying
    for scenario in (s for s in SCENARIO_NAMES if s in args.only):
        for run in range(args.runs):
            for variant in variants:
                if scenario not in variant.scenarios or variant.server in broken:
                    continue
                if variant.central and setup.central_cluster is None:
                    continue
                where = f"{variant.label} / {scenario} run {run + 1}/{args.runs}"
                setup.scenario = scenario
                try:
                    with server_under_test(setup, variant) as (port, pid):
                        perf = run_once(setup, port, pid, scenario, run, args.duration)
                except BenchError as exc:
                    failures.append(f"{where}: {exc}")
                    log(f"FAILED {where}: {exc}")
                    if "before answering" in str(exc):
                        broken.add(variant.server)
                    continue
                if variant.central:
                    shipped = central_shipped(setup)
                    log(f"{where}: {shipped} blocked lookups shipped by the end of the run")
                results.setdefault(scenario, {}).setdefault(variant.label, Summary([]))
                results[scenario][variant.label].runs.append(perf)
                log(
                    f"{where}: {perf.qps:.0f} qps, {perf.latency_s * 1000:.3f} ms, "
                    f"lost {perf.lost}/{perf.sent}, server CPU {perf.server_cpu_pct:.0f}%, "
                    f"rest of its core busy {perf.others_cpu_pct:.0f}%"
                )
        for label, summary in results.get(scenario, {}).items():
            if summary.noerror_pct < MIN_NOERROR_PCT:
                failures.append(
                    f"{label} / {scenario}: only {summary.noerror_pct:.1f}% NOERROR answers"
                )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (median)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per run")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 1 run of 3 s each; writes no RESULTS.md unless --output",
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIO_NAMES),
        help="scenarios, comma-separated: " + ",".join(SCENARIO_NAMES),
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVER_NAMES),
        help="servers, comma-separated: " + ",".join(SERVER_NAMES),
    )
    parser.add_argument(
        "--zone-names",
        type=int,
        default=ZONE_NAMES,
        help=f"names in the upstream zone (at least {MIN_ZONE_NAMES})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="results file (default bench/RESULTS.md; none in --quick mode)",
    )
    parser.add_argument(
        "--keep-temp",
        action="store_true",
        help="keep the temp dir (configs, logs, query files) for debugging",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.duration = 1, 3
    elif args.output is None:
        args.output = RESULTS_PATH
    args.only = [s for s in args.only.split(",") if s]
    args.servers = [s for s in args.servers.split(",") if s]
    for value, valid in ((args.only, SCENARIO_NAMES), (args.servers, SERVER_NAMES)):
        unknown = sorted(set(value) - set(valid))
        if unknown:
            parser.error(f"unknown {', '.join(unknown)}; valid: {', '.join(valid)}")
    if args.runs < 1 or args.duration <= 0:
        parser.error("--runs and --duration must be positive")
    args.zone_names = max(args.zone_names, MIN_ZONE_NAMES)
    return args


def check_tools(servers: list[str]) -> list[str]:
    needed = ["dnsperf", "nsd"] + [s for s in servers if s != "sinkhole"]
    return [tool for tool in needed if not shutil.which(tool)]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every server ran and answered correctly."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    missing = check_tools(args.servers)
    if missing:
        print(
            f"missing tools: {', '.join(missing)} (apt-get install -y dnsperf nsd dnsmasq unbound)",
            file=sys.stderr,
        )
        return 2
    pin = len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None
    if not pin:
        print(
            "warning: fewer than 2 usable cores or no taskset: running unpinned; "
            "numbers will understate every server",
            file=sys.stderr,
        )

    load_before = load_average()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    workdir = Path(tempfile.mkdtemp(prefix="sinkhole-bench-"))
    results: dict[str, dict[str, Summary]] = {}
    failures: list[str] = []
    try:
        setup, miss_size = prepare(workdir, args.zone_names, args.runs, pin)
        log(f"temp dir {workdir}; {setup.catalog_note}")
        nsd_port, nsd_stack = start_nsd(workdir, setup.load_cpu)
        setup.nsd_port = nsd_port
        log(f"nsd answers on {LOOPBACK}:{nsd_port} ({args.zone_names} names)")
        with nsd_stack:
            if "sinkhole" in args.servers and "blocked" in args.only:
                start_central(setup, nsd_stack)
            run_all(setup, args, results, failures)
    except KeyboardInterrupt:
        log("interrupted; every process started has been stopped")
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        if args.keep_temp:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    params = (
        f"{args.runs} run(s) x {args.duration:g} s per scenario, dnsperf -c {DNSPERF_CLIENTS} "
        f"-q {DNSPERF_OUTSTANDING} -t {DNSPERF_TIMEOUT_S}; miss: {miss_size} distinct names per "
        f"run (-n 1); latency: -Q {LATENCY_QPS}; zone: {args.zone_names} names; "
        f"block list: {setup.catalog_note}; "
        + ("server on CPU 1, dnsperf and nsd on CPU 0" if pin else "unpinned")
        + (" (quick mode)" if args.quick else "")
    )
    output = args.output
    notes = read_notes(output or RESULTS_PATH)
    text = render(machine_facts(load_before, started), results, failures, params, notes)
    print(text)
    if output is not None:
        output.write_text(text)
        log(f"wrote {output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
