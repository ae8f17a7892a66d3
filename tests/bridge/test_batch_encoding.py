"""The client's packed `reportBatch` on the in-process chain: each item judged on its own."""

from __future__ import annotations

from dataclasses import replace

from dapp.bridge import BridgeMeter
from dapp.chain.client import BATCH_BASE_GAS, BATCH_ITEM_GAS, BATCH_MARGIN_GAS, LotStatus
from hardware.signing import BlockRef
from tests.support import SigningMeter, wait_for

MAX_AGE = 32  # MeterRegistry.MAX_READING_AGE_BLOCKS


def test_a_packed_batch_records_good_readings_and_skips_bad_ones(world):
    client = world.client
    owner = world.account()
    meters = [SigningMeter() for _ in range(3)]
    for meter in meters:
        meter.offer_to(client, world.operator, owner)
    domain, block = client.reading_domain(), client.reading_block()
    baselines = [meter.sign(domain, block, 1_000 * (i + 1)) for i, meter in enumerate(meters)]
    outcomes = client.reading_outcomes(client.submit_readings(world.operator, baselines))
    assert [outcomes[(r.meter, r.sequence)].accepted for r in baselines] == [True] * 3

    block = client.reading_block()
    good, forged, short = (meter.sign(domain, block) for meter in meters)  # heartbeats
    forged = replace(forged, signature=good.signature)  # another meter's signature
    short = replace(short, signature=short.signature[:64])  # its v lost
    batch = [good, forged, short]
    outcomes = client.reading_outcomes(client.submit_readings(world.operator, batch))
    assert [(o.accepted, o.reason) for o in (outcomes[(r.meter, r.sequence)] for r in batch)] == [
        (True, None), (False, "MeterSignatureInvalid"), (False, "MeterSignatureInvalid"),
    ]
    assert [client.meter(m.address).sequence for m in meters] == [2, 1, 1]


def test_a_stale_or_unknown_block_is_skipped_by_name_and_the_rest_recorded(world):
    """A batch item signed MAX_READING_AGE_BLOCKS + 1 blocks ago, or for a block not mined
    yet, is skipped with its reason; a fresh one beside it is recorded."""
    client = world.client
    owner = world.account()
    meters = [SigningMeter() for _ in range(3)]
    for meter in meters:
        meter.offer_to(client, world.operator, owner)
    domain = client.reading_domain()
    block = client.reading_block()
    baselines = [meter.sign(domain, block, 1_000) for meter in meters]
    client.reading_outcomes(client.submit_readings(world.operator, baselines))
    old = client.reading_block()
    stale = meters[0].sign(domain, old)
    ahead = BlockRef(old.number + 100, bytes(32))
    while client.reading_block().number < old.number + MAX_AGE:  # 32 blocks: `old` still fresh
        world.advance(1)
    fresh = meters[1].sign(domain, old)  # mined in old + 33: stale too
    unknown = meters[2].sign(domain, ahead)
    batch = [stale, fresh, unknown, meters[2].sign(domain, client.reading_block())]
    outcomes = client.reading_outcomes(client.submit_readings(world.operator, batch))
    assert [(o.accepted, o.reason) for o in (outcomes[(r.meter, r.sequence)] for r in batch)] == [
        (False, "MeterReadingStale"), (False, "MeterReadingStale"),
        (False, "MeterReadingBlockUnknown"), (True, None),
    ]


def test_a_batch_estimated_before_trades_opened_still_settles_them_all(world):
    """The gas of a batch is its estimate on the latest block plus a margin: a load reading in
    it that, by the time it is mined, walks four trades that opened since (and closes them)
    still fits, and the batch costs a fraction of the worst-case bound per item."""
    client = world.client
    seller, buyer = world.accounts(2)
    world.mint(seller, 1_000)
    load = SigningMeter("load")
    load.offer_to(client, world.operator, buyer)
    supplies = [SigningMeter() for _ in range(20)]
    for meter in supplies:
        meter.offer_to(client, world.operator, seller)
    domain, block = client.reading_domain(), client.reading_block()
    baselines = [load.sign(domain, block, 10)] + [m.sign(domain, block, 100) for m in supplies]
    outcomes = client.reading_outcomes(client.submit_readings(world.operator, baselines))
    assert all(outcomes[(r.meter, r.sequence)].accepted for r in baselines)

    # 500 Wh drawn: signed and estimated now, while the buyer has no trade.
    block = client.reading_block()
    batch = [load.sign(domain, block, 510)] + [m.sign(domain, block, 101) for m in supplies]
    gas = client.readings_gas(world.operator.address, batch)
    # Beyond the fixed margin, a quarter of what the worst-case bound per item would reserve.
    assert gas - BATCH_MARGIN_GAS < (BATCH_BASE_GAS + BATCH_ITEM_GAS * len(batch)) // 4
    trades = [world.trade(seller, buyer, 100) for _ in range(5)]
    # Opening the trades took more than MAX_AGE blocks: the meters sign the same counters and
    # sequences again with a recent block (the same bytes but the block number's).
    block = client.reading_block()
    batch = [load.sign(domain, block, 510, load.sequence)] + [
        m.sign(domain, block, 101, m.sequence) for m in supplies]
    tx = client.submit_readings(world.operator, batch, gas=gas)
    outcomes = client.reading_outcomes(tx)
    assert all(outcomes[(r.meter, r.sequence)].accepted for r in batch)
    assert [client.lot(t).status for t in trades] == [LotStatus.CLOSED] * 4 + [LotStatus.OPEN]
    assert client.lot(trades[4]).delivered_wh == 0
    assert client.carried_of(buyer.address) == 100  # beyond the walk: billed next reading
    assert client.token_balance(seller.address) == 1_000 - 500 + 20  # the supply Wh minted


def test_the_margin_covers_three_walks_of_four_trades_the_estimate_did_not_see(world):
    """BATCH_MARGIN_GAS is sized by measurement: what a load reading that completes four
    trades costs more than the same reading with no trade, three times over."""
    client = world.client
    seller, buyer = world.accounts(2)
    world.mint(seller, 1_000)
    load = SigningMeter("load")
    load.offer_to(client, world.operator, buyer)
    helper = SigningMeter()
    helper.offer_to(client, world.operator, seller)
    domain, block = client.reading_domain(), client.reading_block()
    client.reading_outcomes(client.submit_readings(
        world.operator, [load.sign(domain, block, 10), helper.sign(domain, block, 10)]))

    def used(readings: list) -> int:
        tx = client.submit_readings(world.operator, readings)
        client.reading_outcomes(tx)
        return client.wait(tx)["gasUsed"]

    world.advance(60)
    block = client.reading_block()
    quiet = used([load.sign(domain, block, 410), helper.sign(domain, block)])
    for _ in range(4):
        world.trade(seller, buyer, 100)
    world.advance(60)
    block = client.reading_block()
    walk = used([load.sign(domain, block, 810), helper.sign(domain, block)])
    assert 3 * (walk - quiet) <= BATCH_MARGIN_GAS


def test_a_bridge_sends_what_fits_a_block_and_the_rest_next(world, plant, bridges, monkeypatch):
    """With a block too small for more than one reading, the bridge cuts every batch down to
    what fits, puts the rest back and sends it next: every meter's readings reach the chain,
    and no transaction asks for more gas than a block has."""
    owner = world.account()
    servers = [plant.meter("supply") for _ in range(6)]
    meters = [world.give(server, owner) for server in servers]
    client = world.chain_client()
    empty = client.readings_gas(world.operator.address, [])  # a batch's fixed part and margin
    monkeypatch.setattr(client, "block_gas_limit", lambda: empty + 5_000)  # < any one item
    sent: list[tuple[int, int | None]] = []
    real = client.submit_readings

    def recording(sender, readings, concerns=None, gas=None):
        sent.append((len(readings), gas))
        return real(sender, readings, concerns, gas)

    monkeypatch.setattr(client, "submit_readings", recording)
    bridges([BridgeMeter(server.url) for server in servers], client)
    wait_for(lambda: all(world.readings_on_chain(m) >= 2 for m in meters), timeout=90,
             what="two readings of every meter on chain")
    assert sent and {size for size, _ in sent} == {1}  # one `report` each, at its fixed gas
    assert all(gas is not None and gas <= client.block_gas_limit() for _, gas in sent)


def test_the_hand_decoded_reading_events_are_the_registrys():
    """`reading_outcomes` decodes ReadingRecorded and ReadingRejected by hand: their topics and
    data layouts must be the artifact's."""
    from eth_utils import event_abi_to_log_topic

    from dapp.chain.client import READING_RECORDED_TOPIC, READING_REJECTED_TOPIC
    from dapp.chain.contracts import load_artifact

    events = {e["name"]: e for e in load_artifact("MeterRegistry").abi if e["type"] == "event"}
    recorded, rejected = events["ReadingRecorded"], events["ReadingRejected"]
    assert event_abi_to_log_topic(recorded) == READING_RECORDED_TOPIC
    assert event_abi_to_log_topic(rejected) == READING_REJECTED_TOPIC
    assert [(i["name"], i["type"], i["indexed"]) for i in recorded["inputs"]] == [
        ("meter", "address", True), ("energyWh", "uint256", False),
        ("sequence", "uint256", False), ("deltaWh", "uint256", False)]
    assert [(i["name"], i["type"], i["indexed"]) for i in rejected["inputs"]] == [
        ("meter", "address", True), ("sequence", "uint256", False), ("reason", "bytes4", False)]
