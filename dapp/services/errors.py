"""Errors the services raise at the user: each message is a sentence a person can act on."""

from __future__ import annotations

from dapp.errors import MicrogridError


class UserError(MicrogridError):
    """A request cannot be done; `str(exc)` is the sentence to show, `status` the HTTP status."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(UserError):
    """The user typed something unusable (empty, negative, not a number, too many decimals)."""

    status = 400


class ActionRefused(UserError):
    """The input is well-formed but the action cannot happen (funds, state, contract rules)."""

    status = 409


class ChainDown(UserError):
    """The chain cannot be reached (or has no Microgrid contracts): try again later."""

    status = 503


class LoginFailed(UserError):
    """Wrong passphrase or unknown account."""

    status = 401


class TooManyAttempts(UserError):
    """Rate limit hit; `retry_after` is in seconds."""

    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
