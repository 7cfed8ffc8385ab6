"""Dashboard sessions: signed expiring cookies (itsdangerous), CSRF tokens, the login throttle."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from resolver.store import Store
from resolver.users import Throttle, User, get_user

SESSION_COOKIE = "sinkhole_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
#: The settings row that holds the key cookies are signed with, created once.
SECRET_SETTING = "web_session_secret"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str

    @property
    def is_admin(self) -> bool:
        return self.user.role == "admin"


def session_secret(store: Store) -> str:
    """The signing key, kept with the database so every dashboard process shares it."""
    value = store.setting(SECRET_SETTING)
    if value is None:
        store.conn.execute(
            "INSERT OR IGNORE INTO settings VALUES (?, ?)", (SECRET_SETTING, secrets.token_hex(32))
        )
        value = store.setting(SECRET_SETTING)
    assert value is not None
    return value


class Sessions:
    """Makes and reads session cookies; a cookie names the user, their epoch and a CSRF token."""

    def __init__(self, secret: str, max_age: int) -> None:
        self.serializer = URLSafeTimedSerializer(secret, salt="sinkhole-session")
        self.max_age = max_age

    def issue(self, user: User) -> tuple[str, str]:
        """(cookie value, csrf token) for a user who just logged in."""
        token = secrets.token_urlsafe(32)
        value = self.serializer.dumps({"u": user.name, "e": user.session_epoch, "c": token})
        return value, token

    def read(self, cookie: str | None, store: Store) -> Session | None:
        """The session of a valid, unexpired cookie whose user still exists unchanged."""
        if not cookie or len(cookie) > 4096:
            return None
        try:
            data = self.serializer.loads(cookie, max_age=self.max_age)
        except (BadSignature, SignatureExpired, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("u"), str):
            return None
        user = get_user(store, data["u"])
        # Removed, or added again / given a new password since: the cookie is void.
        if user is None or user.session_epoch != data.get("e"):
            return None
        token = data.get("c")
        if not isinstance(token, str):
            return None
        return Session(user, token)


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf_token.encode(), str(sent).encode())


def throttle_of(web_config) -> Throttle:
    return Throttle(
        free=web_config.login_free,
        refuse=web_config.login_refuse_after,
        delay=web_config.login_delay,
        max_delay=max(web_config.login_delay, 8.0),
        window=web_config.login_window,
    )


def login_keys(username: str, client_ip: str | None) -> list[str]:
    """The counters a failed login adds to: the name tried, and the client it came from."""
    return [f"user:{username.lower()[:64]}", f"ip:{client_ip or 'unknown'}"]


#: A client address gets more failures than one name: an office behind one NAT shares it.
IP_REFUSE_FACTOR = 3
