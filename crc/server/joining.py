"""Joining the mesh, and joining it again: our uplink and its candidates.

A server configured with ``--connect`` opens an uplink to the first
candidate, registers (its first bytes are exactly its v1 registration with
last hop 0) and waits for the answer: the uplink's own registration (we are
in: ``MeshServer._accepted_by``), a refusal, or nothing. When the uplink is
lost, never answers within ``join_timeout`` (a frozen process accepts and
never reads), or refuses us, the next candidate is tried after a backoff
(``rejoin_delay`` doubling to ``rejoin_max_delay``, jittered). Our own
subtree stays with us and rejoins with us; a candidate inside it refuses us
as a duplicate (it knows our id), and we refuse it if its id is one we know,
so the tree never loops.

Refusals are told apart: a duplicate id is expected while the mesh still
holds our old path (the same candidate is tried again, said once, then
quietly); a candidate that is this server itself is dropped from the list;
an authentication refusal is said as an error. Names were resolved before
the loop started (``ServerConfig.addresses``): nothing here waits on DNS.

This part only opens and judges the uplink; what the uplink's registration
means for routing is the server's.
"""

from __future__ import annotations

import logging
import random
import socket
from typing import TYPE_CHECKING, Any

from ..net import Connection
from ..protocol import ServerRegistration, Status, StatusCode
from .links import Link, Role

if TYPE_CHECKING:
    from .server import MeshServer

log = logging.getLogger("crc.server.server")     # the relay's log: one name for its parts


class Joiner:
    def __init__(self, server: "MeshServer") -> None:
        self.server = server
        self.candidate = 0               # index of the candidate last tried
        self.delay = server.config.rejoin_delay
        self.attempts = 0                # rejoins tried
        self.refusal = ""                # why the last join was refused: duplicate, self, auth
        self.duplicate_refusals = 0      # refused as a duplicate since we last joined
        self.failures = 0                # joins that failed since we last joined
        self.excluded: set[tuple[str, int]] = set()   # candidates that are ourselves
        #: Addresses of the last joiners refused for having our own id.
        self.refused_from: list[Any] = []

    @property
    def candidates(self) -> list[tuple[str, int]]:
        config = self.server.config
        return [c for c in (config.connect, *config.candidates) if c]

    # -- opening --------------------------------------------------------------------

    def open(self, host: str, port: int) -> None:
        """Open the uplink to ``host:port`` and register; ``OSError`` if the
        connection cannot even be started. An uplink that has not answered
        within ``join_timeout`` is given up."""
        server = self.server
        config = server.config
        address = config.addresses.get(host, host)
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            err = sock.connect_ex((address, port))
        except OSError:
            sock.close()
            raise
        conn = server._new_connection(sock, Link(Role.JOINING, outbound=True),
                                      f"uplink {host}:{port}", connecting=err != 0,
                                      tls=config.tls.connect.towards(host) if config.tls
                                      else None)
        server.uplink = conn
        conn.peer.deadline = server.loop.call_later(config.join_timeout, self.deadline, conn)
        # Our first bytes on the link are exactly our v1 registration.
        conn.send(ServerRegistration(server.id, 0, server.name, server.info))
        log.info("%s joining the mesh through %s:%d", server.name, host, port)

    def deadline(self, conn: Connection) -> None:
        """The server we are joining (a frozen process, a wedged host) has not
        answered: try the next candidate instead of waiting for ever."""
        if not conn.closed and conn is self.server.uplink and conn.peer.role is Role.JOINING:
            conn.close(f"no answer within {self.server.config.join_timeout:g} s "
                       "(--join-timeout)")

    def joined(self) -> None:
        """We are in: the next loss starts over from the shortest backoff."""
        self.delay = self.server.config.rejoin_delay
        self.duplicate_refusals = self.failures = 0

    # -- losing it and trying again ----------------------------------------------------

    def lost(self) -> None:
        """Our uplink closed (or never opened): rejoin through the next
        candidate after a backoff."""
        server = self.server
        config = server.config
        candidates = self.candidates
        refusal, self.refusal = self.refusal, ""
        if not config.rejoin or not candidates or server._closing:
            return
        if refusal == "self":
            self.excluded.add(candidates[self.candidate % len(candidates)])
        usable = [c for c in candidates if c not in self.excluded]
        if not usable:
            log.error("%s: no candidate left to join through (every one is this server "
                      "itself); staying apart", server.name)
            return
        if refusal != "duplicate":
            # A candidate that refused us as a duplicate is alive and will take
            # us once our old path has left the mesh: it is tried again.
            # Anything else (unreachable, no answer, closed) moves on.
            self.candidate = (self.candidate + 1) % len(candidates)
        while candidates[self.candidate] in self.excluded:
            self.candidate = (self.candidate + 1) % len(candidates)
        delay = self.delay * random.uniform(0.8, 1.2)
        self.delay = min(self.delay * 2, config.rejoin_max_delay)
        host, port = candidates[self.candidate]
        log.info("%s: rejoining through %s:%d in %.2f s", server.name, host, port, delay)
        server.loop.call_later(delay, self.rejoin, host, port)

    def rejoin(self, host: str, port: int) -> None:
        server = self.server
        if server._closing or server.uplink is not None:
            return
        self.attempts += 1
        try:
            server.connect_uplink(host, port)
        except OSError as exc:
            log.warning("%s: cannot connect to %s:%d: %s", server.name, host, port, exc)
            self.lost()

    def failed(self, conn: Connection, reason: str) -> None:
        """The uplink closed before it took us: said once, the retries quietly."""
        self.failures += 1
        name = self.server.name
        if not self.server.config.rejoin:
            log.error("%s: could not join the mesh: %s", name, reason)
        else:
            log.log(logging.WARNING if self.failures == 1 else logging.INFO,
                    "%s: could not join the mesh through %s: %s", name, conn.label, reason)

    # -- refusals --------------------------------------------------------------------

    def refused(self, conn: Connection, msg: Status) -> None:
        """Say why a join was refused, once per streak of the same refusal."""
        server = self.server
        name = server.name
        if msg.code == StatusCode.AUTH_REFUSED:
            self.refusal = "auth"
            log.error("%s: join refused by %s: %s (is our mesh secret the same as theirs?)",
                      name, conn.label, msg.text)
        elif msg.code == StatusCode.DUPLICATE_ID and self.joined_ourselves(conn):
            self.refusal = "self"
            log.error("%s: %s is this server itself (--connect names our own address); not "
                      "trying it again", name, conn.label)
        elif msg.code == StatusCode.DUPLICATE_ID:
            self.refusal = "duplicate"
            self.duplicate_refusals += 1
            if not server.config.rejoin:
                log.error("%s: join refused: %s", name, msg.text)
            elif self.duplicate_refusals == 1:
                # Expected while the mesh still holds our old path (a rejoin
                # after a silent cut); if another server really has our id,
                # this repeats every --rejoin backoff, up to 10 s apart.
                log.warning("%s: join refused by %s: %s; trying again (the mesh may still "
                            "hold our old path, or another server has our id)", name,
                            conn.label, msg.text)
            else:
                log.info("%s: join refused again by %s (%d times): %s", name, conn.label,
                         self.duplicate_refusals, msg.text)
        else:
            log.error("%s: join refused: %s", name, msg.text)

    def refusing_ourselves(self, conn: Connection) -> None:
        """We refuse a joiner for having our own id: if it is our own uplink
        (``--connect`` naming this server), its refusal will tell us so."""
        if conn.peer_address is not None:
            self.refused_from.append(conn.peer_address)
            del self.refused_from[:-8]

    def joined_ourselves(self, uplink: Connection) -> bool:
        """Whether our uplink is a connection to our own listener: one of our
        accepted connections comes from it."""
        try:
            ours = uplink.sock.getsockname()
        except OSError:
            return False
        return ours in self.refused_from or any(
            c.peer_address == ours for c in self.server.connections if c is not uplink)
