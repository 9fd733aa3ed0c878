"""Reliable chats (crc/delivery) passing through a relay server.

A CHAT frame on its way to someone else is, in order of preference:

* passed on as it came, when the next link speaks reliable chat;
* held, when the next link's peer has not answered our hello yet (it may
  speak them in a moment: handing the chat over as v1 now could show it
  twice once a resend arrives as a reliable chat) — within per-link and
  total caps, a resend of a held chat adding nothing; the held chats go on,
  or over as v1, the moment the hello is answered;
* handed over as a plain v1 chat, acknowledged on the receiver's behalf,
  when the next link is plain v1;
* refused for good (REFUSED) when it is larger than the next link takes;
* refused for now (NACK, ``Unknown ID``) when nobody is there.

Never on the relay's hot path (v1 chats): this is the tap for CHAT frames.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from ..delivery.wire import ChatKind, pack_ack, pack_nack, unpack_chat
from ..net import Connection
from ..protocol import ClientChat, EncodeError, Extension, ProtocolError, unknown_id_text
from .links import Link, Role

if TYPE_CHECKING:
    from .server import MeshServer

log = logging.getLogger("crc.server.server")     # the relay's log: one name for its parts

#: At most this many bytes of reliable chats wait per link for its hello,
#: and in all (plain v1 clients never answer it: a crowd of them must not
#: make the server hold much); more are dropped, and their senders resend.
HELD_MAX = 256 * 1024
HELD_TOTAL = 8 << 20
#: Bytes a reliable chat's frame carries besides its text (stream, seq, base).
CHAT_OVERHEAD = 24


class ReliableRelay:
    """The CHAT tap of one server, and the chats it holds for pending hellos."""

    def __init__(self, server: "MeshServer") -> None:
        self.server = server
        self.held_total = 0             # bytes held for all links (HELD_TOTAL)

    def relay(self, conn: Connection, msg: Extension) -> bool:
        """A reliable chat on its way to ``msg.dest`` (consumed here: True)."""
        server = self.server
        if not server._check_source(conn, msg.source, "chat"):
            return True
        target = server._link_towards(msg.dest)
        if target is not None and target.peer.held:
            self.flush(target)            # those held before go first, if it is time
        if target is not None and len(msg.payload) > target.peer.max_frame:
            self.refuse(msg, f"too large for the link from {server.name} to "
                             f"{target.label} ({len(msg.payload) - CHAT_OVERHEAD} bytes of "
                             f"text; it takes at most {target.peer.max_frame - CHAT_OVERHEAD})")
            return True
        if target is not None and "rchat" in target.peer.features:
            target.send(msg)
            return True
        if target is not None and not server.negotiation.settled(target.peer):
            # Its hello may yet come; it waits (a link that just joined answers
            # within milliseconds); past the cap it is dropped and resent after
            # the sender's interval.
            self.hold(target, msg)
            return True
        self.hand_over(target, msg)
        return True

    def refuse(self, msg: Extension, reason: str) -> None:
        """A reliable chat that can never be carried: its sender is told so
        (REFUSED), drops it and goes on with the ones behind it."""
        try:
            stream, seq, _, _ = unpack_chat(msg.payload)
        except ProtocolError:
            return
        server = self.server
        log.warning("%s: refusing a reliable chat from %d to %d: %s", server.name, msg.source,
                    msg.dest, reason)
        server.send_extension(Extension(ChatKind.REFUSED, server.id, msg.source, 0,
                                        pack_nack(stream, seq, reason)))

    def hand_over(self, target: Connection | None, msg: Extension) -> None:
        """A reliable chat where the next link does not speak them: as v1 with an
        acknowledgement on the receiver's behalf, or refused if nobody is there."""
        server = self.server
        try:
            stream, seq, _, text = unpack_chat(msg.payload)
        except ProtocolError as exc:        # the sender's fault, not the adjacent link's
            log.warning("%s: dropping a reliable chat from %d: %s", server.name, msg.source, exc)
            return
        if target is None:
            reply = Extension(ChatKind.NACK, server.id, msg.source, 0,
                              pack_nack(stream, seq, unknown_id_text(msg.dest)))
        else:
            try:
                target.send(ClientChat(msg.source, msg.dest, text))
            except EncodeError as exc:
                log.warning("%s: reliable chat from %d to %d cannot go out as CRC v1: %s",
                            server.name, msg.source, msg.dest, exc)
                return
            reply = Extension(ChatKind.ACK, msg.dest, msg.source, 0, pack_ack(stream, seq))
        server.send_extension(reply)

    def hold(self, target: Connection, msg: Extension) -> None:
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
                or self.held_total + size > HELD_TOTAL:
            return
        loop = self.server.loop
        if not link.held and math.isfinite(link.settle_at):
            loop.call_later(max(0.0, link.settle_at - loop.time()), self.flush, target)
        link.held[key] = msg
        link.held_bytes += size
        self.held_total += size

    def flush(self, conn: Connection) -> None:
        """The reliable chats held for ``conn``'s peer, once its hello is answered:
        sent on if it speaks them, handed over as v1 if not. If the time limit
        passed in silence they are dropped instead: their senders resend them
        and each is handed over then, as before (converting the held copies
        now could race a resend already on its way and show a chat twice)."""
        link: Link = conn.peer
        if not link.held or not self.server.negotiation.settled(link):
            return
        self.held_total -= link.held_bytes
        held, link.held, link.held_bytes = link.held, {}, 0
        if not link.settled or conn.closed or link.role not in (Role.SERVER, Role.CLIENT):
            return
        for msg in held.values():
            if "rchat" in link.features:
                conn.send(msg)
            else:
                self.hand_over(conn, msg)
