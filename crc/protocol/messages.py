"""The messages of the CRC wire protocol, as plain immutable values.

This module owns the vocabulary only: what each message carries and the
numbers that identify it on the wire. It never encodes, decodes or touches a
socket (see ``codec``).

CRC v1 types (0x00, 0x01, 0x80-0x82) are understood by every peer. ``ServerQuit``
(0x02) is optional in v1 and ``Extension`` (0x40) is ours: both are sent only
over a link whose peer has completed the extension handshake (docs/protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass
import random
from enum import IntEnum

__all__ = [
    "MsgType", "StatusCode", "MAX_ID", "MAX_NAME", "MAX_INFO", "field_problem", "random_id", "welcome_text", "unknown_id_text",
    "duplicate_id_text", "duplicate_id_of",
    "ServerRegistration", "ClientRegistration", "Status", "ServerQuit", "ClientChat",
    "ClientQuit", "Extension", "FLAG_BULK", "LinkKind", "Message", "V1_TYPES",
]


class MsgType(IntEnum):
    SERVER_REGISTRATION = 0x00
    STATUS = 0x01
    SERVER_QUIT = 0x02
    EXTENSION = 0x40
    CLIENT_REGISTRATION = 0x80
    CLIENT_CHAT = 0x81
    CLIENT_QUIT = 0x82


class StatusCode(IntEnum):
    WELCOME = 0x0000
    UNKNOWN_ID = 0x0001
    DUPLICATE_ID = 0x0002
    # Ours, in a range no v1 peer assigns meaning to (docs/protocol.md).
    MESH_HELLO = 0x8001        # extension offer, addressed to its own sender
    MESH_HELLO_REPLY = 0x8002  # the offer accepted: the link speaks extensions
    AUTH_CHALLENGE = 0x8003    # "prove you know the mesh secret": our nonce
    AUTH_PROOF = 0x8004        # the answer: a proof (and, from a joiner, its nonce)
    AUTH_OK = 0x8005           # proof accepted (to a joiner: with our own proof)
    AUTH_REFUSED = 0x8006      # authentication failed or missing; the link closes
    STATE_QUERY = 0x8010       # control connection: "send me your state"
    STATE_REPLY = 0x8011       # JSON text of the state


#: Ids are unsigned 32-bit; 0 means "none" / "whoever receives this".
MAX_ID = 0xFFFFFFFF
#: A registration's name and info lengths are a byte and a half on the wire.
MAX_NAME = 0xFF
MAX_INFO = 0xFFFF


def field_problem(what: str, text: str, limit: int) -> str | None:
    """Why ``text`` cannot go on the wire as a registration's ``what`` (name
    or info): not encodable as UTF-8, or over ``limit`` bytes; None if it can."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape")
        return f"the {what} {shown!r} is not valid UTF-8"
    if size > limit:
        return f"the {what} is {size} bytes of UTF-8; the limit is {limit}"
    return None

_random = random.SystemRandom()


def random_id() -> int:
    """A random valid id (never 0)."""
    return _random.randint(1, MAX_ID)


def welcome_text(name: str) -> str:
    return f"Welcome to the Clemson Relay Chat network {name}"


def unknown_id_text(dest: int) -> str:
    return f"Unknown ID {dest}"


#: The duplicate-id texts, by the kind of the *newcomer* (the registration it
#: sent), never by the kind of the machine that holds the id already: CRC v1
#: servers and the course's scenario files expect exactly these.
_DUPLICATE_TEXTS = {
    MsgType.SERVER_REGISTRATION: "A machine has already registered with ID {}",
    MsgType.CLIENT_REGISTRATION: "Someone has already registered with ID {}",
}


def duplicate_id_text(host_id: int, newcomer: MsgType) -> str:
    """The duplicate-id status text for a newcomer that sent a registration
    of type ``newcomer`` (``MsgType.SERVER_REGISTRATION`` or
    ``MsgType.CLIENT_REGISTRATION``) with ``host_id``."""
    try:
        return _DUPLICATE_TEXTS[newcomer].format(host_id)
    except KeyError:
        raise ValueError(f"{newcomer!r} is not a registration type") from None


def duplicate_id_of(text: str) -> int | None:
    """The id a duplicate-id status text names (either kind's text), or None
    if ``text`` is not one."""
    for template in _DUPLICATE_TEXTS.values():
        prefix = template[:-2]
        if text.startswith(prefix):
            number = text[len(prefix):]
            if number.isascii() and number.isdigit():
                return int(number)
    return None


@dataclass(frozen=True, slots=True)
class ServerRegistration:
    source: int
    last_hop: int
    name: str
    info: str
    type = MsgType.SERVER_REGISTRATION


@dataclass(frozen=True, slots=True)
class ClientRegistration:
    source: int
    last_hop: int
    name: str
    info: str
    type = MsgType.CLIENT_REGISTRATION


@dataclass(frozen=True, slots=True)
class Status:
    source: int
    dest: int
    code: int
    text: str
    type = MsgType.STATUS


@dataclass(frozen=True, slots=True)
class ServerQuit:
    source: int
    replacement: int
    text: str
    type = MsgType.SERVER_QUIT


@dataclass(frozen=True, slots=True)
class ClientChat:
    source: int
    dest: int
    text: str
    type = MsgType.CLIENT_CHAT


@dataclass(frozen=True, slots=True)
class ClientQuit:
    source: int
    text: str
    type = MsgType.CLIENT_QUIT


#: Extension frame flag: carry in every link's low-priority (bulk) queue.
FLAG_BULK = 0x01


class LinkKind(IntEnum):
    """Extension kinds of the link itself (destination 0: the adjacent peer).
    Subsystems number their kinds below 0x100 (jobs: crc/jobs/wire.py)."""

    PING = 0x100               # "are you there?" after a quiet interval
    PONG = 0x101               # the answer


@dataclass(frozen=True, slots=True)
class Extension:
    """A routed binary frame between mesh-aware peers.

    ``kind`` says what the payload is (load report, job, file chunk, ...);
    ``dest`` 0 means "for the adjacent peer itself" (link-local).
    """

    kind: int
    source: int
    dest: int
    flags: int
    payload: bytes
    type = MsgType.EXTENSION


Message = (ServerRegistration | ClientRegistration | Status | ServerQuit
           | ClientChat | ClientQuit | Extension)

#: Messages a plain CRC v1 peer can parse.
V1_TYPES = frozenset({MsgType.SERVER_REGISTRATION, MsgType.STATUS,
                      MsgType.CLIENT_REGISTRATION, MsgType.CLIENT_CHAT,
                      MsgType.CLIENT_QUIT})
