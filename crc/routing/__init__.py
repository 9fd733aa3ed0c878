"""Routing state: which adjacent link reaches each known machine."""

from .table import Host, Kind, RoutingError, RoutingTable

__all__ = ["Host", "Kind", "RoutingError", "RoutingTable"]
