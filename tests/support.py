"""Small helpers shared by the suites that run real processes and servers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.05,
             what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(step)


class SigningMeter:
    """A meter whose key the test holds: signs readings as a real meter would (EIP-712).

    For suites that need readings on chain without an emulated serial line: the test offers it
    to an owner, the owner accepts it, and any account carries its signed readings.
    """

    def __init__(self, kind: str = "supply", rated_power_w: int = 65535) -> None:
        from eth_account import Account

        self.kind = kind
        self.rated_power_w = rated_power_w
        self._key = Account.create().key
        self.address = Account.from_key(self._key).address
        self.energy_wh = 0
        self.sequence = 0

    def sign(self, domain: Any, block: Any, energy_wh: int | None = None,
             sequence: int | None = None):
        """A SignedReading of `energy_wh` (default: the last counter) with the next sequence,
        signing `block` (a hardware.signing.BlockRef: the chain's latest, for a fresh one)."""
        from dapp.bridge import SignedReading
        from hardware.signing import sign_reading

        if energy_wh is not None:
            self.energy_wh = energy_wh
        self.sequence = self.sequence + 1 if sequence is None else sequence
        signature = sign_reading(self._key, domain, self.energy_wh, self.sequence, block)
        return SignedReading(self.address, self.energy_wh, self.sequence, block, signature)

    def offer_to(self, client: Any, operator: Any, owner: Any) -> None:
        """The operator offers this meter to `owner` (an account), who accepts it."""
        client.wait(client.offer_meter(operator, self.address, owner.address, self.kind,
                                       self.rated_power_w))
        client.wait(client.accept_meter(owner, self.address))

    def report(self, client: Any, sender: Any, energy_wh: int | None = None) -> dict:
        """Sign a reading of the chain's latest block and have `sender` carry it; the
        registry's outcome for it."""
        signed = self.sign(client.reading_domain(), client.reading_block(), energy_wh)
        tx = client.submit_readings(sender, [signed])
        return client.reading_outcomes(tx)[(signed.meter, signed.sequence)]
