"""What the meters say: the bridge's live state and recent readings from the chain.

The meter bridge (dapp/bridge) is optional. When one is attached, its `state()` gives each
meter's live values (generation, relay); without it the wallet and the market say "no meter".
The generation/consumption chart comes from the chain itself: every `ReadingRecorded` event the
listener delivers is kept (de-duplicated on transaction hash and log index) for a few hours.

The bridge reports each meter as a `dapp.bridge.MeterState`; `view_of` turns it into the
`MeterView` the pages show (fields read: address, owner, kind, online, relay_closed, energy_wh,
power_w, last_error).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from dapp.chain.client import ChainClient, meter_kind
from dapp.chain.listener import ChainEvent
from dapp.errors import ChainError
from dapp.services.units import format_kwh
from hardware.protocol import LOAD, SUPPLY

log = logging.getLogger(__name__)

class Bridge(Protocol):
    """What the web app needs from a meter bridge."""

    def on_event(self, event: ChainEvent) -> None:
        """React to a chain event (e.g. close a relay when a trade opens)."""

    def state(self) -> list[Any]:
        """The current state of every meter the bridge drives."""


@dataclass(frozen=True)
class MeterView:
    """One meter as the pages show it (from the bridge's live state)."""

    address: str | None
    owner: str | None
    kind: str | None
    online: bool
    relay_closed: bool | None
    energy_wh: int | None
    power_w: float | None
    detail: str
    voltage_v: float | None = None  # at the battery's terminals (a supply meter's: its owner's)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "address": self.address,
            "owner": self.owner,
            "kind": self.kind,
            "online": self.online,
            "relay": relay_text(self),
            "energy_kwh": None if self.energy_wh is None else format_kwh(self.energy_wh),
            "power_w": self.power_w,
            "detail": self.detail,
        }


def _same(a: str | None, b: str | None) -> bool:
    """Addresses equal ignoring case."""
    return bool(a) and bool(b) and str(a).lower() == str(b).lower()


def view_of(state: Any) -> MeterView:
    """A bridge's meter state (dapp.bridge.MeterState) as the pages show it."""
    relay, energy, power = state.relay_closed, state.energy_wh, state.power_w
    volts = getattr(state, "voltage_v", None)
    return MeterView(
        address=state.address,
        owner=state.owner,
        kind=None if state.kind is None else str(state.kind).lower(),
        online=bool(state.online),
        relay_closed=None if relay is None else bool(relay),
        energy_wh=None if energy is None else int(energy),
        power_w=None if power is None else float(power),
        detail=str(state.last_error or ""),
        voltage_v=None if volts is None else float(volts),
    )


def relay_text(meter: MeterView | None) -> str:
    """"closed", "open", "offline", "unknown" or "no meter"."""
    if meter is None:
        return "no meter"
    if not meter.online:
        return "offline"
    if meter.relay_closed is None:
        return "unknown"
    return "closed" if meter.relay_closed else "open"


class MeterBoard:
    """Meter states from the bridge (if any) and a few hours of readings from the chain."""

    def __init__(
        self,
        client: ChainClient,
        bridge: Bridge | None = None,
        *,
        window_seconds: int = 6 * 3600,
        bucket_seconds: int = 600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.bridge = bridge
        self.window_seconds = window_seconds
        self.bucket_seconds = bucket_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._meters: dict[str, tuple[str, str]] = {}  # meter -> (owner, kind)
        self._readings: dict[tuple[str, str], deque[tuple[int, int]]] = {}
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._block_times: OrderedDict[int, int] = OrderedDict()
        self._relays: dict[str | None, str] = {}  # meter -> its relay as the cards last showed it

    # -- bridge ---------------------------------------------------------------------------------

    def states(self) -> list[MeterView]:
        """Every meter the bridge reports (empty without a bridge or if the bridge failed)."""
        if self.bridge is None:
            return []
        try:
            return [view_of(item) for item in self.bridge.state()]
        except Exception:
            log.exception("meter bridge: state() failed")
            return []

    def meter_of(self, owner: str, kind: str, states: list[MeterView] | None = None
                 ) -> MeterView | None:
        """The owner's meter of `kind` as the bridge reports it, or None."""
        for meter in self.states() if states is None else states:
            if _same(meter.owner, owner) and meter.kind == kind:
                return meter
        return None

    def generation(self, owner: str) -> dict[str, Any]:
        """The owner's supply meter right now: {"meter": bool, "text", "energy_kwh", "power_w"}."""
        meter = self.meter_of(owner, SUPPLY)
        if meter is None:
            return {"meter": False, "text": "no meter", "energy_kwh": None, "power_w": None}
        if not meter.online:
            return {"meter": True, "text": "meter offline", "energy_kwh": None, "power_w": None}
        energy = None if meter.energy_wh is None else format_kwh(meter.energy_wh)
        text = f"{energy} kWh" if energy is not None else "no reading yet"
        if meter.power_w is not None:
            text += f" ({meter.power_w:.0f} W now)"
        return {"meter": True, "text": text, "energy_kwh": energy, "power_w": meter.power_w}

    def relay(self, owner: str | None, kind: str, states: list[MeterView] | None = None) -> str:
        """The relay state of the owner's meter of `kind` (see relay_text)."""
        if not owner or self.bridge is None:
            return "no meter"
        return relay_text(self.meter_of(owner, kind, states))

    def relay_moved(self, state: Any) -> tuple[str | None, bool]:
        """A bridge change: (the meter's owner, whether its relay as the cards show it moved)."""
        view = view_of(state)
        shown = relay_text(view)
        with self._lock:
            moved = self._relays.get(view.address) != shown
            self._relays[view.address] = shown
        return view.owner, moved

    def meter_addresses(self, owner: str) -> list[str]:
        """Meters known to belong to `owner` (from the bridge and from registry events)."""
        found = {m.address for m in self.states() if _same(m.owner, owner) and m.address}
        with self._lock:
            found |= {m for m, (o, _) in self._meters.items() if _same(o, owner)}
        return sorted(found)

    # -- chain readings -------------------------------------------------------------------------

    def on_event(self, event: ChainEvent) -> None:
        """Listener subscriber: remember meter offers (owner, kind) and readings."""
        if event.contract != "MeterRegistry":
            return
        if event.name == "MeterOffered":
            kind = meter_kind(event.args.get("kind", 0))
            with self._lock:
                self._meters[event.args["meter"]] = (event.args["owner"], kind)
        elif event.name == "ReadingRecorded":
            self.record(
                event.args["meter"], int(event.args["deltaWh"]), event.block_number,
                event.tx_hash, event.log_index,
            )

    def record(self, meter: str, delta_wh: int, block_number: int, tx_hash: str,
               log_index: int) -> None:
        """Keep one reading (once per (tx hash, log index)); zero deltas are baselines."""
        key = (tx_hash.lower(), log_index)
        with self._lock:
            if key in self._seen:
                return
            self._seen[key] = None
            while len(self._seen) > 50_000:
                self._seen.popitem(last=False)
        if delta_wh <= 0:
            return
        try:
            owner, kind = self._meter_info(meter)
            stamp = self._block_time(block_number)
        except ChainError as exc:
            log.warning("meter board: cannot place reading of %s: %s", meter, exc)
            return
        with self._lock:
            series = self._readings.setdefault((owner.lower(), kind), deque(maxlen=20_000))
            series.append((stamp, delta_wh))

    def backfill(self, blocks: int = 20_000, chunk: int = 2_000) -> int:
        """Read the last `blocks` blocks' readings from the chain (after a restart); count them."""
        head = self.client.block_number()
        start = max(self.client.deployment.block, head - blocks + 1)
        count = 0
        for low in range(start, head + 1, chunk):
            for reading in self.client.readings(low, min(head, low + chunk - 1)):
                self.record(reading.meter, reading.delta_wh, reading.block_number,
                            reading.tx_hash, reading.log_index)
                count += 1
        return count

    def history(self, owner: str) -> dict[str, Any]:
        """Generation and consumption of `owner` per bucket over the window (kWh as numbers).

        The window ends at the chain's clock (the latest block), which readings are stamped with.
        """
        try:
            now = self.client.latest_timestamp()
        except ChainError:
            now = int(self._clock())
        size = self.bucket_seconds
        end = now - now % size + size
        start = end - self.window_seconds
        starts = list(range(start, end, size))
        result: dict[str, Any] = {"bucket_seconds": size, "starts": starts}
        for kind, name in ((SUPPLY, "generation_kwh"), (LOAD, "consumption_kwh")):
            sums = [0] * len(starts)
            with self._lock:
                series = list(self._readings.get((owner.lower(), kind), ()))
            for stamp, wh in series:
                if start <= stamp < end:
                    sums[(stamp - start) // size] += wh
            result[name] = [wh / 1000 for wh in sums]
        return result

    def _meter_info(self, meter: str) -> tuple[str, str]:
        """(owner, kind) of a meter, asked of the registry once."""
        with self._lock:
            known = self._meters.get(meter)
        if known is not None:
            return known
        info = self.client.meter(meter)
        if info is None:
            raise ChainError(f"{meter} is not a registered meter")
        with self._lock:
            self._meters[meter] = (info.owner, info.kind)
        return info.owner, info.kind

    def _block_time(self, number: int) -> int:
        """Timestamp of block `number` (a small cache: readings cluster in blocks)."""
        with self._lock:
            if number in self._block_times:
                return self._block_times[number]
        stamp = self.client.block_timestamp(number)
        with self._lock:
            self._block_times[number] = stamp
            while len(self._block_times) > 512:
                self._block_times.popitem(last=False)
        return stamp
