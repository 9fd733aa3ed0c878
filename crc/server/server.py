"""The relay: links, the routing table, the relay hot path, flooding and
departures — what a CRC v1 server is — with its other concerns in parts of
their own (the file names say which):

* ``config``      — ``ServerConfig``;
* ``links``       — ``Role`` and ``Link``, the state of each adjacent connection;
* ``joining``     — our uplink, its candidates, rejoining after a loss;
* ``admission``   — authentication as state machines (messages in and out);
* ``gatekeeper``  — runs them on links, and who may run jobs;
* ``negotiation`` — the hello exchange and each side's limits;
* ``reliable``    — reliable chats passing through, held for a pending hello;
* ``liveness``    — keepalives, and a server that was itself not running;
* ``state``       — the state query.

A ``MeshServer`` owns a listening socket, at most one uplink, a
``RoutingTable`` and one ``Link`` per adjacent connection. It runs inside an
``EventLoop`` and never blocks or starts a thread; it touches no
process-global state (signals and logging setup belong to the CLI), so many
servers can share a process, each in its own loop.

Who may hear what: a plain CRC v1 peer only ever receives v1 message types.
Extension types (0x02 server departure, 0x40 frames) go only over links whose
peer completed the hello exchange (``crc.protocol.handshake``).

Every departure — a client quit, a server departure, a lost link — goes
through ``_depart`` / ``_announce_departure``: remove the hosts, then tell
every other link in the form it understands.

Must not: block, sleep, resolve names, or hold anything without a bound
(docs/security.md).
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Callable

from ..delivery.wire import ChatKind
from ..net import Connection, EventLoop
from ..net.connection import tcp_keepalive
from ..net.tls import new_connection
from ..net.loop import EVENT_READ
from ..protocol import (
    FLAG_BULK, ChatFrame, ClientChat, ClientQuit, ClientRegistration, Extension, LinkKind,
    Message, MsgType, ProtocolError, ServerQuit, ServerRegistration, Status, StatusCode, auth,
    encode, encode_parts, unknown_id_text,
)
from ..routing import Host, Kind, RoutingTable
from . import state
from .accepting import Acceptor
from .config import PLAIN_CLIENT_POLICIES, ServerConfig, is_loopback, is_loopback_host
from .gatekeeper import Gatekeeper
from .joining import Joiner
from .links import Link, Role
from .liveness import Liveness
from .metrics import Stats
from .negotiation import HELLO_SETTLE, Negotiation
from .registrations import INVALID_ID_TEXT, Registrations
from .reliable import CHAT_OVERHEAD, HELD_MAX, HELD_TOTAL, ReliableRelay

__all__ = ["CHAT_OVERHEAD", "HELD_MAX", "HELD_TOTAL", "HELLO_SETTLE", "INVALID_ID_TEXT",
           "Link", "MeshServer", "PLAIN_CLIENT_POLICIES", "Role", "STATUS_LOG_CHARS",
           "STATUS_LOG_ENTRIES", "ServerConfig", "is_loopback", "is_loopback_host"]

log = logging.getLogger(__name__)

#: Status texts addressed to a server are kept for the state query: the newest
#: this many, and no more text than ``STATUS_LOG_CHARS`` besides the newest.
STATUS_LOG_ENTRIES = 256
STATUS_LOG_CHARS = 1 << 20


class MeshServer:
    def __init__(self, config: ServerConfig, loop: EventLoop | None = None) -> None:
        self.config = config
        self.id = config.id
        self.name = config.name
        self.info = config.info
        self.loop = loop or EventLoop()
        self.routes = RoutingTable(self.id)
        #: Counters for ``--metrics`` (``crc.server.metrics``).
        self.stats = Stats()
        self.links: dict[int, Connection] = {}     # adjacent id -> connection
        self.connections: set[Connection] = set()  # every open connection
        self.status_log: list[str] = []           # bounded: see ``_log_status``
        self._status_chars = 0
        self.listener: socket.socket | None = None
        self.uplink: Connection | None = None
        self.port = config.port
        self._closing = False
        #: False once ``kill`` stopped us: closing then sends nothing more.
        self.graceful = True
        self.acceptor = Acceptor(self)
        # The parts (module docstring): each holds its own state.
        self.joiner = Joiner(self)
        self.registrations = Registrations(self)
        self.gate = Gatekeeper(self)
        self.negotiation = Negotiation(self)
        self.reliable = ReliableRelay(self)
        self.liveness = Liveness(self)
        #: Handlers for extension frames addressed to us (or to the adjacent
        #: peer, destination 0), by kind; filled by subsystems (jobs, ...).
        self.extension_handlers: dict[int, Callable[[Connection, Extension], None]] = {}
        #: Looks at frames passing through to someone else; True = consumed.
        self.extension_taps: dict[int, Callable[[Connection, Extension], bool]] = {
            ChatKind.CHAT: self.reliable.relay}
        #: More fields for the hello reply to a client (``max_jobs``, ...),
        #: filled by subsystems: what the client should know of our limits.
        self.hello_fields: dict[str, str] = {}
        #: Extension kinds of the job service: a client that may not run jobs
        #: may send them only to its own server (destination 0).
        self.job_kinds: set[int] = set()
        #: Called with the hosts that left the network (quit, departure, link loss).
        self.departure_listeners: list[Callable[[list[Host]], None]] = []
        #: Called with a connection whose peer just completed the hello exchange.
        self.extension_link_listeners: list[Callable[[Connection], None]] = []
        #: Called once when the server closes (subsystems release what they hold).
        self.close_listeners: list[Callable[[], None]] = []
        self._handlers = {
            MsgType.SERVER_REGISTRATION: self.registrations.on_server,
            MsgType.CLIENT_REGISTRATION: self.registrations.on_client,
            MsgType.STATUS: self._on_status,
            MsgType.CLIENT_CHAT: self._on_chat,
            MsgType.CLIENT_QUIT: self._on_client_quit,
            MsgType.SERVER_QUIT: self._on_server_quit,
            MsgType.EXTENSION: self._on_extension,
        }

    def __repr__(self) -> str:
        return f"<MeshServer {self.name} id={self.id} port={self.port} hosts={len(self.routes)}>"

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Listen, and join the mesh if configured. Non-blocking."""
        self.gate.log_security()
        self.listen()
        if self.config.connect:
            try:
                self.connect_uplink(*self.config.connect)
            except OSError as exc:
                host, port = self.config.connect
                log.log(logging.WARNING if self.config.rejoin else logging.ERROR,
                        "%s: cannot connect to %s:%d: %s", self.name, host, port,
                        exc.strerror or exc)
                self.joiner.lost()
        self.liveness.start()

    # -- the uplink (``crc.server.joining``) ------------------------------------------

    def _uplink_lost(self) -> None:
        self.joiner.lost()

    @property
    def rejoin_attempts(self) -> int:
        return self.joiner.attempts

    def listen(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.config.host else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, self.config.port))
        sock.listen(128)
        sock.setblocking(False)
        self.listener = sock
        self.port = sock.getsockname()[1]
        self.loop.register(sock, EVENT_READ, self.acceptor)
        log.info("%s (id %d) listening on %s:%d", self.name, self.id, self.config.host, self.port)

    def connect_uplink(self, host: str, port: int) -> None:
        """Open our uplink to ``host:port`` (``Joiner.open``; an override point
        of the CRC v1 runner's raw-bytes test)."""
        self.joiner.open(host, port)

    def run(self) -> None:
        """Run the event loop until ``stop``; then close every socket."""
        try:
            self.loop.run()
        finally:
            self.close()

    def stop(self) -> None:
        self.loop.stop()

    def kill(self) -> None:
        """Stop as a crash would (in-process servers: tests, scenarios): nothing
        more is sent, peers see the links drop. Thread-safe, like ``stop``."""
        self.graceful = False
        self.loop.stop()

    def close(self) -> None:
        self._closing = True
        for listener in self.close_listeners:
            listener()
        self.close_listeners.clear()
        for conn in list(self.connections):
            if self.graceful:
                conn.flush()        # (the jobs' last results, if the kernel takes them now)
            conn.close("server shutting down")
        if self.listener is not None:
            self.loop.unregister(self.listener)
            self.listener.close()
            self.listener = None
        self.loop.close()

    # -- connections --------------------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        """Accept every pending connection (``Acceptor.accept``; an override
        point of the CRC v1 runner's raw-bytes test)."""
        self.acceptor.accept(listener)

    def _new_connection(self, sock: socket.socket, link: Link, label: str,
                        connecting: bool = False, tls: Any = None) -> Connection:
        conn = new_connection(self.loop, sock, self, limits=self.config.limits, label=label,
                              max_send_buffer=self.config.max_send_buffer,
                              connecting=connecting, tls=tls)
        conn.peer = link
        # No extension frames before the hello exchange: until then a header
        # claiming a large payload reserves nothing (``Negotiation.extensions_up``).
        conn.decoder.allow_in_place = False
        self.connections.add(conn)
        tcp_keepalive(sock, self.config.keepalive, self.config.dead_after)
        return conn

    def _registration_deadline(self, conn: Connection) -> None:
        if conn.closed:
            return
        if conn.peer.role is Role.PENDING:
            self.drop(conn, f"no registration within {self.config.registration_timeout:g} s "
                            "(--registration-timeout)")
        elif conn.peer.role is Role.AUTH:
            self.gate.refuse(conn, auth.REQUIRED_TEXT, f"did not authenticate within "
                             f"{self.config.registration_timeout:g} s (--registration-timeout)")

    # -- keepalives (``crc.server.liveness``) ------------------------------------------

    def _keepalive_tick(self) -> None:
        self.liveness.tick()

    @property
    def _tick_due(self) -> float:
        return self.liveness.tick_due

    @_tick_due.setter
    def _tick_due(self, value: float) -> None:
        self.liveness.tick_due = value

    def on_data(self, conn: Connection, data: bytes) -> None:
        role = conn.peer.role
        if role is Role.SERVER or role is Role.CLIENT:
            # A registered link: chats are passed on as the bytes they came in.
            conn.decode(data, self._relay_chats)
        else:
            conn.decode(data)

    def on_messages(self, conn: Connection, messages: list[Message]) -> None:
        link: Link = conn.peer
        counted = self.stats.messages
        for msg in messages:
            counted[msg.type] += 1
            if conn.closed or link.role is Role.DONE:
                return
            if link.role is Role.AUTH and not (
                    msg.type is MsgType.STATUS
                    and msg.code in (StatusCode.MESH_HELLO, StatusCode.AUTH_PROOF)):
                self.gate.refuse(conn, auth.REQUIRED_TEXT,
                                 f"sent a {msg.type.name.lower()} before authenticating")
                return
            try:
                self._handlers[msg.type](conn, msg)
            except ProtocolError as exc:
                self.drop(conn, f"protocol error: {exc}")
                return

    def on_closed(self, conn: Connection, reason: str) -> None:
        link: Link = conn.peer
        self.connections.discard(conn)
        self.stats.connection_closed(reason, conn.bytes_in, conn.bytes_out)
        was_uplink = conn is self.uplink
        if was_uplink:
            self.uplink = None
        peer_id = link.peer_id
        if peer_id and self.links.get(peer_id) is conn:
            del self.links[peer_id]
            gone = self.routes.remove(peer_id)
            if gone:
                # A client going away without a quit is routine; a server is not.
                level = logging.WARNING if link.role is Role.SERVER else logging.INFO
                log.log(level, "%s: lost link to %s %d (%s); %d host(s) unreachable",
                        self.name, link.role.value, peer_id, reason, len(gone))
                self._announce_departure(gone, "link lost", exclude=None)
        elif link.role is Role.JOINING:
            self.joiner.failed(conn, reason)
        elif link.role is Role.AUTH:
            log.info("%s: %s closed before authenticating: %s", self.name,
                     self.gate.who(conn), reason)
        else:
            log.debug("%s: %r closed: %s", self.name, conn, reason)
        if was_uplink:
            self.joiner.lost()

    def drop(self, conn: Connection, reason: str) -> None:
        """Disconnect a misbehaving peer; cleanup follows in ``on_closed``."""
        link: Link = conn.peer
        log.warning("%s: disconnecting %r (%s %d): %s", self.name, conn, link.role.value,
                    link.peer_id, reason)
        conn.close(reason)

    # -- sending helpers --------------------------------------------------------------

    def _link_towards(self, host_id: int) -> Connection | None:
        """The connection of ``host_id``'s first link; None if it is unknown."""
        first = self.routes.first_link(host_id)
        return self.links.get(first) if first is not None else None

    def _send_to(self, host_id: int, msg: Message) -> bool:
        """Send ``msg`` towards ``host_id`` through its first link."""
        conn = self._link_towards(host_id)
        if conn is None:
            return False
        conn.send(msg)
        return True

    def _flood(self, msg: Message, exclude: int | None, servers: bool = True,
               clients: bool = False) -> None:
        for peer_id, conn in self.links.items():
            if peer_id == exclude:
                continue
            role = conn.peer.role
            if (servers and role is Role.SERVER) or (clients and role is Role.CLIENT):
                conn.send(msg)

    def _registration(self, host: Host) -> Message:
        cls = ServerRegistration if host.kind is Kind.SERVER else ClientRegistration
        return cls(host.id, self.id, host.name, host.info)

    def send_extension(self, msg: Extension) -> bool:
        """Route an extension frame towards ``msg.dest`` over extension links
        (False if it cannot go: no such link, or too large for that peer)."""
        first = self.routes.first_link(msg.dest)
        conn = self.links.get(first) if first is not None else None
        if conn is None or not conn.peer.ext:
            return False
        if len(msg.payload) > conn.peer.max_frame:
            log.warning("%s: an extension frame (kind %d, %d bytes) from %d for %d is larger "
                        "than %r accepts (%d): dropped", self.name, msg.kind, len(msg.payload),
                        msg.source, msg.dest, conn, conn.peer.max_frame)
            return False
        if msg.flags & FLAG_BULK:
            conn.send_bulk(*encode_parts(msg))
        else:
            conn.send(msg)
        return True

    def flood_extension(self, msg: Extension, exclude: int | None = None) -> None:
        """Send a frame to every adjacent mesh server (but ``exclude``)."""
        for peer_id, conn in self.links.items():
            if peer_id != exclude and conn.peer.ext and conn.peer.role is Role.SERVER:
                conn.send(msg)

    def ext_servers(self) -> list[int]:
        """Adjacent servers on extension links."""
        return [pid for pid, c in self.links.items() if c.peer.ext and c.peer.role is Role.SERVER]

    def _announce_departure(self, gone: list[Host], text: str, exclude: int | None) -> None:
        """Tell every adjacent link (but ``exclude``) that ``gone`` left.

        Mesh servers get a server departure (0x02) for servers and a client
        quit for clients; plain v1 servers a client quit for every host (the
        only departure they parse); clients hear only of clients, and not of
        job-only ones (``Host.quiet``).
        """
        for listener in self.departure_listeners:
            listener(gone)
        for peer_id, conn in self.links.items():
            if peer_id == exclude:
                continue
            link: Link = conn.peer
            for host in gone:
                if host.kind is Kind.CLIENT:
                    if not host.quiet or link.role is Role.SERVER:
                        conn.send(ClientQuit(host.id, text))
                elif link.role is Role.SERVER:
                    if link.ext:
                        conn.send(ServerQuit(host.id, 0, text))
                    else:
                        conn.send(ClientQuit(host.id, text))

    # -- chat, status, quits ----------------------------------------------------------

    def _check_source(self, conn: Connection, source: int, what: str) -> bool:
        """A message's source must be reached through the link it came on."""
        link: Link = conn.peer
        if link.role not in (Role.SERVER, Role.CLIENT):
            raise ProtocolError(f"{what} before registration")
        if self.routes.first_link(source) != link.peer_id:
            log.warning("%s: dropping %s from %d: source not behind %r", self.name, what,
                        source, conn)
            return False
        return True

    def _on_chat(self, conn: Connection, msg: ClientChat) -> None:
        frame = encode(msg)
        self.stats.chats_relayed += 1
        self.stats.chat_bytes_relayed += len(frame)
        self._relay_chat(conn, msg.source, msg.dest, frame)

    def _relay_chats(self, conn: Connection, chats: list[ChatFrame]) -> None:
        """Chats taken off a registered link's stream undecoded (``Decoder.feed_relay``).

        The relay's hot path. The common case — the source is behind this
        link and the destination is known — is decided here in a few lookups
        and the frame goes out as it came in; anything else takes the general
        path of ``_relay_chat`` (same checks, with its warnings and statuses).
        """
        link: Link = conn.peer
        hosts, links = self.routes.hosts, self.links
        stats = self.stats
        stats.chats_relayed += len(chats)
        stats.chat_bytes_relayed += sum(len(frame) for _, _, frame in chats)
        for source, dest, frame in chats:
            if conn.closed or link.role is Role.DONE:
                return
            origin, target = hosts.get(source), hosts.get(dest)
            if origin is not None and origin.first_link == link.peer_id and target is not None:
                out = links.get(target.first_link)
                if out is not None:
                    out.send_bytes(frame)
                    continue
            try:
                self._relay_chat(conn, source, dest, frame)
            except ProtocolError as exc:
                self.drop(conn, f"protocol error: {exc}")
                return

    def _relay_chat(self, conn: Connection, source: int, dest: int, frame: bytes) -> None:
        """Pass a chat (``frame``: its wire bytes) on towards ``dest``."""
        if not self._check_source(conn, source, "chat"):
            return
        target = self._link_towards(dest)
        if target is not None:
            target.send_bytes(frame)
        else:
            self._send_to(source, Status(self.id, source, StatusCode.UNKNOWN_ID,
                                         unknown_id_text(dest)))

    def _on_status(self, conn: Connection, msg: Status) -> None:
        link: Link = conn.peer
        if link.role is Role.PENDING and msg.code == StatusCode.STATE_QUERY:
            state.answer(self, conn)
            return
        if msg.code in LINK_STEPS and self._is_link_step(link, msg):
            LINK_STEPS[msg.code](self, conn, msg)
            return
        if link.role is Role.JOINING and msg.dest == self.id:
            # The server we tried to join refused us (duplicate id, or
            # authentication).
            self._log_status(msg.text)
            self.joiner.refused(conn, msg)
            link.role = Role.DONE
            return
        if link.role not in (Role.SERVER, Role.CLIENT):
            raise ProtocolError("status before registration")
        # A v1 status (our own codes too, when they are not a step of this
        # link): kept if it is for us, else passed on like a chat, which
        # includes that its source must be behind the link it came on.
        if not self._check_source(conn, msg.source, "status"):
            return
        if msg.dest == self.id or msg.dest == 0:
            self._log_status(msg.text)
        elif not self._send_to(msg.dest, msg):
            log.debug("%s: status for unknown id %d dropped", self.name, msg.dest)

    def _is_link_step(self, link: Link, msg: Status) -> bool:
        """Whether a status with one of our codes is a step of this link's
        own set-up (hello, authentication) between its two ends, addressed as
        that step is. Anything else carrying those codes (a status from
        further away, or to someone else) is an ordinary v1 status: it must
        never make us drop the link it came on."""
        if link.role is Role.JOINING:
            from_peer = True             # only the server we join speaks on it
        elif link.role is Role.AUTH and link.auth is not None and link.auth.pending is not None:
            from_peer = msg.source == link.auth.pending.source
        else:
            from_peer = msg.source == link.peer_id != 0
        if msg.code == StatusCode.MESH_HELLO:
            # Addressed to its own sender: the peer's, or ours coming back.
            return msg.source == msg.dest and (from_peer or msg.source == self.id)
        return msg.dest == self.id and from_peer

    def _log_status(self, text: str) -> None:
        """Keep ``text`` in ``status_log``, forgetting the oldest entries past
        its bounds: a peer sending status after status must not make us grow."""
        self.status_log.append(text)
        self._status_chars += len(text)
        while len(self.status_log) > 1 and (len(self.status_log) > STATUS_LOG_ENTRIES
                                            or self._status_chars > STATUS_LOG_CHARS):
            self._status_chars -= len(self.status_log.pop(0))

    def _on_client_quit(self, conn: Connection, msg: ClientQuit) -> None:
        if not self._check_source(conn, msg.source, "quit"):
            self._still_here(conn, msg.source)
            return
        link: Link = conn.peer
        if link.role is Role.CLIENT and link.peer_id == msg.source:
            # Our own client leaves: the connection no longer stands for it.
            link.role = Role.DONE
            self.links.pop(msg.source, None)
            log.info("%s: client %d quit: %s", self.name, msg.source, msg.text)
        elif link.peer_id == msg.source:
            # An adjacent server says it is leaving (in the only departure a
            # plain v1 server could send): the link goes, and with it the hosts
            # behind it, through the one path every lost link takes.
            self.drop(conn, f"it announced its own departure: {msg.text!r}")
            return
        self._depart(msg.source, msg.text, exclude=link.peer_id)

    def _on_server_quit(self, conn: Connection, msg: ServerQuit) -> None:
        link: Link = conn.peer
        if not link.ext:
            raise ProtocolError("server departure on a link without extensions")
        if not self._check_source(conn, msg.source, "server departure"):
            self._still_here(conn, msg.source)
            return
        self._depart(msg.source, msg.text, exclude=link.peer_id)

    def _still_here(self, conn: Connection, host_id: int) -> None:
        """A server told us that ``host_id`` left, but we reach it through
        another link: the departure of an old path to it (a client that came
        back elsewhere under its id, a server that rejoined, while the old
        entry was still on its way out). Everything on that side has dropped
        it by now, so we announce it there again; if they still know it, they
        refuse the announcement and nothing changes."""
        host = self.routes.get(host_id)
        if host is None or conn.peer.role is not Role.SERVER:
            return
        log.info("%s: %r says %s %d left, but it is reached through %d: announcing it there "
                 "again", self.name, conn, host.kind.value, host_id, host.first_link)
        conn.send(self._registration(host))

    def _depart(self, host_id: int, text: str, exclude: int) -> None:
        host = self.routes.get(host_id)
        if host is None:
            return
        if host.adjacent and host_id != exclude:
            # An adjacent machine is said to be gone by someone else: trust
            # only the link itself; ignore.
            return
        gone = self.routes.remove(host_id)
        self._announce_departure(gone, text, exclude=exclude)

    # -- extension frames ---------------------------------------------------------

    def max_chat(self) -> int:
        return self.negotiation.max_chat()

    def _on_extension(self, conn: Connection, msg: Extension) -> None:
        link: Link = conn.peer
        self.stats.extensions[msg.kind] += 1
        if not link.ext:
            raise ProtocolError("extension frame on a link without extensions")
        if msg.kind == LinkKind.PING and msg.dest == 0:
            conn.send(Extension(LinkKind.PONG, self.id, 0, 0, b""))
            return
        if msg.kind == LinkKind.PONG and msg.dest == 0:
            return                       # its arrival has refreshed the link already
        if link.role is not Role.SERVER:
            # A client speaks only for itself; one that may not run jobs
            # reaches no further than this server (docs/security.md).
            if msg.source != link.peer_id:
                raise ProtocolError(f"extension frame from client {link.peer_id} with source "
                                    f"{msg.source}")
            if msg.dest != 0 and msg.kind in self.job_kinds \
                    and self.gate.job_refusal(conn) is not None:
                log.debug("%s: dropping extension frame (kind %d) for %d from %r: not allowed "
                          "to run jobs", self.name, msg.kind, msg.dest, conn)
                return
        if msg.dest not in (0, self.id):
            tap = self.extension_taps.get(msg.kind)
            if tap is not None and tap(conn, msg):
                return
            if not self.send_extension(msg):
                log.debug("%s: extension frame for unreachable id %d dropped", self.name, msg.dest)
            return
        handler = self.extension_handlers.get(msg.kind)
        if handler is None:
            log.debug("%s: no handler for extension kind %d", self.name, msg.kind)
            return
        handler(conn, msg)

    # -- reliable chats held for hellos (``crc.server.reliable``) ---------------------

    def _flush_held(self, conn: Connection) -> None:
        self.reliable.flush(conn)

    @property
    def _held_total(self) -> int:
        return self.reliable.held_total

    # -- state query (``crc.server.state``) ----------------------------------------------

    def snapshot(self) -> dict:
        """The server's view of the network, as plain data (the state query answer)."""
        return state.snapshot(self)


#: Our status codes that are steps of a link's own set-up, and their handlers
#: (``MeshServer._is_link_step`` decides whether a status is one).
LINK_STEPS: dict[int, Callable[[MeshServer, Connection, Status], None]] = {
    StatusCode.MESH_HELLO: lambda server, conn, msg: server.negotiation.on_hello(conn, msg),
    StatusCode.MESH_HELLO_REPLY:
        lambda server, conn, msg: server.negotiation.on_hello_reply(conn, msg),
    StatusCode.AUTH_CHALLENGE: lambda server, conn, msg: server.gate.on_auth(conn, msg),
    StatusCode.AUTH_PROOF: lambda server, conn, msg: server.gate.on_auth(conn, msg),
    StatusCode.AUTH_OK: lambda server, conn, msg: server.gate.on_auth(conn, msg),
}
