"""Codec: exact wire bytes, incremental decoding, caps and bad input."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crc.protocol import (
    DEFAULT_LIMITS, ClientChat, ClientQuit, ClientRegistration, Decoder, EncodeError, Extension,
    Limits, MsgType, ProtocolError, ServerQuit, ServerRegistration, Status, encode,
)
from crc.protocol.codec import IN_PLACE_MAX, IN_PLACE_MIN

ids = st.integers(min_value=0, max_value=0xFFFFFFFF)
text = st.text(max_size=300)
short = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)

messages = st.one_of(
    st.builds(ServerRegistration, ids, ids, short, text),
    st.builds(ClientRegistration, ids, ids, short, text),
    st.builds(Status, ids, ids, st.integers(0, 0xFFFF), text),
    st.builds(ServerQuit, ids, ids, text),
    st.builds(ClientChat, ids, ids, text),
    st.builds(ClientQuit, ids, text),
    st.builds(Extension, st.integers(0, 0xFFFF), ids, ids, st.integers(0, 255),
              st.binary(max_size=300)),
)


# -- exact bytes (the layout of crc-v1.md) ---------------------------------------

def test_server_registration_bytes_match_the_v1_layout() -> None:
    # A real v1 scenario expects exactly these bytes for a joining server.
    msg = ServerRegistration(456, 0, "rivendale", '"Elrond\'s House"')
    assert encode(msg).hex() == (
        "00" "000001c8" "00000000" "09" "0010" + b"rivendale".hex() + b'"Elrond\'s House"'.hex())


def test_header_sizes_match_the_v1_table() -> None:
    assert len(encode(ServerRegistration(1, 0, "", ""))) == 12
    assert len(encode(ClientRegistration(1, 0, "", ""))) == 12
    assert len(encode(Status(1, 2, 0, ""))) == 15
    assert len(encode(ServerQuit(1, 0, ""))) == 13
    assert len(encode(ClientChat(1, 2, ""))) == 13
    assert len(encode(ClientQuit(1, ""))) == 9


def test_status_code_is_a_half_word() -> None:
    assert encode(Status(1, 2, 0x0102, "x")) == bytes.fromhex("01" "00000001" "00000002" "0102"
                                                              "00000001") + b"x"


# -- incremental decoding --------------------------------------------------------

@given(st.lists(messages, max_size=30))
def test_round_trip(msgs: list) -> None:
    assert Decoder().feed(b"".join(map(encode, msgs))) == msgs


@settings(max_examples=200)
@given(st.lists(messages, min_size=1, max_size=40), st.data())
def test_any_split_of_a_stream_decodes_to_the_same_messages(msgs: list, data: st.DataObject) -> None:
    stream = b"".join(map(encode, msgs))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    decoder, out, start = Decoder(), [], 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = cut
    assert out == msgs
    assert decoder.pending == 0


def test_one_byte_at_a_time_and_trailing_bytes_are_kept() -> None:
    msgs = [ClientChat(1, 2, "héllo"), Status(3, 4, 1, "Unknown ID 4"), ClientQuit(9, "bye")]
    stream = b"".join(map(encode, msgs))
    decoder = Decoder()
    out = []
    for i in range(len(stream) - 3):
        out += decoder.feed(stream[i:i + 1])
    assert out == msgs[:2]
    assert decoder.pending == len(encode(msgs[2])) - 3
    assert decoder.feed(stream[-3:]) == msgs[2:]


def test_a_mebibyte_fed_in_small_pieces_decodes_in_linear_time() -> None:
    big = ClientChat(1, 2, "x" * (1 << 20))
    stream = encode(big)
    decoder = Decoder()
    out = []
    for i in range(0, len(stream), 7):
        out += decoder.feed(stream[i:i + 7])
    assert out == [big]


# -- bad input ---------------------------------------------------------------------

def test_unknown_type_is_a_protocol_error_naming_it() -> None:
    with pytest.raises(ProtocolError, match="unknown message type 0x7f"):
        Decoder().feed(b"\x7f" + bytes(20))


def test_length_over_the_cap_names_the_field_before_the_body_arrives() -> None:
    decoder = Decoder(Limits(max_text=100))
    header = encode(ClientChat(1, 2, "y" * 101))[:13]
    with pytest.raises(ProtocolError, match="chat text length 101 exceeds the limit of 100"):
        decoder.feed(header)


def test_impossible_length_is_refused_at_the_default_cap() -> None:
    with pytest.raises(ProtocolError, match="status text length"):
        Decoder().feed(bytes.fromhex("01" "00000001" "00000002" "0000" "ffffffff"))


def test_bad_utf8_names_the_field() -> None:
    raw = bytearray(encode(ClientRegistration(5, 0, "ab", "cd")))
    raw[12] = 0xFF
    with pytest.raises(ProtocolError, match="name is not valid UTF-8"):
        Decoder().feed(bytes(raw))


def test_a_failed_stream_stays_failed() -> None:
    decoder = Decoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"\x55")
    with pytest.raises(ProtocolError, match="already failed"):
        decoder.feed(encode(ClientQuit(1, "")))


@pytest.mark.parametrize("msg, why", [
    (ServerRegistration(1, 0, "n" * 256, ""), "name is 256 bytes"),
    (ClientRegistration(1, 0, "n", "i" * 65536), "info is 65536 bytes"),
    (ClientChat(1 << 32, 2, ""), "out of range"),
    (Status(1, 2, 1 << 16, ""), "out of range"),
    (ClientChat(1, 2, "\ud800"), "not encodable"),
])
def test_encode_refuses_what_cannot_be_on_the_wire(msg, why: str) -> None:
    with pytest.raises(EncodeError, match=why):
        encode(msg)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_protocol_error(blob: bytes) -> None:
    decoder = Decoder(Limits(max_text=1000, max_payload=1000))
    try:
        decoder.feed(blob)
    except ProtocolError:
        pass


# -- large payloads received in place ----------------------------------------------

large_payloads = st.builds(
    lambda size, seed: bytes((seed + i * 7) & 0xFF for i in range(0, size, 97)) * 97,
    st.integers(IN_PLACE_MIN // 97 * 97 + 97, 80_000), st.integers(0, 255))
mixed = st.one_of(messages, st.builds(Extension, st.integers(0, 0xFFFF), ids, ids,
                                      st.integers(0, 255), large_payloads))


def receive_like_a_connection(decoder: Decoder, data: bytes) -> list:
    """Deliver ``data`` (what one receive got) the way ``Connection`` does: into
    ``receive_buffer()`` when the decoder offers one, else through ``feed``."""
    out, pos = [], 0
    while pos < len(data):
        target = decoder.receive_buffer()
        if target is None:
            return out + decoder.feed(data[pos:])
        n = min(len(target), len(data) - pos)
        target[:n] = data[pos:pos + n]
        out += decoder.received(n)
        pos += n
    return out


def drive_like_a_connection(decoder: Decoder, stream: bytes, cuts: list[int]) -> list:
    """Deliver ``stream`` in the pieces between ``cuts`` (sorted), as a connection would."""
    out, start = [], 0
    for cut in [*cuts, len(stream)]:
        out += receive_like_a_connection(decoder, stream[start:cut])
        start = cut
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(mixed, min_size=1, max_size=8), st.data())
def test_large_payloads_decode_the_same_fed_or_received_in_place(msgs: list,
                                                                 data: st.DataObject) -> None:
    stream = b"".join(map(encode, msgs))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    fed, start = Decoder(), 0
    out = []
    for cut in [*cuts, len(stream)]:
        out += fed.feed(stream[start:cut])
        start = cut
    assert out == msgs and fed.pending == 0
    in_place = Decoder()
    assert drive_like_a_connection(in_place, stream, cuts) == msgs
    assert in_place.pending == 0


def test_a_large_payload_goes_straight_into_its_own_buffer() -> None:
    payload = os.urandom(IN_PLACE_MIN * 3)
    frame = encode(Extension(21, 1, 2, 1, payload))
    decoder = Decoder()
    assert decoder.feed(frame[:100]) == []
    target = decoder.receive_buffer()
    assert target is not None and len(target) == len(frame) - 100
    target[:] = frame[100:]
    (msg,) = decoder.received(len(target))
    assert msg.payload == payload
    # Right after it, the decoder asks for just the next frame header.
    head = decoder.receive_buffer()
    assert head is not None and len(head) == 16


def test_a_header_claiming_more_than_the_in_place_cap_is_buffered_as_it_arrives() -> None:
    frame = encode(Extension(21, 1, 2, 1, b"x" * (IN_PLACE_MAX + 1)))
    decoder = Decoder()
    assert decoder.feed(frame[:16]) == []
    assert decoder.receive_buffer() is None      # nothing allocated on a header's say-so
    (msg,) = decoder.feed(frame[16:])
    assert len(msg.payload) == IN_PLACE_MAX + 1


# -- hostile input -------------------------------------------------------------------

def overwritten(msgs: list, changes: list[tuple[int, int]]) -> bytes:
    """A valid stream of ``msgs`` with a few bytes overwritten (positions wrap)."""
    stream = bytearray(b"".join(map(encode, msgs)))
    for pos, value in changes:
        stream[pos % len(stream)] = value
    return bytes(stream)


hostile = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda t, rest: bytes([t]) + rest,                 # past the type check
              st.sampled_from([int(t) for t in MsgType]), st.binary(max_size=600)),
    st.builds(overwritten, st.lists(messages, min_size=1, max_size=6),
              st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                       min_size=1, max_size=4)),
)


def deliver(decoder: Decoder, piece: bytes, how: str) -> list[bytes]:
    """Give ``piece`` to ``decoder`` as ``how`` says; the wire bytes of what came out."""
    if how == "feed":
        return [encode(m) for m in decoder.feed(piece)]
    if how == "feed_relay":
        chats, msgs = decoder.feed_relay(piece)
        return [frame for _, _, frame in chats] + [encode(m) for m in msgs]
    return [encode(m) for m in receive_like_a_connection(decoder, piece)]


@settings(max_examples=400, deadline=None)
@given(hostile, st.lists(st.integers(0, 700), max_size=8),
       st.sampled_from(["feed", "feed_relay", "in place"]),
       st.sampled_from([DEFAULT_LIMITS, Limits(max_text=100, max_payload=40_000)]))
def test_hostile_bytes_in_any_split_raise_only_protocol_errors_and_yield_what_was_sent(
        stream: bytes, cuts: list[int], how: str, limits: Limits) -> None:
    decoder = Decoder(limits)
    out: list[bytes] = []
    start, failed = 0, False
    try:
        for cut in [*sorted(c for c in cuts if c < len(stream)), len(stream)]:
            out += deliver(decoder, stream[start:cut], how)
            start = cut
    except ProtocolError:
        failed = True
    # Whatever came out is exactly the start of the stream, re-encoded: the
    # decoder invents nothing and drops nothing before the point it stopped.
    decoded = b"".join(out)
    assert stream.startswith(decoded)
    if not failed:
        assert len(decoded) == len(stream) - decoder.pending


#: A header of every frame type whose length field a limit caps, claiming ``n`` bytes.
CAPPED = {
    "chat text": lambda n: struct.pack(">BIII", MsgType.CLIENT_CHAT, 1, 2, n),
    "status text": lambda n: struct.pack(">BIIHI", MsgType.STATUS, 1, 2, 0, n),
    "quit text": lambda n: struct.pack(">BII", MsgType.CLIENT_QUIT, 1, n),
    "server quit text": lambda n: struct.pack(">BIII", MsgType.SERVER_QUIT, 1, 0, n),
    "extension payload": lambda n: struct.pack(">BHIIBI", MsgType.EXTENSION, 21, 1, 2, 0, n),
}


@settings(max_examples=300)
@given(st.sampled_from(sorted(CAPPED)), st.integers(0, 1 << 25), st.booleans(), st.data())
def test_a_length_field_is_judged_on_the_header_alone(field: str, cap: int, allow_in_place: bool,
                                                      data: st.DataObject) -> None:
    n = data.draw(st.one_of(st.integers(1, max(1, cap)), st.integers(cap + 1, 0xFFFFFFFF)))
    decoder = Decoder(Limits(max_text=cap, max_payload=cap), allow_in_place=allow_in_place)
    header = CAPPED[field](n)
    if n > cap:
        with pytest.raises(ProtocolError, match=f"{field} length {n} exceeds the limit of {cap}"):
            decoder.feed(header)
        return
    assert decoder.feed(header) == []           # waiting for the body
    reserved = decoder.receive_buffer()
    if reserved is None:
        assert decoder.pending == len(header)   # nothing held but the header itself
    else:                                       # a payload to be received in place
        assert allow_in_place and field == "extension payload"
        assert IN_PLACE_MIN <= len(reserved) == n <= IN_PLACE_MAX
