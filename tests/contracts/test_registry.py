"""MeterRegistry: offers need the owner's consent; signed readings are verified, then count."""

import pytest
from eth_account import Account
from eth_utils import function_signature_to_4byte_selector

from tests.contracts.conftest import Chain, reverts
from tests.contracts.helpers import (
    DAY,
    LOAD,
    LOAD_W,
    SUPPLY,
    SUPPLY_W,
    ZERO_ADDRESS,
    Meter,
    MeterStatus,
    accept_meter,
    block_time,
    install_meter,
    measure,
    meter_of,
    offer_meter,
    packed,
    register_meter,
    registry_event,
    report,
    report_batch,
    run_ahead_of_wall_clock,
    signed,
    supply,
    tokens,
    transfer,
    unchanged,
)

BASELINE = 10_000  # Wh on the counter when the meter was installed
MAX_COUNTER = 2**64 - 1
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
ITEM_BYTES = 109  # one packed reportBatch item
OFFERED, ACTIVE, DECLINED, DEACTIVATED = (
    MeterStatus.OFFERED,
    MeterStatus.ACTIVE,
    MeterStatus.DECLINED,
    MeterStatus.DEACTIVATED,
)


@pytest.fixture(autouse=True)
def _clock(chain: Chain) -> None:
    """Exact block times for every test (see tests/contracts/helpers.py)."""
    run_ahead_of_wall_clock(chain)


@pytest.fixture
def operator_role(chain: Chain) -> bytes:
    """OPERATOR_ROLE's id."""
    return chain.registry.functions.OPERATOR_ROLE().call()


@pytest.fixture
def installed(chain: Chain, operator: str, seller: str, supply_meter: str) -> None:
    """The seller's supply meter is offered, accepted and has sent its baseline reading."""
    install_meter(chain, operator, supply_meter, seller, SUPPLY, SUPPLY_W, BASELINE)


def recorded(meter: str, energy_wh: int, sequence: int, delta_wh: int):
    """The ReadingRecorded event of an accepted reading."""
    return registry_event(
        "ReadingRecorded", meter=meter, energyWh=energy_wh, sequence=sequence, deltaWh=delta_wh
    )


# --- offers and consent ----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "rated_w"), [(SUPPLY, SUPPLY_W), (LOAD, 1), (LOAD, 65_535)])
def test_offer_then_accept(
    chain: Chain, operator: str, seller: str, supply_meter: str, kind: int, rated_w: int
):
    receipt = offer_meter(chain, operator, supply_meter, seller, kind, rated_w)
    assert chain.events(receipt) == [
        registry_event(
            "MeterOffered", meter=supply_meter, owner=seller, kind=kind, ratedPowerW=rated_w
        )
    ]
    assert meter_of(chain, supply_meter) == Meter(seller, kind, OFFERED, rated_w, 0, 0, 0)
    assert chain.registry.functions.loadMeterOf(seller).call() == ZERO_ADDRESS

    receipt = accept_meter(chain, seller, supply_meter)
    assert chain.events(receipt) == [
        registry_event("MeterAccepted", meter=supply_meter, owner=seller)
    ]
    assert meter_of(chain, supply_meter) == Meter(seller, kind, ACTIVE, rated_w, 0, 0, 0)
    expected = supply_meter if kind == LOAD else ZERO_ADDRESS
    assert chain.registry.functions.loadMeterOf(seller).call() == expected


def test_decline(chain: Chain, operator: str, seller: str, buyer: str, supply_meter: str):
    offer_meter(chain, operator, supply_meter, seller, LOAD, LOAD_W)
    receipt = chain.send(chain.registry.functions.declineMeter(supply_meter), seller)
    assert chain.events(receipt) == [
        registry_event("MeterDeclined", meter=supply_meter, owner=seller)
    ]
    assert meter_of(chain, supply_meter) == Meter(seller, LOAD, DECLINED, LOAD_W, 0, 0, 0)
    assert chain.registry.functions.loadMeterOf(seller).call() == ZERO_ADDRESS
    with reverts("MeterInactive", supply_meter, DECLINED):
        accept_meter(chain, seller, supply_meter)
    # A declined offer (say, to the wrong household) may be made again, to the right one.
    offer_meter(chain, operator, supply_meter, buyer, LOAD, LOAD_W)
    accept_meter(chain, buyer, supply_meter)
    assert meter_of(chain, supply_meter) == Meter(buyer, LOAD, ACTIVE, LOAD_W, 0, 0, 0)


def test_unregistered_meter_reads_as_empty(chain: Chain, stranger: str):
    assert meter_of(chain, stranger) == Meter(ZERO_ADDRESS, SUPPLY, MeterStatus.NONE, 0, 0, 0, 0)


@pytest.mark.parametrize("action", ["acceptMeter", "declineMeter"])
@pytest.mark.parametrize("caller", ["buyer", "operator", "stranger", "supply_meter"])
def test_only_the_offered_owner_accepts_or_declines(
    chain: Chain,
    request: pytest.FixtureRequest,
    operator: str,
    seller: str,
    supply_meter: str,
    action: str,
    caller: str,
):
    offer_meter(chain, operator, supply_meter, seller, SUPPLY, SUPPLY_W)
    who = request.getfixturevalue(caller)
    fn = getattr(chain.registry.functions, action)(supply_meter)
    with unchanged(chain, [who], [supply_meter]), reverts("MeterNotOwner", supply_meter, who):
        chain.send(fn, who)


@pytest.mark.parametrize("action", ["acceptMeter", "declineMeter"])
@pytest.mark.parametrize("state", ["none", "active", "declined", "deactivated"])
def test_accept_or_decline_needs_an_open_offer(
    chain: Chain, operator: str, seller: str, supply_meter: str, action: str, state: str
):
    status = {"none": MeterStatus.NONE, "active": ACTIVE, "declined": DECLINED}.get(
        state, DEACTIVATED
    )
    if state != "none":
        offer_meter(chain, operator, supply_meter, seller, SUPPLY, SUPPLY_W)
    if state == "active":
        accept_meter(chain, seller, supply_meter)
    elif state == "declined":
        chain.send(chain.registry.functions.declineMeter(supply_meter), seller)
    elif state == "deactivated":
        chain.send(chain.registry.functions.deactivateMeter(supply_meter), operator)
    fn = getattr(chain.registry.functions, action)(supply_meter)
    expected = (
        ("MeterNotRegistered", supply_meter)
        if state == "none"
        else ("MeterInactive", supply_meter, status)
    )
    with unchanged(chain, [seller], [supply_meter]), reverts(*expected):
        chain.send(fn, seller)


def test_second_load_meter_for_the_same_owner_is_refused(
    chain: Chain, operator: str, buyer: str, load_meter: str, stranger: str
):
    second = chain.new_key("second load meter")
    register_meter(chain, operator, load_meter, buyer, LOAD, LOAD_W)
    offer_meter(chain, operator, second, buyer, LOAD, LOAD_W)  # an offer alone is harmless
    with (
        unchanged(chain, [buyer], [second, load_meter]),
        reverts("MeterLoadMeterExists", buyer, load_meter),
    ):
        accept_meter(chain, buyer, second)
    assert chain.registry.functions.loadMeterOf(buyer).call() == load_meter
    # Once the operator deactivates the first, the owner may accept the replacement.
    chain.send(chain.registry.functions.deactivateMeter(load_meter), operator)
    assert chain.registry.functions.loadMeterOf(buyer).call() == ZERO_ADDRESS
    accept_meter(chain, buyer, second)
    assert chain.registry.functions.loadMeterOf(buyer).call() == second


def test_an_owner_may_have_several_supply_meters(
    chain: Chain, operator: str, seller: str, supply_meter: str
):
    second = chain.new_key("second supply meter")
    install_meter(chain, operator, supply_meter, seller, SUPPLY, SUPPLY_W)
    install_meter(chain, operator, second, seller, SUPPLY, SUPPLY_W)
    measure(chain, supply_meter, 100)
    measure(chain, second, 50)
    assert tokens(chain, seller) == 150


@pytest.mark.parametrize("caller", ["seller", "stranger", "supply_meter"])
def test_offer_needs_the_operator_role(
    chain: Chain,
    request: pytest.FixtureRequest,
    operator_role: bytes,
    seller: str,
    supply_meter: str,
    caller: str,
):
    who = request.getfixturevalue(caller)
    with (
        unchanged(chain, [who], [supply_meter]),
        reverts("AccessControlUnauthorizedAccount", who, operator_role),
    ):
        offer_meter(chain, who, supply_meter, seller, SUPPLY, SUPPLY_W)


@pytest.mark.parametrize(
    ("meter", "owner", "kind", "rated_w", "error"),
    [
        (ZERO_ADDRESS, "seller", SUPPLY, SUPPLY_W, "MeterZeroAddress"),
        ("supply_meter", ZERO_ADDRESS, SUPPLY, SUPPLY_W, "MeterZeroAddress"),
        ("supply_meter", "seller", LOAD, 0, "MeterZeroRatedPower"),
        # The ABI decoder refuses a kind outside the enum, without a reason.
        ("supply_meter", "seller", 2, SUPPLY_W, "Reverted"),
    ],
)
def test_offer_refuses_bad_input(
    chain: Chain,
    request: pytest.FixtureRequest,
    operator: str,
    supply_meter: str,
    meter: str,
    owner: str,
    kind: int,
    rated_w: int,
    error: str,
):
    meter, owner = (x if x == ZERO_ADDRESS else request.getfixturevalue(x) for x in (meter, owner))
    with unchanged(chain, [operator], [supply_meter]), reverts(error):
        offer_meter(chain, operator, meter, owner, kind, rated_w)


@pytest.mark.parametrize("state", ["offered", "active", "deactivated"])
def test_meters_are_never_offered_twice(
    chain: Chain, operator: str, seller: str, buyer: str, supply_meter: str, state: str
):
    offer_meter(chain, operator, supply_meter, seller, SUPPLY, SUPPLY_W)
    status = OFFERED
    if state == "active":
        accept_meter(chain, seller, supply_meter)
        status = ACTIVE
    elif state == "deactivated":
        chain.send(chain.registry.functions.deactivateMeter(supply_meter), operator)
        status = DEACTIVATED
    with (
        unchanged(chain, [operator], [supply_meter]),
        reverts("MeterAlreadyRegistered", supply_meter, status),
    ):
        offer_meter(chain, operator, supply_meter, buyer, LOAD, LOAD_W)


def test_the_admin_grants_and_revokes_the_operator_role(
    chain: Chain, operator: str, operator_role: bytes, stranger: str, seller: str, load_meter: str
):
    receipt = chain.send(chain.registry.functions.grantRole(operator_role, stranger), operator)
    assert chain.events(receipt) == [
        registry_event("RoleGranted", role=operator_role, account=stranger, sender=operator)
    ]
    offer_meter(chain, stranger, load_meter, seller, LOAD, LOAD_W)
    assert meter_of(chain, load_meter).owner == seller

    receipt = chain.send(chain.registry.functions.revokeRole(operator_role, stranger), operator)
    assert chain.events(receipt) == [
        registry_event("RoleRevoked", role=operator_role, account=stranger, sender=operator)
    ]
    with reverts("AccessControlUnauthorizedAccount", stranger, operator_role):
        chain.send(chain.registry.functions.deactivateMeter(load_meter), stranger)


def test_only_the_admin_grants_roles(chain: Chain, operator_role: bytes, stranger: str):
    admin_role = chain.registry.functions.DEFAULT_ADMIN_ROLE().call()
    with reverts("AccessControlUnauthorizedAccount", stranger, admin_role):
        chain.send(chain.registry.functions.grantRole(operator_role, stranger), stranger)
    assert not chain.registry.functions.hasRole(operator_role, stranger).call()


# --- deactivation ----------------------------------------------------------------------------


@pytest.mark.usefixtures("installed")
def test_deactivate(chain: Chain, operator: str, seller: str, supply_meter: str):
    before = meter_of(chain, supply_meter)
    receipt = chain.send(chain.registry.functions.deactivateMeter(supply_meter), operator)
    assert chain.events(receipt) == [
        registry_event("MeterDeactivated", meter=supply_meter, owner=seller)
    ]
    assert meter_of(chain, supply_meter) == before._replace(status=DEACTIVATED)


def test_deactivate_withdraws_an_offer(chain: Chain, operator: str, seller: str, supply_meter: str):
    offer_meter(chain, operator, supply_meter, seller, SUPPLY, SUPPLY_W)
    receipt = chain.send(chain.registry.functions.deactivateMeter(supply_meter), operator)
    assert chain.events(receipt) == [
        registry_event("MeterDeactivated", meter=supply_meter, owner=seller)
    ]
    with reverts("MeterInactive", supply_meter, DEACTIVATED):
        accept_meter(chain, seller, supply_meter)


@pytest.mark.usefixtures("installed")
def test_deactivate_needs_the_operator_role(
    chain: Chain, operator_role: bytes, seller: str, supply_meter: str
):
    with (
        unchanged(chain, [seller], [supply_meter]),
        reverts("AccessControlUnauthorizedAccount", seller, operator_role),
    ):
        chain.send(chain.registry.functions.deactivateMeter(supply_meter), seller)


def test_deactivate_unknown_meter(chain: Chain, operator: str, stranger: str):
    with unchanged(chain, [operator], [stranger]), reverts("MeterNotRegistered", stranger):
        chain.send(chain.registry.functions.deactivateMeter(stranger), operator)


@pytest.mark.usefixtures("installed")
def test_deactivate_twice(chain: Chain, operator: str, supply_meter: str):
    chain.send(chain.registry.functions.deactivateMeter(supply_meter), operator)
    with (
        unchanged(chain, [operator], [supply_meter]),
        reverts("MeterInactive", supply_meter, DEACTIVATED),
    ):
        chain.send(chain.registry.functions.deactivateMeter(supply_meter), operator)


# --- readings --------------------------------------------------------------------------------


@pytest.mark.parametrize("counter", [0, BASELINE, MAX_COUNTER])
def test_baseline_reading_mints_nothing(
    chain: Chain, operator: str, seller: str, supply_meter: str, counter: int
):
    register_meter(chain, operator, supply_meter, seller, SUPPLY, SUPPLY_W)
    chain.advance(DAY)  # however long the meter was unread, the baseline is free
    receipt = report(chain, supply_meter, counter, 7)
    assert chain.events(receipt) == [recorded(supply_meter, counter, 7, 0)]
    assert meter_of(chain, supply_meter) == Meter(
        seller, SUPPLY, ACTIVE, SUPPLY_W, counter, 7, block_time(chain, receipt)
    )
    assert tokens(chain, seller) == 0
    assert supply(chain) == 0


def test_a_meter_needs_no_ether_and_anyone_may_carry_its_readings(
    chain: Chain, operator: str, seller: str, stranger: str
):
    meter = chain.new_key("a meter with no Ether")
    install_meter(chain, operator, meter, seller, SUPPLY, SUPPLY_W, BASELINE)
    chain.advance(3_600)
    receipt = report(chain, meter, BASELINE + 700, sender=stranger)  # a neighbour's server
    assert receipt["from"] == stranger
    assert chain.events(receipt) == [
        recorded(meter, BASELINE + 700, 2, 700),
        transfer(ZERO_ADDRESS, seller, 700),
    ]
    assert chain.balance(meter) == 0
    assert (tokens(chain, seller), tokens(chain, stranger)) == (700, 0)


@pytest.mark.usefixtures("installed")
def test_supply_increase_mints_the_delta_to_the_owner(chain: Chain, seller: str, supply_meter: str):
    receipt = measure(chain, supply_meter, 2_500)
    assert chain.events(receipt) == [
        recorded(supply_meter, BASELINE + 2_500, 2, 2_500),
        transfer(ZERO_ADDRESS, seller, 2_500),
    ]
    receipt = measure(chain, supply_meter, 1)
    assert chain.events(receipt)[1:] == [transfer(ZERO_ADDRESS, seller, 1)]
    assert tokens(chain, seller) == 2_501
    assert supply(chain) == 2_501
    info = meter_of(chain, supply_meter)
    assert (info.energy_wh, info.sequence, info.read_at) == (
        BASELINE + 2_501,
        3,
        block_time(chain, receipt),
    )


def test_tokens_go_to_the_owner_not_the_meter_key(
    chain: Chain, operator: str, seller: str, buyer: str, supply_meter: str
):
    install_meter(chain, operator, supply_meter, buyer, SUPPLY, SUPPLY_W)
    measure(chain, supply_meter, 100)
    assert (tokens(chain, buyer), tokens(chain, supply_meter), tokens(chain, seller)) == (
        100,
        0,
        0,
    )


def test_load_increase_without_trades_mints_and_bills_nothing(
    chain: Chain, operator: str, buyer: str, load_meter: str
):
    install_meter(chain, operator, load_meter, buyer, LOAD, LOAD_W, BASELINE)
    with unchanged(chain, [buyer]):
        receipt = measure(chain, load_meter, 700)
    assert chain.events(receipt) == [recorded(load_meter, BASELINE + 700, 2, 700)]
    assert meter_of(chain, load_meter).energy_wh == BASELINE + 700


@pytest.mark.usefixtures("installed")
def test_heartbeat_refreshes_the_reading_time_and_mints_nothing(
    chain: Chain, seller: str, supply_meter: str
):
    chain.advance(600)
    with unchanged(chain, [seller]):
        receipt = report(chain, supply_meter, BASELINE)
    assert chain.events(receipt) == [recorded(supply_meter, BASELINE, 2, 0)]
    assert meter_of(chain, supply_meter) == Meter(
        seller, SUPPLY, ACTIVE, SUPPLY_W, BASELINE, 2, block_time(chain, receipt)
    )


def test_unregistered_address_cannot_report(chain: Chain, stranger: str):
    with unchanged(chain, [stranger], [stranger]), reverts("MeterNotRegistered", stranger):
        report(chain, stranger, 1)


def test_offered_but_not_accepted_meter_mints_nothing(
    chain: Chain, operator: str, seller: str, supply_meter: str
):
    offer_meter(chain, operator, supply_meter, seller, SUPPLY, SUPPLY_W)
    for counter in (BASELINE, BASELINE + 100):
        chain.advance(3_600)
        with (
            unchanged(chain, [seller], [supply_meter]),
            reverts("MeterNotAccepted", supply_meter),
        ):
            report(chain, supply_meter, counter)
    assert supply(chain) == 0


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("counter", [BASELINE - 1, 0])
def test_counter_never_goes_back(chain: Chain, seller: str, supply_meter: str, counter: int):
    chain.advance(3_600)  # plenty of time: only the counter is wrong
    with (
        unchanged(chain, [seller], [supply_meter]),
        reverts("MeterReadingBackwards", BASELINE, counter),
    ):
        report(chain, supply_meter, counter)


@pytest.mark.usefixtures("installed")
def test_replayed_reading_is_refused(chain: Chain, seller: str, supply_meter: str):
    first = signed(chain, supply_meter, BASELINE + 500)
    chain.advance(600)
    chain.send(chain.registry.functions.report(*first), chain.carrier)
    measure(chain, supply_meter, 100)
    chain.advance(600)
    for old in (first, signed(chain, supply_meter, BASELINE + 100, 1)):  # the baseline's number
        with (
            unchanged(chain, [seller], [supply_meter]),
            reverts("MeterSequenceNotNewer", 3, old[2]),
        ):
            chain.send(chain.registry.functions.report(*old), chain.carrier)
    assert tokens(chain, seller) == 600


@pytest.mark.usefixtures("installed")
def test_sequence_numbers_may_skip(chain: Chain, seller: str, supply_meter: str):
    chain.advance(600)
    receipt = report(chain, supply_meter, BASELINE + 10, 1_000)  # readings the host withheld
    assert chain.events(receipt)[0] == recorded(supply_meter, BASELINE + 10, 1_000, 10)
    assert tokens(chain, seller) == 10


def forgeries(chain: Chain, meter: str, energy_wh: int, sequence: int) -> dict[str, bytes]:
    """Signatures a host might try instead of the meter's own, by name."""
    other_chain = chain.w3.eth.chain_id + 1
    other_registry = chain.market.address  # any other verifying contract
    good = bytearray(chain.sign_reading(meter, energy_wh, sequence))
    flipped = bytearray(good)
    flipped[10] ^= 1
    # The same signature's twin (n - s, v flipped): ecrecover accepts it, the registry must not.
    s = int.from_bytes(good[32:64], "big")
    twin = good[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - good[64]])
    return {
        "other chain id": chain.sign_reading(meter, energy_wh, sequence, chain_id=other_chain),
        "other registry": chain.sign_reading(meter, energy_wh, sequence, registry=other_registry),
        "other meter": chain.sign_reading(meter, energy_wh, sequence, key=b"\x22" * 32),
        "another counter": chain.sign_reading(meter, energy_wh - 1, sequence),
        "another block hash": chain.sign_reading(meter, energy_wh, sequence,
                                                 block_hash=b"\x5a" * 32),
        "an earlier block": chain.sign_reading(meter, energy_wh, sequence,
                                               chain.w3.eth.block_number - 1),
        "bit flipped": bytes(flipped),
        "truncated": bytes(good[:64]),
        "empty": b"",
        "too long": bytes(good) + b"\x00",
        "high s": bytes(twin),
        "v as 0 or 1": bytes(good[:64]) + bytes([good[64] - 27]),
    }


FORGERIES = [
    "other chain id",
    "other registry",
    "other meter",
    "another counter",
    "another block hash",
    "an earlier block",
    "bit flipped",
    "truncated",
    "empty",
    "too long",
    "high s",
    "v as 0 or 1",
]
MALFORMED = ("truncated", "empty", "too long", "high s", "v as 0 or 1")  # recover no signer


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("forgery", FORGERIES)
def test_forged_signatures_are_refused(chain: Chain, seller: str, supply_meter: str, forgery: str):
    chain.advance(3_600)
    counter = BASELINE + 1_000
    signature = forgeries(chain, supply_meter, counter, 2)[forgery]
    latest = chain.w3.eth.block_number  # what the good signature signed
    fn = chain.registry.functions.report(supply_meter, counter, 2, latest, signature)
    with unchanged(chain, [seller], [supply_meter]), reverts("MeterSignatureInvalid") as caught:
        chain.send(fn, chain.carrier)
    meter, signer = caught[0].args_
    assert meter == supply_meter and signer != supply_meter
    if forgery == "other meter":
        assert signer == Account.from_key(b"\x22" * 32).address
    if forgery in MALFORMED:
        assert signer == ZERO_ADDRESS
    assert supply(chain) == 0


@pytest.mark.usefixtures("installed")
def test_a_reading_signed_by_another_registered_meter_is_refused(
    chain: Chain, operator: str, seller: str, buyer: str, supply_meter: str
):
    other = chain.new_key("the buyer's own supply meter")
    install_meter(chain, operator, other, buyer, SUPPLY, SUPPLY_W)
    chain.advance(3_600)
    # The buyer's meter signs a reading naming the seller's meter: it is not the seller's key.
    signature = chain.sign_reading(supply_meter, BASELINE + 1_000, 2, key=chain._keys[other])
    latest = chain.w3.eth.block_number
    fn = chain.registry.functions.report(supply_meter, BASELINE + 1_000, 2, latest, signature)
    with reverts("MeterSignatureInvalid", supply_meter, other):
        chain.send(fn, chain.carrier)
    assert (tokens(chain, seller), tokens(chain, buyer)) == (0, 0)


@pytest.mark.parametrize(
    ("kind", "rated_w", "elapsed"),
    [
        (SUPPLY, 3_600, 10),  # exactly 1 Wh per second
        (SUPPLY, 5_000, 7),  # 9.72 Wh -> 9
        (LOAD, 3_000, 1),  # the very next second: 0.83 Wh -> 0, any increase is too much
        (SUPPLY, 65_535, 3_600),  # the largest rating, an hour
        (LOAD, 1, 7_199),  # 1 W for just under 2 h: 1 Wh
    ],
)
def test_increase_is_capped_by_rated_power(
    chain: Chain,
    operator: str,
    seller: str,
    supply_meter: str,
    kind: int,
    rated_w: int,
    elapsed: int,
):
    install_meter(chain, operator, supply_meter, seller, kind, rated_w, BASELINE)
    max_wh = rated_w * elapsed // 3600
    chain.advance(elapsed)
    with (
        unchanged(chain, [seller], [supply_meter]),
        reverts("MeterReadingImplausible", max_wh + 1, max_wh, elapsed),
    ):
        report(chain, supply_meter, BASELINE + max_wh + 1)
    if max_wh == 0:
        return
    # The same instant (the refused reading mined no block): the exact maximum is accepted.
    receipt = report(chain, supply_meter, BASELINE + max_wh)
    assert chain.events(receipt)[0] == recorded(supply_meter, BASELINE + max_wh, 2, max_wh)
    assert meter_of(chain, supply_meter).read_at == block_time(chain, receipt)
    assert tokens(chain, seller) == (max_wh if kind == SUPPLY else 0)


@pytest.mark.usefixtures("installed")
def test_plausibility_counts_from_the_last_accepted_reading(
    chain: Chain, seller: str, supply_meter: str
):
    chain.advance(3_600)
    report(chain, supply_meter, BASELINE + 1_000)  # 1 kWh in an hour at 5 kW: 4 kWh unused
    chain.advance(36)  # 5 kW x 36 s = 50 Wh: the unused hour is not saved up
    with reverts("MeterReadingImplausible", 51, 50, 36):
        report(chain, supply_meter, BASELINE + 1_051)
    report(chain, supply_meter, BASELINE + 1_050)
    assert tokens(chain, seller) == 1_050


def test_frequent_readings_lose_no_allowance_to_rounding(
    chain: Chain, operator: str, seller: str, supply_meter: str
):
    """A 1,000 W meter read every 10 s (2.78 Wh each time) gets its full 1,000 Wh an hour."""
    install_meter(chain, operator, supply_meter, seller, SUPPLY, 1_000, 0)
    for step in range(1, 361):
        chain.advance(10)
        report(chain, supply_meter, 1_000 * 10 * step // 3600)  # the meter's whole Wh
    assert tokens(chain, seller) == 1_000
    # Not a Wh more: the allowance carried over is below one Wh.
    chain.advance(3)
    with reverts("MeterReadingImplausible", 1, 0, 3):
        report(chain, supply_meter, 1_001)


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("kind", [SUPPLY, LOAD])
def test_deactivated_meter_cannot_report(
    chain: Chain, operator: str, seller: str, buyer: str, supply_meter: str, load_meter, kind
):
    meter = supply_meter
    if kind == LOAD:
        meter = load_meter
        install_meter(chain, operator, load_meter, buyer, LOAD, LOAD_W, BASELINE)
    chain.send(chain.registry.functions.deactivateMeter(meter), operator)
    chain.advance(3_600)
    with (
        unchanged(chain, [seller, buyer], [meter]),
        reverts("MeterInactive", meter, DEACTIVATED),
    ):
        report(chain, meter, BASELINE + 100)


# --- batches ---------------------------------------------------------------------------------


def test_batch_skips_bad_items_and_records_the_rest(
    chain: Chain, operator: str, seller: str, buyer: str, supply_meter: str, stranger: str
):
    second = chain.new_key("the buyer's supply meter")
    install_meter(chain, operator, supply_meter, seller, SUPPLY, SUPPLY_W, BASELINE)
    install_meter(chain, operator, second, buyer, SUPPLY, SUPPLY_W, 0)
    chain.advance(3_600)
    latest = chain.w3.eth.block_number
    forged = (second, 900, 2, latest, chain.sign_reading(second, 900, 2, key=b"\x22" * 32))
    readings = [
        signed(chain, supply_meter, BASELINE + 100, 2),
        forged,
        signed(chain, supply_meter, BASELINE + 50, 3),  # backwards
        signed(chain, second, 300, 2),
        signed(chain, supply_meter, BASELINE + 100, 2),  # replay of the first
        signed(chain, stranger, 5, 1),  # not a meter
        signed(chain, supply_meter, BASELINE + 100_000, 4),  # implausible
        signed(chain, supply_meter, BASELINE + 100, 5),  # a heartbeat (same block: no allowance)
    ]
    receipt = report_batch(chain, readings)

    def rejected(meter: str, sequence: int, error: str):
        return registry_event(
            "ReadingRejected", meter=meter, sequence=sequence, reason=error_selector(chain, error)
        )

    assert chain.events(receipt) == [
        recorded(supply_meter, BASELINE + 100, 2, 100),
        transfer(ZERO_ADDRESS, seller, 100),
        rejected(second, 2, "MeterSignatureInvalid"),
        rejected(supply_meter, 3, "MeterReadingBackwards"),
        recorded(second, 300, 2, 300),
        transfer(ZERO_ADDRESS, buyer, 300),
        rejected(supply_meter, 2, "MeterSequenceNotNewer"),
        rejected(stranger, 1, "MeterNotRegistered"),
        rejected(supply_meter, 4, "MeterReadingImplausible"),
        recorded(supply_meter, BASELINE + 100, 5, 0),
    ]
    assert (tokens(chain, seller), tokens(chain, buyer)) == (100, 300)
    assert meter_of(chain, supply_meter).sequence == 5


def test_empty_batch_changes_nothing(chain: Chain, seller: str):
    with unchanged(chain, [seller]):
        receipt = report_batch(chain, [])
    assert chain.events(receipt) == []


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("length", [1, ITEM_BYTES - 1, ITEM_BYTES + 1, 3 * ITEM_BYTES - 36])
def test_a_packed_batch_of_a_length_that_is_not_whole_items_is_refused(
    chain: Chain, seller: str, supply_meter: str, length: int
):
    chain.advance(3_600)
    readings = [signed(chain, supply_meter, BASELINE + 100 * i, 1 + i) for i in range(1, 4)]
    fn = chain.registry.functions.reportBatch(packed(readings)[:length])
    with (
        unchanged(chain, [seller], [supply_meter]),
        reverts("MeterBatchMalformed", length),
    ):
        chain.send(fn, chain.carrier)


@pytest.mark.usefixtures("installed")
def test_a_batch_whose_last_item_is_truncated_records_none_of_it(
    chain: Chain, seller: str, supply_meter: str
):
    chain.advance(3_600)
    whole = packed([signed(chain, supply_meter, BASELINE + 100, 2)])
    heartbeat = signed(chain, supply_meter, BASELINE + 100, 3)
    cut = packed([heartbeat])[:-1]  # its v lost on the way
    fn = chain.registry.functions.reportBatch(whole + cut)
    with (
        unchanged(chain, [seller], [supply_meter]),
        reverts("MeterBatchMalformed", 2 * ITEM_BYTES - 1),
    ):
        chain.send(fn, chain.carrier)
    # The same two readings, whole, are recorded.
    receipt = report_batch(chain, [signed(chain, supply_meter, BASELINE + 100, 2), heartbeat])
    assert chain.events(receipt) == [
        recorded(supply_meter, BASELINE + 100, 2, 100),
        transfer(ZERO_ADDRESS, seller, 100),
        recorded(supply_meter, BASELINE + 100, 3, 0),
    ]


@pytest.mark.usefixtures("installed")
def test_a_batch_item_with_a_malformed_signature_is_skipped(
    chain: Chain, operator: str, seller: str, buyer: str, supply_meter: str
):
    second = chain.new_key("the buyer's supply meter")
    install_meter(chain, operator, second, buyer, SUPPLY, SUPPLY_W, 0)
    chain.advance(3_600)
    high_s = forgeries(chain, supply_meter, BASELINE + 100, 2)["high s"]
    receipt = report_batch(chain, [
        (supply_meter, BASELINE + 100, 2, chain.w3.eth.block_number, high_s),
        signed(chain, second, 300, 2),
    ])
    assert chain.events(receipt) == [
        registry_event(
            "ReadingRejected", meter=supply_meter, sequence=2,
            reason=error_selector(chain, "MeterSignatureInvalid"),
        ),
        recorded(second, 300, 2, 300),
        transfer(ZERO_ADDRESS, buyer, 300),
    ]
    assert (tokens(chain, seller), tokens(chain, buyer)) == (0, 300)


def error_selector(chain: Chain, name: str) -> bytes:
    """The 4-byte selector of the registry's custom error `name`."""
    (item,) = [e for e in chain.registry.abi if e["type"] == "error" and e["name"] == name]
    types = ",".join(i["type"] for i in item["inputs"])
    return function_signature_to_4byte_selector(f"{name}({types})")
