"""The one translation of "the node is not there" into `ChainUnavailable`.

Transports (dapp/chain/transports.py) translate at the provider, so a node that is down raises
`ChainUnavailable` from any call made through `connect()`. A Web3 built elsewhere (a test's plain
`HTTPProvider`) raises requests' or web3's own connection errors: the sender and the listener
wrap their node calls in `translated()` so those mean the same thing, with the same message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from web3.exceptions import PersistentConnectionError, ProviderConnectionError

from dapp.errors import ChainError, ChainUnavailable

# What "the node is not there" looks like from web3 and requests (requests' errors are OSErrors).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ProviderConnectionError,
    PersistentConnectionError,
)


def is_connection_error(exc: BaseException) -> bool:
    """True for errors that mean "the node is not there", as opposed to a node's answer."""
    return isinstance(exc, CONNECTION_ERRORS) and not isinstance(exc, ChainError)


def describe(exc: BaseException, timeout: float | None = None) -> str:
    """A short, human reason for a transport failure (requests' messages are paragraphs)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return "connection refused (is the node running?)"
    if any(isinstance(e, FileNotFoundError) for e in chain):
        return "no IPC socket there (is the node running?)"
    if any(isinstance(e, TimeoutError) for e in chain) or "timed out" in text.lower():
        return f"no answer within {timeout:g} s" if timeout is not None else "no answer in time"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host name"
    first = str(exc) or type(exc).__name__
    return first if len(first) <= 200 else first[:197] + "..."


def unavailable(
    exc: BaseException, where: str | None = None, timeout: float | None = None
) -> ChainUnavailable:
    """The project's error for a node that cannot be reached (`where`: the node, if known)."""
    place = f"{where}: " if where else ""
    return ChainUnavailable(f"chain unavailable: {place}{describe(exc, timeout)}")


@contextlib.contextmanager
def translated(where: str | None = None) -> Iterator[None]:
    """Run node calls inside the block; a connection failure raises `ChainUnavailable`."""
    try:
        yield
    except ChainError:
        raise
    except CONNECTION_ERRORS as exc:
        raise unavailable(exc, where) from exc
