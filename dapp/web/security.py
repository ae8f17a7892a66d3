"""CSRF tokens, a small login rate limiter, and who is logged in.

The session cookie (Flask's signed cookie, HttpOnly, SameSite=Lax) holds only a random session
id, the account's address and the CSRF token. The decrypted key lives in server memory
(`UnlockedKeys`) under that session id and is forgotten on logout or after the idle timeout.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from flask import current_app, request, session

from dapp.errors import WalletError

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class CSRFError(Exception):
    """A state-changing request came without the session's CSRF token."""


def csrf_token() -> str:
    """The session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    """before_request: refuse POST/PUT/PATCH/DELETE without the session's token."""
    if request.method not in UNSAFE_METHODS:
        return
    expected = session.get("csrf")
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD)
    if not expected or not sent or not hmac.compare_digest(str(sent), str(expected)):
        raise CSRFError()


class RateLimiter:
    """At most `limit` hits per `window` seconds per key (a sliding window in memory)."""

    def __init__(self, limit: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float:
        """0 if `key` may go on now, else the seconds until it may."""
        with self._lock:
            hits = self._prune(key)
            if len(hits) < self.limit:
                return 0.0
            return max(0.0, hits[0] + self.window - self._clock())

    def hit(self, key: str) -> None:
        """Count one attempt for `key`."""
        with self._lock:
            self._prune(key).append(self._clock())

    def _prune(self, key: str) -> deque[float]:
        hits = self._hits.setdefault(key, deque())
        floor = self._clock() - self.window
        while hits and hits[0] <= floor:
            hits.popleft()
        if not hits and len(self._hits) > 10_000:
            self._hits.pop(key, None)  # keep the table small under a flood of keys
            hits = self._hits.setdefault(key, deque())
        return hits


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
    session_id = secrets.token_urlsafe(32)
    session["sid"] = session_id
    session["address"] = account.address
    session["csrf"] = secrets.token_urlsafe(32)
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
