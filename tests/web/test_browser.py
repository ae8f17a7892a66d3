"""Browser tests: Playwright drives the system Chromium against the live app.

A producer and a consumer, each in their own browser context, log in; the producer sells; the
consumer bids; both pages show the bid without reloading; the deadline passes on the chain's own
clock and the server finalizes; both pages show the trade; the consumer closes the connection.
Screenshots of every step go to test-artifacts/browser/ (gitignored). No page may log a console
error. With CI=true a missing Chromium or Playwright fails the run; elsewhere the tests skip.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web.conftest import PASSPHRASE, LiveServer, World, app_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage"]


def _unavailable(reason: str) -> None:
    """Fail on CI (where .ci/run installs Chromium), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests need it on CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless system Chromium driven by Playwright."""
    if not CHROMIUM.is_file() and shutil.which("chromium") is None:
        _unavailable("Chromium is not installed (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install playwright)")
    executable = str(CHROMIUM) if CHROMIUM.is_file() else shutil.which("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, LiveServer]]:
    """A world whose chain makes a block every second (so time passes by itself), served."""
    from dapp.web import create_app

    world = World(tmp_path_factory.mktemp("browser"))
    world.chain.empty_blocks = True
    world.chain.start_mining(1.0)
    app = create_app(app_config(world, START_BACKGROUND=True,
                                FINALIZER_ADDRESS=world.address["finalizer"],
                                FINALIZER_PASSPHRASE_FILE=str(world.passphrase_file),
                                LIVE_INTERVAL=0.25, LISTENER_INTERVAL=0.25))
    server = LiveServer(app).start()
    yield world, server
    server.stop()
    world.close()


class Person:
    """One browser context (own cookies), its page, and the console errors it logged."""

    def __init__(self, chromium: Any, name: str, viewport: dict[str, int] | None = None) -> None:
        self.name = name
        self.context = chromium.new_context(viewport=viewport or {"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.shots = 0

    def shot(self, step: str) -> None:
        """Keep a screenshot as a test artifact."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.shots += 1
        self.page.screenshot(path=str(ARTIFACTS / f"{self.name}-{self.shots:02d}-{step}.png"),
                             full_page=True)

    def login(self, server: LiveServer, address: str) -> None:
        """Log in through the login page."""
        self.page.goto(server.url + "/")
        self.page.check(f"input[name=address][value='{address}']")
        self.page.fill("#login-form input[name=passphrase]", PASSPHRASE)
        self.page.click("#login-form button[type=submit]")
        self.page.wait_for_url("**/wallet/")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def people(chromium: Any) -> Iterator[dict[str, Person]]:
    """Producer and consumer in two browser contexts."""
    made = {name: Person(chromium, name) for name in ("producer", "consumer")}
    yield made
    for person in made.values():
        person.close()


def test_sell_bid_trade_close_live_in_two_browsers(site, people):
    from playwright.sync_api import expect

    world, server = site
    producer, consumer = people["producer"], people["consumer"]
    producer.login(server, world.address["producer"])
    expect(producer.page.locator("#tokens")).to_have_text("5.000")
    producer.shot("wallet")
    consumer.login(server, world.address["consumer"])
    consumer.page.click("#to-market")
    consumer.page.wait_for_url("**/market/")
    expect(consumer.page.locator("#buy")).to_contain_text("No open listings")
    consumer.page.evaluate("window.__notReloaded = true")

    # The producer sells; the consumer's open page shows the listing without reloading.
    producer.page.click("#to-market")
    producer.page.fill("input[name=energy]", "1.5")
    producer.page.fill("input[name=price]", "0.001")
    producer.page.fill("input[name=duration]", "15")
    producer.page.select_option("select[name=duration_unit]", "seconds")
    producer.page.click("#sell-form button[type=submit]")
    producer.page.wait_for_url("**/market/")
    expect(producer.page.locator(".flash-ok")).to_contain_text("Listing 1.5 kWh")
    listing = consumer.page.locator(".card.listing").first
    expect(listing).to_contain_text("1.500 kWh", timeout=20_000)
    expect(listing).to_contain_text("no bids yet")
    lot = re.search(r"Listing #(\d+)", listing.inner_text()).group(1)
    assert consumer.page.evaluate("window.__notReloaded") is True
    producer.shot("listed")
    producer.page.evaluate("window.__notReloaded = true")

    # The consumer bids; both pages show the bid, the producer's without reloading.
    card = consumer.page.locator(f"#listing-{lot}")
    card.locator("input[name=price]").fill("0.002")
    card.locator("button[type=submit]").click()
    consumer.page.wait_for_url("**/market/")
    expect(consumer.page.locator(".flash-ok")).to_contain_text(f"Bidding 0.002 ETH per kWh on "
                                                               f"listing #{lot}")
    for person in (producer, consumer):
        shown = person.page.locator(f"#listing-{lot}")
        expect(shown.locator(".highest-bid")).to_have_text("0.002 ETH/kWh", timeout=20_000)
        expect(shown.locator(".bidder")).to_contain_text("consumer")
        person.shot("bid")
    assert producer.page.evaluate("window.__notReloaded") is True
    expect(producer.page.locator("#toasts")).to_contain_text(f"New bid on your listing #{lot}")

    # The deadline passes on the chain's clock; the server finalizes; both see the trade.
    for person in (producer, consumer):
        trade = person.page.locator(f"#trade-{lot}")
        expect(trade).to_be_visible(timeout=40_000)
        expect(trade).to_contain_text("0.002 ETH/kWh")
        expect(trade).to_contain_text("0.000 of 1.500 kWh")
        expect(person.page.locator(f"#listing-{lot}")).to_have_count(0)
        person.shot("trade")
    assert producer.page.evaluate("window.__notReloaded") is True
    expect(consumer.page.locator("#close")).to_contain_text(f"Trade #{lot}")

    # The consumer closes the connection; the trade disappears from both pages.
    consumer.page.locator(f"#trade-{lot} button[type=submit]").click()
    consumer.page.wait_for_url("**/market/")
    expect(consumer.page.locator(".flash-ok")).to_contain_text(
        f"Closing the connection of trade #{lot}")
    for person in (producer, consumer):
        expect(person.page.locator(f"#trade-{lot}")).to_have_count(0, timeout=20_000)
        person.shot("closed")
    expect(consumer.page.locator("#toasts")).to_contain_text("credited to you")

    # The refund waits in the wallet as credit; withdrawing it shows the transaction.
    consumer.page.click("#to-wallet")
    expect(consumer.page.locator("#credit")).not_to_have_text("0")
    consumer.page.click("#withdraw")
    expect(consumer.page.locator(".flash-ok")).to_contain_text("Withdrawing")
    expect(consumer.page.locator("#credit")).to_have_text("0", timeout=20_000)
    consumer.shot("withdrawn")
    for person in (producer, consumer):
        assert person.errors == [], f"{person.name}'s console: {person.errors}"


def test_pages_fit_a_phone_and_log_no_errors(site, chromium):
    world, server = site
    phone = Person(chromium, "phone", viewport={"width": 390, "height": 844})
    try:
        phone.page.goto(server.url + "/")
        phone.shot("login")
        phone.login(server, world.address["producer"])
        for path in ("/wallet/", "/market/", "/api/v1/docs"):
            phone.page.goto(server.url + path)
            phone.page.wait_for_load_state("networkidle")
            overflow = phone.page.evaluate(
                "document.scrollingElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{path} is {overflow}px wider than the phone"
            phone.shot(path.strip("/").replace("/", "-") or "root")
        phone.page.click("#logout")
        phone.page.wait_for_url(server.url + "/")
        assert "You are logged out" in phone.page.inner_text("main")
        assert phone.errors == []
    finally:
        phone.close()
