"""Meter lines on descriptors numbered 1024 (FD_SETSIZE) and above, as in a process that
carries some hundreds of meters: select() refuses such descriptors, so the emulator's server
and the host's ports must wait with poll() (hardware/ports.py)."""

from __future__ import annotations

import os
import resource

import pytest

from hardware.driver import MeterClient
from hardware.emulator import EmulatedMeter, MeterMemory, MeterServer, Microgrid
from hardware.models import LeadAcidBattery, LoadProfile, Plant, SolarArray
from hardware.ports import allow_lines
from tests.hardware.conftest import VECTOR_BLOCK, VECTOR_DOMAIN, require_in_ci

FD_SETSIZE = 1024


@pytest.fixture
def high_descriptors():
    """Fill every descriptor below FD_SETSIZE, so whatever opens next is numbered above it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FD_SETSIZE + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            require_in_ci(f"the open files limit ({hard}) is below {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    fillers: list[int] = []
    try:
        while not fillers or fillers[-1] < FD_SETSIZE:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("transport", ["tcp", "pty"])
def test_a_meter_answers_on_descriptors_above_fd_setsize(high_descriptors, transport):
    plant = Plant(pv=SolarArray(peak_w=800), battery=LeadAcidBattery(capacity_wh=2400),
                  load=LoadProfile.constant(400), time_s=12 * 3600)
    meter = EmulatedMeter("supply", Microgrid(plant), state=MeterMemory.ephemeral())
    meter.provision(VECTOR_DOMAIN)
    with MeterServer(meter, transport=transport) as server:
        listening = server._listener.fileno() if server._listener else server._master  # noqa: SLF001
        assert listening is not None and listening >= FD_SETSIZE
        with MeterClient(server.url, timeout=0.5, retries=0) as client:
            assert client._port.fileno() >= FD_SETSIZE  # noqa: SLF001
            identity = client.identify()
            assert identity.address == meter.address
            assert client.set_relay(True) is True
            reading = client.read(VECTOR_BLOCK)
            assert reading.verify(VECTOR_DOMAIN, identity.address)
            assert client.heartbeat() is True


def test_allow_lines_raises_the_soft_open_files_limit_to_fit_the_ports():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        require_in_ci(f"the hard open files limit ({hard}) is below 4096")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert allow_lines([f"/dev/ttyUSB{i}" for i in range(300)] + ["socket://h:1"] * 300)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 300 * 5 + 300 + 256
        if hard != resource.RLIM_INFINITY:
            assert not allow_lines([f"/dev/ttyUSB{i}" for i in range(hard)])
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
