"""The firmware sketch, compiled with g++ against small Arduino shims and driven frame by frame.

The harness (hardware/firmware/host/harness.cpp) simulates millis(), the relay pin, a fake INA226
on I2C and the EEPROM, and backs the sketch's signing interface with libsecp256k1; these tests
check the sketch against PROTOCOL.md through the Python parser, and its Keccak-256 and EIP-712
message building against eth-account.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import keccak

from hardware.emulator import ERROR_TEXT
from hardware.protocol import (
    ErrorCode,
    Identity,
    LineBuffer,
    MeterProtocolError,
    ReadReply,
    Request,
    crc16,
    encode_error,
    encode_frame,
    parse_reply,
    parse_request,
)
from hardware.signing import BlockRef, Domain
from tests.hardware.conftest import (
    VECTOR_BLOCK,
    VECTOR_DOMAIN,
    VECTOR_ENERGY_WH,
    VECTOR_KEY,
    VECTOR_SEQUENCE,
    documented_vector,
    eth_account_signature,
    require_in_ci,
)

FIRMWARE = Path(__file__).resolve().parents[2] / "hardware" / "firmware"
WARNINGS = ["-std=c++17", "-Wall", "-Wextra", "-Werror"]
SANITIZERS = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]  # runs the compiled harness


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> Path:
    """The harness built into a temporary directory (with sanitizers when they work here)."""
    gxx = shutil.which("g++")
    if gxx is None:
        require_in_ci("g++ is not installed")
    headers = [Path(d) / "secp256k1_recovery.h" for d in ("/usr/include", "/usr/local/include")]
    if not any(h.exists() for h in headers):
        require_in_ci("libsecp256k1 headers are missing (apt-get install libsecp256k1-dev)")
    out = tmp_path_factory.mktemp("firmware") / "meter-harness"
    sources = ["-I", str(FIRMWARE / "host"), "-I", str(FIRMWARE / "meter"),
               str(FIRMWARE / "host" / "harness.cpp"), "-o", str(out), "-lsecp256k1"]
    build = subprocess.run([gxx, *WARNINGS, *SANITIZERS, *sources], capture_output=True,
                           text=True)
    if build.returncode != 0 and "sanitize" in build.stderr:
        build = subprocess.run([gxx, *WARNINGS, "-O1", *sources], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr  # warnings are errors: the sketch must be clean
    return out


class Harness:
    """The running sketch: send lines, run simulated time, look at the relay pin."""

    def __init__(self, binary: Path) -> None:
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
        self.proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self._seq = 0

    def raw(self, data: bytes) -> list[bytes]:
        """Send bytes as they are; return the meter's output lines."""
        return self._exchange(b"#raw " + data.hex().encode() + b"\n")

    def line(self, data: bytes) -> list[bytes]:
        """Send one line (LF added); return the meter's output lines."""
        return self.raw(data + b"\n")

    def ask(self, command: str, relay: bool | None = None):
        """Send a valid request with a fresh sequence number; return (seq, decoded reply).

        READ passes the test vector's block."""
        self._seq += 1
        block = VECTOR_BLOCK if command == "READ" else None
        [reply] = self.line(Request(self._seq, command, relay, block=block).encode()[:-1])
        return self._seq, parse_reply(reply)

    def directive(self, text: str) -> str:
        """Send a harness directive; return its one-line answer."""
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode().strip()

    def advance(self, ms: int) -> None:
        """Let simulated time pass, running loop() every 10 ms."""
        assert self.directive(f"#advance {ms}") == "#ok"

    def read(self) -> ReadReply:
        """A READ, decoded (it must succeed)."""
        _, reply = self.ask("READ")
        assert reply.ok, reply
        return ReadReply.from_fields(reply.values, VECTOR_BLOCK)

    def identity(self) -> Identity:
        """An ID, decoded."""
        return Identity.from_fields(self.ask("ID")[1].values)

    def install(self, domain: Domain):
        """Send INSTALL; return the decoded reply."""
        self._seq += 1
        [reply] = self.line(Request(self._seq, "INSTALL", domain=domain).encode()[:-1])
        return parse_reply(reply)

    def relay_pin(self) -> int:
        """The relay output: 1 energised (closed), 0 open."""
        return int(self.directive("#pin").split()[1])

    def close(self) -> int:
        """End the harness; return its exit code (non-zero if a sanitizer fired)."""
        self.proc.stdin.close()
        code = self.proc.wait(timeout=10)
        self.proc.stdout.close()
        return code

    def _exchange(self, command: bytes) -> list[bytes]:
        self.proc.stdin.write(command)
        self.proc.stdin.flush()
        lines = []
        while (out := self.proc.stdout.readline()) != b"#end\n":
            assert out, "harness exited"
            lines.append(out[:-1])
        return lines


@pytest.fixture
def fresh(binary):
    """A meter booted for the first time (it makes its key), not provisioned, sensor 24 V 10 A."""
    harness = Harness(binary)
    harness.directive("#sensor 24000 10000")
    harness.advance(200)
    yield harness
    assert harness.close() == 0


@pytest.fixture
def fw(fresh):
    """A freshly booted meter, provisioned for the test vector's domain, reading 240 W."""
    assert fresh.install(VECTOR_DOMAIN).ok
    return fresh


def test_identify_follows_the_protocol(fresh):
    seq, reply = fresh.ask("ID")
    assert (reply.seq, reply.ok, reply.command) == (seq, True, "ID")
    identity = Identity.from_fields(reply.values)
    assert identity == Identity("meter-01", "2.0.0", "supply", 1000, 10, identity.address)
    assert identity.provisioned is False and identity.protocol == 3
    assert fresh.directive("#reboot") == "#ok"
    assert fresh.identity().address == identity.address  # the key is kept in EEPROM
    assert fresh.directive("#wipe") == "#ok"
    assert fresh.identity().address != identity.address  # an erased meter is a new meter


def test_the_test_vector_comes_out_of_a_real_read(fw):
    fw.directive("#setkey " + VECTOR_KEY.hex())
    fw.directive(f"#setcounter {VECTOR_ENERGY_WH} {VECTOR_SEQUENCE - 1}")
    fw.directive("#sensor 0 0")
    fw.advance(200)
    assert fw.identity() == Identity("meter-01", "2.0.0", "supply", 1000, 10,
                                     Account.from_key(VECTOR_KEY).address, VECTOR_DOMAIN)
    reading = fw.read()
    assert (reading.energy_wh, reading.sequence) == (VECTOR_ENERGY_WH, VECTOR_SEQUENCE)
    _, expected = eth_account_signature(VECTOR_KEY, VECTOR_DOMAIN, VECTOR_ENERGY_WH,
                                        VECTOR_SEQUENCE)
    assert reading.signature == expected
    assert "0x" + reading.signature.hex() == documented_vector()["signature"]


def test_readings_signed_by_the_sketch_verify_for_random_counters_and_sequences(fresh, binary):
    rng = random.Random(65)
    fresh.directive("#sensor 0 0")
    for _ in range(12):
        domain = Domain(rng.randint(1, 2**64 - 1), "0x" + rng.randbytes(20).hex())
        energy, last = rng.randint(0, 2**32 - 2), rng.randint(0, 2**32 - 300)
        fresh.directive("#wipe")  # a new meter, a new key, for each domain
        fresh.directive(f"#setcounter {energy} {last}")
        fresh.advance(100)
        assert fresh.install(domain).ok
        address = fresh.identity().address
        reading = fresh.read()
        assert (reading.energy_wh, reading.sequence) == (energy, last + 1)
        assert reading.signer(domain, address) == address
        # Recovered the way a contract or eth-account does it, from the digest alone:
        assert Account._recover_hash(reading.digest(domain, address),
                                     signature=reading.signature) == address
        assert int.from_bytes(reading.signature[32:64], "big") <= 2**255  # low s
        assert reading.verify(Domain(domain.chain_id % (2**64 - 1) + 1, domain.registry),
                              address) is False  # another chain: another signer


def test_sketch_keccak_matches_ethereum_keccak(fresh):
    rng = random.Random(256)
    for length in [0, 1, 55, 64, 135, 136, 137, 200, 272, 300]:
        data = rng.randbytes(length)
        assert fresh.directive("#keccak " + data.hex()) == "#keccak 0x" + keccak(data).hex()


def test_a_signed_reading_costs_three_keccak_permutations_and_one_signature(fw):
    fw.read()  # the first one also hashes the Reading type string once
    before = [int(x) for x in fw.directive("#stats").split()[1:]]
    for _ in range(5):
        fw.read()
    after = [int(x) for x in fw.directive("#stats").split()[1:]]
    assert (after[0] - before[0], after[1] - before[1]) == (3 * 5, 5)


def test_read_is_refused_until_installed_and_install_is_once(fresh):
    seq, reply = fresh.ask("READ")
    assert (reply.seq, reply.ok, reply.code) == (seq, False, ErrorCode.NOT_PROVISIONED)
    reply = fresh.install(VECTOR_DOMAIN)
    assert reply.values == ("31337", VECTOR_DOMAIN.registry.lower())
    assert fresh.install(VECTOR_DOMAIN).ok  # the same values again: OK, idempotent
    for other in (Domain(1, VECTOR_DOMAIN.registry), Domain(31337, "0x" + "ab" * 20)):
        refused = fresh.install(other)
        assert (refused.ok, refused.code) == (False, ErrorCode.ALREADY_PROVISIONED)
    fresh.directive("#reboot")
    assert fresh.identity().domain == VECTOR_DOMAIN  # kept in EEPROM
    assert not fresh.install(Domain(7, VECTOR_DOMAIN.registry)).ok
    fresh.advance(100)
    assert fresh.read().verify(VECTOR_DOMAIN, fresh.identity().address)


def test_the_key_never_leaves_the_meter(fw):
    fw.directive("#setkey " + VECTOR_KEY.hex())
    fw.advance(100)
    out = b"".join(fw.line(Request(i, cmd, block=VECTOR_BLOCK if cmd == "READ" else None)
                           .encode()[:-1])[0]
                   for i, cmd in enumerate(("ID", "READ", "HB", "READ", "ID"), start=1))
    out += b"".join(b"".join(fw.line(line)) for line in fuzz_lines(random.Random(3), 300))
    assert VECTOR_KEY.hex().encode() not in out.lower()


def test_sequence_grows_and_a_power_cut_skips_numbers_but_never_reuses_one(fw):
    sequences = [fw.read().sequence for _ in range(5)]
    assert sequences == list(range(sequences[0], sequences[0] + 5))
    for _ in range(3):
        fw.directive("#reboot")  # a power cut
        fw.advance(100)
        after = fw.read().sequence
        assert after > sequences[-1]
        sequences.append(after)
    assert int(fw.directive("#eeprom").split()[1]) < 20  # reserved 256 at a time, not each


def test_read_converts_the_sensor_registers(fw):
    _, reply = fw.ask("READ")
    reading = ReadReply.from_fields(reply.values, VECTOR_BLOCK)
    assert (reading.power_w, reading.voltage_v, reading.current_a) == (240.0, 24.0, 10.0)
    assert reading.relay_closed is False and reading.samples == 2  # 200 ms at 100 ms a sample
    fw.directive("#sensor 12340 -1500")
    fw.advance(100)
    reading = fw.read()
    assert (reading.power_w, reading.voltage_v, reading.current_a) == (-18.5, 12.34, -1.5)


def test_energy_counts_forward_power_only(fw):
    fw.advance(3_600_000)  # one hour at 240 W
    assert fw.read().energy_wh == 240
    fw.directive("#sensor 24000 -10000")  # current flowing backwards is not counted
    fw.advance(600_000)
    assert fw.read().energy_wh == 240


def test_relay_commands_are_idempotent(fw):
    assert fw.relay_pin() == 0  # open at power-on
    for _ in range(2):
        assert fw.ask("RELAY", True)[1].values == ("1",)
        assert fw.relay_pin() == 1
    assert fw.ask("HB")[1].values == ("1",)
    for _ in range(2):
        assert fw.ask("RELAY", False)[1].values == ("0",)
        assert fw.relay_pin() == 0
    assert fw.read().relay_closed is False


def error(seq: int, code: ErrorCode) -> bytes:
    """The exact error line PROTOCOL.md prescribes."""
    return encode_error(seq, code, ERROR_TEXT[code])[:-1]


def test_bad_frames_get_the_documented_errors(fw):
    good = Request(5, "RELAY", True).encode()[:-1]
    assert fw.line(good[:-1] + (b"0" if good[-1:] != b"0" else b"1")) == \
        [error(0, ErrorCode.BAD_CHECKSUM)]
    assert fw.line(encode_frame(6, ("TOGGLE",))[:-1]) == [error(6, ErrorCode.UNKNOWN_COMMAND)]
    assert fw.line(encode_frame(7, ("RELAY", "2"))[:-1]) == [error(7, ErrorCode.BAD_ARGUMENT)]
    assert fw.line(encode_frame(8, ("RELAY",))[:-1]) == [error(8, ErrorCode.BAD_ARGUMENT)]
    assert fw.line(encode_frame(9, ("ID", "x"))[:-1]) == [error(9, ErrorCode.BAD_ARGUMENT)]
    body = b"0,RELAY,1"
    assert fw.line(b"$" + body + b"*%04X" % crc16(body)) == [error(0, ErrorCode.BAD_FRAME)]
    assert fw.line(b"x" * 120) == [error(0, ErrorCode.BAD_FRAME)]  # at the limit: read
    assert fw.line(b"x" * 121) == [error(0, ErrorCode.LINE_TOO_LONG)]  # over: one error
    assert fw.raw(b"y" * 500 + b"\n" + good + b"\r\n") == \
        [error(0, ErrorCode.LINE_TOO_LONG), parse_and_echo(good, "1")]
    assert fw.line(b"") == [] and fw.line(b"\r") == []  # empty lines: no reply
    assert fw.relay_pin() == 1  # only the one good RELAY,1 acted


def parse_and_echo(request_line: bytes, relay: str) -> bytes:
    """The OK reply the meter owes a RELAY/HB request."""
    request = parse_request(request_line)
    return encode_frame(request.seq, ("OK", request.command, relay))[:-1]


def test_watchdog_opens_the_relay_after_exactly_n_seconds_of_silence(fw):
    fw.ask("RELAY", True)
    for _ in range(3):  # heartbeats every 9 s keep it closed for 27 s
        fw.advance(9000)
        assert fw.ask("HB")[1].values == ("1",)
    fw.advance(9990)
    assert fw.relay_pin() == 1
    fw.advance(10)
    assert fw.relay_pin() == 0
    assert fw.read().relay_closed is False


def test_garbage_does_not_feed_the_watchdog(fw):
    fw.ask("RELAY", True)
    for _ in range(5):
        fw.advance(2000)
        fw.line(b"$1,HB*0000")  # bad checksum
        fw.line(encode_frame(2, ("NOPE",))[:-1])  # unknown command
    assert fw.relay_pin() == 0


def test_sensor_fault_refuses_read_and_lets_the_watchdog_act(fw):
    fw.ask("RELAY", True)
    fw.directive("#nack 1")
    fw.advance(200)
    seq, reply = fw.ask("READ")
    assert (reply.seq, reply.ok, reply.code) == (seq, False, ErrorCode.SENSOR_FAULT)
    for _ in range(5):
        fw.advance(2500)
        fw.ask("READ")
    assert fw.relay_pin() == 0
    fw.directive("#nack 0")
    fw.advance(100)
    assert fw.ask("READ")[1].ok


def test_counter_survives_a_reset_never_below_what_was_signed_with_little_eeprom_wear(fw):
    fw.directive("#sensor 24500 10000")  # 245 W
    fw.ask("RELAY", True)
    writes = int(fw.directive("#eeprom").split()[1])
    fw.advance(3_600_000)
    assert int(fw.directive("#eeprom").split()[1]) - writes == 24  # one write per 10 Wh
    before = fw.read()
    assert before.energy_wh == 245  # signed: saved before it was signed
    fw.advance(3600 * 1000 * 8 // 245)  # 8 Wh more, measured but not yet saved or signed
    assert fw.directive("#reboot") == "#ok"
    assert fw.relay_pin() == 0  # open after a reset
    fw.advance(100)
    after = fw.read()
    assert after.energy_wh == before.energy_wh  # the unsigned 8 Wh are lost, never invented
    assert after.sequence > before.sequence
    assert after.samples < before.samples and after.relay_closed is False
    fw.advance(3_600_000)
    assert 245 + 245 - 1 <= fw.read().energy_wh <= 245 + 245


def expected_reply(line: bytes) -> bytes | tuple[int, str] | None:
    """What PROTOCOL.md (through the Python parser) says the meter answers to `line`."""
    lines = LineBuffer().feed(line + b"\n")
    if not lines:
        return None
    if lines[0] is None:
        return error(0, ErrorCode.LINE_TOO_LONG)
    try:
        request = parse_request(lines[0])
    except MeterProtocolError as exc:
        return error(exc.seq, exc.code)
    return (request.seq, request.command)


def fuzz_lines(rng: random.Random, count: int) -> list[bytes]:
    """Random bytes, damaged frames, and random bodies with a correct CRC (no LF inside)."""
    valid = [Request(rng.randint(1, 65535), c, r,
                     block=VECTOR_BLOCK if c == "READ" else None).encode()[:-1]
             for c, r in (("ID", None), ("READ", None), ("HB", None), ("RELAY", True),
                          ("RELAY", False))]
    out = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.25:
            line = bytes(rng.randrange(256) for _ in range(rng.randint(0, 140)))
        elif kind < 0.6:
            line = bytearray(rng.choice(valid))
            for _ in range(rng.randint(0, 3)):
                pos = rng.randrange(len(line))
                op = rng.random()
                if op < 0.4:
                    line[pos] = rng.randrange(256)
                elif op < 0.7:
                    del line[pos]
                else:
                    line.insert(pos, rng.randrange(256))
            line = bytes(line[:rng.randint(0, len(line))] if rng.random() < 0.2 else line)
        else:
            body = "".join(rng.choice("0123456789,RELAYIDHBX$*") for _ in range(rng.randint(0, 20)))
            line = b"$" + body.encode() + b"*%04X" % crc16(body.encode())
        out.append(line.replace(b"\n", b""))
    return out


def test_firmware_answers_thousands_of_random_lines_exactly_like_the_reference_parser(fw):
    rng = random.Random(11)
    oks = 0
    for line in fuzz_lines(rng, 20_000):
        want = expected_reply(line)
        got = fw.line(line)
        if want is None:
            assert got == [], line
        elif isinstance(want, bytes):
            assert got == [want], line
        else:
            [reply_line] = got
            reply = parse_reply(reply_line)
            assert (reply.seq, reply.command, reply.ok) == (*want, True), line
            oks += 1
    assert oks > 1000  # the corpus reached the commands, not only the framing checks


def argument_frames(rng: random.Random, count: int, command: str, firsts: list[str],
                    seconds: list[str]) -> list[bytes]:
    """`count` frames of a two-argument command with a correct CRC, each argument drawn from
    its list (valid values and near misses); one in ten has an argument too few or too many."""
    out = []
    for _ in range(count):
        args = [rng.choice(firsts), rng.choice(seconds)]
        if rng.random() < 0.1:
            args = args[:rng.randint(0, 1)] if rng.random() < 0.5 else [*args, "1"]
        body = ",".join([str(rng.randint(1, 65535)), command, *args]).encode()
        out.append(b"$" + body + b"*%04X" % crc16(body))
    return out


def install_lines(rng: random.Random, count: int) -> list[bytes]:
    """INSTALL frames with a correct CRC: valid ones and near misses of every argument rule."""
    registry = "0x" + "5fbdb2315678afecb367f032d93f642f64180aa3"
    chains = ["1", "31337", str(2**64 - 1), str(2**64), "0", "031337", "", "12a", "9" * 21,
              str(2**63)]
    addresses = [registry, registry.upper(), "0X" + registry[2:], registry[:-1], registry + "0",
                 registry[:5] + "G" + registry[6:], "", "0x" + "0" * 40]
    return argument_frames(rng, count, "INSTALL", chains, addresses)


def test_firmware_parses_install_exactly_like_the_reference_parser(fresh):
    accepted = None
    for line in install_lines(random.Random(8), 400):
        [reply_line] = fresh.line(line)
        reply = parse_reply(reply_line)
        try:
            request = parse_request(line)
        except MeterProtocolError as exc:
            assert (reply.seq, reply.ok, reply.code) == (exc.seq, False, exc.code), line
            continue
        accepted = accepted or request.domain  # the first valid INSTALL fixes the domain
        if request.domain == accepted:
            assert reply.ok and reply.values == (str(accepted.chain_id),
                                                 accepted.registry.lower()), line
        else:
            assert (reply.ok, reply.code) == (False, ErrorCode.ALREADY_PROVISIONED), line
    assert accepted is not None


def read_lines(rng: random.Random, count: int) -> list[bytes]:
    """READ frames with a correct CRC: valid ones and near misses of both argument rules."""
    block_hash = VECTOR_BLOCK.hex_hash()
    numbers = ["0", "1", "1000", str(2**64 - 1), str(2**64), "01000", "", "-1", "12a", "9" * 21]
    hashes = [block_hash, "0x" + "0" * 64, "0x" + block_hash[2:].upper(), "0X" + block_hash[2:],
              block_hash[:-1], block_hash + "0", block_hash[:5] + "g" + block_hash[6:], "",
              block_hash[2:]]
    return argument_frames(rng, count, "READ", numbers, hashes)


def test_firmware_parses_read_exactly_like_the_reference_parser_and_signs_the_block(fw):
    address = fw.identity().address
    last = fw.read().sequence
    signed = 0
    for line in read_lines(random.Random(9), 300):
        [reply_line] = fw.line(line)
        reply = parse_reply(reply_line)
        try:
            request = parse_request(line)
        except MeterProtocolError as exc:
            assert (reply.seq, reply.ok, reply.code) == (exc.seq, False, exc.code), line
            continue
        assert reply.ok, line
        reading = ReadReply.from_fields(reply.values, request.block)
        assert reading.sequence == last + 1, line  # a refused READ used no sequence number
        assert reading.verify(VECTOR_DOMAIN, address), line  # signed over the block it was given
        other = BlockRef(request.block.number, bytes(b ^ 1 for b in request.block.hash))
        assert not dataclasses.replace(reading, block=other).verify(VECTOR_DOMAIN, address)
        last, signed = reading.sequence, signed + 1
    assert signed > 20
