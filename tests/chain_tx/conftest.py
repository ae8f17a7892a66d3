"""Reuse the real-anvil fixtures of the node suite."""

from tests.chain.conftest import anvil_factory  # noqa: F401 - a fixture, re-exported
