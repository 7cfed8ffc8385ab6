"""The central store on PostgreSQL (issue 14): many sites, one record.

Each site keeps writing its hits and traffic to its own SQLite file, which stays the
source of truth and becomes the outbox (`outbox.py`); a shipper thread in the server
(`shipper.py`) sends those rows to PostgreSQL (`schema.py`), where the report reads
all sites at once (`report.py`). PostgreSQL support is the `postgres` extra (psycopg 3).
"""

from __future__ import annotations

import os
from pathlib import Path

from resolver.config import CentralConfig, Config
from resolver.errors import ConfigError, SinkholeError

#: Seconds a connection attempt waits: DNS never waits on it, the CLI fails soon.
CONNECT_TIMEOUT = 5


class CentralError(SinkholeError):
    """The central store is unreachable or refuses; the message says which and why."""


def psycopg():
    """The psycopg module, or a clear error naming the extra to install."""
    try:
        import psycopg as module
    except ImportError:
        raise SinkholeError(
            "central: PostgreSQL support is not installed: pip install 'chatbot-sinkhole[postgres]'"
        ) from None
    return module


def require_central(config: Config) -> CentralConfig:
    if config.central is None:
        raise ConfigError(
            "not configured (central: {dsn: postgresql://..., site: NAME})",
            where=config.path or "<defaults>",
            key="central",
        )
    return config.central


def read_password(central: CentralConfig) -> str | None:
    if not central.password_file:
        return None
    try:
        return Path(central.password_file).read_text(encoding="utf-8").strip("\r\n")
    except OSError as exc:
        raise ConfigError(
            f"cannot read {central.password_file}: {exc.strerror}", key="central.password_file"
        ) from None


def connect(central: CentralConfig, *, autocommit: bool = True, timeout: int = CONNECT_TIMEOUT):
    """A new connection to the central store; CentralError when it cannot be reached.

    The password comes from `password_file`, else libpq's own PGPASSWORD/PGPASSFILE
    and the other PG* variables.
    """
    pg = psycopg()
    kwargs: dict = {"autocommit": autocommit, "connect_timeout": timeout}
    password = read_password(central)
    if password is not None:
        kwargs["password"] = password
    kwargs.setdefault("application_name", f"sinkhole {central.site}")
    try:
        return pg.connect(central.dsn, **kwargs)
    except pg.Error as exc:
        message = f"central store unreachable ({redact(central.dsn)}): {first_line(exc)}"
        raise CentralError(message) from None


def redact(dsn: str) -> str:
    """The DSN without its query string, for messages."""
    return dsn.split("?", 1)[0]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.splitlines()[0].split())


def environ_has_password() -> bool:
    return bool(os.environ.get("PGPASSWORD") or os.environ.get("PGPASSFILE"))
