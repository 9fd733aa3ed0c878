"""The relay server and its command line."""

from .server import Link, MeshServer, Role, ServerConfig

__all__ = ["Link", "MeshServer", "Role", "ServerConfig"]
