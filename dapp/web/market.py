"""Marketplace page: Sell, Buy (bid on cards), Close Connection, open trades, cleared prices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from dapp.services import messages
from dapp.services.errors import UserError
from dapp.web.common import acted, app_state, form_values, login_required

bp = Blueprint("market", __name__, url_prefix="/market")

SELL_FIELDS = ("energy", "price", "price_unit", "duration", "duration_unit")


def board_context() -> dict[str, Any]:
    """What the cards need: the snapshot, who is looking, their own trades (the market's
    per-account index), whether they may bid, whether the server finalizes."""
    ext = app_state()
    snapshot = ext.market.snapshot()
    me = g.user.address
    by_id = {t["id"]: t for t in snapshot["trades"]}
    own = ext.market.own(me) if snapshot["available"] else {"buying": []}
    return {
        "snapshot": snapshot,
        "me": me,
        "own_trades": [by_id[i] for i in own["buying"] if i in by_id],
        "can_bid": not snapshot["listings"] or ext.market.can_bid(me),
        "no_load_meter": messages.NO_LOAD_METER,
        "auto_finalize": ext.finalizer.enabled,
    }


def render_market(status: int = 200, error: str | None = None,
                  sell: dict[str, str] | None = None) -> ResponseReturnValue:
    """The marketplace page, optionally with an error and the Sell form refilled."""
    return render_template(
        "market/market.html", error=error, sell=sell or {}, **board_context()
    ), status


def _done(result: dict[str, str]) -> ResponseReturnValue:
    flash(messages.transaction_pending(result["message"], result["tx_hash"]), "ok")
    return redirect(url_for("market.page"), 303)


@bp.get("/")
@login_required
def page() -> ResponseReturnValue:
    """The marketplace."""
    return render_market()


@bp.get("/board")
@login_required
def board() -> ResponseReturnValue:
    """The cards alone (fetched by the page when the market changes)."""
    return render_template("market/_board.html", **board_context())


def _act(kind: str, action: Callable[[], dict[str, str]],
         values: dict[str, str] | None = None) -> ResponseReturnValue:
    """Run a market action: a refused one re-renders the page with its sentence and the form."""
    try:
        result = action()
    except UserError as exc:
        return render_market(exc.status, exc.message, values)
    acted(result, kind, market=True)
    return _done(result)


@bp.post("/sell")
@login_required
def sell() -> ResponseReturnValue:
    """List energy tokens for auction."""
    values = form_values(request.form, *SELL_FIELDS)
    return _act("listing", lambda: app_state().market.sell(
        g.user.account, values["energy"], values["price"], values["price_unit"] or "ether",
        values["duration"], values["duration_unit"] or "minutes",
    ), values)


@bp.post("/bid")
@login_required
def bid() -> ResponseReturnValue:
    """Bid on a listing."""
    form = request.form
    return _act("bid", lambda: app_state().market.bid(
        g.user.account, form.get("lot", ""), form.get("price", ""),
        form.get("price_unit", "") or "ether",
    ))


@bp.post("/close")
@login_required
def close() -> ResponseReturnValue:
    """Close the connection of an open trade."""
    return _act("close connection", lambda: app_state().market.close(
        g.user.account, request.form.get("trade", "")))


@bp.post("/finalize")
@login_required
def finalize() -> ResponseReturnValue:
    """End an auction whose deadline has passed (when the server does not do it itself)."""
    return _act("finalize", lambda: app_state().market.finalize(
        g.user.account, request.form.get("lot", "")))
