"""What the server, the CLI and the dashboard need from a store: `PolicyStore`.

`resolver.store.policy_state.Store` is the SQLite implementation; a central store
(PostgreSQL, issue 14) is another class with the same methods, chosen by `open_store`.
The hits are not in this protocol: the recorder writes them through its `HitSink`
(`resolver.store.recorder`), and the local SQLite file stays its sink and outbox.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from resolver.store.policy_state import Store

if TYPE_CHECKING:
    import sqlite3

    from resolver.catalog import Catalog
    from resolver.config import Config
    from resolver.policy import PolicyState
    from resolver.store.policy_state import ListChange


@runtime_checkable
class PolicyStore(Protocol):
    """The policy state, its audit trail and the record, behind one connection.

    Every method that changes the policy is one transaction with its audit row and a
    new `policy_version`, or raises StoreError (with `where` and `reason`) and changes
    nothing. `user`: who, for the audit trail (a dashboard user); default the OS user.
    """

    #: What the store is, for messages: a file path, or a DSN without its password.
    path: str

    def close(self) -> None: ...
    def __enter__(self) -> PolicyStore: ...
    def __exit__(self, *exc: object) -> None: ...

    # -- read by the server -------------------------------------------------------------

    def policy_version(self) -> int:
        """Grows with every policy change; the server polls it and reloads when it moves."""
        ...

    def policy_state(self) -> PolicyState:
        """Services enabled, API parts disabled, imported lists and rules, as one snapshot."""
        ...

    def seed(self, catalog: Catalog, enabled_names: Iterable[str]) -> None:
        """Give every catalog service a row; the config's `lists` seed which are enabled."""
        ...

    def mark_started(self) -> None:
        """The server starts: what the catalog adds from now on is new."""
        ...

    def new_services(self) -> set[str]:
        """Catalog services first seen at the server's last start or since."""
        ...

    def setting(self, key: str, default: str | None = None) -> str | None: ...

    def secret(self) -> bytes:
        """The HMAC key of hashed client pseudonyms, created once."""
        ...

    # -- edited by the CLI and the dashboard ------------------------------------------------

    def lists(self) -> list[dict[str, Any]]:
        """Every row of `lists`: catalog services, their API parts, imported lists."""
        ...

    def rules(self) -> list[dict[str, Any]]: ...

    def set_enabled(
        self,
        names: list[str],
        enabled: bool,
        *,
        command: str,
        comment: str | None = None,
        user: str | None = None,
    ) -> list[str]: ...

    def add_rules(
        self,
        patterns: list[str],
        action: str,
        *,
        command: str,
        comment: str | None = None,
        user: str | None = None,
    ) -> None: ...

    def remove_rules(
        self,
        patterns: list[str],
        action: str,
        *,
        command: str,
        comment: str | None = None,
        user: str | None = None,
    ) -> list[str]:
        """Returns the patterns that were not there."""
        ...

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
        """Let client group LABEL use SERVICES, or stop; returns those already so."""
        ...

    def group_exemptions(self) -> list[dict[str, Any]]:
        """Every exemption set with `sinkhole groups exempt`: label, service, created, user."""
        ...

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
    ) -> ListChange: ...

    def remove_list(self, name: str, *, command: str, comment: str | None = None) -> None: ...

    def url_lists(self, names: Iterable[str] = ()) -> list[dict[str, Any]]: ...

    def list_checked(self, name: str) -> None: ...

    def audit(self, user: str | None, command: str, detail: str = "") -> None:
        """An audit row that changes no policy (an account added, a privacy mode)."""
        ...

    def history(self, limit: int = 50) -> list[dict[str, Any]]: ...

    # -- the record ------------------------------------------------------------------------

    def recent_hits(self, since: int, limit: int) -> list[dict[str, Any]]: ...

    def purge(self, before: int) -> int:
        """Delete hits older than `before` (unix seconds) and take them out of the rollups."""
        ...

    def report_connection(self) -> sqlite3.Connection:
        """A DB-API connection for the report's queries, over `hits`, `traffic` and the
        rollups (resolver.store.rollups names their keys)."""
        ...


def open_store(config: Config) -> PolicyStore:
    """The store the config names: its SQLite `database`, or with `central` the policy of
    all sites on PostgreSQL (resolver/central/policy.py; this machine's copy of it,
    read-only, while PostgreSQL is unreachable)."""
    if config.central is not None:
        from resolver.central.policy import open_policy_store

        return open_policy_store(config.central, config.database)
    return Store(config.database)
