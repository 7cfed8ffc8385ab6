"""The report's policy changes of the period: catalog services first seen, imported lists
imported, updated or removed, and the rest of the audit trail. Read from `lists.added`
and the audit trail that store.py writes, so the report needs no table of its own."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

#: Policy changes the report lists one by one; the rest are counted (`lists history`).
MAX_CHANGES = 50
#: `sinkhole lists import|update|remove ...` as `command_line` writes it into the audit trail.
_LIST_COMMAND_RE = re.compile(r"^\S+ lists (import|update|remove)(?: |$)")
#: The detail `Store.import_list` writes: "NAME from SOURCE: N names", "(+A -R)" on a change.
_LIST_DETAIL_RE = re.compile(
    r"^(?P<list>\S+) from (?P<source>.*): (?P<names>\d+) names"
    r"(?: \(\+(?P<added>\d+) -(?P<removed>\d+)\))?$"
)


def _utc_text(ts: int) -> str:
    """A moment as the audit trail and `lists.added` write it (store.utcnow_text)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _local_text(stamp: str, zi: ZoneInfo) -> str:
    return datetime.fromisoformat(stamp).astimezone(zi).isoformat()


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def policy_changes(
    conn: sqlite3.Connection,
    t0: int,
    t1: int,
    zi: ZoneInfo,
    service_name: Callable[[str], str],
) -> dict[str, Any]:
    """What changed in the policy in [t0, t1): catalog services first seen (an upgrade or a
    catalog edit, at a start or reload), imported lists imported, updated or removed, and
    the other policy changes of the audit trail, the first MAX_CHANGES of them."""
    lo, hi = _utc_text(t0), _utc_text(t1)
    services = []
    # A database of the report tables alone (tests, a copy for an auditor) has no policy.
    if "added" in _columns(conn, "lists"):
        services = [
            {
                "id": sid,
                "name": service_name(sid),
                "category": category,
                "enabled": bool(enabled),
                "added": _local_text(added, zi),
            }
            for sid, category, enabled, added in conn.execute(
                "SELECT name, category, enabled, added FROM lists WHERE kind = 'service' "
                "AND added IS NOT NULL AND added >= ? AND added < ? ORDER BY added, name",
                (lo, hi),
            )
        ]
    lists: list[dict[str, Any]] = []
    policy: list[dict[str, Any]] = []
    omitted = 0
    rows = []
    if _columns(conn, "audit"):
        rows = conn.execute(
            "SELECT id, ts, user, command, comment, detail FROM audit "
            "WHERE ts >= ? AND ts < ? ORDER BY id",
            (lo, hi),
        ).fetchall()
    for row_id, ts, user, command, comment, detail in rows:
        verb = _LIST_COMMAND_RE.match(command or "")
        event = _list_event(conn, verb[1], row_id, detail or "") if verb else None
        if event is not None:
            lists.append(
                {**event, "at": _local_text(ts, zi), "user": user, "comment": comment or None}
            )
        elif len(policy) < MAX_CHANGES:
            policy.append(
                {
                    "at": _local_text(ts, zi),
                    "user": user,
                    "command": command,
                    "comment": comment or None,
                    "detail": detail or None,
                }
            )
        else:
            omitted += 1
    return {"new_services": services, "lists": lists, "policy": policy, "policy_omitted": omitted}


def _list_event(
    conn: sqlite3.Connection, verb: str, row_id: int, detail: str
) -> dict[str, Any] | None:
    """One imported list's change from its audit row; None if the row says too little."""
    if verb == "remove":
        name = detail.strip()
        if not name:
            return None
        # How many names it had: the last import or update of it before the removal.
        names = None
        for (earlier,) in conn.execute(
            "SELECT detail FROM audit WHERE id < ? AND detail LIKE ? ORDER BY id DESC",
            (row_id, f"{name} from %"),
        ):
            m = _LIST_DETAIL_RE.match(earlier or "")
            if m and m["list"] == name:
                names = int(m["names"])
                break
        return {
            "list": name,
            "change": "removed",
            "source": None,
            "added": 0,
            "removed": names,
            "names": 0,
        }
    m = _LIST_DETAIL_RE.match(detail)
    if not m:
        return None
    names = int(m["names"])
    if m["added"] is None:  # a first import: every name is new
        return {
            "list": m["list"],
            "change": "imported",
            "source": m["source"],
            "added": names,
            "removed": 0,
            "names": names,
        }
    return {
        "list": m["list"],
        "change": "updated",
        "source": m["source"],
        "added": int(m["added"]),
        "removed": int(m["removed"]),
        "names": names,
    }
