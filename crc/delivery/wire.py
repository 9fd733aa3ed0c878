"""Reliable chat on the wire: four extension kinds, fixed binary headers.

    CHAT  stream u64 | seq u64 | base u64 | text    sender -> receiving client
    ACK   stream u64 | seq u64                      receiver -> sender: all <= seq delivered
    NACK  stream u64 | seq u64 | reason (UTF-8)     a server -> sender: not deliverable now
    REFUSED  (as NACK)                              a server -> sender: never deliverable
                                                    (too large for a link on the way)

A *stream* is one sender's messages to one destination; its id is random, so
a sender that lost its state starts new streams instead of colliding with
sequence numbers the receiver has already seen. ``base`` is the stream's
lowest unacknowledged sequence number when the frame was sent: everything
below it was acknowledged, so a receiver that has no record of the stream
(it lost its state) starts there instead of waiting for messages that will
never be sent again.

Packing and unpacking only: no sockets, and no stream state (that is
``outbox``'s and ``inbox``'s).
"""

from __future__ import annotations

import struct
from enum import IntEnum

from ..protocol import ProtocolError

_HEAD = struct.Struct(">QQ")
_CHAT = struct.Struct(">QQQ")


class ChatKind(IntEnum):
    CHAT = 0x110
    ACK = 0x111
    NACK = 0x112
    REFUSED = 0x113     # like NACK, but for good: the chat can never be carried


def pack_chat(stream: int, seq: int, base: int, text: str) -> bytes:
    return _CHAT.pack(stream, seq, base) + text.encode("utf-8", "surrogatepass")


def pack_ack(stream: int, seq: int) -> bytes:
    return _HEAD.pack(stream, seq)


def pack_nack(stream: int, seq: int, reason: str) -> bytes:
    return _HEAD.pack(stream, seq) + reason.encode("utf-8", "replace")


def _head(payload: bytes, what: str) -> tuple[int, int]:
    if len(payload) < _HEAD.size:
        raise ProtocolError(f"{what} payload of {len(payload)} bytes; at least {_HEAD.size} needed")
    stream, seq = _HEAD.unpack_from(payload)
    if seq == 0:
        raise ProtocolError(f"{what} with sequence number 0")
    return stream, seq


def _text(payload: bytes, what: str, start: int = _HEAD.size) -> str:
    try:
        return bytes(payload[start:]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} text is not UTF-8: {exc}") from None


def unpack_chat(payload: bytes) -> tuple[int, int, int, str]:
    """``(stream, seq, base, text)`` of a CHAT payload."""
    if len(payload) < _CHAT.size:
        raise ProtocolError(f"CHAT payload of {len(payload)} bytes; at least {_CHAT.size} needed")
    stream, seq, base = _CHAT.unpack_from(payload)
    if not 0 < base <= seq:
        raise ProtocolError(f"CHAT with sequence number {seq} and base {base}")
    return stream, seq, base, _text(payload, "CHAT", _CHAT.size)


def unpack_ack(payload: bytes) -> tuple[int, int]:
    if len(payload) != _HEAD.size:
        raise ProtocolError(f"ACK payload of {len(payload)} bytes; expected {_HEAD.size}")
    return _head(payload, "ACK")


def unpack_nack(payload: bytes) -> tuple[int, int, str]:
    stream, seq = _head(payload, "NACK")
    return stream, seq, _text(payload, "NACK")
