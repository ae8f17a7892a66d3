"""Helpers shared by the subcommands: settings from flags or MICROGRID_* variables."""

from __future__ import annotations

import os


def env(name: str, default: str | None = None) -> str | None:
    """The MICROGRID_<name> environment variable, or `default`."""
    return os.environ.get(f"MICROGRID_{name}", default)


def env_int(name: str, default: int) -> int:
    """An integer MICROGRID_<name> variable, or `default`."""
    value = env(name)
    return default if value is None or value == "" else int(value)
