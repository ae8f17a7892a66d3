"""The bridge's view of a meter: a small driver interface, chosen by the meter's URL.

A driver speaks to one device and hands the bridge what the device said, untouched: its
identity (the address of the key it holds), the readings it signed, and its relay. The bridge
never builds a reading itself, so the signed counter it forwards is the meter's own.

    driver = open_driver("socket://127.0.0.1:7001", timeout=1.0, retries=2)
    identity = driver.identify()
    reading = driver.read(block)     # DeviceReading of a recent block: .signed goes on chain

Drivers are picked by URL scheme (`register_driver`); everything pyserial can open (a device
path, `socket://`, `rfc2217://`, `loop://`, a pty) goes to the serial protocol of
hardware/PROTOCOL.md. Another kind of meter (Modbus, say) registers its own scheme without a
change to the bridge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from eth_utils import to_checksum_address

from dapp.errors import MeterError
from hardware.signing import BlockRef

__all__ = [
    "DeviceIdentity",
    "DeviceReading",
    "MeterDriver",
    "MeterGarbled",
    "MeterLineGone",
    "MeterNoAnswer",
    "MeterSaidNo",
    "SignedReading",
    "open_driver",
    "register_driver",
]


class MeterNoAnswer(MeterError):
    """The meter did not answer in time (after the driver's retries)."""


class MeterLineGone(MeterNoAnswer):
    """The port is closed, unplugged or cannot be opened: nothing can answer."""


class MeterGarbled(MeterError):
    """Something answered, but not a valid reply (framing, checksum, fields)."""


class MeterSaidNo(MeterError):
    """The meter understood the command and refused it (e.g. a sensor fault)."""


@dataclass(frozen=True)
class SignedReading:
    """A reading as the meter signed it (EIP-712 `Reading`): what the registry verifies."""

    meter: str  # the signer's address, checksummed
    energy_wh: int
    sequence: int
    block: BlockRef  # the recent block the host passed with READ, signed with the counter
    signature: bytes  # 65 bytes r || s || v


@dataclass(frozen=True)
class DeviceIdentity:
    """Who the device says it is; `domain` is (chain id, registry) once provisioned."""

    address: str
    meter_id: str
    kind: str
    rated_power_w: int
    watchdog_s: int
    firmware: str
    domain: tuple[int, str] | None


@dataclass(frozen=True)
class DeviceReading:
    """One READ: the signed counter plus the values the page shows."""

    signed: SignedReading
    power_w: float
    voltage_v: float
    current_a: float
    relay_closed: bool
    samples: int

    @property
    def energy_wh(self) -> int:
        """The cumulative counter the meter signed."""
        return self.signed.energy_wh


class MeterDriver(Protocol):
    """What the bridge needs from one meter. Every call may raise a MeterError subclass."""

    name: str

    def identify(self) -> DeviceIdentity:
        """Ask the device who it is."""

    def provision(self, chain_id: int, registry: str) -> DeviceIdentity:
        """Bind the device's signatures to this chain and registry (once, at installation)."""

    def read(self, block: BlockRef) -> DeviceReading:
        """Take a signed reading of the recent `block` (the meter signs its number and hash)."""

    def set_relay(self, on: bool) -> bool:
        """Command the relay closed (`on`) or open; the state the device reports."""

    def heartbeat(self) -> bool:
        """Feed the device's watchdog; the relay state it reports."""

    def close(self) -> None:
        """Release the port (idempotent)."""


DriverFactory = Callable[[str, float, int], MeterDriver]
_FACTORIES: dict[str, DriverFactory] = {}


def register_driver(scheme: str, factory: DriverFactory) -> None:
    """Use `factory(url, timeout, retries)` for URLs that start with `scheme://`."""
    _FACTORIES[scheme.lower()] = factory


def open_driver(url: str, *, timeout: float = 1.0, retries: int = 2) -> MeterDriver:
    """Open the driver for `url` (MeterError if the port cannot be opened)."""
    scheme, sep, _ = url.partition("://")
    factory = _FACTORIES.get(scheme.lower()) if sep else None
    return (factory or _serial_driver)(url, timeout, retries)


# --------------------------------------------------------------------------- serial protocol


@contextmanager
def _translated(name: str) -> Iterator[None]:
    """Turn the device layer's errors into the bridge's (hardware/ has its own tree)."""
    from hardware import protocol

    try:
        yield
    except protocol.MeterDisconnected as exc:
        raise MeterLineGone(f"{name}: {exc}") from exc
    except protocol.MeterTimeout as exc:
        raise MeterNoAnswer(f"{name}: {exc}") from exc
    except protocol.MeterProtocolError as exc:
        raise MeterGarbled(f"{name}: {exc}") from exc
    except protocol.MeterRefused as exc:
        raise MeterSaidNo(str(exc)) from exc
    except protocol.MeterError as exc:  # any other device error: treat the line as garbled
        raise MeterGarbled(f"{name}: {exc}") from exc


class SerialProtocolDriver:
    """hardware/PROTOCOL.md over anything pyserial opens (hardware.driver.MeterClient)."""

    def __init__(self, url: str, timeout: float, retries: int) -> None:
        from hardware.driver import MeterClient

        self.name = url
        with _translated(url):
            self._client = MeterClient(url, timeout=timeout, retries=retries)

    def identify(self) -> DeviceIdentity:
        """ID."""
        with _translated(self.name):
            return _identity(self._client.identify())

    def provision(self, chain_id: int, registry: str) -> DeviceIdentity:
        """INSTALL (the domain, once), then ID again."""
        from hardware.signing import Domain

        with _translated(self.name):
            self._client.provision(Domain(chain_id, registry))
            return _identity(self._client.identify())

    def read(self, block: BlockRef) -> DeviceReading:
        """READ of `block`."""
        with _translated(self.name):
            reading = self._client.read(block)
            address = self._client.identity.address if self._client.identity else None
        if address is None:
            raise MeterGarbled(f"{self.name}: READ before ID")
        return DeviceReading(
            signed=SignedReading(to_checksum_address(address), reading.energy_wh,
                                 reading.sequence, block, bytes(reading.signature)),
            power_w=reading.power_w, voltage_v=reading.voltage_v, current_a=reading.current_a,
            relay_closed=reading.relay_closed, samples=reading.samples)

    def set_relay(self, on: bool) -> bool:
        """RELAY."""
        with _translated(self.name):
            return self._client.set_relay(on)

    def heartbeat(self) -> bool:
        """HB."""
        with _translated(self.name):
            return self._client.heartbeat()

    def close(self) -> None:
        """Close the port."""
        self._client.close()


def _identity(identity: object) -> DeviceIdentity:
    domain = getattr(identity, "domain", None)
    return DeviceIdentity(
        address=to_checksum_address(identity.address),  # type: ignore[attr-defined]
        meter_id=identity.meter_id,  # type: ignore[attr-defined]
        kind=identity.kind,  # type: ignore[attr-defined]
        rated_power_w=identity.rated_power_w,  # type: ignore[attr-defined]
        watchdog_s=identity.watchdog_s,  # type: ignore[attr-defined]
        firmware=identity.firmware,  # type: ignore[attr-defined]
        domain=None if domain is None else (int(domain.chain_id),
                                            to_checksum_address(domain.registry)),
    )


def _serial_driver(url: str, timeout: float, retries: int) -> MeterDriver:
    return SerialProtocolDriver(url, timeout, retries)
