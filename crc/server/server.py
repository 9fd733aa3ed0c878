"""The relay server: CRC v1 behaviour, link-loss cleanup, extension links.

A ``MeshServer`` owns a listening socket, at most one uplink (the server it
joined through ``connect``), a ``RoutingTable`` and one ``Link`` per adjacent
connection. It runs inside an ``EventLoop`` and never blocks or starts a
thread; it touches no process-global state (signals and logging setup belong
to the CLI), so many servers can share a process, each in its own loop.

Who may hear what: a plain CRC v1 peer only ever receives v1 message types.
Extension types (0x02 server departure, 0x40 frames) go only over links whose
peer completed the hello exchange (``crc.protocol.handshake``).

Every departure — a client quit, a server departure, a lost link — goes
through ``_depart``: remove the hosts, then tell every other link in the form
it understands.
"""

from __future__ import annotations

import enum
import json
import logging
import random
import socket
from dataclasses import dataclass, field
from typing import Callable

from ..net import Connection, EventLoop
from ..net.loop import EVENT_READ
from ..protocol import (
    DEFAULT_LIMITS, FLAG_BULK, ChatFrame, ClientChat, ClientQuit, ClientRegistration, Extension, Limits,
    Message, MsgType, ProtocolError, ServerQuit, ServerRegistration, Status, StatusCode, encode,
    LinkKind, encode_parts,
    duplicate_id_text, random_id, unknown_id_text, welcome_text,
)
from ..protocol.handshake import FEATURES, Hello, parse_hello
from ..routing import Host, Kind, RoutingError, RoutingTable

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    port: int
    id: int = 0                        # 0: pick a random id
    name: str = ""
    info: str = ""
    host: str = "127.0.0.1"
    connect: tuple[str, int] | None = None
    limits: Limits = DEFAULT_LIMITS
    #: A peer whose unsent backlog passes this is dropped (half of it: we stop
    #: reading from it until it has caught up).
    max_send_buffer: int = 64 * 1024 * 1024
    max_connections: int = 2048
    #: A new connection must register (or ask for the state) within this.
    registration_timeout: float = 10.0
    #: A quiet mesh link is pinged after ``keepalive`` seconds and dropped
    #: after ``dead_after`` seconds without a byte from it.
    keepalive: float = 5.0
    dead_after: float = 15.0
    #: More servers to join through, tried in turn after ``connect``.
    candidates: tuple[tuple[str, int], ...] = ()
    #: On losing (or failing to make) the uplink, try the next candidate,
    #: waiting ``rejoin_delay`` seconds, doubling up to ``rejoin_max_delay``.
    rejoin: bool = False
    rejoin_delay: float = 0.2
    rejoin_max_delay: float = 10.0

    def __post_init__(self) -> None:
        if not self.id:
            self.id = random_id()
        if not self.name:
            self.name = f"server-{self.id}"


class Role(enum.Enum):
    PENDING = "pending"          # accepted, nothing received yet
    JOINING = "joining"          # our uplink: registration sent, no answer yet
    SERVER = "server"
    CLIENT = "client"
    CONTROL = "control"          # a state query connection
    DONE = "done"                # refused, quit or closing: ignore what follows


@dataclass
class Link:
    """Per-connection state of one adjacent peer."""

    role: Role
    outbound: bool = False
    peer_id: int = 0
    ext: bool = False              # hello exchange completed: extensions allowed
    pings: int = 0                 # keepalive pings sent on this link
    features: frozenset[str] = field(default_factory=frozenset)

    def __repr__(self) -> str:
        return f"<Link {self.role.value} id={self.peer_id} {'ext' if self.ext else 'v1'}>"


def _tcp_keepalive(sock: socket.socket, idle: float, dead_after: float) -> None:
    """Let the kernel probe a quiet connection too (the only check a plain v1
    peer, which cannot answer pings, gets): dead after about ``dead_after``."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle_s = max(1, int(idle))
        interval = max(1, int((dead_after - idle) / 3) or 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except (OSError, AttributeError):
        pass                     # not TCP, or a platform without these options


class MeshServer:
    def __init__(self, config: ServerConfig, loop: EventLoop | None = None) -> None:
        self.config = config
        self.id = config.id
        self.name = config.name
        self.info = config.info
        self.loop = loop or EventLoop()
        self.routes = RoutingTable(self.id)
        self.links: dict[int, Connection] = {}     # adjacent id -> connection
        self.connections: set[Connection] = set()  # every open connection
        self.status_log: list[str] = []
        self.listener: socket.socket | None = None
        self.uplink: Connection | None = None
        self.port = config.port
        self._closing = False
        self._candidate = 0              # index of the candidate last tried
        self._rejoin_delay = config.rejoin_delay
        self.rejoin_attempts = 0
        self._refused = 0                # connections refused at the limit
        self._refused_logged = 0.0
        #: Handlers for extension frames addressed to us (or to the adjacent
        #: peer, destination 0), by kind; filled by subsystems (jobs, ...).
        self.extension_handlers: dict[int, Callable[[Connection, Extension], None]] = {}
        #: Looks at frames passing through to someone else; True = consumed.
        self.extension_taps: dict[int, Callable[[Connection, Extension], bool]] = {}
        #: Called with the hosts that left the network (quit, departure, link loss).
        self.departure_listeners: list[Callable[[list[Host]], None]] = []
        #: Called with a connection whose peer just completed the hello exchange.
        self.extension_link_listeners: list[Callable[[Connection], None]] = []
        #: Called once when the server closes (subsystems release what they hold).
        self.close_listeners: list[Callable[[], None]] = []
        self._handlers = {
            MsgType.SERVER_REGISTRATION: self._on_server_registration,
            MsgType.CLIENT_REGISTRATION: self._on_client_registration,
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
        self.listen()
        if self.config.connect:
            self.connect_uplink(*self.config.connect)
        self.loop.call_later(self._keepalive_period(), self._keepalive_tick)

    # -- joining again ------------------------------------------------------------

    def _uplink_lost(self) -> None:
        """Our uplink closed (or never opened): rejoin through the next candidate
        after a backoff. Our own subtree stays with us and rejoins with us; a
        candidate inside it refuses us as a duplicate (it knows our id), and we
        refuse it if its id is one we already know, so the tree never loops."""
        candidates = [c for c in (self.config.connect, *self.config.candidates) if c]
        if not self.config.rejoin or not candidates or self._closing:
            return
        self._candidate = (self._candidate + 1) % len(candidates)
        delay = self._rejoin_delay * random.uniform(0.8, 1.2)
        self._rejoin_delay = min(self._rejoin_delay * 2, self.config.rejoin_max_delay)
        host, port = candidates[self._candidate]
        log.info("%s: rejoining through %s:%d in %.2f s", self.name, host, port, delay)
        self.loop.call_later(delay, self._rejoin, host, port)

    def _rejoin(self, host: str, port: int) -> None:
        if self._closing or self.uplink is not None:
            return
        self.rejoin_attempts += 1
        try:
            self.connect_uplink(host, port)
        except OSError as exc:
            log.warning("%s: cannot connect to %s:%d: %s", self.name, host, port, exc)
            self._uplink_lost()

    def listen(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.config.host else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, self.config.port))
        sock.listen(128)
        sock.setblocking(False)
        self.listener = sock
        self.port = sock.getsockname()[1]
        self.loop.register(sock, EVENT_READ, _Acceptor(self))
        log.info("%s (id %d) listening on %s:%d", self.name, self.id, self.config.host, self.port)

    def connect_uplink(self, host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((host, port))
        conn = self._new_connection(sock, Link(Role.JOINING, outbound=True), f"uplink {host}:{port}",
                                    connecting=err != 0)
        self.uplink = conn
        # Our first bytes on the link are exactly our v1 registration.
        conn.send(ServerRegistration(self.id, 0, self.name, self.info))
        log.info("%s joining the mesh through %s:%d", self.name, host, port)

    def run(self) -> None:
        """Run the event loop until ``stop``; then close every socket."""
        try:
            self.loop.run()
        finally:
            self.close()

    def stop(self) -> None:
        self.loop.stop()

    def close(self) -> None:
        self._closing = True
        for listener in self.close_listeners:
            listener()
        self.close_listeners.clear()
        for conn in list(self.connections):
            conn.close("server shutting down")
        if self.listener is not None:
            self.loop.unregister(self.listener)
            self.listener.close()
            self.listener = None
        self.loop.close()

    # -- connections --------------------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        """Accept every pending connection on ``listener``."""
        while True:
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("%s: accept failed: %s", self.name, exc)
                return
            if len(self.connections) >= self.config.max_connections:
                self._refused += 1
                if self._refused == 1 or self.loop.time() - self._refused_logged >= 1.0:
                    log.warning("%s: connection limit (%d, --max-connections) reached; refused "
                                "%s:%d (%d refused so far)", self.name, self.config.max_connections,
                                addr[0], addr[1], self._refused)
                    self._refused_logged = self.loop.time()
                sock.close()
                continue
            conn = self._new_connection(sock, Link(Role.PENDING), f"{addr[0]}:{addr[1]}")
            self.loop.call_later(self.config.registration_timeout, self._registration_deadline,
                                 conn)

    def _new_connection(self, sock: socket.socket, link: Link, label: str,
                        connecting: bool = False) -> Connection:
        conn = Connection(self.loop, sock, self, limits=self.config.limits, label=label,
                          max_send_buffer=self.config.max_send_buffer, connecting=connecting)
        conn.peer = link
        self.connections.add(conn)
        _tcp_keepalive(sock, self.config.keepalive, self.config.dead_after)
        return conn

    def _registration_deadline(self, conn: Connection) -> None:
        if not conn.closed and conn.peer.role is Role.PENDING:
            self.drop(conn, f"no registration within {self.config.registration_timeout:g} s "
                            "(--registration-timeout)")

    # -- keepalives -----------------------------------------------------------------

    def _keepalive_period(self) -> float:
        return max(0.05, min(self.config.keepalive, self.config.dead_after / 3))

    def _keepalive_tick(self) -> None:
        """Ping quiet extension links; drop those silent for ``dead_after``.

        TCP can stay silent for minutes about a peer that is gone (a pulled
        cable, a frozen host); a mesh link is not trusted longer than
        ``dead_after`` without a byte from the other end. Plain v1 peers
        cannot answer pings: their sockets get TCP keepalives instead."""
        now = self.loop.time()
        for conn in list(self.connections):
            link: Link = conn.peer
            if conn.closed or not link.ext or link.role not in (Role.SERVER, Role.CLIENT):
                continue
            quiet = now - conn.last_received
            if quiet >= self.config.dead_after:
                self.drop(conn, f"nothing received for {quiet:.1f} s (keepalive timeout, "
                                "--dead-after)")
            elif quiet >= self.config.keepalive:
                link.pings += 1
                conn.send(Extension(LinkKind.PING, self.id, 0, 0, b""))
        self.loop.call_later(self._keepalive_period(), self._keepalive_tick)

    def on_data(self, conn: Connection, data: bytes) -> None:
        role = conn.peer.role
        if role is Role.SERVER or role is Role.CLIENT:
            # A registered link: chats are passed on as the bytes they came in.
            conn.decode(data, self._relay_chats)
        else:
            conn.decode(data)

    def on_messages(self, conn: Connection, messages: list[Message]) -> None:
        link: Link = conn.peer
        for msg in messages:
            if conn.closed or link.role is Role.DONE:
                return
            try:
                self._handlers[msg.type](conn, msg)
            except ProtocolError as exc:
                self.drop(conn, f"protocol error: {exc}")
                return

    def on_closed(self, conn: Connection, reason: str) -> None:
        link: Link = conn.peer
        self.connections.discard(conn)
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
            log.log(logging.WARNING if self.config.rejoin else logging.ERROR,
                    "%s: could not join the mesh: %s", self.name, reason)
        else:
            log.debug("%s: %r closed: %s", self.name, conn, reason)
        if was_uplink:
            self._uplink_lost()

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
        """Route an extension frame towards ``msg.dest`` over extension links."""
        first = self.routes.first_link(msg.dest)
        conn = self.links.get(first) if first is not None else None
        if conn is None or not conn.peer.ext:
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
        only departure they parse); clients hear only of clients.
        """
        for listener in self.departure_listeners:
            listener(gone)
        for peer_id, conn in self.links.items():
            if peer_id == exclude:
                continue
            link: Link = conn.peer
            for host in gone:
                if host.kind is Kind.CLIENT:
                    conn.send(ClientQuit(host.id, text))
                elif link.role is Role.SERVER:
                    if link.ext:
                        conn.send(ServerQuit(host.id, 0, text))
                    else:
                        conn.send(ClientQuit(host.id, text))

    # -- registrations ------------------------------------------------------------

    def _on_server_registration(self, conn: Connection, msg: ServerRegistration) -> None:
        link: Link = conn.peer
        if link.role is Role.PENDING:
            if msg.last_hop != 0:
                raise ProtocolError(f"first registration has last hop {msg.last_hop}, expected 0")
            self._admit(conn, msg, Kind.SERVER)
        elif link.role is Role.JOINING:
            if msg.source != msg.last_hop:
                raise ProtocolError("uplink did not start with its own registration")
            self._accepted_by(conn, msg)
        elif link.role is Role.SERVER:
            self._learn(conn, msg.source, Kind.SERVER, msg.name, msg.info)
        else:
            raise ProtocolError(f"server registration from a {link.role.value} link")

    def _on_client_registration(self, conn: Connection, msg: ClientRegistration) -> None:
        link: Link = conn.peer
        if link.role is Role.PENDING:
            if msg.last_hop != 0:
                raise ProtocolError(f"first registration has last hop {msg.last_hop}, expected 0")
            self._admit(conn, msg, Kind.CLIENT)
        elif link.role is Role.SERVER:
            self._learn(conn, msg.source, Kind.CLIENT, msg.name, msg.info)
        else:
            raise ProtocolError(f"client registration from a {link.role.value} link")

    def _admit(self, conn: Connection, msg: ServerRegistration | ClientRegistration,
               kind: Kind) -> None:
        """A newcomer registered on an accepted connection."""
        link: Link = conn.peer
        if msg.source == 0 or self.routes.known(msg.source):
            log.warning("%s: refusing %s %r: id %d already registered", self.name,
                        kind.value, msg.name, msg.source)
            conn.send(Status(self.id, msg.source, StatusCode.DUPLICATE_ID,
                             duplicate_id_text(msg.source)))
            link.role = Role.DONE
            conn.close_after_flush("duplicate id")
            return
        host = self.routes.add(msg.source, kind, msg.name, msg.info, first_link=msg.source)
        link.role = Role.SERVER if kind is Kind.SERVER else Role.CLIENT
        link.peer_id = msg.source
        self.links[msg.source] = conn
        conn.label = f"{kind.value} {msg.name}({msg.source})"
        log.info("%s: %s %s (id %d) joined", self.name, kind.value, msg.name, msg.source)
        if kind is Kind.SERVER:
            conn.send(ServerRegistration(self.id, self.id, self.name, self.info))
            for other in list(self.routes.hosts.values()):
                if other.id != host.id:
                    conn.send(self._registration(other))
        else:
            conn.send(Status(self.id, host.id, StatusCode.WELCOME, welcome_text(host.name)))
            for other in self.routes.of_kind(Kind.CLIENT):
                if other.id != host.id:
                    conn.send(self._registration(other))
        self._flood(self._registration(host), exclude=host.id, servers=True,
                    clients=kind is Kind.CLIENT)

    def _accepted_by(self, conn: Connection, msg: ServerRegistration) -> None:
        """Our uplink answered with its own registration: we are in."""
        link: Link = conn.peer
        try:
            self.routes.add(msg.source, Kind.SERVER, msg.name, msg.info, first_link=msg.source)
        except RoutingError as exc:
            raise ProtocolError(f"uplink registration refused: {exc}") from None
        link.role = Role.SERVER
        link.peer_id = msg.source
        self.links[msg.source] = conn
        conn.label = f"server {msg.name}({msg.source})"
        log.info("%s: joined the mesh through %s (id %d)", self.name, msg.name, msg.source)
        self._rejoin_delay = self.config.rejoin_delay
        # Tell the uplink what we already know (nothing, on a fresh start),
        # and tell what we already have (servers that joined us meanwhile)
        # about the uplink; what lies beyond it follows as it arrives.
        uplink = self.routes.get(msg.source)
        for other in list(self.routes.hosts.values()):
            if other.id != msg.source:
                conn.send(self._registration(other))
        self._flood(self._registration(uplink), exclude=msg.source, servers=True)
        self._offer_extensions(conn)

    def _learn(self, conn: Connection, host_id: int, kind: Kind, name: str, info: str) -> None:
        """A registration flooded from an adjacent server."""
        link: Link = conn.peer
        if self.routes.known(host_id):
            log.warning("%s: ignoring registration of already known id %d (%s) from %r",
                        self.name, host_id, name, conn)
            return
        host = self.routes.add(host_id, kind, name, info, first_link=link.peer_id)
        self._flood(self._registration(host), exclude=link.peer_id, servers=True,
                    clients=kind is Kind.CLIENT)

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
        self._relay_chat(conn, msg.source, msg.dest, encode(msg))

    def _relay_chats(self, conn: Connection, chats: list[ChatFrame]) -> None:
        """Chats taken off a registered link's stream undecoded (``Decoder.feed_relay``).

        The relay's hot path. The common case — the source is behind this
        link and the destination is known — is decided here in a few lookups
        and the frame goes out as it came in; anything else takes the general
        path of ``_relay_chat`` (same checks, with its warnings and statuses).
        """
        link: Link = conn.peer
        hosts, links = self.routes.hosts, self.links
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
            self._answer_state_query(conn)
            return
        if msg.code == StatusCode.MESH_HELLO:
            self._on_hello(conn, msg)
            return
        if msg.code == StatusCode.MESH_HELLO_REPLY and msg.dest == self.id:
            self._on_hello_reply(conn, msg)
            return
        if link.role is Role.JOINING and msg.dest == self.id:
            # The server we tried to join refused us (duplicate id).
            self.status_log.append(msg.text)
            log.error("%s: join refused: %s", self.name, msg.text)
            link.role = Role.DONE
            return
        if link.role not in (Role.SERVER, Role.CLIENT):
            raise ProtocolError("status before registration")
        if msg.dest == self.id or msg.dest == 0:
            self.status_log.append(msg.text)
        elif not self._send_to(msg.dest, msg):
            log.debug("%s: status for unknown id %d dropped", self.name, msg.dest)

    def _on_client_quit(self, conn: Connection, msg: ClientQuit) -> None:
        if not self._check_source(conn, msg.source, "quit"):
            return
        link: Link = conn.peer
        if link.role is Role.CLIENT and link.peer_id == msg.source:
            # Our own client leaves: the connection no longer stands for it.
            link.role = Role.DONE
            self.links.pop(msg.source, None)
            log.info("%s: client %d quit: %s", self.name, msg.source, msg.text)
        self._depart(msg.source, msg.text, exclude=link.peer_id)

    def _on_server_quit(self, conn: Connection, msg: ServerQuit) -> None:
        link: Link = conn.peer
        if not link.ext:
            raise ProtocolError("server departure on a link without extensions")
        if not self._check_source(conn, msg.source, "server departure"):
            return
        self._depart(msg.source, msg.text, exclude=link.peer_id)

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

    # -- extension handshake -------------------------------------------------------

    def _offer_extensions(self, conn: Connection) -> None:
        """Send our hello addressed to ourselves (echoed back by v1 peers)."""
        conn.send(Status(self.id, self.id, StatusCode.MESH_HELLO, Hello(role="server").text()))

    def _on_hello(self, conn: Connection, msg: Status) -> None:
        link: Link = conn.peer
        if msg.source == self.id and msg.dest == self.id:
            log.info("%s: %r is a plain CRC v1 peer; no extensions on this link", self.name, conn)
            return
        if link.role not in (Role.SERVER, Role.CLIENT) or msg.source != link.peer_id \
                or msg.dest != link.peer_id:
            raise ProtocolError("mesh hello from someone other than the adjacent peer")
        hello = parse_hello(msg.text)
        link.features = hello.features & FEATURES
        conn.send(Status(self.id, link.peer_id, StatusCode.MESH_HELLO_REPLY,
                         Hello(role="server", features=link.features).text()))
        self._extensions_up(conn)

    def _extensions_up(self, conn: Connection) -> None:
        link: Link = conn.peer
        link.ext = True
        log.info("%s: extensions on %r: %s", self.name, conn, ",".join(sorted(link.features)))
        for listener in self.extension_link_listeners:
            listener(conn)

    def _on_hello_reply(self, conn: Connection, msg: Status) -> None:
        link: Link = conn.peer
        if link.role is not Role.SERVER or msg.source != link.peer_id:
            raise ProtocolError("mesh hello reply from someone other than the adjacent peer")
        hello = parse_hello(msg.text)
        link.features = hello.features & FEATURES
        self._extensions_up(conn)

    def _on_extension(self, conn: Connection, msg: Extension) -> None:
        link: Link = conn.peer
        if not link.ext:
            raise ProtocolError("extension frame on a link without extensions")
        if msg.kind == LinkKind.PING and msg.dest == 0:
            conn.send(Extension(LinkKind.PONG, self.id, 0, 0, b""))
            return
        if msg.kind == LinkKind.PONG and msg.dest == 0:
            return                       # its arrival has refreshed the link already
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

    # -- state query -------------------------------------------------------------------

    def snapshot(self) -> dict:
        """The server's view of the network, as plain data (the state query answer)."""
        return {
            "id": self.id,
            "name": self.name,
            "port": self.port,
            "hosts_db": sorted(self.routes.hosts),
            "hosts": {str(h.id): {"kind": h.kind.value, "name": h.name, "info": h.info,
                                  "first_link": h.first_link}
                      for h in self.routes.hosts.values()},
            "adjacent_server_ids": sorted(self.routes.adjacent(Kind.SERVER)),
            "adjacent_user_ids": sorted(self.routes.adjacent(Kind.CLIENT)),
            "status_updates_log": list(self.status_log),
            "extension_links": sorted(pid for pid, c in self.links.items() if c.peer.ext),
            # Traffic on the links to adjacent servers and clients open now.
            "bytes_in": sum(c.bytes_in for c in self.links.values()),
            "bytes_out": sum(c.bytes_out for c in self.links.values()),
        }

    def _answer_state_query(self, conn: Connection) -> None:
        link: Link = conn.peer
        link.role = Role.CONTROL
        conn.send(Status(self.id, 0, StatusCode.STATE_REPLY, json.dumps(self.snapshot())))
        conn.close_after_flush("state query answered")


class _Acceptor:
    """Selector handler of the listening socket."""

    def __init__(self, server: MeshServer) -> None:
        self.server = server

    def handle_event(self, mask: int) -> None:
        self.server.accept(self.server.listener)

    def __repr__(self) -> str:
        return f"<Acceptor {self.server.name}:{self.server.port}>"
