"""Microgrid Energy Exchange: peer-to-peer energy trading on an Ethereum private chain."""

__version__ = "0.1.0"
