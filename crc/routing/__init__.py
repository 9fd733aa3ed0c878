"""Routing state: which adjacent link reaches each known machine.

``table`` holds it (``RoutingTable``). Imports nothing else of ``crc``: no
sockets and no loop here; the server maps first links to connections.
"""

from .table import QUIET_INFO, Host, Kind, RoutingError, RoutingTable

__all__ = ["Host", "Kind", "RoutingError", "RoutingTable"]
