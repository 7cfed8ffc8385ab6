"""`sinkhole status`: a running server's health and counters, read from /health and /metrics."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from resolver.config import format_hostport, parse_hostport
from resolver.errors import SinkholeError

#: Seconds to wait for each of /health and /metrics.
STATUS_TIMEOUT = 3.0
TOP_BLOCKED = 5
#: A server listening on every address is asked on loopback.
WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def metrics_url(address: str) -> str:
    """'HOST:PORT' (as in metrics_listen) -> base URL, wildcards mapped to loopback.

    Raises:
        ConfigError: the address is not IP[:PORT].
    """
    host, port = parse_hostport(address, 9153, "--metrics")
    host = WILDCARD_TO_LOOPBACK.get(host, host)
    return f"http://{format_hostport(host, port)}"


def _get(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        # 503 is an answer (unhealthy), not a failure to reach the server.
        with exc:
            return exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        reason = getattr(reason, "strerror", None) or str(reason)
        raise SinkholeError(f"cannot reach sinkhole metrics at {url}: {reason}") from None


def read_status(base_url: str, timeout: float = STATUS_TIMEOUT) -> dict[str, Any]:
    """Health and the main counters of a running server, as one plain dict.

    Raises:
        SinkholeError: the server does not answer, or /metrics is not ours.
    """
    code, health_text = _get(f"{base_url}/health", timeout)
    mcode, metrics_text = _get(f"{base_url}/metrics", timeout)
    if mcode != 200:
        raise SinkholeError(f"{base_url}/metrics answered HTTP {mcode}")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    try:
        for family in text_string_to_metric_families(metrics_text):
            for s in family.samples:
                samples.setdefault(s.name, []).append((s.labels, s.value))
    except ValueError as exc:
        raise SinkholeError(f"{base_url}/metrics is not Prometheus text: {exc}") from None
    if "sinkhole_queries_total" not in samples:
        raise SinkholeError(f"{base_url}/metrics has no sinkhole counters (another service?)")

    def one(name: str, default: float = 0.0) -> float:
        values = samples.get(name)
        return values[0][1] if values else default

    def by(name: str, label: str) -> dict[str, float]:
        return {labels[label]: value for labels, value in samples.get(name, [])}

    upstreams = []
    up = by("sinkhole_upstream_up", "upstream")
    answers = by("sinkhole_upstream_answers_total", "upstream")
    errors = by("sinkhole_upstream_errors_total", "upstream")
    lsum = by("sinkhole_upstream_latency_seconds_sum", "upstream")
    lcount = by("sinkhole_upstream_latency_seconds_count", "upstream")
    for name in up:
        n = lcount.get(name, 0)
        upstreams.append(
            {
                "upstream": name,
                "up": bool(up[name]),
                "answers": int(answers.get(name, 0)),
                "errors": int(errors.get(name, 0)),
                "mean_latency_ms": round(lsum.get(name, 0) / n * 1000, 3) if n else None,
            }
        )
    blocked = by("sinkhole_blocked_total", "service")
    top = sorted(blocked.items(), key=lambda kv: (-kv[1], kv[0]))
    build = samples.get("sinkhole_build_info", [({}, 0)])[0][0]
    version = one("sinkhole_policy_version", -1)
    return {
        "url": base_url,
        "healthy": code == 200,
        "health": health_text.strip(),
        "version": build.get("version"),
        "queries": {k: int(v) for k, v in by("sinkhole_queries_total", "result").items()},
        "blocked": {k: int(v) for k, v in top},
        "upstreams": upstreams,
        "cache_entries": int(one("sinkhole_cache_entries")),
        "cache_hit_ratio": one("sinkhole_cache_hit_ratio"),
        "recorder_backlog": int(one("sinkhole_recorder_backlog")),
        "recorder_written": int(one("sinkhole_recorder_written_total")),
        "database_fault": bool(one("sinkhole_database_fault")),
        "policy_version": None if version < 0 else int(version),
    }


def render_status(st: dict[str, Any]) -> str:
    """The few lines an administrator reads first."""
    where = st["url"].removeprefix("http://")
    state = "healthy" if st["healthy"] else f"UNHEALTHY: {st['health']}"
    lines = [f"sinkhole {st['version'] or '?'} at {where}: {state}"]
    q = st["queries"]
    shown = [f"{k} {v}" for k, v in sorted(q.items(), key=lambda kv: -kv[1]) if v]
    lines.append(f"queries: {sum(q.values())}" + (f" ({', '.join(shown)})" if shown else ""))
    top = list(st["blocked"].items())[:TOP_BLOCKED]
    lines.append("top blocked: " + (", ".join(f"{k} {v}" for k, v in top) or "none yet"))
    for u in st["upstreams"]:
        mean = f"mean {u['mean_latency_ms']:.1f} ms" if u["mean_latency_ms"] is not None else ""
        detail = ", ".join(
            x for x in (mean, f"{u['answers']} answers", f"{u['errors']} errors") if x
        )
        lines.append(f"upstream {u['upstream']}: {'up' if u['up'] else 'DOWN'} ({detail})")
    lines.append(f"cache: {st['cache_entries']} entries, hit ratio {st['cache_hit_ratio']:.0%}")
    db = "database FAULT (hits kept in memory)" if st["database_fault"] else "database ok"
    lines.append(
        f"recorder: backlog {st['recorder_backlog']}, written {st['recorder_written']}; {db}"
    )
    pv = st["policy_version"]
    lines.append(f"policy version: {pv if pv is not None else 'none (database unreadable)'}")
    return "\n".join(lines)
