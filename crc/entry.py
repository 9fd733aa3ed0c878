"""The programs' entry points: ``mesh_server.py``, ``chat_client.py`` and
``TestManager.py`` at the top of the project, the ``crc-*`` commands of the
installed package, and ``python -m crc.server`` (``crc.client``,
``crc.scenarios``) all come here.

Each imports its command line only when run, so that a dependency that is
not installed is one clear line naming it and the command that installs it,
not a traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, NoReturn

INSTALL = "python -m pip install -r requirements.txt"


def _missing(exc: ModuleNotFoundError, program: str) -> NoReturn:
    """Name a dependency that is not installed (and exit 2); anything else re-raised."""
    if exc.name and exc.name.split(".")[0] != "crc":
        print(f"{program}: the Python package {exc.name!r} is not installed; install "
              f"what CRC Mesh needs with: {INSTALL} (or pip install crc-mesh)",
              file=sys.stderr)
        raise SystemExit(2) from None
    raise exc


def _main_of(module: str, program: str) -> Callable[..., int]:
    try:
        main = importlib.import_module(module).main
    except ModuleNotFoundError as exc:
        _missing(exc, program)

    def run(*args: object) -> int:
        # (Parts of a program load what they use when they first run.)
        try:
            return main(*args)
        except ModuleNotFoundError as exc:
            _missing(exc, program)
    return run


def server() -> int:
    """``mesh_server.py`` / ``crc-mesh-server`` / ``python -m crc.server``."""
    return _main_of("crc.server.cli", "mesh_server.py")()


def meshcc() -> int:
    """``meshcc.py`` / ``meshcc`` / ``python -m crc.cc``: a compiler wrapper."""
    return _main_of("crc.cc.wrapper", "meshcc")()


def chat() -> int:
    """``chat_client.py`` / ``crc-chat`` / ``python -m crc.client``."""
    return _main_of("crc.client.cli", "chat_client.py")()


def monitor(argv: list[str] | None = None) -> int:
    """``crc-monitor`` / ``python -m crc.client.monitor``: ``chat_client.py
    monitor`` (``--server`` defaults to ``$CRC_MESH``, as the client's)."""
    words = list(sys.argv[1:] if argv is None else argv)
    from .client.monitor import command_line
    return _main_of("crc.client.cli", "crc-monitor")(command_line(words))


def testmanager() -> int:
    """``TestManager.py`` / ``crc-testmanager`` / ``python -m crc.scenarios``."""
    return _main_of("crc.scenarios.cli", "TestManager.py")()
