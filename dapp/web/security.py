"""CSRF protection, login rate limits, and who is logged in.

CSRF is Flask-WTF's `CSRFProtect`: every POST/PUT/PATCH/DELETE must carry the session's token,
in the form field ``csrf_token`` (pages) or the ``X-CSRF-Token`` header (the JSON API). Login
limits count attempts in a moving window of the `limits` library (the engine of Flask-Limiter;
README, "Web safety", says why not its decorators).

The session cookie (Flask's signed cookie, HttpOnly, SameSite=Lax) holds only a random session
id, the account's address and the CSRF token. The decrypted key lives in server memory
(`UnlockedKeys`) under that session id and is forgotten on logout or after the idle timeout.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from flask import current_app, g, session
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from dapp.errors import WalletError

__all__ = ["CSRF_CONFIG", "CSRFError", "CurrentUser", "RateLimiter", "csrf", "csrf_token",
           "current_user", "end_session", "start_session"]

csrf = CSRFProtect()
CSRF_CONFIG = {
    "WTF_CSRF_HEADERS": ["X-CSRF-Token"],
    "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
}
_CSRF_FIELD = "csrf_token"  # Flask-WTF's session key and form field (WTF_CSRF_FIELD_NAME)


def csrf_token() -> str:
    """The session's CSRF token (made on first use)."""
    return generate_csrf()


class RateLimiter:
    """At most `limit` attempts per `window` seconds per key (a moving window in memory)."""

    def __init__(self, limit: int, window: float) -> None:
        self._item = RateLimitItemPerSecond(limit, max(1, round(window)))
        self._windows = MovingWindowRateLimiter(MemoryStorage())

    def retry_after(self, key: str) -> float:
        """0 if `key` may go on now, else the seconds until it may."""
        if self._windows.test(self._item, key):
            return 0.0
        reset_at, _ = self._windows.get_window_stats(self._item, key)
        return max(0.0, reset_at - time.time())

    def hit(self, key: str) -> None:
        """Count one attempt for `key`."""
        self._windows.hit(self._item, key)


@dataclass(frozen=True)
class CurrentUser:
    """The logged-in user of a request or socket."""

    session_id: str
    address: str
    account: LocalAccount


def current_user() -> CurrentUser | None:
    """The logged-in user, or None (no session, logged out, or expired).

    Counts as activity (resets the idle timer). An expired session is cleared and
    `session["expired"]` is set so the login page can say why.
    """
    session_id = session.get("sid")
    if not session_id:
        return None
    keys = current_app.extensions["microgrid"].keys
    try:
        account = keys.get(session_id)
    except WalletError:
        session.pop("sid", None)
        session.pop("address", None)
        session["expired"] = True
        return None
    return CurrentUser(session_id, account.address, account)


def start_session(account: LocalAccount) -> str:
    """Log `account` in: a fresh session id and CSRF token; the key goes to server memory."""
    session.clear()
    g.pop(_CSRF_FIELD, None)  # the next csrf_token() makes a fresh token for the new session
    session_id = secrets.token_urlsafe(32)
    session["sid"] = session_id
    session["address"] = account.address
    session.permanent = True
    current_app.extensions["microgrid"].keys.put(session_id, account)
    return session_id


def end_session() -> str | None:
    """Log out: forget the key, clear the cookie; returns the old session id."""
    session_id = session.get("sid")
    if session_id:
        current_app.extensions["microgrid"].keys.drop(session_id)
    session.clear()
    return session_id
