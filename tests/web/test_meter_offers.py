"""No meter is attached to anyone without consent: offers on the wallet page, Accept / Decline.

The grid operator (the world's bank) offers meters whose keys the test holds (`SigningMeter`);
the people answer through the wallet page's forms and the JSON API. A meter's signed readings
count only once its owner accepted it.
"""

from __future__ import annotations

import re
import time

import pytest

from dapp.chain.contracts import load_artifact
from dapp.errors import ContractReverted
from dapp.services.messages import revert_sentence
from tests.support import SigningMeter
from tests.web.conftest import RATED_W, Browser, World


def offer(world: World, role: str, kind: str = "supply") -> SigningMeter:
    """The operator offers a new meter to `role`; the meter (and its key) for the test."""
    meter = SigningMeter(kind, RATED_W)
    world.mine(world.client.offer_meter(world.bank, meter.address, world.address[role], kind,
                                        RATED_W))
    return meter


def pending_tx(person: Browser) -> str:
    """The transaction hash the wallet page's last message names."""
    match = re.search(r"Transaction (0x[0-9a-f]{64}) is pending", person.text("/wallet/"))
    assert match, "no pending transaction message"
    return match.group(1)


def offers_shown(person: Browser) -> list[str]:
    """The meter addresses the wallet page offers for Accept / Decline."""
    return re.findall(r'<li class="offer" data-meter="(0x[0-9a-fA-F]{40})"',
                      person.text("/wallet/"))


def test_an_offer_appears_and_accept_makes_its_readings_mint(producer, world):
    meter = offer(world, "producer")
    page = producer.text("/wallet/")
    assert 'id="meter-offers"' in page and "Meters offered to you" in page
    assert meter.address in offers_shown(producer)
    assert ">Accept</button>" in page and ">Decline</button>" in page
    listed = producer.client.get("/api/v1/meters/offers").get_json()["offers"]
    assert {"address": meter.address, "kind": "supply", "status": "offered",
            "rated_power_w": RATED_W} in listed

    # Before the owner accepts, the meter's signed readings count for nobody.
    tokens = world.client.token_balance(world.address["producer"])
    with pytest.raises(ContractReverted) as refused:
        meter.report(world.client, world.bank, 100)
    assert refused.value.name == "MeterNotAccepted"
    assert world.client.token_balance(world.address["producer"]) == tokens

    answer = producer.post("/wallet/meters/accept", {"meter": meter.address})
    assert answer.status_code == 303
    world.mine(pending_tx(producer))
    assert world.client.meter(meter.address).status == "active"
    assert meter.address not in offers_shown(producer)

    assert meter.report(world.client, world.bank, 1_000).accepted  # the baseline
    world.advance(600)
    assert meter.report(world.client, world.bank, 1_500).accepted
    assert world.client.token_balance(world.address["producer"]) == tokens + 500


def test_decline_makes_it_declined_and_its_readings_never_count(consumer, world):
    meter = offer(world, "consumer")
    assert meter.address in offers_shown(consumer)
    answer = consumer.api("POST", f"/api/v1/meters/{meter.address}/decline")
    assert answer.status_code == 202, answer.get_json()
    assert meter.address in answer.get_json()["message"]
    world.mine(answer.get_json()["tx_hash"])

    assert world.client.meter(meter.address).status == "declined"
    assert meter.address not in offers_shown(consumer)
    tokens = world.client.token_balance(world.address["consumer"])
    with pytest.raises(ContractReverted) as refused:
        meter.report(world.client, world.bank, 100)
    assert refused.value.name == "MeterInactive"
    assert world.client.token_balance(world.address["consumer"]) == tokens
    again = consumer.api("POST", f"/api/v1/meters/{meter.address}/accept")
    assert again.status_code == 409
    assert again.get_json()["error"] == (f"Meter {meter.address} was declined; there is no offer "
                                         "to answer.")


def test_someone_else_cannot_accept_or_decline_it(app, consumer, world):
    meter = offer(world, "consumer")
    rival = Browser(app.test_client(), world)
    assert rival.login("rival").status_code == 303
    assert meter.address not in offers_shown(rival)  # not shown to anyone else

    page = rival.post("/wallet/meters/accept", {"meter": meter.address})
    assert page.status_code == 409
    assert (f"Meter {meter.address} was not offered to you; only the account it was offered to "
            "can accept or decline it.") in page.get_data(as_text=True)
    api = rival.api("POST", f"/api/v1/meters/{meter.address}/decline")
    assert api.status_code == 409 and "was not offered to you" in api.get_json()["error"]
    assert world.client.meter(meter.address).status == "offered"
    assert world.client.meter(meter.address).owner == world.address["consumer"]
    assert meter.address in offers_shown(consumer)  # still waiting for its owner


def test_a_second_load_meter_is_refused_with_a_clear_sentence(consumer, world):
    first = world.load_meter(world.address["consumer"])  # offered and accepted
    second = offer(world, "consumer", "load")
    answer = consumer.api("POST", f"/api/v1/meters/{second.address}/accept")
    assert answer.status_code == 409
    assert answer.get_json()["error"] == (
        f"You already have an active load meter ({first.address}); only one load meter settles "
        "your trades. Ask the grid operator to deactivate it before you accept another.")
    assert world.client.meter(second.address).status == "offered"
    assert world.client.load_meter_of(world.address["consumer"]) == first.address

    # Sent anyway (no pre-check), the registry refuses it in the same words.
    with pytest.raises(ContractReverted) as info:
        world.client.accept_meter(world.account("consumer"), second.address)
    assert info.value.name == "MeterLoadMeterExists"
    assert "You already have an active load meter" in revert_sentence(info.value)


@pytest.mark.parametrize(
    ("meter", "status", "sentence"),
    [
        ("", 400, "Enter the address of the meter."),
        ("0x1234", 400, "The address of the meter is not an Ethereum address"),
        ("0x" + "ab" * 20, 409, "was ever offered; check the address"),
    ],
)
def test_bad_meter_input_is_refused_and_sends_nothing(producer, world, meter, status, sentence):
    ether = world.client.ether_balance(world.address["producer"])
    page = producer.post("/wallet/meters/accept", {"meter": meter})
    assert page.status_code == status
    text = page.get_data(as_text=True)
    assert sentence in text and "is pending" not in text
    time.sleep(0.5)  # the chain mines 0.1 s after a transaction arrives: none did
    assert world.client.ether_balance(world.address["producer"]) == ether


def test_an_accepted_meter_cannot_be_answered_again(producer, world):
    meter = offer(world, "producer")
    world.mine(producer.api("POST", f"/api/v1/meters/{meter.address}/accept").get_json()[
        "tx_hash"])
    for action in ("accept", "decline"):
        again = producer.api("POST", f"/api/v1/meters/{meter.address}/{action}")
        assert again.status_code == 409
        assert again.get_json()["error"] == (f"Meter {meter.address} has already been accepted; "
                                             "there is no offer to answer.")
    assert world.client.meter(meter.address).status == "active"


def test_meter_actions_need_a_session(browser, world):
    meter = offer(world, "producer")
    for action in ("accept", "decline"):
        response = browser.api("POST", f"/api/v1/meters/{meter.address}/{action}")
        assert response.status_code == 401
    assert browser.client.get("/api/v1/meters/offers").status_code == 401
    assert world.client.meter(meter.address).status == "offered"


def test_every_registry_error_has_its_own_sentence():
    errors = [e for e in load_artifact("MeterRegistry").abi if e["type"] == "error"]
    assert len(errors) >= 10
    for error in errors:
        args = tuple(1 if i["type"].startswith("uint") else "0x" + "11" * 20
                     for i in error["inputs"])
        text = revert_sentence(ContractReverted(error["name"], args))
        assert text != "The contract refused the transaction.", error["name"]
        assert "0x" not in text and error["name"] not in text
