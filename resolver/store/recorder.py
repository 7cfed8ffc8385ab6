"""The hit recorder: counts blocked lookups on the hot path and writes them, with the
per-minute traffic counters, off it; never loses a hit.

Two parts. `HitBatcher` is the arithmetic: the tallies of the query path, the
per-minute folding of repeated lookups, the buffer and its cap, the traffic deltas and
the rows a write takes; a plain object that reads time from the clock it is given and
touches neither threads nor SQL, so tests drive it second by second. `Recorder` is the
shell around it: the writer thread, the handoff from the event loop, faults, the
retention purge, and a `HitSink` that writes the rows (SQLite: `SqliteHitSink`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from resolver.background import idle_priority, ordinary_priority
from resolver.errors import StoreError
from resolver.store.db import connect
from resolver.store.pseudonyms import Pseudonymizer, client_secret
from resolver.store.rollups import purge_hits, write_hits
from resolver.store.schema import migrate

if TYPE_CHECKING:
    from resolver.policy import Verdict

log = logging.getLogger("sinkhole.store")

#: The recorder writes at least this often (seconds), or sooner when this many hits wait.
FLUSH_INTERVAL = 1.0
#: A hit written later than this after it happened counts as `recorder_lag`: more than
#: the minute a repeated lookup is held (FOLD_SECONDS), and more than a few flushes.
RECORDER_LATE_SECONDS = 120
#: A client's repeated lookups of one name and type are written as at most two rows per
#: this many seconds: the first lookup's second, and the last's with the count of the rest.
FOLD_SECONDS = 60
#: A window is written this long after it ends, so the hits the loop has not handed
#: over yet (HANDOFF_INTERVAL) still fold into it.
FOLD_MARGIN = 2
#: How often the event loop hands its counted hits to the writer thread (seconds).
HANDOFF_INTERVAL = 0.5
#: Client address strings the batcher keeps one object of (HitBatcher._clients).
CLIENT_STRINGS = 65_536
#: Distinct hits held while the database is unavailable; past it, new hits are
#: coalesced per minute instead of per second, so totals stay exact.
HIT_BUFFER_ROWS = 100_000
PURGE_EVERY = 86_400
#: After a failed purge, try again this much later (seconds).
PURGE_RETRY = 3_600
#: The recorder's busy timeout: short, since it retries at the next flush anyway.
RECORDER_BUSY_TIMEOUT = 0.5
#: At exit, how long the recorder keeps retrying a faulty database before giving up.
FINAL_FLUSH_SECONDS = 3.0
#: How long the traffic counters are kept: they hold no personal data.
TRAFFIC_RETENTION_DAYS = 800
#: The traffic counters, in the order of `traffic` columns and of Resolver.traffic_totals.
TRAFFIC_COLUMNS = ("queries", "blocked", "forwarded", "cached", "failed", "refused")

Clock = Callable[[], float]


class HitBatcher:
    """Hits from the query path to the rows of the next write, by the clock it is given.

    The query path counts a hit in the tally kept on the policy's Verdict of the
    question (its `t_*` slots; one Verdict per distinct question, already in the CPU's
    cache when the hit is counted), while the same client asks it: first in its first
    second, then in the rest of its fold window, with the time of its last lookup.
    The batcher owns the tallies it started (`t_owner`, and the keys of `tallies`, in
    the order they started), so a policy swapped mid-window leaves the old Verdicts'
    tallies with it until they are handed over. What a tally counted goes to
    `pending`, keyed by (second, client, verdict), when another client asks or its
    time is over; `handoff()` (every HANDOFF_INTERVAL, on the thread that calls hit())
    hands the first seconds over at once and the rest when the window is over, moving
    `pending` to `queue`; the writer thread takes them from there. Under a flood of
    identical lookups the writer sees two entries per client, question and window,
    not one per query or per second.

    A client's lookups of one name and type within a minute (FOLD_SECONDS, aligned to
    the clock) make at most two rows: the first lookup's second, written at the next
    flush, and the last lookup's second with the count of every later one, written
    once the minute is over plus FOLD_MARGIN (`held` until then, by client and the
    Verdict's `record`, so two Verdicts of one question, before and after a policy
    swap, still fold into the same two rows). Totals, hourly sums and attempts come
    out as from one row per second: an attempt starts at a lookup with none of its
    client and service in the 300 s before, which only a minute's first lookup can be,
    and the minute's last lookup keeps its second.

    While the database cannot be written, hits wait in `buffer` as they came, and past
    `buffer_rows` entries in `coarse`, coalesced per minute by the columns they will be
    written with: the sum of `count` stays exact and memory stays bounded. Clients are
    pseudonymized in `rows()`, when a write takes them, so a hit buffered before the
    hashing secret could be read is never stored with its address.
    """

    def __init__(self, clock: Clock = time.time, buffer_rows: int = HIT_BUFFER_ROWS) -> None:
        self.clock = clock
        self.buffer_rows = buffer_rows
        #: The bounds of the tallies started in the current second: its start and end,
        #: and the end of its fold window; float objects shared by those tallies, so
        #: that the fast path compares with objects in the cache.
        self._from = 0.0
        self._until = 0.0
        self._window_end = 0.0
        #: The client strings tallies hold, one object per address: the fast path
        #: compares the datagram's fresh string with one that is in the cache too.
        self._clients: dict[str, str] = {}
        #: The Verdicts whose tally this batcher started (and owns while `t_owner` says
        #: so), in the order they started; mutated only by the thread that calls hit().
        self.tallies: dict[Verdict, None] = {}
        #: Hits of the current interval, mutated only by the thread that calls hit().
        self.pending: dict[tuple, int] = {}
        #: Dicts handed over by that thread, waiting for the writer thread.
        self.queue: collections.deque = collections.deque()
        #: Hits handed off so far; with `pending` and `written` it gives the backlog.
        self.received = 0
        #: (second, client, verdict): count, while the database cannot be written.
        self.buffer: dict[tuple, int] = {}
        #: (minute, client, verdict.record): count, once `buffer` is full.
        self.coarse: dict[tuple, int] = {}
        #: Window start: {(client, verdict.record): [first second, last second, later
        #: lookups, verdict]}.
        self.held: dict[int, dict[tuple, list]] = {}
        #: Lookups in `held` (not the first second's, which went to `buffer`).
        self.folded_hits = 0
        #: Sum of the buffer's counts, kept so other threads never iterate the dict.
        self.buffered = 0
        #: Hits written so far.
        self.written = 0
        self._written_counters = [0] * len(TRAFFIC_COLUMNS)
        #: minute: the traffic counters added in it, not written yet.
        self.traffic: dict[int, list[int]] = {}
        #: The last minute given a traffic row.
        self._beat = -1

    # Hot path: called by the event loop per blocked query.
    def hit(self, client: str, verdict: Verdict) -> None:
        """Count a blocked lookup; `verdict` says what to record (its `record`).

        The fast path: the Verdict's tally is this batcher's and counts this client
        now. Everything it touches is in the cache already: the Verdict, this batcher,
        the tally's bounds (float objects shared by the tallies of a second or a
        window), the client string.
        """
        now = self.clock()
        # [t_from, t_to) is what the tally counts: two float comparisons cost less
        # than int() of the clock on every query.
        if (
            verdict.t_owner is self
            and verdict.t_from <= now < verdict.t_to
            and verdict.t_client == client
        ):
            verdict.t_count += 1
            verdict.t_last = now
            return
        self._roll(client, verdict, now)

    def _roll(self, client: str, verdict: Verdict, now: float) -> None:
        """A lookup the fast path cannot count: another client, past the tally's end, a
        tally not started or started by another batcher.

        A Verdict's tally counts `t_count` lookups of `t_client` in [t_from, t_to), the
        first second of its window or the rest of it up to `t_end`, the last at
        `t_last`. What it counted goes to `pending`. The same client asking on in a
        later second of the window goes on in the same tally, to the window's end.
        """
        second = int(now)
        if not self._from <= now < self._until:
            # The shared bounds of the tallies started in this second (and window).
            self._from, self._until = float(second), float(second + 1)
            start = float(second - second % FOLD_SECONDS)
            if start + FOLD_SECONDS != self._window_end:
                self._window_end = start + FOLD_SECONDS
        owner = verdict.t_owner
        if owner is self:
            self._emit(verdict)
            if verdict.t_client == client and verdict.t_from <= now < verdict.t_end:
                verdict.t_count, verdict.t_to, verdict.t_last = 1, verdict.t_end, now
                return
        else:
            if owner is not None:
                owner._give_up(verdict)  # another recorder in this process counted it
            verdict.t_owner = self
            self.tallies[verdict] = None
        clients = self._clients
        known = clients.get(client)
        if known is None:
            if len(clients) >= CLIENT_STRINGS:
                clients.clear()
            known = clients[client] = client
        verdict.t_client, verdict.t_count, verdict.t_last = known, 1, now
        verdict.t_from, verdict.t_to, verdict.t_end = self._from, self._until, self._window_end

    def _emit(self, verdict: Verdict) -> None:
        """Move a tally's count to `pending`, at the second of its last lookup."""
        n = verdict.t_count
        if n:
            key = (int(verdict.t_last), verdict.t_client, verdict)
            pending = self.pending
            pending[key] = pending.get(key, 0) + n
            verdict.t_count = 0

    def _give_up(self, verdict: Verdict) -> None:
        """Another batcher takes `verdict`: what this one counted goes to `pending`."""
        self._emit(verdict)
        verdict.t_owner = None
        self.tallies.pop(verdict, None)

    def handoff(self, everything: bool = False) -> None:
        """Give this interval's hits to the writer; call from the thread that calls hit().

        A tally still in its first second is handed over now, and counts on to the end
        of its window from zero: the window's first lookup is written at the next flush,
        the later ones once the window is over (`everything`: all of them now, at exit).
        """
        now = self.clock()
        tallies = self.tallies
        # Tallies that count on are bounded as the writer's `held` rows are: past
        # `buffer_rows` of them, a first second's tally ends and the writer folds.
        room = self.buffer_rows - sum(1 for v in tallies if v.t_to == v.t_end)
        keep: dict[Verdict, None] = {}
        for v in tallies:  # in the order they started
            if v.t_owner is not self:
                continue  # taken over by another batcher, which emitted it for us
            first = v.t_to < v.t_end
            if first or everything or not v.t_from <= now < v.t_to:
                self._emit(v)
            if everything or not v.t_from <= now < v.t_end or (first and room <= 0):
                v.t_owner = None
            else:
                if first:
                    v.t_to = v.t_end
                    room -= 1
                keep[v] = None
        self.tallies = keep
        pending = self.pending
        if pending:
            self.received += sum(pending.values())
            self.queue.append(pending)
            self.pending = {}

    @property
    def backlog(self) -> int:
        """Hits received and not yet written, but those held until their minute ends."""
        first = sum(v.t_count for v in list(self.tallies) if v.t_to < v.t_end)
        pending = sum(list(self.pending.values()))
        return self.received + pending + first - self.written - self.folded_hits

    @property
    def held_hits(self) -> int:
        """Lookups after the first second of their window, held until it is over: in the
        writer's `held` rows, or still in a tally."""
        later = sum(v.t_count for v in list(self.tallies) if v.t_to == v.t_end)
        return self.folded_hits + later

    @property
    def unwritten(self) -> bool:
        """Hits handed off and not written (held ones aside)."""
        return bool(self.queue or self.buffer or self.coarse)

    # Writer thread.
    def drain(self) -> None:
        """Fold what the loop handed over into the buffer and `held`."""
        q = self.queue
        while q:
            self._fold(q.popleft())

    def _fold(self, batch: dict[tuple, int]) -> None:
        """Hits of a minute's first second to the buffer; later ones of the minute held."""
        held = self.held
        rows: dict[tuple, int] = {}
        folded = 0
        window = later = None
        for key, n in batch.items():  # in the order the lookups came
            ts, client, verdict = key
            start = ts - ts % FOLD_SECONDS
            if start != window:
                window = start
                later = held.get(start)
                if later is None:
                    later = held[start] = {}
            k = (client, verdict.record)
            h = later.get(k)
            if h is None:
                if len(later) < self.buffer_rows:  # past it, rows per second: memory bound
                    later[k] = [ts, ts, 0, verdict]
            elif ts > h[0]:
                if ts > h[1]:
                    h[1] = ts
                h[2] += n
                folded += n
                continue
            rows[key] = n
        self.folded_hits += folded
        self._buffer(rows)

    def release(self, everything: bool = False) -> None:
        """Buffer the held rows of the windows that are over (`everything`: at exit)."""
        over = int(self.clock()) - FOLD_SECONDS - FOLD_MARGIN
        rows: dict[tuple, int] = {}
        for start in [w for w in self.held if everything or w <= over]:
            for (client, _), (_, last, n, verdict) in self.held.pop(start).items():
                if n:
                    rows[(last, client, verdict)] = n
        if rows:
            self.folded_hits -= sum(rows.values())
            self._buffer(rows)

    def _buffer(self, rows: dict[tuple, int]) -> None:
        """Add rows (second, client, verdict): count to what the next write takes."""
        self.buffered += sum(rows.values())
        buf = self.buffer
        limit = self.buffer_rows
        if not buf and len(rows) <= limit:
            self.buffer = rows  # the usual case: the database was written last time
        elif len(buf) + len(rows) <= limit:
            get = buf.get
            for key, n in rows.items():
                buf[key] = get(key, 0) + n
        else:
            coarse = self.coarse
            for key, n in rows.items():
                if key in buf:
                    buf[key] += n
                elif len(buf) < limit:
                    buf[key] = n
                else:
                    ts, client, verdict = key
                    key = (ts - ts % 60, client, verdict.record)
                    coarse[key] = coarse.get(key, 0) + n

    def count_traffic(self, totals: list[int]) -> None:
        """Add what the running `totals` grew by since the last call to this minute's row."""
        delta = [a - b for a, b in zip(totals, self._written_counters, strict=True)]
        self._written_counters = list(totals)
        minute = int(self.clock()) // 60 * 60
        # A row every minute the server runs, queries or not: a minute without one is a
        # gap in recording (report: "server-down"), an idle night is not.
        if not any(delta) and minute == self._beat:
            return
        self._beat = minute
        row = self.traffic.setdefault(minute, [0] * len(TRAFFIC_COLUMNS))
        for i, d in enumerate(delta):
            row[i] += d

    def rows(self, pseudo: Callable[[str], tuple[str | None, str | None]]) -> tuple[list, int]:
        """The `hits` rows of the buffer, clients as `pseudo` turns them, and how many of
        their hits are late (older than RECORDER_LATE_SECONDS): the write's `recorder_lag`.

        One row per second and written columns: clients that share a pseudonym (a group,
        or none) share a row, and so do verdicts of one name asked twice.
        """
        late = int(self.clock()) - RECORDER_LATE_SECONDS
        lag = 0
        who = {c: pseudo(c) for c in {key[1] for key in self.buffer}}
        who.update((c, pseudo(c)) for c in {key[1] for key in self.coarse})
        rows: dict[tuple, int] = {}
        get = rows.get
        for (ts, client, verdict), n in self.buffer.items():
            key = (ts, *who[client], *verdict.record)
            rows[key] = get(key, 0) + n
            if ts < late:
                lag += n
        for (ts, client, record), n in self.coarse.items():
            key = (ts, *who[client], *record)
            rows[key] = get(key, 0) + n
            if ts < late:
                lag += n
        return [(*k, n) for k, n in rows.items()], lag

    def written_out(self) -> None:
        """The rows of `rows()` and the traffic are committed: start the next batch."""
        self.written += self.buffered
        self.buffer = {}
        self.coarse = {}
        self.buffered = 0
        self.traffic.clear()


class HitSink(Protocol):
    """Where a Recorder writes. Each call is one transaction: whole or not at all.

    Raises StoreError (the message names the destination) when it cannot; the recorder
    keeps what it could not write and tries again at the next flush.
    """

    #: Names the destination in log lines.
    where: str

    def secret(self) -> bytes:
        """The HMAC key of hashed pseudonyms, created the first time."""
        ...

    def write(
        self, hits: list[tuple], traffic: dict[int, list[int]], lag: int, first_start: int | None
    ) -> None:
        """Hit rows (as `write_hits` takes them), traffic rows by minute with the lag of
        the hits, and once per run the second recording began (`first_start`)."""
        ...

    def purge(self, hits_before: int, traffic_before: int) -> int:
        """Delete hits and traffic rows older than these seconds; the hits deleted."""
        ...


class SqliteHitSink:
    """The recorder's SQLite file. It is open only while a batch is written: an
    administrator can remount, move or restore it, and a read-only or full filesystem
    shows at the next open."""

    def __init__(self, path: str) -> None:
        self.path = self.where = path
        self._migrated = False

    def _open(self) -> sqlite3.Connection:
        conn = connect(self.path, timeout=RECORDER_BUSY_TIMEOUT)
        try:
            if not self._migrated:
                migrate(conn)
                self._migrated = True
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot prepare database: {exc}", where=self.path) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self, what: str, fn: Callable[[sqlite3.Connection], object]) -> object:
        conn = self._open()
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = fn(conn)
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise StoreError(f"cannot {what}: {exc}", where=self.path) from None
        finally:
            conn.close()

    def secret(self) -> bytes:
        return self._run("read the pseudonym key", client_secret)  # type: ignore[return-value]

    def write(
        self, hits: list[tuple], traffic: dict[int, list[int]], lag: int, first_start: int | None
    ) -> None:
        def write(conn: sqlite3.Connection) -> None:
            write_hits(conn, hits)
            for minute, c in traffic.items():
                conn.execute(
                    "INSERT INTO traffic (minute, queries, blocked, forwarded, cached, failed, "
                    "refused, recorder_lag) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(minute) DO UPDATE SET queries = queries + excluded.queries, "
                    "blocked = blocked + excluded.blocked, "
                    "forwarded = forwarded + excluded.forwarded, "
                    "cached = cached + excluded.cached, failed = failed + excluded.failed, "
                    "refused = refused + excluded.refused, "
                    "recorder_lag = max(recorder_lag, excluded.recorder_lag)",
                    (minute, *c, lag),
                )
            if first_start is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO settings VALUES ('first_start', ?)", (str(first_start),)
                )

        self._run("write hits", write)

    def purge(self, hits_before: int, traffic_before: int) -> int:
        conn = self._open()
        try:
            n = purge_hits(conn, hits_before)
            conn.execute("DELETE FROM traffic WHERE minute < ?", (traffic_before,))
            return n
        except sqlite3.Error as exc:
            raise StoreError(f"cannot purge: {exc}", where=self.path) from None
        finally:
            conn.close()


class Recorder:
    """Writes hits and per-minute traffic off the hot path (a HitBatcher and a thread).

    `hit()` is the query path's, on the event loop; `attach(loop)` makes that loop hand
    its hits over every HANDOFF_INTERVAL, and the writer thread (`start()`) flushes every
    `flush_interval`. Without an event loop (tests, tools), flush() hands over itself.
    """

    def __init__(
        self,
        path: str,
        *,
        privacy: str = "ip",
        retention_days: int = 90,
        group_of: Callable[[str], str | None] = lambda c: None,
        secret: bytes | None = None,
        flush_interval: float = FLUSH_INTERVAL,
        buffer_rows: int = HIT_BUFFER_ROWS,
        clock: Clock = time.time,
        sink: HitSink | None = None,
    ) -> None:
        self.path = path
        self.privacy = privacy
        self.retention_days = retention_days
        self.group_of = group_of
        self.flush_interval = flush_interval
        self.clock = clock
        self.batch = HitBatcher(clock, buffer_rows)
        #: The hot path, called by the event loop per blocked query: `hit(client,
        #: verdict)` counts a blocked lookup (`verdict` says what to record, its
        #: `record`). The batcher's own bound method, so a query pays one call.
        self.hit: Callable[[str, Verdict], None] = self.batch.hit
        self.sink: HitSink = sink if sink is not None else SqliteHitSink(path)
        self._owner_hands_off = False
        self._handoff_timer: asyncio.TimerHandle | None = None
        self.counters = [0] * len(TRAFFIC_COLUMNS)  # the totals when `traffic` is None
        #: Written once into `settings` as `first_start`: the report's recording begins here.
        self.created = int(clock())
        self._first_start_written = False
        self._secret = secret
        #: Guards `_pseudo` and `privacy` between a reload (the loop) and a write (the thread).
        self._pseudo_lock = threading.Lock()
        self._pseudo: Pseudonymizer | None = self._new_pseudonymizer()
        self._stop = threading.Event()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._final_deadline = 0.0
        #: None until the first purge, which runs at start: a server restarted daily
        #: would otherwise never reach PURGE_EVERY.
        self._last_purge: float | None = None
        self.fault: str | None = None
        #: queries, blocked, forwarded, cached, failed, refused: running totals from the server.
        self.traffic: Callable[[], list[int]] | None = None

    def handoff(self, everything: bool = False) -> None:
        """Give this interval's hits to the writer; call from the thread that calls hit()."""
        self.batch.handoff(everything)

    @property
    def backlog(self) -> int:
        """Hits received and not yet written, but those held until their minute ends."""
        return self.batch.backlog

    @property
    def written(self) -> int:
        return self.batch.written

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand hits over from `loop` every HANDOFF_INTERVAL (the server's event loop)."""
        self._owner_hands_off = True

        def tick() -> None:
            self.batch.handoff()
            self._handoff_timer = loop.call_later(HANDOFF_INTERVAL, tick)

        self._handoff_timer = loop.call_later(HANDOFF_INTERVAL, tick)

    def detach(self) -> None:
        """Last handoff and no more timer; call from the loop before stop()."""
        if self._handoff_timer is not None:
            self._handoff_timer.cancel()
            self._handoff_timer = None
        self.batch.handoff(everything=True)
        self._owner_hands_off = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sinkhole-recorder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = FINAL_FLUSH_SECONDS + 1.0) -> bool:
        """Flush everything and stop within `timeout`; True when nothing is left unwritten."""
        # The last attempt must end before the join gives up: a busy wait may be under way.
        self._final_deadline = time.monotonic() + max(0.0, timeout - RECORDER_BUSY_TIMEOUT - 0.2)
        # The final flush must not wait behind whatever else keeps the machine busy.
        ordinary_priority(self._thread)
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self.flush()
        left = self.backlog
        if left:
            log.error("%d hits could not be written to %s before exit", left, self.path)
        return left == 0

    def _run(self) -> None:
        # Hits can wait a few milliseconds, queries cannot (resolver/background.py).
        idle_priority()
        while not self._stop.is_set():
            self._wakeup.wait(self.flush_interval)
            self._wakeup.clear()
            self._flush_safely(hold=True)
        # Final flush: keep trying briefly so a short fault does not lose hits at exit.
        while not self._flush_safely(hold=False) and time.monotonic() < self._final_deadline:
            time.sleep(0.2)

    def _flush_safely(self, hold: bool) -> bool:
        try:
            return self.flush(hold=hold)
        except Exception:  # noqa: BLE001 - a dead recorder thread would lose every later hit
            log.exception("unexpected error in the hit recorder")
            return False

    def flush(self, *, hold: bool = False) -> bool:
        """Move queued hits to the buffer and try to write it; True when nothing is left.

        hold: keep the repeated lookups of the minutes not over yet in memory (the
        writer thread's flushes); by default they are written too.
        """
        batch = self.batch
        batch.count_traffic(list(self.traffic()) if self.traffic is not None else self.counters)
        if not self._owner_hands_off:
            # No event loop: hit() and flush() share this thread.
            batch.handoff(everything=not hold)
        batch.drain()
        batch.release(everything=not hold)
        now = self.clock()
        purge_due = self._last_purge is None or now - self._last_purge >= PURGE_EVERY
        if not batch.buffer and not batch.coarse and not batch.traffic and not purge_due:
            return True
        try:
            hits, lag = [], 0
            if batch.buffer or batch.coarse:
                hits, lag = batch.rows(self._pseudonymizer())
            first = None if self._first_start_written else self.created
            self.sink.write(hits, batch.traffic, lag, first)
        except StoreError as exc:
            self._set_fault(str(exc))
            return False
        self._first_start_written = True
        batch.written_out()
        self._set_fault(None)
        if purge_due:
            self._purge(now)
        return not batch.unwritten

    def _new_pseudonymizer(self) -> Pseudonymizer | None:
        """For the current mode; None while `hashed` waits for the secret in the database."""
        if self.privacy == "hashed" and self._secret is None:
            return None
        return Pseudonymizer(self.privacy, self._secret or b"", self.group_of)

    def reconfigure(self, *, privacy: str, retention_days: int) -> None:
        """A reload's privacy mode and retention, from the next write on.

        Hits still in memory are written under the new mode: a stricter mode never
        lets an address through that it would not store. The pseudonym memo starts
        anew, so changed group labels apply too, and retention is applied at the
        next flush.
        """
        with self._pseudo_lock:
            self.privacy = privacy
            self.retention_days = retention_days
            self._pseudo = self._new_pseudonymizer()
        self._last_purge = None

    def forget_clients(self) -> None:
        """Drop the memo of clients' pseudonyms and groups (the groups may have changed)."""
        with self._pseudo_lock:
            self._pseudo = self._new_pseudonymizer()

    def _pseudonymizer(self) -> Pseudonymizer:
        """The current one; in `hashed` mode, the first write reads (or creates) the key."""
        with self._pseudo_lock:
            if self._pseudo is None:
                self._secret = self.sink.secret()
                self._pseudo = Pseudonymizer(self.privacy, self._secret, self.group_of)
            return self._pseudo

    def _purge(self, now: float) -> None:
        try:
            n = self.sink.purge(
                int(now) - self.retention_days * 86_400,
                int(now) - TRAFFIC_RETENTION_DAYS * 86_400,
            )
        except StoreError as exc:
            # Try again later rather than at every flush: one warning, not one a second.
            self._last_purge = now - PURGE_EVERY + PURGE_RETRY
            log.warning("retention purge failed, retrying in an hour: %s", exc)
            return
        self._last_purge = now
        if n:
            log.info("purged %d hits older than %d days", n, self.retention_days)

    def _set_fault(self, fault: str | None) -> None:
        # One line when a fault starts and one when it ends, never one per attempt.
        if (fault is None) == (self.fault is None):
            self.fault = fault
            return
        if fault is None:
            log.warning("database %s is writable again; buffered hits written", self.path)
        else:
            log.error("%s; hits are kept in memory until it recovers", fault)
        self.fault = fault
