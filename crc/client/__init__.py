"""The client: its engine (``core``) and the terminal UI (``tui``)."""

from .core import ChatClient, ClientConfig, LookupFailed, User

__all__ = ["ChatClient", "ClientConfig", "LookupFailed", "User"]
