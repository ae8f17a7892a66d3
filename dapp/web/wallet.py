"""Wallet page: tokens, generation, Ether, credit, pending transactions, mining, Send Ether, and
the meters offered to the account (Accept / Decline)."""

from __future__ import annotations

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from dapp.services import messages
from dapp.services.errors import InvalidInput, UserError
from dapp.web.common import acted, app_state, form_values, login_required

bp = Blueprint("wallet", __name__, url_prefix="/wallet")


def render_wallet(status: int = 200, error: str | None = None,
                  send: dict[str, str] | None = None) -> ResponseReturnValue:
    """The wallet page, optionally with an error and the Send form refilled."""
    ext = app_state()
    return render_template(
        "wallet/wallet.html",
        summary=ext.wallet.summary(g.user.address),
        mining=ext.wallet.mining_status(),
        network=ext.wallet.network(),
        error=error,
        send=send or {},
        meter_offers=ext.wallet.meter_offers(g.user.address),
    ), status


def _done(message: str, tx_hash: str) -> ResponseReturnValue:
    flash(messages.transaction_pending(message, tx_hash), "ok")
    return redirect(url_for("wallet.page"), 303)


@bp.get("/")
@login_required
def page() -> ResponseReturnValue:
    """The wallet."""
    return render_wallet()


@bp.post("/send")
@login_required
def send() -> ResponseReturnValue:
    """Send Ether in two steps: a confirmation page, then the transaction."""
    ext = app_state()
    values = form_values(request.form, "to", "amount")
    try:
        if request.form.get("confirm") != "yes":
            preview = ext.wallet.preview_send(g.user.address, values["to"], values["amount"])
            return render_template("wallet/confirm_send.html", preview=preview, values=values)
        result = ext.wallet.send_ether(g.user.account, values["to"], values["amount"])
    except UserError as exc:
        return render_wallet(exc.status, exc.message, values)
    acted(result, "Ether transfer")
    return _done(result["message"], result["tx_hash"])


@bp.post("/withdraw")
@login_required
def withdraw() -> ResponseReturnValue:
    """Withdraw all market credit."""
    try:
        result = app_state().wallet.withdraw(g.user.account)
    except UserError as exc:
        return render_wallet(exc.status, exc.message)
    acted(result, "withdrawal")
    return _done(result["message"], result["tx_hash"])


@bp.post("/mining")
@login_required
def mining() -> ResponseReturnValue:
    """Start or stop mining."""
    ext = app_state()
    action = request.form.get("action", "")
    try:
        if action == "start":
            status = ext.wallet.start_mining()
        elif action == "stop":
            status = ext.wallet.stop_mining()
        else:
            raise InvalidInput(messages.MINING_ACTION_FORM)
    except UserError as exc:
        return render_wallet(exc.status, exc.message)
    ext.hub.touch_market()
    flash(messages.mining_switched(status["mining"], status["detail"]), "ok")
    return redirect(url_for("wallet.page"), 303)


@bp.post("/meters/accept")
@login_required
def accept_meter() -> ResponseReturnValue:
    """Accept a meter offered to the account (form field `meter`)."""
    try:
        result = app_state().wallet.accept_meter(g.user.account, request.form.get("meter"))
    except UserError as exc:
        return render_wallet(exc.status, exc.message)
    acted(result, "accept meter")
    return _done(result["message"], result["tx_hash"])


@bp.post("/meters/decline")
@login_required
def decline_meter() -> ResponseReturnValue:
    """Decline a meter offered to the account (form field `meter`)."""
    try:
        result = app_state().wallet.decline_meter(g.user.account, request.form.get("meter"))
    except UserError as exc:
        return render_wallet(exc.status, exc.message)
    acted(result, "decline meter")
    return _done(result["message"], result["tx_hash"])
