"""Forwarding signed readings: one sender for all of a bridge's meters, one batch per block.

Every pass collects the reading each meter has due (`MeterPort.take_outgoing`) and sends them
together (`reportBatch`; a single one goes as `report`) from the bridge's *submitter* account,
which pays the gas: the meters hold no Ether and sign nothing but their readings. The registry
judges each item on its own (a bad one is skipped with `ReadingRejected`), and the receipt's
events say which were taken, so nothing is read back per meter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from eth_account.signers.local import LocalAccount

from dapp.bridge.drivers import SignedReading
from dapp.chain.client import ReadingOutcome
from dapp.errors import ChainError, ChainUnavailable, ContractReverted

if TYPE_CHECKING:
    from dapp.bridge.port import MeterPort
    from dapp.chain.client import ChainClient

log = logging.getLogger(__name__)

RECEIPT_POLL_S = 2.0  # wait for a receipt in slices this long, to notice stop()


class ReadingSubmitter:
    """Collects due readings from the ports and forwards them in batches."""

    def __init__(self, chain: ChainClient, account: LocalAccount | None,
                 ports: Callable[[], Sequence[MeterPort]], *, clock: Callable[[], float],
                 interval: float = 1.0, max_batch: int = 200, receipt_timeout: float = 120.0,
                 backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        self.chain = chain
        self.account = account
        self.ports = ports
        self.clock = clock
        self.interval = interval
        self.max_batch = max_batch
        self.receipt_timeout = receipt_timeout
        self.backoff = backoff
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next = 0  # where the next pass starts on the ports' list

    def start(self) -> None:
        """Start the sending thread (without an account, readings are only shown)."""
        if self.account is None:
            log.warning("bridge: no submitter account; readings are shown but not forwarded")
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="bridge-submit", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """A meter has a new reading: look soon."""
        self._wake.set()

    def _loop(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            started = self.clock()
            try:
                sent = self.send_due()
                delay = self.backoff[0]
            except ChainError as exc:
                log.warning("bridge: cannot forward readings (%s); retrying in %.1f s", exc,
                            delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            except Exception:
                log.exception("bridge: forwarding readings failed")
                self._stop.wait(delay)
                continue
            if not sent:
                self._wake.wait(max(0.05, self.interval - (self.clock() - started)))
                self._wake.clear()

    def send_due(self) -> int:
        """Forward every reading that is due, in batches; the number sent."""
        now = self.clock()
        batch: list[tuple[MeterPort, SignedReading]] = []
        ports = list(self.ports())
        # In turn from where the last pass stopped: when a block cannot carry every meter's
        # reading, the first meters on the list must not be the only ones that get through.
        start = self._next % len(ports) if ports else 0
        for port in ports[start:] + ports[:start]:
            signed = port.take_outgoing(now)
            if signed is not None:
                batch.append((port, signed))
            if len(batch) >= self.max_batch:
                break
        if not batch:
            return 0
        sent = self._forward(batch)
        last = batch[sent - 1][0] if sent else None
        if last is not None:
            self._next = ports.index(last) + 1
        return sent

    def _fitting(self, batch: list[tuple[MeterPort, SignedReading]]
                 ) -> tuple[list[tuple[MeterPort, SignedReading]], int]:
        """The longest head of `batch` whose gas fits a block, and that gas; the rest is put
        back (it goes in the next pass)."""
        assert self.account is not None
        limit = self.chain.block_gas_limit()
        while True:
            readings = [signed for _, signed in batch]
            gas = self.chain.readings_gas(self.account.address, readings)
            if gas <= limit or len(batch) == 1:
                return batch, gas
            keep = max(1, min(len(batch) - 1, len(batch) * limit * 9 // (gas * 10)))
            for port, signed in batch[keep:]:
                port.unsent(signed)
            batch = batch[:keep]

    def _forward(self, batch: list[tuple[MeterPort, SignedReading]]) -> int:
        """Send what fits a block, wait for its receipt, settle each reading; the number sent.
        On any failure, the readings are put back for the next pass."""
        try:
            batch, gas = self._fitting(batch)
            self._send(batch, gas)
        except BaseException:
            for port, signed in batch:
                port.unsent(signed)
            raise
        return len(batch)

    def _send(self, batch: list[tuple[MeterPort, SignedReading]], gas: int) -> None:
        assert self.account is not None
        readings = [signed for _, signed in batch]
        try:
            tx_hash = self.chain.submit_readings(self.account, readings, gas=gas)
        except ContractReverted as exc:  # a single reading refused in the pre-flight
            port, signed = batch[0]
            port.settled(signed, ReadingOutcome(signed.meter, signed.sequence, False,
                                                exc.name))
            return
        log.debug("bridge: forwarded %d reading(s) (%s)", len(readings), tx_hash)
        started = time.monotonic()
        while True:
            try:
                outcomes = self.chain.reading_outcomes(tx_hash, timeout=RECEIPT_POLL_S)
                break
            except ContractReverted as exc:
                for port, signed in batch:
                    port.settled(signed, ReadingOutcome(signed.meter, signed.sequence, False,
                                                        exc.name))
                return
            except ChainUnavailable:
                if self._stop.wait(RECEIPT_POLL_S):
                    raise
            except ChainError:
                if self._stop.is_set():
                    raise
                if time.monotonic() - started > self.receipt_timeout:
                    log.warning("bridge: readings %s not mined after %.0f s", tx_hash,
                                time.monotonic() - started)
                    raise
        for port, signed in batch:
            outcome = outcomes.get((signed.meter, signed.sequence)) or ReadingOutcome(
                signed.meter, signed.sequence, False, "no event for it in the receipt")
            port.settled(signed, outcome)
