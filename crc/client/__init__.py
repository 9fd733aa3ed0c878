"""The client: its engine (``core``) and the chat program around it.

``commands`` parses input lines, ``session`` runs them against the engine,
``tui`` presents events, ``inputs`` reads lines and ``cli`` wires them up.
"""

from .core import ChatClient, ClientConfig, LookupFailed, User

__all__ = ["ChatClient", "ClientConfig", "LookupFailed", "User"]
