"""The privacy trail and `sinkhole privacy apply`: stored hits rewritten to a stricter mode,
with rollups exactly as if the hits had been recorded that way from the start."""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from resolver import privacy as pv
from resolver import report as rpt
from resolver.store import Store
from resolver.store.db import connect
from resolver.store.pseudonyms import Pseudonymizer
from tests.conftest import REPO_ROOT, run_cli
from tests.dnstest.daemons import stop_by_pid
from tests.test_recording import ask_many, blocked_jobs, db_rows, stop, wait_for
from tests.test_report import (
    CLIENTS,
    FORMATS,
    PARIS,
    assert_rollups_exact,
    build,
    generate_hits,
    insert_hits,
    make_db,
    rollup_tables,
)

#: Monday 2026-03-23 00:00 UTC and five days of hits from there.
T0 = int(datetime(2026, 3, 23, tzinfo=UTC).timestamp())
DAYS = 5


def hits(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT * FROM hits ORDER BY id").fetchall()
    conn.close()
    return rows


def audit(db: Path) -> list[dict]:
    with Store(db) as store:
        return store.history(1000)[::-1]


def secret(db: Path) -> bytes:
    with Store(db) as store:
        return store.secret()


def from_scratch(db: Path, rows: list[tuple], name: str) -> dict[str, list[tuple]]:
    """The rollups of `rows` (as `hits` holds them) inserted into a fresh database, hit by
    hit in id order, through the trigger on `hits`."""
    fresh = make_db(db.with_name(f"fresh-{name}.db"))
    conn = sqlite3.connect(fresh)
    with conn:
        conn.executemany(f"INSERT INTO hits VALUES ({', '.join('?' * 11)})", rows)
    conn.close()
    return rollup_tables(fresh)


def seeded(tmp_path: Path, start: str, seed: int = 11, n: int = 4000) -> Path:
    """Random hits over five days from CLIENTS, recorded with `ip`, or with `mixed`: the
    first two days with ip, the next two with hashed (the same clients' pseudonyms), the
    last with group. The hits' addresses, in id order, go to `addresses`."""
    db = make_db(tmp_path / "s.db")
    generate_hits(db, n, T0, T0 + DAYS * 86400, seed=seed, writer="recorder")
    addresses[db] = [r[2] for r in hits(db)]
    if start == "mixed":
        pseudo = Pseudonymizer("hashed", secret(db), lambda c: None)
        rows = hits(db)
        fresh = [
            (
                None,
                r[1],
                None
                if r[1] >= T0 + 4 * 86400
                else pseudo(r[2])[0]
                if r[1] >= T0 + 2 * 86400
                else r[2],
                *r[3:],
            )
            for r in rows
        ]
        # Written again as a server would have, mode after mode.
        db.unlink()
        db = make_db(tmp_path / "s.db")
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("INSERT INTO settings VALUES ('client_secret', ?)", (pseudo.secret.hex(),))
            conn.executemany(f"INSERT INTO hits VALUES ({', '.join('?' * 11)})", fresh)
        conn.close()
    return db


addresses: dict[Path, list[str]] = {}


def run_apply(db: Path, mode: str, **kw) -> pv.ApplyResult:
    conn = connect(db)
    try:
        return pv.apply(conn, mode, command=f"sinkhole privacy apply ({mode})", pause=0, **kw)
    finally:
        conn.close()


@pytest.mark.parametrize("batch_rows", [97, pv.APPLY_BATCH_ROWS])
@pytest.mark.parametrize("start", ["ip", "mixed"])
def test_apply_leaves_the_rollups_of_hits_recorded_that_way(
    tmp_path: Path, start: str, batch_rows: int
) -> None:
    # Batches of 97 hits end anywhere in an hour; those of 5,000 take a day or more.
    db = seeded(tmp_path, start)
    key = secret(db)
    original = addresses[db]
    pseudo = Pseudonymizer("hashed", key, lambda c: None)
    for mode in ("hashed", "group", "none"):
        before = hits(db)
        result = run_apply(db, mode, batch_rows=batch_rows)
        after = hits(db)
        # Column by column: only the client and its group change, and only to what the
        # recorder would have written in that mode.
        assert len(after) == len(before) == len(original)
        changed = 0
        for old, new, address in zip(before, after, original, strict=True):
            assert new[:2] == old[:2] and new[4:] == old[4:]
            if mode == "hashed":
                want_client = None if old[2] is None else pseudo(address)[0]
                assert new[2:4] == (want_client, old[3])
            elif mode == "group":
                assert new[2:4] == (None, old[3])
            else:
                assert new[2:4] == (None, None)
            changed += new != old
        assert changed > 0 and result.rewritten == changed and result.complete
        assert rollup_tables(db) == from_scratch(db, after, mode)
        assert_rollups_exact(db)
        # Again: nothing left to do, nothing written, no audit row.
        rows_audit = len(audit(db))
        again = run_apply(db, mode)
        assert (again.rewritten, again.complete) == (0, True)
        assert hits(db) == after and len(audit(db)) == rows_audit
    trail = [json.loads(a["detail"]) for a in audit(db)]
    assert [(d["to"], d["complete"]) for d in trail] == [
        ("hashed", True),
        ("group", True),
        ("none", True),
    ]
    assert all(d["rewritten"] > 0 and d["done"] == d["until"] for d in trail)


def test_ip_to_hashed_merges_a_client_with_its_later_pseudonym(tmp_path: Path) -> None:
    # 10.1.9.7 at 09:59:50 (recorded with ip) and its pseudonym at 10:00:10 (recorded with
    # hashed, after a restart): two attempts as stored, one once both are pseudonyms, and
    # the second lookup is in the hour after the one apply rewrites.
    db = make_db(tmp_path / "s.db")
    pseudo = Pseudonymizer("hashed", secret(db), lambda c: None)
    t = T0 + 10 * 3600
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO hits (ts, client, client_group, qname, qtype, service, category, "
            "rule, action) VALUES (?, ?, 'ai-lab', 'claude.ai', 'A', 'anthropic-claude', "
            "'ai-chatbots', 'claude.ai', 'null')",
            [(t - 10, "10.1.9.7"), (t + 10, pseudo("10.1.9.7")[0])],
        )
    conn.close()

    def attempts() -> int:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT SUM(attempts) FROM hits_hour_client").fetchone()[0]

    assert attempts() == 2
    assert run_apply(db, "hashed").rewritten == 1
    assert attempts() == 1
    assert_rollups_exact(db)


def test_apply_interrupted_anywhere_leaves_exact_rollups_and_finishes_on_rerun(
    tmp_path: Path,
) -> None:
    db = seeded(tmp_path, "mixed", seed=5, n=2500)
    seen: list[int] = []

    def stop_after_three(progress: pv.ApplyResult) -> None:
        seen.append(progress.rewritten)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_apply(db, "group", progress=stop_after_three, batch_rows=200)
    # Three batches done and committed, the rest as it was: rollups equal to the hits.
    assert_rollups_exact(db)
    partial = json.loads(audit(db)[-1]["detail"])
    assert partial["complete"] is False and partial["rewritten"] == seen[-1]
    assert partial["batches"] == 3 and partial["done"] < partial["until"]
    with sqlite3.connect(db) as conn:
        left = conn.execute("SELECT COUNT(*) FROM hits WHERE client IS NOT NULL").fetchone()[0]
        done_early = conn.execute(
            "SELECT COUNT(*) FROM hits WHERE client IS NOT NULL AND ts < ?", (partial["done"],)
        ).fetchone()[0]
    conn.close()
    assert left > 0 and done_early == 0
    result = run_apply(db, "group")
    assert result.rewritten == left and result.complete
    assert rollup_tables(db) == from_scratch(db, hits(db), "rerun")


def test_apply_never_loosens_and_ip_is_nothing_to_do(tmp_path: Path) -> None:
    db = seeded(tmp_path, "ip", n=600)
    before = hits(db)
    assert run_apply(db, "ip").rewritten == 0 and hits(db) == before
    run_apply(db, "group")
    grouped = hits(db)
    # A hashed apply after group: no pseudonym is made up for a client no row holds.
    assert run_apply(db, "hashed").rewritten == 0 and hits(db) == grouped
    assert all(r[2] is None for r in grouped)


def test_dry_run_counts_and_writes_nothing(tmp_path: Path) -> None:
    db = seeded(tmp_path, "mixed", n=1500)
    before, trail, tables = hits(db), audit(db), rollup_tables(db)
    with sqlite3.connect(db) as conn:
        want = conn.execute("SELECT COUNT(*) FROM hits WHERE client NOT LIKE 'h:%'").fetchone()[0]
    conn.close()
    dry = run_apply(db, "hashed", dry_run=True)
    assert dry.rewritten == want > 0
    assert hits(db) == before and audit(db) == trail and rollup_tables(db) == tables
    assert run_apply(db, "hashed").rewritten == want


def test_hashed_apply_creates_the_key_the_recorder_then_uses(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO hits (ts, client, qname, qtype, rule, action) "
            "VALUES (?, '10.2.3.4', 'chatgpt.com', 'A', 'chatgpt.com', 'null')",
            (T0,),
        )
        assert conn.execute("SELECT 1 FROM settings WHERE key = 'client_secret'").fetchone() is None
    conn.close()
    run_apply(db, "hashed")
    want = Pseudonymizer("hashed", secret(db), lambda c: None)("10.2.3.4")[0]
    assert hits(db)[0][2] == want and want.startswith("h:")


# -- the trail --------------------------------------------------------------------------------


def test_a_mode_is_recorded_once_per_change_with_who_and_from(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    for mode in ("ip", "ip", "hashed", "hashed", "group", "ip"):
        pv.record_server_mode(str(db), mode, "start")
    rows = audit(db)
    assert [json.loads(r["detail"]) for r in rows] == [
        {"privacy": "mode", "from": None, "to": "ip"},
        {"privacy": "mode", "from": "ip", "to": "hashed"},
        {"privacy": "mode", "from": "hashed", "to": "group"},
        {"privacy": "mode", "from": "group", "to": "ip"},
    ]
    assert rows[1]["command"] == "privacy.clients ip -> hashed"
    assert all(r["user"] and r["ts"] for r in rows)
    with pytest.raises(pv.SinkholeError, match="unknown privacy mode"):
        pv.record_server_mode(str(db), "everything", "start")


def test_periods_follow_the_trail_and_the_rewrites() -> None:
    h = 3600
    changes = [pv.ModeChange(T0 + 10 * h, "ip", None), pv.ModeChange(T0 + 30 * h, "hashed", "ip")]
    rewrites = [pv.Rewrite(T0 + 50 * h, "group", T0 + 40 * h, T0 + 20 * h, 7)]

    def spans(t0: int, t1: int, rw=rewrites, default="none"):
        return [
            (p.start - T0, p.end - T0, p.clients, p.recorded, p.rewritten)
            for p in pv.periods(changes, rw, t0, t1, default)
        ]

    # Before the first recorded mode: that mode. An interrupted rewrite covers its `done`.
    assert spans(T0, T0 + 60 * h) == [
        (0, 20 * h, "group", "ip", T0 + 50 * h),
        (20 * h, 30 * h, "ip", "ip", None),
        (30 * h, 60 * h, "hashed", "hashed", None),
    ]
    assert spans(T0, T0 + 60 * h, rw=[]) == [
        (0, 30 * h, "ip", "ip", None),
        (30 * h, 60 * h, "hashed", "hashed", None),
    ]
    assert spans(T0 + 31 * h, T0 + 32 * h) == [(31 * h, 32 * h, "hashed", "hashed", None)]
    # A rewrite to the mode the hits were recorded with still says they were rewritten:
    # where the trail does not reach, the recorded mode is a guess.
    same = [pv.Rewrite(T0 + 50 * h, "hashed", T0 + 50 * h, T0 + 50 * h, 7)]
    assert spans(T0 + 20 * h, T0 + 40 * h, rw=same) == [
        (20 * h, 30 * h, "hashed", "ip", T0 + 50 * h),
        (30 * h, 40 * h, "hashed", "hashed", T0 + 50 * h),
    ]
    # Without any recorded mode: the config's.
    assert [p.clients for p in pv.periods([], [], T0, T0 + h, "hashed")] == ["hashed"]


def test_stricter_orders_the_modes() -> None:
    assert pv.stricter("ip", "hashed") == "hashed"
    assert pv.stricter("none", "group") == "none"
    assert pv.stricter("group", "group") == "group"
    assert [m for m in pv.STRICTNESS] == ["ip", "hashed", "group", "none"]


def test_unreadable_trail_rows_are_left_out(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    pv.record_server_mode(str(db), "hashed", "start")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO audit (ts, command, detail) VALUES ('2026-03-24T00:00:00+00:00', 'x', ?)",
            ('{"privacy": "mode", "to": "everything"}',),
        )
        conn.execute(
            "INSERT INTO audit (ts, command, detail) VALUES ('not a time', 'x', ?)",
            ('{"privacy": "mode", "to": "ip"}',),
        )
        changes, rewrites = pv.read_trail(conn)
    conn.close()
    assert [c.mode for c in changes] == ["hashed"] and rewrites == []


# -- the report --------------------------------------------------------------------------------


def paris(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(PARIS)).timestamp())


def trail(db: Path, *modes: tuple[str, str]) -> None:
    """Mode changes as the server records them, at the given Paris times."""
    conn = connect(db)
    for at, mode in modes:
        pv.record_mode(conn, mode, reason="start", at=paris(at))
    conn.close()


def chat(ts: int, client: str | None, group: str | None) -> tuple:
    return (ts, client, group, "chatgpt.com", "A", "openai-chatgpt", "ai-chatbots", 1)


def rendered(report: dict) -> dict[str, str]:
    return {fmt: rpt.RENDERERS[fmt](report) for fmt in FORMATS}


def test_report_says_which_mode_held_when_and_after_apply_that_hits_were_rewritten(
    tmp_path: Path,
) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    trail(db, ("2026-03-01T08:00", "ip"), ("2026-03-24T14:10", "hashed"))
    pseudo = Pseudonymizer("hashed", secret(db), lambda c: None)
    insert_hits(
        db,
        [
            chat(paris("2026-03-23T09:00"), "10.1.9.7", "ai-lab"),
            chat(paris("2026-03-24T10:00"), "10.2.3.4", "finance"),
            chat(paris("2026-03-25T09:00"), pseudo("10.1.9.7")[0], "ai-lab"),
        ],
    )
    report = build(db, start, end, privacy="hashed")
    privacy = report["privacy"]
    assert privacy["clients"] == "hashed" and privacy["clients_listed"] is True
    assert privacy["periods"] == [
        {
            "clients": "ip",
            "recorded": "ip",
            "rewritten": None,
            "from": "2026-03-23T00:00:00+01:00",
            "until": "2026-03-24T14:10:00+01:00",
        },
        {
            "clients": "hashed",
            "recorded": "hashed",
            "rewritten": None,
            "from": "2026-03-24T14:10:00+01:00",
            "until": "2026-03-30T00:00:00+02:00",
        },
    ]
    assert "IP addresses until Tue 14:10, pseudonyms since" in privacy["note"]
    assert "counts twice" in privacy["note"]
    # One person, two rows: as an address before the change, as a pseudonym after.
    assert sorted(c["client"] for c in report["top_clients"]) == sorted(
        ["10.1.9.7", "10.2.3.4", pseudo("10.1.9.7")[0]]
    )
    out = rendered(report)
    for fmt in ("text", "markdown", "html"):
        assert "Top clients (IP addresses until Tue 14:10, pseudonyms since)" in out[fmt]
        assert "IP addresses until Tue 14:10, pseudonyms since" in out[fmt]
    assert out["csv"].splitlines()[1:] == [
        "2026-03-23,openai-chatgpt,ai-chatbots,ai-lab,1,1,ip",
        '2026-03-24,openai-chatgpt,ai-chatbots,finance,1,1,"ip until 14:10, hashed since"',
        "2026-03-25,openai-chatgpt,ai-chatbots,ai-lab,1,1,hashed",
    ]

    run_apply(db, "hashed")
    report = build(db, start, end, privacy="hashed")
    privacy = report["privacy"]
    assert [(p["clients"], p["recorded"]) for p in privacy["periods"]] == [
        ("hashed", "ip"),
        ("hashed", "hashed"),
    ]
    rewritten = {p["rewritten"] for p in privacy["periods"]}
    assert len(rewritten) == 1 and None not in rewritten
    assert "The hits of the whole period were rewritten on" in privacy["note"]
    assert "pseudonyms instead of IP addresses" in privacy["note"]
    assert "counts twice" not in privacy["note"]
    assert {c["client"]: c["blocked"] for c in report["top_clients"]} == {
        pseudo("10.1.9.7")[0]: 2,
        pseudo("10.2.3.4")[0]: 1,
    }
    out = rendered(report)
    assert all("10.1.9.7" not in out[fmt] for fmt in FORMATS)
    assert all("rewritten on" in out[fmt] for fmt in ("text", "markdown", "html", "json"))


def test_report_lists_clients_only_for_the_part_that_holds_them(tmp_path: Path) -> None:
    # ip, then group from Wed 12:00, then ip again from Fri 08:00.
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    trail(
        db,
        ("2026-03-01T08:00", "ip"),
        ("2026-03-25T12:00", "group"),
        ("2026-03-27T08:00", "ip"),
    )
    insert_hits(
        db,
        [
            chat(paris("2026-03-23T09:00"), "10.1.9.7", "ai-lab"),
            chat(paris("2026-03-26T09:00"), None, "ai-lab"),
            chat(paris("2026-03-26T09:01"), None, "finance"),
            chat(paris("2026-03-27T09:00"), "10.2.3.4", "finance"),
        ],
    )
    report = build(db, start, end, privacy="ip")
    note = report["privacy"]["note"]
    assert report["privacy"]["clients"] == "ip"
    assert "IP addresses until Wed 12:00, client groups only until Fri 08:00" in note
    assert "cover only the hits until Wed 12:00 and since Fri 08:00" in note
    assert "approximate" in note
    assert report["totals"]["clients"] == 2
    assert [c["client"] for c in report["top_clients"]] == ["10.1.9.7", "10.2.3.4"]
    assert {g["group"]: g["blocked"] for g in report["groups"]} == {
        "ai-lab": 2,
        "finance": 2,
        "other": 0,
    }

    # The config now records no client: nothing is listed, and the note says why.
    report = build(db, start, end, privacy="group")
    assert report["privacy"]["clients_listed"] is False and report["top_clients"] == []
    assert report["totals"]["clients"] is None
    note = report["privacy"]["note"]
    assert "Clients are not listed: privacy.clients is now group" in note
    assert "the hits until Wed 12:00 and since Fri 08:00 hold client identities" in note
    out = rendered(report)
    for fmt in ("text", "markdown", "html"):
        assert "Clients are not listed in the current privacy mode" in out[fmt]
        assert "10.1.9.7" not in out[fmt]


def test_hidden_clients_still_count_attempts_exactly(tmp_path: Path) -> None:
    # Recorded with ip, reported under a config that now says group: the addresses are
    # not shown, but two people within 5 minutes are still two attempts.
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    trail(db, ("2026-03-01T08:00", "ip"))
    t = paris("2026-03-24T10:00")
    insert_hits(db, [chat(t, "10.1.9.7", "ai-lab"), chat(t + 60, "10.1.9.8", "ai-lab")])
    report = build(db, start, end, privacy="group")
    assert report["top_clients"] == [] and report["totals"]["clients"] is None
    assert report["totals"]["attempts"] == 2
    assert "approximate" not in report["privacy"]["note"]
    assert "the hits of the whole period hold client identities" in report["privacy"]["note"]


def test_report_keeps_groups_for_the_part_recorded_with_them(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    start, end = rpt.week_bounds("2026-W13", PARIS)
    trail(db, ("2026-03-01T08:00", "group"), ("2026-03-25T12:00", "none"))
    insert_hits(
        db,
        [
            chat(paris("2026-03-23T09:00"), None, "ai-lab"),
            chat(paris("2026-03-26T09:00"), None, None),
        ],
    )
    report = build(db, start, end, privacy="none")
    assert report["privacy"]["clients"] == "none"
    note = report["privacy"]["note"]
    assert "client groups only until Wed 12:00, neither clients nor groups since" in note
    assert {g["group"]: g["blocked"] for g in report["groups"]} == {
        "ai-lab": 1,
        "finance": 0,
        "other": 1,
    }
    assert "Clients are not recorded (privacy mode: none)" in rpt.render_text(report)


def test_a_long_period_dates_its_changes(tmp_path: Path) -> None:
    db = make_db(tmp_path / "s.db")
    trail(db, ("2026-03-01T08:00", "ip"), ("2026-03-24T14:10", "hashed"))
    start = datetime(2026, 3, 1, tzinfo=ZoneInfo(PARIS))
    end = datetime(2026, 4, 1, tzinfo=ZoneInfo(PARIS))
    note = build(db, start, end, privacy="hashed")["privacy"]["note"]
    assert "IP addresses until Tue 2026-03-24 14:10, pseudonyms since" in note


def test_rewritten_addresses_leave_the_database_file(tmp_path: Path) -> None:
    db = seeded(tmp_path, "ip", n=1500)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert b"10.1.9.7" in db.read_bytes()
    result = run_apply(db, "group", batch_rows=200)
    assert result.checkpointed and result.rewritten == 1500
    wal = db.with_name(db.name + "-wal")
    for path in (db, wal):
        data = path.read_bytes() if path.exists() else b""
        assert all(ip.encode() not in data for ip, _ in CLIENTS), path


# -- a real server ------------------------------------------------------------------------------


def trail_modes(db: Path) -> list[str]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        modes = [c.mode for c in pv.read_trail(conn)[0]]
    conn.close()
    return modes


def newest_hit(db: Path, qname: str) -> tuple | None:
    rows = db_rows(
        db, "SELECT client, client_group FROM hits WHERE qname = ? ORDER BY id", (qname,)
    )
    return rows[-1] if rows else None


def stored_mode(row: tuple) -> str:
    client, group = row
    if client is None:
        return "group" if group else "none"
    return "hashed" if client.startswith("h:") else "ip"


def test_server_records_its_mode_at_start_once_per_change(sinkhole, tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    runs = (("ip", "127.0.0.2"), ("ip", "127.0.0.3"), ("hashed", "127.0.0.4"))
    for n, (mode, client) in enumerate(runs, 1):
        server = sinkhole({"database": str(db), "privacy": {"clients": mode}})
        answered, failures = ask_many(server.address, [(client, "claude.ai", "A")])
        assert failures == [] and sum(answered.values()) == 1
        wait_for(f"the hit of run {n}", lambda n=n: hits_of(db, "claude.ai") == n)
        wait_for(f"{mode} in the trail", lambda mode=mode: trail_modes(db)[-1:] == [mode])
        stop(server)
    # The second start, with the mode already recorded, added nothing.
    assert trail_modes(db) == ["ip", "hashed"]
    rows = audit(db)
    assert rows[-1]["command"] == "privacy.clients ip -> hashed"
    assert rows[-1]["comment"] == "recorded by the server at start"


def hits_of(db: Path, qname: str) -> int:
    if not db.exists():
        return 0
    return db_rows(db, "SELECT COALESCE(SUM(count), 0) FROM hits WHERE qname = ?", (qname,))[0][0]


def test_after_a_reload_the_trail_agrees_with_the_hits_written(sinkhole, tmp_path: Path) -> None:
    # Whatever a reload changes in the recorder, the trail must say what the hits hold.
    server = sinkhole({"privacy": {"clients": "ip"}})
    db = Path(server.config["database"])
    wait_for("ip in the trail", lambda: trail_modes(db) == ["ip"])
    server.config["privacy"] = {"clients": "hashed"}
    server.config_path.write_text(yaml.safe_dump(server.config, sort_keys=False))
    server.reload()
    wait_for("the reload", lambda: "reloaded config" in server.stderr_text())
    answered, failures = ask_many(server.address, [("127.0.0.5", "perplexity.ai", "A")])
    assert failures == [] and sum(answered.values()) == 1
    wait_for("the hit", lambda: newest_hit(db, "perplexity.ai") is not None)
    wait_for(
        "the trail to say what the hit holds",
        lambda: trail_modes(db)[-1] == stored_mode(newest_hit(db, "perplexity.ai")),
    )
    assert "not recorded in the audit trail" not in stop(server)


def test_apply_beside_a_running_server_loses_no_hit_and_no_answer(sinkhole, tmp_path: Path) -> None:
    # Three days of old hits recorded with ip; the server now records hashed, and apply
    # rewrites the old hits while clients keep asking.
    db = make_db(tmp_path / "live.db")
    # Recent, so that the server's retention purge at start leaves them.
    t0 = int(time.time()) // 3600 * 3600 - 4 * 86400
    old = generate_hits(db, 30_000, t0, t0 + 3 * 86400, seed=9, writer="recorder")
    seeded_total = sum(h[7] for h in old)
    server = sinkhole({"database": str(db), "privacy": {"clients": "hashed"}})
    wait_for("hashed in the trail", lambda: trail_modes(db) == ["hashed"])
    apply = subprocess.Popen(
        [sys.executable, "-m", "resolver", "privacy", "apply", "--config", str(server.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "SINKHOLE_DB": str(db)},
    )
    sent: collections.Counter = collections.Counter()
    rounds = 0
    try:
        while apply.poll() is None or rounds == 0:
            answered, failures = ask_many(server.address, blocked_jobs(1))
            assert failures == []
            sent.update(answered)
            rounds += 1
        out, err = apply.communicate(timeout=60)
    finally:
        stop_by_pid(apply, signal.SIGTERM, 5)
    assert apply.returncode == 0, err
    assert out.startswith("rewrote 30000 hits to hashed") and err == ""
    stop(server)
    # Every hit is there: the old ones rewritten, the new ones as the server wrote them.
    total = db_rows(db, "SELECT SUM(count) FROM hits")[0][0]
    assert total == seeded_total + sum(sent.values()) and sum(sent.values()) > 0
    clients = {c for (c,) in db_rows(db, "SELECT DISTINCT client FROM hits")}
    assert clients and all(c.startswith("h:") for c in clients)
    assert_rollups_exact(db)
    start, end = datetime.fromtimestamp(t0, UTC), datetime.fromtimestamp(t0 + 3 * 86400, UTC)
    report = build(db, start, end, privacy="hashed", now=datetime.now(UTC))
    assert "were rewritten on" in report["privacy"]["note"]
    assert {p["clients"] for p in report["privacy"]["periods"]} == {"hashed"}
    entry = audit(db)[-1]
    assert entry["command"] == "sinkhole privacy apply"
    assert json.loads(entry["detail"])["rewritten"] == 30_000


def test_apply_command_says_what_it_does_and_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = seeded(tmp_path, "ip", n=800)
    monkeypatch.setenv("SINKHOLE_DB", str(db))
    config = tmp_path / "c.yaml"
    config.write_text(f"database: {db}\nprivacy: {{clients: group}}\n")
    dry = run_cli("privacy", "apply", "--config", str(config), "--dry-run")
    assert (dry.returncode, dry.stdout) == (0, "would rewrite 800 hits to group\n")
    # The trail says the server still records ip: new hits would not be rewritten.
    pv.record_server_mode(str(db), "ip", "start")
    done = run_cli("privacy", "apply", "--config", str(config), "--comment", "DPO, ticket 12")
    assert done.returncode == 0 and done.stdout.startswith("rewrote 800 hits to group")
    assert done.stderr.count("\n") == 1 and "the server records with ip" in done.stderr
    assert audit(db)[-1]["comment"] == "DPO, ticket 12"
    again = run_cli("privacy", "apply", "--config", str(config))
    assert again.returncode == 0 and again.stdout.startswith("nothing to rewrite")
    config.write_text(f"database: {db}\nprivacy: {{clients: ip}}\n")
    loose = run_cli("privacy", "apply", "--config", str(config))
    assert loose.returncode == 0 and "nothing to rewrite" in loose.stdout
    for args, message in (
        (["--db", str(tmp_path / "nope.db")], "nope.db: database not found"),
        (["--config", str(tmp_path / "missing.yaml")], "missing.yaml"),
    ):
        bad = run_cli("privacy", "apply", *args)
        assert bad.returncode == 1 and message in bad.stderr
        assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    config.write_text(f"database: {db}\nprivacy: {{clients: everyone}}\n")
    bad = run_cli("privacy", "apply", "--config", str(config))
    assert bad.returncode == 1 and "privacy.clients" in bad.stderr and "c.yaml" in bad.stderr
