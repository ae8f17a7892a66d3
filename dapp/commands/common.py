"""Helpers shared by the subcommands: settings from flags or MICROGRID_* variables."""

from __future__ import annotations

import os


def env(name: str, default: str | None = None) -> str | None:
    """The MICROGRID_<name> environment variable, or `default`."""
    return os.environ.get(f"MICROGRID_{name}", default)


def env_default(name: str, default: object) -> str:
    """The MICROGRID_<name> variable (or `default`) as text, for an option that has a `type`.

    argparse converts string defaults with the option's `type`, so a malformed variable is a
    usage error of the command that reads it, not a crash of every command at parser build time.
    """
    value = env(name)
    return str(default) if value is None or value == "" else value
