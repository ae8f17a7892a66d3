"""The web app: `create_app()` builds Flask + Flask-SocketIO over the chain client and keystore.

Configuration, in layers (later wins): defaults below, the optional instance file
``instance/config.py``, ``MICROGRID_*`` environment variables (``MICROGRID_RPC``,
``MICROGRID_DATA_DIR``, ``MICROGRID_SECRET_KEY`` ...), then the mapping passed to `create_app`
(tests, and the `microgrid serve` flags). The secret key comes from ``MICROGRID_SECRET_KEY`` or
is generated once into ``<data dir>/secret_key`` (mode 0600).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from flask import Flask, abort, jsonify, render_template, request, send_file
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from dapp.chain.client import ChainClient
from dapp.errors import WalletError
from dapp.services import messages
from dapp.services.errors import UserError
from dapp.services.units import format_duration, format_time, short_address
from dapp.wallet.keystore import GETH_SCRYPT_N, Keystore, read_passphrase
from dapp.web import hosts
from dapp.web.extensions import AppState, make_socketio
from dapp.web.security import CSRF_CONFIG, CSRFError, csrf, csrf_token, current_user

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]

DEFAULTS: dict[str, Any] = {
    "RPC": "http://127.0.0.1:8545",
    "DATA_DIR": "data",
    "MARKET": None,
    "OPERATOR": None,
    "RPC_TIMEOUT": 10.0,
    "KDF_N": GETH_SCRYPT_N,
    "SESSION_IDLE_TIMEOUT": 1800,
    "LOGIN_LIMIT_PER_ACCOUNT": 5,
    "LOGIN_LIMIT_PER_CLIENT": 20,
    "LOGIN_LIMIT_WINDOW": 60,
    "FINALIZER_ADDRESS": None,
    "FINALIZER_PASSPHRASE_FILE": None,
    "LIVE_INTERVAL": 0.5,
    "LISTENER_INTERVAL": 1.0,
    # The wallet's generation chart, in seconds of chain time: its window and its bars.
    "CHART_WINDOW_SECONDS": 6 * 3600,
    "CHART_BUCKET_SECONDS": 600,
    "START_BACKGROUND": True,
    "AGENT_BATTERY_KWH": 10.0,  # the battery the trading agents assume for each household
    "AGENT_BATTERY_V": 24.0,  # its nominal voltage (lead-acid): the charge from the voltage
    "AGENT_EXPIRY_HOURS": 24.0,  # an agent turns itself off (forgets the key) after this
    "NODE_MODULES": str(ROOT / "node_modules"),
    "MAX_CONTENT_LENGTH": 256 * 1024,
    "SESSION_COOKIE_NAME": "microgrid_session",
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "PERMANENT_SESSION_LIFETIME": timedelta(hours=12),
}

# Third-party browser code, served from what `npm ci` installed (never committed).
VENDOR_FILES = {
    "socket.io.min.js": "socket.io-client/dist/socket.io.min.js",
    "socket.io.min.js.map": "socket.io-client/dist/socket.io.min.js.map",
    "chart.umd.min.js": "chart.js/dist/chart.umd.min.js",
    "chart.umd.min.js.map": "chart.js/dist/chart.umd.min.js.map",
}


def secret_key(data_dir: Path) -> str:
    """The app's secret key from `<data_dir>/secret_key`, generated (0600) on first use."""
    path = data_dir / "secret_key"
    try:
        text = path.read_text(encoding="utf-8").strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its key
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    return key


def _finalizer(config: Mapping[str, Any], keystore: Keystore) -> LocalAccount | None:
    """The server account that finalizes auctions, if one is configured."""
    address = config.get("FINALIZER_ADDRESS")
    if not address:
        return None
    passphrase_file = config.get("FINALIZER_PASSPHRASE_FILE")
    if not passphrase_file:
        raise WalletError("FINALIZER_ADDRESS needs FINALIZER_PASSPHRASE_FILE (its passphrase)")
    passphrase = read_passphrase(passphrase_file, prompt="")
    return keystore.unlock(address, passphrase)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: config layers, chain client, keystore, blueprints, Socket.IO handlers."""
    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
        instance_path=str(ROOT / "instance"),
        instance_relative_config=True,
    )
    app.config.from_mapping(DEFAULTS)
    app.config.from_mapping(CSRF_CONFIG)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("MICROGRID")
    if test_config:
        app.config.from_mapping(test_config)
    data_dir = Path(app.config["DATA_DIR"])
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = secret_key(data_dir)

    client = ChainClient(app.config["RPC"], data_dir, market=app.config["MARKET"] or None,
                         operator=app.config["OPERATOR"] or None,
                         timeout=float(app.config["RPC_TIMEOUT"]))
    keystore = Keystore(data_dir / "keystore", scrypt_n=int(app.config["KDF_N"]))
    csrf.init_app(app)
    socketio = make_socketio()
    socketio.init_app(app)
    ext = AppState(
        client,
        keystore,
        socketio=socketio,
        idle_timeout=float(app.config["SESSION_IDLE_TIMEOUT"]),
        login_limit_per_account=int(app.config["LOGIN_LIMIT_PER_ACCOUNT"]),
        login_limit_per_client=int(app.config["LOGIN_LIMIT_PER_CLIENT"]),
        login_limit_window=float(app.config["LOGIN_LIMIT_WINDOW"]),
        finalizer=_finalizer(app.config, keystore),
        live_interval=float(app.config["LIVE_INTERVAL"]),
        listener_interval=float(app.config["LISTENER_INTERVAL"]),
        chart_window=int(app.config["CHART_WINDOW_SECONDS"]),
        chart_bucket=int(app.config["CHART_BUCKET_SECONDS"]),
        agent_capacity_wh=float(app.config["AGENT_BATTERY_KWH"]) * 1000,
        agent_battery_v=float(app.config["AGENT_BATTERY_V"]),
        agent_expiry_s=float(app.config["AGENT_EXPIRY_HOURS"]) * 3600,
    )
    app.extensions["microgrid"] = ext

    from dapp.web import api, auth, market, sockets, wallet

    app.register_blueprint(auth.bp)
    app.register_blueprint(wallet.bp)
    app.register_blueprint(market.bp)
    app.register_blueprint(api.bp)
    sockets.register_handlers(socketio, ext)
    _register_hooks(app, ext)
    hosts.init_app(app)  # Host allow-list, proxies, TLS cookie, who may add accounts
    return app


def _is_api() -> bool:
    return request.blueprint == "api" or request.path.startswith("/api/")


def _register_hooks(app: Flask, ext: AppState) -> None:
    """CSRF, background start, template globals, vendor files and error pages."""
    app.jinja_env.filters["short"] = short_address
    app.jinja_env.filters["duration"] = format_duration
    app.jinja_env.filters["clock"] = format_time

    @app.before_request
    def _before() -> None:
        if app.config["START_BACKGROUND"] and not ext.running:
            ext.start_background()

    @app.context_processor
    def _globals() -> dict[str, Any]:
        user = current_user()
        return {
            "csrf_token": csrf_token,
            "user": user,
            "user_label": ext.wallet.label_of(user.address) if user else None,
            "chain": ext.status(),
        }

    @app.after_request
    def _headers(response: Any) -> Any:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.get("/vendor/<name>")
    def vendor(name: str) -> ResponseReturnValue:
        """socket.io-client and Chart.js from node_modules (`npm ci`)."""
        relative = VENDOR_FILES.get(name)
        if relative is None:
            abort(404)
        path = Path(app.config["NODE_MODULES"]) / relative
        if not path.is_file():
            log.error("%s is missing: run `npm ci`", path)
            abort(404)
        return send_file(path, max_age=3600)

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError) -> ResponseReturnValue:
        message = messages.CSRF_REFUSED
        if _is_api():
            return jsonify({"error": message}), 400
        return render_template("error.html", title=messages.TITLE_REFUSED, message=message), 400

    @app.errorhandler(UserError)
    def _user_error(exc: UserError) -> ResponseReturnValue:
        if _is_api():
            return jsonify({"error": exc.message}), exc.status
        return render_template("error.html", title=messages.TITLE_NOT_POSSIBLE,
                               message=exc.message), exc.status

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> ResponseReturnValue:
        message = messages.HTTP_ERRORS.get(exc.code or 0,
                                           exc.description or messages.REQUEST_REFUSED)
        if _is_api():
            return jsonify({"error": message}), exc.code or 400
        return render_template("error.html", title=exc.name, message=message), exc.code or 400

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        log.exception("unexpected error on %s %s", request.method, request.path)
        message = messages.SERVER_ERROR
        if _is_api():
            return jsonify({"error": message}), 500
        return render_template("error.html", title=messages.TITLE_SERVER_ERROR,
                               message=message), 500
