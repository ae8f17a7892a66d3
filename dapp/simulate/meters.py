"""A community's meters behind ONE real `MeterBridge`: the `community://HOUSEHOLD/KIND` driver.

Every household of a `hardware.community.Community` has a supply meter (PV -> battery: it
counts `Household.counters.charged_wh`) and a load meter (bus -> load: `imported_wh`, what
trades delivered). Each meter keeps its own key in its own EEPROM (`MeterKey`, in memory, like
`hardware.emulator.MeterMemory`) and signs every reading itself (EIP-712, as the firmware does); the
bridge forwards what it signed or nothing. `CommunityBus.open_driver` is the driver factory
registered for the `community` scheme, so the bridge opens these meters exactly as it opens a
serial one, without N TCP servers.

Relays: a supply meter's relay is its household's export switch, a load meter's its import
switch (the bridge closes them from the chain's open trades). Energy flows over the
`Community` connection from the seller of a buyer's *delivering* trade (its oldest open one:
the market settles deliveries to it) to the buyer, and only while both switches are closed:
`set_routes` says which trade delivers for each buyer, `set_relay` of each meter drives
`Community.set_relay` of those connections. A meter whose bridge falls silent for
`watchdog_s` simulated seconds opens its relay by itself, like the firmware's watchdog.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from eth_keys import keys
from eth_utils import keccak

from dapp.bridge import register_driver
from dapp.bridge.drivers import DeviceIdentity, DeviceReading, MeterLineGone, SignedReading
from hardware.community import BUYER, SELLER, Community
from hardware.protocol import LOAD, MAX_RATED_POWER_W, SUPPLY
from hardware.signing import BlockRef, Domain, struct_hash

SCHEME = "community"
FIRMWARE = "community-sim-1"
RATED_MARGIN = 1.25  # a meter's rating above its household's peak power


class MeterKey:
    """A simulated meter's EEPROM: its own key, the last counter and sequence it signed.

    Signs exactly what `hardware.signing.sign_reading` signs (the EIP-712 digest of the
    reading, RFC 6979, v 27/28), with the key object and the domain separator kept between
    readings: a community of 40 households signs some 50 readings per block.
    """

    def __init__(self, private_key: bytes | None = None) -> None:
        self._key = keys.PrivateKey(private_key or secrets.token_bytes(32))
        self.address = self._key.public_key.to_checksum_address()
        self.energy_wh = 0
        self.sequence = 0
        self.domain: Domain | None = None
        self._separator = b""

    def provision(self, domain: Domain) -> None:
        """Bind the signatures to this chain and registry."""
        self.domain = domain
        self._separator = domain.separator()

    def sign_next(self, energy_wh: int, block: BlockRef) -> tuple[int, int, bytes]:
        """Sign the next reading of `block` (never below the last counter; the sequence grows by
        one)."""
        if self.domain is None:
            raise RuntimeError("not provisioned")
        energy = max(energy_wh, self.energy_wh)
        sequence = self.sequence + 1
        digest = keccak(b"\x19\x01" + self._separator
                        + struct_hash(self.address, energy, sequence, block))
        signature = self._key.sign_msg_hash(digest)
        self.energy_wh, self.sequence = energy, sequence
        return energy, sequence, signature.to_bytes()[:64] + bytes([signature.v + 27])


@dataclass
class SignedRecord:
    """One reading a meter signed: when (simulated seconds) and the block that was latest."""

    address: str
    energy_wh: int
    sequence: int
    time_s: float
    block: int


class CommunityBus:
    """The community's meters (keys, relays) and the wiring of relays to connections."""

    def __init__(self, community: Community, clock: Callable[[], float], *,
                 block: Callable[[], int] = lambda: 0, watchdog_s: int = 1800,
                 on_signed: Callable[[SignedRecord], None] | None = None) -> None:
        self.community = community
        self.clock = clock
        self.block = block
        self.watchdog_s = watchdog_s
        self.on_signed = on_signed
        self.meters: dict[tuple[str, str], MeterKey] = {}
        self.closed: dict[tuple[str, str], bool] = {}
        self.last_command: dict[tuple[str, str], float] = {}
        self.routes: dict[str, str] = {}  # buyer -> seller of its delivering trade
        for name in community.households:
            for kind in (SUPPLY, LOAD):
                self.meters[(name, kind)] = MeterKey()
                self.closed[(name, kind)] = False
                self.last_command[(name, kind)] = clock()

    # ------------------------------------------------------------------ set-up

    def register(self) -> None:
        """Make `community://` URLs open this bus's meters (replaces an earlier bus)."""
        register_driver(SCHEME, self.open_driver)

    @staticmethod
    def url(house: str, kind: str) -> str:
        """The driver URL of one meter."""
        return f"{SCHEME}://{house}/{kind}"

    def address(self, house: str, kind: str) -> str:
        """The address of a meter's own key."""
        return self.meters[(house, kind)].address

    def rated_power_w(self, house: str, kind: str) -> int:
        """What the meter is rated for: its household's PV peak (supply) or load peak (load)."""
        household = self.community.households[house]
        peak = household.pv.peak_w if kind == SUPPLY else (
            household.load.peak_w * (1 + household.load_variation))
        return max(1, min(MAX_RATED_POWER_W, math.ceil(peak * RATED_MARGIN)))

    def open_driver(self, url: str, timeout: float = 1.0, retries: int = 0) -> CommunityMeterDriver:
        """The driver factory for `community://HOUSEHOLD/KIND`."""
        scheme, _, rest = url.partition("://")
        house, _, kind = rest.partition("/")
        if scheme.lower() != SCHEME or (house, kind) not in self.meters:
            raise MeterLineGone(f"{url}: no such meter in this community")
        return CommunityMeterDriver(self, house, kind)

    # ------------------------------------------------------------------ relays

    def set_side(self, house: str, kind: str, closed: bool) -> None:
        """A meter's relay changed: re-wire the connections."""
        self.closed[(house, kind)] = closed
        self.last_command[(house, kind)] = self.clock()
        self.apply()

    def set_routes(self, routes: dict[str, str]) -> None:
        """Which seller delivers to each buyer now (the chain's delivering trades)."""
        if routes != self.routes:
            self.routes = dict(routes)
            self.apply()

    def apply(self) -> None:
        """Open every connection, then give each route the state of its two relays."""
        self.community.open_all()
        for buyer, seller in self.routes.items():
            if seller == buyer:
                continue
            self.community.set_relay(seller, buyer, SELLER, self.closed[(seller, SUPPLY)])
            self.community.set_relay(seller, buyer, BUYER, self.closed[(buyer, LOAD)])

    def watchdogs(self) -> None:
        """Open the relay of every meter its bridge has not spoken to for `watchdog_s`."""
        now = self.clock()
        tripped = False
        for key, closed in self.closed.items():
            if closed and now - self.last_command[key] > self.watchdog_s:
                self.closed[key] = False
                tripped = True
        if tripped:
            self.apply()

    def battery_volts(self, house: str) -> float:
        """The household's battery voltage as a meter reports it (to 0.01 V, as READ does)."""
        return round(self.community.households[house].battery.voltage(), 2)

    def counter_wh(self, house: str, kind: str) -> int:
        """The meter's counter now: whole Wh charged (supply) or imported (load)."""
        counters = self.community.households[house].counters
        value = counters.charged_wh if kind == SUPPLY else counters.imported_wh
        return math.floor(value + 1e-9)


class CommunityMeterDriver:
    """One meter of the bus, as the bridge's `MeterDriver` protocol asks."""

    def __init__(self, bus: CommunityBus, house: str, kind: str) -> None:
        self.bus = bus
        self.house = house
        self.kind = kind
        self.key = (house, kind)
        self.name = CommunityBus.url(house, kind)
        self.samples = 0

    @property
    def state(self) -> MeterKey:
        """The meter's EEPROM."""
        return self.bus.meters[self.key]

    def _touch(self) -> None:
        self.bus.last_command[self.key] = self.bus.clock()

    def identify(self) -> DeviceIdentity:
        """Who the meter is."""
        self._touch()
        domain = self.state.domain
        return DeviceIdentity(
            address=self.state.address, meter_id=f"{self.house}-{self.kind}", kind=self.kind,
            rated_power_w=self.bus.rated_power_w(self.house, self.kind),
            watchdog_s=self.bus.watchdog_s, firmware=FIRMWARE,
            domain=None if domain is None else (domain.chain_id, domain.registry))

    def provision(self, chain_id: int, registry: str) -> DeviceIdentity:
        """Bind the meter's signatures to this chain and registry."""
        self.state.provision(Domain(chain_id, registry))
        return self.identify()

    def read(self, block: BlockRef) -> DeviceReading:
        """Sign the counter now with `block` (the meter's own key, a new sequence)."""
        self._touch()
        energy, sequence, signature = self.state.sign_next(
            self.bus.counter_wh(self.house, self.kind), block)
        self.samples += 1
        if self.bus.on_signed is not None:
            self.bus.on_signed(SignedRecord(self.state.address, energy, sequence,
                                            self.bus.clock(), self.bus.block()))
        return DeviceReading(
            signed=SignedReading(self.state.address, energy, sequence, block, signature),
            power_w=0.0, voltage_v=self.bus.battery_volts(self.house), current_a=0.0,
            relay_closed=self.bus.closed[self.key], samples=self.samples)

    def set_relay(self, on: bool) -> bool:
        """Switch the household's export (supply) or import (load) relay."""
        self.bus.set_side(self.house, self.kind, bool(on))
        return self.bus.closed[self.key]

    def heartbeat(self) -> bool:
        """Feed the watchdog."""
        self._touch()
        return self.bus.closed[self.key]

    def close(self) -> None:
        """Nothing to release."""
