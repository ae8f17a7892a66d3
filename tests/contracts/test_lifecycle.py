"""Whole trades across the three contracts, accounting for every wei and every Wh."""

import pytest

from tests.contracts.conftest import PARAMS, PRICE, Chain, Event, reverts
from tests.contracts.helpers import (
    LOAD,
    LOAD_W,
    SUPPLY,
    SUPPLY_W,
    ZERO_ADDRESS,
    Status,
    advance_to,
    buyer_closes,
    credit,
    deposit_wei,
    end_auction,
    gas_spent_since,
    heartbeat,
    install_meter,
    list_lot,
    lot_of,
    market_event,
    measure,
    mint,
    open_trade,
    paid_wei,
    place_bid,
    queue,
    recorded,
    register_meter,
    report,
    run_ahead_of_wall_clock,
    supply,
    tokens,
    transfer,
)

INC = PARAMS.min_increment_per_kwh
STOCK = 8_000  # Wh the seller's PV measured before the multi-trade tests


@pytest.fixture(autouse=True)
def _clock(chain: Chain) -> None:
    """Exact block times for every test (see tests/contracts/helpers.py)."""
    run_ahead_of_wall_clock(chain)


@pytest.fixture
def stocked(chain: Chain, operator: str, seller: str, supply_meter: str) -> None:
    """The seller holds STOCK Wh of tokens, minted by a supply reading."""
    mint(chain, operator, supply_meter, seller, STOCK)


@pytest.fixture
def metered(chain: Chain, operator: str, buyer: str, load_meter: str) -> None:
    """The buyer's load meter is installed and has sent its baseline."""
    install_meter(chain, operator, load_meter, buyer, LOAD, LOAD_W)


def settled(events: list[Event]) -> list[tuple[int, int, int, int]]:
    """(trade, energy, paid, delivered so far) of each DeliverySettled, in order."""
    return [
        (e.args["tradeId"], e.args["energyWh"], e.args["paidWei"], e.args["deliveredWh"])
        for e in events
        if e.name == "DeliverySettled"
    ]


def closed_by_delivery(
    chain: Chain, trade: int, buyer: str, energy_wh: int, price: int
) -> list[Event]:
    """The events of a trade that closes itself because its lot was delivered in full."""
    refund = deposit_wei(energy_wh, price) - paid_wei(energy_wh, price)
    events = [
        market_event(
            "ConnectionClosed",
            tradeId=trade,
            closedBy=ZERO_ADDRESS,
            deliveredWh=energy_wh,
            refundWei=refund,
            returnedWh=0,
        )
    ]
    if refund:
        events.append(market_event("Credited", account=buyer, lotId=trade, amountWei=refund))
    events.append(transfer(chain.market.address, ZERO_ADDRESS, energy_wh))
    return events


def withdraw_all(chain: Chain, *accounts: str) -> None:
    """Every account with a credit withdraws it; the Withdrawn event names the exact amount."""
    for account in accounts:
        amount = credit(chain, account)
        if amount:
            receipt = chain.send(chain.market.functions.withdraw(), account)
            assert chain.events(receipt) == [
                market_event("Withdrawn", account=account, amountWei=amount)
            ]


def test_a_trade_from_sunshine_to_withdrawal(
    chain: Chain,
    operator: str,
    seller: str,
    buyer: str,
    rival: str,
    stranger: str,
    supply_meter: str,
    load_meter: str,
):
    first_block = chain.w3.eth.block_number + 1
    ether = {a: chain.balance(a) for a in (seller, buyer, rival)}

    # The PV meter is installed with 12,345 Wh on its counter: that energy is not minted.
    register_meter(chain, operator, supply_meter, seller, SUPPLY, SUPPLY_W)
    receipt = report(chain, supply_meter, 12_345)
    assert chain.events(receipt) == [
        recorded(supply_meter, 12_345, 1, 0)
    ]
    minted = 0
    for sequence, energy_wh in enumerate((4_000, 2_500), start=2):
        receipt = measure(chain, supply_meter, energy_wh)
        minted += energy_wh
        assert chain.events(receipt) == [
            recorded(supply_meter, 12_345 + minted, sequence, energy_wh),
            transfer(ZERO_ADDRESS, seller, energy_wh),
        ]
    assert tokens(chain, seller) == supply(chain) == minted == 6_500

    # The buyer's load meter is installed (bidding needs one); its baseline settles nothing.
    register_meter(chain, operator, load_meter, buyer, LOAD, LOAD_W)
    receipt = report(chain, load_meter, 777)
    assert [e.name for e in chain.events(receipt)] == ["ReadingRecorded"]

    # An auction of 4,321 Wh at prices that are not multiples of 1000 wei per kWh.
    lot_wh, start = 4_321, 200_000_000_000_123
    trade = list_lot(chain, seller, lot_wh, start, 600)
    prices = [start, start + INC + 7, start + 2 * INC + 11]
    place_bid(chain, buyer, trade, prices[0])
    receipt = place_bid(chain, rival, trade, prices[1])
    assert chain.events(receipt)[1] == market_event(
        "Credited", account=buyer, lotId=trade, amountWei=deposit_wei(lot_wh, prices[0])
    )
    receipt = place_bid(chain, buyer, trade, prices[2])
    assert chain.events(receipt)[1] == market_event(
        "Credited", account=rival, lotId=trade, amountWei=deposit_wei(lot_wh, prices[1])
    )
    price = prices[2]
    deposit = deposit_wei(lot_wh, price)
    assert credit(chain, buyer) == deposit_wei(lot_wh, prices[0])
    assert credit(chain, rival) == deposit_wei(lot_wh, prices[1])

    receipt = end_auction(chain, trade, stranger)
    assert chain.events(receipt) == [
        market_event(
            "TradeOpened",
            tradeId=trade,
            seller=seller,
            buyer=buyer,
            energyWh=lot_wh,
            pricePerKWh=price,
        )
    ]

    delivered = 0
    for sequence, energy_wh in enumerate((500, 1_234, 7), start=2):
        seller_credit = credit(chain, seller)
        receipt = measure(chain, load_meter, energy_wh)
        increment = paid_wei(delivered + energy_wh, price) - paid_wei(delivered, price)
        delivered += energy_wh
        assert chain.events(receipt) == [
            recorded(load_meter, 777 + delivered, sequence, energy_wh),
            market_event(
                "DeliverySettled",
                tradeId=trade,
                energyWh=energy_wh,
                paidWei=increment,
                deliveredWh=delivered,
            ),
        ]
        assert credit(chain, seller) == seller_credit + increment
    paid = paid_wei(delivered, price)
    assert credit(chain, seller) == paid == lot_of(chain, trade).paid_wei

    # Two-phase close: the request opens the relays, the next reading (a heartbeat) closes.
    receipt = buyer_closes(chain, trade, buyer)
    refund = deposit - paid
    assert chain.events(receipt)[1:] == [
        market_event(
            "ConnectionClosed",
            tradeId=trade,
            closedBy=buyer,
            deliveredWh=delivered,
            refundWei=refund,
            returnedWh=lot_wh - delivered,
        ),
        market_event("Credited", account=buyer, lotId=trade, amountWei=refund),
        transfer(chain.market.address, ZERO_ADDRESS, delivered),
        transfer(chain.market.address, seller, lot_wh - delivered),
    ]

    # The relays are open: more consumption bills nobody.
    receipt = measure(chain, load_meter, 300)
    assert [e.name for e in chain.events(receipt)] == ["ReadingRecorded"]

    withdraw_all(chain, buyer, rival, seller)
    gas = gas_spent_since(chain, first_block)
    assert chain.balance(chain.market.address) == 0
    assert chain.balance(buyer) == ether[buyer] - gas[buyer] - paid
    assert chain.balance(rival) == ether[rival] - gas[rival]
    assert chain.balance(seller) == ether[seller] - gas[seller] + paid
    assert supply(chain) == minted - delivered
    assert tokens(chain, seller) == minted - delivered
    assert tokens(chain, chain.market.address) == 0
    assert [credit(chain, a) for a in (buyer, rival, seller)] == [0, 0, 0]


@pytest.mark.usefixtures("stocked")
def test_an_auction_without_bids_gives_everything_back(
    chain: Chain, seller: str, buyer: str, stranger: str
):
    listing = list_lot(chain, seller, 3_000, PRICE, 3_600)
    receipt = end_auction(chain, listing, stranger)
    assert chain.events(receipt) == [
        market_event("ListingExpired", listingId=listing, seller=seller, energyWh=3_000),
        transfer(chain.market.address, seller, 3_000),
    ]
    assert tokens(chain, seller) == supply(chain) == STOCK
    assert chain.balance(chain.market.address) == 0
    assert queue(chain, buyer) == []
    # The same tokens can go up for auction again.
    assert list_lot(chain, seller, STOCK, PRICE) == listing + 1
    assert tokens(chain, chain.market.address) == STOCK


@pytest.mark.usefixtures("stocked", "metered")
def test_delivery_is_capped_at_the_lot(chain: Chain, seller: str, buyer: str, load_meter: str):
    lot_wh, price = 1_234, 10**15 + 1  # 1,234 Wh cost 1.234e15 + 1.234 wei: 1 wei of rounding
    trade = open_trade(chain, seller, buyer, lot_wh, price)
    measure(chain, load_meter, 1_000)
    receipt = measure(chain, load_meter, 1_500)
    events = chain.events(receipt)
    assert events[0].args["deltaWh"] == 1_500
    assert events[1:] == [
        market_event(
            "DeliverySettled",
            tradeId=trade,
            energyWh=234,
            paidWei=paid_wei(lot_wh, price) - paid_wei(1_000, price),
            deliveredWh=lot_wh,
        ),
        *closed_by_delivery(chain, trade, buyer, lot_wh, price),
    ]
    assert deposit_wei(lot_wh, price) - paid_wei(lot_wh, price) == 1
    assert lot_of(chain, trade).status == Status.CLOSED
    assert queue(chain, buyer) == []
    assert credit(chain, seller) == paid_wei(lot_wh, price)
    assert credit(chain, buyer) == 1
    assert supply(chain) == STOCK - lot_wh
    assert tokens(chain, seller) == STOCK - lot_wh


@pytest.mark.usefixtures("stocked", "metered")
def test_seller_closes_a_stalled_trade(chain: Chain, seller: str, buyer: str, load_meter: str):
    first_block = chain.w3.eth.block_number + 1
    ether = {a: chain.balance(a) for a in (seller, buyer)}
    trade = open_trade(chain, seller, buyer, 2_000, PRICE)
    measure(chain, load_meter, 300)
    silent_since = chain.now()
    chain.advance(PARAMS.stall_timeout)  # the buyer's meter goes quiet
    receipt = chain.send(chain.market.functions.closeConnection(trade), seller)
    # The silence is charged at the meter's rating: 3,000 W x 900 s = 750 Wh.
    delivered = 300 + 750
    paid = paid_wei(delivered, PRICE)
    refund = deposit_wei(2_000, PRICE) - paid
    assert chain.events(receipt) == [
        market_event(
            "StallCharged",
            tradeId=trade,
            silentSince=silent_since,
            silentUntil=silent_since + PARAMS.stall_timeout,
            energyWh=750,
        ),
        market_event(
            "DeliverySettled",
            tradeId=trade,
            energyWh=750,
            paidWei=paid - paid_wei(300, PRICE),
            deliveredWh=delivered,
        ),
        market_event(
            "ConnectionClosed",
            tradeId=trade,
            closedBy=seller,
            deliveredWh=delivered,
            refundWei=refund,
            returnedWh=2_000 - delivered,
        ),
        market_event("Credited", account=buyer, lotId=trade, amountWei=refund),
        transfer(chain.market.address, ZERO_ADDRESS, delivered),
        transfer(chain.market.address, seller, 2_000 - delivered),
    ]
    withdraw_all(chain, buyer, seller)
    gas = gas_spent_since(chain, first_block)
    assert chain.balance(chain.market.address) == 0
    assert chain.balance(buyer) == ether[buyer] - gas[buyer] - paid
    assert chain.balance(seller) == ether[seller] - gas[seller] + paid
    assert tokens(chain, seller) == supply(chain) == STOCK - delivered


@pytest.mark.usefixtures("stocked", "metered")
def test_open_trades_settle_oldest_first(
    chain: Chain, operator: str, seller: str, buyer: str, rival: str, load_meter: str
):
    rival_meter = chain.addresses[7]
    install_meter(chain, operator, rival_meter, rival, LOAD, LOAD_W)
    lots = {400: PRICE, 500: PRICE + 333, 600: 2 * PRICE + 1}
    trades = [open_trade(chain, seller, buyer, wh, p) for wh, p in lots.items()]
    rivals_trade = open_trade(chain, seller, rival, 700, PRICE)
    assert trades == [1, 2, 3]
    assert chain.market.functions.openTradesOf(buyer).call() == [1, 3]
    assert [chain.market.functions.nextTradeOfBuyer(t).call() for t in trades] == [2, 3, 0]
    assert queue(chain, rival) == [rivals_trade]

    receipt = measure(chain, load_meter, 700)  # all of trade 1, 300 Wh of trade 2
    events = chain.events(receipt)[1:]
    assert events == [
        market_event(
            "DeliverySettled",
            tradeId=1,
            energyWh=400,
            paidWei=paid_wei(400, PRICE),
            deliveredWh=400,
        ),
        *closed_by_delivery(chain, 1, buyer, 400, PRICE),
        market_event(
            "DeliverySettled",
            tradeId=2,
            energyWh=300,
            paidWei=paid_wei(300, PRICE + 333),
            deliveredWh=300,
        ),
    ]
    assert queue(chain, buyer) == [2, 3]

    receipt = measure(chain, load_meter, 450)  # the rest of trade 2, then 250 Wh of trade 3
    price2 = PRICE + 333
    assert settled(chain.events(receipt)) == [
        (2, 200, paid_wei(500, price2) - paid_wei(300, price2), 500),
        (3, 250, paid_wei(250, 2 * PRICE + 1), 250),
    ]
    assert queue(chain, buyer) == [3]
    assert lot_of(chain, rivals_trade).delivered_wh == 0  # the rival's trade is not the buyer's
    assert queue(chain, rival) == [rivals_trade]
    assert credit(chain, seller) == (
        paid_wei(400, PRICE) + paid_wei(500, price2) + paid_wei(250, 2 * PRICE + 1)
    )
    # The rival's meter settles the rival's trade only.
    receipt = measure(chain, rival_meter, 100)
    assert settled(chain.events(receipt)) == [(rivals_trade, 100, paid_wei(100, PRICE), 100)]
    assert queue(chain, buyer) == [3]
    assert lot_of(chain, 3).delivered_wh == 250


@pytest.mark.usefixtures("stocked", "metered")
def test_queue_follows_finalization_order(chain: Chain, seller: str, buyer: str):
    first = list_lot(chain, seller, 100, PRICE, 3_600)
    second = list_lot(chain, seller, 100, PRICE, 60)
    place_bid(chain, buyer, first, PRICE)
    place_bid(chain, buyer, second, PRICE)
    end_auction(chain, second, seller)
    end_auction(chain, first, seller)
    assert queue(chain, buyer) == [second, first]


@pytest.mark.usefixtures("stocked", "metered")
@pytest.mark.parametrize(("closed", "left"), [(1, [2, 3]), (2, [1, 3]), (3, [1, 2])])
def test_closing_any_trade_keeps_the_queue(
    chain: Chain, seller: str, buyer: str, load_meter: str, closed: int, left: list[int]
):
    trades = [open_trade(chain, seller, buyer, 400, PRICE) for _ in range(3)]
    assert queue(chain, buyer) == trades
    buyer_closes(chain, closed, buyer)
    assert queue(chain, buyer) == left
    assert chain.market.functions.nextTradeOfBuyer(closed).call() == 0

    receipt = measure(chain, load_meter, 800)
    assert [t for t, *_ in settled(chain.events(receipt))] == left
    assert queue(chain, buyer) == []
    assert lot_of(chain, closed).delivered_wh == 0
    assert supply(chain) == STOCK - 800
    # A fresh trade starts a fresh queue.
    fresh = open_trade(chain, seller, buyer, 400, PRICE)
    assert chain.market.functions.openTradesOf(buyer).call() == [fresh, fresh]


@pytest.mark.usefixtures("stocked", "metered")
def test_a_reading_settles_at_most_four_trades(
    chain: Chain, seller: str, buyer: str, load_meter: str
):
    assert chain.market.functions.MAX_TRADES_PER_READING().call() == 4
    trades = [open_trade(chain, seller, buyer, 100, PRICE) for _ in range(5)]
    receipt = measure(chain, load_meter, 600)
    assert settled(chain.events(receipt)) == [
        (t, 100, paid_wei(100, PRICE), 100) for t in trades[:4]
    ]
    assert queue(chain, buyer) == [trades[4]]
    assert lot_of(chain, trades[4]).delivered_wh == 0
    # The 200 Wh beyond the four trades are carried over, not dropped.
    assert credit(chain, seller) == 4 * paid_wei(100, PRICE)
    assert chain.market.functions.carriedOf(buyer).call() == 200

    receipt = heartbeat(chain, load_meter)  # even a heartbeat settles the carried energy
    assert settled(chain.events(receipt)) == [(trades[4], 100, paid_wei(100, PRICE), 100)]
    assert queue(chain, buyer) == []
    assert chain.market.functions.carriedOf(buyer).call() == 0  # no trade left to bill
    assert supply(chain) == STOCK - 500


@pytest.mark.usefixtures("stocked", "metered")
@pytest.mark.parametrize(
    ("price", "lot_wh", "readings"),
    [
        (1, 999, [1, 500, 498]),  # 0.999 wei owed: deposit 1, nothing paid, 1 wei back
        (7, 1_001, [333, 333, 335]),  # deposit 8, payments 2 + 2 + 3
        (10**15 + 1, 1_234, [1, 2, 1_000]),  # closed by the buyer with 231 Wh undelivered
        (999_999_999_999_999, 2_000, [1_999]),  # one Wh short of the lot
        (123_456_789, 3_000, [1, 1, 1, 2_997]),
    ],
)
def test_rounding_never_loses_a_wei(
    chain: Chain,
    seller: str,
    buyer: str,
    load_meter: str,
    price: int,
    lot_wh: int,
    readings: list[int],
):
    first_block = chain.w3.eth.block_number + 1
    ether = {a: chain.balance(a) for a in (seller, buyer)}
    trade = open_trade(chain, seller, buyer, lot_wh, price)
    deposit = deposit_wei(lot_wh, price)
    assert deposit == -(-lot_wh * price // 1000)  # rounded up
    assert chain.balance(chain.market.address) == deposit

    delivered = 0
    payments = []
    for energy_wh in readings:
        (row,) = settled(chain.events(measure(chain, load_meter, energy_wh)))
        delivered += energy_wh
        payments.append(row[2])
        assert row == (trade, energy_wh, row[2], delivered)
    paid = paid_wei(delivered, price)
    assert sum(payments) == paid == credit(chain, seller)  # rounded down, in total

    if delivered < lot_wh:
        receipt = buyer_closes(chain, trade, buyer)
        (closing,) = [e for e in chain.events(receipt) if e.name == "ConnectionClosed"]
        assert closing.args["refundWei"] == deposit - paid
    assert lot_of(chain, trade).status == Status.CLOSED
    assert credit(chain, buyer) == deposit - paid
    assert chain.balance(chain.market.address) == deposit

    withdraw_all(chain, buyer, seller)
    gas = gas_spent_since(chain, first_block)
    assert chain.balance(chain.market.address) == 0
    assert chain.balance(buyer) == ether[buyer] - gas[buyer] - paid
    assert chain.balance(seller) == ether[seller] - gas[seller] + paid
    assert supply(chain) == tokens(chain, seller) == STOCK - delivered


@pytest.mark.usefixtures("stocked", "metered")
def test_a_queued_trade_times_out_only_after_it_starts_delivering(
    chain: Chain, seller: str, buyer: str, load_meter: str
):
    first = open_trade(chain, seller, buyer, 400, PRICE)
    second = open_trade(chain, seller, buyer, 400, PRICE)
    # The first trade delivers slowly, for longer than the delivery timeout in total; the
    # second waits behind it and is not stalled, so its seller cannot close it.
    for _ in range(3):
        chain.advance(PARAMS.stall_timeout // 2)
        measure(chain, load_meter, 100)
    with reverts("MarketTradeNotStalled"):
        chain.send(chain.market.functions.closeConnection(second), seller)
    receipt = measure(chain, load_meter, 100)  # completes the first: the second starts now
    assert lot_of(chain, first).status == Status.CLOSED
    started = chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert lot_of(chain, second).active_since == started
    advance_to(chain, started + PARAMS.stall_timeout - 1)
    with reverts("MarketTradeNotStalled", second, started + PARAMS.stall_timeout):
        chain.send(chain.market.functions.closeConnection(second), seller)
    advance_to(chain, started + PARAMS.stall_timeout)
    chain.send(chain.market.functions.closeConnection(second), seller)
    assert lot_of(chain, second).status == Status.CLOSED
