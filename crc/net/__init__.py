"""The event loop and the connections it drives."""

from .connection import Connection, ConnectionOwner
from .loop import EventLoop, Timer

__all__ = ["Connection", "ConnectionOwner", "EventLoop", "Timer"]
