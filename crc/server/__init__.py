"""The relay server and its command line.

``server`` is the relay (``MeshServer``); each of its parts has a module:
``config``, ``links``, ``accepting``, ``joining``, ``admission``,
``gatekeeper``, ``negotiation``, ``registrations``, ``reliable``,
``liveness`` and ``state``. ``query`` is the asking side of the state query,
for tools; ``cli`` is ``mesh_server.py``; ``jobs`` is the job service.

Builds on ``crc.net``, ``crc.routing``, ``crc.delivery``, ``crc.protocol``,
``crc.jobs`` (in ``jobs``) and the shared helpers; never imports the client.
Nothing that runs in a server's loop blocks or starts a thread: sockets,
timers, child pipes and exits are all selector events (``query`` blocks and
is never used inside a loop; ``cli`` resolves names before the loop starts).
"""

from .server import Link, MeshServer, Role, ServerConfig

__all__ = ["Link", "MeshServer", "Role", "ServerConfig"]
