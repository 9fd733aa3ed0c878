"""Accepting connections: the listening socket's handler.

Every pending connection is accepted at once, up to ``max_connections``
(more are closed, said at most once a second), and given the
``registration_timeout`` to register. When ``accept`` itself fails — out of
file descriptors leaves the connection pending, and the listener would wake
the loop in a tight spin — accepting stops for ``ACCEPT_PAUSE`` seconds
(connections in hand go on), said at most once a second.

It only lets peers in; what they may do is the server's.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
from typing import TYPE_CHECKING

from ..net.loop import ACCEPT_PAUSE, pause_listener
from .links import Link, Role

if TYPE_CHECKING:
    from .server import MeshServer

log = logging.getLogger("crc.server.server")     # the relay's log: one name for its parts

class Acceptor:
    def __init__(self, server: "MeshServer") -> None:
        self.server = server
        self.refused = 0                 # connections refused at the limit
        self.refused_logged = 0.0
        self.logged = -math.inf          # when an accept failure was last logged

    def __repr__(self) -> str:
        return f"<Acceptor {self.server.name}:{self.server.port}>"

    def handle_event(self, mask: int) -> None:
        self.server.accept(self.server.listener)

    def accept(self, listener: socket.socket) -> None:
        """Accept every pending connection on ``listener``."""
        server = self.server
        while True:
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.failed(exc)
                return
            if len(server.connections) >= server.config.max_connections:
                self.refused += 1
                if self.refused == 1 or server.loop.time() - self.refused_logged >= 1.0:
                    log.warning("%s: connection limit (%d, --max-connections) reached; refused "
                                "%s:%d (%d refused so far)", server.name,
                                server.config.max_connections, addr[0], addr[1], self.refused)
                    self.refused_logged = server.loop.time()
                sock.close()
                continue
            conn = server._new_connection(sock, Link(Role.PENDING), f"{addr[0]}:{addr[1]}",
                                          tls=server.config.tls.accept if server.config.tls
                                          else None)
            conn.peer.deadline = server.loop.call_later(server.config.registration_timeout,
                                                        server._registration_deadline, conn)

    def failed(self, exc: OSError) -> None:
        """``accept`` failed: out of descriptors (EMFILE, ENFILE) leaves the
        pending connection ready, and the listener would wake us in a tight
        loop. Stop listening for a moment (the connections in hand go on),
        and say so at most once a second."""
        server = self.server
        now = server.loop.time()
        if now - self.logged >= 1.0:
            log.warning("%s: accept failed: %s; not accepting for %.1f s (%s)", server.name,
                        exc.strerror or exc, ACCEPT_PAUSE,
                        "out of file descriptors: lower --max-connections or raise the "
                        "limit (ulimit -n)" if exc.errno in (errno.EMFILE, errno.ENFILE)
                        else "retrying")
            self.logged = now
        if server.listener is not None:
            pause_listener(server.loop, server.listener, self, ACCEPT_PAUSE)
