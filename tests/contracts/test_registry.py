"""MeterRegistry: the operator registers meters; readings are verified, then mint or settle."""

import pytest

from tests.contracts.conftest import Chain, reverts
from tests.contracts.helpers import (
    DAY,
    LOAD,
    LOAD_W,
    SUPPLY,
    SUPPLY_W,
    ZERO_ADDRESS,
    Meter,
    block_time,
    install_meter,
    measure,
    meter_of,
    register_meter,
    registry_event,
    report,
    run_ahead_of_wall_clock,
    supply,
    tokens,
    transfer,
    unchanged,
)

BASELINE = 10_000  # Wh on the counter when the meter was installed
MAX_COUNTER = 2**40 - 1


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
    """The seller's supply meter is registered and has sent its baseline reading."""
    install_meter(chain, operator, supply_meter, seller, SUPPLY, SUPPLY_W, BASELINE)


# --- registration ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "rated_w"), [(SUPPLY, SUPPLY_W), (LOAD, 1), (LOAD, 65_535)])
def test_register(chain: Chain, operator: str, seller: str, supply_meter: str, kind, rated_w):
    receipt = register_meter(chain, operator, supply_meter, seller, kind, rated_w)
    assert chain.events(receipt) == [
        registry_event(
            "MeterRegistered", meter=supply_meter, owner=seller, kind=kind, ratedPowerW=rated_w
        )
    ]
    assert meter_of(chain, supply_meter) == Meter(seller, kind, True, rated_w, 0, 0)


def test_unregistered_meter_reads_as_empty(chain: Chain, stranger: str):
    assert meter_of(chain, stranger) == Meter(ZERO_ADDRESS, SUPPLY, False, 0, 0, 0)


@pytest.mark.parametrize("caller", ["seller", "stranger", "supply_meter"])
def test_register_needs_the_operator_role(
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
        register_meter(chain, who, supply_meter, seller, SUPPLY, SUPPLY_W)


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
def test_register_refuses_bad_input(
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
        register_meter(chain, operator, meter, owner, kind, rated_w)


@pytest.mark.parametrize("deactivated", [False, True])
def test_meters_are_never_registered_twice(
    chain: Chain, operator: str, seller: str, buyer: str, supply_meter: str, deactivated: bool
):
    register_meter(chain, operator, supply_meter, seller, SUPPLY, SUPPLY_W)
    if deactivated:
        chain.send(chain.registry.functions.deactivateMeter(supply_meter), operator)
    with (
        unchanged(chain, [operator], [supply_meter]),
        reverts("MeterAlreadyRegistered", supply_meter),
    ):
        register_meter(chain, operator, supply_meter, buyer, LOAD, LOAD_W)


def test_the_admin_grants_and_revokes_the_operator_role(
    chain: Chain, operator: str, operator_role: bytes, stranger: str, seller: str, load_meter: str
):
    receipt = chain.send(chain.registry.functions.grantRole(operator_role, stranger), operator)
    assert chain.events(receipt) == [
        registry_event("RoleGranted", role=operator_role, account=stranger, sender=operator)
    ]
    register_meter(chain, stranger, load_meter, seller, LOAD, LOAD_W)
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
    assert meter_of(chain, supply_meter) == before._replace(active=False)


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
    with unchanged(chain, [operator], [supply_meter]), reverts("MeterInactive", supply_meter):
        chain.send(chain.registry.functions.deactivateMeter(supply_meter), operator)


# --- readings --------------------------------------------------------------------------------


@pytest.mark.parametrize("counter", [0, BASELINE, MAX_COUNTER])
def test_baseline_reading_mints_nothing(
    chain: Chain, operator: str, seller: str, supply_meter: str, counter: int
):
    register_meter(chain, operator, supply_meter, seller, SUPPLY, SUPPLY_W)
    chain.advance(DAY)  # however long the meter was unread, the baseline is free
    receipt = report(chain, supply_meter, counter)
    assert chain.events(receipt) == [
        registry_event("ReadingRecorded", meter=supply_meter, cumulativeWh=counter, deltaWh=0)
    ]
    assert meter_of(chain, supply_meter) == Meter(
        seller, SUPPLY, True, SUPPLY_W, counter, block_time(chain, receipt)
    )
    assert tokens(chain, seller) == 0
    assert supply(chain) == 0


@pytest.mark.usefixtures("installed")
def test_supply_increase_mints_the_delta_to_the_owner(chain: Chain, seller: str, supply_meter: str):
    receipt = measure(chain, supply_meter, 2_500)
    assert chain.events(receipt) == [
        registry_event(
            "ReadingRecorded", meter=supply_meter, cumulativeWh=BASELINE + 2_500, deltaWh=2_500
        ),
        transfer(ZERO_ADDRESS, seller, 2_500),
    ]
    receipt = measure(chain, supply_meter, 1)
    assert chain.events(receipt)[1:] == [transfer(ZERO_ADDRESS, seller, 1)]
    assert tokens(chain, seller) == 2_501
    assert supply(chain) == 2_501
    info = meter_of(chain, supply_meter)
    assert (info.cumulative_wh, info.read_at) == (BASELINE + 2_501, block_time(chain, receipt))


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
    assert chain.events(receipt) == [
        registry_event(
            "ReadingRecorded", meter=load_meter, cumulativeWh=BASELINE + 700, deltaWh=700
        )
    ]
    assert meter_of(chain, load_meter).cumulative_wh == BASELINE + 700


def test_unregistered_address_cannot_report(chain: Chain, stranger: str):
    with unchanged(chain, [stranger], [stranger]), reverts("MeterNotRegistered", stranger):
        report(chain, stranger, 1)


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("counter", [BASELINE, BASELINE - 1, 0])
def test_reading_must_be_newer(chain: Chain, seller: str, supply_meter: str, counter: int):
    chain.advance(3_600)  # plenty of time: only the counter is wrong
    with (
        unchanged(chain, [seller], [supply_meter]),
        reverts("MeterReadingNotNewer", BASELINE, counter),
    ):
        report(chain, supply_meter, counter)


@pytest.mark.usefixtures("installed")
def test_replayed_reading_is_refused(chain: Chain, seller: str, supply_meter: str):
    measure(chain, supply_meter, 500)
    chain.advance(600)
    with (
        unchanged(chain, [seller], [supply_meter]),
        reverts("MeterReadingNotNewer", BASELINE + 500, BASELINE + 500),
    ):
        report(chain, supply_meter, BASELINE + 500)
    assert tokens(chain, seller) == 500


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
    assert chain.events(receipt)[0] == registry_event(
        "ReadingRecorded", meter=supply_meter, cumulativeWh=BASELINE + max_wh, deltaWh=max_wh
    )
    assert meter_of(chain, supply_meter).read_at == block_time(chain, receipt)
    assert tokens(chain, seller) == (max_wh if kind == SUPPLY else 0)


@pytest.mark.usefixtures("installed")
def test_plausibility_counts_from_the_last_accepted_reading(
    chain: Chain, seller: str, supply_meter: str
):
    chain.advance(3_600)
    report(chain, supply_meter, BASELINE + 1_000)  # 1 kWh in an hour at 5 kW: fine
    chain.advance(36)  # 5 kW x 36 s = 50 Wh
    with reverts("MeterReadingImplausible", 51, 50, 36):
        report(chain, supply_meter, BASELINE + 1_051)
    report(chain, supply_meter, BASELINE + 1_050)
    assert tokens(chain, seller) == 1_050


@pytest.mark.parametrize("counter", [MAX_COUNTER + 1, 2**256 - 1])
@pytest.mark.parametrize("baseline", [False, True])
def test_counter_out_of_range(
    chain: Chain, operator: str, seller: str, supply_meter: str, counter: int, baseline: bool
):
    register_meter(chain, operator, supply_meter, seller, SUPPLY, SUPPLY_W)
    if not baseline:
        report(chain, supply_meter, BASELINE)
    chain.advance(DAY)
    with (
        unchanged(chain, [seller], [supply_meter]),
        reverts("MeterReadingOutOfRange", counter),
    ):
        report(chain, supply_meter, counter)


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
    with unchanged(chain, [seller, buyer], [meter]), reverts("MeterInactive", meter):
        report(chain, meter, BASELINE + 100)
