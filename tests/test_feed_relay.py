"""``Decoder.feed_relay``: the relay's view of a stream is exactly ``feed``'s.

The server passes chats on as the frames it received (no decode, no
re-encode). These checks pin that this changes nothing: on any stream cut at
any points, the relayed frames are the encodings of the chats ``feed`` would
have returned, in the same order relative to every other message, and bad
input fails in the same place with the same error.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crc.protocol import (
    ClientChat, ClientRegistration, Decoder, Limits, ProtocolError, Status, encode,
)

ids = st.integers(min_value=0, max_value=0xFFFFFFFF)
chats = st.builds(ClientChat, ids, ids, st.text(max_size=200))
others = st.one_of(
    st.builds(ClientRegistration, ids, ids, st.text(max_size=20), st.text(max_size=20)),
    st.builds(Status, ids, ids, st.integers(0, 0xFFFF), st.text(max_size=50)),
)
streams = st.lists(st.one_of(chats, chats, others), min_size=1, max_size=40)


def relayed(decoder: Decoder, data: bytes) -> list:
    """What ``feed_relay`` yields, frames turned back into messages for comparison."""
    chats_, messages = decoder.feed_relay(data)
    out = []
    for source, dest, frame in chats_:
        (msg,) = Decoder().feed(frame)
        assert msg == ClientChat(source, dest, msg.text)
        assert frame == encode(msg)
        out.append(msg)
    return out + messages


@settings(max_examples=300)
@given(streams, st.data())
def test_any_split_relays_what_feed_decodes(msgs: list, data: st.DataObject) -> None:
    blob = b"".join(map(encode, msgs))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=8)))
    pieces = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)])]
    decoder = Decoder()
    got = []
    for piece in pieces:
        got += relayed(decoder, piece)
    assert got == msgs
    assert decoder.pending == 0


def test_chats_after_another_message_come_back_decoded_in_order() -> None:
    first, second = ClientChat(1, 2, "a"), ClientChat(1, 2, "b")
    reg = ClientRegistration(3, 0, "x", "")
    chats_, messages = Decoder().feed_relay(encode(first) + encode(reg) + encode(second))
    assert [frame for _, _, frame in chats_] == [encode(first)]
    assert messages == [reg, second]


def test_a_partial_chat_waits_and_the_buffer_does_not_grow() -> None:
    frame = encode(ClientChat(1, 2, "x" * 100))
    decoder = Decoder()
    assert decoder.feed_relay(frame[:50]) == ([], [])
    assert decoder.feed_relay(frame[50:]) == ([(1, 2, frame)], [])
    for _ in range(1000):
        decoder.feed_relay(frame)
    assert decoder.pending == 0 and len(decoder._buf) == 0


@pytest.mark.parametrize("bad, limits", [
    (bytes.fromhex("81" "00000001" "00000002" "00000002") + b"\xff\xfe", Limits()),
    (bytes.fromhex("81" "00000001" "00000002" "00000100"), Limits(max_text=16)),
])
def test_bad_chats_fail_as_in_feed(bad: bytes, limits: Limits) -> None:
    good = encode(ClientChat(1, 2, "fine"))
    with pytest.raises(ProtocolError) as by_feed:
        Decoder(limits).feed(good + bad)
    relay = Decoder(limits)
    with pytest.raises(ProtocolError) as by_relay:
        relay.feed_relay(good + bad)
    assert str(by_relay.value) == str(by_feed.value)
    with pytest.raises(ProtocolError, match="already failed"):
        relay.feed_relay(good)
