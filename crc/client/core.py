"""The chat client's engine: one connection to a server, the client's view.

``ChatClient`` registers with a server, keeps the list of other clients it has
been told about, the status and chat logs, and offers ``send_chat`` and
``quit``. It runs in an ``EventLoop`` like the server; the terminal UI and the
compatibility adapter drive it from other threads only through the
``*_threadsafe`` methods. It never prints: every change is reported to the
``listener`` callback as an event, for whoever presents it.

With ``reconnect``, a lost connection is not the end: the client tries its
servers in turn (backing off) and comes back under the same id. With
``reliable``, chats to other mesh clients are numbered, acknowledged end to
end, resent until acknowledged (across reconnects and, with ``state_dir``,
restarts) and delivered once, in order (``reliable``, over ``crc.delivery``).
"""

from __future__ import annotations

import logging
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..delivery import Journal
from ..net import Connection, EventLoop
from ..net.connection import tcp_keepalive
from ..protocol import (
    DEFAULT_LIMITS, FLAG_BULK, ClientChat, ClientQuit, ClientRegistration, Extension, Limits,
    LinkKind, MAX_ID, Message, MsgType, encode_parts,
    MAX_INFO, MAX_NAME, ProtocolError, Status, StatusCode, duplicate_id_of, field_problem,
    random_id,
)
from ..protocol import auth
from ..visible import visible
from ..protocol.handshake import FEATURES, Hello, parse_hello
from .reliable import OutboxRefused, ReliableChats

log = logging.getLogger(__name__)

#: The longest chat text when the server says nothing: what a v1 chat and a
#: reliable chat frame both fit in under the default limits.
DEFAULT_MAX_CHAT = min(DEFAULT_LIMITS.max_text, DEFAULT_LIMITS.max_payload - 24)

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
    #: More servers to try, in turn after ``server``, when reconnecting.
    servers: tuple[tuple[str, int], ...] = ()
    #: Reconnect after losing the connection (or failing to make it),
    #: waiting ``reconnect_delay`` s, doubling up to ``reconnect_max_delay``;
    #: give up after ``reconnect_for`` s without a connection (0: never).
    reconnect: bool = False
    reconnect_delay: float = 0.2
    reconnect_max_delay: float = 5.0
    reconnect_for: float = 0.0
    #: Reliable chat to other mesh clients (needs extensions).
    reliable: bool = False
    #: Resend unacknowledged chats after this many seconds (doubling to 16);
    #: report them undeliverable after ``give_up`` seconds (0: never).
    resend_after: float = 1.0
    give_up: float = 600.0
    #: Where the outbox, the receive state and our identity survive restarts.
    state_dir: Path | None = None
    #: TLS towards the server (``crc.net.tls.client_tls``); None: plain TCP.
    tls: Any = None
    #: Seconds to wait for a welcome, shared among the candidates when
    #: connecting: a server that accepts and never answers is left for the next.
    handshake_timeout: float = 10.0
    #: Ping a quiet extension link to the server after ``keepalive`` seconds;
    #: take the server for gone after ``dead_after`` seconds without a byte.
    keepalive: float = 5.0
    dead_after: float = 15.0
    #: The mesh secret (``--secret-file``): we prove it to the server (which
    #: must prove it to us) after the hello; needed to run jobs on a mesh
    #: that has one. None: we do not authenticate.
    secret: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = random_id()
        for what, text, limit in (("name", self.name, MAX_NAME), ("info", self.info, MAX_INFO)):
            problem = field_problem(what, text, limit)
            if problem:
                raise ValueError(problem)

    @property
    def candidates(self) -> list[tuple[str, int]]:
        return [self.server, *(s for s in self.servers if s != self.server)]


@dataclass
class User:
    id: int
    name: str
    info: str


class Undeliverable(Exception):
    """A chat the client cannot take (its outbox is full)."""


class LookupFailed(LookupError):
    """A name or id the client cannot resolve to exactly one known user."""


class ChatClient:
    def __init__(self, config: ClientConfig, loop: EventLoop | None = None,
                 listener: Listener | None = None) -> None:
        self.config = config
        self.journal: Journal | None = None
        #: Our id comes from the state directory: a "duplicate id" at the
        #: first connection may be our previous incarnation, not yet gone.
        self.restored = False
        if config.state_dir is not None:
            self.journal = Journal(config.state_dir)
            identity = self.journal.identity()
            self.restored = identity is not None
            if identity is not None:
                config.id, config.name = identity["id"], config.name or identity["name"]
            self.journal.save_identity(config.id, config.name)
        self.id = config.id
        self.name = config.name
        self.loop = loop or EventLoop()
        self.listener = listener
        self.users: dict[int, User] = {}
        self.status_log: list[str] = []
        self.chat_log: list[tuple[int, str]] = []   # (source id, text)
        self.conn: Connection | None = None
        self.welcomed = False
        self.server_id = 0         # the id of the server that welcomed us
        #: The longest chat text the mesh carries (our server's hello says).
        self.max_chat = DEFAULT_MAX_CHAT
        #: What our server's hello reply told us (``max_chat``, ``max_jobs``...).
        self.server_fields: dict[str, str] = {}
        self.ext = False           # the server answered our mesh hello
        self.plain = False         # ... or it is plain CRC v1 (or we did not ask)
        #: Why reconnecting would be pointless (authentication failed either way).
        self.fatal = ""
        self.server_verified = False   # the server proved the mesh secret (this connection)
        self.authenticated = False     # ... and accepted our proof
        self._auth_nonce = ""
        self.has_quit = False      # we said goodbye (the connection may linger)
        self.closed_reason = ""
        #: Handlers for extension frames by kind (jobs, ...); the server only
        #: sends them once the hello exchange made this an extension link.
        self.extension_handlers: dict[int, Callable[[Extension], None]] = {}
        self.disconnect_listeners: list[Callable[[str], None]] = []
        #: Called (no arguments) once a *new* connection after a lost one is
        #: welcomed and its extension question settled.
        self.reconnect_listeners: list[Callable[[], None]] = []
        self.reconnecting = False  # the connection is down and we are trying again
        self.connections = 0       # connections welcomed so far
        self._candidate = 0
        self._delay = config.reconnect_delay
        self._lost_at: float | None = None
        self._hello_timer = None
        self._step_timer = None
        self._keepalive_timer = None
        self._tick_due = 0.0
        self._previous_users: dict[int, User] = {}
        self.server_address = config.server
        # Reliable chat.
        self.rchat = False         # this link carries reliable chat
        self.reliable = ReliableChats(self, config.resend_after, config.give_up)
        self.outbox, self.inbox = self.reliable.outbox, self.reliable.inbox
        if self.journal is not None:
            self.journal.load(self.outbox, self.inbox, time.monotonic())
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
        """Connect to the first server and register (``OSError`` if that fails
        at once and we are not to reconnect)."""
        self._connect()
        if self.outbox:
            self.reliable.arm_retry()

    def _connect(self) -> None:
        candidates = self.config.candidates
        host, port = candidates[self._candidate % len(candidates)]
        self.server_address = (host, port)
        self.welcomed = self.ext = self.plain = self.rchat = False
        self.max_chat, self.server_fields = DEFAULT_MAX_CHAT, {}
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        if self.connections:             # a reconnect: the server re-sends who is there
            self._previous_users, self.users = self.users, {}
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            err = sock.connect_ex((host, port))
        except OSError as exc:          # e.g. an unresolvable name
            sock.close()
            if not self.config.reconnect:
                raise
            self._retry_connection(f"cannot connect to {host}:{port}: {exc.strerror or exc}")
            return
        settings = dict(limits=self.config.limits, label=f"server {host}:{port}",
                        connecting=err != 0)
        if self.config.tls is None:
            # (TLS, and the ssl module, only for a client that uses it: a
            # plain one starts without loading it.)
            self.conn = Connection(self.loop, sock, self, **settings)
        else:
            from ..net.tls import new_connection
            self.conn = new_connection(self.loop, sock, self,
                                       tls=self.config.tls.towards(host), **settings)
        tcp_keepalive(sock, self.config.keepalive, self.config.dead_after)
        self.conn.send(ClientRegistration(self.id, 0, self.name, self.config.info))
        # A server that accepts and never answers (a frozen process, a wedged
        # host) must not hold us: each candidate gets its share of the time.
        step = max(1.0, self.config.handshake_timeout / len(candidates))
        self._step_timer = self.loop.call_later(step, self._no_answer, self.conn, step)

    def _no_answer(self, conn: Connection, step: float) -> None:
        if conn is self.conn and not conn.closed and not self.welcomed:
            conn.close(f"no welcome from {conn.label} within {step:g} s")

    def run(self) -> None:
        try:
            self.loop.run()
        finally:
            self.close()

    def close(self) -> None:
        self.config.reconnect = False
        if self.conn is not None:
            self.conn.close("client closed")
        if self.journal is not None:
            self.journal.close()
        self.loop.close()

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    # -- commands (loop thread) ------------------------------------------------------

    def send_chat(self, dest: int, text: str) -> None:
        """Send a chat: reliably when configured (queued until the link is
        settled, kept until acknowledged), else as a plain v1 chat.

        ``Undeliverable`` for a text longer than the mesh carries (the limit
        our server gave in its hello, or the defaults): refused here, up
        front, rather than by a server that would drop the link for it."""
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.max_chat:
            where = (f"{self.server_address[0]}:{self.server_address[1]}" if self.ext
                     else "the server (CRC v1 defaults)")
            raise Undeliverable(f"the chat is {size} bytes; {where} carries at most "
                                f"{self.max_chat} bytes of chat text")
        if self.config.reliable and not self.plain:
            try:
                self.reliable.queue(dest, text)
            except OutboxRefused as exc:
                raise Undeliverable(str(exc)) from None
        elif self.connected:
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
        self.has_quit = True
        if self.connected:
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
        """``name(id)`` for messages to the user (control characters in a
        name, which anyone may choose, shown as escapes)."""
        if user_id == self.id:
            return f"{visible(self.name)}({user_id})"
        user = self.users.get(user_id)
        return f"{visible(user.name)}({user_id})" if user else str(user_id)

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
        if self.reliable.acks:
            self.reliable.flush_acks()

    def on_closed(self, conn: Connection, reason: str) -> None:
        if conn is not self.conn:
            return                       # an earlier connection, already replaced
        for timer in (self._step_timer, self._keepalive_timer):
            if timer is not None:
                timer.cancel()
        self._step_timer = self._keepalive_timer = None
        if not self.welcomed and conn.bytes_in == 0 and not self.fatal \
                and ("reset" in reason or "closed by peer" in reason):
            # Nothing at all came back: often TLS on one side only.
            reason += (" (does the server speak TLS? then give --tls-ca)"
                       if self.config.tls is None else " (does the server speak TLS?)")
        self.closed_reason = reason
        self.rchat = False
        self.reliable.acks.clear()
        # Our id is taken, and not by an earlier connection of ours.
        refused = (self.status_log and duplicate_id_of(self.status_log[-1]) == self.id
                   and not self.connections and not self.restored)
        # Before the first welcome, each server is tried once: a wrong address
        # is an error at once, not an endless retry.
        untried = self._candidate + 1 < len(self.config.candidates)
        retry = (self.config.reconnect and not self.has_quit and not self._stop_when_closed
                 and not refused and not self.fatal
                 and (self.connections > 0 or self.restored or untried))
        if retry:
            now = time.monotonic()
            if self._lost_at is None:
                self._lost_at = now
            if self.config.reconnect_for and now - self._lost_at >= self.config.reconnect_for:
                reason = f"{reason}; gave up reconnecting after {self.config.reconnect_for:g} s"
                retry = False
        self.reconnecting = retry
        for listener in self.disconnect_listeners:
            listener(reason)
        self.emit("disconnected", reason=reason, reconnecting=retry)
        if retry:
            self._retry_connection(reason)
        elif self._stop_when_closed:
            self.loop.stop()

    def _retry_connection(self, reason: str) -> None:
        self.reconnecting = True
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        self._candidate += 1
        delay = self._delay * random.uniform(0.8, 1.2)
        self._delay = min(self._delay * 2, self.config.reconnect_max_delay)
        log.info("%s: %s; reconnecting in %.2f s", self.name, reason, delay)
        self.loop.call_later(delay, self._reconnect)

    def _reconnect(self) -> None:
        if self.config.reconnect and not self.has_quit and not self.connected:
            self._connect()

    def _link_ready(self) -> None:
        """The connection is welcomed and its extension question settled."""
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        if self.ext and self._keepalive_timer is None:
            self._tick_due = self.loop.time() + self._keepalive_period()
            self._keepalive_timer = self.loop.call_later(self._keepalive_period(),
                                                         self._keepalive_tick)
        again = self.connections > 0
        self.connections += 1
        self.reconnecting = False
        self._lost_at = None
        self._delay = self.config.reconnect_delay
        if self.config.reliable:
            self.reliable.link_ready()
        if again:
            for user in self._previous_users.values():   # left while we were away
                self.emit("quit", id=user.id, name=user.name, text="")
            self._previous_users = {}
            self.emit("reconnected", server="%s:%d" % self.server_address)
            for listener in self.reconnect_listeners:
                listener()

    # -- keepalives -------------------------------------------------------------------

    def _keepalive_period(self) -> float:
        return max(0.05, min(self.config.keepalive, self.config.dead_after / 3))

    def _keepalive_tick(self) -> None:
        """Ping our server after ``keepalive`` quiet seconds; after
        ``dead_after`` seconds without a byte from it, take it for gone (a
        frozen process, a cut link) and reconnect, to the next candidate. A
        plain v1 server cannot answer pings: TCP keepalives watch it instead.
        If it is we who did not run for a while, the server gets the rest of
        ``dead_after`` to be heard first."""
        self._keepalive_timer = None
        conn = self.conn
        if conn is None or conn.closed or not self.ext:
            return
        now = self.loop.time()
        period = self._keepalive_period()
        if now - self._tick_due > max(1.0, period):
            conn.last_received = max(conn.last_received, now - self.config.keepalive)
        self._tick_due = now + period
        quiet = now - conn.last_received
        if quiet >= self.config.dead_after:
            log.warning("%s: nothing from %s for %.1f s; reconnecting", self.name, conn.label,
                        quiet)
            conn.close(f"nothing received for {quiet:.1f} s (keepalive timeout)")
            return
        if quiet >= self.config.keepalive:
            conn.send(Extension(LinkKind.PING, self.id, 0, 0, b""))
        self._keepalive_timer = self.loop.call_later(period, self._keepalive_tick)

    def emit(self, kind: str, **data: Any) -> None:
        if self.listener is not None:
            self.listener(kind, data)

    # -- message handlers ----------------------------------------------------------------

    @property
    def negotiated(self) -> bool:
        """Whether the link's extension question is settled (either way)."""
        return self.ext or self.plain

    def _from_our_server(self, msg: Status) -> bool:
        """Whether ``msg`` is our server's own, addressed to us: only such a
        status can be a step of the hello or authentication exchange (anyone
        on the network can send us a status with any code)."""
        return self.welcomed and msg.source == self.server_id and msg.dest == self.id

    def _on_status(self, msg: Status) -> None:
        if msg.code == StatusCode.MESH_HELLO and msg.source == msg.dest == self.id:
            if not self.negotiated and self._hello_timer is not None:
                if self.config.secret is not None:
                    log.warning("%s: the server is plain CRC v1 and cannot prove the mesh "
                                "secret: chat only", self.name)
                self._settle_plain("server is plain CRC v1")
            return
        if msg.code == StatusCode.MESH_HELLO_REPLY and self._from_our_server(msg) \
                and not self.negotiated and self._hello_timer is not None:
            hello = parse_hello(msg.text)
            if self.config.secret is not None and not self._authenticate(msg.source, hello):
                return
            self.ext = True
            self.rchat = self.config.reliable and "rchat" in hello.features
            self.server_fields = dict(hello.fields)
            limit = hello.fields.get("max_chat", "")
            if limit.isascii() and limit.isdigit():
                self.max_chat = min(int(limit), DEFAULT_MAX_CHAT)
            # Ready first (no longer reconnecting), then told: a listener may
            # submit jobs at once, and they must go out on this connection.
            self._link_ready()
            self.emit("extensions", features=sorted(hello.features))
            return
        if msg.code == StatusCode.AUTH_OK and self._from_our_server(msg):
            if self.server_verified:
                self.authenticated = True
                self.emit("authenticated")
            return
        self.status_log.append(msg.text)
        if msg.code == StatusCode.AUTH_REFUSED:
            log.error("%s: the server refused us: %s", self.name, msg.text)
            self.fatal = msg.text
        if msg.code == StatusCode.WELCOME and not self.welcomed:
            self.welcomed = True
            self.server_id = msg.source
            if self._step_timer is not None:
                self._step_timer.cancel()
                self._step_timer = None
            self.server_verified = self.authenticated = False
            if self.config.extensions:
                features = FEATURES if self.config.reliable else FEATURES - {"rchat"}
                fields = {}
                if self.config.secret is not None:
                    self._auth_nonce = auth.new_nonce()
                    fields["nonce"] = self._auth_nonce
                self.conn.send(Status(self.id, self.id, StatusCode.MESH_HELLO,
                                      Hello(role="client", features=features,
                                            fields=fields).text()))
                self._hello_timer = self.loop.call_later(
                    HELLO_TIMEOUT, self._settle_plain,
                    f"no answer to the mesh hello within {HELLO_TIMEOUT:g} s")
            else:
                self.plain = True
        self.emit("status", code=msg.code, text=msg.text, source=msg.source)
        if msg.code == StatusCode.WELCOME and self.plain and not self.config.extensions:
            self._link_ready()

    def _authenticate(self, server: int, hello: Any) -> bool:
        """Check the server's proof in its hello reply and answer with ours.
        False if the server failed (we disconnect); a server without a proof
        (no secret there) is kept for chat, but gets no jobs."""
        secret = self.config.secret
        theirs, given = hello.fields.get("nonce", ""), hello.fields.get("proof")
        if given is None:
            log.warning("%s: the server did not prove the mesh secret (it has none): chat "
                        "only; jobs are not sent to it", self.name)
            return True
        expected = auth.proof(secret, auth.TO_CLIENT, self.id, server, self._auth_nonce, theirs) \
            if auth.valid_nonce(theirs) else ""
        if not expected or not auth.proof_matches(expected, given):
            log.error("%s: the server failed to prove the mesh secret (a different secret, or "
                      "not our mesh); disconnecting", self.name)
            self.fatal = "the server failed to prove the mesh secret"
            self.conn.close(self.fatal)
            return False
        self.server_verified = True
        self.conn.send(Status(self.id, server, StatusCode.AUTH_PROOF, auth.auth_text(
            proof=auth.proof(secret, auth.CLIENT, self.id, server, self._auth_nonce, theirs))))
        return True

    def _settle_plain(self, why: str) -> None:
        if self.negotiated or not self.connected:
            return
        log.info("%s: no extensions: %s", self.name, why)
        self.plain = True
        self._link_ready()
        self.emit("plain")

    def _on_registration(self, msg: ClientRegistration) -> None:
        self.users[msg.source] = User(msg.source, msg.name, msg.info)
        self.reliable.wake(msg.source)
        known = self._previous_users.pop(msg.source, None)
        if known is None or known.name != msg.name:     # not just a reconnect's resync
            self.emit("join", id=msg.source, name=msg.name, info=msg.info)

    def _on_chat(self, msg: ClientChat) -> None:
        self.chat_log.append((msg.source, msg.text))
        self.emit("chat", source=msg.source, name=self.display_name(msg.source), text=msg.text)

    def _on_extension(self, msg: Extension) -> None:
        if not self.ext:
            raise ProtocolError("extension frame before the hello exchange")
        if msg.kind == LinkKind.PING and msg.dest == 0:
            self.conn.send(Extension(LinkKind.PONG, self.id, 0, 0, b""))
            return
        handler = self.reliable.handlers.get(msg.kind) or self.extension_handlers.get(msg.kind)
        if handler is not None:
            handler(msg)

    def _on_quit(self, msg: ClientQuit) -> None:
        user = self.users.pop(msg.source, None)
        if user is not None:
            self.emit("quit", id=msg.source, name=user.name, text=msg.text)
