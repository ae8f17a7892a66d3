"""Subcommands of the `microgrid` CLI, one module per group; each exposes `register(sub)`."""
