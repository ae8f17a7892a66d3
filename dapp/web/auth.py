"""Login page: choose an account and unlock it; create an account; import a keystore file."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from dapp.services import messages
from dapp.services.errors import UserError
from dapp.web.common import app_state, check_client_limit, form_values, log_in
from dapp.web.security import current_user, end_session

bp = Blueprint("auth", __name__)


def render_login(status: int = 200, error: str | None = None, form: str | None = None,
                 values: dict[str, str] | None = None, selected: str | None = None
                 ) -> ResponseReturnValue:
    """The login page, optionally with an error for one of its three forms."""
    expired = bool(session.pop("expired", False))
    return render_template(
        "auth/login.html",
        accounts=app_state().wallet.accounts(),
        error=error,
        error_form=form,
        values=values or {},
        selected=selected,
        expired=expired,
    ), status


@bp.get("/")
def login_page() -> ResponseReturnValue:
    """The login page (the wallet if already logged in)."""
    if current_user() is not None:
        return redirect(url_for("wallet.page"))
    return render_login(selected=request.args.get("account"))


@bp.post("/login")
def login() -> ResponseReturnValue:
    """Unlock the chosen account with its passphrase and open the wallet."""
    address = request.form.get("address", "")
    try:
        log_in(address, request.form.get("passphrase", ""))
    except UserError as exc:
        return render_login(exc.status, exc.message, "login", selected=address)
    return redirect(url_for("wallet.page"), 303)


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """Forget the key and the session; back to the login page."""
    session_id = end_session()
    if session_id:
        app_state().hub.end_session(session_id)
    flash(messages.LOGGED_OUT, "ok")
    return redirect(url_for("auth.login_page"), 303)


@bp.post("/accounts/new")
def create_account() -> ResponseReturnValue:
    """Create a keystore account, then offer it on the login form."""
    values = form_values(request.form, "label")
    try:
        check_client_limit()
        address = app_state().wallet.create_account(
            request.form.get("passphrase", ""), request.form.get("confirm", ""),
            request.form.get("label", ""),
        )
    except UserError as exc:
        return render_login(exc.status, exc.message, "create", values)
    flash(messages.account_ready(address), "ok")
    return redirect(url_for("auth.login_page", account=address), 303)


@bp.post("/accounts/import")
def import_account() -> ResponseReturnValue:
    """Import a geth (V3) keystore file, then offer it on the login form."""
    values = form_values(request.form, "label")
    upload = request.files.get("keyfile")
    try:
        check_client_limit()
        content = upload.read(64 * 1024 + 1) if upload is not None else b""
        address = app_state().wallet.import_account(
            content, request.form.get("passphrase", ""), request.form.get("label", "")
        )
    except UserError as exc:
        return render_login(exc.status, exc.message, "import", values)
    flash(messages.account_ready(address, imported=True), "ok")
    return redirect(url_for("auth.login_page", account=address), 303)
