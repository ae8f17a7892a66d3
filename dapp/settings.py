"""How a setting's text reads as a value, shared by the command line and the web app's config."""

from __future__ import annotations


def flag(value: object) -> bool:
    """A setting's truth: True, 1, "1", "yes", "on", "true" (any case)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "yes", "on", "true")
    return bool(value)
