"""Hostile bidders: a contract that re-enters the market from `receive`, one that refuses Ether.

The attackers live in contracts/test/ (ReentrantBidder, RevertingBidder). Each test checks what
the attacker gets, what the market still holds and that nobody else's credit moved.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from eth_utils import function_signature_to_4byte_selector
from web3.contract import Contract

from tests.contracts.conftest import PARAMS, PRICE, Chain, reverts
from tests.contracts.helpers import ensure_load_meter, install_meter, report

LOT_WH = 1_000
DURATION = 3_600
HIGHER = PRICE + PARAMS.min_increment_per_kwh
REENTER_WITHDRAW, REENTER_BID, REENTER_CLOSE = 1, 2, 4
REENTRANCY_GUARD_ERROR = function_signature_to_4byte_selector("ReentrancyGuardReentrantCall()")
SUPPLY, LOAD = 0, 1
MIN_FEE = PRICE * PARAMS.min_charge_wh // 1000


@dataclass
class Auction:
    """Three lots: the attacker was outbid by `rival` on lot 1, `rival` by `buyer` on lot 2."""

    attacker: Contract
    lot1: int
    lot2: int
    lot3: int  # listed, no bids yet
    deposit: int  # deposit at PRICE
    higher_deposit: int  # deposit at HIGHER
    meter: str  # the attacker's load meter


def mint(chain: Chain, operator: str, meter: str, owner: str, energy_wh: int) -> None:
    """Install a supply meter for `owner` and mint `energy_wh` through its signed readings."""
    install_meter(chain, operator, meter, owner, SUPPLY, 65_535, 0)
    chain.advance(3_600)
    report(chain, meter, energy_wh)


def list_lot(chain: Chain, seller: str) -> int:
    """List LOT_WH at PRICE and return the listing id."""
    receipt = chain.send(chain.market.functions.list(LOT_WH, PRICE, DURATION), seller)
    return next(e.args["listingId"] for e in chain.events(receipt) if e.name == "Listed")


def credit(chain: Chain, account: str) -> int:
    """The market credit of `account`."""
    return chain.market.functions.creditOf(account).call()


def gas_cost(receipt: dict) -> int:
    """Wei the sender paid for `receipt`'s gas."""
    return receipt["gasUsed"] * receipt["effectiveGasPrice"]


def setup_auction(
    chain: Chain, name: str, operator: str, seller: str, buyer: str, rival: str, meter: str,
    stranger: str,
) -> Auction:
    """Deploy attacker `name`, list three lots and get the attacker and `rival` outbid."""
    attacker = chain.deploy_contract(name, chain.market.address, sender=stranger)
    # Bidders need an accepted load meter: the attacker contract accepts one too.
    attacker_meter = chain.new_key(f"load meter of {name}")
    chain.send(chain.registry.functions.offerMeter(attacker_meter, attacker.address, LOAD, 3_000),
               operator)
    chain.send(attacker.functions.acceptMeter(chain.registry.address, attacker_meter), stranger)
    report(chain, attacker_meter, 0)
    for person in (buyer, rival):
        ensure_load_meter(chain, person)
    mint(chain, operator, meter, seller, 3 * LOT_WH)
    lots = [list_lot(chain, seller) for _ in range(3)]
    deposit = chain.market.functions.depositFor(lots[0], PRICE).call()
    higher = chain.market.functions.depositFor(lots[0], HIGHER).call()
    chain.send(attacker.functions.bid(lots[0], PRICE), stranger, value=deposit)
    chain.send(chain.market.functions.bid(lots[0], HIGHER), rival, value=higher)
    chain.send(chain.market.functions.bid(lots[1], PRICE), rival, value=deposit)
    chain.send(chain.market.functions.bid(lots[1], HIGHER), buyer, value=higher)
    assert credit(chain, attacker.address) == deposit
    assert credit(chain, rival) == deposit
    assert chain.balance(chain.market.address) == 2 * deposit + 2 * higher
    return Auction(attacker, lots[0], lots[1], lots[2], deposit, higher, attacker_meter)


@pytest.fixture
def reentrant(
    chain: Chain, operator: str, seller: str, buyer: str, rival: str, supply_meter: str,
    stranger: str,
) -> Auction:
    """The auction with a ReentrantBidder as the outbid attacker."""
    return setup_auction(
        chain, "ReentrantBidder", operator, seller, buyer, rival, supply_meter, stranger
    )


@pytest.fixture
def griefer(
    chain: Chain, operator: str, seller: str, buyer: str, rival: str, supply_meter: str,
    stranger: str,
) -> Auction:
    """The auction with a RevertingBidder as the outbid attacker."""
    return setup_auction(
        chain, "RevertingBidder", operator, seller, buyer, rival, supply_meter, stranger
    )


def attempts(attacker: Contract) -> list[tuple[int, bool, bytes]]:
    """The attacker's recorded re-entry attempts as (kind, ok, revert data)."""
    count = attacker.functions.attemptCount().call()
    return [tuple(attacker.functions.attempts(i).call()) for i in range(count)]


# --- re-entrancy -------------------------------------------------------------------------------


def test_reentrant_withdraw_is_refused_and_the_whole_withdrawal_fails(chain, reentrant, rival,
                                                                        stranger):
    attacker = reentrant.attacker
    market_before = chain.balance(chain.market.address)
    chain.send(attacker.functions.arm(REENTER_WITHDRAW, True, 0, 0, 0, 0), stranger)

    # The re-entrant withdraw hits the guard; the attacker re-throws it, so the market's send
    # fails and the market reports its own error with the full credit.
    with reverts("MarketWithdrawalFailed", attacker.address, reentrant.deposit):
        chain.send(attacker.functions.withdraw(), stranger)

    assert credit(chain, attacker.address) == reentrant.deposit
    assert chain.balance(chain.market.address) == market_before
    assert chain.balance(attacker.address) == 0
    assert attacker.functions.received().call() == 0
    assert credit(chain, rival) == reentrant.deposit


def test_reentrant_withdraw_that_swallows_the_guard_gets_exactly_its_credit(chain, reentrant,
                                                                             rival, stranger):
    attacker = reentrant.attacker
    market_before = chain.balance(chain.market.address)
    chain.send(attacker.functions.arm(REENTER_WITHDRAW, False, 0, 0, 0, 0), stranger)

    receipt = chain.send(attacker.functions.withdraw(), stranger)

    withdrawn = [e.args for e in chain.events(receipt) if e.name == "Withdrawn"]
    assert withdrawn == [{"account": attacker.address, "amountWei": reentrant.deposit}]
    assert attempts(attacker) == [(REENTER_WITHDRAW, False, REENTRANCY_GUARD_ERROR)]
    assert attacker.functions.received().call() == reentrant.deposit
    assert chain.balance(attacker.address) == reentrant.deposit
    assert chain.balance(chain.market.address) == market_before - reentrant.deposit
    assert credit(chain, attacker.address) == 0
    assert credit(chain, rival) == reentrant.deposit
    # The escrow of both running auctions is untouched.
    assert chain.market.functions.lotOf(reentrant.lot1).call()[8] == reentrant.higher_deposit
    assert chain.market.functions.lotOf(reentrant.lot2).call()[8] == reentrant.higher_deposit
    with reverts("MarketNothingToWithdraw", attacker.address):
        chain.send(attacker.functions.withdraw(), stranger)


def test_reentrant_bid_only_spends_the_attackers_own_withdrawn_ether(chain, reentrant, rival,
                                                                       stranger):
    attacker = reentrant.attacker
    market_before = chain.balance(chain.market.address)
    chain.send(
        attacker.functions.arm(
            REENTER_WITHDRAW | REENTER_BID, False, reentrant.lot3, PRICE, reentrant.deposit, 0
        ),
        stranger,
    )

    receipt = chain.send(attacker.functions.withdraw(), stranger)

    # bid is not guarded and need not be: the credit was zeroed before the send, so the bid is
    # an ordinary one paid with Ether the attacker really received.
    assert [(kind, ok) for kind, ok, _ in attempts(attacker)] == [
        (REENTER_WITHDRAW, False), (REENTER_BID, True)
    ]
    names = [e.name for e in chain.events(receipt)]
    assert names == ["Withdrawn", "BidPlaced"]
    lot3 = chain.market.functions.lotOf(reentrant.lot3).call()
    assert (lot3[2], lot3[8]) == (attacker.address, reentrant.deposit)
    assert attacker.functions.received().call() == reentrant.deposit
    assert chain.balance(attacker.address) == 0
    assert chain.balance(chain.market.address) == market_before
    assert credit(chain, attacker.address) == 0
    assert credit(chain, rival) == reentrant.deposit


def test_reentrant_close_keeps_the_refund_as_credit(chain, reentrant, seller, rival, stranger):
    attacker = reentrant.attacker
    # The attacker wins lot 3 and its trade opens.
    chain.send(attacker.functions.bid(reentrant.lot3, PRICE), stranger, value=reentrant.deposit)
    chain.advance(DURATION)
    chain.send(chain.market.functions.finalize(reentrant.lot3), stranger)
    seller_tokens = chain.token.functions.balanceOf(seller).call()
    market_before = chain.balance(chain.market.address)
    chain.send(
        attacker.functions.arm(
            REENTER_WITHDRAW | REENTER_CLOSE, False, 0, 0, 0, reentrant.lot3
        ),
        stranger,
    )

    chain.send(attacker.functions.withdraw(), stranger)

    assert [(kind, ok) for kind, ok, _ in attempts(attacker)] == [
        (REENTER_WITHDRAW, False), (REENTER_CLOSE, True)
    ]
    # The re-entrant close is only the request (two-phase close); the meter's next reading
    # closes the trade, and the refund credited then is neither lost nor paid twice.
    assert attacker.functions.received().call() == reentrant.deposit
    assert credit(chain, attacker.address) == 0
    assert chain.market.functions.lotOf(reentrant.lot3).call()[10] != 0  # close requested
    chain.advance(1)
    report(chain, reentrant.meter, 0)  # a heartbeat
    refund = reentrant.deposit - MIN_FEE  # walking away costs the minimum charge
    assert credit(chain, attacker.address) == refund
    assert credit(chain, seller) == MIN_FEE
    assert chain.balance(chain.market.address) == market_before - reentrant.deposit
    assert chain.market.functions.lotOf(reentrant.lot3).call()[0] == 3  # Closed
    assert chain.token.functions.balanceOf(seller).call() == seller_tokens + LOT_WH

    chain.send(attacker.functions.withdraw(), stranger)
    assert attacker.functions.received().call() == reentrant.deposit + refund
    assert chain.balance(chain.market.address) == market_before - reentrant.deposit - refund
    assert credit(chain, rival) == reentrant.deposit


# --- a bidder that refuses Ether ----------------------------------------------------------------


def test_refusing_bidder_cannot_block_a_higher_bid(chain, griefer, buyer, stranger):
    higher = chain.market.functions.depositFor(griefer.lot3, HIGHER).call()
    chain.send(griefer.attacker.functions.bid(griefer.lot3, PRICE), stranger, value=griefer.deposit)

    receipt = chain.send(chain.market.functions.bid(griefer.lot3, HIGHER), buyer, value=higher)

    credited = [e.args for e in chain.events(receipt) if e.name == "Credited"]
    assert credited == [
        {"account": griefer.attacker.address, "lotId": griefer.lot3, "amountWei": griefer.deposit}
    ]
    assert chain.market.functions.lotOf(griefer.lot3).call()[2] == buyer
    assert credit(chain, griefer.attacker.address) == 2 * griefer.deposit


def test_refusing_bidder_cannot_block_finalize_or_closing(chain, griefer, seller, stranger):
    attacker = griefer.attacker
    chain.send(attacker.functions.bid(griefer.lot3, PRICE), stranger, value=griefer.deposit)
    chain.advance(DURATION)

    for lot in (griefer.lot1, griefer.lot3):  # outbid on one, winning the other
        chain.send(chain.market.functions.finalize(lot), stranger)
        assert chain.market.functions.lotOf(lot).call()[0] == 2  # Open
    assert chain.market.functions.lotOf(griefer.lot3).call()[2] == attacker.address

    # The seller may close the trade of a silent buyer after the stall timeout, charging the
    # silence (3,000 W x 900 s = 750 Wh); the refund is credited.
    chain.advance(PARAMS.stall_timeout)
    receipt = chain.send(chain.market.functions.closeConnection(griefer.lot3), seller)
    assert [e.name for e in chain.events(receipt)] == [
        "StallCharged", "DeliverySettled", "ConnectionClosed", "Credited", "Transfer", "Transfer"
    ]
    refund = griefer.deposit - PRICE * 750 // 1000
    assert credit(chain, attacker.address) == griefer.deposit + refund


def test_refusing_bidder_cannot_block_anyone_elses_withdrawal(chain, griefer, rival):
    market_before = chain.balance(chain.market.address)
    rival_before = chain.balance(rival)

    receipt = chain.send(chain.market.functions.withdraw(), rival)

    assert chain.balance(rival) == rival_before + griefer.deposit - gas_cost(receipt)
    assert chain.balance(chain.market.address) == market_before - griefer.deposit
    assert credit(chain, griefer.attacker.address) == griefer.deposit


def test_refusing_bidder_own_withdrawal_fails_and_its_credit_stays(chain, griefer, rival,
                                                                    stranger):
    attacker = griefer.attacker
    market_before = chain.balance(chain.market.address)

    with reverts("MarketWithdrawalFailed", attacker.address, griefer.deposit):
        chain.send(attacker.functions.withdraw(), stranger)

    assert credit(chain, attacker.address) == griefer.deposit
    assert chain.balance(chain.market.address) == market_before
    assert chain.balance(attacker.address) == 0
    assert credit(chain, rival) == griefer.deposit


# --- the operator cannot attach a meter to a buyer ---------------------------------------------


def test_an_operator_load_meter_for_a_buyer_cannot_spend_its_escrow(
    chain, operator, seller, buyer, supply_meter, load_meter
):
    """The operator offers itself a second "load meter" for the buyer: nothing is ever settled."""
    mint(chain, operator, supply_meter, seller, LOT_WH)
    install_meter(chain, operator, load_meter, buyer, LOAD, 3_000)
    lot = list_lot(chain, seller)
    deposit = chain.market.functions.depositFor(lot, PRICE).call()
    chain.send(chain.market.functions.bid(lot, PRICE), buyer, value=deposit)
    chain.advance(DURATION)
    chain.send(chain.market.functions.finalize(lot), seller)

    rogue = chain.new_key("the operator's rogue meter")
    chain.send(chain.registry.functions.offerMeter(rogue, buyer, LOAD, 65_535), operator)
    chain.advance(3_600)
    # Not accepted: its readings are refused, whoever carries them.
    for sender in (operator, seller):
        with reverts("MeterNotAccepted", rogue):
            report(chain, rogue, 1_000, sender=sender)
    # The buyer cannot be made to accept it either while its own load meter is active.
    with reverts("MeterLoadMeterExists", buyer, load_meter):
        chain.send(chain.registry.functions.acceptMeter(rogue), buyer)
    lot_info = chain.market.functions.lotOf(lot).call()
    assert (lot_info[6], lot_info[9]) == (0, 0)  # deliveredWh, paidWei
    assert credit(chain, seller) == 0
    assert chain.balance(chain.market.address) == deposit
