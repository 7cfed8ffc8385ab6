"""The recorder's arithmetic (HitBatcher), driven by a clock the test sets: no threads,
no SQLite, no sleeps. The Recorder around it is tested on real files in test_store.py."""

from __future__ import annotations

import functools

import pytest

from resolver.policy import Rule, Verdict
from resolver.store.pseudonyms import Pseudonymizer
from resolver.store.recorder import (
    FOLD_MARGIN,
    FOLD_SECONDS,
    RECORDER_LATE_SECONDS,
    HitBatcher,
)

CHATGPT = Rule("ai-chatbots", "openai-chatgpt", "ChatGPT (OpenAI)")
#: A minute boundary, so that offsets from it are seconds of one fold window.
START = 1_800_000_000 - 1_800_000_000 % 60


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@functools.cache
def verdict(name: str = "chatgpt.com", qtype: str = "A") -> Verdict:
    """One per question, as the policy keeps them."""
    return Verdict(b"", CHATGPT, name.removeprefix("www."), "null", name, qtype)


def as_ip(client: str) -> tuple[str | None, str | None]:
    return (client, None)


def written(batch: HitBatcher, pseudo=as_ip) -> list[tuple]:
    """(second, client, group, qname, count) of the rows the next write would take,
    and the batch moved on as after a commit."""
    rows, _ = batch.rows(pseudo)
    batch.written_out()
    return sorted(((r[0], r[1], r[2], r[3], r[-1]) for r in rows), key=str)


def step(batch: HitBatcher, *, everything: bool = False) -> None:
    """What one flush of the writer thread does before it writes."""
    batch.handoff(everything=everything)
    batch.drain()
    batch.release(everything=everything)


def test_repeated_lookups_in_a_minute_fold_into_two_rows():
    clock = Clock()
    batch = HitBatcher(clock)
    for second, n in ((5, 1), (6, 2), (17, 1), (35, 1)):
        clock.now = START + second
        for _ in range(n):
            batch.hit("10.1.9.7", verdict())
        step(batch)
    # The minute's first lookup is written at once; the four later ones are held.
    assert written(batch) == [(START + 5, "10.1.9.7", None, "chatgpt.com", 1)]
    assert batch.held_hits == 4 and batch.backlog == 0
    # At the end of the minute they are one row: the last lookup's second, their count.
    clock.now = START + FOLD_SECONDS + FOLD_MARGIN
    step(batch)
    assert written(batch) == [(START + 35, "10.1.9.7", None, "chatgpt.com", 4)]
    assert batch.held_hits == 0 and batch.written == 5 and batch.backlog == 0


def test_a_window_is_held_for_the_margin_after_it_ends():
    clock = Clock(START + 10)
    batch = HitBatcher(clock)
    batch.hit("10.1.9.7", verdict())
    clock.now = START + 50
    batch.hit("10.1.9.7", verdict())
    step(batch)
    assert written(batch) == [(START + 10, "10.1.9.7", None, "chatgpt.com", 1)]
    # Over, but a hit of its last seconds may not have been handed over yet.
    clock.now = START + FOLD_SECONDS + FOLD_MARGIN - 1
    step(batch)
    assert written(batch) == [] and batch.held_hits == 1
    # A late handoff of the window's last second still folds into it.
    batch.pending[(START + 59, "10.1.9.7", verdict())] = 2
    step(batch)
    assert batch.held_hits == 3
    clock.now = START + FOLD_SECONDS + FOLD_MARGIN
    step(batch)
    assert written(batch) == [(START + 59, "10.1.9.7", None, "chatgpt.com", 3)]


def test_release_of_everything_writes_the_windows_not_over():
    clock = Clock(START + 10)
    batch = HitBatcher(clock)
    for _ in range(3):
        batch.hit("10.1.9.7", verdict())
        clock.now += 1
    step(batch)
    assert batch.held_hits == 2
    step(batch, everything=True)  # at exit
    assert written(batch) == [
        (START + 10, "10.1.9.7", None, "chatgpt.com", 1),
        (START + 12, "10.1.9.7", None, "chatgpt.com", 2),
    ]


def test_tallies_count_each_client_and_second_of_a_shared_verdict():
    clock = Clock(START + 7)
    batch = HitBatcher(clock)
    v = verdict()
    for client, n in (("10.1.9.7", 3), ("10.1.9.8", 1), ("10.1.9.7", 2)):
        for _ in range(n):
            batch.hit(client, v)
    clock.now += 1
    batch.hit("10.1.9.7", v)
    # Counted before any handoff: in the tally and `pending`, nowhere else. The lookup
    # of the second after is one of the window's later lookups: held, not waiting.
    assert batch.backlog == 6 and batch.held_hits == 1 and not batch.queue
    batch.handoff()
    assert batch.pending == {} and batch.received == 6
    [handed] = batch.queue
    assert handed == {(START + 7, "10.1.9.7", v): 5, (START + 7, "10.1.9.8", v): 1}
    # The tally counts on to the end of the window and is handed over then, at the
    # second of its last lookup.
    clock.now = START + 40
    batch.hit("10.1.9.7", v)
    batch.handoff()
    assert len(batch.queue) == 1 and batch.held_hits == 2
    clock.now = START + 60
    batch.handoff()
    assert batch.tallies == {} and batch.held_hits == 0 and batch.received == 8
    assert batch.queue[-1] == {(START + 40, "10.1.9.7", v): 2}


def test_traffic_is_a_row_per_minute_with_what_the_counters_grew_by():
    clock = Clock(START + 5)
    batch = HitBatcher(clock)
    batch.count_traffic([10, 4, 5, 1, 0, 0])
    clock.now = START + 30
    batch.count_traffic([15, 6, 7, 1, 1, 0])
    assert batch.traffic == {START: [15, 6, 7, 1, 1, 0]}
    batch.written_out()
    # Nothing new in the same minute: no row; a new minute gets one even when idle, so
    # that a minute without a row means the server was not recording.
    batch.count_traffic([15, 6, 7, 1, 1, 0])
    assert batch.traffic == {}
    clock.now = START + 60
    batch.count_traffic([15, 6, 7, 1, 1, 0])
    assert batch.traffic == {START + 60: [0] * 6}
    clock.now = START + 125
    batch.count_traffic([18, 7, 7, 2, 1, 1])
    assert batch.traffic == {START + 60: [0] * 6, START + 120: [3, 1, 0, 1, 0, 1]}


def test_past_the_buffer_cap_hits_are_coalesced_per_minute_and_none_is_dropped():
    clock = Clock(START + 3)
    batch = HitBatcher(clock, buffer_rows=3)
    for i in range(5):
        clock.now = START + 3 + i
        batch.hit("10.1.9.7", verdict(f"n{i}.chatgpt.com"))
        batch.hit("10.1.9.7", verdict(f"n{i}.chatgpt.com"))
    step(batch)
    # A database that cannot be written: the buffer stays full, the rest coalesce.
    for i in range(5):
        clock.now = START + 20 + i
        batch.hit("10.1.9.7", verdict(f"m{i}.chatgpt.com"))
    step(batch)
    assert len(batch.buffer) == 3 and len(batch.coarse) == 7
    assert batch.buffered == 15 and batch.backlog == 15
    assert all(ts == START for ts, _, _ in batch.coarse)  # per minute, not per second
    rows = written(batch)
    assert sum(r[-1] for r in rows) == 15
    assert len(rows) == 10 and batch.backlog == 0


def test_held_lookups_stay_bounded_by_the_cap():
    clock = Clock(START)
    batch = HitBatcher(clock, buffer_rows=20)
    rows = []
    for _ in range(3):
        clock.now += 1
        for i in range(30):
            batch.hit("192.0.2.1", verdict(f"n{i}.chatgpt.com"))
        step(batch)
        rows += written(batch)
    # 20 keys held for the minute; the other 10 names make a row per second.
    assert sum(len(w) for w in batch.held.values()) == 20 and batch.held_hits == 40
    assert len(rows) == 20 + 10 * 3
    step(batch, everything=True)
    assert sum(r[-1] for r in rows + written(batch)) == 90


@pytest.mark.parametrize(
    ("mode", "want"),
    [
        ("ip", [("10.1.9.7", "lab", 2), ("10.1.9.8", "lab", 1), ("192.0.2.1", None, 1)]),
        ("group", [(None, None, 1), (None, "lab", 3)]),
        ("none", [(None, None, 4)]),
    ],
)
def test_the_privacy_mode_applies_when_rows_are_made(mode, want):
    # Clients that share a pseudonym share a row, so a group or no client at all is
    # one row per second and name, whatever the addresses behind it.
    clock = Clock(START + 9)
    batch = HitBatcher(clock)
    for client in ("10.1.9.7", "10.1.9.7", "10.1.9.8", "192.0.2.1"):
        batch.hit(client, verdict())
    step(batch)
    group_of = {"10.1.9.7": "lab", "10.1.9.8": "lab"}.get
    rows = written(batch, Pseudonymizer(mode, b"k" * 32, group_of))
    assert sorted(((r[1], r[2], r[-1]) for r in rows), key=str) == sorted(want, key=str)


def test_hashed_rows_hold_no_address():
    clock = Clock(START + 9)
    batch = HitBatcher(clock)
    batch.hit("10.1.9.7", verdict())
    step(batch)
    [(_, client, _, _, n)] = written(batch, Pseudonymizer("hashed", b"k" * 32, lambda c: None))
    assert client.startswith("h:") and "10.1.9.7" not in client and n == 1


def test_hits_written_late_count_as_recorder_lag():
    clock = Clock(START + 1)
    batch = HitBatcher(clock)
    batch.hit("10.1.9.7", verdict())
    clock.now = START + 30
    batch.hit("10.1.9.8", verdict())
    step(batch)
    clock.now = START + 1 + RECORDER_LATE_SECONDS  # the first is now late, not yet too late
    assert batch.rows(as_ip)[1] == 0
    clock.now += 1
    assert batch.rows(as_ip)[1] == 1


def swapped(v: Verdict) -> Verdict:
    """The Verdict of the same question under a policy swapped in by a reload: a new
    object with the same record."""
    return Verdict(b"", v.rule, v.pattern, v.action, v.record[0], v.record[1])


def test_a_policy_swap_in_the_first_second_loses_and_doubles_nothing():
    clock = Clock(START + 5)
    batch = HitBatcher(clock)
    old, new = verdict(), swapped(verdict())
    for _ in range(3):
        batch.hit("10.1.9.7", old)
    for _ in range(2):  # the reload took effect within the same second
        batch.hit("10.1.9.7", new)
    clock.now = START + 20
    batch.hit("10.1.9.7", new)
    step(batch)
    assert written(batch) == [(START + 5, "10.1.9.7", None, "chatgpt.com", 5)]
    clock.now = START + FOLD_SECONDS + FOLD_MARGIN
    step(batch)
    assert written(batch) == [(START + 20, "10.1.9.7", None, "chatgpt.com", 1)]
    assert batch.tallies == {} and batch.written == 6 and batch.backlog == 0


def test_a_policy_swap_mid_minute_keeps_two_rows_a_minute():
    # The old Verdict's tally is still counting the window's later lookups when the
    # policy is swapped; the new Verdict's first lookup is not a first row, and the old
    # tally is handed over when its window is over: the two rows of the rule, exact.
    clock = Clock(START + 5)
    batch = HitBatcher(clock)
    old, new = verdict(), swapped(verdict())
    batch.hit("10.1.9.7", old)
    step(batch)
    for second in (10, 11):
        clock.now = START + second
        batch.hit("10.1.9.7", old)
        batch.hit("10.1.9.7", old)
        step(batch)
    assert batch.held_hits == 4 and list(batch.tallies) == [old]
    clock.now = START + 30  # the reload: from now on the query path holds `new`
    batch.hit("10.1.9.7", new)
    batch.hit("10.1.9.7", new)
    step(batch)
    clock.now = START + 31
    batch.hit("10.1.9.7", new)
    step(batch)
    assert written(batch) == [(START + 5, "10.1.9.7", None, "chatgpt.com", 1)]
    assert batch.held_hits == 7 and batch.backlog == 0
    clock.now = START + FOLD_SECONDS + FOLD_MARGIN
    step(batch)
    assert written(batch) == [(START + 31, "10.1.9.7", None, "chatgpt.com", 7)]
    assert batch.tallies == {} and batch.written == 8 and batch.held_hits == 0


def test_a_policy_swap_at_exit_writes_every_tally():
    clock = Clock(START + 40)
    batch = HitBatcher(clock)
    old, new = verdict(), swapped(verdict())
    batch.hit("10.1.9.7", old)
    batch.hit("10.1.9.8", old)
    clock.now += 1
    batch.hit("10.1.9.8", old)
    batch.hit("10.1.9.8", new)
    step(batch, everything=True)
    assert written(batch) == [
        (START + 40, "10.1.9.7", None, "chatgpt.com", 1),
        (START + 40, "10.1.9.8", None, "chatgpt.com", 1),
        (START + 41, "10.1.9.8", None, "chatgpt.com", 2),
    ]
    assert batch.tallies == {} and old.t_owner is None and new.t_owner is None


def test_a_verdict_counted_by_two_batchers_moves_its_count_on():
    # One Verdict, two recorders in one process (as in tests): the one that takes it
    # over first makes the other hand its count to its own pending hits.
    clock = Clock(START + 7)
    a, b = HitBatcher(clock), HitBatcher(clock)
    v = swapped(verdict())
    for rec, n in ((a, 3), (b, 2), (a, 1)):
        for _ in range(n):
            rec.hit("10.1.9.7", v)
    assert (a.backlog, b.backlog) == (4, 2) and v.t_owner is a and b.tallies == {}
    step(a)
    step(b)
    assert written(a) == [(START + 7, "10.1.9.7", None, "chatgpt.com", 4)]
    assert written(b) == [(START + 7, "10.1.9.7", None, "chatgpt.com", 2)]


def test_the_clock_stepping_back_starts_a_new_tally():
    clock = Clock(START + 30)
    batch = HitBatcher(clock)
    batch.hit("10.1.9.7", verdict())
    clock.now = START + 20  # NTP stepped the clock back
    batch.hit("10.1.9.7", verdict())
    batch.hit("10.1.9.7", verdict())
    step(batch, everything=True)
    assert written(batch) == [
        (START + 20, "10.1.9.7", None, "chatgpt.com", 2),
        (START + 30, "10.1.9.7", None, "chatgpt.com", 1),
    ]
