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

With a mesh secret (``ServerConfig.secret``) a joining server is admitted
only after it has answered our challenge (``_challenge``), and a client counts
as authenticated once it has proved the secret after its hello; jobs run only
for authenticated clients. Without a secret, jobs run only for peers on this
machine (loopback) unless ``insecure_remote_jobs``. See ``job_refusal``,
``run_refusal`` and docs/security.md.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import json
import logging
import math
import random
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..delivery.wire import ChatKind, pack_ack, pack_nack, unpack_chat
from ..net import Connection, EventLoop
from ..net.connection import tcp_keepalive
from ..net.loop import EVENT_READ
from ..protocol import (
    DEFAULT_LIMITS, FLAG_BULK, ChatFrame, ClientChat, ClientQuit, ClientRegistration, Extension, Limits,
    EncodeError, Message, MsgType, ProtocolError, ServerQuit, ServerRegistration, Status,
    StatusCode, encode,
    LinkKind, encode_parts,
    MAX_INFO, MAX_NAME, duplicate_id_text, field_problem, random_id, unknown_id_text,
    welcome_text,
)
from ..protocol import auth
from ..protocol.handshake import FEATURES, Hello, parse_hello
from ..routing import Host, Kind, RoutingError, RoutingTable

if TYPE_CHECKING:
    from ..net.loop import Timer
    from ..net.tls import ServerTLS

log = logging.getLogger(__name__)

#: A newly registered peer that has not exchanged hellos within this many
#: seconds is taken for plain CRC v1 (reliable chats to it go out as v1).
HELLO_SETTLE = 3.0
#: At most this many bytes of reliable chats wait per link for its hello,
#: and in all (plain v1 clients never answer it: a crowd of them must not
#: make the server hold much); more are dropped, and their senders resend.
HELD_MAX = 256 * 1024
HELD_TOTAL = 8 << 20

#: Seconds a server stops accepting after ``accept`` failed (out of descriptors).
ACCEPT_PAUSE = 0.25

#: Bytes a reliable chat's frame carries besides its text (stream, seq, base).
CHAT_OVERHEAD = 24

#: What a newcomer registering with id 0 (never a valid id) is told, with the
#: duplicate-id code: v1 has no other refusal.
INVALID_ID_TEXT = "ID 0 is not a valid ID: choose one from 1 to 4294967295"

#: Status texts addressed to a server are kept for the state query: the newest
#: this many, and no more text than ``STATUS_LOG_CHARS`` besides the newest.
STATUS_LOG_ENTRIES = 256
STATUS_LOG_CHARS = 1 << 20


def is_loopback(address: Any) -> bool:
    """Whether a socket peer address is this machine's loopback (a Unix
    socket, as from ``socketpair``, counts as local too)."""
    if isinstance(address, (str, bytes)):
        return True                      # AF_UNIX
    if not isinstance(address, tuple) or not address:
        return False
    try:
        ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def is_loopback_host(host: str) -> bool:
    """Whether a listen address (``--host``) is loopback only."""
    return host == "localhost" or is_loopback((host, 0))


PLAIN_CLIENT_POLICIES = ("allow", "deny")


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
    #: The server we join must answer our registration within this, else the
    #: next candidate is tried (a frozen process accepts and never answers).
    join_timeout: float = 5.0
    #: Candidate host names resolved to addresses before the loop started
    #: (the CLI does it): the loop never waits on a name lookup.
    addresses: dict[str, str] = field(default_factory=dict)
    #: The mesh secret (``--secret-file``): servers must prove it to link,
    #: clients to run jobs. None: no authentication, jobs for loopback only.
    secret: bytes | None = field(default=None, repr=False)
    #: With a secret: whether clients that do not prove it may chat.
    plain_clients: str = "allow"
    #: Without a secret: run jobs for non-loopback clients and servers too.
    insecure_remote_jobs: bool = False
    #: Whether a peer address is this machine (replaceable in tests).
    is_local: Callable[[Any], bool] = field(default=is_loopback, repr=False)
    #: TLS on every link (``crc.net.tls.server_tls``): accepted connections and
    #: uplinks alike. None: plain TCP.
    tls: "ServerTLS | None" = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = random_id()
        if not self.name:
            self.name = f"server-{self.id}"
        for what, text, limit in (("name", self.name, MAX_NAME), ("info", self.info, MAX_INFO)):
            problem = field_problem(what, text, limit)
            if problem:
                raise ValueError(problem)
        auth.check_secret(self.secret)
        if self.plain_clients not in PLAIN_CLIENT_POLICIES:
            raise ValueError(f"plain_clients must be one of {', '.join(PLAIN_CLIENT_POLICIES)}, "
                             f"not {self.plain_clients!r}")


class Role(enum.Enum):
    PENDING = "pending"          # accepted, nothing received yet
    JOINING = "joining"          # our uplink: registration sent, no answer yet
    SERVER = "server"
    CLIENT = "client"
    CONTROL = "control"          # a state query connection
    #: Registered but not admitted until it proves the mesh secret: a joining
    #: server we challenged, or (``plain_clients="deny"``) a welcomed client.
    AUTH = "authenticating"
    DONE = "done"                # refused, quit or closing: ignore what follows


@dataclass
class Link:
    """Per-connection state of one adjacent peer."""

    role: Role
    outbound: bool = False
    peer_id: int = 0
    ext: bool = False              # hello exchange completed: extensions allowed
    #: Whether the peer speaks extensions is known for sure (ext, or plain v1
    #: by its own answer); see ``MeshServer._settled`` for the time limit.
    settled: bool = False
    #: Loop time after which a registered peer that sent no hello counts as
    #: plain CRC v1 (worked out when asked: no timer per link).
    settle_at: float = math.inf
    #: The ``--registration-timeout`` timer of an accepted connection,
    #: cancelled once the peer is admitted (so an idle crowd wakes nobody).
    deadline: "Timer | None" = None
    #: Reliable chats for this peer that came before we knew whether it
    #: speaks them (its hello pending): sent on, or converted, once we know.
    #: Keyed by (sender, stream, sequence number): a resend replaces nothing.
    held: dict[tuple[int, int, int], Extension] = field(default_factory=dict)
    held_bytes: int = 0
    pings: int = 0                 # keepalive pings sent on this link
    features: frozenset[str] = field(default_factory=frozenset)
    #: The largest extension payload the peer accepts, and the longest chat it
    #: says it can carry on (from its hello; the defaults of every version).
    max_frame: int = DEFAULT_LIMITS.max_payload
    max_chat: int = DEFAULT_LIMITS.max_payload - 24
    authenticated: bool = False    # the peer proved it knows the mesh secret
    auth: "AuthState | None" = None   # an authentication exchange under way
    local: bool | None = None      # peer address is loopback (worked out once)

    def __repr__(self) -> str:
        return f"<Link {self.role.value} id={self.peer_id} {'ext' if self.ext else 'v1'}>"


@dataclass
class AuthState:
    """One side's half of an authentication exchange on one link."""

    nonce: str = ""                # ours, fresh for this link
    peer_nonce: str = ""           # theirs
    peer_id: int = 0               # joiner: the id that challenged us
    #: The registration that waits for the proof (acceptor side).
    pending: ServerRegistration | ClientRegistration | None = None


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
        self.status_log: list[str] = []           # bounded: see ``_log_status``
        self._status_chars = 0
        self.listener: socket.socket | None = None
        self.uplink: Connection | None = None
        self.port = config.port
        self._closing = False
        self._candidate = 0              # index of the candidate last tried
        self._rejoin_delay = config.rejoin_delay
        self.rejoin_attempts = 0
        self._refused = 0                # connections refused at the limit
        self._refused_logged = 0.0
        self._held_total = 0             # bytes of reliable chats waiting for hellos (HELD_TOTAL)
        self._join_refusal = ""          # why the last join was refused: duplicate, self, auth
        self._duplicate_refusals = 0     # refused as a duplicate since we last joined
        self._join_failures = 0          # joins that failed since we last joined
        self._excluded: set[tuple[str, int]] = set()   # candidates that are ourselves
        self._tick_due = 0.0             # when the keepalive tick should run next
        self._accept_logged = -math.inf  # when an accept failure was last logged
        self._accept_paused = False
        #: Addresses of the last joiners refused for having our own id.
        self._refused_from: list[Any] = []
        #: Handlers for extension frames addressed to us (or to the adjacent
        #: peer, destination 0), by kind; filled by subsystems (jobs, ...).
        self.extension_handlers: dict[int, Callable[[Connection, Extension], None]] = {}
        #: Looks at frames passing through to someone else; True = consumed.
        self.extension_taps: dict[int, Callable[[Connection, Extension], bool]] = {
            ChatKind.CHAT: self._relay_reliable_chat}
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
        self._log_security()
        self.listen()
        if self.config.connect:
            try:
                self.connect_uplink(*self.config.connect)
            except OSError as exc:
                host, port = self.config.connect
                log.log(logging.WARNING if self.config.rejoin else logging.ERROR,
                        "%s: cannot connect to %s:%d: %s", self.name, host, port,
                        exc.strerror or exc)
                self._uplink_lost()
        self._tick_due = self.loop.time() + self._keepalive_period()
        self.loop.call_later(self._keepalive_period(), self._keepalive_tick)

    def _log_security(self) -> None:
        """Say once, at startup, what this server trusts (loudly when unsafe)."""
        cfg = self.config
        if cfg.secret is not None:
            log.info("%s: mesh secret set: servers must authenticate to link; clients must "
                     "authenticate to run jobs (plain clients: %s)", self.name, cfg.plain_clients)
            if cfg.insecure_remote_jobs:
                log.warning("%s: --insecure-remote-jobs has no effect with a mesh secret: "
                            "jobs run only for authenticated clients", self.name)
        elif cfg.insecure_remote_jobs:
            log.warning("%s: INSECURE: --insecure-remote-jobs without a mesh secret: anyone who "
                        "can reach this mesh can run commands as this user on its servers",
                        self.name)
        if cfg.secret is None and cfg.plain_clients != "allow":
            log.warning("%s: plain_clients=%s (--plain-clients) has no effect without a mesh "
                        "secret", self.name, cfg.plain_clients)
        if cfg.secret is None and not cfg.insecure_remote_jobs and not is_loopback_host(cfg.host):
            log.warning("%s: listening on %s without a mesh secret: jobs from clients and servers "
                        "that are not on this machine (loopback) are refused; give the mesh a "
                        "secret (--secret-file), or accept the risk with --insecure-remote-jobs",
                        self.name, cfg.host)

    # -- joining again ------------------------------------------------------------

    def _uplink_lost(self) -> None:
        """Our uplink closed (or never opened): rejoin through the next candidate
        after a backoff. Our own subtree stays with us and rejoins with us; a
        candidate inside it refuses us as a duplicate (it knows our id), and we
        refuse it if its id is one we already know, so the tree never loops."""
        candidates = [c for c in (self.config.connect, *self.config.candidates) if c]
        refusal, self._join_refusal = self._join_refusal, ""
        if not self.config.rejoin or not candidates or self._closing:
            return
        if refusal == "self":
            self._excluded.add(candidates[self._candidate % len(candidates)])
        usable = [c for c in candidates if c not in self._excluded]
        if not usable:
            log.error("%s: no candidate left to join through (every one is this server "
                      "itself); staying apart", self.name)
            return
        if refusal != "duplicate":
            # A candidate that refused us as a duplicate is alive and will take
            # us once our old path has left the mesh: it is tried again.
            # Anything else (unreachable, no answer, closed) moves on.
            self._candidate = (self._candidate + 1) % len(candidates)
        while candidates[self._candidate] in self._excluded:
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
        """Open the uplink to ``host:port`` (its address as resolved before the
        loop started, ``ServerConfig.addresses``, so nothing here waits on DNS)
        and register; ``OSError`` if the connection cannot even be started.
        An uplink that has not answered within ``join_timeout`` is given up."""
        address = self.config.addresses.get(host, host)
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            err = sock.connect_ex((address, port))
        except OSError:
            sock.close()
            raise
        conn = self._new_connection(sock, Link(Role.JOINING, outbound=True), f"uplink {host}:{port}",
                                    connecting=err != 0,
                                    tls=self.config.tls.connect.towards(host) if self.config.tls
                                    else None)
        self.uplink = conn
        conn.peer.deadline = self.loop.call_later(self.config.join_timeout, self._join_deadline,
                                                  conn)
        # Our first bytes on the link are exactly our v1 registration.
        conn.send(ServerRegistration(self.id, 0, self.name, self.info))
        log.info("%s joining the mesh through %s:%d", self.name, host, port)

    def _join_refused(self, conn: Connection, msg: Status) -> None:
        """Say why a join was refused, once per streak of the same refusal."""
        if msg.code == StatusCode.AUTH_REFUSED:
            self._join_refusal = "auth"
            log.error("%s: join refused by %s: %s (is our mesh secret the same as theirs?)",
                      self.name, conn.label, msg.text)
        elif msg.code == StatusCode.DUPLICATE_ID and self._joined_ourselves(conn):
            self._join_refusal = "self"
            log.error("%s: %s is this server itself (--connect names our own address); not "
                      "trying it again", self.name, conn.label)
        elif msg.code == StatusCode.DUPLICATE_ID:
            self._join_refusal = "duplicate"
            self._duplicate_refusals += 1
            if not self.config.rejoin:
                log.error("%s: join refused: %s", self.name, msg.text)
            elif self._duplicate_refusals == 1:
                # Expected while the mesh still holds our old path (a rejoin
                # after a silent cut); if another server really has our id,
                # this repeats every --rejoin backoff, up to 10 s apart.
                log.warning("%s: join refused by %s: %s; trying again (the mesh may still "
                            "hold our old path, or another server has our id)", self.name,
                            conn.label, msg.text)
            else:
                log.info("%s: join refused again by %s (%d times): %s", self.name, conn.label,
                         self._duplicate_refusals, msg.text)
        else:
            log.error("%s: join refused: %s", self.name, msg.text)

    def _joined_ourselves(self, uplink: Connection) -> bool:
        """Whether our uplink is a connection to our own listener (``--connect``
        naming this server): one of our accepted connections comes from it."""
        try:
            ours = uplink.sock.getsockname()
        except OSError:
            return False
        return ours in self._refused_from or any(
            c.peer_address == ours for c in self.connections if c is not uplink)

    def _join_deadline(self, conn: Connection) -> None:
        """The server we are joining (a frozen process, a wedged host) has not
        answered: try the next candidate instead of waiting for ever."""
        if not conn.closed and conn is self.uplink and conn.peer.role is Role.JOINING:
            conn.close(f"no answer within {self.config.join_timeout:g} s (--join-timeout)")

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
                self._accept_failed(exc)
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
            conn = self._new_connection(sock, Link(Role.PENDING), f"{addr[0]}:{addr[1]}",
                                        tls=self.config.tls.accept if self.config.tls else None)
            conn.peer.deadline = self.loop.call_later(self.config.registration_timeout,
                                                      self._registration_deadline, conn)

    def _accept_failed(self, exc: OSError) -> None:
        """``accept`` failed: out of descriptors (EMFILE, ENFILE) leaves the
        pending connection ready, and the listener would wake us in a tight
        loop. Stop listening for a moment (the connections in hand go on),
        and say so at most once a second."""
        now = self.loop.time()
        if now - self._accept_logged >= 1.0:
            log.warning("%s: accept failed: %s; not accepting for %.1f s (%s)", self.name,
                        exc.strerror or exc, ACCEPT_PAUSE,
                        "out of file descriptors: lower --max-connections or raise the "
                        "limit (ulimit -n)" if exc.errno in (errno.EMFILE, errno.ENFILE)
                        else "retrying")
            self._accept_logged = now
        if self.listener is not None and not self._accept_paused:
            self._accept_paused = True
            self.loop.unregister(self.listener)
            self.loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._accept_paused = False
        if self.listener is not None and not self._closing:
            self.loop.register(self.listener, EVENT_READ, _Acceptor(self))

    def _new_connection(self, sock: socket.socket, link: Link, label: str,
                        connecting: bool = False, tls: Any = None) -> Connection:
        conn = Connection(self.loop, sock, self, limits=self.config.limits, label=label,
                          max_send_buffer=self.config.max_send_buffer, connecting=connecting,
                          tls=tls)
        conn.peer = link
        # No extension frames before the hello exchange: until then a header
        # claiming a large payload reserves nothing (``_extensions_up``).
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
            self._refuse(conn, auth.REQUIRED_TEXT, f"did not authenticate within "
                         f"{self.config.registration_timeout:g} s (--registration-timeout)")

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
        period = self._keepalive_period()
        stalled = now - self._tick_due
        if stalled > max(1.0, period):
            # We ourselves did not run (stopped, or starved of CPU): what our
            # peers sent meanwhile is still unread in the socket buffers. Our
            # silence is not theirs: each link is pinged now and judged only
            # if it stays silent for the rest of --dead-after.
            log.warning("%s: this server did not run for %.1f s; every link gets %.0f s to be "
                        "heard before it is judged", self.name, stalled + period,
                        self.config.dead_after - self.config.keepalive)
            for conn in self.connections:
                conn.last_received = max(conn.last_received, now - self.config.keepalive)
        self._tick_due = now + period
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
        self.loop.call_later(period, self._keepalive_tick)

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
            if link.role is Role.AUTH and not (
                    msg.type is MsgType.STATUS
                    and msg.code in (StatusCode.MESH_HELLO, StatusCode.AUTH_PROOF)):
                self._refuse(conn, auth.REQUIRED_TEXT,
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
            self._join_failures += 1
            if not self.config.rejoin:
                log.error("%s: could not join the mesh: %s", self.name, reason)
            else:                         # said once; the retries that follow quietly
                log.log(logging.WARNING if self._join_failures == 1 else logging.INFO,
                        "%s: could not join the mesh through %s: %s", self.name, conn.label,
                        reason)
        elif link.role is Role.AUTH:
            log.info("%s: %s closed before authenticating: %s", self.name,
                     self._who(conn), reason)
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
            if self.config.tls is not None and conn.peer_cert is None:
                # Servers link by mutual TLS: a certificate-less peer may be a
                # client, never a server.
                raise ProtocolError("a server must present a certificate signed by --tls-ca "
                                    "to link over TLS")
            if self.config.secret is not None:
                self._challenge(conn, msg)
            else:
                self._admit(conn, msg, Kind.SERVER)
        elif link.role is Role.JOINING:
            if msg.source != msg.last_hop:
                raise ProtocolError("uplink did not start with its own registration")
            self._accepted_by(conn, msg)
        elif link.role is Role.SERVER:
            self._learn(conn, msg, Kind.SERVER)
        else:
            raise ProtocolError(f"server registration from a {link.role.value} link")

    def _on_client_registration(self, conn: Connection, msg: ClientRegistration) -> None:
        link: Link = conn.peer
        if link.role is Role.PENDING:
            if msg.last_hop != 0:
                raise ProtocolError(f"first registration has last hop {msg.last_hop}, expected 0")
            if self.config.secret is not None and self.config.plain_clients == "deny":
                self._welcome_unverified(conn, msg)
            else:
                self._admit(conn, msg, Kind.CLIENT)
        elif link.role is Role.SERVER:
            self._learn(conn, msg, Kind.CLIENT)
        else:
            raise ProtocolError(f"client registration from a {link.role.value} link")

    def _admit(self, conn: Connection, msg: ServerRegistration | ClientRegistration,
               kind: Kind, welcomed: bool = False) -> None:
        """A newcomer registered on an accepted connection (and, with a mesh
        secret, a server proved it; ``welcomed``: a client already was)."""
        link: Link = conn.peer
        if self._refuse_duplicate(conn, msg, kind):
            return
        host = self.routes.add(msg.source, kind, msg.name, msg.info, first_link=msg.source)
        self._warn_namesake(host)
        link.role = Role.SERVER if kind is Kind.SERVER else Role.CLIENT
        link.peer_id = msg.source
        self.links[msg.source] = conn
        self._registered(link)
        conn.label = f"{kind.value} {msg.name}({msg.source})"
        log.info("%s: %s %s (id %d) joined", self.name, kind.value, msg.name, msg.source)
        if kind is Kind.SERVER:
            conn.send(ServerRegistration(self.id, self.id, self.name, self.info))
            for other in list(self.routes.hosts.values()):
                if other.id != host.id:
                    conn.send(self._registration(other))
        else:
            if not welcomed:
                conn.send(Status(self.id, host.id, StatusCode.WELCOME, welcome_text(host.name)))
            for other in self.routes.of_kind(Kind.CLIENT):
                if other.id != host.id:
                    conn.send(self._registration(other))
        self._flood(self._registration(host), exclude=host.id, servers=True,
                    clients=kind is Kind.CLIENT)

    def _refuse_duplicate(self, conn: Connection, msg: ServerRegistration | ClientRegistration,
                          kind: Kind) -> bool:
        """Refuse (and close) a newcomer whose id is taken; True if refused."""
        if msg.source != 0 and not self.routes.known(msg.source):
            return False
        if msg.source == 0:
            text = INVALID_ID_TEXT
            log.warning("%s: refusing %s %r: id 0 is never valid", self.name, kind.value,
                        msg.name)
        else:
            text = duplicate_id_text(msg.source, msg.type)
            log.warning("%s: refusing %s %r: id %d already registered", self.name,
                        kind.value, msg.name, msg.source)
        if msg.source == self.id and conn.peer_address is not None:
            self._refused_from.append(conn.peer_address)     # (``_joined_ourselves``)
            del self._refused_from[:-8]
        conn.send(Status(self.id, msg.source, StatusCode.DUPLICATE_ID, text))
        conn.peer.role = Role.DONE
        conn.close_after_flush("duplicate id")
        return True

    def _accepted_by(self, conn: Connection, msg: ServerRegistration) -> None:
        """Our uplink answered with its own registration: we are in."""
        link: Link = conn.peer
        if self.config.secret is not None and not link.authenticated:
            log.error("%s: %s did not authenticate (it has no mesh secret, or is not a "
                      "CRC Mesh server); leaving it", self.name, conn.label)
            link.role = Role.DONE
            conn.close("uplink did not authenticate")
            return
        if link.auth is not None and msg.source != link.auth.peer_id:
            raise ProtocolError(f"uplink registered as {msg.source} after authenticating as "
                                f"{link.auth.peer_id}")
        link.auth = None
        try:
            uplink = self.routes.add(msg.source, Kind.SERVER, msg.name, msg.info,
                                     first_link=msg.source)
        except RoutingError as exc:
            raise ProtocolError(f"uplink registration refused: {exc}") from None
        self._warn_namesake(uplink)
        link.role = Role.SERVER
        link.peer_id = msg.source
        self.links[msg.source] = conn
        conn.label = f"server {msg.name}({msg.source})"
        log.info("%s: joined the mesh through %s (id %d)", self.name, msg.name, msg.source)
        self._rejoin_delay = self.config.rejoin_delay
        self._duplicate_refusals = self._join_failures = 0
        # Tell the uplink what we already know (nothing, on a fresh start),
        # and tell what we already have (servers that joined us meanwhile)
        # about the uplink; what lies beyond it follows as it arrives.
        uplink = self.routes.get(msg.source)
        for other in list(self.routes.hosts.values()):
            if other.id != msg.source:
                conn.send(self._registration(other))
        self._flood(self._registration(uplink), exclude=msg.source, servers=True)
        self._offer_extensions(conn)
        self._registered(link)

    def _registered(self, link: Link) -> None:
        """``link``'s peer is admitted: its deadline is met, and if no hello
        comes within ``HELLO_SETTLE`` s it is taken for plain CRC v1."""
        if link.deadline is not None:
            link.deadline.cancel()
            link.deadline = None
        link.settle_at = self.loop.time() + HELLO_SETTLE

    def _settled(self, link: Link) -> bool:
        """Whether ``link``'s peer is known to speak extensions or not."""
        return link.settled or self.loop.time() >= link.settle_at

    def _learn(self, conn: Connection, msg: ServerRegistration | ClientRegistration,
               kind: Kind) -> None:
        """A registration flooded from an adjacent server."""
        link: Link = conn.peer
        host_id, name, info = msg.source, msg.name, msg.info
        if host_id == 0:
            log.warning("%s: ignoring a %s registration with id 0 (never a valid id) from %r",
                        self.name, kind.value, conn)
            return
        if self.routes.known(host_id):
            # A newcomer elsewhere took an id we know (or two halves of a
            # healing tree met while one still holds a departed host): it is
            # refused as at its own server, and nothing of it goes further.
            # The status goes back over the link it came on, where its id
            # leads to the newcomer, not to the machine we know by that id.
            log.warning("%s: refusing %s %r (id %d) announced by %r: id already registered",
                        self.name, kind.value, name, host_id, conn)
            conn.send(Status(self.id, host_id, StatusCode.DUPLICATE_ID,
                             duplicate_id_text(host_id, msg.type)))
            return
        try:
            host = self.routes.add(host_id, kind, name, info, first_link=link.peer_id)
        except RoutingError as exc:          # not a tree any more: refuse, keep the link
            log.warning("%s: ignoring registration of %s %d from %r: %s", self.name,
                        kind.value, host_id, conn, exc)
            return
        self._warn_namesake(host)
        self._flood(self._registration(host), exclude=link.peer_id, servers=True,
                    clients=kind is Kind.CLIENT)

    def _warn_namesake(self, host: Host) -> None:
        """Two servers of one name work, but ``--on NAME`` cannot choose
        between them and logs and tables confuse them: say so as it happens."""
        if host.kind is not Kind.SERVER:
            return
        twins = len(self.routes.servers_named.get(host.name, ())) - 1 + (host.name == self.name)
        if twins == 1:                     # said when a name first becomes shared
            other = min(i for i in (*self.routes.servers_named[host.name], self.id)
                        if i != host.id and (i != self.id or host.name == self.name))
            log.warning("%s: server %d is named %r like server %d: give each server its own "
                        "--name (--on %r is ambiguous; use ids)", self.name, host.id, host.name,
                        other, host.name)

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
        if msg.code in LINK_STEPS and self._is_link_step(link, msg):
            LINK_STEPS[msg.code](self, conn, msg)
            return
        if link.role is Role.JOINING and msg.dest == self.id:
            # The server we tried to join refused us (duplicate id, or
            # authentication).
            self._log_status(msg.text)
            self._join_refused(conn, msg)
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

    # -- extension handshake -------------------------------------------------------

    def _offer_extensions(self, conn: Connection) -> None:
        """Send our hello addressed to ourselves (echoed back by v1 peers)."""
        conn.send(Status(self.id, self.id, StatusCode.MESH_HELLO,
                         Hello(role="server", fields=self._limit_fields()).text()))

    def max_chat(self) -> int:
        """The longest chat text (bytes) we take and our mesh neighbours said
        they can carry on: what a client is told it may send."""
        limits = self.config.limits
        own = min(limits.max_text, limits.max_payload - CHAT_OVERHEAD)
        return min([own, *(c.peer.max_chat for c in self.links.values()
                           if c.peer.ext and c.peer.role is Role.SERVER)])

    def _limit_fields(self) -> dict[str, str]:
        return {"max_frame": str(self.config.limits.max_payload),
                "max_chat": str(self.max_chat())}

    @staticmethod
    def _learn_limits(link: Link, hello: Hello) -> None:
        """What the peer said it accepts (absent: the defaults every version has)."""
        for name in ("max_frame", "max_chat"):
            value = hello.fields.get(name, "")
            if value.isascii() and value.isdigit():
                setattr(link, name, int(value))

    def _on_hello(self, conn: Connection, msg: Status) -> None:
        link: Link = conn.peer
        if msg.source == self.id and msg.dest == self.id:
            log.info("%s: %r is a plain CRC v1 peer; no extensions on this link", self.name, conn)
            link.settled = True
            self._flush_held(conn)
            return
        unverified = link.role is Role.AUTH and isinstance(
            link.auth and link.auth.pending, ClientRegistration)
        if (link.role not in (Role.SERVER, Role.CLIENT) and not unverified) \
                or msg.source != link.peer_id or msg.dest != link.peer_id:
            raise ProtocolError("mesh hello from someone other than the adjacent peer")
        hello = parse_hello(msg.text)
        fields: dict[str, str] = {}
        if self.config.secret is not None and link.role is not Role.SERVER \
                and not link.authenticated:
            their = hello.fields.get("nonce", "")
            if auth.valid_nonce(their):
                # Prove ourselves to the client; it answers with its proof.
                state = link.auth or AuthState()
                state.nonce, state.peer_nonce = auth.new_nonce(), their
                link.auth = state
                fields = {"nonce": state.nonce,
                          "proof": auth.proof(self.config.secret, auth.TO_CLIENT, link.peer_id,
                                              self.id, their, state.nonce)}
            elif unverified:
                self._refuse(conn, auth.REQUIRED_TEXT, "offered no authentication in its hello")
                return
        link.features = hello.features & FEATURES
        self._learn_limits(link, hello)
        fields.update(self._limit_fields())
        if link.role is not Role.SERVER:
            fields.update(self.hello_fields)
        conn.send(Status(self.id, link.peer_id, StatusCode.MESH_HELLO_REPLY,
                         Hello(role="server", features=link.features, fields=fields).text()))
        if not unverified:
            self._extensions_up(conn)       # else once it is admitted

    def _extensions_up(self, conn: Connection) -> None:
        link: Link = conn.peer
        link.ext = link.settled = True
        conn.decoder.allow_in_place = True
        log.info("%s: extensions on %r: %s", self.name, conn, ",".join(sorted(link.features)))
        for listener in self.extension_link_listeners:
            listener(conn)
        self._flush_held(conn)

    def _on_hello_reply(self, conn: Connection, msg: Status) -> None:
        link: Link = conn.peer
        if link.role is not Role.SERVER or msg.source != link.peer_id:
            raise ProtocolError("mesh hello reply from someone other than the adjacent peer")
        hello = parse_hello(msg.text)
        link.features = hello.features & FEATURES
        self._learn_limits(link, hello)
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
        if link.role is not Role.SERVER:
            # A client speaks only for itself; one that may not run jobs
            # reaches no further than this server (docs/security.md).
            if msg.source != link.peer_id:
                raise ProtocolError(f"extension frame from client {link.peer_id} with source "
                                    f"{msg.source}")
            if msg.dest != 0 and msg.kind in self.job_kinds \
                    and self.job_refusal(conn) is not None:
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

    def _relay_reliable_chat(self, conn: Connection, msg: Extension) -> bool:
        """A reliable chat (crc/delivery) on its way to ``msg.dest``.

        Passed on as it came while the next link speaks reliable chat. Where
        it does not (a plain v1 client or server, or a mesh client without
        it), it is handed over as a v1 chat and acknowledged on the
        receiver's behalf: from there on it is plain CRC v1. An unknown
        destination is refused with a NACK, and the sender tries again later.
        A tap on CHAT frames passing through: each one is consumed here.
        """
        if not self._check_source(conn, msg.source, "chat"):
            return True
        target = self._link_towards(msg.dest)
        if target is not None and target.peer.held:
            self._flush_held(target)      # those held before go first, if it is time
        if target is not None and len(msg.payload) > target.peer.max_frame:
            self._refuse_chat(msg, f"too large for the link from {self.name} to "
                                   f"{target.label} ({len(msg.payload) - CHAT_OVERHEAD} bytes of "
                                   f"text; it takes at most "
                                   f"{target.peer.max_frame - CHAT_OVERHEAD})")
            return True
        if target is not None and "rchat" in target.peer.features:
            target.send(msg)
            return True
        if target is not None and not self._settled(target.peer):
            # Its hello may yet come: handing the chat over as v1 now could
            # show it twice (a resend would arrive as a reliable chat later).
            # It waits (a link that just joined answers within milliseconds);
            # past the cap it is dropped and resent after the sender's interval.
            self._hold(target, msg)
            return True
        self._hand_over(target, msg)
        return True

    def _refuse_chat(self, msg: Extension, reason: str) -> None:
        """A reliable chat that can never be carried: its sender is told so
        (REFUSED), drops it and goes on with the ones behind it."""
        try:
            stream, seq, _, _ = unpack_chat(msg.payload)
        except ProtocolError:
            return
        log.warning("%s: refusing a reliable chat from %d to %d: %s", self.name, msg.source,
                    msg.dest, reason)
        self.send_extension(Extension(ChatKind.REFUSED, self.id, msg.source, 0,
                                      pack_nack(stream, seq, reason)))

    def _hand_over(self, target: Connection | None, msg: Extension) -> None:
        """A reliable chat where the next link does not speak them: as v1 with an
        acknowledgement on the receiver's behalf, or refused if nobody is there."""
        try:
            stream, seq, _, text = unpack_chat(msg.payload)
        except ProtocolError as exc:        # the sender's fault, not the adjacent link's
            log.warning("%s: dropping a reliable chat from %d: %s", self.name, msg.source, exc)
            return
        if target is None:
            reply = Extension(ChatKind.NACK, self.id, msg.source, 0,
                              pack_nack(stream, seq, unknown_id_text(msg.dest)))
        else:
            try:
                target.send(ClientChat(msg.source, msg.dest, text))
            except EncodeError as exc:
                log.warning("%s: reliable chat from %d to %d cannot go out as CRC v1: %s",
                            self.name, msg.source, msg.dest, exc)
                return
            reply = Extension(ChatKind.ACK, msg.dest, msg.source, 0, pack_ack(stream, seq))
        self.send_extension(reply)

    def _hold(self, target: Connection, msg: Extension) -> None:
        """Keep ``msg`` until ``target``'s peer has answered the hello (within
        the caps; a resend of a chat already kept adds nothing)."""
        link: Link = target.peer
        try:
            stream, seq, _, _ = unpack_chat(msg.payload)
        except ProtocolError:
            return                     # refused with a warning when handed over, if resent
        key = (msg.source, stream, seq)
        size = len(msg.payload)
        if key in link.held or link.held_bytes + size > HELD_MAX \
                or self._held_total + size > HELD_TOTAL:
            return
        if not link.held and math.isfinite(link.settle_at):
            self.loop.call_later(max(0.0, link.settle_at - self.loop.time()),
                                 self._flush_held, target)
        link.held[key] = msg
        link.held_bytes += size
        self._held_total += size

    def _flush_held(self, conn: Connection) -> None:
        """The reliable chats held for ``conn``'s peer, once its hello is answered:
        sent on if it speaks them, handed over as v1 if not. If the time limit
        passed in silence they are dropped instead: their senders resend them
        and each is handed over then, as before (converting the held copies
        now could race a resend already on its way and show a chat twice)."""
        link: Link = conn.peer
        if not link.held or not self._settled(link):
            return
        self._held_total -= link.held_bytes
        held, link.held, link.held_bytes = link.held, {}, 0
        if not link.settled or conn.closed or link.role not in (Role.SERVER, Role.CLIENT):
            return
        for msg in held.values():
            if "rchat" in link.features:
                conn.send(msg)
            else:
                self._hand_over(conn, msg)

    # -- authentication (docs/protocol.md, "Authentication") ----------------------------

    def _who(self, conn: Connection) -> str:
        """A peer as a log line should name it: what it claims, and its address."""
        link: Link = conn.peer
        pending = link.auth.pending if link.auth is not None else None
        if pending is not None:
            kind = "server" if isinstance(pending, ServerRegistration) else "client"
            claim = f"{kind} {pending.name!r} (id {pending.source})"
        elif link.peer_id:
            claim = f"{link.role.value} {link.peer_id}"
        else:
            claim = "a peer"
        address = conn.peer_address
        if isinstance(address, tuple) and len(address) >= 2:
            return f"{claim} from {address[0]}:{address[1]}"
        return f"{claim} ({conn.label})"

    def _refuse(self, conn: Connection, text: str, why: str) -> None:
        """Close ``conn`` after a status saying ``text`` (what the peer is told);
        ``why`` goes into our warning."""
        link: Link = conn.peer
        pending = link.auth.pending if link.auth is not None else None
        dest = pending.source if pending is not None else link.peer_id
        log.warning("%s: %s %s: %s; closing", self.name, self._who(conn), why, text)
        conn.send(Status(self.id, dest, StatusCode.AUTH_REFUSED, text))
        link.role = Role.DONE
        link.auth = None
        conn.close_after_flush(text)

    def _challenge(self, conn: Connection, msg: ServerRegistration) -> None:
        """A server registered on a mesh with a secret: nothing of it is recorded
        until it answers our nonce with a proof (``_check_server_proof``)."""
        link: Link = conn.peer
        link.role = Role.AUTH
        link.auth = AuthState(nonce=auth.new_nonce(), pending=msg)
        log.info("%s: challenging %s", self.name, self._who(conn))
        conn.send(Status(self.id, msg.source, StatusCode.AUTH_CHALLENGE,
                         auth.auth_text(auth=auth.SCHEME, nonce=link.auth.nonce)))

    def _welcome_unverified(self, conn: Connection, msg: ClientRegistration) -> None:
        """``plain_clients="deny"``: welcome a client (it sends its hello only
        then) but record and announce it only once it has proved the secret."""
        link: Link = conn.peer
        if self._refuse_duplicate(conn, msg, Kind.CLIENT):
            return
        link.role = Role.AUTH
        link.peer_id = msg.source
        link.auth = AuthState(pending=msg)
        conn.label = f"client {msg.name}({msg.source})"
        conn.send(Status(self.id, msg.source, StatusCode.WELCOME, welcome_text(msg.name)))

    def _on_auth(self, conn: Connection, msg: Status) -> None:
        link: Link = conn.peer
        code = msg.code
        if link.role is Role.JOINING and code == StatusCode.AUTH_CHALLENGE:
            self._answer_challenge(conn, msg)
        elif link.role is Role.JOINING and code == StatusCode.AUTH_OK:
            self._uplink_proved(conn, msg)
        elif code == StatusCode.AUTH_PROOF and link.role is Role.AUTH \
                and isinstance(link.auth.pending, ServerRegistration):
            self._check_server_proof(conn, msg)
        elif code == StatusCode.AUTH_PROOF and link.role in (Role.AUTH, Role.CLIENT) \
                and link.auth is not None and link.auth.peer_nonce:
            self._check_client_proof(conn, msg)
        else:
            raise ProtocolError(f"unexpected authentication status {code:#06x} on a "
                                f"{link.role.value} link")

    def _answer_challenge(self, conn: Connection, msg: Status) -> None:
        """Joiner: our uplink wants proof that we know the mesh secret."""
        link: Link = conn.peer
        if msg.dest != self.id or link.auth is not None:
            raise ProtocolError("authentication challenge for another id, or a second one")
        fields = auth.parse_auth(msg.text)
        if self.config.secret is None:
            log.error("%s: %s requires a mesh secret (--secret-file); leaving it",
                      self.name, conn.label)
            link.role = Role.DONE
            conn.close("uplink requires a mesh secret")
            return
        if fields.get("auth") != auth.SCHEME or not auth.valid_nonce(fields.get("nonce")):
            log.error("%s: %s asks for authentication we do not speak (%r); leaving it",
                      self.name, conn.label, msg.text[:120])
            link.role = Role.DONE
            conn.close("unsupported authentication")
            return
        state = AuthState(nonce=auth.new_nonce(), peer_nonce=fields["nonce"], peer_id=msg.source)
        link.auth = state
        conn.send(Status(self.id, msg.source, StatusCode.AUTH_PROOF, auth.auth_text(
            nonce=state.nonce,
            proof=auth.proof(self.config.secret, auth.JOIN, self.id, msg.source, state.nonce,
                             state.peer_nonce))))

    def _uplink_proved(self, conn: Connection, msg: Status) -> None:
        """Joiner: the uplink accepted our proof and sent its own."""
        link: Link = conn.peer
        state = link.auth
        if state is None or not state.nonce or msg.source != state.peer_id \
                or msg.dest != self.id:
            raise ProtocolError("authentication accepted without a challenge")
        expected = auth.proof(self.config.secret, auth.ACCEPT, self.id, state.peer_id,
                              state.nonce, state.peer_nonce)
        if not auth.proof_matches(expected, auth.parse_auth(msg.text).get("proof")):
            log.error("%s: %s failed to prove it knows the mesh secret; leaving it",
                      self.name, conn.label)
            link.role = Role.DONE
            conn.close("uplink failed authentication")
            return
        link.authenticated = True
        log.info("%s: %s authenticated", self.name, conn.label)

    def _check_server_proof(self, conn: Connection, msg: Status) -> None:
        """Acceptor: a challenged joiner answered; admit it if the proof holds."""
        link: Link = conn.peer
        state = link.auth
        joiner = state.pending
        if msg.source != joiner.source or msg.dest != self.id:
            raise ProtocolError("authentication proof from someone other than the joiner")
        fields = auth.parse_auth(msg.text)
        their = fields.get("nonce", "")
        if not auth.valid_nonce(their) or not auth.proof_matches(
                auth.proof(self.config.secret, auth.JOIN, joiner.source, self.id, their,
                           state.nonce), fields.get("proof")):
            self._refuse(conn, auth.FAILED_TEXT, "gave a wrong proof (wrong mesh secret?)")
            return
        link.auth = None
        link.authenticated = True
        log.info("%s: server %r (id %d) authenticated", self.name, joiner.name, joiner.source)
        conn.send(Status(self.id, joiner.source, StatusCode.AUTH_OK, auth.auth_text(
            proof=auth.proof(self.config.secret, auth.ACCEPT, joiner.source, self.id, their,
                             state.nonce))))
        self._admit(conn, joiner, Kind.SERVER)

    def _check_client_proof(self, conn: Connection, msg: Status) -> None:
        """A client answered our hello reply's proof with its own."""
        link: Link = conn.peer
        state = link.auth
        if msg.source != link.peer_id or msg.dest != self.id:
            raise ProtocolError("authentication proof from someone other than the client")
        expected = auth.proof(self.config.secret, auth.CLIENT, link.peer_id, self.id,
                              state.peer_nonce, state.nonce)
        if not auth.proof_matches(expected, auth.parse_auth(msg.text).get("proof")):
            self._refuse(conn, auth.FAILED_TEXT, "gave a wrong proof (wrong mesh secret?)")
            return
        pending, link.auth = state.pending, None
        link.authenticated = True
        log.info("%s: client %d authenticated", self.name, link.peer_id)
        conn.send(Status(self.id, link.peer_id, StatusCode.AUTH_OK, auth.auth_text(auth="ok")))
        if link.role is Role.AUTH and pending is not None:
            self._admit(conn, pending, Kind.CLIENT, welcomed=True)
            if link.role is Role.CLIENT:
                self._extensions_up(conn)

    # -- who may run jobs ------------------------------------------------------------------

    def is_local(self, conn: Connection) -> bool:
        """Whether ``conn``'s peer is on this machine (loopback)."""
        link: Link = conn.peer
        if link.local is None:
            if conn.peer_address is None:
                return False             # not connected (yet): not known to be local
            link.local = bool(self.config.is_local(conn.peer_address))
        return link.local

    def job_refusal(self, conn: Connection) -> str | None:
        """Why jobs submitted by the client on ``conn`` must not run; None if they may.

        With a mesh secret: only authenticated clients. Without: only clients
        on this machine, unless ``insecure_remote_jobs``."""
        link: Link = conn.peer
        if self.config.secret is not None:
            return None if link.authenticated else auth.JOBS_TEXT
        if self.config.insecure_remote_jobs or self.is_local(conn):
            return None
        return (f"server {self.name} runs jobs only for clients on its own machine (loopback) "
                "when the mesh has no secret; use --secret-file (or, accepting that anyone "
                "who can connect may run commands, --insecure-remote-jobs)")

    def run_refusal(self, conn: Connection | None) -> str | None:
        """Why a job (RUN frame) that arrived over ``conn`` must be neither run
        nor passed on; None if it may be (``conn`` None: our own job service).

        Only servers send RUN frames (``ProtocolError`` otherwise). With a
        secret, every server link is authenticated; without one, each server
        on the way accepts the job only from a loopback link unless
        ``insecure_remote_jobs``, so a job never crosses a link between
        machines without a secret."""
        if conn is None:
            return None
        link: Link = conn.peer
        if link.role is not Role.SERVER:
            raise ProtocolError("a job (RUN) frame from a client")
        if self.config.secret is not None:
            return None if link.authenticated else auth.JOBS_TEXT
        if self.config.insecure_remote_jobs or self.is_local(conn):
            return None
        return (f"server {self.name} refuses jobs arriving over a link from another machine "
                f"({self._who(conn)}) when the mesh has no secret; use --secret-file (or "
                "--insecure-remote-jobs)")

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
        if self.config.secret is not None and not self.is_local(conn):
            self._refuse(conn, "state queries are answered only on this machine (loopback) "
                         "when the mesh has a secret", "asked for the state")
            return
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


#: Our status codes that are steps of a link's own set-up, and their handlers
#: (``MeshServer._is_link_step`` decides whether a status is one).
LINK_STEPS: dict[int, Callable[[MeshServer, Connection, Status], None]] = {
    StatusCode.MESH_HELLO: MeshServer._on_hello,
    StatusCode.MESH_HELLO_REPLY: MeshServer._on_hello_reply,
    StatusCode.AUTH_CHALLENGE: MeshServer._on_auth,
    StatusCode.AUTH_PROOF: MeshServer._on_auth,
    StatusCode.AUTH_OK: MeshServer._on_auth,
}
