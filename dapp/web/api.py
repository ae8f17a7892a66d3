"""The JSON API (`/api/v1`): every read and action of the pages, over the same services.

Authentication is the same session cookie as the pages: `POST /api/v1/session` with an address
and passphrase logs in. Every POST/DELETE carries the session's CSRF token in the
``X-CSRF-Token`` header (`GET /api/v1/session` hands it out). Errors are
``{"error": "<sentence>"}`` with 400 (bad input), 401 (not logged in / wrong passphrase),
409 (not possible now), 429 (too many attempts) or 503 (chain unavailable).
The OpenAPI document is at `/api/v1/openapi.json`. Anonymous reads: `GET /api/v1/chain` (chain
id, latest block, the deployment's addresses and links to the ABIs at `GET /api/v1/abi/<name>`).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from flask import Blueprint, g, jsonify, render_template, request, url_for
from flask.typing import ResponseReturnValue

from dapp.errors import ChainError
from dapp.services import messages
from dapp.services.errors import InvalidInput, UserError
from dapp.services.wallet import CONTRACTS
from dapp.web.common import acted, app_state, check_client_limit, json_error, log_in, login_required
from dapp.web.openapi import openapi_document
from dapp.web.security import csrf_token, current_user, end_session

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.errorhandler(UserError)
def _user_error(exc: UserError) -> ResponseReturnValue:
    extra = {"retry_after": round(exc.retry_after, 1)} if hasattr(exc, "retry_after") else {}
    response = json_error(exc.status, exc.message, exc.field, **extra)
    return response


def body() -> dict[str, Any]:
    """The request's JSON object (or form fields); InvalidInput for anything else."""
    if request.is_json:
        try:
            # Decimals arrive as their exact text ("0.1"), never as binary floats.
            data = json.loads(request.get_data(cache=True) or b"null", parse_float=str)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise InvalidInput(messages.JSON_OBJECT_EXPECTED)
        return data
    return request.form.to_dict()


def _text(data: dict[str, Any], name: str, default: str = "") -> Any:
    """A field as the services take it: text or a plain number, never a list or object."""
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInput(messages.field_not_text(name), name)
    return value


def _action(result: dict[str, str], kind: str, market: bool = False) -> ResponseReturnValue:
    acted(result, kind, market)
    return jsonify(result), 202


# -- documentation ---------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    """The OpenAPI 3.1 document of this API."""
    return jsonify(openapi_document(request.host_url.rstrip("/") + url_for("api.openapi")
                                    .rsplit("/", 1)[0]))


@bp.get("/docs")
def docs() -> ResponseReturnValue:
    """A readable page listing the API's operations."""
    return render_template("api/docs.html", doc=openapi_document("/api/v1"))


# -- session and accounts --------------------------------------------------------------------


@bp.get("/session")
def session_info() -> ResponseReturnValue:
    """Who is logged in, and the CSRF token for POST/DELETE."""
    user = current_user()
    return jsonify({
        "logged_in": user is not None,
        "address": user.address if user else None,
        "csrf_token": csrf_token(),
    })


@bp.post("/session")
def session_login() -> ResponseReturnValue:
    """Log in with an address and passphrase."""
    data = body()
    user = log_in(_text(data, "address"), data.get("passphrase", ""))
    return jsonify({"logged_in": True, "address": user.address, "csrf_token": csrf_token()})


@bp.delete("/session")
def session_logout() -> ResponseReturnValue:
    """Log out: the key is forgotten."""
    session_id = end_session()
    if session_id:
        app_state().hub.end_session(session_id)
    return jsonify({"logged_in": False})


@bp.get("/accounts")
def accounts() -> ResponseReturnValue:
    """The accounts of this server's keystore."""
    return jsonify({"accounts": app_state().wallet.accounts()})


@bp.post("/accounts")
def create_account() -> ResponseReturnValue:
    """Create an account."""
    data = body()
    check_client_limit()
    passphrase = data.get("passphrase", "")
    address = app_state().wallet.create_account(
        passphrase, data.get("confirm", passphrase), data.get("label")
    )
    return jsonify({"address": address}), 201


@bp.post("/accounts/import")
def import_account() -> ResponseReturnValue:
    """Import a V3 keystore: multipart `keyfile`, or JSON `keystore` (object or base64 text)."""
    data = body()
    check_client_limit()
    upload = request.files.get("keyfile")
    if upload is not None:
        content = upload.read(64 * 1024 + 1)
    else:
        keystore = data.get("keystore")
        if isinstance(keystore, dict):
            content = json.dumps(keystore).encode()
        elif isinstance(keystore, str):
            try:
                content = base64.b64decode(keystore, validate=True)
            except (binascii.Error, ValueError):
                content = keystore.encode()
        else:
            content = b""
    address = app_state().wallet.import_account(content, data.get("passphrase", ""),
                                                data.get("label"))
    return jsonify({"address": address}), 201


# -- chain and wallet ------------------------------------------------------------------------


def network() -> dict[str, Any]:
    """The wallet service's network view, with absolute links to the contracts' ABIs."""
    status = app_state().wallet.network()
    status["abi"] = {role: url_for("api.abi", name=name, _external=True)
                     for role, name in status["contracts"].items()}
    return status


@bp.get("/chain")
def chain() -> ResponseReturnValue:
    """Chain id, latest block, mining state, the deployment and its ABIs (503 if down)."""
    status = network()
    if not status["available"]:
        return jsonify({"error": status["message"], **status}), 503
    return jsonify(status)


@bp.get("/abi/<name>")
def abi(name: str) -> ResponseReturnValue:
    """The ABI of one of the contracts (EnergyToken, MeterRegistry, EnergyMarket)."""
    try:
        found = app_state().wallet.abi(name)
    except ChainError as exc:  # the artifacts were not compiled
        return json_error(503, str(exc))
    if found is None:
        return json_error(404, messages.no_abi(name, sorted(CONTRACTS.values())))
    return jsonify({"contract": name, "abi": found})


@bp.get("/wallet")
@login_required
def wallet() -> ResponseReturnValue:
    """Balances, credit, pending transactions, generation and its history."""
    return jsonify(app_state().wallet.summary(g.user.address))


@bp.get("/wallet/pending")
@login_required
def pending() -> ResponseReturnValue:
    """Unmined transactions of the account and its meters."""
    summary = app_state().wallet.summary(g.user.address)
    if not summary["available"]:
        return json_error(503, summary["message"])
    return jsonify({"pending": summary["pending"]})


@bp.post("/wallet/send")
@login_required
def send() -> ResponseReturnValue:
    """Send Ether (`to`, `amount` in ether as text)."""
    data = body()
    result = app_state().wallet.send_ether(g.user.account, _text(data, "to"),
                                           _text(data, "amount"))
    return _action(result, "Ether transfer")


@bp.post("/wallet/withdraw")
@login_required
def withdraw() -> ResponseReturnValue:
    """Withdraw all market credit."""
    return _action(app_state().wallet.withdraw(g.user.account), "withdrawal")


@bp.get("/mining")
@login_required
def mining() -> ResponseReturnValue:
    """The mining state."""
    return jsonify(app_state().wallet.mining_status())


@bp.post("/mining")
@login_required
def set_mining() -> ResponseReturnValue:
    """Start or stop mining (`action`: "start" or "stop")."""
    action = _text(body(), "action")
    ext = app_state()
    if action == "start":
        status = ext.wallet.start_mining()
    elif action == "stop":
        status = ext.wallet.stop_mining()
    else:
        raise InvalidInput(messages.MINING_ACTION_API, "action")
    ext.hub.touch_market()
    return jsonify(status)


# -- meters offered to the account -----------------------------------------------------------


@bp.get("/meters/offers")
@login_required
def meter_offers() -> ResponseReturnValue:
    """Meters the grid operator offered to the account that it has not answered yet."""
    return jsonify({"offers": app_state().wallet.meter_offers(g.user.address)})


@bp.post("/meters/<address>/accept")
@login_required
def accept_meter(address: str) -> ResponseReturnValue:
    """Accept a meter offered to the account: its signed readings count for it."""
    return _action(app_state().wallet.accept_meter(g.user.account, address), "accept meter")


@bp.post("/meters/<address>/decline")
@login_required
def decline_meter(address: str) -> ResponseReturnValue:
    """Decline a meter offered to the account."""
    return _action(app_state().wallet.decline_meter(g.user.account, address), "decline meter")


# -- market ----------------------------------------------------------------------------------


@bp.get("/market")
@login_required
def market() -> ResponseReturnValue:
    """Open listings, open trades and cleared prices."""
    return jsonify(app_state().market.snapshot())


@bp.post("/market/listings")
@login_required
def sell() -> ResponseReturnValue:
    """List energy (`energy` kWh, `price` per kWh, `price_unit`, `duration`, `duration_unit`)."""
    data = body()
    result = app_state().market.sell(
        g.user.account, _text(data, "energy"), _text(data, "price"),
        _text(data, "price_unit", "ether"), _text(data, "duration"),
        _text(data, "duration_unit", "minutes"),
    )
    return _action(result, "listing", market=True)


@bp.post("/market/listings/<lot_id>/bids")
@login_required
def bid(lot_id: str) -> ResponseReturnValue:
    """Bid on a listing (`price` per kWh, `price_unit`)."""
    data = body()
    result = app_state().market.bid(g.user.account, lot_id, _text(data, "price"),
                                    _text(data, "price_unit", "ether"))
    return _action(result, "bid", market=True)


@bp.post("/market/listings/<lot_id>/finalize")
@login_required
def finalize(lot_id: str) -> ResponseReturnValue:
    """End an auction whose deadline has passed."""
    return _action(app_state().market.finalize(g.user.account, lot_id), "finalize", market=True)


@bp.post("/market/trades/<trade_id>/close")
@login_required
def close(trade_id: str) -> ResponseReturnValue:
    """Close the connection of an open trade."""
    result = app_state().market.close(g.user.account, trade_id)
    return _action(result, "close connection", market=True)


# -- trading agent ---------------------------------------------------------------------------


@bp.get("/agent")
@login_required
def agent() -> ResponseReturnValue:
    """The trading agent: on/off, limits, the decision log (newest first)."""
    return jsonify(app_state().agents.status(g.user.address))


@bp.put("/agent")
@login_required
def set_agent() -> ResponseReturnValue:
    """Turn the agent on or off and set its limits (left-out limits keep their saved value)."""
    data = body()
    return jsonify(app_state().agents.configure(
        g.user.account, data.get("on"), data.get("reserve_percent"),
        data.get("floor_eth_per_kwh"), data.get("ceiling_eth_per_kwh"),
        data.get("daily_limit_eth")))
