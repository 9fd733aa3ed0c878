"""Keepalives: is each mesh link still there?

TCP can stay silent for minutes about a peer that is gone (a pulled cable, a
frozen host); a mesh link is not trusted longer than ``dead_after`` without
a byte from the other end. Every ``keepalive`` seconds of quiet an extension
link is pinged (its PONG, or anything else it sends, refreshes it). Plain v1
peers cannot answer pings: their sockets get TCP keepalives instead
(``crc.net.connection.tcp_keepalive``).

A server that itself did not run for a while (stopped, starved of CPU) would
see every link silent: what its peers sent meanwhile is still unread in the
socket buffers, and a poll after a stop may report no events at all. The
tick notices the gap in its own schedule and pings everyone first; a link is
judged only if it stays silent for the rest of ``dead_after``.

This part only pings and judges: a dead link is closed through
``MeshServer.drop``, and its routes and departures are the server's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..protocol import Extension, LinkKind
from .links import Link, Role

if TYPE_CHECKING:
    from .server import MeshServer

log = logging.getLogger("crc.server.server")     # the relay's log: one name for its parts


class Liveness:
    def __init__(self, server: "MeshServer") -> None:
        self.server = server
        self.tick_due = 0.0              # when the tick should run next

    def period(self) -> float:
        config = self.server.config
        return max(0.05, min(config.keepalive, config.dead_after / 3))

    def start(self) -> None:
        loop = self.server.loop
        self.tick_due = loop.time() + self.period()
        loop.call_later(self.period(), self.server._keepalive_tick)

    def tick(self) -> None:
        """Ping quiet extension links; drop those silent for ``dead_after``."""
        server = self.server
        config = server.config
        now = server.loop.time()
        period = self.period()
        stalled = now - self.tick_due
        if stalled > max(1.0, period):
            # We ourselves did not run: our silence is not theirs. Each link is
            # pinged now and judged only if it stays silent for the rest of
            # --dead-after.
            log.warning("%s: this server did not run for %.1f s; every link gets %.0f s to be "
                        "heard before it is judged", server.name, stalled + period,
                        config.dead_after - config.keepalive)
            for conn in server.connections:
                conn.last_received = max(conn.last_received, now - config.keepalive)
        self.tick_due = now + period
        for conn in list(server.connections):
            link: Link = conn.peer
            if conn.closed or not link.ext or link.role not in (Role.SERVER, Role.CLIENT):
                continue
            quiet = now - conn.last_received
            if quiet >= config.dead_after:
                server.drop(conn, f"nothing received for {quiet:.1f} s (keepalive timeout, "
                                  "--dead-after)")
            elif quiet >= config.keepalive:
                link.pings += 1
                conn.send(Extension(LinkKind.PING, server.id, 0, 0, b""))
        server.loop.call_later(period, server._keepalive_tick)
