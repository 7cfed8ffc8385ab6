"""/health and /metrics over HTTP: a Prometheus collector read at scrape time, an upstream probe."""

from __future__ import annotations

import logging
import secrets
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from resolver import __version__
from resolver.config import bind_error_reason, format_hostport, parse_hostport
from resolver.errors import SinkholeError
from resolver.pipeline import Outcome
from resolver.upstream import LATENCY_BUCKETS, Upstream

if TYPE_CHECKING:
    from resolver.server import Server

log = logging.getLogger("sinkhole.metrics")

#: Seconds between two rounds of upstream probes.
PROBE_INTERVAL = 2.0
#: How long one probe waits for its answer (seconds).
PROBE_TIMEOUT = 1.0
#: Unanswered probes in a row before an upstream counts as down: one lost datagram is no outage.
PROBE_DOWN_AFTER = 2
#: The probe question: the root zone ("."), type NS, class IN. Every recursive resolver
#: answers it from its priming data, and any answer at all proves the resolver is there.
PROBE_QUESTION = b"\x00" + struct.pack("!HH", 2, 1)


def probe_packet(ident: int) -> bytes:
    """A query for ". NS" with recursion desired."""
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + PROBE_QUESTION


def is_probe_answer(data: bytes, ident: int) -> bool:
    """A well-formed response to our probe: our ID, QR set, our question echoed (any rcode)."""
    if len(data) < 12 + len(PROBE_QUESTION):
        return False
    rid, flags, qdcount = struct.unpack_from("!HHH", data)
    return (
        rid == ident
        and flags & 0x8000 != 0
        and qdcount == 1
        and data[12 : 12 + len(PROBE_QUESTION)] == PROBE_QUESTION
    )


def probe_upstreams(
    targets: list[tuple[str, int]], timeout: float = PROBE_TIMEOUT
) -> dict[tuple[str, int], bool]:
    """Ask every target ". NS" at once; True for each that answered within the timeout."""
    result = dict.fromkeys(targets, False)
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    try:
        for target in targets:
            family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(sock)
            ident = secrets.randbits(16)
            try:
                sock.setblocking(False)
                # connect(): the kernel drops datagrams from anyone else, and a closed
                # port comes back as ECONNREFUSED instead of a silent timeout.
                sock.connect(target)
                sock.send(probe_packet(ident))
            except OSError:
                continue
            sel.register(sock, selectors.EVENT_READ, (target, ident))
        deadline = time.monotonic() + timeout
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in sel.select(remaining):
                target, ident = key.data
                try:
                    data = key.fileobj.recv(65_535)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    sel.unregister(key.fileobj)
                    continue
                if is_probe_answer(data, ident):
                    result[target] = True
                    sel.unregister(key.fileobj)
    finally:
        sel.close()
        for sock in socks:
            sock.close()
    return result


@dataclass
class ProbeState:
    """What the active probe knows about one upstream."""

    alive: bool | None = None
    misses: int = 0


@dataclass(frozen=True)
class UpstreamStatus:
    upstream: Upstream
    up: bool
    why: str


class SinkholeCollector(Collector):
    """Turns the Server's counters into Prometheus metrics when scraped (never per query)."""

    def __init__(self, metrics: MetricsServer) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        stats = self.metrics.stats()
        counts = stats["counts"]
        queries = CounterMetricFamily(
            "sinkhole_queries", "DNS queries answered, by result.", labels=["result"]
        )
        for outcome in Outcome:
            queries.add_metric([outcome.name.lower()], counts[outcome])
        yield queries

        blocked = CounterMetricFamily(
            "sinkhole_blocked",
            "Blocked queries by service (or category, for imported lists and custom rules).",
            labels=["service"],
        )
        for service, n in sorted(stats["blocked_by"].items()):
            blocked.add_metric([service], n)
        yield blocked

        latency = HistogramMetricFamily(
            "sinkhole_upstream_latency_seconds",
            "Time from sending a query upstream to its valid answer.",
            labels=["upstream"],
        )
        answers = CounterMetricFamily(
            "sinkhole_upstream_answers", "Valid answers from each upstream.", labels=["upstream"]
        )
        errors = CounterMetricFamily(
            "sinkhole_upstream_errors",
            "Upstream attempts that failed (timeout, refused, SERVFAIL).",
            labels=["upstream"],
        )
        up = GaugeMetricFamily(
            "sinkhole_upstream_up",
            "1 when the upstream answers (active probe; before the first probe: recent queries).",
            labels=["upstream"],
        )
        for status in self.metrics.upstream_status(stats):
            u = status.upstream
            name = str(u)
            per_bucket = list(u.latency_counts)
            buckets: list[tuple[str, float]] = []
            running = 0
            for bound, n in zip(LATENCY_BUCKETS, per_bucket, strict=False):
                running += n
                buckets.append((repr(float(bound)), running))
            total = sum(per_bucket)
            buckets.append(("+Inf", total))
            latency.add_metric([name], buckets, u.latency_sum)
            answers.add_metric([name], u.answers)
            errors.add_metric([name], u.errors)
            up.add_metric([name], 1 if status.up else 0)
        yield latency
        yield answers
        yield errors
        yield up

        hits, misses = stats["cache_hits"], stats["cache_misses"]
        yield GaugeMetricFamily(
            "sinkhole_cache_entries", "Answers held in the cache.", value=stats["cache_entries"]
        )
        yield CounterMetricFamily("sinkhole_cache_hits", "Cache lookups that hit.", value=hits)
        yield CounterMetricFamily(
            "sinkhole_cache_misses", "Cache lookups that missed.", value=misses
        )
        yield GaugeMetricFamily(
            "sinkhole_cache_hit_ratio",
            "Cache hits / lookups since start (0 before the first lookup).",
            value=hits / (hits + misses) if hits + misses else 0.0,
        )

        yield GaugeMetricFamily(
            "sinkhole_recorder_backlog",
            "Blocked attempts not yet written to the database.",
            value=stats["recorder_backlog"],
        )
        yield CounterMetricFamily(
            "sinkhole_recorder_written",
            "Blocked attempts written to the database.",
            value=stats["recorder_written"],
        )
        yield GaugeMetricFamily(
            "sinkhole_database_fault",
            "1 while the database cannot be written (hits wait in memory).",
            value=1 if stats["database_fault"] else 0,
        )
        version = stats["policy_version"]
        yield GaugeMetricFamily(
            "sinkhole_policy_version",
            "Version of the policy in use; -1: database unreadable, the config's policy is used.",
            value=-1 if version is None else version,
        )
        healthy, _ = self.metrics.health(stats)
        yield GaugeMetricFamily(
            "sinkhole_healthy", "1 when /health answers 200.", value=1 if healthy else 0
        )
        yield GaugeMetricFamily(
            "sinkhole_start_time_seconds", "Unix time the server started.", value=stats["started"]
        )
        yield InfoMetricFamily(
            "sinkhole_build", "sinkhole version.", value={"version": __version__}
        )
        if stats["shipper"] is not None:  # the central store (resolver/central)
            from resolver.central.hook import metric_families

            yield from metric_families(stats["shipper"])


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    server_version = f"sinkhole/{__version__}"

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def _respond(self, head: bool) -> None:
        metrics = self.server.metrics
        path = urlsplit(self.path).path
        try:
            if path == "/health":
                healthy, reason = metrics.health()
                status = 200 if healthy else 503
                body = f"{reason}\n".encode()
                ctype = "text/plain; charset=utf-8"
            elif path == "/metrics":
                status, body, ctype = 200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST
            else:
                status, body = 404, b"not found: try /health or /metrics\n"
                ctype = "text/plain; charset=utf-8"
        except SinkholeError as exc:  # the event loop did not hand over its counters
            status, body, ctype = 503, f"{exc}\n".encode(), "text/plain; charset=utf-8"
        except Exception:  # noqa: BLE001 - a scrape bug must not take the thread down
            log.exception("error answering %s", path)
            status, body, ctype = 500, b"internal error\n", "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per scrape or health check would drown the journal


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: MetricsServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.metrics = metrics
        super().__init__(address, _Handler)


class MetricsServer:
    """Serves /health and /metrics for one Server on `config.metrics_listen`, in threads."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SinkholeCollector(self))
        self.probes: dict[tuple[str, int], ProbeState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: _HttpServer | None = None
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (the port is real even when the config says 0)."""
        if self._httpd is None:
            raise RuntimeError("metrics server is not started")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind metrics_listen and serve in the background; probe the upstreams.

        Raises:
            SinkholeError: the address cannot be bound ("cannot listen on metrics ...").
        """
        host, port = parse_hostport(self.server.config.metrics_listen, 9153, "metrics_listen")
        try:
            self._httpd = _HttpServer((host, port), self)
        except OSError as exc:
            raise SinkholeError(
                f"cannot listen on metrics {format_hostport(host, port)}: {bind_error_reason(exc)}"
            ) from None
        self._stop.clear()
        self._threads = [
            threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.5},
                name="sinkhole-metrics",
                daemon=True,
            ),
            threading.Thread(target=self._probe_loop, name="sinkhole-probe", daemon=True),
        ]
        for t in self._threads:
            t.start()
        log.info("health and metrics on http://%s/", format_hostport(*self.address))

    def stop(self) -> None:
        """Stop serving and probing, close the socket (safe to call twice)."""
        self._stop.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        for t in self._threads:
            t.join(PROBE_TIMEOUT + 1.0)
        self._threads = []

    # -- upstream probe -----------------------------------------------------------------------

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.probe_once()
            except Exception:  # noqa: BLE001 - the probe must never die silently
                log.exception("upstream probe failed")
            self._stop.wait(PROBE_INTERVAL)

    def probe_once(self) -> None:
        """One round: ask every configured upstream ". NS" and record who answered."""
        # The forwarder is replaced whole on reload: read it once, probe what it holds now.
        targets = [(u.host, u.port) for u in list(self.server.forwarder.upstreams)]
        answered = probe_upstreams(targets)
        with self._lock:
            probes = {t: self.probes.get(t) or ProbeState() for t in targets}
            for target, ok in answered.items():
                state = probes[target]
                name = format_hostport(*target)
                if ok:
                    if state.alive is False:
                        log.warning("upstream %s answers health probes again", name)
                    state.alive, state.misses = True, 0
                    continue
                state.misses += 1
                if state.misses >= PROBE_DOWN_AFTER and state.alive is not False:
                    log.warning(
                        "upstream %s does not answer health probes (%d in a row)",
                        name,
                        state.misses,
                    )
                    state.alive = False
            self.probes = probes

    def stats(self) -> dict:
        """The server's counters, copied on its event loop (`Server.snapshot`)."""
        return self.server.snapshot()

    def upstream_status(self, stats: dict) -> list[UpstreamStatus]:
        """Each upstream, up or not and why: the probe decides once it has an opinion."""
        with self._lock:
            probes = dict(self.probes)
        out = []
        for u in stats["upstreams"]:
            state = probes.get((u.host, u.port))
            if state is not None and state.alive is not None:
                # The probe beats the query-driven state both ways: a stopped upstream
                # nobody queries still looks "up" there, and a revived one sits in backoff.
                why = "answers probes" if state.alive else "no answer to probes"
                out.append(UpstreamStatus(u, state.alive, why))
            else:
                why = "answering queries" if u.up else "in backoff after failed queries"
                out.append(UpstreamStatus(u, u.up, why))
        return out

    # -- health -------------------------------------------------------------------------------

    def health(self, stats: dict | None = None) -> tuple[bool, str]:
        """(True, "ok"), or (False, why not): the event loop answering, the DNS listeners
        open, at least one upstream up."""
        if stats is None:
            try:
                stats = self.stats()
            except SinkholeError as exc:
                return False, str(exc)
        if not stats["listeners_open"]:
            return False, "DNS listeners are not open"
        statuses = self.upstream_status(stats)
        if not any(s.up for s in statuses):
            detail = ", ".join(f"{s.upstream} {s.why}" for s in statuses) or "none configured"
            return False, f"no upstream is up: {detail}"
        return True, "ok"
