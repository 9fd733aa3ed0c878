"""The chat client's engine: one connection to a server, the client's view.

``ChatClient`` registers with a server, keeps the list of other clients it has
been told about, the status and chat logs, and offers ``send_chat`` and
``quit``. It runs in an ``EventLoop`` like the server; the terminal UI and the
compatibility adapter drive it from other threads only through the
``*_threadsafe`` methods. It never prints: every change is reported to the
``listener`` callback as an event, for whoever presents it.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable

from ..net import Connection, EventLoop
from ..protocol import (
    DEFAULT_LIMITS, FLAG_BULK, ClientChat, ClientQuit, ClientRegistration, Extension, Limits,
    LinkKind, MAX_ID, Message, MsgType, encode, encode_parts,
    ProtocolError, Status, StatusCode, random_id,
)
from ..protocol.handshake import Hello, parse_hello

log = logging.getLogger(__name__)

#: Seconds to wait for the answer to our mesh hello before taking the server
#: for plain CRC v1 (a conforming v1 server echoes the hello at once).
HELLO_TIMEOUT = 3.0

Listener = Callable[[str, dict[str, Any]], None]


@dataclass
class ClientConfig:
    server: tuple[str, int]
    name: str
    id: int = 0
    info: str = ""
    limits: Limits = DEFAULT_LIMITS
    extensions: bool = True     # offer mesh extensions (plain v1 when False)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = random_id()


@dataclass
class User:
    id: int
    name: str
    info: str


class LookupFailed(LookupError):
    """A name or id the client cannot resolve to exactly one known user."""


class ChatClient:
    def __init__(self, config: ClientConfig, loop: EventLoop | None = None,
                 listener: Listener | None = None) -> None:
        self.config = config
        self.id = config.id
        self.name = config.name
        self.loop = loop or EventLoop()
        self.listener = listener
        self.users: dict[int, User] = {}
        self.status_log: list[str] = []
        self.chat_log: list[tuple[int, str]] = []   # (source id, text)
        self.conn: Connection | None = None
        self.welcomed = False
        self.ext = False           # the server answered our mesh hello
        self.plain = False         # ... or it is plain CRC v1 (or we did not ask)
        self.has_quit = False      # we said goodbye (the connection may linger)
        self.closed_reason = ""
        #: Handlers for extension frames by kind (jobs, ...); the server only
        #: sends them once the hello exchange made this an extension link.
        self.extension_handlers: dict[int, Callable[[Extension], None]] = {}
        self.disconnect_listeners: list[Callable[[str], None]] = []
        self._handlers = {
            MsgType.STATUS: self._on_status,
            MsgType.CLIENT_REGISTRATION: self._on_registration,
            MsgType.CLIENT_CHAT: self._on_chat,
            MsgType.CLIENT_QUIT: self._on_quit,
            MsgType.EXTENSION: self._on_extension,
        }

    def __repr__(self) -> str:
        return f"<ChatClient {self.name} id={self.id} users={len(self.users)} conn={self.conn!r}>"

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        host, port = self.config.server
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((host, port))
        self.conn = Connection(self.loop, sock, self, limits=self.config.limits,
                               label=f"server {host}:{port}", connecting=err != 0)
        self.conn.send(ClientRegistration(self.id, 0, self.name, self.config.info))

    def run(self) -> None:
        try:
            self.loop.run()
        finally:
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close("client closed")
        self.loop.close()

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    # -- commands (loop thread) ------------------------------------------------------

    def send_chat(self, dest: int, text: str) -> None:
        if self.connected:
            self.conn.send(ClientChat(self.id, dest, text))

    def send_extension(self, msg: Extension) -> bool:
        """Send an extension frame to our server (False on a plain v1 link)."""
        if not self.connected or not self.ext:
            return False
        if msg.flags & FLAG_BULK:
            self.conn.send_bulk(*encode_parts(msg))
        else:
            self.conn.send(msg)
        return True

    def quit(self, text: str = "", linger: bool = False) -> None:
        """Say goodbye, flush, and close the connection — or, with ``linger``,
        keep it open and keep logging what still arrives (what CRC v1
        reference clients do, so scenario verdicts match theirs)."""
        if self.connected:
            self.has_quit = True
            self.conn.send(ClientQuit(self.id, text))
            if not linger:
                self.conn.close_after_flush("quit")

    def finish(self, text: str = "") -> None:
        """Say goodbye after everything queued, close, and stop the loop once closed."""
        self._stop_when_closed = True
        if self.connected:
            self.quit(text)
        else:
            self.loop.stop()

    _stop_when_closed = False

    # -- commands (any thread) ------------------------------------------------------

    def send_chat_threadsafe(self, dest: int, text: str) -> None:
        self.loop.call_soon_threadsafe(self.send_chat, dest, text)

    def quit_threadsafe(self, text: str = "", linger: bool = False) -> None:
        self.loop.call_soon_threadsafe(self.quit, text, linger)

    # -- names ----------------------------------------------------------------------

    def resolve(self, target: str) -> int:
        """Turn a user name or numeric id into an id; ``LookupFailed`` says why not."""
        matches = [u.id for u in self.users.values() if u.name == target]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise LookupFailed(f"{target!r} is ambiguous: ids {', '.join(map(str, sorted(matches)))}")
        if target.isascii() and target.isdigit():
            number = int(target)
            if not 0 < number <= MAX_ID:
                raise LookupFailed(f"{target} is not a valid id (1..{MAX_ID})")
            return number
        raise LookupFailed(f"no known user named {target!r} (try /who)")

    def display_name(self, user_id: int) -> str:
        if user_id == self.id:
            return f"{self.name}({user_id})"
        user = self.users.get(user_id)
        return f"{user.name}({user_id})" if user else str(user_id)

    # -- connection callbacks ----------------------------------------------------------

    def on_data(self, conn: Connection, data: bytes) -> None:
        conn.decode(data)

    def on_messages(self, conn: Connection, messages: list[Message]) -> None:
        for msg in messages:
            handler = self._handlers.get(msg.type)
            if handler is None:
                log.warning("%s: server sent a %s, which a client never expects", self.name,
                            msg.type.name)
                continue
            try:
                handler(msg)
            except ProtocolError as exc:
                log.warning("%s: bad message from server: %s", self.name, exc)

    def on_closed(self, conn: Connection, reason: str) -> None:
        self.closed_reason = reason
        for listener in self.disconnect_listeners:
            listener(reason)
        self._emit("disconnected", reason=reason)
        if self._stop_when_closed:
            self.loop.stop()

    def _emit(self, kind: str, **data: Any) -> None:
        if self.listener is not None:
            self.listener(kind, data)

    # -- message handlers ----------------------------------------------------------------

    @property
    def negotiated(self) -> bool:
        """Whether the link's extension question is settled (either way)."""
        return self.ext or self.plain

    def _on_status(self, msg: Status) -> None:
        if msg.code == StatusCode.MESH_HELLO:
            if msg.source == self.id:
                self._settle_plain("server is plain CRC v1")
            return
        if msg.code == StatusCode.MESH_HELLO_REPLY:
            hello = parse_hello(msg.text)
            self.ext = True
            self._emit("extensions", features=sorted(hello.features))
            return
        self.status_log.append(msg.text)
        if msg.code == StatusCode.WELCOME and not self.welcomed:
            self.welcomed = True
            if self.config.extensions:
                self.conn.send(Status(self.id, self.id, StatusCode.MESH_HELLO,
                                      Hello(role="client").text()))
                self.loop.call_later(HELLO_TIMEOUT, self._settle_plain,
                                     f"no answer to the mesh hello within {HELLO_TIMEOUT:g} s")
            else:
                self.plain = True
        self._emit("status", code=msg.code, text=msg.text, source=msg.source)

    def _settle_plain(self, why: str) -> None:
        if self.negotiated:
            return
        log.info("%s: no extensions: %s", self.name, why)
        self.plain = True
        self._emit("plain")

    def _on_registration(self, msg: ClientRegistration) -> None:
        self.users[msg.source] = User(msg.source, msg.name, msg.info)
        self._emit("join", id=msg.source, name=msg.name, info=msg.info)

    def _on_chat(self, msg: ClientChat) -> None:
        self.chat_log.append((msg.source, msg.text))
        self._emit("chat", source=msg.source, name=self.display_name(msg.source), text=msg.text)

    def _on_extension(self, msg: Extension) -> None:
        if not self.ext:
            raise ProtocolError("extension frame before the hello exchange")
        if msg.kind == LinkKind.PING and msg.dest == 0:
            self.conn.send(Extension(LinkKind.PONG, self.id, 0, 0, b""))
            return
        handler = self.extension_handlers.get(msg.kind)
        if handler is not None:
            handler(msg)

    def _on_quit(self, msg: ClientQuit) -> None:
        user = self.users.pop(msg.source, None)
        if user is not None:
            self._emit("quit", id=msg.source, name=user.name, text=msg.text)
