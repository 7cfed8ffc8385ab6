"""Tests of the weekly report: every figure against an independent count, and every format."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sqlite3
import struct
import subprocess
import zlib
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlite_utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resolver import report as rpt
from resolver.errors import SinkholeError, StoreError
from resolver.policy import Rule, Verdict
from resolver.store import Recorder, Store
from resolver.store.db import connect
from resolver.store.migrations import m001_initial, m002_hits_5min
from resolver.store.rollups import HIT_ROLLUPS, ROLLUP_BY_BATCH, purge_hits, write_hits
from resolver.store.schema import migrate

PARIS = "Europe/Paris"
GROUPS = {"ai-lab": ["10.1.9.0/24"], "finance": ["10.2.0.0/16"]}
# (service id, category, qname) as the catalog and the bypass list would record them.
SERVICES = [
    ("openai-chatgpt", "ai-chatbots", "chatgpt.com"),
    ("openai-chatgpt", "ai-chatbots", "ab.chatgpt.com"),
    ("google-gemini", "ai-chatbots", "gemini.google.com"),
    ("anthropic-claude", "ai-chatbots", "claude.ai"),
    (None, "custom", "chat.example.net"),
    (None, "list:extra", "bot.example.org"),
    ("firefox-canary", "bypass", "use-application-dns.net"),
    ("public-doh", "bypass", "dns.google"),
]
NAMES = {
    "openai-chatgpt": "ChatGPT (OpenAI)",
    "google-gemini": "Gemini (Google)",
    "anthropic-claude": "Claude (Anthropic)",
    "firefox-canary": "Firefox DoH canary",
    "public-doh": "Public DoH resolvers",
}
CLIENTS = [
    ("10.1.9.7", "ai-lab"),
    ("10.1.9.8", "ai-lab"),
    ("10.2.3.4", "finance"),
    ("10.2.3.5", "finance"),
    ("192.168.1.20", None),
    ("192.168.1.21", None),
]
QTYPES = ("A", "AAAA", "HTTPS")
FORMATS = ("text", "markdown", "html", "csv", "json")
SCHEMA_KEYS = {
    "schema",
    "period",
    "totals",
    "services",
    "days",
    "groups",
    "top_clients",
    "top_names",
    "bypass",
    "breakdown",
    "first_attempt",
    "last_attempt",
    "privacy",
    "gaps",
    "changes",
    "lang",
}
# Far after every test period, so the retention note stays out of the way unless wanted.
NOW = datetime(2026, 12, 1, tzinfo=UTC)

Hit = tuple[int, str | None, str | None, str, str, str | None, str, int]


def make_db(path: Path) -> Path:
    """An empty database with the schema store.py creates, rollup trigger included."""
    Store(path).close()
    return path


def make_old_db(path: Path) -> Path:
    """An empty database as sinkhole created it before the rollup (schema 1)."""
    db = sqlite_utils.Database(path)
    migrate(db, (m001_initial,))
    db.close()
    return path


def insert_hits(path: Path, hits: list[Hit]) -> None:
    """Rows of (ts, client, group, qname, qtype, service, category, count)."""
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO hits (ts, client, client_group, qname, qtype, service, category, rule,"
            " action, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'null', ?)",
            [(ts, c, g, q, t, s, cat, q, n) for ts, c, g, q, t, s, cat, n in hits],
        )
    conn.close()


def record_hits(path: Path, hits: list[Hit]) -> None:
    """The same rows written as the recorder writes a batch: `write_hits`, in one write
    transaction, which rolls them up key by key with the per-hit trigger off."""
    conn = connect(path)
    conn.execute("BEGIN IMMEDIATE")
    write_hits(conn, [(ts, c, g, q, t, s, cat, q, "null", n) for ts, c, g, q, t, s, cat, n in hits])
    conn.execute("COMMIT")
    conn.close()


#: The two ways hits reach the rollups: a plain INSERT, which the trigger on `hits`
#: follows hit by hit (tests, imports, an administrator's tools), and the recorder's.
WRITERS = {"trigger": insert_hits, "recorder": record_hits}


def insert_traffic(path: Path, rows: list[tuple[int, int, int]]) -> None:
    """Rows of (minute, queries, recorder_lag)."""
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO traffic (minute, queries, recorder_lag) VALUES (?, ?, ?)", rows
        )
    conn.close()


def generate_hits(
    db_path: Path, n: int, start: int, end: int, seed: int, writer: str = "trigger"
) -> list[Hit]:
    """Insert n hits in [start, end) as bursts of a browser's lookups, plus a traffic row
    with 10 queries for every minute; return the hits for independent counting. With
    writer "recorder", the hits are written as the recorder writes, 500 to a batch."""
    rng = random.Random(seed)
    hits: list[Hit] = []
    while len(hits) < n:
        client, group = rng.choice(CLIENTS)
        service, category, qname = rng.choice(SERVICES)
        t = rng.randrange(start, end)
        # A burst: A, AAAA, HTTPS at once, then retries spread so that some fall within
        # the 5-minute gap and some beyond it.
        for _ in range(min(rng.randint(1, 5), n - len(hits))):
            ts = min(t, end - 1)
            hits.append(
                (
                    ts,
                    client,
                    group,
                    qname,
                    rng.choice(QTYPES),
                    service,
                    category,
                    rng.choice((1, 1, 1, 2, 3)),
                )
            )
            t += rng.choice((0, 1, 30, 200, 290, 301, 400))
    if writer == "recorder":
        for i in range(0, len(hits), 500):
            record_hits(db_path, hits[i : i + 500])
    conn = sqlite3.connect(db_path)
    with conn:
        if writer == "trigger":
            conn.executemany(
                "INSERT INTO hits (ts, client, client_group, qname, qtype, service, category,"
                " rule, action, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'null', ?)",
                ((ts, c, g, q, t, s, cat, q, k) for ts, c, g, q, t, s, cat, k in hits),
            )
        conn.executemany(
            "INSERT OR IGNORE INTO traffic (minute, queries) VALUES (?, 10)",
            ((m,) for m in range(start - start % 60, end, 60)),
        )
    conn.close()
    return hits


def build(path: Path, start: datetime, end: datetime, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "tz": PARIS,
        "privacy": "ip",
        "retention_days": 90,
        "groups": GROUPS,
        "service_names": NAMES,
        "top": 10,
        "now": NOW,
    }
    args.update(kw)
    return rpt.build_report(path, start=start, end=end, **args)


# -- the independent count -------------------------------------------------------------------


def svc_key(service: str | None, category: str) -> str:
    return service or category


def count_attempt_starts(hits: list[Hit]) -> set[int]:
    """Indexes of the hits that start an attempt, by the written rule, in plain Python."""
    order = sorted(range(len(hits)), key=lambda i: hits[i][0])
    last_seen: dict[tuple[str, str], int] = {}
    starts = set()
    for i in order:
        ts, client, group, _, _, service, category, _ = hits[i]
        ident = client or f"group:{group or 'other'}"
        key = (ident, svc_key(service, category))
        if key not in last_seen or ts - last_seen[key] > 300:
            starts.add(i)
        last_seen[key] = ts
    return starts


def expected_report(hits: list[Hit], t0: int, t1: int, tz: str) -> dict[str, Any]:
    zi = ZoneInfo(tz)
    inside = [h for h in hits if t0 <= h[0] < t1]
    starts = count_attempt_starts(inside)
    chat = [(i, h) for i, h in enumerate(inside) if h[6] != "bypass"]
    days: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    services: dict[str, list[Any]] = defaultdict(lambda: [0, 0, set()])
    groups: dict[str, list[Any]] = defaultdict(lambda: [0, 0, set()])
    clients: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    names: dict[tuple[str, str], int] = defaultdict(int)
    for i, (ts, client, group, qname, _, service, category, count) in chat:
        new = 1 if i in starts else 0
        day = datetime.fromtimestamp(ts, zi).date().isoformat()
        days[day][0] += count
        days[day][1] += new
        for table, key in ((services, svc_key(service, category)), (groups, group or "other")):
            table[key][0] += count
            table[key][1] += new
            table[key][2].add(client)
        clients[client][0] += count
        clients[client][1] += new
        names[(qname, svc_key(service, category))] += count
    bypass: dict[str, list[Any]] = defaultdict(lambda: [0, 0, set()])
    for i, (_, client, _, _, _, service, category, count) in enumerate(inside):
        if category == "bypass":
            bypass[svc_key(service, category)][0] += count
            bypass[svc_key(service, category)][1] += 1 if i in starts else 0
            bypass[svc_key(service, category)][2].add(client)
    previous: dict[str, int] = defaultdict(int)
    # The previous period ends where this one starts and is as long on the wall clock.
    wall = [datetime.fromtimestamp(t, zi).replace(tzinfo=None) for t in (t0, t1)]
    p0 = (wall[0] - (wall[1] - wall[0])).replace(tzinfo=zi).timestamp()
    for ts, _, _, _, _, service, category, count in hits:
        if p0 <= ts < t0 and category != "bypass":
            previous[svc_key(service, category)] += count
    return {
        "blocked": sum(h[7] for _, h in chat),
        "attempts": sum(1 for i, _ in chat if i in starts),
        "clients": len({h[1] for _, h in chat}),
        "days": {d: tuple(v) for d, v in days.items()},
        "services": {k: (v[0], v[1], len(v[2]), previous.get(k, 0)) for k, v in services.items()}
        | {k: (0, 0, 0, p) for k, p in previous.items() if k not in services},
        "groups": {k: (v[0], v[1], len(v[2])) for k, v in groups.items()},
        "clients_table": {k: tuple(v) for k, v in clients.items()},
        "names": names,
        "bypass": {k: (v[0], v[1], len(v[2])) for k, v in bypass.items()},
        "first": min((h[0] for _, h in chat), default=None),
        "last": max((h[0] for _, h in chat), default=None),
    }


def ts_of(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp())


def expected_rollups(rows: list[tuple]) -> dict[str, set[tuple]]:
    """Every table of migration m003 as it must be for these hits, in plain Python; rows of
    (id, ts, client, client_group, qname, service, category, count) as `hits` holds them."""

    def keys(row: tuple) -> tuple[str, str, str, str]:
        _, _, client, group, _, service, category, _ = row
        return (
            client or f"group:{group or 'other'}",
            service or category or "custom",
            group or "other",
            category or "",
        )

    # The rule hit by hit, over all the hits, in the order (ts, id).
    order = sorted(rows, key=lambda r: (r[1], r[0]))
    seen: dict[tuple[str, str], int] = {}
    starts: set[int] = set()
    for row in order:
        ident, svc, _, _ = keys(row)
        if (ident, svc) not in seen or row[1] - seen[(ident, svc)] > 300:
            starts.add(row[0])
        seen[(ident, svc)] = row[1]
    buckets: dict[tuple, list[Any]] = {}
    hour: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    client: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    name: dict[tuple, int] = defaultdict(int)
    for row in order:
        id_, ts, _, _, qname, _, _, count = row
        ident, svc, grp, cat = keys(row)
        key = (ts // 300, ident, svc)
        if key in buckets:
            buckets[key][1] = ts
            assert id_ not in starts, "only the first lookup of a bucket can start an attempt"
        else:
            buckets[key] = [ts, ts, grp, cat, int(id_ in starts)]
        for table, k in (
            (hour, (ts // 3600, svc, grp, cat)),
            (client, (ts // 3600, ident, svc, grp, cat)),
        ):
            table[k][0] += count
            table[k][1] += id_ in starts
        name[(ts // 3600, svc, cat, qname)] += count
    return {
        "hits_attempts": {(*k, *v) for k, v in buckets.items()},
        "hits_hour": {(*k, *v) for k, v in hour.items()},
        "hits_hour_client": {(*k, *v) for k, v in client.items()},
        "hits_hour_name": {(*k, v) for k, v in name.items()},
    }


def assert_rollups_exact(db: Path) -> None:
    """The rollups hold exactly what the hits in `db` make, row for row."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT id, ts, client, client_group, qname, service, category, count FROM hits"
        ).fetchall()
        for table, want in expected_rollups(rows).items():
            assert set(conn.execute(f"SELECT * FROM {table}").fetchall()) == want, table
    finally:
        conn.close()


# -- periods ---------------------------------------------------------------------------------


def test_week_bounds_are_local_midnights_across_dst() -> None:
    start, end = rpt.week_bounds("2026-W13", PARIS)
    assert start.isoformat() == "2026-03-23T00:00:00+01:00"
    assert end.isoformat() == "2026-03-30T00:00:00+02:00"
    assert end.timestamp() - start.timestamp() == 167 * 3600
    start, end = rpt.week_bounds("2026-W44", PARIS)
    assert (start.isoformat(), end.isoformat()) == (
        "2026-10-26T00:00:00+01:00",
        "2026-11-02T00:00:00+01:00",
    )
    start, end = rpt.week_bounds("2026-W43", PARIS)
    assert end.timestamp() - start.timestamp() == 169 * 3600


def test_last_week_is_the_last_complete_iso_week() -> None:
    # Monday 00:30 in Paris is still Sunday in UTC: the local date decides.
    now = datetime(2026, 3, 29, 22, 30, tzinfo=UTC)
    start, _ = rpt.week_bounds(None, PARIS, now)
    assert start.date() == date(2026, 3, 23)
    start, _ = rpt.week_bounds(None, "UTC", now)
    assert start.date() == date(2026, 3, 16)


@pytest.mark.parametrize("week", ["2026-13", "2026-W54", "W13", "2026-W00"])
def test_bad_week_is_one_clear_error(week: str) -> None:
    with pytest.raises(SinkholeError, match="bad week"):
        rpt.week_bounds(week, PARIS)


def test_unknown_time_zone_is_one_clear_error() -> None:
    with pytest.raises(SinkholeError, match="unknown time zone"):
        rpt.week_bounds("2026-W13", "Europe/Nowhere")


def test_parse_range_reads_dates_times_and_durations() -> None:
    now = datetime(2026, 3, 25, 12, 0, tzinfo=UTC)
    start, end = rpt.parse_range("2026-03-23", "2026-03-30", PARIS, now)
    assert (start, end) == rpt.week_bounds("2026-W13", PARIS)
    start, end = rpt.parse_range("7d", None, PARIS, now)
    # "Until now" ends after the current second: hits carry whole-second timestamps.
    assert end == now + timedelta(seconds=1) and now - start == timedelta(days=7)
    start, _ = rpt.parse_range("2026-03-23T08:00+00:00", "now", PARIS, now)
    assert start.isoformat() == "2026-03-23T09:00:00+01:00"
    with pytest.raises(SinkholeError, match="not after"):
        rpt.parse_range("2026-03-30", "2026-03-23", PARIS, now)
    with pytest.raises(SinkholeError, match="bad --since"):
        rpt.parse_range("last tuesday", None, PARIS, now)


# -- figures against the independent count ---------------------------------------------------


def assert_tops_match(report: dict[str, Any], exp: dict[str, Any]) -> None:
    """Bypass, top clients and top names against the independent count."""
    assert {b["id"]: (b["blocked"], b["attempts"], b["clients"]) for b in report["bypass"]} == exp[
        "bypass"
    ]
    want_clients = sorted(
        exp["clients_table"].items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0])
    )
    assert [(c["client"], c["blocked"], c["attempts"]) for c in report["top_clients"]] == [
        (k, v[0], v[1]) for k, v in want_clients[:10]
    ]
    want_names = sorted(exp["names"].items(), key=lambda kv: (-kv[1], kv[0][0]))[:10]
    assert [(n["name"], n["service"], n["blocked"]) for n in report["top_names"]] == [
        (k[0], k[1], v) for k, v in want_names
    ]


@pytest.mark.parametrize(
    ("tz", "week"),
    [
        (PARIS, "2026-W13"),  # spring forward: Sunday 2026-03-29 has 23 hours
        (PARIS, "2026-W44"),  # the week after fall back; its previous week has a 25-hour day
        (PARIS, "2026-W43"),  # fall back: Sunday 2026-10-25 has 25 hours
        ("America/New_York", "2026-W11"),  # US spring forward, far from UTC
        ("Asia/Kolkata", "2026-W01"),  # half-hour offset, ISO week starting in December
        ("Africa/Monrovia", "1970-W10"),  # -0:44:30: midnights off the 5-minute grid
    ],
)
@pytest.mark.parametrize("writer", WRITERS)
def test_every_figure_matches_an_independent_count(
    tmp_path: Path, tz: str, week: str, writer: str
) -> None:
    start, end = rpt.week_bounds(week, tz)
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    db = make_db(tmp_path / "s.db")
    # Two weeks before to two days after, so hits sit on both sides of every boundary.
    hits = generate_hits(
        db, 4000, t0 - 14 * 86400, t1 + 2 * 86400, seed=len(week) + t0, writer=writer
    )
    # And hits one second either side of each bound, where an off-by-one would show.
    edge = [
        (b + d, "10.9.9.9", None, "claude.ai", "A", "anthropic-claude", "ai-chatbots", 1)
        for b in (t0, t1)
        for d in (-1, 0)
    ]
    WRITERS[writer](db, edge)
    hits += edge
    report = build(db, start, end, tz=tz)
    exp = expected_report(hits, t0, t1, tz)

    assert set(report) == SCHEMA_KEYS
    assert report["period"] == {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "timezone": tz,
        "week": week,
    }
    totals = report["totals"]
    assert (totals["blocked"], totals["attempts"], totals["clients"]) == (
        exp["blocked"],
        exp["attempts"],
        exp["clients"],
    )
    assert totals["queries"] == 10 * (t1 - t0) // 60
    assert totals["blocked_share"] == round(exp["blocked"] / totals["queries"], 6)

    assert len(report["days"]) == 7
    assert [d["weekday"] for d in report["days"]] == list(rpt.WEEKDAYS)
    for day in report["days"]:
        assert (day["blocked"], day["attempts"]) == exp["days"].get(day["date"], (0, 0))
        d = date.fromisoformat(day["date"])
        lo = datetime.combine(d, datetime.min.time(), ZoneInfo(tz)).timestamp()
        hi = datetime.combine(d + timedelta(days=1), datetime.min.time(), ZoneInfo(tz))
        assert day["queries"] == 10 * int(hi.timestamp() - lo) // 60
    assert sum(d["blocked"] for d in report["days"]) == exp["blocked"]

    zero_groups = {g: (0, 0, 0) for g in [*GROUPS, "other"]}
    assert {
        s["id"]: (s["blocked"], s["attempts"], s["clients"], s["previous_week"])
        for s in report["services"]
    } == exp["services"]
    assert {s["id"]: s["name"] for s in report["services"]}["custom"] == "Custom rules"
    assert {
        g["group"]: (g["blocked"], g["attempts"], g["clients"]) for g in report["groups"]
    } == zero_groups | exp["groups"]
    assert_tops_match(report, exp)
    assert ts_of(report["first_attempt"]) == exp["first"]
    assert ts_of(report["last_attempt"]) == exp["last"]
    # The CSV cross-tab adds up to the same totals, bypass included.
    rows = report["breakdown"]
    assert sum(r["blocked"] for r in rows) == sum(h[7] for h in hits if t0 <= h[0] < t1)
    assert report["gaps"] == []


@pytest.mark.parametrize(
    ("tz", "week"),
    [(PARIS, "2026-W13"), ("Asia/Kathmandu", "2026-W12"), ("Africa/Monrovia", "1970-W10")],
)
def test_rollup_and_hits_give_the_same_report(tmp_path: Path, tz: str, week: str) -> None:
    # The same hits in a database from before the rollup, read from the hits alone, then
    # migrated (the backfill) and read from the rollup, and in a database whose trigger
    # filled the rollup as the hits came in.
    start, end = rpt.week_bounds(week, tz)
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    old, new = make_old_db(tmp_path / "old.db"), make_db(tmp_path / "new.db")
    hits = generate_hits(old, 3000, t0 - 8 * 86400, t1 + 86400, seed=t0)
    insert_hits(new, hits)
    with sqlite3.connect(old) as conn:
        traffic = conn.execute("SELECT minute, queries, recorder_lag FROM traffic").fetchall()
    insert_traffic(new, traffic)
    since, until = start + timedelta(seconds=7), end - timedelta(seconds=301)
    before = [build(old, a, b, tz=tz) for a, b in ((start, end), (since, until))]
    Store(old).close()
    with sqlite3.connect(old) as conn:
        for table in ("hits_hour", "hits_hour_client", "hits_hour_name"):
            rolled = conn.execute(f"SELECT SUM(blocked) FROM {table}").fetchone()
            assert rolled == (sum(h[7] for h in hits),)
    conn.close()
    for db in (old, new):
        assert_rollups_exact(db)
        assert [build(db, a, b, tz=tz) for a, b in ((start, end), (since, until))] == before


@pytest.mark.parametrize(
    "sections",
    [("totals",), ("totals", "services", "days", "groups", "top_clients", "privacy"), ()],
)
def test_a_report_of_some_sections_has_exactly_those_of_the_whole(
    tmp_path: Path, sections: tuple[str, ...]
) -> None:
    # The dashboard's overview asks for the sections it shows: each is the whole
    # report's, and nothing else is made (edges off the hour, so the hits are read too).
    start, end = rpt.week_bounds("2026-W13", PARIS)
    since, until = start + timedelta(seconds=7), end - timedelta(seconds=301)
    db = make_db(tmp_path / "s.db")
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    generate_hits(db, 3000, t0 - 8 * 86400, t1 + 86400, seed=13)
    whole = build(db, since, until)
    part = build(db, since, until, sections=sections)
    assert part == {k: v for k, v in whole.items() if k in {*sections, "schema", "period", "lang"}}
    with pytest.raises(SinkholeError, match="unknown report sections: totalz"):
        build(db, since, until, sections=("totalz",))


def test_purge_keeps_the_rollup_equal_to_the_hits_it_keeps(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    generate_hits(db, 3000, t0, t1, seed=11)
    conn = sqlite3.connect(db, isolation_level=None)
    cutoff = t0 + 3 * 86400 + 123  # inside a bucket: the whole bucket stays
    purge_hits(conn, cutoff)
    assert conn.execute("SELECT MIN(ts) FROM hits").fetchone()[0] >= cutoff - cutoff % 300
    by_hits = conn.execute(
        "SELECT ts / 3600, SUM(count) FROM hits GROUP BY 1 ORDER BY 1"
    ).fetchall()
    by_rollup = conn.execute(
        "SELECT hour, SUM(blocked) FROM hits_hour GROUP BY 1 ORDER BY 1"
    ).fetchall()
    conn.close()
    assert by_hits == by_rollup and by_hits
    assert_rollups_exact(db)


def test_dst_days_have_23_and_25_hours_of_traffic(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    for week, sunday, hours in (("2026-W13", "2026-03-29", 23), ("2026-W43", "2026-10-25", 25)):
        start, end = rpt.week_bounds(week, PARIS)
        insert_traffic(
            db, [(m, 1, 0) for m in range(int(start.timestamp()), int(end.timestamp()), 60)]
        )
        report = build(db, start, end)
        by_date = {d["date"]: d["queries"] for d in report["days"]}
        assert by_date[sunday] == hours * 60
        assert by_date[(date.fromisoformat(sunday) - timedelta(days=1)).isoformat()] == 24 * 60
        assert f"{sunday} had {hours} hours" in rpt.render_text(report)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    offsets=st.lists(
        st.tuples(st.integers(0, 7 * 86400 - 1), st.integers(0, 3), st.integers(0, 2)),
        min_size=0,
        max_size=40,
    )
)
@pytest.mark.parametrize("writer", WRITERS)
def test_attempts_and_days_match_the_rule_for_any_hits(
    tmp_path_factory: pytest.TempPathFactory, offsets: list[tuple[int, int, int]], writer: str
) -> None:
    db = make_db(tmp_path_factory.mktemp("h") / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    t0 = int(start.timestamp())
    hits = [
        (
            t0 + o,
            CLIENTS[c][0],
            CLIENTS[c][1],
            SERVICES[s * 2][2],
            "A",
            SERVICES[s * 2][0],
            SERVICES[s * 2][1],
            1,
        )
        for o, c, s in offsets
    ]
    WRITERS[writer](db, hits)
    report = build(db, start, end)
    exp = expected_report(hits, t0, int(end.timestamp()), PARIS)
    assert report["totals"]["attempts"] == exp["attempts"]
    assert {
        d["date"]: (d["blocked"], d["attempts"]) for d in report["days"] if d["blocked"]
    } == exp["days"]


def test_browser_lookups_within_five_minutes_are_one_attempt(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    t = int(start.timestamp()) + 10 * 3600
    gpt = ("chatgpt.com", "openai-chatgpt", "ai-chatbots")

    def hit(ts: int, qtype: str, client: str = "10.1.9.7", count: int = 1) -> Hit:
        return (ts, client, "ai-lab", gpt[0], qtype, gpt[1], gpt[2], count)

    insert_hits(db, [hit(t, "A"), hit(t, "AAAA"), hit(t + 1, "HTTPS", count=2)])
    report = build(db, start, end)
    assert (report["totals"]["blocked"], report["totals"]["attempts"]) == (4, 1)
    insert_hits(db, [hit(t + 1 + 360, "A")])  # six minutes later: a second attempt
    report = build(db, start, end)
    assert report["totals"]["attempts"] == 2
    # Exactly 300 s is still the same attempt; the gap rule chains retries.
    insert_hits(db, [hit(t + 361 + 300, "A"), hit(t + 661 + 250, "A"), hit(t + 911 + 299, "A")])
    assert build(db, start, end)["totals"]["attempts"] == 2
    # Another client at the same second is another attempt.
    insert_hits(db, [hit(t, "A", client="10.1.9.8")])
    report = build(db, start, end)
    assert report["totals"]["attempts"] == 3
    assert report["services"][0]["attempts"] == 3 and report["services"][0]["clients"] == 2


def test_one_attempt_across_a_group_change_or_an_off_grid_midnight(tmp_path: Path) -> None:
    # Both split one 5-minute bucket into two rows; the second row must not start another.
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    t = int(start.timestamp()) + 10 * 3600 + 100
    insert_hits(
        db,
        [
            (t, "10.1.9.7", "ai-lab", "claude.ai", "A", "anthropic-claude", "ai-chatbots", 1),
            (t + 1, "10.1.9.7", "finance", "claude.ai", "A", "anthropic-claude", "ai-chatbots", 1),
        ],
    )
    report = build(db, start, end)
    assert report["totals"]["attempts"] == 1
    assert {g["group"]: g["attempts"] for g in report["groups"]}["ai-lab"] == 1

    db = make_db(tmp_path / "m.db")
    start, end = rpt.week_bounds("1970-W10", "Africa/Monrovia")
    midnight = int(rpt.week_bounds("1970-W10", "Africa/Monrovia")[0].timestamp()) + 86400
    assert midnight % 300 != 0
    insert_hits(
        db,
        [
            (
                midnight - 1,
                "10.1.9.7",
                None,
                "claude.ai",
                "A",
                "anthropic-claude",
                "ai-chatbots",
                1,
            ),
            (midnight, "10.1.9.7", None, "claude.ai", "AAAA", "anthropic-claude", "ai-chatbots", 1),
        ],
    )
    report = build(db, start, end, tz="Africa/Monrovia")
    assert [(d["blocked"], d["attempts"]) for d in report["days"][:3]] == [(1, 1), (1, 0), (0, 0)]


def test_service_change_against_previous_week(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    t0 = int(start.timestamp())
    prev_t = t0 - 3 * 86400
    rows: list[Hit] = []
    rows += [
        (
            prev_t + i * 1000,
            "10.2.3.4",
            "finance",
            "chatgpt.com",
            "A",
            "openai-chatgpt",
            "ai-chatbots",
            1,
        )
        for i in range(5)
    ]
    rows += [
        (
            prev_t + i * 1000,
            "10.2.3.4",
            "finance",
            "gemini.google.com",
            "A",
            "google-gemini",
            "ai-chatbots",
            1,
        )
        for i in range(2)
    ]
    rows += [
        (
            t0 + i * 1000,
            "10.2.3.4",
            "finance",
            "chatgpt.com",
            "A",
            "openai-chatgpt",
            "ai-chatbots",
            1,
        )
        for i in range(3)
    ]
    # Week 13 is an hour short: 00:30 on its Monday is still the week before week 14's.
    start14, end14 = rpt.week_bounds("2026-W14", PARIS)
    rows += [
        (t0 + 1800, "10.2.3.4", "finance", "claude.ai", "A", "anthropic-claude", "ai-chatbots", 1)
    ]
    # Two weeks back is not the previous week.
    rows += [
        (
            t0 - 10 * 86400,
            "10.2.3.4",
            "finance",
            "claude.ai",
            "A",
            "anthropic-claude",
            "ai-chatbots",
            1,
        )
    ]
    insert_hits(db, rows)
    report = build(db, start, end)
    svc = {s["id"]: (s["blocked"], s["previous_week"]) for s in report["services"]}
    assert svc == {"openai-chatgpt": (3, 5), "google-gemini": (0, 2), "anthropic-claude": (1, 0)}
    text = rpt.render_text(report)
    assert "-2 (-40%)" in text and "-2 (-100%)" in text
    w14 = {s["id"]: s["previous_week"] for s in build(db, start14, end14)["services"]}
    assert w14 == {"openai-chatgpt": 3, "anthropic-claude": 1}


def test_groups_count_configured_networks_and_other(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    t = int(start.timestamp()) + 3600
    insert_hits(
        db,
        [
            (t, "10.1.9.7", "ai-lab", "claude.ai", "A", "anthropic-claude", "ai-chatbots", 2),
            (
                t + 1000,
                "10.1.9.8",
                "ai-lab",
                "claude.ai",
                "A",
                "anthropic-claude",
                "ai-chatbots",
                1,
            ),
            (t, "192.168.1.20", None, "claude.ai", "A", "anthropic-claude", "ai-chatbots", 1),
        ],
    )
    report = build(db, start, end)
    assert report["groups"] == [
        {"group": "ai-lab", "blocked": 3, "attempts": 2, "clients": 2},
        {"group": "other", "blocked": 1, "attempts": 1, "clients": 1},
        {"group": "finance", "blocked": 0, "attempts": 0, "clients": 0},
    ]
    assert report["top_clients"][0] == {
        "client": "10.1.9.7",
        "group": "ai-lab",
        "blocked": 2,
        "attempts": 1,
    }


@pytest.mark.parametrize("privacy", ["ip", "hashed", "group", "none"])
def test_privacy_modes_list_clients_only_where_recorded(tmp_path: Path, privacy: str) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    t = int(start.timestamp()) + 3600
    # Rows as store.py writes them in each mode.
    ident = {
        "ip": ("10.1.9.7", "10.1.9.8"),
        "hashed": ("h:3f9a1c2b7d4e5f60", "h:0123456789abcdef"),
        "group": (None, None),
        "none": (None, None),
    }[privacy]
    group = None if privacy == "none" else "ai-lab"
    insert_hits(
        db,
        [
            (t, ident[0], group, "chatgpt.com", "A", "openai-chatgpt", "ai-chatbots", 1),
            (t + 10, ident[1], group, "chatgpt.com", "A", "openai-chatgpt", "ai-chatbots", 1),
            (t + 9000, ident[0], group, "chatgpt.com", "A", "openai-chatgpt", "ai-chatbots", 1),
        ],
    )
    report = build(db, start, end, privacy=privacy)
    assert report["privacy"]["clients"] == privacy
    assert report["privacy"]["retention_days"] == 90
    rendered = {fmt: rpt.RENDERERS[fmt](report) for fmt in FORMATS}
    if privacy in ("ip", "hashed"):
        assert [c["client"] for c in report["top_clients"]] == list(ident)
        assert report["totals"]["clients"] == 2
        assert report["totals"]["attempts"] == 3
        assert "approximate" not in report["privacy"]["note"]
        assert ident[0] in rendered["text"] and ident[0] in rendered["html"]
    else:
        assert report["top_clients"] == []
        assert report["totals"]["clients"] is None
        assert all(s["clients"] is None for s in report["services"])
        # Without addresses two people within 5 minutes are one attempt.
        assert report["totals"]["attempts"] == 2
        assert "approximate" in report["privacy"]["note"]
        for fmt in ("text", "markdown", "html"):
            assert "Clients are not recorded" in rendered[fmt]
            assert "approximate" in rendered[fmt]
    if privacy == "none":
        assert [g["group"] for g in report["groups"]] == ["other"]
        assert "ai-lab" not in rendered["text"]


def test_group_mode_report_hides_addresses_left_from_ip_mode(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    t = int(start.timestamp())
    insert_hits(
        db, [(t, "10.1.9.7", "ai-lab", "claude.ai", "A", "anthropic-claude", "ai-chatbots", 1)]
    )
    report = build(db, start, end, privacy="group")
    assert report["top_clients"] == []
    assert all("10.1.9.7" not in rpt.RENDERERS[f](report) for f in FORMATS if f != "csv")


def test_gaps_are_minute_precise_downtime_and_recorder_lag(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    down_lo, down_hi = t0 + 86400 + 10 * 3600, t0 + 86400 + 12 * 3600  # Tue 10:00-12:00
    lag = {t0 + 3 * 86400 + 60 * k for k in (0, 1, 2, 10)}  # a 3-minute run and one minute
    # A restart that misses five minutes is five minutes of downtime, not an hour or none.
    blip_lo = t0 + 5 * 86400 + 7 * 60
    blip = set(range(blip_lo, blip_lo + 300, 60))
    insert_traffic(
        db,
        [
            (m, 5, 7 if m in lag else 0)
            for m in range(t0, t1, 60)
            if not down_lo <= m < down_hi and m not in blip
        ],
    )
    report = build(db, start, end)
    iso = lambda ts: datetime.fromtimestamp(ts, ZoneInfo(PARIS)).isoformat()  # noqa: E731
    lag_lo = min(lag)
    assert report["gaps"] == [
        {"start": iso(down_lo), "end": iso(down_hi), "kind": "server-down"},
        {"start": iso(lag_lo), "end": iso(lag_lo + 180), "kind": "recorder-behind"},
        {"start": iso(lag_lo + 600), "end": iso(lag_lo + 660), "kind": "recorder-behind"},
        {"start": iso(blip_lo), "end": iso(blip_lo + 300), "kind": "server-down"},
    ]
    assert "server-down" in rpt.render_text(report)
    # The time after "now" is not downtime (the period is not over yet), nor are the last
    # minutes before it, whose traffic row a running server may not have written yet.
    now = t0 + 86400 + 11 * 3600 + 30
    report = build(db, start, end, now=datetime.fromtimestamp(now, UTC))
    assert report["gaps"] == [
        {"start": iso(down_lo), "end": iso(now - rpt.GAP_SETTLE_SECONDS), "kind": "server-down"}
    ]


def test_server_never_running_is_not_yet_running_not_an_outage(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    report = build(db, start, end)
    assert report["gaps"] == [
        {"start": start.isoformat(), "end": end.isoformat(), "kind": "not-yet-running"}
    ]
    assert "server-down" not in rpt.render_text(report)
    assert report["totals"]["blocked_share"] is None


def test_time_before_the_first_start_is_no_outage(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    first = t0 + 2 * 86400 + 9 * 3600 + 25 * 60 + 17  # Wed 09:25:17, the first start
    insert_traffic(db, [(m, 5, 0) for m in range(first - first % 60, t1, 60)])
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO settings VALUES ('first_start', ?)", (str(first),))
    report = build(db, start, end)
    iso = lambda ts: datetime.fromtimestamp(ts, ZoneInfo(PARIS)).isoformat()  # noqa: E731
    assert report["gaps"] == [
        {"start": iso(t0), "end": iso(first - first % 60), "kind": "not-yet-running"}
    ]
    # Without the setting (a database of an older version), the first traffic row says it.
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM settings WHERE key = 'first_start'")
        conn.execute("DELETE FROM traffic WHERE minute < ?", (first - first % 60 + 3600,))
    report = build(db, start, end)
    assert [g["kind"] for g in report["gaps"]] == ["not-yet-running"]
    assert report["gaps"][0]["end"] == iso(first - first % 60 + 3600)


@pytest.mark.parametrize("case", ["empty", "one-hit", "privacy-none"])
def test_every_format_renders_small_weeks_and_says_so(tmp_path: Path, case: str) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W44", PARIS)
    t = int(start.timestamp()) + 7 * 3600
    privacy = "none" if case == "privacy-none" else "ip"
    if case != "empty":
        client = None if case == "privacy-none" else "10.2.3.4"
        group = None if case == "privacy-none" else "finance"
        insert_hits(
            db, [(t, client, group, "gemini.google.com", "AAAA", "google-gemini", "ai-chatbots", 1)]
        )
    report = build(db, start, end, privacy=privacy)
    out = {fmt: rpt.RENDERERS[fmt](report) for fmt in FORMATS}
    assert json.loads(out["json"]) == report
    csv_lines = out["csv"].splitlines()
    assert csv_lines[0] == "date,service,category,group,blocked,attempts,privacy"
    if case == "empty":
        for fmt in ("text", "markdown", "html"):
            assert rpt.EMPTY_WEEK in out[fmt]
            # No traffic row either: "none blocked" must not read as proof.
            assert "Recording had gaps" in out[fmt]
        assert len(csv_lines) == 1
        assert report["first_attempt"] is None and report["services"] == []
    else:
        for fmt in ("text", "markdown", "html"):
            assert rpt.EMPTY_WEEK not in out[fmt]
            assert "Gemini (Google)" in out[fmt]
        group = "other" if privacy == "none" else "finance"
        assert csv_lines[1:] == [f"2026-10-26,google-gemini,ai-chatbots,{group},1,1,{privacy}"]
        assert report["first_attempt"] == report["last_attempt"] == "2026-10-26T07:00:00+01:00"
        assert report["totals"]["attempts"] == 1
    if case == "privacy-none":
        for fmt in ("text", "markdown", "html"):
            assert "Neither clients nor their groups are recorded" in out[fmt]


def test_json_is_sorted_and_stable(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    generate_hits(db, 500, int(start.timestamp()), int(end.timestamp()), seed=7)
    a = rpt.render_json(build(db, start, end))
    b = rpt.render_json(build(db, start, end))
    assert a == b
    keys = re.findall(r'^  "(\w+)"', a, re.M)
    assert keys == sorted(keys) and set(keys) == SCHEMA_KEYS


def test_markdown_escapes_pipes_and_html_escapes_markup(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    insert_hits(
        db,
        [
            (
                int(start.timestamp()),
                "10.1.9.7",
                "ai-lab",
                "x.example",
                "A",
                "evil",
                "ai-chatbots",
                1,
            )
        ],
    )
    report = build(db, start, end, service_names={"evil": "<b>Bad|Name</b>"})
    assert "Bad\\|Name" in rpt.render_markdown(report)
    page = rpt.render_html(report)
    assert "<b>Bad" not in page and "&lt;b&gt;Bad|Name&lt;/b&gt;" in page


def test_retention_shorter_than_the_period_age_is_stated(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    report = build(db, start, end, retention_days=30)
    assert "Hits older than 30 days are deleted" in report["privacy"]["note"]
    assert "older than" not in build(db, start, end, retention_days=365)["privacy"]["note"]


def test_missing_database_or_tables_is_a_store_error(tmp_path: Path) -> None:
    start, end = rpt.week_bounds("2026-W13", PARIS)
    with pytest.raises(StoreError, match="database not found"):
        build(tmp_path / "nope.db", start, end)
    assert not (tmp_path / "nope.db").exists()
    sqlite3.connect(tmp_path / "bare.db").close()
    with pytest.raises(StoreError, match="no such table"):
        build(tmp_path / "bare.db", start, end)
    with pytest.raises(SinkholeError, match="privacy mode"):
        build(make_db(tmp_path / "s.db"), start, end, privacy="everything")


# -- the page in a real browser --------------------------------------------------------------


class _Bars(HTMLParser):
    """Counts rect.bar elements per chart svg, and notes anything that loads from outside."""

    def __init__(self) -> None:
        super().__init__()
        self.chart: str | None = None
        self.bars: dict[str, list[dict[str, str | None]]] = defaultdict(list)
        self.external: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg":
            self.chart = next(c for c in (a.get("class") or "").split() if c.startswith("chart-"))
        elif tag == "rect" and "bar" in (a.get("class") or "").split() and self.chart:
            self.bars[self.chart].append(a)
        elif tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if a.get(key):
                self.external.append(str(a[key]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.chart = None


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and unfiltered scanlines of an 8-bit RGB or RGBA PNG (RFC 2083)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        ftype, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing on CI: apt-get install -y chromium")
        pytest.skip("chromium not installed")
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    generate_hits(db, 800, int(start.timestamp()) - 7 * 86400, int(end.timestamp()), seed=3)
    report = build(db, start, end)
    page = tmp_path / "report.html"
    page.write_text(rpt.render_html(report), encoding="utf-8")

    bars = _Bars()
    bars.feed(page.read_text(encoding="utf-8"))
    assert [b["data-date"] for b in bars.bars["chart-days"]] == [d["date"] for d in report["days"]]
    assert len(bars.bars["chart-days"]) == 7
    assert [b["data-service"] for b in bars.bars["chart-services"]] == [
        s["id"] for s in report["services"]
    ]
    assert [int(str(b["data-blocked"])) for b in bars.bars["chart-days"]] == [
        d["blocked"] for d in report["days"]
    ]
    assert bars.scripts == 0 and bars.external == []
    assert "@page { size: A4" in page.read_text(encoding="utf-8")

    shot = tmp_path / "shot.png"
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shot.is_file(), result.stderr[-2000:]
    width, height, rows = png_pixels(shot)
    assert (width, height) == (1200, 1600)
    assert len(set(rows)) > 50, "the screenshot is blank"
    # The bars' blue (#3b6ea8) is on screen, so the SVG was drawn, not just the text.
    assert any(b"\x3b\x6e\xa8" in row for row in rows)


# -- the rollups of migration m003 -------------------------------------------------------------


def make_m002_db(path: Path) -> Path:
    """An empty database as sinkhole created it with the 5-minute rollup (schema 2)."""
    db = sqlite_utils.Database(path)
    migrate(db, (m001_initial, m002_hits_5min))
    db.close()
    return path


def assert_matches_the_count(report: dict[str, Any], hits: list[Hit], t0: int, t1: int) -> None:
    """Every figure of `report` against the independent count of `hits`."""
    tz = report["period"]["timezone"]
    exp = expected_report(hits, t0, t1, tz)
    # Hits without an address (privacy mode group, or none) are not a client: the
    # independent count above counts them as one, so count the clients again here.
    inside = [h for h in hits if t0 <= h[0] < t1]

    def n_clients(rows: list[Hit]) -> int:
        return len({h[1] for h in rows if h[1] is not None})

    chat = [h for h in inside if h[6] != "bypass"]
    exp["clients"] = n_clients(chat)
    for table, of, rows in (
        ("services", lambda h: svc_key(h[5], h[6]), chat),
        ("groups", lambda h: h[2] or "other", chat),
        ("bypass", lambda h: svc_key(h[5], h[6]), [h for h in inside if h[6] == "bypass"]),
    ):
        for k, v in exp[table].items():
            exp[table][k] = (*v[:2], n_clients([h for h in rows if of(h) == k]), *v[3:])
    exp["clients_table"].pop(None, None)
    totals = report["totals"]
    assert (totals["blocked"], totals["attempts"], totals["clients"]) == (
        exp["blocked"],
        exp["attempts"],
        exp["clients"],
    )
    for day in report["days"]:
        assert (day["blocked"], day["attempts"]) == exp["days"].get(day["date"], (0, 0))
    assert {d["date"] for d in report["days"]} >= set(exp["days"])
    assert {
        s["id"]: (s["blocked"], s["attempts"], s["clients"], s["previous_week"])
        for s in report["services"]
    } == exp["services"]
    assert {
        g["group"]: (g["blocked"], g["attempts"], g["clients"])
        for g in report["groups"]
        if g["blocked"]
    } == exp["groups"]
    assert_tops_match(report, exp)
    first, last = report["first_attempt"], report["last_attempt"]
    assert (first and ts_of(first), last and ts_of(last)) == (exp["first"], exp["last"])
    assert sum(r["blocked"] for r in report["breakdown"]) == sum(h[7] for h in inside)
    assert sum(r["attempts"] for r in report["breakdown"]) == len(count_attempt_starts(inside))


@pytest.mark.parametrize(
    ("tz", "week"),
    [(PARIS, "2026-W13"), (PARIS, "2026-W44"), ("Asia/Kathmandu", "2026-W12")],
)
def test_m002_database_backfills_to_the_report_of_fresh_writes(
    tmp_path: Path, tz: str, week: str
) -> None:
    start, end = rpt.week_bounds(week, tz)
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    old, new = make_m002_db(tmp_path / "m002.db"), make_db(tmp_path / "new.db")
    hits = generate_hits(old, 3000, t0 - 8 * 86400, t1 + 86400, seed=t0 + 2)
    insert_hits(new, hits)
    with sqlite3.connect(old) as conn:
        traffic = conn.execute("SELECT minute, queries, recorder_lag FROM traffic").fetchall()
    conn.close()
    insert_traffic(new, traffic)
    periods = ((start, end), (start + timedelta(seconds=7), end - timedelta(seconds=301)))
    # Not migrated yet (a report run before the server restarted): read from the hits.
    before = [build(old, a, b, tz=tz) for a, b in periods]
    Store(old).close()
    assert [m for (m,) in sqlite3.connect(old).execute("SELECT name FROM _sqlite_migrations")] == [
        "m001_initial",
        "m002_hits_5min",
        "m003_attempts_and_hourly_rollups",
        "m004_web_users",
        "m005_list_sources",
        "m006_central_outbox",
        "m007_group_exemptions",
    ]
    assert not sqlite_utils.Database(old)["hits_5min"].exists()
    for db in (old, new):
        assert_rollups_exact(db)
        assert [build(db, a, b, tz=tz) for a, b in periods] == before
    assert_matches_the_count(before[0], hits, t0, t1)


@pytest.mark.parametrize("writer", WRITERS)
def test_late_hits_move_and_end_attempts(tmp_path: Path, writer: str) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    t0 = int(start.timestamp())
    b = t0 + 86400  # a bucket boundary (t0 is a local midnight on the hour)

    def hit(ts: int, group: str = "ai-lab", client: str = "10.1.9.7") -> Hit:
        return (ts, client, group, "claude.ai", "A", "anthropic-claude", "ai-chatbots", 1)

    hits: list[Hit] = []

    def write(*new: Hit) -> dict[str, Any]:
        WRITERS[writer](db, list(new))
        hits.extend(new)
        assert_rollups_exact(db)
        report = build(db, start, end)
        assert_matches_the_count(report, hits, t0, int(end.timestamp()))
        return report

    assert write(hit(b + 100))["totals"]["attempts"] == 1
    # Late, in the bucket before and 301 s earlier: an attempt of its own.
    assert write(hit(b - 201))["totals"]["attempts"] == 2
    # Late, 1 s after that one and 300 s before the first: one attempt from b - 201 on,
    # so the first bucket's lookup no longer starts one.
    assert write(hit(b - 200))["totals"]["attempts"] == 1
    starts = sqlite3.connect(db).execute(
        "SELECT bucket * 300, first_ts, start FROM hits_attempts ORDER BY bucket"
    )
    assert starts.fetchall() == [(b - 300, b - 201, 1), (b, b + 100, 0)]
    # Late and earlier in the same bucket, from another group: the attempt moves to it.
    report = write(hit(b - 290, group="finance"))
    assert {g["group"]: g["attempts"] for g in report["groups"]} == {
        "finance": 1,
        "ai-lab": 0,
        "other": 0,
    }
    # Same second as the first lookup, written later: the first one written keeps it.
    report = write(hit(b - 290, group="ai-lab"))
    assert {g["group"]: g["attempts"] for g in report["groups"]}["finance"] == 1
    # Exactly 300 s after the last lookup in the next bucket: the same attempt.
    assert write(hit(b + 400))["totals"]["attempts"] == 1
    assert write(hit(b + 701))["totals"]["attempts"] == 2


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    hits=st.lists(
        st.tuples(
            st.integers(0, 2400),  # seconds: some 8 buckets, 300 s apart or not
            st.integers(0, len(CLIENTS) - 1),
            st.sampled_from([0, 3, 4, 6]),  # two chatbots, a custom rule, a bypass service
            st.integers(1, 3),
            st.booleans(),  # no client recorded (privacy mode group)
        ),
        min_size=1,
        max_size=40,
    ),
    order=st.randoms(use_true_random=False),
    batch=st.integers(1, 8),
)
@pytest.mark.parametrize("writer", WRITERS)
def test_rollups_are_exact_whatever_order_hits_come_in(
    tmp_path_factory: pytest.TempPathFactory,
    hits: list[tuple[int, int, int, int, bool]],
    order: random.Random,
    batch: int,
    writer: str,
) -> None:
    # The recorder writes buffered hits after newer ones when the database was down.
    start, end = rpt.week_bounds("2026-W13", PARIS)
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    base = t0 + 86400 - 1200  # across a local midnight and an hour
    rows: list[Hit] = [
        (
            base + o,
            None if anonymous else CLIENTS[c][0],
            CLIENTS[c][1],
            SERVICES[s][2],
            "A",
            SERVICES[s][0],
            SERVICES[s][1],
            n,
        )
        for o, c, s, n, anonymous in hits
    ]
    order.shuffle(rows)
    db = make_db(tmp_path_factory.mktemp("o") / "s.db")
    for i in range(0, len(rows), batch):
        WRITERS[writer](db, rows[i : i + batch])
    assert_rollups_exact(db)
    for a, b in ((t0, t1), (base + 7, t1), (base + 700, base + 2000)):
        assert_matches_the_count(
            build(db, datetime.fromtimestamp(a, UTC), datetime.fromtimestamp(b, UTC)), rows, a, b
        )


def test_an_attempt_begun_before_the_period_counts_once_in_it(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    gpt = ("chatgpt.com", "A", "openai-chatgpt", "ai-chatbots", 1)
    # One attempt by the stored rule, from 250 s before the week to 550 s into it.
    hits: list[Hit] = [(t0 + d, "10.1.9.7", "ai-lab", *gpt) for d in (-250, -1, 200, 450, 550)]
    # And one before the week that ends just before it.
    hits += [(t0 + d, "10.1.9.8", "ai-lab", *gpt) for d in (-400, -301)]
    hits += [(t0 + d, "10.1.9.8", "ai-lab", *gpt) for d in (0, 299, 1000)]
    insert_hits(db, hits)
    report = build(db, start, end)
    assert (report["totals"]["blocked"], report["totals"]["attempts"]) == (6, 3)
    assert_matches_the_count(report, hits, t0, t1)
    # Periods that start anywhere around those lookups, on the grid and off it.
    for d in (-250, -1, 1, 150, 200, 201, 299, 300, 301, 449, 451, 600, 3599, 3600):
        a = t0 + d
        assert_matches_the_count(build(db, datetime.fromtimestamp(a, UTC), end), hits, a, t1)


@pytest.mark.parametrize(
    ("tz", "week"),
    [
        ("Asia/Kathmandu", "2026-W12"),  # +05:45: every local midnight at 18:15 UTC
        ("Asia/Kolkata", "2026-W01"),  # +05:30, a week across the new year
        ("Australia/Lord_Howe", "2026-W14"),  # DST of 30 minutes ends on 2026-04-05
        ("Pacific/Chatham", "2026-W14"),  # +13:45 to +12:45 on 2026-04-05
        (PARIS, "2026-W13"),  # spring forward
        (PARIS, "2026-W43"),  # fall back
    ],
)
@pytest.mark.parametrize("writer", WRITERS)
def test_hits_at_local_midnights_and_week_bounds(
    tmp_path: Path, tz: str, week: str, writer: str
) -> None:
    start, end = rpt.week_bounds(week, tz)
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    midnights = [lo for _, lo, _ in rpt.day_bounds(t0, t1, ZoneInfo(tz))] + [t1]
    rng = random.Random(t0)
    hits: list[Hit] = []
    for m in midnights:
        for d in (-601, -301, -300, -1, 0, 1, 299, 300, 301, 599, 3599, 3600):
            client, group = rng.choice(CLIENTS)
            service, category, qname = rng.choice(SERVICES)
            hits.append((m + d, client, group, qname, "A", service, category, rng.randint(1, 3)))
    rng.shuffle(hits)
    db = make_db(tmp_path / "s.db")
    for i in range(0, len(hits), 25):  # out of order, across batches
        WRITERS[writer](db, hits[i : i + 25])
    assert_rollups_exact(db)
    report = build(db, start, end, tz=tz)
    assert len(report["days"]) == 7
    assert_matches_the_count(report, hits, t0, t1)
    # And a period that starts and ends off the hour.
    a, b = t0 + 1234, t1 - 4321
    assert_matches_the_count(
        build(db, datetime.fromtimestamp(a, UTC), datetime.fromtimestamp(b, UTC), tz=tz),
        hits,
        a,
        b,
    )


class _CheckedCommits:
    """A connection that checks the rollups against the hits after every COMMIT."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn, self.path, self.commits = conn, path, 0

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cur = self.conn.execute(sql, *args)
        if sql == "COMMIT":
            self.commits += 1
            assert_rollups_exact(self.path)
        return cur


def test_every_purge_batch_leaves_the_rollups_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("resolver.store.rollups.PURGE_BATCH_ROWS", 300)
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    hits = generate_hits(db, 3000, t0 - 86400, t1, seed=5)
    conn = sqlite3.connect(db, isolation_level=None)
    checked = _CheckedCommits(conn, db)
    cutoff = t0 + 2 * 86400 + 3 * 3600 + 123  # inside an hour and a bucket
    n = purge_hits(checked, cutoff)  # type: ignore[arg-type]
    conn.close()
    kept = [h for h in hits if h[0] >= cutoff - cutoff % 300]
    assert n == len(hits) - len(kept) and checked.commits > 3
    # Lookups just after the cut-off now start the attempts that began before it.
    for a in (t0, cutoff - cutoff % 300, cutoff - cutoff % 3600):
        assert_matches_the_count(build(db, datetime.fromtimestamp(a, UTC), end), kept, a, t1)
    # Hits written later than the purge, even older than its cut-off, are rolled up too.
    late = [(cutoff - 5000, "10.1.9.7", "ai-lab", "claude.ai", "A", "anthropic-claude",
             "ai-chatbots", 1)]  # fmt: skip
    insert_hits(db, late)
    assert_rollups_exact(db)


class _Clock:
    """A wall clock the test sets, for the recorder (its `clock=`)."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now


def rollup_tables(db: Path) -> dict[str, list[tuple]]:
    """`hits` and every table of migration m003, row for row, in key order."""
    with sqlite3.connect(db) as conn:
        tables = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4").fetchall()
                  for t in ("hits", "hits_attempts", *HIT_ROLLUPS)}  # fmt: skip
    conn.close()
    return tables


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(
        st.tuples(
            st.booleans(),  # written by a server in privacy mode group: no client
            st.lists(
                st.tuples(
                    # Seconds over some 8 buckets and 2 hours, often on a boundary, or
                    # 300 s from one, or the second of another hit.
                    st.integers(0, 2400) | st.sampled_from([0, 299, 300, 599, 600, 899, 1800]),
                    st.integers(0, len(CLIENTS) - 1),
                    st.sampled_from([0, 2, 4, 5, 6]),  # chatbots, custom, a list, bypass
                    st.sampled_from(QTYPES),
                    st.integers(1, 3),
                ),
                min_size=1,
                max_size=12,
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_recorder_and_trigger_make_identical_rollups(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[tuple[bool, list[tuple[int, int, int, str, int]]]],
) -> None:
    # Hits counted by real Recorders (two servers on one database, one of them keeping no
    # client addresses) and written in batches that come in any order, across buckets and
    # hours; then the very same rows, in the same order and batches, inserted as any other
    # writer would, the trigger following them hit by hit.
    tmp = tmp_path_factory.mktemp("w")
    recorded, inserted = make_db(tmp / "recorder.db"), make_db(tmp / "trigger.db")
    group_of = dict(CLIENTS).get
    clock = _Clock()
    base = int(rpt.week_bounds("2026-W13", PARIS)[0].timestamp()) + 86400 - 1200
    servers = {
        anonymous: Recorder(
            str(recorded),
            privacy="group" if anonymous else "ip",
            group_of=group_of,
            clock=clock.time,
        )
        for anonymous in (False, True)
    }
    for anonymous, hits in batches:
        rec = servers[anonymous]
        for offset, c, s, qtype, count in hits:
            clock.now = base + offset
            service, category, qname = SERVICES[s]
            for _ in range(count):
                # A new Verdict per lookup: rows must merge by value, not by object.
                v = Verdict(b"", Rule(category, service), qname, "null", qname, qtype)
                rec.hit(CLIENTS[c][0], v)
        written = len(rollup_tables(recorded)["hits"])
        assert rec.flush()
        # The rows of this batch, as the recorder wrote them, into the other database.
        rows = rollup_tables(recorded)["hits"][written:]
        assert rows
        with sqlite3.connect(inserted) as conn:
            conn.executemany(f"INSERT INTO hits VALUES ({', '.join('?' * 11)})", rows)
        conn.close()
    assert rollup_tables(recorded) == rollup_tables(inserted)
    assert_rollups_exact(recorded)
    # The recorder's switch is never committed: the trigger still follows other writers.
    with sqlite3.connect(recorded) as conn:
        assert (
            conn.execute("SELECT * FROM settings WHERE key = ?", (ROLLUP_BY_BATCH,)).fetchall()
            == []
        )
    conn.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lookups=st.lists(
        st.tuples(
            # Seconds over some 5 buckets and 2 hours, often at the edge of a minute or a
            # bucket, where a folded lookup could change an attempt if it were wrong.
            st.integers(0, 1500)
            | st.integers(230, 370)
            | st.sampled_from([0, 1, 59, 60, 61, 299, 300, 301, 359, 360, 599, 600, 1199, 1200]),
            # Few keys, so that a name is often looked up three times in a minute or more.
            st.integers(0, 1),  # a client
            st.sampled_from([0, 1, 3]),  # two names of one service, and another service
            st.sampled_from(["A", "A", "AAAA"]),
            st.integers(1, 3),
        ),
        min_size=1,
        max_size=60,
    ),
    flush_every=st.integers(1, 90),
)
def test_folded_lookups_make_the_rollups_of_a_row_per_second(
    tmp_path_factory: pytest.TempPathFactory,
    lookups: list[tuple[int, int, int, str, int]],
    flush_every: int,
) -> None:
    # A real Recorder folds a client's repeated lookups of a name in a minute into two
    # rows; the same lookups as one row per second, inserted plainly, must roll up to the
    # very same hourly sums, top names and attempts (first and last seconds included).
    tmp = tmp_path_factory.mktemp("f")
    folded, plain = make_db(tmp / "folded.db"), make_db(tmp / "plain.db")
    base = int(rpt.week_bounds("2026-W13", PARIS)[0].timestamp()) + 86400 - 1200
    clock = _Clock()
    rec = Recorder(str(folded), group_of=dict(CLIENTS).get, clock=clock.time)
    verdicts: dict[tuple[int, str], Verdict] = {}
    per_second: dict[tuple, int] = {}
    next_flush = base
    for offset, c, s, qtype, n in sorted(lookups):
        while next_flush <= base + offset:  # the writer thread's flushes meanwhile
            clock.now = next_flush
            assert rec.flush(hold=True)
            next_flush += flush_every
        clock.now = base + offset
        service, category, qname = SERVICES[s]
        v = verdicts.setdefault((s, qtype), Verdict(b"", Rule(category, service), qname,
                                                    "null", qname, qtype))  # fmt: skip
        for _ in range(n):
            rec.hit(CLIENTS[c][0], v)
        key = (base + offset, *CLIENTS[c], qname, qtype, service, category)
        per_second[key] = per_second.get(key, 0) + n
    clock.now = base + 1600
    assert rec.flush(hold=True)
    assert rec.flush()
    insert_hits(plain, [(*k, n) for k, n in per_second.items()])
    got, want = rollup_tables(folded), rollup_tables(plain)
    assert sum(r[-1] for r in got.pop("hits")) == sum(r[-1] for r in want.pop("hits"))
    assert got == want
    assert_rollups_exact(folded)
    with sqlite3.connect(folded) as conn:
        most = conn.execute(
            "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM hits"
            " GROUP BY ts / 60, client, qname, qtype)"
        ).fetchone()[0]
    conn.close()
    assert most <= 2


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 2400) | st.sampled_from([0, 299, 300, 599, 600, 899, 1800]),
                st.integers(0, 2),  # a client, or none recorded
                st.sampled_from(["ai-lab", "finance", None]),  # its group, which may change
                st.sampled_from([0, 4, 5, 6]),  # a chatbot, custom, a list, bypass
                st.integers(1, 3),
            ),
            min_size=1,
            max_size=10,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_write_hits_and_trigger_make_identical_rollups(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[list[tuple[int, int, str | None, int, int]]],
) -> None:
    # Fewer keys, so that batches often hold hits of one client and service a second or a
    # bucket apart, in either order; and a client that changes group within a batch, so
    # that a tie in the first second of a bucket decides the group of its attempt.
    tmp = tmp_path_factory.mktemp("b")
    dbs = {writer: make_db(tmp / f"{writer}.db") for writer in WRITERS}
    base = int(rpt.week_bounds("2026-W13", PARIS)[0].timestamp()) + 86400 - 1200
    clients = ["10.1.9.7", "10.2.3.4", None]
    for hits in batches:
        rows: list[Hit] = [
            (base + o, clients[c], g, SERVICES[s][2], "A", SERVICES[s][0], SERVICES[s][1], n)
            for o, c, g, s, n in hits
        ]
        for writer, db in dbs.items():
            WRITERS[writer](db, rows)
    assert rollup_tables(dbs["recorder"]) == rollup_tables(dbs["trigger"])
    assert_rollups_exact(dbs["recorder"])
