"""The meter wire protocol (hardware/PROTOCOL.md): framing, CRC, parse/format and typed errors.

Pure functions and small value types, shared by the host driver and the emulator; no I/O here.
The firmware (hardware/firmware/meter/meter.ino) implements the same rules in C++. The device side
imports nothing from `dapp` (tests/test_layering.py): the meter kinds, the rating limit and the
meter errors are stated here, and the app (dapp.errors, dapp.chain) takes them from here.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from enum import IntEnum

from eth_utils import to_checksum_address

from hardware.signing import UINT64_MAX, BlockRef, Domain, reading_digest, recover_signer

PROTOCOL_VERSION = 3  # 3: READ passes a recent block, which the reading signs
MAX_LINE = 120  # longest request: bytes before the terminating LF, a trailing CR included
MAX_REPLY = 255  # longest reply (a signed READ reply needs about 240)
MAX_SEQ = 65535
SUPPLY = "supply"  # counts PV -> battery energy; its readings mint tokens
LOAD = "load"  # counts battery -> consumer energy; its readings settle trades
KINDS = (SUPPLY, LOAD)
# The largest rating a meter can be registered with (MeterRegistry stores it as uint16).
MAX_RATED_POWER_W = 65535
ZERO_ADDRESS = "0x" + "0" * 40

# Requests: command name -> number of arguments.
COMMANDS = {"ID": 0, "READ": 2, "RELAY": 1, "HB": 0, "INSTALL": 2}


class ErrorCode(IntEnum):
    """Numeric codes of `ERR` replies (PROTOCOL.md, "Errors")."""

    BAD_CHECKSUM = 1
    BAD_FRAME = 2
    LINE_TOO_LONG = 3
    UNKNOWN_COMMAND = 4
    BAD_ARGUMENT = 5
    SENSOR_FAULT = 6
    ALREADY_PROVISIONED = 7
    NOT_PROVISIONED = 8


# --------------------------------------------------------------------------- errors


class MeterError(Exception):
    """Root of the errors of `hardware/`: a meter did not answer, answered garbage, or refused."""


class MeterTimeout(MeterError):
    """The meter did not answer within the timeout (after all retries)."""


class MeterDisconnected(MeterTimeout):
    """The port is closed, unplugged or cannot be opened: the meter cannot answer at all."""


class MeterProtocolError(MeterError):
    """A frame was garbled: bad framing or checksum, wrong sequence number, malformed fields.

    `code` is the `ErrorCode` a meter answers with and `seq` the sequence number it echoes (0 when
    the frame was not trustworthy enough to read one).
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_FRAME, seq: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.seq = seq


class MeterRefused(MeterError):
    """The meter understood the command and answered with an `ERR` reply."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"meter refused: error {code} ({message})")
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- framing

_FIELD_CHARS = re.compile(rb"[\x20-\x7e]*")
_SEQ = re.compile(rb"0|[1-9][0-9]{0,4}")
_NAME = re.compile(rb"[A-Z]{1,8}")
_CRC = re.compile(rb"[0-9A-F]{4}")


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR)."""
    return binascii.crc_hqx(data, 0xFFFF)


@dataclass(frozen=True)
class Frame:
    """One decoded line: its sequence number and its comma-separated fields (name first)."""

    seq: int
    fields: tuple[str, ...]

    @property
    def name(self) -> str:
        """The first field: a command (requests) or OK/ERR (replies)."""
        return self.fields[0]


def encode_frame(seq: int, fields: tuple[str, ...] | list[str], *,
                 max_line: int = MAX_LINE) -> bytes:
    """Format `$<seq>,<field>,...*<CRC>\\n`, refusing anything that would not decode back.

    `max_line` is the limit of the receiver: MAX_LINE for requests, MAX_REPLY for replies.
    """
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"sequence number out of range: {seq}")
    if not fields or not _NAME.fullmatch(fields[0].encode("ascii", "replace")):
        raise ValueError(f"bad frame name: {fields[:1]}")
    for field in fields:
        raw = field.encode("ascii")  # UnicodeEncodeError is a ValueError
        if not _FIELD_CHARS.fullmatch(raw) or any(c in raw for c in b"$*,"):
            raise ValueError(f"field not encodable: {field!r}")
    body = ",".join((str(seq), *fields)).encode("ascii")
    line = b"$" + body + b"*" + b"%04X" % crc16(body)
    if len(line) > max_line:
        raise ValueError(f"frame longer than {max_line} bytes")
    return line + b"\n"


def decode_frame(line: bytes, *, max_line: int = MAX_LINE) -> Frame:
    """Decode one line (without its LF; a trailing CR is allowed) or raise MeterProtocolError.

    Checks, in this order (PROTOCOL.md, "Receiving"): length, framing characters, checksum, then
    the sequence number and name fields. Every failure is answered with sequence number 0.
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    if len(line) > max_line:
        raise MeterProtocolError("line too long", ErrorCode.LINE_TOO_LONG)
    if line.endswith(b"\r"):
        line = line[:-1]
    if (
        len(line) < 6
        or line[:1] != b"$"
        or line[-5:-4] != b"*"
        or not _CRC.fullmatch(line[-4:])
        or not _FIELD_CHARS.fullmatch(line)
        or b"$" in line[1:-5]
        or b"*" in line[1:-5]
    ):
        raise MeterProtocolError("malformed frame", ErrorCode.BAD_FRAME)
    body = line[1:-5]
    if crc16(body) != int(line[-4:], 16):
        raise MeterProtocolError("bad checksum", ErrorCode.BAD_CHECKSUM)
    parts = body.split(b",")
    if len(parts) < 2 or not _SEQ.fullmatch(parts[0]) or int(parts[0]) > MAX_SEQ:
        raise MeterProtocolError("bad sequence number", ErrorCode.BAD_FRAME)
    if not _NAME.fullmatch(parts[1]):
        raise MeterProtocolError("bad frame name", ErrorCode.BAD_FRAME)
    return Frame(int(parts[0]), tuple(p.decode("ascii") for p in parts[1:]))


class LineBuffer:
    """Splits a byte stream into lines with the protocol's length limit.

    `feed()` returns complete lines (without LF) in order; a line longer than `max_line`
    (MAX_LINE for a meter reading requests, MAX_REPLY for a host reading replies) is discarded up
    to its LF and reported once as None. Empty lines (and a lone CR) are dropped.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> list[bytes | None]:
        """Add received bytes; return the lines they completed (None for each too-long line)."""
        out: list[bytes | None] = []
        *complete, tail = bytes(data).split(b"\n")
        for chunk in complete:
            line = self._finish(chunk)
            if line != b"":
                out.append(line)
        self._add(tail)
        return out

    def _add(self, data: bytes) -> None:
        if self._overflow:
            return
        self._buf += data
        if len(self._buf) > self.max_line:
            # Why: keep memory bounded on a stream of garbage without newlines.
            self._buf.clear()
            self._overflow = True

    def _finish(self, chunk: bytes) -> bytes | None:
        self._add(chunk)
        if self._overflow:
            self._overflow = False
            return None
        line = bytes(self._buf)
        self._buf.clear()
        return line[:-1] if line.endswith(b"\r") else line

    def clear(self) -> None:
        """Forget any partial line (after a reconnect)."""
        self._buf.clear()
        self._overflow = False


# --------------------------------------------------------------------------- requests

_UINT = re.compile(r"0|[1-9][0-9]{0,19}")
_CHAIN_ID = re.compile(r"[1-9][0-9]{0,19}")
_REQUEST_ADDRESS = re.compile(r"0x[0-9a-f]{40}")  # lower case: one spelling per address
_BLOCK_HASH = re.compile(r"0x[0-9a-f]{64}")  # lower case, like addresses


@dataclass(frozen=True)
class Request:
    """A decoded host command: ID, READ (with `block`), RELAY (with `relay`), HB, INSTALL (with
    `domain`)."""

    seq: int
    command: str
    relay: bool | None = None  # RELAY only: True closes (power flows), False opens
    domain: Domain | None = None  # INSTALL only: the chain id and registry to sign for
    block: BlockRef | None = None  # READ only: the recent block the reading signs

    def encode(self) -> bytes:
        """The canonical frame for this request."""
        if self.command == "INSTALL":
            if self.domain is None:
                raise ValueError("INSTALL needs a domain")
            args: tuple[str, ...] = (str(self.domain.chain_id), self.domain.registry.lower())
        elif self.command == "READ":
            if self.block is None:
                raise ValueError("READ needs a block")
            args = (str(self.block.number), self.block.hex_hash())
        else:
            args = () if self.relay is None else ("1" if self.relay else "0",)
        return encode_frame(self.seq, (self.command, *args))


def parse_request(line: bytes) -> Request:
    """Decode a host command line, or raise MeterProtocolError carrying the ERR code to answer."""
    frame = decode_frame(line)
    if frame.seq == 0:
        raise MeterProtocolError("sequence number 0 is reserved for replies", ErrorCode.BAD_FRAME)
    if frame.name not in COMMANDS:
        raise MeterProtocolError(
            f"unknown command {frame.name}", ErrorCode.UNKNOWN_COMMAND, frame.seq
        )
    args = frame.fields[1:]
    if len(args) != COMMANDS[frame.name]:
        raise MeterProtocolError(
            f"{frame.name} takes {COMMANDS[frame.name]} argument(s)",
            ErrorCode.BAD_ARGUMENT,
            frame.seq,
        )
    if frame.name == "RELAY":
        if args[0] not in ("0", "1"):
            raise MeterProtocolError("RELAY takes 0 or 1", ErrorCode.BAD_ARGUMENT, frame.seq)
        return Request(frame.seq, "RELAY", args[0] == "1")
    if frame.name == "INSTALL":
        chain_id, registry = args
        if not (_CHAIN_ID.fullmatch(chain_id) and int(chain_id) <= UINT64_MAX
                and _REQUEST_ADDRESS.fullmatch(registry)):
            raise MeterProtocolError("INSTALL takes a chain id and a lower-case address",
                                     ErrorCode.BAD_ARGUMENT, frame.seq)
        return Request(frame.seq, "INSTALL", domain=Domain(int(chain_id), registry))
    if frame.name == "READ":
        number, block_hash = args
        if not (_UINT.fullmatch(number) and int(number) <= UINT64_MAX
                and _BLOCK_HASH.fullmatch(block_hash)):
            raise MeterProtocolError("READ takes a block number and a lower-case block hash",
                                     ErrorCode.BAD_ARGUMENT, frame.seq)
        return Request(frame.seq, "READ",
                       block=BlockRef(int(number), bytes.fromhex(block_hash[2:])))
    return Request(frame.seq, frame.name)


# --------------------------------------------------------------------------- replies

_ID_TEXT = re.compile(r"[A-Za-z0-9._-]{1,32}")
_DECIMAL = re.compile(r"-?[0-9]{1,9}(\.[0-9]{1,6})?")
_REPLY_ADDRESS = _REQUEST_ADDRESS
_SIGNATURE = re.compile(r"0x[0-9a-f]{128}1[bc]")  # r || s || v, v = 27 (0x1b) or 28 (0x1c)


def _address_field(address: str) -> str:
    return address.lower()


@dataclass(frozen=True)
class Identity:
    """What ID reports: who the meter is (its address), how it behaves, where it signs for."""

    meter_id: str  # a label for people; the meter's identity on chain is `address`
    firmware: str
    kind: str  # SUPPLY (PV -> battery) or LOAD (battery -> consumer)
    rated_power_w: int  # largest counter rate, in Wh per hour of wall-clock time
    watchdog_s: int  # the relay opens after this many seconds without a valid command
    address: str  # the meter's own address (EIP-55), derived from the key it keeps to itself
    domain: Domain | None = None  # None until INSTALL: the meter then refuses to sign
    protocol: int = PROTOCOL_VERSION

    @property
    def provisioned(self) -> bool:
        """True once the meter has a domain (chain id and registry) and signs readings."""
        return self.domain is not None

    def fields(self) -> tuple[str, ...]:
        """The reply fields after `OK,ID`."""
        chain_id, registry = ((str(self.domain.chain_id), _address_field(self.domain.registry))
                              if self.domain else ("0", ZERO_ADDRESS))
        return (self.meter_id, self.firmware, self.kind, str(self.rated_power_w),
                str(self.watchdog_s), str(self.protocol), _address_field(self.address),
                "1" if self.domain else "0", chain_id, registry)

    @classmethod
    def from_fields(cls, fields: tuple[str, ...]) -> Identity:
        """Parse the fields after `OK,ID`, or raise MeterProtocolError."""
        if len(fields) != 10:
            raise MeterProtocolError(f"ID reply has {len(fields)} fields, expected 10")
        (meter_id, firmware, kind, rated, watchdog, protocol, address, provisioned, chain_id,
         registry) = fields
        text = ",".join(fields)
        if not (_ID_TEXT.fullmatch(meter_id) and _ID_TEXT.fullmatch(firmware)
                and kind in KINDS and _UINT.fullmatch(rated) and _UINT.fullmatch(watchdog)
                and _UINT.fullmatch(protocol) and _REPLY_ADDRESS.fullmatch(address)
                and provisioned in ("0", "1") and _UINT.fullmatch(chain_id)
                and _REPLY_ADDRESS.fullmatch(registry)):
            raise MeterProtocolError(f"malformed ID reply: {text}")
        if int(rated) < 1 or not 1 <= int(watchdog) <= 3600:
            raise MeterProtocolError(f"ID reply out of range: {text}")
        if address == ZERO_ADDRESS:
            raise MeterProtocolError(f"the meter has no key (address 0), it cannot sign: {text}")
        domain = None
        if provisioned == "1":
            if not 1 <= int(chain_id) <= UINT64_MAX:
                raise MeterProtocolError(f"ID reply with a bad chain id: {text}")
            domain = Domain(int(chain_id), registry)
        elif (chain_id, registry) != ("0", ZERO_ADDRESS):
            raise MeterProtocolError(f"ID reply: a domain without being provisioned: {text}")
        return cls(meter_id, firmware, kind, int(rated), int(watchdog),
                   to_checksum_address(address), domain, int(protocol))


@dataclass(frozen=True)
class ReadReply:
    """What READ reports: the counter and sequence the meter signed, and instantaneous values.

    Only `energy_wh`, `sequence` and `block` are signed (with the meter's address and the
    domain); the other values are for display and relay decisions, and a host must not settle
    anything on them. `block` is not in the reply: it is the block the host passed with READ.
    """

    energy_wh: int  # cumulative, never decreases, not even across a power cut once signed
    power_w: float
    voltage_v: float
    current_a: float
    relay_closed: bool
    samples: int  # the meter's own sample counter; restarts from 0 when the meter reboots
    sequence: int  # grows with every signed reading, across power cuts too
    signature: bytes  # 65 bytes r || s || v over the EIP-712 Reading
    block: BlockRef  # the block the host passed with READ, signed with the counter

    def fields(self) -> tuple[str, ...]:
        """The reply fields after `OK,READ`."""
        return (str(self.energy_wh), f"{self.power_w:.1f}", f"{self.voltage_v:.2f}",
                f"{self.current_a:.3f}", "1" if self.relay_closed else "0", str(self.samples),
                str(self.sequence), "0x" + self.signature.hex())

    @classmethod
    def from_fields(cls, fields: tuple[str, ...], block: BlockRef) -> ReadReply:
        """Parse the fields after `OK,READ` to a READ that passed `block`, or raise
        MeterProtocolError."""
        if len(fields) != 8:
            raise MeterProtocolError(f"READ reply has {len(fields)} fields, expected 8")
        energy, power, voltage, current, relay, samples, sequence, signature = fields
        if not (_UINT.fullmatch(energy) and _DECIMAL.fullmatch(power)
                and _DECIMAL.fullmatch(voltage) and _DECIMAL.fullmatch(current)
                and relay in ("0", "1") and _UINT.fullmatch(samples)
                and _UINT.fullmatch(sequence) and _SIGNATURE.fullmatch(signature)):
            raise MeterProtocolError(f"malformed READ reply: {','.join(fields)}")
        if int(energy) > UINT64_MAX or int(sequence) > UINT64_MAX or int(samples) >= 2**32:
            raise MeterProtocolError(f"READ reply out of range: {','.join(fields)}")
        return cls(int(energy), float(power), float(voltage), float(current), relay == "1",
                   int(samples), int(sequence), bytes.fromhex(signature[2:]), block)

    def digest(self, domain: Domain, meter: str) -> bytes:
        """The EIP-712 digest this reading claims `meter` signed for `domain`."""
        return reading_digest(domain, meter, self.energy_wh, self.sequence, self.block)

    def signer(self, domain: Domain, meter: str) -> str:
        """The address that signed this reading as `meter`'s reading for `domain`.

        Equal to `meter` only if the meter's key signed exactly this counter, sequence and block.
        """
        return recover_signer(domain, meter, self.energy_wh, self.sequence, self.block,
                              self.signature)

    def verify(self, domain: Domain, expected_address: str) -> bool:
        """True if the meter at `expected_address` signed this counter and sequence for `domain`."""
        try:
            return self.signer(domain, expected_address) == to_checksum_address(expected_address)
        except ValueError:  # not a point on the curve: nobody signed it
            return False


@dataclass(frozen=True)
class Reply:
    """A decoded meter reply: `OK` with the command and its fields, or `ERR` with a code."""

    seq: int
    ok: bool
    command: str = ""  # OK replies: the command answered
    values: tuple[str, ...] = ()  # OK replies: the fields after the command
    code: int = 0  # ERR replies
    message: str = ""  # ERR replies


def parse_reply(line: bytes) -> Reply:
    """Decode a meter reply line, or raise MeterProtocolError (a request is not a reply)."""
    frame = decode_frame(line, max_line=MAX_REPLY)
    if frame.name == "OK":
        if len(frame.fields) < 2 or frame.fields[1] not in COMMANDS:
            raise MeterProtocolError(f"OK reply without a known command: {frame.fields}")
        return Reply(frame.seq, True, frame.fields[1], frame.fields[2:])
    if frame.name == "ERR":
        if len(frame.fields) != 3 or not re.fullmatch(r"[1-9][0-9]?", frame.fields[1]):
            raise MeterProtocolError(f"malformed ERR reply: {frame.fields}")
        return Reply(frame.seq, False, code=int(frame.fields[1]), message=frame.fields[2])
    raise MeterProtocolError(f"not a reply: {frame.name} (an echo of our own request?)")


def provision_fields(domain: Domain) -> tuple[str, ...]:
    """The reply fields after `OK,INSTALL`: the domain the meter now signs for."""
    return (str(domain.chain_id), _address_field(domain.registry))


def parse_provision(values: tuple[str, ...]) -> Domain:
    """Parse the fields after `OK,INSTALL`, or raise MeterProtocolError."""
    if (len(values) != 2 or not _CHAIN_ID.fullmatch(values[0])
            or int(values[0]) > UINT64_MAX or not _REPLY_ADDRESS.fullmatch(values[1])):
        raise MeterProtocolError(f"malformed INSTALL reply: {values}")
    return Domain(int(values[0]), values[1])


def encode_ok(seq: int, command: str, values: tuple[str, ...] = ()) -> bytes:
    """The frame `$<seq>,OK,<command>,<values...>`."""
    return encode_frame(seq, ("OK", command, *values), max_line=MAX_REPLY)


def encode_error(seq: int, code: ErrorCode, message: str) -> bytes:
    """The frame `$<seq>,ERR,<code>,<message>`."""
    return encode_frame(seq, ("ERR", str(int(code)), message), max_line=MAX_REPLY)
