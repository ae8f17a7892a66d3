"""The meter bridge: forwards meters' signed readings to the chain, sets relays from it."""

from dapp.bridge.bridge import MeterBridge
from dapp.bridge.drivers import SignedReading, open_driver, register_driver
from dapp.bridge.port import BridgeMeter, MeterState, parse_meter_spec

__all__ = ["BridgeMeter", "MeterBridge", "MeterState", "SignedReading", "open_driver",
           "parse_meter_spec", "register_driver"]
