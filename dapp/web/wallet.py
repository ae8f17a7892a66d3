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


# -- trading agent (templates/wallet/_agent.html) --------------------------------------------

AGENT_FIELDS = ("reserve_percent", "floor_eth_per_kwh", "ceiling_eth_per_kwh", "daily_limit_eth")


@bp.context_processor
def _agent_panel() -> dict[str, object]:
    """The agent panel's state (and, after a refused setting, what the owner typed)."""
    user = getattr(g, "user", None)
    if user is None:
        return {}
    return {"agent": app_state().agents.status(user.address),
            "agent_form": g.get("agent_form"), "agent_error": g.get("agent_error")}


@bp.post("/agent")
@login_required
def agent() -> ResponseReturnValue:
    """Turn the trading agent on with the four limits (or save them), or turn it off."""
    values = form_values(request.form, *AGENT_FIELDS)
    switch = request.form.get("on", "")
    try:
        if switch == "off":  # turning off needs no limits, and bad ones do not keep it on
            result = app_state().agents.configure(g.user.account, "off", form=True)
        else:
            result = app_state().agents.configure(
                g.user.account, switch, *(values[name] for name in AGENT_FIELDS), form=True)
    except UserError as exc:
        g.agent_form, g.agent_error = values, exc.message
        return render_wallet(exc.status, exc.message)
    flash(result["message"], "ok")
    return redirect(url_for("wallet.page") + "#agent-panel", 303)
