"""Login page: unlock, create, import, logout; CSRF, rate limits, session expiry, cookie safety."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

import pytest
from eth_account import Account

from dapp.web import create_app
from tests.web.conftest import PASSPHRASE, Browser, app_config


def test_login_page_lists_accounts_with_labels(browser, world):
    html = browser.text("/")
    for role in ("producer", "consumer"):
        assert role in html
        assert world.address[role] in html
    assert "Create an account" in html and "Import a keystore file" in html


def test_login_opens_the_wallet_and_logout_forgets_the_key(app, browser, world):
    response = browser.login("producer")
    assert response.status_code == 303 and response.headers["Location"].endswith("/wallet/")
    keys = app.extensions["microgrid"].keys
    assert len(keys) == 1
    wallet = browser.text("/wallet/")
    assert "Wallet" in wallet and "5" in wallet
    assert browser.client.get("/").status_code == 302  # logged in: the start page is the wallet

    response = browser.post("/logout")
    assert response.status_code == 303 and response.headers["Location"].endswith("/")
    assert len(keys) == 0
    assert browser.client.get("/wallet/").status_code == 303
    assert "You are logged out" in browser.text("/")


def test_wrong_passphrase_is_refused_and_nothing_is_unlocked(app, browser):
    response = browser.login("producer", passphrase="not it at all")
    assert response.status_code == 401
    assert "Wrong passphrase" in response.get_data(as_text=True)
    assert len(app.extensions["microgrid"].keys) == 0
    assert browser.client.get("/wallet/").status_code == 303


@pytest.mark.parametrize(
    ("address", "passphrase", "status", "message"),
    [
        ("", PASSPHRASE, 400, "Enter the address of the account"),
        ("0x1234", PASSPHRASE, 400, "not an Ethereum address"),
        ("0x" + "12" * 20, PASSPHRASE, 401, "There is no account"),
        ("producer", "", 400, "Enter the passphrase"),
    ],
)
def test_bad_login_input_gets_a_sentence(browser, world, address, passphrase, status, message):
    address = world.address.get(address, address)
    response = browser.post("/login", {"address": address, "passphrase": passphrase})
    assert response.status_code == status
    assert message in response.get_data(as_text=True)


def test_create_account_then_log_in_with_it(browser):
    response = browser.post("/accounts/new", {"label": "house 7", "passphrase": "a long secret",
                                              "confirm": "a long secret"})
    assert response.status_code == 303
    html = browser.text(response.headers["Location"])
    assert "house 7" in html and "created" in html
    address = json.loads(browser.client.get("/api/v1/accounts").data)["accounts"]
    new = next(a["address"] for a in address if a["label"] == "house 7")
    assert browser.post("/login", {"address": new, "passphrase": "a long secret"}).status_code \
        == 303


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"passphrase": "", "confirm": ""}, "Enter a passphrase"),
        ({"passphrase": "short", "confirm": "short"}, "at least 8 characters"),
        ({"passphrase": "a long secret", "confirm": "another one"}, "do not match"),
        ({"passphrase": "a long secret", "confirm": "a long secret", "label": "x" * 65},
         "at most 64"),
        ({"passphrase": "a long secret", "confirm": "a long secret", "label": "a\x07b"},
         "printable"),
    ],
)
def test_bad_new_account_input_changes_nothing(browser, world, form, message):
    before = len(world.keystore.list())
    response = browser.post("/accounts/new", form)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert len(world.keystore.list()) == before


def _keyfile(passphrase: str = "imported secret", n: int = 16) -> tuple[bytes, str]:
    account = Account.create()
    keyfile = Account.encrypt(account.key, passphrase, kdf="scrypt", iterations=n)
    return json.dumps(keyfile).encode(), account.address


def test_import_a_geth_keystore_file(browser, world):
    content, address = _keyfile()
    response = browser.post(
        "/accounts/import",
        {"passphrase": "imported secret", "label": "from geth",
         "keyfile": (io.BytesIO(content), "key.json")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 303
    assert world.keystore.has(address)
    assert "from geth" in browser.text("/")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not json", "not a keystore file"),
        ("wrong passphrase", "Wrong passphrase"),
        ("no file", "Choose a keystore file"),
        ("too costly", "more work than geth"),
        ("too large", "too large"),
        ("duplicate", "already in the keystore"),
    ],
)
def test_bad_imports_are_refused(browser, world, case, message):
    content, address = _keyfile()
    passphrase = "imported secret"
    if case == "not json":
        content = b"hello"
    elif case == "wrong passphrase":
        passphrase = "not the one"
    elif case == "too costly":
        data = json.loads(content)
        data["crypto"]["kdfparams"]["n"] = 2**20
        content = json.dumps(data).encode()
    elif case == "too large":
        content = b" " * (70 * 1024)
    elif case == "duplicate":
        content = world.keystore.path_for(world.address["rival"]).read_bytes()
        passphrase = PASSPHRASE
    before = len(world.keystore.list())
    form = {"passphrase": passphrase}
    if case != "no file":
        form["keyfile"] = (io.BytesIO(content), "key.json")
    response = browser.post("/accounts/import", form, content_type="multipart/form-data")
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert len(world.keystore.list()) == before


POSTS = ["/login", "/logout", "/accounts/new", "/accounts/import", "/wallet/send",
         "/wallet/withdraw", "/wallet/mining", "/market/sell", "/market/bid", "/market/close",
         "/market/finalize"]


@pytest.mark.parametrize("url", POSTS)
@pytest.mark.parametrize("token", [None, "forged-token"])
def test_forms_without_the_csrf_token_are_refused(producer, world, url, token):
    data = {"address": world.address["producer"], "passphrase": PASSPHRASE, "to":
            world.address["consumer"], "amount": "1", "confirm": "yes", "action": "stop"}
    if token:
        data["csrf_token"] = token
    response = producer.client.post(url, data=data)
    assert response.status_code == 400
    assert "security (CSRF) token" in response.get_data(as_text=True)
    assert world.client.mining_status().mining  # nothing changed: mining was not stopped
    assert producer.client.get("/wallet/").status_code == 200  # and still logged in


def test_login_is_rate_limited_per_account(make_app, world):
    app = make_app(LOGIN_LIMIT_PER_ACCOUNT=3, LOGIN_LIMIT_PER_CLIENT=100)
    person = Browser(app.test_client(), world)
    for _ in range(3):
        assert person.login("producer", "wrong guess").status_code == 401
    refused = person.login("producer")  # even the right passphrase waits now
    assert refused.status_code == 429
    assert "Too many attempts" in refused.get_data(as_text=True)
    other = Browser(app.test_client(), world)
    assert other.login("consumer").status_code == 303  # another account is not blocked


def test_login_is_rate_limited_per_client(make_app, world):
    app = make_app(LOGIN_LIMIT_PER_ACCOUNT=100, LOGIN_LIMIT_PER_CLIENT=2)
    person = Browser(app.test_client(), world)
    assert person.login("producer", "guess one").status_code == 401
    assert person.login("consumer", "guess two").status_code == 401
    assert person.login("rival").status_code == 429
    elsewhere = Browser(app.test_client(), world)
    response = elsewhere.post("/login", {"address": world.address["rival"],
                                         "passphrase": PASSPHRASE},
                              environ_base={"REMOTE_ADDR": "127.0.0.2"})
    assert response.status_code == 303


def test_api_login_rate_limit_says_when_to_retry(make_app, world):
    app = make_app(LOGIN_LIMIT_PER_ACCOUNT=1)
    person = Browser(app.test_client(), world)
    body = {"address": world.address["producer"], "passphrase": "nope"}
    assert person.api("POST", "/api/v1/session", body).status_code == 401
    refused = person.api("POST", "/api/v1/session", body)
    assert refused.status_code == 429
    assert 0 < refused.get_json()["retry_after"] <= 60


def test_idle_session_expires_and_the_key_is_forgotten(make_app, world):
    app = make_app(SESSION_IDLE_TIMEOUT=0.3)
    person = Browser(app.test_client(), world)
    assert person.login("producer").status_code == 303
    assert person.client.get("/wallet/").status_code == 200
    time.sleep(0.5)
    response = person.client.get("/wallet/")
    assert response.status_code == 303
    assert "Your session expired" in person.text("/")
    assert len(app.extensions["microgrid"].keys) == 0
    assert person.client.get("/api/v1/wallet").status_code == 401


def test_session_cookie_is_httponly_samesite_and_holds_no_key(world, browser, caplog):
    caplog.set_level(logging.DEBUG)
    response = browser.login("producer")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    key_hex = world.account("producer").key.hex()
    pages = [browser.text(url) for url in ("/wallet/", "/market/", "/api/v1/wallet")]
    for text in [cookie, caplog.text, *pages]:
        assert key_hex not in text and key_hex[2:] not in text
        assert PASSPHRASE not in text


def test_secret_key_is_generated_once_into_the_data_dir(world, tmp_path: Path):
    config = app_config(world, DATA_DIR=str(tmp_path / "fresh"))
    del config["SECRET_KEY"]
    first = create_app(config)
    second = create_app(config)
    key_file = tmp_path / "fresh" / "secret_key"
    assert first.secret_key == second.secret_key == key_file.read_text().strip()
    assert len(first.secret_key) >= 64
    assert os.stat(key_file).st_mode & 0o777 == 0o600


def test_secret_key_from_the_environment_wins(world, tmp_path, monkeypatch):
    monkeypatch.setenv("MICROGRID_SECRET_KEY", "from-the-environment")
    config = app_config(world, DATA_DIR=str(tmp_path / "env"))
    del config["SECRET_KEY"]
    assert create_app(config).secret_key == "from-the-environment"
    assert not (tmp_path / "env" / "secret_key").exists()


def test_unknown_pages_and_methods_answer_in_words(browser):
    missing = browser.client.get("/nowhere")
    assert missing.status_code == 404 and "no such page" in missing.get_data(as_text=True)
    wrong = browser.client.get("/login")
    assert wrong.status_code == 405
    assert browser.client.get("/api/v1/nowhere").get_json() == {"error": "There is no such page."}
