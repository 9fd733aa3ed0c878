"""Encoding and incremental decoding of CRC messages. No sockets here.

Wire layout (all integers unsigned big-endian): a type byte, a fixed header
for that type, then variable-length fields whose lengths are in the header.

``encode(msg) -> bytes`` turns a message into its wire form.
``Decoder.feed(chunk)`` accepts any slice of a byte stream and returns the
whole messages it completes, keeping the remainder for the next call. Feeding
a large message one byte at a time stays linear: the decoder remembers how
many bytes the pending message needs and does not look again until they are
there. ``Decoder.feed_relay(chunk)`` is the relay's variant: whole chats at
the front come back as their exact wire bytes, checked but not decoded, so a
server can pass them on without building and re-encoding a message.

Anything a peer could get wrong (unknown type, a length over the configured
cap, text that is not UTF-8) raises ``ProtocolError`` naming the field; after
that the stream cannot be resynchronised and the decoder refuses more input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .messages import (
    ClientChat, ClientQuit, ClientRegistration, Extension, Message, MsgType,
    ServerQuit, ServerRegistration, Status,
)


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid CRC message."""


class EncodeError(ValueError):
    """We were asked to encode a message that cannot be put on the wire."""


@dataclass(frozen=True)
class Limits:
    """Caps on variable-length fields; over a cap is a protocol error."""

    max_text: int = 16 * 1024 * 1024      # chat, status and quit texts
    max_payload: int = 16 * 1024 * 1024   # extension frame payloads


DEFAULT_LIMITS = Limits()

_REG = struct.Struct(">BIIBH")      # type, source, last hop, name len, info len
_STATUS = struct.Struct(">BIIHI")   # type, source, dest, code, text len
_SQUIT = struct.Struct(">BIII")     # type, source, replacement, text len
_CHAT = struct.Struct(">BIII")      # type, source, dest, text len
_CQUIT = struct.Struct(">BII")      # type, source, text len
_EXT = struct.Struct(">BHIIBI")     # type, kind, source, dest, flags, length
_CHAT_TYPE = int(MsgType.CLIENT_CHAT)

#: A client chat as relayed: (source id, destination id, its exact wire bytes).
ChatFrame = tuple[int, int, bytes]

HEADER_SIZES = {
    MsgType.SERVER_REGISTRATION: _REG.size,
    MsgType.CLIENT_REGISTRATION: _REG.size,
    MsgType.STATUS: _STATUS.size,
    MsgType.SERVER_QUIT: _SQUIT.size,
    MsgType.CLIENT_CHAT: _CHAT.size,
    MsgType.CLIENT_QUIT: _CQUIT.size,
    MsgType.EXTENSION: _EXT.size,
}


def _utf8(text: str, field: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise EncodeError(f"{field} is not encodable as UTF-8: {exc}") from None


def _check_id(value: int, field: str) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise EncodeError(f"{field} {value} is not a 32-bit unsigned id")


def encode(msg: Message) -> bytes:
    """Return the wire bytes of ``msg``; ``EncodeError`` if it cannot fit."""
    t = msg.type
    try:
        if t is MsgType.CLIENT_CHAT:
            text = _utf8(msg.text, "chat text")
            return _CHAT.pack(t, msg.source, msg.dest, len(text)) + text
        if t is MsgType.SERVER_REGISTRATION or t is MsgType.CLIENT_REGISTRATION:
            name = _utf8(msg.name, "name")
            info = _utf8(msg.info, "info")
            if len(name) > 0xFF:
                raise EncodeError(f"name is {len(name)} bytes; the limit is 255")
            if len(info) > 0xFFFF:
                raise EncodeError(f"info is {len(info)} bytes; the limit is 65535")
            return _REG.pack(t, msg.source, msg.last_hop, len(name), len(info)) + name + info
        if t is MsgType.STATUS:
            text = _utf8(msg.text, "status text")
            return _STATUS.pack(t, msg.source, msg.dest, msg.code, len(text)) + text
        if t is MsgType.CLIENT_QUIT:
            text = _utf8(msg.text, "quit text")
            return _CQUIT.pack(t, msg.source, len(text)) + text
        if t is MsgType.SERVER_QUIT:
            text = _utf8(msg.text, "server quit text")
            return _SQUIT.pack(t, msg.source, msg.replacement, len(text)) + text
        if t is MsgType.EXTENSION:
            return b"".join(encode_parts(msg))
    except struct.error as exc:
        raise EncodeError(f"{type(msg).__name__}: field out of range ({exc})") from None
    raise EncodeError(f"cannot encode {msg!r}")


def encode_parts(msg: Extension) -> tuple[bytes, bytes | bytearray | memoryview]:
    """An extension frame as (header, payload): the same bytes as ``encode``,
    for a vectored send that does not copy the payload."""
    payload = msg.payload
    if len(payload) > 0xFFFFFFFF:
        raise EncodeError(f"extension payload of {len(payload)} bytes is too long")
    try:
        head = _EXT.pack(MsgType.EXTENSION, msg.kind, msg.source, msg.dest, msg.flags, len(payload))
    except struct.error as exc:
        raise EncodeError(f"Extension: field out of range ({exc})") from None
    return head, payload


def _text(buf: bytearray, start: int, end: int, field: str) -> str:
    try:
        return buf[start:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{field} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


#: Extension payloads of this many bytes and up (file chunks) are received
#: straight into a buffer of their own once their header has arrived; the cap
#: (a file chunk of 1 MiB and its header) keeps what a header alone can make
#: us allocate small.
IN_PLACE_MIN = 32 * 1024
IN_PLACE_MAX = 1024 * 1024 + 64 * 1024


class Decoder:
    """Incremental CRC decoder: feed chunks, get whole messages back."""

    __slots__ = ("limits", "_buf", "_pos", "_need", "_failed", "_large", "_large_head",
                 "_large_filled", "_head_view", "in_place", "allow_in_place")

    def __init__(self, limits: Limits = DEFAULT_LIMITS, allow_in_place: bool = True) -> None:
        self.limits = limits
        #: Whether a large extension payload may get its buffer (up to
        #: ``IN_PLACE_MAX``) as soon as its header arrives. An owner clears it
        #: while the peer has no business sending extension frames, so that a
        #: header alone cannot make us allocate: the payload is then buffered
        #: only as it arrives.
        self.allow_in_place = allow_in_place
        self._buf = bytearray()
        self._pos = 0          # start of the first unconsumed byte
        self._need = 1         # bytes (from _pos) before another parse is worth trying
        self._failed: ProtocolError | None = None
        # An extension payload being received in place (see ``receive_buffer``).
        #: A large payload is under way, or the last frame was one: only then
        #: may ``receive_buffer()`` return a buffer (a cheap hot-path check).
        self.in_place = False
        self._head_view = memoryview(bytearray(_EXT.size))
        self._large: bytearray | None = None
        self._large_head = (0, 0, 0, 0)    # kind, source, dest, flags
        self._large_filled = 0

    # -- large payloads, received in place --------------------------------------------

    def _begin_in_place(self, kind: int, source: int, dest: int, flags: int, n: int,
                        start: int) -> None:
        """The payload of an extension frame (``n`` bytes from ``start``) is incomplete:
        give it a buffer of its own, take what has arrived, and consume the rest of
        ``_buf`` (which ends inside the payload)."""
        payload = bytearray(n)
        have = len(self._buf) - start
        payload[:have] = memoryview(self._buf)[start:]
        self._large, self._large_head, self._large_filled = payload, (kind, source, dest, flags), have
        self.in_place = True
        self._pos = len(self._buf)
        self._need = 1

    def receive_buffer(self) -> memoryview | None:
        """Where the caller should ``recv_into`` next (reporting the count to
        ``received``), or None for "anywhere, then ``feed``".

        While a large extension payload is under way, it is the rest of that
        payload: file chunks go from the socket straight into their own buffer,
        with no copy through the stream buffer. Right after one (a stream of file
        chunks, most likely), with nothing else pending, it is room for just the
        next frame header, so that the next payload, too, is received in place."""
        if self._large is not None:
            return memoryview(self._large)[self._large_filled:]
        if self.in_place and not self._buf:
            return self._head_view
        return None

    def received(self, n: int) -> list[Message]:
        """``n`` bytes went into ``receive_buffer()``; the messages they complete."""
        if self._large is None:
            # A frame header (or its start) after a large payload.
            self.in_place = False
            return self.feed(self._head_view[:n])
        self._large_filled += n
        if self._large_filled < len(self._large):
            return []
        payload, self._large = self._large, None
        self.in_place = True
        return [Extension(*self._large_head, payload)]

    def _fill_in_place(self, data: bytes) -> tuple[list[Message], bytes]:
        """Feed ``data`` to the payload under way: (the frame if it completed, the rest)."""
        assert self._large is not None
        take = min(len(data), len(self._large) - self._large_filled)
        self._large[self._large_filled:self._large_filled + take] = data[:take]
        return self.received(take), data[take:]

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a whole message."""
        if self._large is not None:      # the frame's header has left the buffer
            return len(self._buf) - self._pos + _EXT.size + self._large_filled
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[Message]:
        """Add ``data`` to the stream; return every message it completes."""
        if self._large is not None:
            done, data = self._fill_in_place(data)
            if not done:
                return []
            self.in_place = False
            return done + self.feed(data) if data else done
        self._append(data)
        return self._messages()

    def feed_relay(self, data: bytes) -> tuple[list[ChatFrame], list[Message]]:
        """Like ``feed``, but whole client chats at the front come back as frames.

        Returns ``(chats, messages)``: ``chats`` are the chats completed at the
        current position before any other message, each as ``(source, dest,
        frame)`` with ``frame`` its exact wire bytes (the text is checked to be
        UTF-8, as ``feed`` checks it, but not decoded); ``messages`` is what
        ``feed`` returns for the rest of the stream, in order (chats after
        another message included). Errors are those of ``feed``, raised before
        anything is returned.
        """
        if self._failed is not None:
            raise ProtocolError(f"stream already failed: {self._failed}")
        if self._large is not None:
            return [], self.feed(data)
        if self._pos == len(self._buf):
            # Nothing pending: take the chats straight from ``data`` and keep
            # only what follows them.
            chats, used = self._chats(data, 0)
            self._buf += data[used:] if used else data
        else:
            self._buf += data
            chats = []
            if len(self._buf) - self._pos >= self._need:
                chats, self._pos = self._chats(self._buf, self._pos)
        if chats:
            self._need = 1
        return chats, self._messages()

    def _append(self, data: bytes) -> None:
        if self._failed is not None:
            raise ProtocolError(f"stream already failed: {self._failed}")
        self._buf += data

    def _messages(self) -> list[Message]:
        out: list[Message] = []
        if len(self._buf) - self._pos >= self._need:
            try:
                while True:
                    msg = self._parse_one()
                    if msg is None:
                        break
                    out.append(msg)
            except ProtocolError as exc:
                self._failed = exc
                raise
        if self._pos:
            # Compact: drop consumed bytes once they dominate the buffer.
            if self._pos == len(self._buf):
                self._buf.clear()
                self._pos = 0
            elif self._pos > 65536 and self._pos * 2 > len(self._buf):
                del self._buf[:self._pos]
                self._pos = 0
        return out

    def _chats(self, buf: bytes | bytearray, pos: int) -> tuple[list[ChatFrame], int]:
        """The whole chats in ``buf`` from ``pos`` on, and where they end."""
        size = len(buf)
        cap = self.limits.max_text
        chats: list[ChatFrame] = []
        try:
            while size - pos >= 13 and buf[pos] == _CHAT_TYPE:
                _, source, dest, n = _CHAT.unpack_from(buf, pos)
                if n > cap:
                    self._cap(n, cap, "chat text length")
                end = pos + 13 + n
                if end > size:
                    break
                frame = buf if end - pos == size and type(buf) is bytes else bytes(buf[pos:end])
                try:
                    frame[13:].decode()
                except UnicodeDecodeError:
                    _text(buf, pos + 13, end, "chat text")  # raises, naming the field
                chats.append((source, dest, frame))
                pos = end
        except ProtocolError as exc:
            self._failed = exc
            raise
        return chats, pos

    def _parse_one(self) -> Message | None:
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 1:
            self._need = 1
            return None
        t = buf[pos]
        if t == MsgType.CLIENT_CHAT:
            if avail < 13:
                self._need = 13
                return None
            _, source, dest, n = _CHAT.unpack_from(buf, pos)
            self._cap(n, self.limits.max_text, "chat text length")
            end = pos + 13 + n
            if end > len(buf):
                self._need = 13 + n
                return None
            msg: Message = ClientChat(source, dest, _text(buf, pos + 13, end, "chat text"))
        elif t == MsgType.SERVER_REGISTRATION or t == MsgType.CLIENT_REGISTRATION:
            if avail < 12:
                self._need = 12
                return None
            _, source, last_hop, nlen, ilen = _REG.unpack_from(buf, pos)
            end = pos + 12 + nlen + ilen
            if end > len(buf):
                self._need = 12 + nlen + ilen
                return None
            name = _text(buf, pos + 12, pos + 12 + nlen, "name")
            info = _text(buf, pos + 12 + nlen, end, "info")
            cls = ServerRegistration if t == MsgType.SERVER_REGISTRATION else ClientRegistration
            msg = cls(source, last_hop, name, info)
        elif t == MsgType.STATUS:
            if avail < 15:
                self._need = 15
                return None
            _, source, dest, code, n = _STATUS.unpack_from(buf, pos)
            self._cap(n, self.limits.max_text, "status text length")
            end = pos + 15 + n
            if end > len(buf):
                self._need = 15 + n
                return None
            msg = Status(source, dest, code, _text(buf, pos + 15, end, "status text"))
        elif t == MsgType.CLIENT_QUIT:
            if avail < 9:
                self._need = 9
                return None
            _, source, n = _CQUIT.unpack_from(buf, pos)
            self._cap(n, self.limits.max_text, "quit text length")
            end = pos + 9 + n
            if end > len(buf):
                self._need = 9 + n
                return None
            msg = ClientQuit(source, _text(buf, pos + 9, end, "quit text"))
        elif t == MsgType.SERVER_QUIT:
            if avail < 13:
                self._need = 13
                return None
            _, source, repl, n = _SQUIT.unpack_from(buf, pos)
            self._cap(n, self.limits.max_text, "server quit text length")
            end = pos + 13 + n
            if end > len(buf):
                self._need = 13 + n
                return None
            msg = ServerQuit(source, repl, _text(buf, pos + 13, end, "server quit text"))
        elif t == MsgType.EXTENSION:
            if avail < 16:
                self._need = 16
                return None
            _, kind, source, dest, flags, n = _EXT.unpack_from(buf, pos)
            self._cap(n, self.limits.max_payload, "extension payload length")
            end = pos + 16 + n
            if end > len(buf):
                if IN_PLACE_MIN <= n <= IN_PLACE_MAX and self.allow_in_place:
                    self._begin_in_place(kind, source, dest, flags, n, pos + 16)
                else:
                    self._need = 16 + n
                return None
            msg = Extension(kind, source, dest, flags, bytes(buf[pos + 16:end]))
        else:
            raise ProtocolError(f"unknown message type 0x{t:02x}")
        self._pos = end
        self._need = 1
        return msg

    @staticmethod
    def _cap(n: int, cap: int, field: str) -> None:
        if n > cap:
            raise ProtocolError(f"{field} {n} exceeds the limit of {cap} bytes")
