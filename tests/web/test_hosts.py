"""Who is asking: the Host allow-list, reverse proxies, the TLS cookie, and who may add accounts."""

from __future__ import annotations

import html

import pytest
import requests
import socketio

from dapp.web.hosts import allowed_hosts
from tests.web.conftest import PASSPHRASE, Browser, LiveServer

FOREIGN = ["evil.example", "evil.example:3000", "localhost.evil.example", "127.0.0.1.nip.io",
           "", "loc alhost", "[::2]:3000", "x" * 300]
PATHS = ["/", "/wallet", "/market", "/api/v1/session", "/api/v1/accounts", "/api/v1/chain",
         "/socket.io/?EIO=4&transport=polling", "/vendor/socket.io.min.js", "/no/such/page"]


def accounts(browser: Browser) -> list[str]:
    """The keystore's accounts, asked with a good Host."""
    return [a["address"] for a in browser.client.get("/api/v1/accounts").get_json()["accounts"]]


@pytest.mark.parametrize("host", FOREIGN)
@pytest.mark.parametrize("path", PATHS)
def test_a_foreign_host_is_refused_in_words(browser, host, path):
    response = browser.client.get(path, headers={"Host": host})
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "does not answer to the name" in text and "MICROGRID_ALLOWED_HOSTS" in text
    if path.startswith("/api/"):
        assert "does not answer" in response.get_json()["error"]


def test_a_rebinding_page_cannot_log_in_or_create_accounts(browser, world):
    before = accounts(browser)
    token = browser.csrf()  # even with a valid token and cookie from the real name
    evil = {"Host": "evil.example:3000", "X-CSRF-Token": token}
    for url, body in (("/api/v1/accounts", {"passphrase": "a long secret phrase"}),
                      ("/api/v1/session", {"address": world.address["producer"],
                                           "passphrase": PASSPHRASE})):
        response = browser.client.post(url, json=body, headers=evil)
        assert response.status_code == 400
    assert accounts(browser) == before
    assert browser.client.get("/api/v1/session").get_json().get("address") is None


@pytest.mark.parametrize("host", ["localhost", "localhost:3000", "127.0.0.1:3000", "[::1]:3000",
                                  "LOCALHOST:3000"])
def test_loopback_names_are_served_on_any_port(browser, host):
    assert browser.client.get("/api/v1/session", headers={"Host": host}).status_code == 200


def test_the_bound_address_and_configured_names_are_served(make_app):
    app = make_app(BIND_HOST="127.0.0.2", ALLOWED_HOSTS="grid.example, .farm.example")
    client = app.test_client()
    for host in ("127.0.0.2:3000", "grid.example", "farm.example", "house7.farm.example:443"):
        assert client.get("/api/v1/session", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "grid.example.evil", "evilfarm.example", "127.0.0.3"):
        assert client.get("/api/v1/session", headers={"Host": host}).status_code == 400, host


def test_a_server_bound_to_every_interface_still_refuses_foreign_names():
    hosts = allowed_hosts({"BIND_HOST": "0.0.0.0", "ALLOWED_HOSTS": ["grid.example"]})
    assert {"localhost", "127.0.0.1", "::1", "grid.example"} <= set(hosts)
    assert "0.0.0.0" not in hosts and "evil.example" not in hosts


def test_session_cookie_is_secure_only_behind_tls(make_app, world):
    for behind_tls, secure in ((False, False), (True, True), ("yes", True), ("0", False)):
        client = make_app(BEHIND_TLS=behind_tls).test_client()
        Browser(client, world).login()
        cookie = client.get_cookie("microgrid_session")
        assert cookie is not None and cookie.secure is secure, behind_tls


def _login_attempts(client, world, forwarded_for: str | None, count: int) -> list[int]:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    token = client.get("/api/v1/session", headers=headers).get_json()["csrf_token"]
    return [
        client.post("/api/v1/session", headers={**headers, "X-CSRF-Token": token},
                    json={"address": world.address["rival"], "passphrase": "wrong guess"}
                    ).status_code
        for _ in range(count)
    ]


def test_client_limits_key_on_the_forwarded_client_behind_a_trusted_proxy(make_app, world):
    app = make_app(TRUSTED_PROXIES=1, LOGIN_LIMIT_PER_CLIENT=3, LOGIN_LIMIT_PER_ACCOUNT=1000)
    guesser, neighbour = app.test_client(), app.test_client()
    assert _login_attempts(guesser, world, "198.51.100.7", 4) == [401, 401, 401, 429]
    # Another household behind the same proxy is not locked out by the guesser.
    assert _login_attempts(neighbour, world, "198.51.100.8", 1) == [401]


def test_forwarded_headers_are_ignored_without_a_trusted_proxy(make_app, world):
    app = make_app(LOGIN_LIMIT_PER_CLIENT=3, LOGIN_LIMIT_PER_ACCOUNT=1000)
    client = app.test_client()
    # A client cannot dodge its limit by writing a new X-Forwarded-For each time.
    statuses = [_login_attempts(client, world, f"198.51.100.{i}", 1)[0] for i in range(4)]
    assert statuses == [401, 401, 401, 429]


def _create(client, remote: str, label: str) -> int:
    environ = {"REMOTE_ADDR": remote}
    token = client.get("/api/v1/session", environ_base=environ).get_json()["csrf_token"]
    return client.post("/api/v1/accounts", environ_base=environ,
                       headers={"X-CSRF-Token": token},
                       json={"passphrase": "a long secret phrase", "label": label}).status_code


def test_accounts_are_created_from_this_machine_only_by_default(make_app, world):
    app = make_app()
    client = app.test_client()
    browser = Browser(client, world)
    before = accounts(browser)
    assert _create(client, "192.0.2.10", "from the lan") == 403
    assert accounts(browser) == before
    # The login page says why.
    page = Browser(client, world)
    response = client.post("/accounts/new", environ_base={"REMOTE_ADDR": "192.0.2.10"},
                           data={"csrf_token": page.csrf(), "passphrase": "a long secret phrase",
                                 "confirm": "a long secret phrase"})
    assert response.status_code == 403
    assert "on the server's own machine only" in html.unescape(response.get_data(as_text=True))
    assert _create(client, "127.0.0.1", "at the machine") == 201
    assert len(accounts(browser)) == len(before) + 1


def test_accounts_from_the_network_when_allowed_and_limited_per_client(make_app, world):
    app = make_app(ACCOUNTS_FROM_NETWORK=True, ACCOUNT_CREATION_LIMIT=2)
    client = app.test_client()
    assert [_create(client, "192.0.2.10", f"lan {i}") for i in range(3)] == [201, 201, 429]
    assert _create(client, "192.0.2.11", "other house") == 201
    token = client.get("/api/v1/session").get_json()["csrf_token"]
    reply = client.post("/api/v1/accounts", environ_base={"REMOTE_ADDR": "192.0.2.10"},
                        headers={"X-CSRF-Token": token}, json={"passphrase": "x"})
    assert reply.status_code == 429
    assert "Too many new accounts from here; wait" in reply.get_json()["error"]


def test_a_live_server_refuses_a_foreign_host_for_pages_api_and_socketio(make_app, world):
    live = LiveServer(make_app(START_BACKGROUND=True)).start()
    try:
        for path in ("/", "/api/v1/accounts", "/socket.io/?EIO=4&transport=polling"):
            reply = requests.get(live.url + path, headers={"Host": "evil.example"}, timeout=5)
            assert reply.status_code == 400, path
            assert "does not answer to the name" in reply.text
        assert requests.get(live.url + "/api/v1/accounts", timeout=5).status_code == 200
        client = socketio.Client(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            client.connect(live.url, transports=["polling"], wait_timeout=5,
                           headers={"Host": "evil.example", "Origin": "http://evil.example"})
    finally:
        live.stop()
