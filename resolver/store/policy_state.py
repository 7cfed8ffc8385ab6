"""The policy state in SQLite: lists, rules, service toggles, imported lists, settings
and the audit trail; what the CLI and the dashboard edit and the server reads."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from resolver.errors import StoreError
from resolver.policy import ImportedList, PolicyState
from resolver.store.db import BUSY_TIMEOUT, connect, immediate, open_existing
from resolver.store.pseudonyms import client_secret
from resolver.store.rollups import purge_hits
from resolver.store.schema import migrate

log = logging.getLogger("sinkhole.store")


def utcnow_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


@dataclass(frozen=True)
class ListChange:
    """What replacing an imported list changed: the block names added and removed."""

    added: list[str]
    removed: list[str]
    names: int


class Store:
    """The SQLite file as a PolicyStore (store.backend): the policy state the CLI and the
    dashboard edit and the server reads, its audit trail, and reads of the record."""

    def __init__(self, path: str | os.PathLike, timeout: float = BUSY_TIMEOUT) -> None:
        self.path = str(path)
        self.conn = connect(path, timeout)
        self.db = sqlite_utils.Database(self.conn)
        try:
            migrate(self.db)
        except sqlite3.Error as exc:
            self.conn.close()
            raise StoreError(f"cannot prepare database: {exc}", where=self.path) from None
        except StoreError as exc:
            self.conn.close()
            raise StoreError(exc.reason, where=self.path) from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- settings ---------------------------------------------------------------

    def setting(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def secret(self) -> bytes:
        """The HMAC key for hashed client pseudonyms, created once."""
        return client_secret(self.conn)

    def policy_version(self) -> int:
        return int(self.setting("policy_version", "0") or 0)

    def _bump(self, user: str | None, command: str, comment: str | None, detail: str) -> None:
        self.conn.execute(
            "INSERT INTO settings VALUES ('policy_version', '1') ON CONFLICT(key) "
            "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )
        self.conn.execute(
            "INSERT INTO audit (ts, user, command, comment, detail) VALUES (?, ?, ?, ?, ?)",
            (utcnow_text(), user or os_user(), command, comment, detail),
        )

    def _write(self, fn: Callable[[], Any]) -> Any:
        try:
            return immediate(self.conn, fn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write: {exc}", where=self.path) from None

    # -- policy state -------------------------------------------------------------

    def seed(self, catalog, enabled_names: Iterable[str]) -> None:
        """Give every catalog service a row; the config's `lists` seed which are enabled.

        Rows that exist are the administrator's latest word and stay as they are.
        """
        wanted: set[str] = set()
        for name in enabled_names:
            if name in catalog.categories or name in catalog.services:
                wanted.update(catalog.resolve(name))
        existing = {name: kind for name, kind in self.conn.execute("SELECT name, kind FROM lists")}
        rows = []
        now = utcnow_text()
        # The first catalog a database sees is not news; a service that comes later (an
        # upgrade, a catalog edit) is, for `sinkhole lists` and the weekly report.
        added = now if "service" in existing.values() else None
        for sid, svc in catalog.services.items():
            if sid not in existing:
                rows.append((sid, "service", int(sid in wanted), svc.category, now, added))
            if svc.api and f"{sid}:api" not in existing:
                rows.append((f"{sid}:api", "api", 1, svc.category, now, None))
        if not rows:
            return

        def insert() -> None:
            self.conn.executemany(
                "INSERT OR IGNORE INTO lists (name, kind, enabled, category, updated, added) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

        try:
            self._write(insert)
        except StoreError as exc:
            log.warning("%s", exc)

    def policy_state(self) -> PolicyState:
        state = PolicyState(version=self.policy_version())
        lists = []
        for name, kind, enabled in self.conn.execute("SELECT name, kind, enabled FROM lists"):
            if kind == "service" and enabled:
                state.enabled_services.add(name)
            elif kind == "api" and not enabled:
                state.disabled_api.add(name[: -len(":api")])
            elif kind == "imported":
                lists.append((name, bool(enabled)))
        for name, enabled in lists:
            block = [
                r[0]
                for r in self.conn.execute(
                    "SELECT domain FROM list_domains WHERE list = ? AND kind = 'block'", (name,)
                )
            ]
            allow = [
                r[0]
                for r in self.conn.execute(
                    "SELECT domain FROM list_domains WHERE list = ? AND kind = 'allow'", (name,)
                )
            ]
            state.lists.append(ImportedList(name, enabled, block, allow))
        for pattern, action, comment in self.conn.execute(
            "SELECT pattern, action, comment FROM rules ORDER BY id"
        ):
            (state.block if action == "block" else state.allow).append((pattern, comment))
        for label, service in self.conn.execute(
            "SELECT label, service FROM group_exemptions ORDER BY label, service"
        ):
            state.group_exempt.setdefault(label, set()).add(service)
        return state

    def lists(self) -> list[dict]:
        cur = self.conn.execute(
            "SELECT name, kind, enabled, category, source, format, domains, allows, errors, "
            "updated, etag, last_modified, services, checked, added FROM lists "
            "ORDER BY kind, name"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    def _edit(
        self,
        items: list[str],
        each: Callable[[str], bool],
        *,
        command: str,
        comment: str | None,
        user: str | None,
    ) -> list[str]:
        """The shape of every policy edit: `each` applied to the items in one transaction,
        audited (and `policy_version` raised) when it changed at least one; returns the
        items it did not change. `each` raising StoreError takes the whole edit back."""

        def change() -> list[str]:
            unchanged = [item for item in items if not each(item)]
            if len(unchanged) < len(items):
                self._bump(user, command, comment, " ".join(items))
            return unchanged

        return self._write(change)

    def set_enabled(
        self,
        names: list[str],
        enabled: bool,
        *,
        command: str,
        comment: str | None = None,
        user: str | None = None,
    ) -> list[str]:
        """Enable or disable catalog services, API parts (`id:api`) or imported lists;
        returns the names.

        `user`: who, for the audit trail (a dashboard user); default the OS user.

        Raises:
            StoreError: a name is none of them; nothing changed.
        """

        def one(name: str) -> bool:
            cur = self.conn.execute(
                "UPDATE lists SET enabled = ?, updated = ? WHERE name = ?",
                (int(enabled), utcnow_text(), name),
            )
            if cur.rowcount == 0:
                raise StoreError(f"no list or service named {name!r}")
            return True

        self._edit(names, one, command=command, comment=comment, user=user)
        return list(names)

    def add_rules(
        self,
        patterns: list[str],
        action: str,
        *,
        command: str,
        comment: str | None = None,
        user: str | None = None,
    ) -> None:
        """Add block or allow rules; a rule already there takes the new comment."""

        def one(pattern: str) -> bool:
            self.conn.execute(
                "INSERT INTO rules (pattern, action, comment, created, user) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(pattern, action) "
                "DO UPDATE SET comment = excluded.comment",
                (pattern, action, comment, utcnow_text(), user or os_user()),
            )
            return True

        self._edit(patterns, one, command=command, comment=comment, user=user)

    def remove_rules(
        self,
        patterns: list[str],
        action: str,
        *,
        command: str,
        comment: str | None = None,
        user: str | None = None,
    ) -> list[str]:
        """Remove rules; returns the patterns that were not there."""

        def one(pattern: str) -> bool:
            cur = self.conn.execute(
                "DELETE FROM rules WHERE pattern = ? AND action = ?", (pattern, action)
            )
            return cur.rowcount > 0

        return self._edit(patterns, one, command=command, comment=comment, user=user)

    def set_group_exempt(
        self,
        label: str,
        services: list[str],
        exempt: bool,
        *,
        command: str,
        comment: str | None = None,
        user: str | None = None,
    ) -> list[str]:
        """Let client group LABEL use SERVICES (exempt) or stop letting it (not exempt);
        returns the services that were already so."""

        def one(service: str) -> bool:
            if exempt:
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO group_exemptions (label, service, created, user) "
                    "VALUES (?, ?, ?, ?)",
                    (label, service, utcnow_text(), user or os_user()),
                )
            else:
                cur = self.conn.execute(
                    "DELETE FROM group_exemptions WHERE label = ? AND service = ?",
                    (label, service),
                )
            return cur.rowcount > 0

        return self._edit(services, one, command=command, comment=comment, user=user)

    def group_exemptions(self) -> list[dict]:
        cur = self.conn.execute(
            "SELECT label, service, created, user FROM group_exemptions ORDER BY label, service"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    def rules(self) -> list[dict]:
        cur = self.conn.execute(
            "SELECT pattern, action, comment, created, user FROM rules ORDER BY id"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    def import_list(
        self,
        name: str,
        domains: Iterable[str],
        allow: Iterable[str],
        *,
        source: str,
        fmt: str,
        errors: int,
        command: str,
        comment: str | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        services: Iterable[str] = (),
        guard: bool = False,
    ) -> ListChange:
        """Create or atomically replace an imported list (one transaction).

        With `guard` (an update, not an import the administrator typed), a list that
        would lose half of its names or more, or end up empty, is kept as it was.

        Raises:
            StoreError: the name is a catalog service, or `guard` refused the change.
        """
        domains = list(domains)
        allow = list(allow)
        services = list(services)

        def change() -> ListChange:
            row = self.conn.execute("SELECT kind, enabled FROM lists WHERE name = ?", (name,))
            existing = row.fetchone()
            if existing and existing[0] != "imported":
                raise StoreError(f"{name!r} is a catalog service; pick another --name")
            old = {
                r[0]
                for r in self.conn.execute(
                    "SELECT domain FROM list_domains WHERE list = ? AND kind = 'block'", (name,)
                )
            }
            new = set(domains)
            diff = ListChange(sorted(new - old), sorted(old - new), len(new))
            if guard and old:
                if not new:
                    raise StoreError("the new list has no names; the old list is kept", where=name)
                if len(diff.removed) * 2 >= len(old):
                    raise StoreError(
                        f"the new list would drop {len(diff.removed)} of its "
                        f"{len(old)} names (half or more); the old list is kept. If that is "
                        f"right, import it again: sinkhole lists import {source} --name {name}",
                        where=name,
                    )
            enabled = existing[1] if existing else 1
            now = utcnow_text()
            self.conn.execute("DELETE FROM list_domains WHERE list = ?", (name,))
            self.conn.execute(
                "INSERT OR REPLACE INTO lists (name, kind, enabled, category, source, format, "
                "domains, allows, errors, updated, etag, last_modified, services, checked) "
                "VALUES (?, 'imported', ?, ?, ?, ?, 0, 0, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    enabled,
                    f"list:{name}",
                    source,
                    fmt,
                    errors,
                    now,
                    etag,
                    last_modified,
                    json.dumps(services) if services else None,
                    now,
                ),
            )
            batch: list[tuple[str, str, str]] = []
            for kind, items in (("block", domains), ("allow", allow)):
                for d in items:
                    batch.append((name, d, kind))
                    if len(batch) >= 10_000:
                        self.conn.executemany("INSERT INTO list_domains VALUES (?, ?, ?)", batch)
                        batch.clear()
            if batch:
                self.conn.executemany("INSERT INTO list_domains VALUES (?, ?, ?)", batch)
            self.conn.execute(
                "UPDATE lists SET domains = ?, allows = ? WHERE name = ?",
                (len(domains), len(allow), name),
            )
            if existing:
                self.conn.execute(
                    "INSERT INTO list_updates (ts, list, added, removed, names) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (now, name, len(diff.added), len(diff.removed), len(new)),
                )
            detail = f"{name} from {source}: {len(domains)} names"
            if existing:
                detail += f" (+{len(diff.added)} -{len(diff.removed)})"
            self._bump(None, command, comment, detail)
            return diff

        return self._write(change)

    def url_lists(self, names: Iterable[str] = ()) -> list[dict]:
        """Imported lists whose source is an http(s) URL (those of `names`, or all).

        Raises:
            StoreError: a name is not an imported list, or was imported from a file.
        """
        rows = {r["name"]: r for r in self.lists() if r["kind"] == "imported"}
        names = list(names)
        for n in names:
            if n not in rows:
                raise StoreError(f"no imported list named {n!r} (see `sinkhole lists`)")
            if not (rows[n]["source"] or "").startswith(("http://", "https://")):
                raise StoreError(
                    f"imported from the file {rows[n]['source']}, not a URL; "
                    "import the file again to replace it",
                    where=n,
                )
        picked = names or [
            n for n, r in rows.items() if (r["source"] or "").startswith(("http://", "https://"))
        ]
        return [rows[n] for n in picked]

    def list_checked(self, name: str) -> None:
        """A conditional fetch found the list unchanged: note when."""
        self._write(
            lambda: self.conn.execute(
                "UPDATE lists SET checked = ? WHERE name = ?", (utcnow_text(), name)
            )
        )

    def mark_started(self) -> None:
        """The server starts: what the catalog adds from now on is new for `sinkhole lists`."""
        self._write(
            lambda: self.conn.execute(
                "INSERT INTO settings VALUES ('server_started', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (utcnow_text(),),
            )
        )

    def new_services(self) -> set[str]:
        """Catalog services first seen at the server's last start or since."""
        since = self.setting("server_started") or ""
        return {
            r[0]
            for r in self.conn.execute(
                "SELECT name FROM lists WHERE kind = 'service' AND added IS NOT NULL "
                "AND added >= ?",
                (since,),
            )
        }

    def remove_list(self, name: str, *, command: str, comment: str | None = None) -> None:
        def change() -> None:
            row = self.conn.execute("SELECT kind FROM lists WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise StoreError(f"no imported list named {name!r}")
            if row[0] != "imported":
                raise StoreError(f"{name!r} is a catalog service: use `lists disable {name}`")
            self.conn.execute("DELETE FROM list_domains WHERE list = ?", (name,))
            self.conn.execute("DELETE FROM lists WHERE name = ?", (name,))
            self._bump(None, command, comment, name)

        self._write(change)

    def audit(self, user: str | None, command: str, detail: str = "") -> None:
        """An audit row that changes no policy (a dashboard account added or removed)."""

        def write() -> None:
            self.conn.execute(
                "INSERT INTO audit (ts, user, command, comment, detail) VALUES (?, ?, ?, ?, ?)",
                (utcnow_text(), user or os_user(), command, None, detail),
            )

        self._write(write)

    def history(self, limit: int = 50) -> list[dict]:
        cur = self.conn.execute(
            "SELECT ts, user, command, comment, detail FROM audit ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    # -- hits -----------------------------------------------------------------------

    def recent_hits(self, since: int, limit: int) -> list[dict]:
        cur = self.conn.execute(
            "SELECT ts, client, client_group, qname, qtype, service, category, rule, action, "
            "count FROM hits WHERE ts >= ? ORDER BY ts DESC, id DESC LIMIT ?",
            (since, limit),
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    def purge(self, before: int) -> int:
        """Delete hits older than `before` (unix seconds) in small batches; rows deleted."""
        return purge_hits(self.conn, before)

    def report_connection(self) -> sqlite3.Connection:
        """A connection of its own for the report's queries (`open_existing`)."""
        return open_existing(self.path)
