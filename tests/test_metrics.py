"""/metrics counts what the server did; /health follows the upstream; `sinkhole status`."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from resolver import __version__
from resolver.cli import cli
from resolver.config import parse_config
from resolver.errors import SinkholeError
from resolver.metrics import MetricsServer, is_probe_answer, probe_packet, probe_upstreams
from resolver.pipeline import Outcome
from resolver.server import Server
from resolver.upstream import LATENCY_BUCKETS
from tests.conftest import SinkholeFactory, hostport, query
from tests.dnstest.authserver import AuthServer
from tests.dnstest.daemons import free_port
from tests.dnstest.zone import Zone

#: How long /health may take to notice an upstream change (probe interval x misses + slack).
HEALTH_DEADLINE = 20.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, 5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(port: int) -> tuple[Samples, dict[str, str]]:
    """Every sample of /metrics keyed by (name, sorted labels), and each family's type."""
    status, ctype, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(body):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(check: Callable[[], bool], deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"not within {deadline}s: {what}")
        time.sleep(0.2)


def health(port: int) -> tuple[int, str]:
    status, _, body = get(f"http://127.0.0.1:{port}/health")
    return status, body


def test_metrics_count_known_traffic_exactly(sinkhole: SinkholeFactory) -> None:
    mport = free_port()
    server = sinkhole({"metrics_listen": f"127.0.0.1:{mport}"})
    # The start-up probes of the test helper went through the server: count from here.
    before, _ = scrape(mport)
    for _ in range(7):
        answer = query(server.address, "chatgpt.com", "A")
        assert [rr.to_text() for rr in answer.answer[0]] == ["0.0.0.0"]
    names = [f"host-{i:03d}.example.test" for i in range(10, 15)]
    for name in names:
        assert query(server.address, name, "A").answer
    for _ in range(3):
        assert query(server.address, names[0], "A").answer

    def written() -> bool:
        now, _ = scrape(mport)
        return (
            value(now, "sinkhole_recorder_written_total")
            - value(before, "sinkhole_recorder_written_total")
            == 7
        )

    wait_for(written, 10, "the recorder writes the 7 hits")
    after, types = scrape(mport)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    expected = {o.name.lower(): 0 for o in Outcome}
    expected.update(blocked=7, forwarded=5, cached=3)
    got = {r: delta("sinkhole_queries_total", result=r) for r in expected}
    assert got == expected
    assert delta("sinkhole_blocked_total", service="openai-chatgpt") == 7
    assert sum(v for (n, _), v in after.items() if n == "sinkhole_blocked_total") == value(
        after, "sinkhole_queries_total", result="blocked"
    )

    upstream = next(dict(k[1])["upstream"] for k in after if k[0] == "sinkhole_upstream_up")
    assert delta("sinkhole_upstream_latency_seconds_count", upstream=upstream) == 5
    assert delta("sinkhole_upstream_answers_total", upstream=upstream) == 5
    assert delta("sinkhole_upstream_errors_total", upstream=upstream) == 0
    assert delta("sinkhole_upstream_latency_seconds_sum", upstream=upstream) > 0
    bounds = [float(dict(k[1])["le"]) for k in after if k[0].endswith("_bucket")]
    assert bounds == [*LATENCY_BUCKETS, float("inf")]
    assert value(after, "sinkhole_upstream_up", upstream=upstream) == 1

    assert delta("sinkhole_cache_hits_total") == 3
    assert delta("sinkhole_cache_misses_total") == 5
    assert delta("sinkhole_cache_entries") == 5
    hits = value(after, "sinkhole_cache_hits_total")
    misses = value(after, "sinkhole_cache_misses_total")
    assert value(after, "sinkhole_cache_hit_ratio") == pytest.approx(hits / (hits + misses))

    assert value(after, "sinkhole_recorder_backlog") == 0
    assert value(after, "sinkhole_database_fault") == 0
    assert value(after, "sinkhole_policy_version") >= 0
    assert value(after, "sinkhole_healthy") == 1
    assert value(after, "sinkhole_build_info", version=__version__) == 1
    assert types["sinkhole_queries"] == "counter"
    assert types["sinkhole_upstream_latency_seconds"] == "histogram"
    assert types["sinkhole_cache_hit_ratio"] == "gauge"

    result = CliRunner().invoke(cli, ["status", "--metrics", f"127.0.0.1:{mport}", "--json"])
    assert result.exit_code == 0, result.output
    st = json.loads(result.output)
    assert st["healthy"] is True
    assert st["queries"]["blocked"] == value(after, "sinkhole_queries_total", result="blocked")
    assert st["blocked"]["openai-chatgpt"] == 7
    assert st["upstreams"][0]["up"] is True
    assert st["upstreams"][0]["mean_latency_ms"] > 0

    # Without --metrics the address comes from the config's metrics_listen.
    result = CliRunner().invoke(cli, ["status", "--config", str(server.config_path)])
    assert result.exit_code == 0, result.output
    assert f"at 127.0.0.1:{mport}: healthy" in result.output
    assert "top blocked: openai-chatgpt 7" in result.output
    assert f"upstream {upstream}: up" in result.output


def test_health_follows_the_only_upstream(sinkhole: SinkholeFactory, zone: Zone) -> None:
    port = free_port()
    mport = free_port()
    auth = AuthServer(zone, port=port).start()
    try:
        sinkhole({"upstreams": [f"127.0.0.1:{port}"], "metrics_listen": f"127.0.0.1:{mport}"})
        wait_for(lambda: health(mport)[0] == 200, HEALTH_DEADLINE, "/health 200 at start")
        assert health(mport)[1].strip() == "ok"

        auth.stop()
        wait_for(lambda: health(mport)[0] == 503, HEALTH_DEADLINE, "/health 503, upstream down")
        status, body = health(mport)
        assert f"127.0.0.1:{port}" in body and "no upstream" in body, body
        result = CliRunner().invoke(cli, ["status", "--metrics", f"127.0.0.1:{mport}"])
        assert result.exit_code == 1
        assert "UNHEALTHY" in result.output and "DOWN" in result.output

        auth = AuthServer(zone, port=port).start()
        wait_for(lambda: health(mport)[0] == 200, HEALTH_DEADLINE, "/health 200, upstream back")
    finally:
        auth.stop()


def test_status_of_an_unreachable_server_is_one_line_and_exit_1() -> None:
    port = free_port()
    result = CliRunner().invoke(cli, ["status", "--metrics", f"127.0.0.1:{port}"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], result.output
    assert "Traceback" not in result.output


def test_status_says_so_when_metrics_are_off(tmp_path: Path) -> None:
    config = tmp_path / "off.yaml"
    config.write_text('metrics_listen: ""\n')
    result = CliRunner().invoke(cli, ["status", "--config", str(config)])
    assert result.exit_code == 1
    assert "metrics_listen is empty" in result.output


# -- in-process: the MetricsServer on a real Server object ----------------------------------


def bare_server(tmp_path: Path, upstream: AuthServer, metrics_listen: str) -> Server:
    """A Server built from a config but never started: no DNS listener is open."""
    config = parse_config(
        {
            "upstreams": [hostport(upstream.address)],
            "database": str(tmp_path / "bare.db"),
            "metrics_listen": metrics_listen,
        }
    )
    return Server(config)


def test_health_is_503_while_dns_listeners_are_closed(tmp_path: Path, upstream: AuthServer) -> None:
    metrics = MetricsServer(bare_server(tmp_path, upstream, "127.0.0.1:0"))
    metrics.start()
    try:
        _, port = metrics.address
        status, body = health(port)
        assert status == 503 and "DNS listeners are not open" in body
        samples, _ = scrape(port)
        assert value(samples, "sinkhole_healthy") == 0
        assert get(f"http://127.0.0.1:{port}/nope")[0] == 404
    finally:
        metrics.stop()


def test_metrics_port_in_use_is_one_clear_error(tmp_path: Path, upstream: AuthServer) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        server = bare_server(tmp_path, upstream, f"127.0.0.1:{port}")
        with pytest.raises(SinkholeError) as err:
            MetricsServer(server).start()
    assert str(err.value).startswith(
        f"cannot listen on metrics 127.0.0.1:{port}: address already in use"
    )


def test_stop_closes_the_metrics_socket(tmp_path: Path, upstream: AuthServer) -> None:
    metrics = MetricsServer(bare_server(tmp_path, upstream, "127.0.0.1:0"))
    metrics.start()
    _, port = metrics.address
    metrics.stop()
    metrics.stop()  # twice is harmless: shutdown paths may overlap
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # free again: the listening socket is closed
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def test_probe_counts_any_answer_with_our_id(upstream: AuthServer) -> None:
    # Our test upstream REFUSES ". NS" (not its zone): still an answer, so still alive.
    closed = ("127.0.0.1", free_port())
    result = probe_upstreams([upstream.address, closed], timeout=1.0)
    assert result == {upstream.address: True, closed: False}
    assert upstream.count(".", "NS") == 1


def test_probe_answer_must_match_id_and_question() -> None:
    query = probe_packet(0x1234)
    answer = bytearray(query)
    answer[2] |= 0x80
    assert is_probe_answer(bytes(answer), 0x1234)
    assert not is_probe_answer(bytes(answer), 0x4321)  # someone else's ID
    assert not is_probe_answer(query, 0x1234)  # a query, not a response
    assert not is_probe_answer(bytes(answer[:12]), 0x1234)  # no question
