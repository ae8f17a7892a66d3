"""Who is asking: the Host allow-list, reverse proxies, TLS cookies, and who may add accounts.

- **Host allow-list.** A web page the user visits can reach a server on this machine through
  DNS rebinding (its own name, resolving to 127.0.0.1), so every request, Socket.IO included,
  must name this server: the loopback names, the address it is bound to, and the names in
  ``ALLOWED_HOSTS`` (``MICROGRID_ALLOWED_HOSTS``, ``--allowed-host``; a leading dot allows
  subdomains). Anything else gets 400 and a sentence, before any page, API or socket code runs.
- **Reverse proxy.** ``TRUSTED_PROXIES`` (``MICROGRID_TRUSTED_PROXIES``; default 0) is how many
  proxies in front of the app append to ``X-Forwarded-For``/``-Proto``: with 1, the limits key
  on the client the proxy saw, not on the proxy. Without it those headers are ignored (a client
  could write anything there).
- **TLS.** ``BEHIND_TLS`` (``MICROGRID_BEHIND_TLS``): the session cookie is marked Secure and
  URLs are built as https.
- **New accounts.** Creating an account or importing a keystore costs a key derivation and adds
  a file to the keystore every user of the server sees, so by default only a client on this
  machine (loopback; behind a proxy, the forwarded client) may do it, and at most
  ``ACCOUNT_CREATION_LIMIT`` times per ``ACCOUNT_CREATION_WINDOW`` seconds (10 per 10 minutes).
  ``ACCOUNTS_FROM_NETWORK`` (``MICROGRID_ACCOUNTS_FROM_NETWORK``) lets other machines do it too.
"""

from __future__ import annotations

import contextlib
import html
import ipaddress
import json
import logging
import re
import socket
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from dapp.services import messages
from dapp.services.errors import TooManyAttempts, UserError
from dapp.settings import flag
from dapp.web.security import RateLimiter

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("", "0.0.0.0", "::")  # noqa: S104 - names, not a bind
CREATION_ENDPOINTS = frozenset({
    "auth.create_account", "auth.import_account", "api.create_account", "api.import_account",
})

DEFAULTS: dict[str, Any] = {
    "ALLOWED_HOSTS": None,
    "BIND_HOST": "127.0.0.1",
    "BEHIND_TLS": False,
    "TRUSTED_PROXIES": 0,
    "ACCOUNTS_FROM_NETWORK": False,
    "ACCOUNT_CREATION_LIMIT": 10,
    "ACCOUNT_CREATION_WINDOW": 600,
}


class CreationRefused(UserError):
    """Accounts may not be created or imported from this client."""

    status = 403


def host_names(value: object) -> list[str]:
    """ALLOWED_HOSTS as a list: a list, or text separated by spaces or commas."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in re.split(r"[\s,]+", value) if part]
    if isinstance(value, Iterable):
        return [str(part) for part in value if str(part)]
    raise ValueError(f"ALLOWED_HOSTS: not a list of names: {value!r}")


def _own_addresses() -> list[str]:
    """This machine's name and addresses, for an app bound to every interface."""
    name = socket.gethostname()
    found = [name, f"{name}.local"]
    with contextlib.suppress(OSError):  # a machine whose own name does not resolve
        found += [info[4][0] for info in socket.getaddrinfo(name, None)]
    return found


def allowed_hosts(config: dict[str, Any]) -> list[str]:
    """The names a request's Host may carry: loopback, the bound address, and the setting."""
    bound = str(config.get("BIND_HOST") or "").strip("[]")
    names = list(LOOPBACK_NAMES)
    names += _own_addresses() if bound in WILDCARDS else [bound]
    names += host_names(config.get("ALLOWED_HOSTS"))
    return list(dict.fromkeys(n.lower() for n in names))


def _host_name(host: str) -> str:
    """The name part of a Host header (no port; IPv6 without brackets)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


class HostCheck:
    """WSGI middleware: 400 for a request whose Host is not on the allow-list."""

    def __init__(self, app: Callable, hosts: list[str]) -> None:
        self.app = app
        self.hosts = hosts

    def allows(self, host: str) -> bool:
        """True if the Host header `host` names this server (".example.org": and subdomains)."""
        name = _host_name(host).rstrip(".")
        if not name or not re.fullmatch(r"[a-z0-9.\-_:]+", name):
            return False
        for allowed in self.hosts:
            if allowed.startswith("."):
                if name == allowed[1:] or name.endswith(allowed):
                    return True
            elif name == allowed:
                return True
        return False

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        """Answer 400 for a foreign Host, else pass the request on."""
        host = environ.get("HTTP_HOST") or ""
        if self.allows(host):
            return self.app(environ, start_response)
        client = environ.get("REMOTE_ADDR", "unknown")
        log.warning("refused a request for host %r from %s (%s)", host[:100], client,
                    environ.get("PATH_INFO", ""))
        message = messages.unknown_host(host, self.hosts)
        path = environ.get("PATH_INFO", "")
        if path.startswith("/api/"):
            body = json.dumps({"error": message}).encode()
            kind = "application/json"
        elif path.startswith("/socket.io"):
            body, kind = message.encode(), "text/plain; charset=utf-8"
        else:
            body = (f"<!doctype html><title>Unknown host</title><h1>Unknown host</h1>"
                    f"<p>{html.escape(message)}</p>").encode()
            kind = "text/html; charset=utf-8"
        start_response("400 Bad Request", [("Content-Type", kind),
                                           ("Content-Length", str(len(body)))])
        return [body]


def _is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


def init_app(app: Flask) -> None:
    """Apply the settings to `app` (call after Socket.IO has wrapped the WSGI app)."""
    for key, value in DEFAULTS.items():
        app.config.setdefault(key, value)
    if flag(app.config["BEHIND_TLS"]):
        app.config["SESSION_COOKIE_SECURE"] = True
        app.config["PREFERRED_URL_SCHEME"] = "https"
    hosts = allowed_hosts(app.config)
    app.config["ALLOWED_HOSTS_EFFECTIVE"] = hosts
    app.wsgi_app = HostCheck(app.wsgi_app, hosts)  # type: ignore[method-assign]
    proxies = int(app.config["TRUSTED_PROXIES"] or 0)
    if proxies < 0:
        raise ValueError("TRUSTED_PROXIES must be 0 or more")
    if proxies:
        # Outermost, so the host check's log and every limit see the forwarded client.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies,  # type: ignore[method-assign]
                                x_proto=proxies, x_host=0, x_port=0, x_prefix=0)
    from_network = flag(app.config["ACCOUNTS_FROM_NETWORK"])
    creations = RateLimiter(int(app.config["ACCOUNT_CREATION_LIMIT"]),
                            float(app.config["ACCOUNT_CREATION_WINDOW"]))
    app.extensions["microgrid_creations"] = creations

    @app.before_request
    def _limit_new_accounts() -> None:
        if request.endpoint not in CREATION_ENDPOINTS:
            return
        client = request.remote_addr or "unknown"
        if not from_network and not _is_loopback(client):
            log.warning("refused account creation/import from %s", client)
            raise CreationRefused(messages.ACCOUNTS_FROM_THIS_MACHINE)
        wait = creations.retry_after(client)
        if wait:
            raise TooManyAttempts(messages.too_many_new_accounts(wait), wait)
        creations.hit(client)
