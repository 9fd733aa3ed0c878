"""The client: its engine (``core``) and the chat program around it.

``commands`` parses input lines, ``session`` runs them against the engine,
``tui`` presents events, ``inputs`` reads lines and ``cli`` wires them up.
``reliable`` is the client's side of reliable chat. ``batch`` is batch mode;
``job_commands`` and ``jobs_ui`` are the job commands and how jobs look, over
the job engine in ``jobs``.

Builds on ``crc.net``, ``crc.delivery``, ``crc.protocol``, ``crc.jobs`` and the
shared helpers. Never imports the server (a server is reached only over a
socket) nor the scenarios.
"""

from .core import ChatClient, ClientConfig, LookupFailed, User

__all__ = ["ChatClient", "ClientConfig", "LookupFailed", "User"]
