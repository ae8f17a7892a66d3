"""The project's exception tree: one root, subclasses by who failed.

Meter errors are the device side's own (`hardware.protocol.MeterError`, re-exported here): the
hardware package imports nothing from dapp, so they do not derive from `MicrogridError`; the
CLI catches both at its edge (`REPORTED_ERRORS`).
"""

from __future__ import annotations

from hardware.protocol import MeterError


class MicrogridError(Exception):
    """Root of every error this project raises on purpose."""


class CompileError(MicrogridError):
    """The Solidity compiler is missing or rejected the sources."""


class ChainError(MicrogridError):
    """The chain (node, contract or transaction) failed."""


class ChainUnavailable(ChainError):
    """The Ethereum node cannot be reached."""


class ContractReverted(ChainError):
    """A contract call reverted; carries the custom error's name and arguments."""

    def __init__(self, name: str, args: tuple | list = (), message: str | None = None) -> None:
        self.name = name
        self.args_ = tuple(args)
        super().__init__(message or f"{name}({', '.join(map(str, self.args_))})")


# Why the outbox gave a transaction up (TxSender.reconcile): it can never be mined. Here, not in
# dapp.chain.tx, so that the sentences for them (services/messages.py) need no web3.
DROPPED_OTHER_CHAIN = "other chain"  # signed for a chain with another genesis block
DROPPED_NONCE_USED = "nonce used"  # another transaction of the account took its nonce
DROPPED_BEHIND_GAP = "behind a gap"  # an earlier nonce is lost, so it can never be mined


class WalletError(MicrogridError):
    """A keystore or key operation failed (wrong passphrase, bad file, locked account)."""


# What the command line reports as "microgrid: <message>" instead of a traceback.
REPORTED_ERRORS: tuple[type[Exception], ...] = (MicrogridError, MeterError)

__all__ = [
    "REPORTED_ERRORS",
    "ChainError",
    "ChainUnavailable",
    "CompileError",
    "ContractReverted",
    "MeterError",
    "MicrogridError",
    "WalletError",
]
