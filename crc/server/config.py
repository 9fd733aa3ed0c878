"""What a relay server is told at start: ``ServerConfig``, and what counts as
"this machine" (loopback) for the rules about who may run jobs.

Plain data and checks on it; nothing here opens a socket or logs.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..protocol import (DEFAULT_LIMITS, MAX_INFO, MAX_NAME, Limits, auth, field_problem,
                        random_id)

if TYPE_CHECKING:
    from ..net.tls import ServerTLS


def is_loopback(address: Any) -> bool:
    """Whether a socket peer address is this machine's loopback (a Unix
    socket, as from ``socketpair``, counts as local too)."""
    if isinstance(address, (str, bytes)):
        return True                      # AF_UNIX
    if not isinstance(address, tuple) or not address:
        return False
    try:
        ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def is_loopback_host(host: str) -> bool:
    """Whether a listen address (``--host``) is loopback only."""
    return host == "localhost" or is_loopback((host, 0))


PLAIN_CLIENT_POLICIES = ("allow", "deny")


@dataclass
class ServerConfig:
    port: int
    id: int = 0                        # 0: pick a random id
    name: str = ""
    info: str = ""
    host: str = "127.0.0.1"
    connect: tuple[str, int] | None = None
    limits: Limits = DEFAULT_LIMITS
    #: A peer whose unsent backlog passes this is dropped (half of it: we stop
    #: reading from it until it has caught up).
    max_send_buffer: int = 64 * 1024 * 1024
    max_connections: int = 2048
    #: A new connection must register (or ask for the state) within this.
    registration_timeout: float = 10.0
    #: A quiet mesh link is pinged after ``keepalive`` seconds and dropped
    #: after ``dead_after`` seconds without a byte from it.
    keepalive: float = 5.0
    dead_after: float = 15.0
    #: More servers to join through, tried in turn after ``connect``.
    candidates: tuple[tuple[str, int], ...] = ()
    #: On losing (or failing to make) the uplink, try the next candidate,
    #: waiting ``rejoin_delay`` seconds, doubling up to ``rejoin_max_delay``.
    rejoin: bool = False
    rejoin_delay: float = 0.2
    rejoin_max_delay: float = 10.0
    #: The server we join must answer our registration within this, else the
    #: next candidate is tried (a frozen process accepts and never answers).
    join_timeout: float = 5.0
    #: Candidate host names resolved to addresses before the loop started
    #: (the CLI does it): the loop never waits on a name lookup.
    addresses: dict[str, str] = field(default_factory=dict)
    #: The mesh secret (``--secret-file``): servers must prove it to link,
    #: clients to run jobs. None: no authentication, jobs for loopback only.
    secret: bytes | None = field(default=None, repr=False)
    #: With a secret: whether clients that do not prove it may chat.
    plain_clients: str = "allow"
    #: Without a secret: run jobs for non-loopback clients and servers too.
    insecure_remote_jobs: bool = False
    #: Whether a peer address is this machine (replaceable in tests).
    is_local: Callable[[Any], bool] = field(default=is_loopback, repr=False)
    #: TLS on every link (``crc.net.tls.server_tls``): accepted connections and
    #: uplinks alike. None: plain TCP.
    tls: "ServerTLS | None" = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = random_id()
        if not self.name:
            self.name = f"server-{self.id}"
        for what, text, limit in (("name", self.name, MAX_NAME), ("info", self.info, MAX_INFO)):
            problem = field_problem(what, text, limit)
            if problem:
                raise ValueError(problem)
        auth.check_secret(self.secret)
        if self.plain_clients not in PLAIN_CLIENT_POLICIES:
            raise ValueError(f"plain_clients must be one of {', '.join(PLAIN_CLIENT_POLICIES)}, "
                             f"not {self.plain_clients!r}")
