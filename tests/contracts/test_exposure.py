"""Bounded exposure: each way a dishonest party could take energy or Ether, tried.

Every test states what the dishonest party gains: 0, or exactly the bound the README states,
with balances to the wei and energy to the Wh. The meters sign their readings, so the carrier
of a buyer's readings can only withhold them; the market makes withholding pay nothing.
"""

import pytest
from eth_utils import function_signature_to_4byte_selector

from tests.contracts.conftest import PARAMS, PRICE, Chain, reverts
from tests.contracts.helpers import (
    LOAD,
    LOAD_W,
    Status,
    block_time,
    buyer_closes,
    credit,
    deposit_wei,
    end_auction,
    heartbeat,
    install_meter,
    list_lot,
    lot_of,
    market_event,
    measure,
    meter_of,
    mint,
    open_trade,
    paid_wei,
    place_bid,
    registry_event,
    report,
    report_batch,
    run_ahead_of_wall_clock,
    seconds_for,
    signed,
    supply,
    tokens,
    unchanged,
)

STOCK = 50_000
LOT = 2_000
DEPOSIT = deposit_wei(LOT, PRICE)
STALL = PARAMS.stall_timeout
GRACE = PARAMS.close_grace
MAX_AGE = 32  # MeterRegistry.MAX_READING_AGE_BLOCKS


@pytest.fixture(autouse=True)
def _clock(chain: Chain) -> None:
    """Exact block times for every test (see tests/contracts/helpers.py)."""
    run_ahead_of_wall_clock(chain)


@pytest.fixture(autouse=True)
def stocked(chain: Chain, operator: str, seller: str, supply_meter: str) -> None:
    """The seller holds STOCK Wh of tokens."""
    mint(chain, operator, supply_meter, seller, STOCK)


@pytest.fixture
def metered(chain: Chain, operator: str, buyer: str, load_meter: str) -> str:
    """The buyer's load meter (3,000 W), installed with its baseline reading."""
    install_meter(chain, operator, load_meter, buyer, LOAD, LOAD_W)
    return load_meter


def draw(
    chain: Chain, meter: str, energy_wh: int, since: tuple[int, int] | None = None
) -> tuple[int, int]:
    """The buyer draws `energy_wh` at the meter's rating; the meter signs the new counter,
    which the carrier keeps (withholds). `since` is the meter's last signed (counter, sequence)
    when that was withheld too. Returns the new signed reading's (counter, sequence)."""
    info = meter_of(chain, meter)
    counter, sequence = since or (info.energy_wh, info.sequence)
    chain.advance(seconds_for(energy_wh, info.rated_power_w) + 1)
    return counter + energy_wh, sequence + 1


def billed(chain: Chain, trade: int) -> tuple[int, int]:
    """(Wh delivered, wei credited to its seller for it) of one trade."""
    lot = lot_of(chain, trade)
    return lot.delivered_wh, paid_wei(lot.delivered_wh, lot.price_per_kwh)


# --- the withholding buyer ----------------------------------------------------------------------


def test_withheld_readings_are_billed_in_full_by_the_next_one(
    chain: Chain, seller: str, buyer: str, metered: str
):
    """The carrier forwards one reading in three (a drip): counters are cumulative, so every
    Wh is billed by the next one that arrives; the buyer gains 0."""
    trade = open_trade(chain, seller, buyer, LOT, PRICE)
    for _ in range(3):
        signed = draw(chain, metered, 100)
        signed = draw(chain, metered, 100, signed)
        signed = draw(chain, metered, 100, signed)
        report(chain, metered, *signed)  # the third one only
    assert billed(chain, trade) == (900, paid_wei(900, PRICE))
    assert credit(chain, seller) == paid_wei(900, PRICE)


def test_a_silent_buyer_pays_for_the_most_its_meter_could_draw(
    chain: Chain, seller: str, buyer: str, metered: str
):
    """The carrier withholds everything after 300 Wh: once the meter has been silent for the
    stall timeout, the seller closes and is paid for rating x silent time (750 Wh); the buyer
    drew at most that, so it gains 0 (or pays for energy it did not draw)."""
    trade = open_trade(chain, seller, buyer, LOT, PRICE)
    receipt = measure(chain, metered, 300)
    last_reading = block_time(chain, receipt)
    chain.advance(STALL)
    assert chain.market.functions.stallsAt(trade).call() == last_reading + STALL
    chain.send(chain.market.functions.closeConnection(trade), seller)
    charged = LOAD_W * STALL // 3600
    assert charged == 750
    assert billed(chain, trade) == (300 + charged, paid_wei(300 + charged, PRICE))
    assert credit(chain, seller) == paid_wei(1_050, PRICE)
    assert credit(chain, buyer) == DEPOSIT - paid_wei(1_050, PRICE)
    assert tokens(chain, seller) == STOCK - 1_050
    assert supply(chain) == STOCK - 1_050


def test_a_seller_who_waits_before_closing_a_stalled_trade_is_paid_no_more(
    chain: Chain, seller: str, buyer: str, metered: str
):
    """The seller leaves a stalled trade open for ten stall timeouts before closing: its relay
    opened at the stall, so the silence is charged until the stall only (750 Wh, as when it
    closes at once), not for the wait (which would be the whole lot)."""
    trade = open_trade(chain, seller, buyer, LOT, PRICE)
    last_reading = block_time(chain, measure(chain, metered, 300))
    chain.advance(10 * STALL)
    receipt = chain.send(chain.market.functions.closeConnection(trade), seller)
    charged = LOAD_W * STALL // 3600
    assert chain.events(receipt)[0] == market_event(
        "StallCharged", tradeId=trade, silentSince=last_reading,
        silentUntil=last_reading + STALL, energyWh=charged,
    )
    assert billed(chain, trade) == (300 + charged, paid_wei(300 + charged, PRICE))
    assert credit(chain, seller) == paid_wei(1_050, PRICE)
    assert credit(chain, buyer) == DEPOSIT - paid_wei(1_050, PRICE)
    assert tokens(chain, seller) == STOCK - 1_050  # 950 Wh undelivered came back
    assert supply(chain) == STOCK - 1_050


def test_heartbeats_keep_an_honest_idle_buyer_from_stalling(
    chain: Chain, seller: str, buyer: str, metered: str
):
    """A buyer who draws nothing but whose meter reports (heartbeats) is never stalled and
    pays exactly what was metered: 0 Wh so far."""
    trade = open_trade(chain, seller, buyer, LOT, PRICE)
    for _ in range(3):
        heartbeat(chain, metered, STALL - 1)
    with reverts("MarketTradeNotStalled"):
        chain.send(chain.market.functions.closeConnection(trade), seller)
    assert billed(chain, trade) == (0, 0)


# --- the stockpiling buyer -----------------------------------------------------------------------


def test_the_registry_states_the_reading_age_limit(chain: Chain):
    assert chain.registry.functions.MAX_READING_AGE_BLOCKS().call() == MAX_AGE


def test_stockpiled_readings_are_stale_so_the_trade_stalls_and_the_seller_is_paid_the_bound(
    chain: Chain, seller: str, buyer: str, metered: str
):
    """The buyer's computer asks its meter for ten readings before drawing anything (the same
    counter, growing sequences, all of block `before`), then draws at full power and sends one
    per stall timeout to keep the trade alive, and a last one after a close request. Each
    signs a block more than MAX_AGE blocks old by then: all are refused, the trade stalls, and
    the seller closes and is paid for the most the meter could draw while silent (750 Wh)."""
    trade = open_trade(chain, seller, buyer, LOT, PRICE)
    last_reading = block_time(chain, heartbeat(chain, metered))  # the last reading it forwards
    before = chain.w3.eth.block_number
    counter, sequence = meter_of(chain, metered).energy_wh, meter_of(chain, metered).sequence
    stock = [signed(chain, metered, counter, sequence + i, before) for i in range(1, 11)]
    chain.mine(MAX_AGE)  # the buyer draws at full power, block after block...
    chain.advance(STALL - MAX_AGE - 60)  # ...until just before the stall, and sends one
    oldest = chain.w3.eth.block_number + 1 - MAX_AGE  # the block the next one is mined in
    with unchanged(chain, [seller, buyer]), reverts("MeterReadingStale", before, oldest):
        chain.send(chain.registry.functions.report(*stock[0]), chain.carrier)
    receipt = report_batch(chain, stock[1:3])  # nor does a batch take them
    reason = function_signature_to_4byte_selector("MeterReadingStale(uint256,uint256)")
    assert chain.events(receipt) == [
        registry_event("ReadingRejected", meter=metered, sequence=sequence + 2, reason=reason),
        registry_event("ReadingRejected", meter=metered, sequence=sequence + 3, reason=reason),
    ]
    assert meter_of(chain, metered).read_at == last_reading  # nothing refreshed the meter
    chain.advance(60)
    assert chain.market.functions.stallsAt(trade).call() == last_reading + STALL
    chain.send(chain.market.functions.closeConnection(trade), buyer)  # the close request...
    with reverts("MeterReadingStale"):  # ...and the stale reading that would close it cheaply
        chain.send(chain.registry.functions.report(*stock[3]), chain.carrier)
    receipt = chain.send(chain.market.functions.closeConnection(trade), seller)
    charged = LOAD_W * STALL // 3600
    assert charged == 750
    assert chain.events(receipt)[0] == market_event(
        "StallCharged", tradeId=trade, silentSince=last_reading,
        silentUntil=last_reading + STALL, energyWh=charged,
    )
    assert lot_of(chain, trade).status == Status.CLOSED
    assert billed(chain, trade) == (charged, paid_wei(charged, PRICE))
    assert credit(chain, seller) == paid_wei(charged, PRICE)  # more than the minimum charge
    assert credit(chain, buyer) == DEPOSIT - paid_wei(charged, PRICE)
    assert tokens(chain, seller) == STOCK - charged
    assert supply(chain) == STOCK - charged


def test_a_reading_is_fresh_for_exactly_max_age_blocks(
    chain: Chain, seller: str, buyer: str, metered: str
):
    """Signed at block B, a reading is accepted in block B + MAX_AGE and refused after."""
    open_trade(chain, seller, buyer, LOT, PRICE)
    info = meter_of(chain, metered)
    block = chain.w3.eth.block_number
    late = signed(chain, metered, info.energy_wh, info.sequence + 2, block)
    just_in_time = signed(chain, metered, info.energy_wh, info.sequence + 1, block)
    chain.mine(MAX_AGE - 1)  # the next block is B + MAX_AGE
    receipt = chain.send(chain.registry.functions.report(*just_in_time), chain.carrier)
    assert receipt["blockNumber"] == block + MAX_AGE
    assert meter_of(chain, metered).sequence == info.sequence + 1
    with reverts("MeterReadingStale", block, block + 1):  # mined in B + MAX_AGE + 1
        chain.send(chain.registry.functions.report(*late), chain.carrier)


def test_a_reading_signed_with_a_hash_that_is_not_its_blocks_is_refused(
    chain: Chain, seller: str, buyer: str, metered: str
):
    """A host that cannot know a future hash might guess one, or give an older block's hash
    under a newer number: the registry builds the digest with the block's real hash, so the
    signature recovers another address, and nothing is recorded."""
    trade = open_trade(chain, seller, buyer, LOT, PRICE)
    chain.advance(seconds_for(300, LOAD_W))
    info = meter_of(chain, metered)
    latest = chain.w3.eth.block_number
    counter, sequence = info.energy_wh + 300, info.sequence + 1
    for wrong in (b"\x5a" * 32, chain.block_hash(latest - 1), bytes(32)):
        signature = chain.sign_reading(metered, counter, sequence, latest, wrong)
        fn = chain.registry.functions.report(metered, counter, sequence, latest, signature)
        with unchanged(chain, [seller, buyer]), reverts("MeterSignatureInvalid") as caught:
            chain.send(fn, chain.carrier)
        assert caught[0].args_[0] == metered and caught[0].args_[1] != metered
    assert meter_of(chain, metered) == info
    assert billed(chain, trade) == (0, 0)


def test_a_reading_for_a_block_not_mined_yet_is_refused(
    chain: Chain, seller: str, buyer: str, metered: str
):
    """The block the reading is mined in and any later one have no hash yet (`blockhash` is 0
    for them): a reading signed for one, with a zero or a guessed hash, is refused."""
    open_trade(chain, seller, buyer, LOT, PRICE)
    info = meter_of(chain, metered)
    current = chain.w3.eth.block_number + 1  # the block the reading would be mined in
    for number, block_hash in ((current, bytes(32)), (current + 5, bytes(32)),
                               (current, b"\x5a" * 32), (2**64 - 1, bytes(32))):
        signature = chain.sign_reading(metered, info.energy_wh, info.sequence + 1, number,
                                       block_hash)
        fn = chain.registry.functions.report(
            metered, info.energy_wh, info.sequence + 1, number, signature
        )
        with unchanged(chain, [seller, buyer]), reverts(
            "MeterReadingBlockUnknown", number, current
        ):
            chain.send(fn, chain.carrier)
    assert meter_of(chain, metered) == info


def test_an_honest_buyer_whose_meter_signs_recent_blocks_pays_exactly_what_was_metered(
    chain: Chain, seller: str, buyer: str, metered: str
):
    """Readings signed with the latest block (and one sent MAX_AGE blocks late) are all
    accepted: the buyer pays exactly the 1,234 Wh metered, and the seller exactly that."""
    trade = open_trade(chain, seller, buyer, LOT, PRICE)
    measure(chain, metered, 400)
    measure(chain, metered, 500)
    info = meter_of(chain, metered)
    chain.advance(seconds_for(334, LOAD_W))
    delayed = signed(chain, metered, info.energy_wh + 334, info.sequence + 1)
    chain.mine(MAX_AGE - 1)  # the carrier was slow: the reading is mined MAX_AGE blocks later
    chain.send(chain.registry.functions.report(*delayed), chain.carrier)
    assert billed(chain, trade) == (1_234, paid_wei(1_234, PRICE))
    buyer_closes(chain, trade, buyer)
    assert lot_of(chain, trade).status == Status.CLOSED
    assert billed(chain, trade) == (1_234, paid_wei(1_234, PRICE))
    assert credit(chain, seller) == paid_wei(1_234, PRICE)
    assert credit(chain, buyer) == DEPOSIT - paid_wei(1_234, PRICE)
    assert tokens(chain, seller) == STOCK - 1_234  # the undelivered 766 Wh came back
    assert supply(chain) == STOCK - 1_234


# --- walking away ------------------------------------------------------------------------------


def test_a_winner_who_walks_away_pays_the_minimum_charge(
    chain: Chain, seller: str, buyer: str, metered: str
):
    trade = open_trade(chain, seller, buyer, LOT, PRICE)
    chain.send(chain.market.functions.closeConnection(trade), buyer)
    heartbeat(chain, metered)  # the next reading ends the close
    fee = paid_wei(PARAMS.min_charge_wh, PRICE)
    assert lot_of(chain, trade).status == Status.CLOSED
    assert (credit(chain, seller), credit(chain, buyer)) == (fee, DEPOSIT - fee)
    assert tokens(chain, seller) == STOCK  # no energy moved: every token is back
    assert supply(chain) == STOCK


def test_only_an_account_with_a_load_meter_may_bid(chain: Chain, seller: str, stranger: str):
    listing = list_lot(chain, seller, LOT, PRICE)
    with unchanged(chain, [stranger]), reverts("MarketBidderHasNoLoadMeter", stranger):
        chain.send(chain.market.functions.bid(listing, PRICE), stranger, DEPOSIT)


# --- nothing is billed to nobody ----------------------------------------------------------------


def test_dust_lots_at_the_head_of_the_queue_hide_nothing(
    chain: Chain, seller: str, buyer: str, rival: str, metered: str
):
    """Four 1 Wh lots ahead of a real one: the reading's remainder beyond the four trades it
    may walk is carried over and billed to the real lot by the next reading (a heartbeat)."""
    dust = [open_trade(chain, seller, buyer, 1, PRICE) for _ in range(4)]
    real = open_trade(chain, seller, buyer, LOT, PRICE)
    measure(chain, metered, 500)
    assert [lot_of(chain, t).status for t in dust] == [Status.CLOSED] * 4
    assert chain.market.functions.carriedOf(buyer).call() == 496
    heartbeat(chain, metered)
    assert billed(chain, real) == (496, paid_wei(496, PRICE))
    assert chain.market.functions.carriedOf(buyer).call() == 0
    dust_paid = 4 * paid_wei(1, PRICE)  # completed lots owe no minimum beyond themselves
    assert credit(chain, seller) == dust_paid + paid_wei(496, PRICE)
    # Every metered Wh is billed, to the Wh: 4 burned with the dust, 496 locked until closing.
    assert supply(chain) == STOCK - 4
    assert 4 + lot_of(chain, real).delivered_wh == 500


# --- closing before the last reading ------------------------------------------------------------


def test_closing_before_the_final_reading_still_pays_the_tail(
    chain: Chain, seller: str, buyer: str, metered: str
):
    trade = open_trade(chain, seller, buyer, LOT, PRICE)
    measure(chain, metered, 200)
    counter, sequence = draw(chain, metered, 400)  # drawn, the reading withheld
    receipt = chain.send(chain.market.functions.closeConnection(trade), buyer)
    assert chain.events(receipt)[0].name == "CloseRequested"
    assert lot_of(chain, trade).status == Status.OPEN  # the refund waits for the tail
    chain.advance(1)
    report(chain, metered, counter, sequence)  # the next reading: the tail is billed first
    assert lot_of(chain, trade).status == Status.CLOSED
    assert billed(chain, trade) == (600, paid_wei(600, PRICE))
    assert credit(chain, buyer) == DEPOSIT - paid_wei(600, PRICE)


def test_closing_and_withholding_the_tail_pays_the_stall_bound(
    chain: Chain, seller: str, buyer: str, metered: str
):
    """The buyer asks to close and its carrier never forwards another reading: after the
    grace time the seller closes under the stall rule, silence counted until the request."""
    trade = open_trade(chain, seller, buyer, LOT, PRICE)
    receipt = measure(chain, metered, 200)
    last_reading = block_time(chain, receipt)
    draw(chain, metered, 400)  # 480 s at 3 kW
    receipt = chain.send(chain.market.functions.closeConnection(trade), buyer)
    asked = block_time(chain, receipt)
    with reverts("MarketTradeNotStalled", trade, asked + GRACE):
        chain.send(chain.market.functions.closeConnection(trade), seller)
    chain.advance(GRACE)
    receipt = chain.send(chain.market.functions.closeConnection(trade), seller)
    charged = LOAD_W * (asked - last_reading) // 3600
    assert chain.events(receipt)[0] == market_event(
        "StallCharged", tradeId=trade, silentSince=last_reading, silentUntil=asked,
        energyWh=charged,
    )
    assert charged >= 400  # at least what was really drawn
    assert billed(chain, trade) == (200 + charged, paid_wei(200 + charged, PRICE))
    assert credit(chain, buyer) == DEPOSIT - paid_wei(200 + charged, PRICE)


# --- only the seller being paid exports ---------------------------------------------------------


def test_only_the_active_trade_is_settled_and_queued_sellers_wait(
    chain: Chain, seller: str, buyer: str, rival: str, metered: str, operator: str
):
    first = open_trade(chain, seller, buyer, 300, PRICE)
    second = open_trade(chain, seller, buyer, 300, PRICE)
    market = chain.market.functions
    assert market.activeTradeOf(buyer).call() == first
    assert market.tradesOfBuyer(buyer).call() == [first, second]
    measure(chain, metered, 200)
    assert billed(chain, second) == (0, 0)  # only the active trade's seller is paid
    receipt = measure(chain, metered, 100)  # completes the first
    assert market.activeTradeOf(buyer).call() == second
    assert lot_of(chain, second).active_since == block_time(chain, receipt)
    # The buyer may drop a queued trade at once (its seller never exported).
    third = open_trade(chain, seller, buyer, 300, PRICE)
    chain.send(market.closeConnection(third), buyer)
    assert lot_of(chain, third).status == Status.CLOSED
    assert market.tradesOfBuyer(buyer).call() == [second]


# --- open lots are found exactly ---------------------------------------------------------------


def test_a_listing_flood_hides_no_open_trade(
    chain: Chain, seller: str, buyer: str, metered: str, stranger: str
):
    old = open_trade(chain, seller, buyer, LOT, PRICE)
    flood = [list_lot(chain, seller, 1, 1, 60 if i < 10 else 7_200) for i in range(25)]
    market = chain.market.functions
    assert sorted(market.lotsOfSeller(seller).call()) == [old, *flood]
    assert market.tradesOfBuyer(buyer).call() == [old]
    for listing in flood[:10]:
        end_auction(chain, listing, stranger)  # expired: out of the index
    assert sorted(market.lotsOfSeller(seller).call()) == [old, *flood[10:]]
    assert market.lotsOfSeller(stranger).call() == []
    place_bid(chain, buyer, flood[10], 1)
    end_auction(chain, flood[10], stranger)
    assert sorted(market.lotsOfSeller(seller).call()) == [old, *flood[10:]]
    assert market.tradesOfBuyer(buyer).call() == [old, flood[10]]
