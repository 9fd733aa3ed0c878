"""Registrations: who joins the routing table, and how the news spreads.

CRC v1's rules (../shared/crc-v1.md, "Behaviour"): a newcomer on an accepted
connection registers with last hop 0 and is admitted — recorded as adjacent,
told what we know (a server: our registration then every host; a client: the
welcome then every other client, never servers), and flooded to the rest
(a job-only client, ``Host.quiet``, to servers only) —
unless its id is taken (or 0), which it is told with the duplicate-id status
for its own kind. A registration flooded from an adjacent server is learnt
with that server as first link and passed on, never back; a known id is
refused towards the newcomer and goes no further. Our uplink's answer to our
own registration is its registration: we are in (``accepted_by``).

With a mesh secret, a server is admitted only after ``crc.server.gatekeeper``
has seen its proof; this part decides nothing about trust.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..net import Connection
from ..protocol import (ClientRegistration, ProtocolError, ServerRegistration, Status,
                        StatusCode, duplicate_id_text, welcome_text)
from ..routing import Host, Kind, RoutingError
from .links import Link, Role

if TYPE_CHECKING:
    from .server import MeshServer

log = logging.getLogger("crc.server.server")     # the relay's log: one name for its parts

#: What a newcomer registering with id 0 (never a valid id) is told, with the
#: duplicate-id code: v1 has no other refusal.
INVALID_ID_TEXT = "ID 0 is not a valid ID: choose one from 1 to 4294967295"


class Registrations:
    def __init__(self, server: "MeshServer") -> None:
        self.server = server

    def on_server(self, conn: Connection, msg: ServerRegistration) -> None:
        server = self.server
        link: Link = conn.peer
        if link.role is Role.PENDING:
            if msg.last_hop != 0:
                raise ProtocolError(f"first registration has last hop {msg.last_hop}, expected 0")
            if server.config.tls is not None and conn.peer_cert is None:
                # Servers link by mutual TLS: a certificate-less peer may be a
                # client, never a server.
                raise ProtocolError("a server must present a certificate signed by --tls-ca "
                                    "to link over TLS")
            if server.config.secret is not None:
                server.gate.challenge(conn, msg)
            else:
                self.admit(conn, msg, Kind.SERVER)
        elif link.role is Role.JOINING:
            if msg.source != msg.last_hop:
                raise ProtocolError("uplink did not start with its own registration")
            self.accepted_by(conn, msg)
        elif link.role is Role.SERVER:
            self.learn(conn, msg, Kind.SERVER)
        else:
            raise ProtocolError(f"server registration from a {link.role.value} link")

    def on_client(self, conn: Connection, msg: ClientRegistration) -> None:
        server = self.server
        link: Link = conn.peer
        if link.role is Role.PENDING:
            if msg.last_hop != 0:
                raise ProtocolError(f"first registration has last hop {msg.last_hop}, expected 0")
            if server.config.secret is not None and server.config.plain_clients == "deny":
                server.gate.welcome_unverified(conn, msg)
            else:
                self.admit(conn, msg, Kind.CLIENT)
        elif link.role is Role.SERVER:
            self.learn(conn, msg, Kind.CLIENT)
        else:
            raise ProtocolError(f"client registration from a {link.role.value} link")

    def admit(self, conn: Connection, msg: ServerRegistration | ClientRegistration,
               kind: Kind, welcomed: bool = False) -> None:
        """A newcomer registered on an accepted connection (and, with a mesh
        secret, a server proved it; ``welcomed``: a client already was)."""
        server = self.server
        link: Link = conn.peer
        if self.refuse_duplicate(conn, msg, kind):
            return
        host = server.routes.add(msg.source, kind, msg.name, msg.info, first_link=msg.source)
        self.warn_namesake(host)
        link.role = Role.SERVER if kind is Kind.SERVER else Role.CLIENT
        link.peer_id = msg.source
        server.links[msg.source] = conn
        server.negotiation.registered(link)
        conn.label = f"{kind.value} {msg.name}({msg.source})"
        log.info("%s: %s %s (id %d) joined", server.name, kind.value, msg.name, msg.source)
        if kind is Kind.SERVER:
            conn.send(ServerRegistration(server.id, server.id, server.name, server.info))
            for other in list(server.routes.hosts.values()):
                if other.id != host.id:
                    conn.send(server._registration(other))
        else:
            if not welcomed:
                conn.send(Status(server.id, host.id, StatusCode.WELCOME, welcome_text(host.name)))
            for other in server.routes.of_kind(Kind.CLIENT):
                if other.id != host.id and not other.quiet:
                    conn.send(server._registration(other))
        server._flood(server._registration(host), exclude=host.id, servers=True,
                    clients=kind is Kind.CLIENT and not host.quiet)

    def refuse_duplicate(self, conn: Connection, msg: ServerRegistration | ClientRegistration,
                          kind: Kind) -> bool:
        """Refuse (and close) a newcomer whose id is taken; True if refused."""
        server = self.server
        if msg.source != 0 and not server.routes.known(msg.source):
            return False
        if msg.source == 0:
            text = INVALID_ID_TEXT
            log.warning("%s: refusing %s %r: id 0 is never valid", server.name, kind.value,
                        msg.name)
        else:
            text = duplicate_id_text(msg.source, msg.type)
            log.warning("%s: refusing %s %r: id %d already registered", server.name,
                        kind.value, msg.name, msg.source)
        if msg.source == server.id:
            server.joiner.refusing_ourselves(conn)
        conn.send(Status(server.id, msg.source, StatusCode.DUPLICATE_ID, text))
        conn.peer.role = Role.DONE
        conn.close_after_flush("duplicate id")
        return True

    def accepted_by(self, conn: Connection, msg: ServerRegistration) -> None:
        """Our uplink answered with its own registration: we are in."""
        server = self.server
        link: Link = conn.peer
        if server.config.secret is not None and not link.authenticated:
            log.error("%s: %s did not authenticate (it has no mesh secret, or is not a "
                      "CRC Mesh server); leaving it", server.name, conn.label)
            link.role = Role.DONE
            conn.close("uplink did not authenticate")
            return
        if link.auth is not None and msg.source != link.auth.peer_id:
            raise ProtocolError(f"uplink registered as {msg.source} after authenticating as "
                                f"{link.auth.peer_id}")
        link.auth = None
        try:
            uplink = server.routes.add(msg.source, Kind.SERVER, msg.name, msg.info,
                                     first_link=msg.source)
        except RoutingError as exc:
            raise ProtocolError(f"uplink registration refused: {exc}") from None
        self.warn_namesake(uplink)
        link.role = Role.SERVER
        link.peer_id = msg.source
        server.links[msg.source] = conn
        conn.label = f"server {msg.name}({msg.source})"
        log.info("%s: joined the mesh through %s (id %d)", server.name, msg.name, msg.source)
        server.joiner.joined()
        # Tell the uplink what we already know (nothing, on a fresh start),
        # and tell what we already have (servers that joined us meanwhile)
        # about the uplink; what lies beyond it follows as it arrives.
        uplink = server.routes.get(msg.source)
        for other in list(server.routes.hosts.values()):
            if other.id != msg.source:
                conn.send(server._registration(other))
        server._flood(server._registration(uplink), exclude=msg.source, servers=True)
        server.negotiation.offer(conn)
        server.negotiation.registered(link)

    def learn(self, conn: Connection, msg: ServerRegistration | ClientRegistration,
               kind: Kind) -> None:
        """A registration flooded from an adjacent server."""
        server = self.server
        link: Link = conn.peer
        host_id, name, info = msg.source, msg.name, msg.info
        if host_id == 0:
            log.warning("%s: ignoring a %s registration with id 0 (never a valid id) from %r",
                        server.name, kind.value, conn)
            return
        if server.routes.known(host_id):
            # A newcomer elsewhere took an id we know (or two halves of a
            # healing tree met while one still holds a departed host): it is
            # refused as at its own server, and nothing of it goes further.
            # The status goes back over the link it came on, where its id
            # leads to the newcomer, not to the machine we know by that id.
            log.warning("%s: refusing %s %r (id %d) announced by %r: id already registered",
                        server.name, kind.value, name, host_id, conn)
            conn.send(Status(server.id, host_id, StatusCode.DUPLICATE_ID,
                             duplicate_id_text(host_id, msg.type)))
            return
        try:
            host = server.routes.add(host_id, kind, name, info, first_link=link.peer_id)
        except RoutingError as exc:          # not a tree any more: refuse, keep the link
            log.warning("%s: ignoring registration of %s %d from %r: %s", server.name,
                        kind.value, host_id, conn, exc)
            return
        self.warn_namesake(host)
        server._flood(server._registration(host), exclude=link.peer_id, servers=True,
                    clients=kind is Kind.CLIENT and not host.quiet)

    def warn_namesake(self, host: Host) -> None:
        """Two servers of one name work, but ``--on NAME`` cannot choose
        between them and logs and tables confuse them: say so as it happens."""
        server = self.server
        if host.kind is not Kind.SERVER:
            return
        twins = len(server.routes.servers_named.get(host.name, ())) - 1 + (host.name == server.name)
        if twins == 1:                     # said when a name first becomes shared
            other = min(i for i in (*server.routes.servers_named[host.name], server.id)
                        if i != host.id and (i != server.id or host.name == server.name))
            log.warning("%s: server %d is named %r like server %d: give each server its own "
                        "--name (--on %r is ambiguous; use ids)", server.name, host.id, host.name,
                        other, host.name)
