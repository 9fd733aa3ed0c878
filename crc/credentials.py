"""What both programs read before anything starts: the TLS settings and the
mesh secret their flags name. A file that cannot be used is a
``StartupError`` naming the flag and the file, said once at start — never a
failed handshake later. Loads ``ssl`` only when a TLS flag is given; starts
nothing and opens no socket."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from .protocol.auth import SecretError, load_secret


class StartupError(Exception):
    """A flag's file cannot be used; the message names the flag and the file."""


def credentials(args: argparse.Namespace, tls_flags: tuple[str, ...],
                tls_from_args: Callable[[argparse.Namespace], Any]) -> tuple[Any, bytes | None]:
    """The TLS settings and the mesh secret the flags ask for, read before
    anything starts (``ssl`` is loaded only when a TLS flag is given)."""
    tls = None
    if any(getattr(args, flag) for flag in tls_flags):
        from .net.tls import TLSConfigError
        try:
            tls = tls_from_args(args)
        except TLSConfigError as exc:
            raise StartupError(str(exc)) from None
    try:
        secret = load_secret(args.secret_file) if args.secret_file else None
    except SecretError as exc:
        raise StartupError(str(exc)) from None
    return tls, secret
