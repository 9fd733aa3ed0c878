"""The state query: a connection that asks (status STATE_QUERY) instead of
registering gets the server's view of the network as JSON, then is closed.

Used by the scenario manager's process mode and the benchmarks
(``crc.server.query`` is the asking side). With a mesh secret it is answered
only on this machine (loopback). Read-only: it changes nothing it reports.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..net import Connection
from ..protocol import Status, StatusCode
from ..routing import Kind
from .links import Role

if TYPE_CHECKING:
    from .server import MeshServer


def snapshot(server: "MeshServer") -> dict:
    """The server's view of the network, as plain data (the state query answer)."""
    routes = server.routes
    return {
        "id": server.id,
        "name": server.name,
        "port": server.port,
        "hosts_db": sorted(routes.hosts),
        "hosts": {str(h.id): {"kind": h.kind.value, "name": h.name, "info": h.info,
                              "first_link": h.first_link}
                  for h in routes.hosts.values()},
        "adjacent_server_ids": sorted(routes.adjacent(Kind.SERVER)),
        "adjacent_user_ids": sorted(routes.adjacent(Kind.CLIENT)),
        "status_updates_log": list(server.status_log),
        "extension_links": sorted(pid for pid, c in server.links.items() if c.peer.ext),
        # Traffic on the links to adjacent servers and clients open now.
        "bytes_in": sum(c.bytes_in for c in server.links.values()),
        "bytes_out": sum(c.bytes_out for c in server.links.values()),
    }


def answer(server: "MeshServer", conn: Connection) -> None:
    """Send the state to ``conn`` and close it (refused from afar with a secret)."""
    if server.config.secret is not None and not server.gate.is_local(conn):
        server.gate.refuse(conn, "state queries are answered only on this machine (loopback) "
                           "when the mesh has a secret", "asked for the state")
        return
    conn.peer.role = Role.CONTROL
    conn.send(Status(server.id, 0, StatusCode.STATE_REPLY, json.dumps(server.snapshot())))
    conn.close_after_flush("state query answered")
