"""Who gets in, and who may run jobs: the relay's side of authentication.

The protocol rules live in ``crc.server.admission`` (state machines, messages
in and out); this part runs them on real links: it starts a challenge, feeds
each authentication status to the link's machine, and applies the outcome —
sends what it says, admits a waiting registration, refuses (an AUTH_REFUSED,
then the link closes), or leaves an uplink that failed. It also holds the
trust rules: with a mesh secret, jobs only from authenticated peers; without
one, only over loopback unless ``insecure_remote_jobs`` (docs/security.md).

It must not route, flood or keep routing state: admitting goes back to the
server (``MeshServer._admit``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..net import Connection
from ..protocol import (ClientRegistration, ProtocolError, ServerRegistration, Status,
                        StatusCode, auth, welcome_text)
from ..routing import Kind
from .admission import ClientAuth, JoinerAuth, Outcome, ServerAuth
from .config import is_loopback_host
from .links import Link, Role

if TYPE_CHECKING:
    from .server import MeshServer

log = logging.getLogger("crc.server.server")     # the relay's log: one name for its parts


class Gatekeeper:
    def __init__(self, server: "MeshServer") -> None:
        self.server = server

    # -- naming and refusing ------------------------------------------------------

    def who(self, conn: Connection) -> str:
        """A peer as a log line should name it: what it claims, and its address."""
        link: Link = conn.peer
        pending = link.auth.pending if link.auth is not None else None
        if pending is not None:
            kind = "server" if isinstance(pending, ServerRegistration) else "client"
            claim = f"{kind} {pending.name!r} (id {pending.source})"
        elif link.peer_id:
            claim = f"{link.role.value} {link.peer_id}"
        else:
            claim = "a peer"
        address = conn.peer_address
        if isinstance(address, tuple) and len(address) >= 2:
            return f"{claim} from {address[0]}:{address[1]}"
        return f"{claim} ({conn.label})"

    def refuse(self, conn: Connection, text: str, why: str) -> None:
        """Close ``conn`` after a status saying ``text`` (what the peer is told);
        ``why`` goes into our warning."""
        server = self.server
        link: Link = conn.peer
        pending = link.auth.pending if link.auth is not None else None
        dest = pending.source if pending is not None else link.peer_id
        log.warning("%s: %s %s: %s; closing", server.name, self.who(conn), why, text)
        server.stats.refused += 1
        conn.send(Status(server.id, dest, StatusCode.AUTH_REFUSED, text))
        link.role = Role.DONE
        link.auth = None
        conn.close_after_flush(text)

    # -- starting -------------------------------------------------------------------

    def challenge(self, conn: Connection, msg: ServerRegistration) -> None:
        """A server registered on a mesh with a secret: nothing of it is recorded
        until it answers our nonce with a proof."""
        server = self.server
        link: Link = conn.peer
        link.role = Role.AUTH
        link.auth = machine = ServerAuth(server.config.secret, server.id, msg)
        log.info("%s: challenging %s", server.name, self.who(conn))
        conn.send(machine.challenge())

    def welcome_unverified(self, conn: Connection, msg: ClientRegistration) -> None:
        """``plain_clients="deny"``: welcome a client (it sends its hello only
        then) but record and announce it only once it has proved the secret."""
        server = self.server
        link: Link = conn.peer
        if server.registrations.refuse_duplicate(conn, msg, Kind.CLIENT):
            return
        link.role = Role.AUTH
        link.peer_id = msg.source
        link.auth = ClientAuth(server.config.secret, server.id, msg.source, pending=msg)
        conn.label = f"client {msg.name}({msg.source})"
        conn.send(Status(server.id, msg.source, StatusCode.WELCOME, welcome_text(msg.name)))

    # -- each status of the exchange --------------------------------------------------

    def on_auth(self, conn: Connection, msg: Status) -> None:
        link: Link = conn.peer
        code = msg.code
        machine = link.auth
        if link.role is Role.JOINING and code == StatusCode.AUTH_CHALLENGE:
            if machine is None:
                link.auth = machine = JoinerAuth(self.server.config.secret, self.server.id)
            if not isinstance(machine, JoinerAuth):
                raise ProtocolError("authentication challenge for another id, or a second one")
            self._joiner(conn, machine.on_challenge(msg))
        elif link.role is Role.JOINING and code == StatusCode.AUTH_OK:
            if not isinstance(machine, JoinerAuth):
                raise ProtocolError("authentication accepted without a challenge")
            self._joiner(conn, machine.on_accepted(msg))
        elif code == StatusCode.AUTH_PROOF and link.role is Role.AUTH \
                and isinstance(machine, ServerAuth):
            outcome = machine.on_proof(msg)
            if self._verdict(conn, outcome):
                joiner = machine.pending
                log.info("%s: server %r (id %d) authenticated", self.server.name, joiner.name,
                         joiner.source)
                self.server.registrations.admit(conn, joiner, Kind.SERVER)
        elif code == StatusCode.AUTH_PROOF and link.role in (Role.AUTH, Role.CLIENT) \
                and isinstance(machine, ClientAuth) and machine.peer_nonce:
            pending = machine.pending
            if self._verdict(conn, machine.on_proof(msg), client=True):
                if link.role is Role.AUTH and pending is not None:
                    self.server.registrations.admit(conn, pending, Kind.CLIENT, welcomed=True)
                    if link.role is Role.CLIENT:
                        self.server.negotiation.extensions_up(conn)
        else:
            raise ProtocolError(f"unexpected authentication status {code:#06x} on a "
                                f"{link.role.value} link")

    def _verdict(self, conn: Connection, outcome: Outcome, client: bool = False) -> bool:
        """Apply an acceptor's outcome; True if the peer is now authenticated."""
        link: Link = conn.peer
        if outcome.result == "refused":
            self.refuse(conn, outcome.text, outcome.reason)
            return False
        link.auth = None
        link.authenticated = True
        if client:
            log.info("%s: client %d authenticated", self.server.name, link.peer_id)
        for status in outcome.send:
            conn.send(status)
        return True

    def _joiner(self, conn: Connection, outcome: Outcome) -> None:
        """Apply our uplink's outcome: send, leave, or count it authenticated."""
        link: Link = conn.peer
        for status in outcome.send:
            conn.send(status)
        if outcome.result == "leave":
            log.error("%s: %s %s", self.server.name, conn.label, outcome.reason)
            link.role = Role.DONE
            conn.close(outcome.close)
        elif outcome.result == "authenticated":
            link.authenticated = True
            log.info("%s: %s authenticated", self.server.name, conn.label)

    # -- who may run jobs ---------------------------------------------------------------

    def is_local(self, conn: Connection) -> bool:
        """Whether ``conn``'s peer is on this machine (loopback)."""
        link: Link = conn.peer
        if link.local is None:
            if conn.peer_address is None:
                return False             # not connected (yet): not known to be local
            link.local = bool(self.server.config.is_local(conn.peer_address))
        return link.local

    def job_refusal(self, conn: Connection) -> str | None:
        """Why jobs submitted by the client on ``conn`` must not run; None if they may.

        With a mesh secret: only authenticated clients. Without: only clients
        on this machine, unless ``insecure_remote_jobs``."""
        config, link = self.server.config, conn.peer
        if config.secret is not None:
            return None if link.authenticated else auth.JOBS_TEXT
        if config.insecure_remote_jobs or self.is_local(conn):
            return None
        return (f"server {self.server.name} runs jobs only for clients on its own machine "
                "(loopback) when the mesh has no secret; use --secret-file (or, accepting that "
                "anyone who can connect may run commands, --insecure-remote-jobs)")

    def run_refusal(self, conn: Connection | None) -> str | None:
        """Why a job (RUN frame) that arrived over ``conn`` must be neither run
        nor passed on; None if it may be (``conn`` None: our own job service).

        Only servers send RUN frames (``ProtocolError`` otherwise). With a
        secret, every server link is authenticated; without one, each server
        on the way accepts the job only from a loopback link unless
        ``insecure_remote_jobs``, so a job never crosses a link between
        machines without a secret."""
        if conn is None:
            return None
        config, link = self.server.config, conn.peer
        if link.role is not Role.SERVER:
            raise ProtocolError("a job (RUN) frame from a client")
        if config.secret is not None:
            return None if link.authenticated else auth.JOBS_TEXT
        if config.insecure_remote_jobs or self.is_local(conn):
            return None
        return (f"server {self.server.name} refuses jobs arriving over a link from another "
                f"machine ({self.who(conn)}) when the mesh has no secret; use --secret-file "
                "(or --insecure-remote-jobs)")

    def log_security(self) -> None:
        """Say once, at startup, what this server trusts (loudly when unsafe)."""
        cfg, name = self.server.config, self.server.name
        if cfg.secret is not None:
            log.info("%s: mesh secret set: servers must authenticate to link; clients must "
                     "authenticate to run jobs (plain clients: %s)", name, cfg.plain_clients)
            if cfg.insecure_remote_jobs:
                log.warning("%s: --insecure-remote-jobs has no effect with a mesh secret: "
                            "jobs run only for authenticated clients", name)
        elif cfg.insecure_remote_jobs:
            log.warning("%s: INSECURE: --insecure-remote-jobs without a mesh secret: anyone who "
                        "can reach this mesh can run commands as this user on its servers", name)
        if cfg.secret is None and cfg.plain_clients != "allow":
            log.warning("%s: plain_clients=%s (--plain-clients) has no effect without a mesh "
                        "secret", name, cfg.plain_clients)
        if cfg.secret is None and not cfg.insecure_remote_jobs and not is_loopback_host(cfg.host):
            log.warning("%s: listening on %s without a mesh secret: jobs from clients and servers "
                        "that are not on this machine (loopback) are refused; give the mesh a "
                        "secret (--secret-file), or accept the risk with --insecure-remote-jobs",
                        name, cfg.host)
