"""Extension negotiation on each link: the hello exchange (docs/protocol.md,
"Extension negotiation") and what each side tells the other of its limits.

The side that connected sends a hello addressed to itself once it is
registered; a plain v1 peer sends it straight back, a mesh peer answers with
a hello reply. Our reply to a client also carries what it should know: the
longest chat the mesh carries here (``max_chat``), the job quota, and (with a
mesh secret) our half of the client's authentication. Until a peer has
answered, or ``HELLO_SETTLE`` seconds have passed, whether it speaks
extensions is unsettled: reliable chats for it wait (``crc.server.reliable``).

This part decides what a hello means and answers it; it never routes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..net import Connection
from ..protocol import ClientRegistration, ProtocolError, Status, StatusCode, auth
from ..protocol.handshake import FEATURES, Hello, parse_hello
from .admission import ClientAuth
from .links import Link, Role
from .reliable import CHAT_OVERHEAD

if TYPE_CHECKING:
    from .server import MeshServer

log = logging.getLogger("crc.server.server")     # the relay's log: one name for its parts

#: A newly registered peer that has not exchanged hellos within this many
#: seconds is taken for plain CRC v1 (reliable chats to it go out as v1).
HELLO_SETTLE = 3.0


class Negotiation:
    def __init__(self, server: "MeshServer") -> None:
        self.server = server

    # -- our side -----------------------------------------------------------------

    def offer(self, conn: Connection) -> None:
        """Send our hello addressed to ourselves (echoed back by v1 peers)."""
        server = self.server
        conn.send(Status(server.id, server.id, StatusCode.MESH_HELLO,
                         Hello(role="server", fields=self.limit_fields()).text()))

    def max_chat(self) -> int:
        """The longest chat text (bytes) we take and our mesh neighbours said
        they can carry on: what a client is told it may send."""
        server = self.server
        limits = server.config.limits
        own = min(limits.max_text, limits.max_payload - CHAT_OVERHEAD)
        return min([own, *(c.peer.max_chat for c in server.links.values()
                           if c.peer.ext and c.peer.role is Role.SERVER)])

    def limit_fields(self) -> dict[str, str]:
        return {"max_frame": str(self.server.config.limits.max_payload),
                "max_chat": str(self.max_chat())}

    @staticmethod
    def learn_limits(link: Link, hello: Hello) -> None:
        """What the peer said it accepts (absent: the defaults every version has)."""
        for name in ("max_frame", "max_chat"):
            value = hello.fields.get(name, "")
            if value.isascii() and value.isdigit():
                setattr(link, name, int(value))

    # -- settling -----------------------------------------------------------------

    def registered(self, link: Link) -> None:
        """``link``'s peer is admitted: its deadline is met, and if no hello
        comes within ``HELLO_SETTLE`` s it is taken for plain CRC v1."""
        if link.deadline is not None:
            link.deadline.cancel()
            link.deadline = None
        link.settle_at = self.server.loop.time() + HELLO_SETTLE

    def settled(self, link: Link) -> bool:
        """Whether ``link``'s peer is known to speak extensions or not."""
        return link.settled or self.server.loop.time() >= link.settle_at

    # -- their side -----------------------------------------------------------------

    def on_hello(self, conn: Connection, msg: Status) -> None:
        server = self.server
        link: Link = conn.peer
        if msg.source == server.id and msg.dest == server.id:
            log.info("%s: %r is a plain CRC v1 peer; no extensions on this link", server.name,
                     conn)
            link.settled = True
            server.reliable.flush(conn)
            return
        unverified = link.role is Role.AUTH and isinstance(
            link.auth and link.auth.pending, ClientRegistration)
        if (link.role not in (Role.SERVER, Role.CLIENT) and not unverified) \
                or msg.source != link.peer_id or msg.dest != link.peer_id:
            raise ProtocolError("mesh hello from someone other than the adjacent peer")
        hello = parse_hello(msg.text)
        fields: dict[str, str] = {}
        secret = server.config.secret
        if secret is not None and link.role is not Role.SERVER and not link.authenticated:
            state = link.auth if isinstance(link.auth, ClientAuth) else \
                ClientAuth(secret, server.id, link.peer_id)
            proving = state.on_hello(hello.fields)
            if proving is not None:
                link.auth = state      # prove ourselves; the client answers with its proof
                fields = proving
            elif unverified:
                server.gate.refuse(conn, auth.REQUIRED_TEXT,
                                   "offered no authentication in its hello")
                return
        link.features = hello.features & FEATURES
        self.learn_limits(link, hello)
        fields.update(self.limit_fields())
        if link.role is not Role.SERVER:
            fields.update(server.hello_fields)
        conn.send(Status(server.id, link.peer_id, StatusCode.MESH_HELLO_REPLY,
                         Hello(role="server", features=link.features, fields=fields).text()))
        if not unverified:
            self.extensions_up(conn)       # else once it is admitted

    def on_hello_reply(self, conn: Connection, msg: Status) -> None:
        link: Link = conn.peer
        if link.role is not Role.SERVER or msg.source != link.peer_id:
            raise ProtocolError("mesh hello reply from someone other than the adjacent peer")
        hello = parse_hello(msg.text)
        link.features = hello.features & FEATURES
        self.learn_limits(link, hello)
        self.extensions_up(conn)

    def extensions_up(self, conn: Connection) -> None:
        server = self.server
        link: Link = conn.peer
        link.ext = link.settled = True
        conn.decoder.allow_in_place = True
        log.info("%s: extensions on %r: %s", server.name, conn, ",".join(sorted(link.features)))
        for listener in server.extension_link_listeners:
            listener(conn)
        server.reliable.flush(conn)
