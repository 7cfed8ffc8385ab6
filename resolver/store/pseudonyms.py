"""Client pseudonyms: what the privacy mode lets the record keep of a client address."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import Callable

#: The `settings` key of the HMAC key of hashed pseudonyms.
SECRET_SETTING = "client_secret"


def client_secret(conn: sqlite3.Connection) -> bytes:
    """The HMAC key of hashed pseudonyms, created the first time; call it inside a write
    transaction when it may create it, so that it is created exactly once."""
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (SECRET_SETTING,)).fetchone()
    if row is None:
        conn.execute(
            "INSERT OR IGNORE INTO settings VALUES (?, ?)", (SECRET_SETTING, secrets.token_hex(32))
        )
        row = conn.execute("SELECT value FROM settings WHERE key = ?", (SECRET_SETTING,)).fetchone()
    return bytes.fromhex(row[0])


class Pseudonymizer:
    """Turns a client address into what the privacy mode allows us to store."""

    def __init__(self, mode: str, secret: bytes, group_of: Callable[[str], str | None]) -> None:
        self.mode = mode
        self.secret = secret
        self.group_of = group_of
        self._memo: dict[str, tuple[str | None, str | None]] = {}

    def __call__(self, client: str) -> tuple[str | None, str | None]:
        """(client column, client_group column)."""
        out = self._memo.get(client)
        if out is None:
            group = self.group_of(client)
            if self.mode == "ip":
                out = (client, group)
            elif self.mode == "hashed":
                # Keyed: a bare hash of an IPv4 address is reversed by hashing all 2^32.
                digest = hmac.new(self.secret, client.encode(), hashlib.sha256).hexdigest()
                out = ("h:" + digest[:16], group)
            elif self.mode == "group":
                out = (None, group)
            else:
                out = (None, None)
            if len(self._memo) > 65_536:
                self._memo.clear()
            self._memo[client] = out
        return out
