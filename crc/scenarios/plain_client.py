"""A chat client that knows CRC v1 and nothing else, to prove what we send it.

``PlainClient`` is written from the v1 wire format alone (its own packing and
parsing, not ``crc.protocol``): it registers, logs statuses and chats, keeps
the list of other clients, and treats any type byte outside v1's five as
fatal, the way deployed v1 peers do. A server registration is fatal too: v1
clients are never told about servers. A scenario with a plain client fails
if the client ever hit such an error (its ``fatal_error`` key).

It uses a blocking socket and one reader thread named after the machine;
sends happen on the caller's thread under a lock. Not a model of good client
design, deliberately: a small, independent witness.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

SERVER_REGISTRATION, STATUS, CLIENT_REGISTRATION, CLIENT_CHAT, CLIENT_QUIT = (
    0x00, 0x01, 0x80, 0x81, 0x82)

_REG = struct.Struct(">BIIBH")    # 12 bytes
_STATUS = struct.Struct(">BIIHI")  # 15 bytes
_CHAT = struct.Struct(">BIII")     # 13 bytes
_QUIT = struct.Struct(">BII")      # 9 bytes

#: Seconds between two one-byte sends of a bytewise message.
BYTE_PACE = 0.001


class V1Violation(Exception):
    """Bytes a plain CRC v1 client cannot or must not accept."""


def registration_bytes(client_id: int, name: str, info: str) -> bytes:
    n, i = name.encode(), info.encode()
    return _REG.pack(CLIENT_REGISTRATION, client_id, 0, len(n), len(i)) + n + i


def chat_bytes(source: int, dest: int, text: str) -> bytes:
    t = text.encode()
    return _CHAT.pack(CLIENT_CHAT, source, dest, len(t)) + t


def quit_bytes(source: int, text: str) -> bytes:
    t = text.encode()
    return _QUIT.pack(CLIENT_QUIT, source, len(t)) + t


class V1Reader:
    """Cuts a byte stream into v1 messages: ``(type, fields...)`` tuples."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple]:
        self.buf += data
        out = []
        while True:
            msg = self._one()
            if msg is None:
                return out
            out.append(msg)

    def _one(self) -> tuple | None:
        buf = self.buf
        if not buf:
            return None
        t = buf[0]
        if t in (SERVER_REGISTRATION, CLIENT_REGISTRATION):
            if len(buf) < _REG.size:
                return None
            _, source, last_hop, nlen, ilen = _REG.unpack_from(buf)
            end = _REG.size + nlen + ilen
            if len(buf) < end:
                return None
            name = buf[_REG.size:_REG.size + nlen].decode()
            info = buf[_REG.size + nlen:end].decode()
            msg: tuple = (t, source, last_hop, name, info)
        elif t == STATUS:
            if len(buf) < _STATUS.size:
                return None
            _, source, dest, code, n = _STATUS.unpack_from(buf)
            end = _STATUS.size + n
            if len(buf) < end:
                return None
            msg = (t, source, dest, code, buf[_STATUS.size:end].decode())
        elif t == CLIENT_CHAT:
            if len(buf) < _CHAT.size:
                return None
            _, source, dest, n = _CHAT.unpack_from(buf)
            end = _CHAT.size + n
            if len(buf) < end:
                return None
            msg = (t, source, dest, buf[_CHAT.size:end].decode())
        elif t == CLIENT_QUIT:
            if len(buf) < _QUIT.size:
                return None
            _, source, n = _QUIT.unpack_from(buf)
            end = _QUIT.size + n
            if len(buf) < end:
                return None
            msg = (t, source, buf[_QUIT.size:end].decode())
        else:
            raise V1Violation(f"unknown message type 0x{t:02x}")
        del buf[:end]
        return msg


class PlainClient:
    def __init__(self, client_id: int, name: str, info: str, server: tuple[str, int]) -> None:
        self.id = client_id
        self.name = name
        self.info = info
        self.server = server
        self.users: dict[int, str] = {}
        self.status_log: list[str] = []
        self.chat_log: list[tuple[int, str]] = []
        self.received_types: set[int] = set()
        self.fatal_error = ""
        self.connected = False
        self.welcomed = False                # the server's welcome status arrived
        self._lock = threading.Lock()        # guards the state above
        self._send_lock = threading.Lock()   # one writer at a time
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<PlainClient {self.name} id={self.id} users={len(self.users)}>"

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> None:
        sock = socket.create_connection(self.server, timeout=timeout)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self.connected = True
        self._reader = threading.Thread(target=self._read_loop, name=self.name, daemon=True)
        self._reader.start()
        self._send(registration_bytes(self.id, self.name, self.info))

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connection and wait for the reader thread to end."""
        self.shutdown()
        if self._reader is not None:
            self._reader.join(timeout)

    def shutdown(self) -> None:
        """Close the connection both ways (the reader thread then ends)."""
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- commands (any thread) -------------------------------------------------

    def send_chat(self, dest: int, text: str) -> None:
        self._send(chat_bytes(self.id, dest, text))

    def send_chat_bytewise(self, dest: int, text: str) -> None:
        """Write the chat one byte per ``send()`` call, paced apart."""
        data = chat_bytes(self.id, dest, text)
        with self._send_lock:
            for i in range(len(data)):
                if not self._raw_send(data[i:i + 1]):
                    return
                time.sleep(BYTE_PACE)

    def quit(self, text: str = "") -> None:
        self._send(quit_bytes(self.id, text))
        self.shutdown()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "id": self.id,
                "name": self.name,
                "connected_user_ids": sorted(self.users),
                "user_names": {str(uid): name for uid, name in sorted(self.users.items())},
                "status_updates_log": list(self.status_log),
                "chat_messages_log": [text for _, text in self.chat_log],
                "chat_sources": [source for source, _ in self.chat_log],
                "connected": self.connected,
                "extensions": False,
                "received_types": sorted(self.received_types),
                "fatal_error": self.fatal_error,
            }

    # -- internals ---------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._raw_send(data)

    def _raw_send(self, data: bytes) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendall(data)
            return True
        except OSError as exc:
            log.info("%s: send failed: %s", self.name, exc)
            return False

    def _read_loop(self) -> None:
        reader = V1Reader()
        sock = self._sock
        assert sock is not None
        try:
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    log.info("%s: server closed the connection", self.name)
                    return
                for msg in reader.feed(data):
                    self._handle(msg)
        except V1Violation as exc:
            log.error("%s: fatal: %s", self.name, exc)
            with self._lock:
                self.fatal_error = str(exc)
        except (OSError, UnicodeDecodeError) as exc:
            log.info("%s: connection ended: %s", self.name, exc)
        finally:
            with self._lock:
                self.connected = False
            sock.close()

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        with self._lock:
            self.received_types.add(kind)
            if kind == SERVER_REGISTRATION:
                raise V1Violation(f"a server registration (id {msg[1]}) was sent to a client")
            if kind == STATUS:
                self.status_log.append(msg[4])
                if msg[3] == 0:
                    self.welcomed = True
            elif kind == CLIENT_REGISTRATION:
                self.users[msg[1]] = msg[3]
            elif kind == CLIENT_CHAT:
                self.chat_log.append((msg[1], msg[3]))
            elif kind == CLIENT_QUIT:
                self.users.pop(msg[1], None)
