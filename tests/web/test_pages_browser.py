"""Browser tests of what a person reads on the pages: figures, flashes, cards, accounts, the dock.

One served world per module, without the auto-finalizer (an ended auction waits for a person),
with a stand-in meter bridge whose producer supply meter reports a fixed power, and with the
chain's clock moved to 20:00 UTC of the next day before the producer's meter reports 1,234 Wh an
hour later, so "today" and the chart's bins are on the chain's clock, not the wall clock's. The
keystore also holds the demo's device and service accounts (operator, a meter) next to people.
Chromium as in test_browser.py; screenshots go to test-artifacts/browser/pages-*.png.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from tests.web.conftest import PASSPHRASE, LiveServer, World, app_config
from tests.web.test_browser import Person, chromium  # noqa: F401 - the shared browser fixture

pytestmark = pytest.mark.slow

DAY = 86_400
TODAY_WH = 1_234
POWER_W = 523.4


class SteadyMeters:
    """Stands in for the meter bridge: the producer's supply meter at a steady power."""

    def __init__(self, owner: str, meter: str) -> None:
        self.meters = [SimpleNamespace(address=meter, owner=owner, kind="supply", online=True,
                                       relay_closed=True, energy_wh=7_234, power_w=POWER_W,
                                       last_error="")]

    def on_event(self, event: Any) -> None:
        """Chain events change nothing here."""

    def state(self) -> list[Any]:
        """The meters as a bridge reports them."""
        return self.meters


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, LiveServer]]:
    """The served world described in the module docstring."""
    from dapp.web import create_app

    world = World(tmp_path_factory.mktemp("pages"))
    for label in ("operator", "producer meter"):
        world.keystore.create(PASSPHRASE, label=label)
    # An odd payment (plus its fee) leaves the producer a balance with many decimals.
    world.mine(world.client.send_ether(world.account("producer"), world.address["rival"],
                                       123_456_789_012_345_678))
    now = world.now()
    world.advance((now // DAY + 1) * DAY + 20 * 3600 - now)
    world.mint(world.address["producer"], TODAY_WH)
    world.reading_at = world.now()  # the reading's block is the latest one
    world.chain.empty_blocks = True
    world.chain.start_mining(1.0)
    producer = world.address["producer"]
    bridge = SteadyMeters(producer, world.supply_meters[producer].address)
    app = create_app(app_config(world, START_BACKGROUND=True,
                                LIVE_INTERVAL=0.25, LISTENER_INTERVAL=0.25))
    app.extensions["microgrid"].attach_bridge(bridge)
    server = LiveServer(app).start()
    yield world, server
    server.stop()
    world.close()


@pytest.fixture
def person(chromium: Any) -> Iterator[Any]:  # noqa: F811 - the imported fixture
    """Makes people (browser contexts) and closes them after the test."""
    made: list[Person] = []

    def make(name: str, width: int = 1280, height: int = 900) -> Person:
        someone = Person(chromium, f"pages-{name}", viewport={"width": width, "height": height})
        made.append(someone)
        return someone

    yield make
    for someone in made:
        assert someone.errors == [], f"{someone.name}'s console: {someone.errors}"
        someone.close()


def short_ether(exact: str) -> str:
    """The rule the pages follow, written independently: 4 decimals (4 digits below 1 ETH)."""
    value = Decimal(exact)
    if value == 0:
        return "0"
    places = 4 if value >= 1 else 4 - value.adjusted() - 1
    text = format(value.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def test_figures_have_units_precision_and_the_exact_value_on_hover(site, person):
    from playwright.sync_api import expect

    world, server = site
    producer = person("producer")
    producer.login(server, world.address["producer"])
    page = producer.page
    summary = page.evaluate("fetch('/api/v1/wallet').then(r => r.json())")

    expect(page.locator("#tokens")).to_have_text(f"{int(summary['tokens_wh']) / 1000:.3f}")
    assert page.get_attribute("#tokens", "title").startswith(f"{summary['tokens_kwh']} kWh")
    expect(page.locator("#token-rule")).to_have_text("1 token = 1 kWh of measured generation")

    ether = page.locator("#ether")
    expect(ether).to_have_text(short_ether(summary["ether"]))
    assert len(summary["ether"]) > 12 and len(ether.inner_text()) <= 7
    assert ether.get_attribute("title") == f"{summary['ether']} ETH = {summary['ether_wei']} wei"
    assert page.evaluate("document.getElementById('ether').getClientRects().length") == 1

    # Power now in whole watts, today's energy on the chain's clock (the meter's reading at 21:00).
    expect(page.locator("#generation")).to_have_text(str(round(POWER_W)))
    expect(page.locator("#power-unit")).to_have_text("W now")
    assert page.get_attribute("#generation", "title") == f"{POWER_W} W"
    expect(page.locator("#energy-today")).to_have_text(f"{TODAY_WH / 1000:.3f}")
    chart = page.evaluate("""() => {
        const c = Chart.getChart(document.getElementById('history-chart'));
        return {labels: c.data.labels, generation: c.data.datasets[0].data};
    }""")
    # Bars are labelled with their start on the chain's clock (UTC): the reading's bar holds it.
    minutes = [int(h) * 60 + int(m) for h, m in (label.split(":") for label in chart["labels"])]
    at = world.reading_at % DAY // 60
    bar = max(i for i, start in enumerate(minutes) if start <= at)
    assert chart["generation"][bar] == TODAY_WH / 1000
    assert sum(chart["generation"]) == TODAY_WH / 1000
    assert 6 <= len(chart["labels"]) <= 24
    expect(page.locator("#chart-hint")).to_contain_text("of chain time (UTC)")
    producer.shot("wallet")


def test_flashes_follow_their_transaction_to_mined_or_failed(site, person):
    from playwright.sync_api import expect

    world, server = site
    producer, consumer = person("producer"), person("consumer")

    # Mined: a transfer's flash says so once the transaction leaves the pending list.
    producer.login(server, world.address["producer"])
    page = producer.page
    page.fill("#send-form input[name=to]", world.address["rival"])
    page.fill("#send-form input[name=amount]", "0.1")
    page.click("#send-form button[type=submit]")
    page.click("#confirm-send")
    page.wait_for_url("**/wallet/")
    flash = page.locator(".flash[data-tx]")
    expect(flash).to_contain_text("Sending 0.1 ETH")
    expect(flash).to_contain_text("was mined.", timeout=20_000)
    assert "is pending" not in flash.inner_text()
    expect(page.locator("#pending-empty")).to_be_visible()

    # Failed: while mining is stopped, a rival's higher bid and the consumer's bid wait in the
    # same block; the rival's comes first, so the consumer's reverts and its flash says why.
    lot_tx = world.client.sell(world.account("producer"), 1_000, 10**15, 3600)
    world.mine(lot_tx)
    consumer.login(server, world.address["consumer"])
    consumer.page.click("#mining-stop")
    consumer.page.wait_for_url("**/wallet/")
    expect(consumer.page.locator(".flash-ok")).to_have_text(
        "Mining stopped: new transactions stay pending until mining starts.")
    try:
        consumer.page.click("#to-market")
        card = consumer.page.locator(".card.listing").last
        expect(card).to_contain_text("no bids yet")
        lot = int(re.search(r"Listing #(\d+)", card.inner_text()).group(1))
        world.client.bid(world.account("rival"), lot, 5 * 10**15)
        card.locator("button[type=submit]").click()
        consumer.page.wait_for_url("**/market/")
        flash = consumer.page.locator(".flash[data-tx]")
        expect(flash).to_contain_text(f"on listing #{lot}")
        expect(flash).to_contain_text("is pending.")
    finally:
        world.chain.start_mining(1.0)
    expect(flash).to_contain_text("failed: ", timeout=20_000)
    expect(flash).to_have_class(re.compile(r"\bflash-error\b"))
    assert not re.search(r"failed: \s*$", flash.inner_text())
    consumer.shot("failed-bid")


def test_an_ended_auction_changes_its_card_in_place(site, person):
    from playwright.sync_api import expect

    world, server = site
    consumer = person("consumer")
    world.mine(world.client.sell(world.account("producer"), 500, 10**15, 8))
    consumer.login(server, world.address["consumer"])
    consumer.page.click("#to-market")
    card = consumer.page.locator(".card.listing").last
    expect(card.locator(".bid-form")).to_be_visible()
    expect(card.get_by_role("button", name="Finalize auction")).to_have_count(0)
    # From now on the board cannot reload (its fetch answers 204): what changes, changes in place.
    consumer.page.route("**/market/board", lambda route: route.fulfill(status=204, body=""))
    expect(card.locator(".countdown")).to_have_text("ended", timeout=20_000)
    expect(card.locator(".bid-form")).to_be_hidden()
    expect(card.get_by_role("button", name="Finalize auction")).to_be_visible()
    consumer.shot("ended")


def test_login_lists_people_first_and_remembers_the_last_account(site, person):
    from playwright.sync_api import expect

    world, server = site
    visitor = person("login", width=390, height=844)
    page = visitor.page
    page.goto(server.url + "/")
    people = page.locator("#people-accounts > .account-choice .account-name").all_inner_texts()
    assert people == ["producer", "consumer", "rival"]
    others = page.locator("#other-accounts .account-name").all_text_contents()
    assert sorted(others) == ["finalizer", "operator", "producer meter"]
    expect(page.locator("#other-accounts .account-choice").first).to_be_hidden()
    assert page.locator("input[name=address]:checked").get_attribute("value") == \
        world.address["producer"]
    visitor.shot("login")

    visitor.login(server, world.address["consumer"])
    page.click("#logout")
    page.wait_for_url(server.url + "/")
    assert page.locator("input[name=address]:checked").get_attribute("value") == \
        world.address["consumer"]
    stored = page.evaluate("Object.assign({}, window.localStorage)")
    assert stored == {"microgrid.lastAccount": world.address["consumer"]}


@pytest.mark.parametrize("width", [320, 390])
def test_every_dock_action_is_on_screen_on_a_phone(site, person, width):
    world, server = site
    phone = person(f"phone-{width}", width=width, height=740)
    phone.login(server, world.address["producer"])
    for path in ("/wallet/", "/market/"):
        phone.page.goto(server.url + path)
        phone.page.wait_for_load_state("networkidle")
        actions = phone.page.locator(".dock a, .dock button")
        assert actions.count() >= 2
        for i in range(actions.count()):
            action = actions.nth(i)
            box = action.bounding_box()
            name = action.inner_text()
            assert box is not None and action.is_visible(), f"{name} is not shown on {path}"
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, \
                f"{name} on {path} reaches {box['x'] + box['width']:.0f}px of {width}px"
            assert box["y"] + box["height"] <= 740, f"{name} on {path} is below the screen"
        wide = phone.page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
        assert wide <= 0, f"{path} scrolls {wide}px sideways at {width}px"
        phone.shot(path.strip("/"))
    phone.page.click("#logout")
    phone.page.wait_for_url(server.url + "/")
    assert "You are logged out" in phone.page.inner_text("main")


def test_figure_rule_reads_ether_as_written():
    """The test's own reading of the rule, on values whose short text is known by hand."""
    assert [short_ether(v) for v in ("99.99995", "0.000021", "1.23456", "0", "0.002")] == \
        ["100", "0.000021", "1.2346", "0", "0.002"]
