"""EnergyToken: 3 decimals, minted only by the registry, escrowed and burned only by the market."""

import pytest

from tests.contracts.conftest import PRICE, Chain, reverts
from tests.contracts.helpers import (
    LOAD,
    LOAD_W,
    ZERO_ADDRESS,
    block_time,
    buyer_closes,
    ev,
    install_meter,
    list_lot,
    market_event,
    measure,
    meter_of,
    mint,
    open_trade,
    recorded,
    run_ahead_of_wall_clock,
    supply,
    tokens,
    transfer,
    unchanged,
)

STOCK = 5_000  # Wh the seller's PV measured before each test


@pytest.fixture(autouse=True)
def _clock(chain: Chain) -> None:
    """Exact block times for every test (see tests/contracts/helpers.py)."""
    run_ahead_of_wall_clock(chain)


@pytest.fixture
def stocked(chain: Chain, operator: str, seller: str, supply_meter: str) -> None:
    """The seller holds STOCK Wh of tokens, minted by a supply reading."""
    mint(chain, operator, supply_meter, seller, STOCK)


def test_metadata(chain: Chain):
    token = chain.token.functions
    assert token.name().call() == "Microgrid Energy"
    assert token.symbol().call() == "MGE"
    assert token.decimals().call() == 3  # 1 unit = 1 Wh, 1 token = 1 kWh
    assert token.totalSupply().call() == 0
    assert token.registry().call() == chain.registry.address
    assert token.market().call() == chain.market.address


def test_supply_reading_mints_through_the_registry(
    chain: Chain, operator: str, seller: str, supply_meter: str
):
    mint(chain, operator, supply_meter, seller, 1)
    before = meter_of(chain, supply_meter)
    receipt = measure(chain, supply_meter, 1234)
    assert chain.events(receipt) == [
        recorded(supply_meter, before.energy_wh + 1234, before.sequence + 1, 1234),
        transfer(ZERO_ADDRESS, seller, 1234),
    ]
    assert tokens(chain, seller) == 1235
    assert supply(chain) == 1235


@pytest.mark.parametrize("caller", ["operator", "seller", "stranger", "supply_meter"])
def test_only_the_registry_mints(chain: Chain, request: pytest.FixtureRequest, caller: str):
    who = request.getfixturevalue(caller)
    with unchanged(chain, [who]), reverts("EnergyTokenCallerNotRegistry", who):
        chain.send(chain.token.functions.mint(who, 1000), who)


@pytest.mark.usefixtures("stocked")
@pytest.mark.parametrize("caller", ["operator", "seller", "stranger"])
def test_only_the_market_escrows(
    chain: Chain, request: pytest.FixtureRequest, seller: str, caller: str
):
    who = request.getfixturevalue(caller)
    with unchanged(chain, [seller, who]), reverts("EnergyTokenCallerNotMarket", who):
        chain.send(chain.token.functions.escrowFrom(seller, 1000), who)


@pytest.mark.usefixtures("stocked")
@pytest.mark.parametrize("caller", ["operator", "seller", "buyer"])
def test_only_the_market_burns(
    chain: Chain, request: pytest.FixtureRequest, seller: str, caller: str
):
    list_lot(chain, seller, 2_000, PRICE)
    who = request.getfixturevalue(caller)
    with unchanged(chain, [seller, who]), reverts("EnergyTokenCallerNotMarket", who):
        chain.send(chain.token.functions.burnDelivered(1000), who)
    assert tokens(chain, chain.market.address) == 2_000


@pytest.mark.usefixtures("stocked")
def test_listing_escrows_without_allowance(chain: Chain, seller: str):
    receipt = chain.send(chain.market.functions.list(2_000, PRICE, 60), seller)
    assert chain.events(receipt) == [
        market_event(
            "Listed",
            listingId=1,
            seller=seller,
            energyWh=2_000,
            startPricePerKWh=PRICE,
            deadline=block_time(chain, receipt) + 60,
        ),
        transfer(seller, chain.market.address, 2_000),
    ]
    assert tokens(chain, seller) == STOCK - 2_000
    assert tokens(chain, chain.market.address) == 2_000
    assert chain.token.functions.allowance(seller, chain.market.address).call() == 0


@pytest.mark.usefixtures("stocked")
def test_delivered_tokens_are_burned_when_the_trade_closes(
    chain: Chain, operator: str, seller: str, buyer: str, load_meter: str
):
    install_meter(chain, operator, load_meter, buyer, LOAD, LOAD_W)
    trade = open_trade(chain, seller, buyer, 2_000, PRICE)
    measure(chain, load_meter, 600)
    assert supply(chain) == STOCK  # delivered tokens stay locked until the trade closes
    receipt = buyer_closes(chain, trade, buyer)
    assert [e for e in chain.events(receipt) if e.name == "Transfer"] == [
        transfer(chain.market.address, ZERO_ADDRESS, 600),
        transfer(chain.market.address, seller, 1_400),
    ]
    assert supply(chain) == STOCK - 600
    assert tokens(chain, seller) == STOCK - 600
    assert tokens(chain, chain.market.address) == 0


@pytest.mark.usefixtures("stocked")
@pytest.mark.parametrize("energy_wh", [STOCK + 1, 10 * STOCK])
def test_listing_more_than_one_holds_is_refused(chain: Chain, seller: str, energy_wh: int):
    with (
        unchanged(chain, [seller]),
        reverts("ERC20InsufficientBalance", seller, STOCK, energy_wh),
    ):
        chain.send(chain.market.functions.list(energy_wh, PRICE, 60), seller)
    assert chain.market.functions.lotCount().call() == 0


def test_listing_without_tokens_is_refused(chain: Chain, stranger: str):
    with unchanged(chain, [stranger]), reverts("ERC20InsufficientBalance", stranger, 0, 1):
        chain.send(chain.market.functions.list(1, PRICE, 60), stranger)


@pytest.mark.usefixtures("stocked")
def test_holders_transfer_like_any_erc20(chain: Chain, seller: str, buyer: str):
    receipt = chain.send(chain.token.functions.transfer(buyer, 1_500), seller)
    assert chain.events(receipt) == [transfer(seller, buyer, 1_500)]
    assert (tokens(chain, seller), tokens(chain, buyer)) == (STOCK - 1_500, 1_500)


@pytest.mark.usefixtures("stocked")
def test_transfer_from_spends_the_allowance(chain: Chain, seller: str, buyer: str, rival: str):
    receipt = chain.send(chain.token.functions.approve(buyer, 1_000), seller)
    assert chain.events(receipt) == [
        ev("EnergyToken", "Approval", owner=seller, spender=buyer, value=1_000)
    ]
    receipt = chain.send(chain.token.functions.transferFrom(seller, rival, 400), buyer)
    assert chain.events(receipt) == [transfer(seller, rival, 400)]
    assert chain.token.functions.allowance(seller, buyer).call() == 600
    assert tokens(chain, rival) == 400
    with (
        unchanged(chain, [seller, buyer, rival]),
        reverts("ERC20InsufficientAllowance", buyer, 600, 601),
    ):
        chain.send(chain.token.functions.transferFrom(seller, rival, 601), buyer)


@pytest.mark.usefixtures("stocked")
@pytest.mark.parametrize(
    ("to", "amount", "error", "args"),
    [
        ("buyer", STOCK + 1, "ERC20InsufficientBalance", ("seller", STOCK, STOCK + 1)),
        (ZERO_ADDRESS, 1, "ERC20InvalidReceiver", (ZERO_ADDRESS,)),
    ],
)
def test_bad_transfers_are_refused(
    chain: Chain,
    request: pytest.FixtureRequest,
    seller: str,
    buyer: str,
    to: str,
    amount: int,
    error: str,
    args: tuple,
):
    def resolve(x: object) -> object:
        return request.getfixturevalue(x) if x in ("seller", "buyer") else x

    with unchanged(chain, [seller, buyer]), reverts(error, *map(resolve, args)):
        chain.send(chain.token.functions.transfer(resolve(to), amount), seller)
