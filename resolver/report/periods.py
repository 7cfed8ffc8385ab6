"""The report's periods: ISO weeks and ranges in a time zone, and the local days in them."""

from __future__ import annotations

import os
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from resolver.config import parse_duration
from resolver.errors import SinkholeError

#: The longest period one report covers; the per-day CASE in SQL grows with it.
MAX_PERIOD_DAYS = 400


WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


_WEEK_RE = re.compile(r"^(\d{4})-W(\d{2})$")


# -- periods -------------------------------------------------------------------------------


def zone(tz: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name.

    Raises:
        SinkholeError: the name is not a known time zone.
    """
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SinkholeError(f"unknown time zone {tz!r} (like Europe/Paris)") from exc


def local_timezone() -> str:
    """The IANA name of this machine's time zone, for configs that set none; UTC if unknown."""
    env = os.environ.get("TZ", "").lstrip(":")
    if env and "/" in env and not env.startswith("/"):
        return env
    try:
        target = os.path.realpath("/etc/localtime")
        if "/zoneinfo/" in target:
            return target.split("/zoneinfo/", 1)[1]
        return Path("/etc/timezone").read_text().strip() or "UTC"
    except OSError:
        return "UTC"


def week_bounds(
    week: str | None, tz: str, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """Monday 00:00 to the next Monday 00:00 in tz of ISO week "2026-W47"; None: the last
    complete ISO week before now.

    Raises:
        SinkholeError: the week is not written YYYY-Www or does not exist.
    """
    zi = zone(tz)
    if week is None:
        today = (now or datetime.now(UTC)).astimezone(zi).date()
        monday = today - timedelta(days=today.weekday() + 7)
    else:
        m = _WEEK_RE.match(week.strip())
        if not m:
            raise SinkholeError(f"bad week {week!r}: expected YYYY-Www, like 2026-W47")
        try:
            monday = date.fromisocalendar(int(m[1]), int(m[2]), 1)
        except ValueError as exc:
            raise SinkholeError(f"bad week {week!r}: {exc}") from exc
    # Local midnights, not start + 7 * 24 h: a week with a clock change is 167 or 169 hours.
    start = datetime.combine(monday, datetime.min.time(), zi)
    end = datetime.combine(monday + timedelta(days=7), datetime.min.time(), zi)
    return start, end


def _parse_instant(value: str, zi: ZoneInfo, now: datetime, what: str) -> datetime:
    text = value.strip()
    try:
        return (now - timedelta(seconds=parse_duration(text))).astimezone(zi)
    except ValueError:
        pass  # not a duration: a date, a date and time, or "now"
    if text == "now":
        return now.astimezone(zi)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise SinkholeError(
            f"bad --{what} {value!r}: expected a date (2026-03-23), a date and time "
            "(2026-03-23T08:00) or a duration (7d, 12h)"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zi)
    return parsed.astimezone(zi)


def parse_range(
    since: str, until: str | None, tz: str, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """The period from since (inclusive) to until (exclusive; None: now) in tz.

    Each bound is a local date (its midnight), a local date and time, an ISO time with
    an offset, "now", or a duration before now ("7d", "12h", "2w").

    Raises:
        SinkholeError: a bound cannot be read, or the period is empty or too long.
    """
    zi = zone(tz)
    now = now or datetime.now(UTC)
    start = _parse_instant(since, zi, now, "since")
    if until:
        end = _parse_instant(until, zi, now, "until")
    else:
        # Hits have whole-second timestamps: "until now" includes the current second.
        end = (now + timedelta(seconds=1)).replace(microsecond=0).astimezone(zi)
    if end <= start:
        raise SinkholeError(f"empty period: --until {end.isoformat()} is not after --since")
    if end - start > timedelta(days=MAX_PERIOD_DAYS):
        raise SinkholeError(f"period longer than {MAX_PERIOD_DAYS} days; report it in parts")
    return start, end


def iso_week(start: datetime, end: datetime, zi: ZoneInfo) -> str | None:
    local = start.astimezone(zi)
    if local.weekday() != 0 or local.time() != datetime.min.time():
        return None
    if end.astimezone(zi) != datetime.combine(
        local.date() + timedelta(days=7), datetime.min.time(), zi
    ):
        return None
    year, week, _ = local.isocalendar()
    return f"{year}-W{week:02d}"


def day_bounds(start: int, end: int, zi: ZoneInfo) -> list[tuple[date, int, int]]:
    """Each local calendar day touched by [start, end) with its UTC bounds, clipped."""
    days: list[tuple[date, int, int]] = []
    day = datetime.fromtimestamp(start, zi).date()
    while True:
        # Local midnight to local midnight, so a DST day is 23 or 25 hours long.
        lo = int(datetime.combine(day, datetime.min.time(), zi).timestamp())
        hi = int(datetime.combine(day + timedelta(days=1), datetime.min.time(), zi).timestamp())
        if lo >= end:
            break
        days.append((day, max(lo, start), min(hi, end)))
        day += timedelta(days=1)
    return days


def day_case(column: str, days: list[tuple[date, int, int]], *, postgres: bool = False) -> str:
    """The SQL of the index in DAYS of the day a time in COLUMN falls on: for SQLite a
    CASE, for PostgreSQL (POSTGRES, the central report) the same bounds searched by
    `width_bucket`, which takes a few comparisons per row where the CASE takes one per
    day (a month's rollup rows grouped by day: about half the query's time)."""
    # Integers we computed ourselves, so inlining them is safe; it keeps the one scan
    # over hits a plain expression instead of a join against a table of days.
    if len(days) == 1:
        return "0"
    if postgres:
        bounds = ", ".join(str(hi) for _, _, hi in days[:-1])
        return f"width_bucket({column}, ARRAY[{bounds}]::bigint[])"
    whens = " ".join(f"WHEN {column} < {hi} THEN {i}" for i, (_, _, hi) in enumerate(days[:-1]))
    return f"CASE {whens} ELSE {len(days) - 1} END"
