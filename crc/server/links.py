"""What a relay server knows about each adjacent connection: its ``Role``
and its ``Link`` state (who is there, whether it speaks extensions, what it
said its limits are, an authentication under way, chats held for it).

Plain data, one ``Link`` per ``Connection`` (``Connection.peer``); the
server and its parts change it, nothing here acts.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..protocol import DEFAULT_LIMITS, Extension

if TYPE_CHECKING:
    from ..net.loop import Timer
    from .admission import Authentication


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
    #: by its own answer); see ``Negotiation.settled`` for the time limit.
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
    #: An authentication exchange under way (``crc.server.admission``).
    auth: "Authentication | None" = None
    local: bool | None = None      # peer address is loopback (worked out once)

    def __repr__(self) -> str:
        return f"<Link {self.role.value} id={self.peer_id} {'ext' if self.ext else 'v1'}>"
