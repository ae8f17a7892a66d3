"""The EIP-712 reading digest and signatures, and the emulated meter's key file (its EEPROM)."""

from __future__ import annotations

import json
import os
import random
import stat

import pytest
from eth_account import Account

from hardware.emulator import EmulatedMeter, MeterMemory, Microgrid
from hardware.protocol import ErrorCode, ReadReply, Request, parse_reply
from hardware.signing import BlockRef, Domain, reading_digest, recover_signer, sign_reading
from tests.hardware.conftest import (
    VECTOR_BLOCK,
    VECTOR_DOMAIN,
    VECTOR_ENERGY_WH,
    VECTOR_KEY,
    VECTOR_SEQUENCE,
    documented_vector,
    eth_account_signature,
)

VECTOR_METER = Account.from_key(VECTOR_KEY).address


def test_the_test_vector_is_eth_accounts_and_is_written_in_protocol_md():
    digest, signature = eth_account_signature(VECTOR_KEY, VECTOR_DOMAIN, VECTOR_ENERGY_WH,
                                              VECTOR_SEQUENCE)
    assert reading_digest(VECTOR_DOMAIN, VECTOR_METER, VECTOR_ENERGY_WH, VECTOR_SEQUENCE,
                          VECTOR_BLOCK) == digest
    assert sign_reading(VECTOR_KEY, VECTOR_DOMAIN, VECTOR_ENERGY_WH, VECTOR_SEQUENCE,
                        VECTOR_BLOCK) == signature
    assert documented_vector() == {"digest": "0x" + digest.hex(),
                                   "signature": "0x" + signature.hex()}


def test_digest_and_signatures_match_eth_account_for_random_readings():
    rng = random.Random(712)
    for _ in range(30):
        key = rng.randbytes(32)
        domain = Domain(rng.randint(1, 2**64 - 1), "0x" + rng.randbytes(20).hex())
        energy, sequence = rng.randint(0, 2**64 - 1), rng.randint(0, 2**64 - 1)
        block = BlockRef(rng.randint(0, 2**64 - 1), rng.randbytes(32))
        digest, signature = eth_account_signature(key, domain, energy, sequence, block)
        meter = Account.from_key(key).address
        assert reading_digest(domain, meter, energy, sequence, block) == digest
        assert sign_reading(key, domain, energy, sequence, block) == signature
        assert signature[64] in (27, 28)
        assert int.from_bytes(signature[32:64], "big") <= 2**255  # low s
        assert recover_signer(domain, meter, energy, sequence, block, signature) == meter


@pytest.mark.parametrize("change", ["energy", "sequence", "chain", "registry", "meter",
                                    "block number", "block hash"])
def test_a_signature_recovers_another_address_for_any_other_reading(change):
    signature = sign_reading(VECTOR_KEY, VECTOR_DOMAIN, VECTOR_ENERGY_WH, VECTOR_SEQUENCE,
                             VECTOR_BLOCK)
    domain, meter, block = VECTOR_DOMAIN, VECTOR_METER, VECTOR_BLOCK
    energy, sequence = VECTOR_ENERGY_WH, VECTOR_SEQUENCE
    if change == "block number":
        block = BlockRef(block.number + 1, block.hash)
    elif change == "block hash":
        block = BlockRef(block.number, b"\xa5" * 31 + b"\xa4")
    elif change == "energy":
        energy += 1
    elif change == "sequence":
        sequence -= 1
    elif change == "chain":
        domain = Domain(1, domain.registry)
    elif change == "registry":
        domain = Domain(domain.chain_id, "0x" + "00" * 19 + "01")
    else:
        meter = Account.create().address
    assert recover_signer(domain, meter, energy, sequence, block, signature) != VECTOR_METER
    reading = ReadReply(energy, 0.0, 24.0, 0.0, False, 1, sequence, signature, block)
    assert reading.verify(domain, meter) is False
    assert ReadReply(VECTOR_ENERGY_WH, 0.0, 24.0, 0.0, False, 1, VECTOR_SEQUENCE,
                         signature, VECTOR_BLOCK).verify(VECTOR_DOMAIN, VECTOR_METER)


@pytest.mark.parametrize("signature", [bytes(64) + b"\x1b", b"\xff" * 64 + b"\x1c",
                                       bytes(range(64)) + b"\x1b"])
def test_a_forged_signature_verifies_as_nobody(signature):
    reading = ReadReply(VECTOR_ENERGY_WH, 0.0, 24.0, 0.0, False, 1, VECTOR_SEQUENCE,
                            signature, VECTOR_BLOCK)
    assert reading.verify(VECTOR_DOMAIN, VECTOR_METER) is False
    with pytest.raises(ValueError):
        reading.signer(VECTOR_DOMAIN, VECTOR_METER)


# --------------------------------------------------------------------------- the key file


def ask(meter: EmulatedMeter, request: Request):
    """One request line to the meter, decoded reply."""
    return parse_reply(meter.handle_line(request.encode()[:-1]))


def test_key_file_is_created_once_with_mode_0600_and_keeps_the_identity(tmp_path):
    path = tmp_path / "meter.key"
    state = MeterMemory.open(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert MeterMemory.open(path).address == state.address  # the same meter next time
    assert MeterMemory.open(tmp_path / "other.key").address != state.address
    assert json.loads(path.read_text())["private_key"] not in repr(state)
    path.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        MeterMemory.open(path)


def test_a_new_key_file_appears_whole_and_only_once(tmp_path, monkeypatch):
    """The key is written beside the file and linked into place: a start that dies while
    writing leaves no half key file, and a start that finds the file already made uses it."""
    import hardware.emulator as emulator

    path = tmp_path / "meter.key"

    def dies_writing(target, text):
        target.write_text(text[:20])
        raise OSError("power cut")

    monkeypatch.setattr(emulator, "_write_whole", dies_writing)
    with pytest.raises(OSError, match="power cut"):
        MeterMemory.open(path)
    assert not path.exists()  # only the abandoned temporary file, never the key file
    monkeypatch.undo()
    first = MeterMemory.open(path)  # the next start makes the key file whole
    assert MeterMemory.open(path).address == first.address

    real_link = os.link

    def another_start_won(src, dst):  # the other start linked its key first
        monkeypatch.setattr(emulator.os, "link", real_link)
        MeterMemory.open(dst)
        real_link(src, dst)

    other = tmp_path / "other.key"
    monkeypatch.setattr(emulator.os, "link", another_start_won)
    winner = MeterMemory.open(other)
    assert MeterMemory.open(other).address == winner.address != first.address
    assert sorted(p.name for p in tmp_path.glob("other.key*")) == ["other.key"]


def test_a_key_directory_holds_one_key_per_meter(tmp_path):
    keys = tmp_path / "keys"
    grid = Microgrid()
    meters = [EmulatedMeter(kind, grid, meter_id=name,
                            state=MeterMemory.in_directory(keys, name))
              for kind, name in (("supply", "roof-1"), ("load", "house-1"), ("load", "house-2"))]
    assert len({m.address for m in meters}) == 3
    assert sorted(p.name for p in keys.iterdir()) == ["house-1.key", "house-2.key", "roof-1.key"]
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in keys.iterdir())
    with pytest.raises(ValueError):
        MeterMemory.in_directory(keys, "../escape")


def test_emulated_meter_signs_the_test_vector(tmp_path):
    state = MeterMemory(VECTOR_KEY, energy_wh=VECTOR_ENERGY_WH, sequence=VECTOR_SEQUENCE - 1,
                       domain=VECTOR_DOMAIN)
    meter = EmulatedMeter("load", Microgrid(), state=state)  # relay open: the counter stays
    reply = ask(meter, Request(1, "READ", block=VECTOR_BLOCK))
    reading = ReadReply.from_fields(reply.values, VECTOR_BLOCK)
    assert (reading.energy_wh, reading.sequence) == (VECTOR_ENERGY_WH, VECTOR_SEQUENCE)
    assert "0x" + reading.signature.hex() == documented_vector()["signature"]


def test_provisioning_is_once_idempotent_and_survives_a_restart(tmp_path):
    path = tmp_path / "meter.key"
    meter = EmulatedMeter("supply", Microgrid(), state=MeterMemory.open(path))
    refused = ask(meter, Request(1, "READ", block=VECTOR_BLOCK))
    assert (refused.ok, refused.code) == (False, ErrorCode.NOT_PROVISIONED)
    assert ask(meter, Request(2, "INSTALL", domain=VECTOR_DOMAIN)).values == \
        ("31337", VECTOR_DOMAIN.registry.lower())
    assert ask(meter, Request(3, "INSTALL", domain=VECTOR_DOMAIN)).ok  # the same again: OK
    for other in (Domain(1, VECTOR_DOMAIN.registry), Domain(31337, "0x" + "22" * 20)):
        again = ask(meter, Request(4, "INSTALL", domain=other))
        assert (again.ok, again.code) == (False, ErrorCode.ALREADY_PROVISIONED)
    reply = ask(meter, Request(5, "READ", block=VECTOR_BLOCK))
    reading = ReadReply.from_fields(reply.values, VECTOR_BLOCK)
    assert reading.verify(VECTOR_DOMAIN, meter.address)
    restarted = EmulatedMeter("supply", Microgrid(), state=MeterMemory.open(path))
    assert restarted.identity.domain == VECTOR_DOMAIN
    assert not ask(restarted, Request(6, "INSTALL", domain=Domain(5, VECTOR_DOMAIN.registry))).ok


def test_counter_and_sequence_continue_after_a_restart_and_are_never_reused(tmp_path):
    path = tmp_path / "meter.key"
    state = MeterMemory.open(path)
    state.domain = VECTOR_DOMAIN
    state.save()
    grid = Microgrid(acceleration=3600)
    meter = EmulatedMeter("supply", grid, state=state)
    grid.plant.advance(1800)
    first = meter.reading(VECTOR_BLOCK)
    second = meter.reading(VECTOR_BLOCK)
    assert second.sequence == first.sequence + 1 and second.energy_wh >= first.energy_wh > 0
    # A new process: the physics starts again at 0 Wh; the meter's counter does not.
    restarted = EmulatedMeter("supply", Microgrid(), state=MeterMemory.open(path))
    third = restarted.reading(VECTOR_BLOCK)
    assert third.sequence == second.sequence + 1
    assert third.energy_wh >= second.energy_wh
    assert third.verify(VECTOR_DOMAIN, meter.address)


def test_the_key_never_appears_on_the_line(tmp_path):
    state = MeterMemory(VECTOR_KEY, domain=VECTOR_DOMAIN)
    meter = EmulatedMeter("supply", Microgrid(), state=state)
    out = b"".join(meter.handle_line(Request(i, cmd, block=VECTOR_BLOCK if cmd == "READ" else None)
                                     .encode()[:-1])
                   for i, cmd in enumerate(("ID", "READ", "HB", "READ"), start=1))
    assert VECTOR_KEY.hex().encode() not in out.lower()
    assert state.address.lower()[2:].encode() in out  # the address is sent, the key is not
