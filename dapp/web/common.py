"""Helpers shared by the blueprints: the app's state, login checks, logging in, after actions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import current_app, g, jsonify, redirect, request, url_for
from flask.typing import ResponseReturnValue

from dapp.services import messages
from dapp.services.amounts import parse_address
from dapp.services.errors import InvalidInput, LoginFailed, TooManyAttempts
from dapp.services.wallet import check_passphrase
from dapp.web.extensions import AppState
from dapp.web.security import CurrentUser, current_user, start_session

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def app_state() -> AppState:
    """The current app's state."""
    return current_app.extensions["microgrid"]


def json_error(status: int, message: str, field: str | None = None,
               **extra: Any) -> ResponseReturnValue:
    """A JSON error body: {"error": sentence[, "field": name]}."""
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    body.update(extra)
    return jsonify(body), status


def login_required(view: F) -> F:
    """Pages: redirect to the login page; API: 401. Sets `g.user`."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        user = current_user()
        if user is None:
            if request.blueprint == "api":
                return json_error(401, messages.API_LOGIN_FIRST)
            return redirect(url_for("auth.login_page"), 303)
        g.user = user
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def client_key() -> str:
    """Who is calling, for rate limits (the peer; behind TRUSTED_PROXIES, the forwarded client)."""
    return request.remote_addr or "unknown"


def check_client_limit() -> None:
    """Count one costly request (key derivation) for this client; TooManyAttempts if over."""
    ext = app_state()
    wait = ext.login_per_client.retry_after(client_key())
    if wait:
        raise TooManyAttempts(messages.too_many_attempts(wait), wait)
    ext.login_per_client.hit(client_key())


def log_in(address_text: object, passphrase: object) -> CurrentUser:
    """Rate-limit, decrypt the key, start the session; LoginFailed/TooManyAttempts otherwise."""
    ext = app_state()
    address = parse_address(address_text, "the account")
    passphrase = check_passphrase(passphrase)
    wait = max(ext.login_per_account.retry_after(address),
               ext.login_per_client.retry_after(client_key()))
    if wait:
        raise TooManyAttempts(messages.too_many_attempts(wait), wait)
    ext.login_per_account.hit(address)
    ext.login_per_client.hit(client_key())
    try:
        account = ext.wallet.unlock(address, passphrase)
    except InvalidInput as exc:
        log.info("login refused for %s from %s", address, client_key())
        raise LoginFailed(str(exc)) from None
    session_id = start_session(account)
    log.info("login %s from %s", account.address, client_key())
    return CurrentUser(session_id, account.address, account)


def acted(result: dict[str, str], kind: str, market: bool = False) -> None:
    """After an action: watch its transaction and push the sender's pending list."""
    ext = app_state()
    ext.hub.watch(g.user.address, result["tx_hash"], kind)
    if market:
        ext.hub.touch_market()


def form_values(source: Any, *names: str) -> dict[str, str]:
    """The named fields as strings (missing ones empty), to refill a form after an error."""
    return {name: str(source.get(name, "") or "") for name in names}
