"""Texts of the extension handshake carried in CRC v1 status messages.

The handshake must be invisible to plain v1 peers, so it rides in a message
they already parse and never log: a status whose *destination is its own
sender*. A v1 peer forwards such a status back along the link it came from
(the sender is adjacent), and the sender, seeing its own hello return, knows
the link is plain v1. A mesh peer answers instead with a hello reply. See
docs/protocol.md for the whole exchange.

Text form: ``CRC-MESH/<version> key=value key=value ...``; unknown keys are
ignored, so later versions can add fields without breaking older peers.

Texts only: this module sends nothing and decides nothing about a link (the
server's ``negotiation`` and the client's core do).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .codec import ProtocolError

MAGIC = "CRC-MESH"
VERSION = 1

#: What this implementation understands on an extension link.
#:   depart - server departure (0x02) when a subtree is lost
#:   ext    - extension frames (0x40)
#:   rchat  - reliable chat frames (crc/delivery) for this peer
FEATURES = frozenset({"depart", "ext", "rchat"})


@dataclass(frozen=True)
class Hello:
    version: int = VERSION
    role: str = "server"
    features: frozenset[str] = FEATURES
    fields: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        parts = [f"{MAGIC}/{self.version}", f"role={self.role}",
                 "features=" + ",".join(sorted(self.features))]
        parts += [f"{k}={v}" for k, v in sorted(self.fields.items())]
        return " ".join(parts)


def parse_hello(text: str) -> Hello:
    tokens = text.split()
    if not tokens or not tokens[0].startswith(MAGIC + "/"):
        raise ProtocolError(f"not a mesh hello: {text[:60]!r}")
    try:
        version = int(tokens[0].split("/", 1)[1])
    except ValueError:
        raise ProtocolError(f"bad mesh hello version in {tokens[0]!r}") from None
    values: dict[str, str] = {}
    for tok in tokens[1:]:
        key, sep, value = tok.partition("=")
        if sep:
            values[key] = value
    role = values.pop("role", "server")
    features = frozenset(f for f in values.pop("features", "").split(",") if f)
    return Hello(version, role, features, values)
