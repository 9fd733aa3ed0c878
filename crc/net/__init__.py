"""The event loop and the connections it drives.

``loop`` (``EventLoop``: the selector, timers, callbacks), ``connection`` (one
TCP connection: buffers, framing, teardown), ``tls`` (the same over TLS,
and its settings) and ``heap`` (the C heap's thresholds for megabyte file
chunks).

Imports only ``crc.protocol`` (a connection frames messages with its codec):
nothing here knows servers, clients, routes or jobs.
"""

from .connection import Connection, ConnectionOwner
from .loop import EventLoop, Timer

__all__ = ["Connection", "ConnectionOwner", "EventLoop", "Timer"]
