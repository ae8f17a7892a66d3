"""The firmware sketch, compiled with g++ against small Arduino shims and driven frame by frame.

The harness (hardware/firmware/host/harness.cpp) simulates millis(), the relay pin, a fake INA226
on I2C and the EEPROM; these tests check the sketch against PROTOCOL.md through the Python parser.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from hardware.emulator import ERROR_TEXT
from hardware.protocol import (
    ErrorCode,
    Identity,
    LineBuffer,
    MeterProtocolError,
    Reading,
    Request,
    crc16,
    encode_error,
    encode_frame,
    parse_reply,
    parse_request,
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
        pytest.skip("g++ is not installed")
    out = tmp_path_factory.mktemp("firmware") / "meter-harness"
    sources = ["-I", str(FIRMWARE / "host"), "-I", str(FIRMWARE / "meter"),
               str(FIRMWARE / "host" / "harness.cpp"), "-o", str(out)]
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
        """Send a valid request with a fresh sequence number; return (seq, decoded reply)."""
        self._seq += 1
        [reply] = self.line(Request(self._seq, command, relay).encode()[:-1])
        return self._seq, parse_reply(reply)

    def directive(self, text: str) -> str:
        """Send a harness directive; return its one-line answer."""
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode().strip()

    def advance(self, ms: int) -> None:
        """Let simulated time pass, running loop() every 10 ms."""
        assert self.directive(f"#advance {ms}") == "#ok"

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
def fw(binary):
    """A freshly booted meter with the sensor reading 24 V, 10 A (240 W)."""
    harness = Harness(binary)
    harness.directive("#sensor 24000 10000")
    harness.advance(200)
    yield harness
    assert harness.close() == 0


def test_identify_follows_the_protocol(fw):
    seq, reply = fw.ask("ID")
    assert (reply.seq, reply.ok, reply.command) == (seq, True, "ID")
    assert Identity.from_fields(reply.values) == Identity("meter-01", "1.0.0", "supply", 1000, 10)


def test_read_converts_the_sensor_registers(fw):
    _, reply = fw.ask("READ")
    reading = Reading.from_fields(reply.values)
    assert (reading.power_w, reading.voltage_v, reading.current_a) == (240.0, 24.0, 10.0)
    assert reading.relay_closed is False and reading.samples == 2  # 200 ms at 100 ms a sample
    fw.directive("#sensor 12340 -1500")
    fw.advance(100)
    reading = Reading.from_fields(fw.ask("READ")[1].values)
    assert (reading.power_w, reading.voltage_v, reading.current_a) == (-18.5, 12.34, -1.5)


def test_energy_counts_forward_power_only(fw):
    fw.advance(3_600_000)  # one hour at 240 W
    assert Reading.from_fields(fw.ask("READ")[1].values).energy_wh == 240
    fw.directive("#sensor 24000 -10000")  # current flowing backwards is not counted
    fw.advance(600_000)
    assert Reading.from_fields(fw.ask("READ")[1].values).energy_wh == 240


def test_relay_commands_are_idempotent(fw):
    assert fw.relay_pin() == 0  # open at power-on
    for _ in range(2):
        assert fw.ask("RELAY", True)[1].values == ("1",)
        assert fw.relay_pin() == 1
    assert fw.ask("HB")[1].values == ("1",)
    for _ in range(2):
        assert fw.ask("RELAY", False)[1].values == ("0",)
        assert fw.relay_pin() == 0
    assert Reading.from_fields(fw.ask("READ")[1].values).relay_closed is False


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
    assert Reading.from_fields(fw.ask("READ")[1].values).relay_closed is False


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


def test_counter_survives_a_reset_at_most_10_wh_lower_with_little_eeprom_wear(fw):
    fw.directive("#sensor 24500 10000")  # 245 W
    fw.ask("RELAY", True)
    fw.advance(3_600_000)
    before = Reading.from_fields(fw.ask("READ")[1].values)
    assert before.energy_wh == 245
    assert int(fw.directive("#eeprom").split()[1]) == 24  # one write per 10 Wh
    assert fw.directive("#reboot") == "#ok"
    assert fw.relay_pin() == 0  # open after a reset
    fw.advance(100)
    after = Reading.from_fields(fw.ask("READ")[1].values)
    assert before.energy_wh - 10 <= after.energy_wh <= before.energy_wh
    assert after.samples < before.samples and after.relay_closed is False


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
    valid = [Request(rng.randint(1, 65535), c, r).encode()[:-1]
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
