"""Dashboard accounts: scrypt password hashes, roles, and the failed-login counter (m004)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass

from resolver.errors import SinkholeError
from resolver.store import Store
from resolver.store.policy_state import utcnow_text

ROLES = ("admin", "viewer")
#: scrypt's cost (RFC 7914): 128 * r * N bytes, here 64 MiB and a fraction of a second a
#: hash, the memory every guess costs an attacker. OWASP's password storage cheat sheet
#: gives N=2^17 (128 MiB) as its first choice and N=2^16 as an equal alternative.
SCRYPT_N = 2**16
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 128 * 1024 * 1024 + 1024 * 1024
SALT_BYTES = 16
KEY_BYTES = 32
MIN_PASSWORD = 10
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
#: A hash checked against when the user does not exist, so that an unknown name takes
#: as long as a wrong password and the login time tells nothing.
_DUMMY_SALT = b"\0" * SALT_BYTES


@dataclass(frozen=True)
class User:
    name: str
    role: str
    created: str
    session_epoch: int


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """`scrypt$N$r$p$salt$hash`, memory-hard (hashlib.scrypt, RFC 7914)."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=SCRYPT_MAXMEM,
        dklen=KEY_BYTES,
    )
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True when `password` matches the stored hash; an unknown user (None) costs the same."""
    try:
        if stored is None:
            raise ValueError
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            raise ValueError
        n_, r_, p_ = int(n), int(r), int(p)
        salt_b, key_b = base64.b64decode(salt), base64.b64decode(key)
    except ValueError:
        n_, r_, p_, salt_b, key_b = SCRYPT_N, SCRYPT_R, SCRYPT_P, _DUMMY_SALT, b""
    got = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt_b,
        n=n_,
        r=r_,
        p=p_,
        maxmem=SCRYPT_MAXMEM,
        dklen=len(key_b) or KEY_BYTES,
    )
    return bool(key_b) and hmac.compare_digest(got, key_b)


def check_username(name: str) -> str:
    if not USERNAME.fullmatch(name):
        raise SinkholeError(
            f"{name!r} is not a user name: letters, digits, '.', '_', '@' and '-', "
            "starting with a letter or digit, at most 64"
        )
    return name


def add_user(store: Store, name: str, role: str, password: str, *, replace: bool = False) -> None:
    """Create a dashboard user (or, with replace, set a new role and password).

    Raises:
        SinkholeError: bad name, role or password; the user exists and not replace.
    """
    check_username(name)
    if role not in ROLES:
        raise SinkholeError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
    if len(password) < MIN_PASSWORD:
        raise SinkholeError(f"the password needs at least {MIN_PASSWORD} characters")
    hashed = hash_password(password)
    conn = store.conn
    existing = conn.execute("SELECT 1 FROM web_users WHERE name = ?", (name,)).fetchone()
    if existing and not replace:
        raise SinkholeError(f"user {name!r} exists already (use --replace to change it)")
    try:
        conn.execute(
            "INSERT INTO web_users (name, role, password, created) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET role = excluded.role, "
            "password = excluded.password, session_epoch = session_epoch + 1",
            (name, role, hashed, utcnow_text()),
        )
        conn.execute("DELETE FROM web_login_failures WHERE key = ?", (f"user:{name}",))
    except sqlite3.Error as exc:
        raise SinkholeError(f"{store.path}: cannot write user: {exc}") from None
    store.audit(None, f"sinkhole users add {name} --role {role}", f"dashboard user {name}")


def remove_user(store: Store, name: str) -> None:
    """Delete a user; their sessions end with the next request."""
    cur = store.conn.execute("DELETE FROM web_users WHERE name = ?", (name,))
    if cur.rowcount == 0:
        raise SinkholeError(f"no dashboard user named {name!r} (see `sinkhole users list`)")
    store.audit(None, f"sinkhole users remove {name}", f"dashboard user {name}")


def list_users(store: Store) -> list[User]:
    return [
        User(*row)
        for row in store.conn.execute(
            "SELECT name, role, created, session_epoch FROM web_users ORDER BY name"
        )
    ]


def get_user(store: Store, name: str) -> User | None:
    row = store.conn.execute(
        "SELECT name, role, created, session_epoch FROM web_users WHERE name = ?", (name,)
    ).fetchone()
    return User(*row) if row else None


def password_hash(store: Store, name: str) -> str | None:
    row = store.conn.execute("SELECT password FROM web_users WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


# -- failed logins ------------------------------------------------------------------------


@dataclass(frozen=True)
class Throttle:
    """How failed logins are answered: slowed after `free` failures, refused after `refuse`."""

    free: int = 3
    refuse: int = 10
    #: The delay of the first slowed answer (seconds); it doubles up to `max_delay`.
    delay: float = 1.0
    max_delay: float = 8.0
    #: Failures older than this are forgotten, and a refused key waits this long.
    window: int = 900

    def delay_for(self, failures: int) -> float:
        if failures < self.free:
            return 0.0
        return min(self.delay * 2 ** (failures - self.free), self.max_delay)


def failures(store: Store, keys: list[str], throttle: Throttle, now: int | None = None) -> dict:
    """{key: (failures, seconds until they are forgotten)} of the keys with recent failures."""
    now = int(time.time()) if now is None else now
    out = {}
    for key in keys:
        row = store.conn.execute(
            "SELECT failures, last_ts FROM web_login_failures WHERE key = ?", (key,)
        ).fetchone()
        if row and row[1] > now - throttle.window:
            out[key] = (row[0], row[1] + throttle.window - now)
    return out


def record_failure(store: Store, keys: list[str], throttle: Throttle) -> None:
    now = int(time.time())
    # Guesses at many names must not grow the table without bound: forgotten rows go.
    store.conn.execute(
        "DELETE FROM web_login_failures WHERE last_ts <= ?", (now - throttle.window,)
    )
    for key in keys:
        store.conn.execute(
            "INSERT INTO web_login_failures VALUES (?, 1, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "failures = iif(last_ts <= ?, 1, failures + 1), "
            "first_ts = iif(last_ts <= ?, excluded.first_ts, first_ts), last_ts = excluded.last_ts",
            (key, now, now, now - throttle.window, now - throttle.window),
        )


def clear_failures(store: Store, keys: list[str]) -> None:
    store.conn.executemany("DELETE FROM web_login_failures WHERE key = ?", [(k,) for k in keys])
