"""Browser test of the trading agent panel: turn it on, see its decisions arrive live.

Playwright drives the system Chromium against the live app (skipped without them, as in
test_browser.py). The chain makes a block every second, so the agent acts by itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.web.conftest import PASSPHRASE, LiveServer, World, app_config
from tests.web.test_browser import ARTIFACTS, chromium  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, LiveServer]]:
    """A world whose chain makes a block every second, served with its background tasks."""
    from dapp.web import create_app

    world = World(tmp_path_factory.mktemp("agent-browser"))
    world.chain.empty_blocks = True
    world.chain.start_mining(1.0)
    app = create_app(app_config(world, START_BACKGROUND=True, LIVE_INTERVAL=0.25,
                                LISTENER_INTERVAL=0.25))
    server = LiveServer(app).start()
    yield world, server
    server.stop()
    world.close()


def test_the_panel_turns_the_agent_on_and_shows_its_decisions_live(chromium: Any, site):  # noqa: F811
    world, server = site
    context = chromium.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url + "/")
    page.check(f"input[name=address][value='{world.address['producer']}']")
    page.fill("#login-form input[name=passphrase]", PASSPHRASE)
    page.click("#login-form button[type=submit]")
    page.wait_for_url("**/wallet/")
    panel = page.locator("#agent-panel")
    assert "Off" in panel.locator("#agent-state-text").inner_text()
    page.fill('input[name="reserve_percent"]', "20")
    page.fill('input[name="floor_eth_per_kwh"]', "0.001")
    page.fill('input[name="ceiling_eth_per_kwh"]', "0.002")
    page.fill('input[name="daily_limit_eth"]', "0.5")
    # The socket of the page after the click connects slowly (2.5 s: blocks come every second),
    # so the agent's first action is logged while the page has no socket yet.
    delayed: list[str] = []

    def slow_handshake(route: Any) -> None:
        if not delayed:
            delayed.append(route.request.url)
            time.sleep(2.5)
        route.continue_()

    page.route("**/socket.io/**", slow_handshake)
    page.click("#agent-on")
    page.wait_for_url("**/wallet/#agent-panel")
    assert "On" in panel.locator("#agent-state-text").inner_text()
    # Without reloading: the agent's offer arrives in the log, although it was made while the
    # page was connecting (the socket gets the log it missed on connecting).
    page.locator("#agent-log li[data-kind=action]").first.wait_for()
    assert "offered 3.000 kWh" in page.locator("#agent-log").inner_text()
    shown = page.eval_on_selector_all("#agent-log li", "items => items.map(i => i.dataset.seq)")
    assert len(shown) == len(set(shown)) and shown == sorted(shown, key=int, reverse=True)
    assert "battery 50 %" in page.locator("#agent-household").inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    panel.screenshot(path=str(ARTIFACTS / "agent-panel.png"))
    page.click("#agent-off")
    page.wait_for_url("**/wallet/#agent-panel")
    assert "Off" in panel.locator("#agent-state-text").inner_text()
    assert errors == []
    context.close()
