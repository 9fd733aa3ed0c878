"""Where a user's meshcc agent listens: one Unix socket per mesh (and per set
of credentials) in a directory only that user can enter, with the agent's
process id beside it. Names only: creates nothing, and imports only ``os``
and ``zlib`` — every compile reads this on its way to the agent. Paths are
strings."""

from __future__ import annotations

import os
import zlib

#: The environment that names a mesh and how we prove ourselves to it.
MESH_ENV = ("CRC_MESH", "CRC_MESH_SECRET_FILE", "CRC_MESH_TLS_CA", "CRC_MESH_TLS_CERT",
            "CRC_MESH_TLS_KEY", "CRC_MESH_TLS_SERVER_NAME")


#: Set by the meshcc that starts an agent: the descriptor of the agent's lock
#: file, already locked (so that meshcc processes starting at once start one
#: agent, not one each).
LOCK_ENV = "CRC_MESHCC_AGENT_LOCK"

#: Longest socket path we use (``sun_path`` holds 108 bytes with its NUL).
MAX_SOCKET_PATH = 100


def _tag(text: str) -> str:
    data = text.encode("utf-8", "surrogateescape")
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def agent_dir() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    folder = os.path.join(base, f"crc-meshcc-{os.getuid()}")
    if len(folder) > MAX_SOCKET_PATH - 30:          # room for the socket's name
        folder = os.path.join("/tmp", f"crc-meshcc-{os.getuid()}-{_tag(base)[:8]}")
    return folder


def socket_path(environ: "dict[str, str] | os._Environ[str]" = os.environ) -> str:
    """The agent's socket for the mesh this environment names."""
    key = "\0".join(environ.get(k, "").strip() for k in MESH_ENV)
    return os.path.join(agent_dir(), f"agent-{_tag(key)}.sock")


def pid_file(path: str) -> str:
    """Where the agent serving ``path`` writes its process id (for its owner's
    tools and tests; the agent leaves by itself)."""
    return path[:-len(".sock")] + ".pid" if path.endswith(".sock") else path + ".pid"
