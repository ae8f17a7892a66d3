"""The wire protocol parser: exact framing rules, and fuzzing that nothing else gets through."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardware.protocol import (
    MAX_LINE,
    MAX_REPLY,
    ErrorCode,
    Identity,
    LineBuffer,
    MeterError,
    MeterProtocolError,
    ReadReply,
    Request,
    crc16,
    decode_frame,
    encode_error,
    encode_frame,
    encode_ok,
    parse_provision,
    parse_reply,
    parse_request,
)
from hardware.signing import BlockRef, Domain
from tests.hardware.conftest import VECTOR_BLOCK, VECTOR_DOMAIN

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID_REQUESTS = [
    Request(1, "ID"),
    Request(42, "READ", block=VECTOR_BLOCK),
    Request(65535, "READ", block=BlockRef(2**64 - 1, b"\xff" * 32)),  # the longest request
    Request(3, "READ", block=BlockRef(0, bytes(32))),
    Request(7, "RELAY", True),
    Request(65535, "RELAY", False),
    Request(300, "HB"),
    Request(9, "INSTALL", domain=VECTOR_DOMAIN),
    Request(65535, "INSTALL", domain=Domain(2**64 - 1, "0x" + "ff" * 20)),
]
REGISTRY = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
HASH = VECTOR_BLOCK.hex_hash()
BAD_ARGUMENT = ErrorCode.BAD_ARGUMENT


def frame(body: str) -> bytes:
    """A line with a correct CRC around `body` (which may be semantically wrong)."""
    raw = body.encode()
    return b"$" + raw + b"*%04X" % crc16(raw)


def lower_case_crc_frame() -> bytes:
    """A correct frame except that its CRC is written in lower case."""
    seq = next(s for s in range(1, 100) if b"%04x" % crc16(b"%d,HB" % s) != b"%04X" %
               crc16(b"%d,HB" % s))
    return b"$%d,HB*%04x" % (seq, crc16(b"%d,HB" % seq))


def test_crc_is_crc16_ccitt_false():
    assert crc16(b"123456789") == 0x29B1


def test_relay_close_frame_is_exactly_as_documented():
    assert Request(17, "RELAY", True).encode() == b"$17,RELAY,1*%04X\n" % crc16(b"17,RELAY,1")


@pytest.mark.parametrize("request_", VALID_REQUESTS, ids=lambda r: f"{r.command}-{r.seq}")
def test_requests_round_trip_with_lf_or_crlf(request_):
    line = request_.encode()
    assert parse_request(line[:-1]) == request_
    assert parse_request(line[:-1] + b"\r") == request_


@pytest.mark.parametrize(
    ("line", "code", "seq"),
    [
        (b"", ErrorCode.BAD_FRAME, 0),
        (b"17,RELAY,1*0000", ErrorCode.BAD_FRAME, 0),  # no '$'
        (b" " + frame("17,RELAY,1"), ErrorCode.BAD_FRAME, 0),  # noise before '$'
        (frame("17,RELAY,1")[:-1], ErrorCode.BAD_FRAME, 0),  # 3 CRC digits
        (lower_case_crc_frame(), ErrorCode.BAD_FRAME, 0),
        (b"$17,RELAY,1*" + b"%04X" % (crc16(b"17,RELAY,1") ^ 1), ErrorCode.BAD_CHECKSUM, 0),
        (b"$17,RELAY,0*" + b"%04X" % crc16(b"17,RELAY,1"), ErrorCode.BAD_CHECKSUM, 0),
        (frame("17,RE\tLAY,1"), ErrorCode.BAD_FRAME, 0),  # control character
        (frame("17,RELAY,1,$"), ErrorCode.BAD_FRAME, 0),  # '$' in the body
        (frame("017,RELAY,1"), ErrorCode.BAD_FRAME, 0),  # leading zero
        (frame("65536,RELAY,1"), ErrorCode.BAD_FRAME, 0),
        (frame("0,RELAY,1"), ErrorCode.BAD_FRAME, 0),  # 0 is for replies only
        (frame("17,relay,1"), ErrorCode.BAD_FRAME, 0),
        (frame("17"), ErrorCode.BAD_FRAME, 0),
        (frame("17,TOGGLE"), ErrorCode.UNKNOWN_COMMAND, 17),
        (frame("17,OK,RELAY,1"), ErrorCode.UNKNOWN_COMMAND, 17),  # a reply is not a command
        (frame("17,RELAY,2"), ErrorCode.BAD_ARGUMENT, 17),
        (frame("17,RELAY,01"), ErrorCode.BAD_ARGUMENT, 17),
        (frame("17,RELAY,"), ErrorCode.BAD_ARGUMENT, 17),
        (frame("17,RELAY"), ErrorCode.BAD_ARGUMENT, 17),
        (frame("17,RELAY,1,1"), ErrorCode.BAD_ARGUMENT, 17),
        (frame("17,READ"), ErrorCode.BAD_ARGUMENT, 17),  # no block
        (frame("17,READ,1"), ErrorCode.BAD_ARGUMENT, 17),  # no hash
        (frame(f"17,READ,1000,{HASH},1"), BAD_ARGUMENT, 17),
        (frame(f"17,READ,01000,{HASH}"), BAD_ARGUMENT, 17),  # leading zero
        (frame(f"17,READ,-1,{HASH}"), BAD_ARGUMENT, 17),
        (frame(f"17,READ,{2**64},{HASH}"), BAD_ARGUMENT, 17),  # not a uint64
        (frame(f"17,READ,,{HASH}"), BAD_ARGUMENT, 17),
        (frame(f"17,READ,1000,{HASH[:-2]}"), BAD_ARGUMENT, 17),  # 31 bytes
        (frame(f"17,READ,1000,{HASH}a5"), BAD_ARGUMENT, 17),  # 33 bytes
        (frame(f"17,READ,1000,{HASH[2:]}"), BAD_ARGUMENT, 17),  # no 0x
        (frame(f"17,READ,1000,0x{HASH[2:].upper()}"), BAD_ARGUMENT, 17),  # upper case
        (frame(f"17,READ,1000,{HASH[:-1]}g"), BAD_ARGUMENT, 17),
        (b"$" + b"1" * MAX_LINE, ErrorCode.LINE_TOO_LONG, 0),
        (frame(f"17,INSTALL,31337,{REGISTRY}"[:-1]), ErrorCode.BAD_ARGUMENT, 17),  # 39 digits
        (frame(f"17,INSTALL,31337,{REGISTRY.upper()[2:]}"), ErrorCode.BAD_ARGUMENT, 17),
        (frame(f"17,INSTALL,31337,{REGISTRY[:10].upper()}{REGISTRY[10:]}"),
         ErrorCode.BAD_ARGUMENT, 17),  # upper case: one spelling per address
        (frame(f"17,INSTALL,0,{REGISTRY}"), ErrorCode.BAD_ARGUMENT, 17),  # no chain 0
        (frame(f"17,INSTALL,031337,{REGISTRY}"), ErrorCode.BAD_ARGUMENT, 17),
        (frame(f"17,INSTALL,{2**64},{REGISTRY}"), ErrorCode.BAD_ARGUMENT, 17),
        (frame("17,INSTALL,31337"), ErrorCode.BAD_ARGUMENT, 17),
        (frame(f"17,INSTALL,31337,{REGISTRY},1"), ErrorCode.BAD_ARGUMENT, 17),
    ],
)
def test_bad_requests_get_the_documented_error_code(line, code, seq):
    with pytest.raises(MeterProtocolError) as info:
        parse_request(line)
    assert (info.value.code, info.value.seq) == (code, seq)
    assert isinstance(info.value, MeterError)


def test_encoder_refuses_what_the_decoder_would_reject():
    for fields in (("RELAY", "1,1"), ("RELAY", "*"), ("relay",), ("ID", "é"), ("ID", "a\nb")):
        with pytest.raises(ValueError):
            encode_frame(1, fields)
    with pytest.raises(ValueError):
        encode_frame(65536, ("ID",))
    with pytest.raises(ValueError):
        encode_frame(1, ("ID", "x" * MAX_LINE))


# --------------------------------------------------------------------------- line splitting


def test_line_buffer_splits_strips_cr_and_ignores_empty_lines():
    buf = LineBuffer()
    assert buf.feed(b"$1,ID*") == []
    assert buf.feed(b"ABCD\r\n\n\r\n$2,HB*0000\n$3") == [b"$1,ID*ABCD", b"$2,HB*0000"]
    assert buf.feed(b",READ*1234\n") == [b"$3,READ*1234"]


def test_line_buffer_limit_is_120_bytes_and_a_long_line_is_reported_once():
    buf = LineBuffer()
    assert buf.feed(b"x" * MAX_LINE + b"\n") == [b"x" * MAX_LINE]
    assert buf.feed(b"x" * (MAX_LINE - 1) + b"\r\n") == [b"x" * (MAX_LINE - 1)]
    assert buf.feed(b"x" * MAX_LINE + b"\r\n") == [None]  # the CR counts
    # A long line arriving in pieces, then a good line: one None, then the line.
    for _ in range(10):
        assert buf.feed(b"y" * 50) == []
    assert buf.feed(b"tail\n$1,HB*0000\n") == [None, b"$1,HB*0000"]


@given(st.binary(max_size=400), st.integers(min_value=1, max_value=7))
@FUZZ
def test_line_buffer_gives_the_same_lines_however_the_bytes_are_chunked(data, chunk):
    whole = LineBuffer().feed(data)
    buf = LineBuffer()
    pieces = []
    for i in range(0, len(data), chunk):
        pieces += buf.feed(data[i:i + chunk])
    assert pieces == whole
    assert all(line is None or (b"\n" not in line and len(line) <= MAX_LINE) for line in whole)


# --------------------------------------------------------------------------- fuzzing


def assert_canonical_or_typed_error(line: bytes) -> None:
    """A line parses only if it is exactly the encoding of what it parses to."""
    try:
        request = parse_request(line)
    except MeterProtocolError as exc:
        assert exc.code in ErrorCode
        return
    assert request.encode()[:-1] == line.removesuffix(b"\n").removesuffix(b"\r")


@given(st.binary(max_size=200))
@FUZZ
def test_random_bytes_never_escape_as_anything_but_typed_errors(data):
    assert_canonical_or_typed_error(data)
    try:
        reply = parse_reply(data)
    except MeterProtocolError:
        return
    assert reply.ok or 1 <= reply.code <= 99


ALPHABET = "0123456789,$*RELAYIDHBOKER\r \x00\xff"


@given(st.text(alphabet=ALPHABET, max_size=40))
@FUZZ
def test_frames_with_a_valid_crc_only_parse_when_canonical(body):
    # A correct CRC gets random bodies past the checksum into the deeper checks.
    line = b"$" + body.encode("latin-1") + b"*%04X" % crc16(body.encode("latin-1"))
    assert_canonical_or_typed_error(line)
    try:
        reply = parse_reply(line)
    except MeterProtocolError:
        return
    assert reply.ok or 1 <= reply.code <= 99


@pytest.mark.parametrize("request_", VALID_REQUESTS, ids=lambda r: f"{r.command}-{r.seq}")
def test_no_truncation_of_a_valid_frame_parses(request_):
    line = request_.encode()[:-1]
    for cut in range(1, len(line)):
        with pytest.raises(MeterProtocolError):
            parse_request(line[:cut])
        with pytest.raises(MeterProtocolError):
            parse_request(line[cut:])


def test_thousands_of_damaged_relay_open_frames_never_close_the_relay():
    rng = random.Random(5)
    closes = 0
    for _ in range(20_000):
        line = bytearray(Request(rng.randint(1, 65535), "RELAY", False).encode()[:-1])
        original = bytes(line)
        pos = rng.randrange(len(line))
        action = rng.random()
        if action < 0.5:  # one byte changed: a CRC-16 detects every such error
            line[pos] = (line[pos] + rng.randint(1, 255)) % 256
            with pytest.raises(MeterProtocolError):
                parse_request(bytes(line))
            continue
        if action < 0.75:
            line.insert(pos, rng.randrange(256))
        else:
            del line[pos]
        try:
            request = parse_request(bytes(line))
        except MeterProtocolError:
            continue
        # Only a (1 in 65536) CRC collision could get here, and it must then be canonical.
        assert request.encode()[:-1] == bytes(line) != original
        closes += request.relay is True
    assert closes == 0


# --------------------------------------------------------------------------- replies


SIGNATURE = bytes(range(64)) + b"\x1b"
ADDRESS = "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A"


def test_replies_round_trip_and_requests_are_not_replies():
    reading = ReadReply(1234, 812.4, 24.63, 32.984, True, 99, 2**64 - 1, SIGNATURE,
                            VECTOR_BLOCK)
    line = encode_ok(65535, "READ", reading.fields())
    assert MAX_LINE < len(line) - 1 <= MAX_REPLY  # longer than a request may be
    reply = parse_reply(line)
    assert (reply.seq, reply.ok, reply.command) == (65535, True, "READ")
    assert ReadReply.from_fields(reply.values, VECTOR_BLOCK) == reading
    for identity in (Identity("meter-01", "1.0.0", "load", 1500, 10, ADDRESS),
                     Identity("m" * 32, "f" * 32, "supply", 65535, 3600, ADDRESS,
                              Domain(2**64 - 1, "0x" + "ab" * 20))):
        line = encode_ok(65535, "ID", identity.fields())
        assert len(line) - 1 <= MAX_REPLY
        assert Identity.from_fields(parse_reply(line).values) == identity
    assert parse_provision(parse_reply(encode_ok(4, "INSTALL", ("31337", REGISTRY))).values) \
        == VECTOR_DOMAIN
    err = parse_reply(encode_error(0, ErrorCode.BAD_CHECKSUM, "bad checksum"))
    assert (err.seq, err.ok, err.code, err.message) == (0, False, 1, "bad checksum")
    with pytest.raises(MeterProtocolError, match="not a reply"):
        parse_reply(Request(9, "RELAY", True).encode())  # an echo of our own request


SIG = "0x" + SIGNATURE.hex()


@pytest.mark.parametrize(
    "values",
    [
        ("1234", "812.4", "24.63", "32.984", "1", "99", "5"),  # a field missing
        ("-5", "812.4", "24.63", "32.984", "1", "99", "5", SIG),  # negative counter
        ("1234", "8e2", "24.63", "32.984", "1", "99", "5", SIG),
        ("1234", "812.4", "24.63", "32.984", "2", "99", "5", SIG),  # relay neither 0 nor 1
        ("1234", "812.4", "", "32.984", "1", "99", "5", SIG),
        ("01234", "812.4", "24.63", "32.984", "1", "99", "5", SIG),
        ("1234", "812.4", "24.63", "32.984", "1", "99", "05", SIG),
        ("1234", "812.4", "24.63", "32.984", "1", "99", str(2**64), SIG),  # not a uint64
        ("1234", "812.4", "24.63", "32.984", "1", "99", "5", SIG[:-2] + "1d"),  # v = 29
        ("1234", "812.4", "24.63", "32.984", "1", "99", "5", SIG[:-4] + "1b"),  # 64 bytes
        ("1234", "812.4", "24.63", "32.984", "1", "99", "5", SIG.upper()),
    ],
)
def test_malformed_read_values_are_protocol_errors(values):
    with pytest.raises(MeterProtocolError):
        ReadReply.from_fields(values, VECTOR_BLOCK)


GOOD_ID = ("m", "1", "supply", "100", "10", "3", ADDRESS.lower(), "1", "31337", REGISTRY)


@pytest.mark.parametrize(
    "values",
    [
        ("m", "1", "battery", *GOOD_ID[3:]),  # unknown kind
        (*GOOD_ID[:3], "0", *GOOD_ID[4:]),  # zero rating
        (*GOOD_ID[:4], "0", *GOOD_ID[5:]),  # watchdog off is not allowed
        ("m e", *GOOD_ID[1:]),
        GOOD_ID[:-1],
        (*GOOD_ID[:6], ADDRESS, *GOOD_ID[7:]),  # upper case in the address
        (*GOOD_ID[:6], "0x" + "0" * 40, *GOOD_ID[7:]),  # no key: no identity
        (*GOOD_ID[:7], "0", *GOOD_ID[8:]),  # a domain without being provisioned
        (*GOOD_ID[:8], "0", GOOD_ID[9]),  # provisioned for chain 0
        (*GOOD_ID[:7], "2", *GOOD_ID[8:]),
    ],
)
def test_malformed_identity_values_are_protocol_errors(values):
    Identity.from_fields(GOOD_ID)  # the unchanged reply parses
    with pytest.raises(MeterProtocolError):
        Identity.from_fields(values)


def test_decode_frame_accepts_reply_sequence_zero():
    assert decode_frame(frame("0,ERR,2,bad frame")).seq == 0
