"""Shared-secret authentication: the secret file, nonces, proofs, texts.

A mesh may have a *secret*: bytes every trusted server and client holds
(``--secret-file``). It never travels. A peer proves it knows the secret by
answering a fresh random nonce of the other side with

    HMAC-SHA256(secret, "CRC-MESH/1 auth ROLE CONNECTOR ACCEPTOR NC NA")

where CONNECTOR and ACCEPTOR are the ids of the side that opened the TCP
connection and of the side that accepted it (decimal), NC and NA their nonces
(64 hex digits each), and ROLE names which side is proving what:

* ``server-join``      a joining server, to the server it joins;
* ``server-accept``    the accepting server, to the joiner;
* ``server-to-client`` a server, to a client attached to it;
* ``client``           a client, to its server.

Different roles give different proofs, so no proof can be reflected back or
replayed in another step; a fresh nonce per connection on each side means no
proof is valid on another connection. The exchange itself (which status
carries what, and when) is in docs/protocol.md; this module has no I/O but
reading the secret file.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from .handshake import MAGIC, VERSION, parse_hello

log = logging.getLogger(__name__)

#: The only scheme there is; a challenge names it so later ones can be added.
SCHEME = "hmac-sha256"
MIN_SECRET = 16          # bytes
NONCE_BYTES = 32

JOIN = "server-join"
ACCEPT = "server-accept"
TO_CLIENT = "server-to-client"
CLIENT = "client"
ROLES = frozenset({JOIN, ACCEPT, TO_CLIENT, CLIENT})

#: Status texts a refused peer receives (besides the warning we log).
FAILED_TEXT = "authentication failed"
REQUIRED_TEXT = ("authentication required: this server admits only peers that know the "
                 "mesh secret (--secret-file)")
JOBS_TEXT = "this mesh requires authentication to run jobs (--secret-file)"


class SecretError(ValueError):
    """A secret file that cannot be used; the message names the file."""


def load_secret(path: str | os.PathLike) -> bytes:
    """The secret in ``path``, without its trailing newline(s).

    Refused (``SecretError``): a file that cannot be read, one that other
    users may read or write, one holding fewer than ``MIN_SECRET`` bytes.
    A file its group may read is used, with a warning.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise SecretError(f"secret file {path} is not a regular file")
        data = path.read_bytes()
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror or exc}") from None
    if mode & 0o007:
        raise SecretError(f"secret file {path} is accessible by other users (mode "
                          f"{stat.S_IMODE(mode):04o}); restrict it: chmod 600 {path}")
    if mode & 0o070:
        log.warning("secret file %s is accessible by its group (mode %04o); consider "
                    "chmod 600 %s", path, stat.S_IMODE(mode), path)
    secret = data.rstrip(b"\r\n")
    if len(secret) < MIN_SECRET:
        raise SecretError(f"secret file {path} holds {len(secret)} byte(s) (after its trailing "
                          f"newline); a mesh secret must have at least {MIN_SECRET}")
    return secret


def check_secret(secret: bytes | None) -> None:
    """``ValueError`` for a secret too short to use (None: no secret, fine)."""
    if secret is not None and len(secret) < MIN_SECRET:
        raise ValueError(f"a mesh secret must have at least {MIN_SECRET} bytes")


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def valid_nonce(text: object) -> bool:
    return (isinstance(text, str) and len(text) == 2 * NONCE_BYTES
            and all(c in "0123456789abcdef" for c in text))


def proof(secret: bytes, role: str, connector: int, acceptor: int, connector_nonce: str,
          acceptor_nonce: str) -> str:
    """The hex HMAC that shows knowledge of ``secret`` in ``role``."""
    if role not in ROLES:
        raise ValueError(f"unknown authentication role {role!r}")
    message = (f"{MAGIC}/{VERSION} auth {role} {connector} {acceptor} "
               f"{connector_nonce} {acceptor_nonce}").encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def proof_matches(expected: str, given: object) -> bool:
    """Constant-time comparison of a received proof with the expected one."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "replace"))


def auth_text(**fields: str) -> str:
    """``CRC-MESH/1 key=value ...``: the text of every authentication status."""
    return " ".join([f"{MAGIC}/{VERSION}", *(f"{k}={v}" for k, v in fields.items())])


def parse_auth(text: str) -> dict[str, str]:
    """The ``key=value`` fields of an authentication status (``ProtocolError``
    if it is not a ``CRC-MESH/`` text)."""
    return dict(parse_hello(text).fields)
