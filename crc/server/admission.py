"""Authentication of one link with the mesh secret: three small state
machines, messages in and messages out.

Theory of operation. With a mesh secret (``--secret-file``, docs/protocol.md,
"Authentication") nothing of a peer is believed until it has proved, with an
HMAC over fresh nonces from both sides, that it knows the secret; and we
prove the same to it. Each side of each link runs one machine:

* ``JoinerAuth`` — our uplink. The server we join challenges us (its nonce);
  we answer with our nonce and our proof; it accepts with its own proof, which
  we check. States: ``waiting`` → ``proved`` → ``done``.
* ``ServerAuth`` — a server that registered with us. We challenge it; its
  proof admits it (we answer with ours) or refuses it. Its registration waits
  (``pending``): nothing of it is recorded or flooded before the verdict.
  States: ``challenged`` → ``done``.
* ``ClientAuth`` — a client, after its hello (which carries its nonce): our
  hello reply carries our nonce and our proof; its proof makes it
  authenticated (may run jobs; with ``plain_clients="deny"``, may be admitted
  at all). States: ``hello`` → ``proving`` → ``done``.

A machine never touches a socket, a clock or a log: each step returns an
``Outcome`` — statuses to send, and what the link becomes — which the server
applies. A step out of order, from the wrong peer or for the wrong id is a
``ProtocolError`` (the server drops the link); a wrong secret is a verdict
(``refused`` or ``leave``), said to the peer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol import (ClientRegistration, ProtocolError, ServerRegistration, Status,
                        StatusCode, auth)

Registration = ServerRegistration | ClientRegistration


@dataclass(frozen=True)
class Outcome:
    """What one step of a machine says to do."""

    send: tuple[Status, ...] = ()
    #: ``""`` (nothing more), ``"authenticated"`` (the peer proved the secret),
    #: ``"refused"`` (close after an AUTH_REFUSED with ``text``), ``"leave"``
    #: (joiner: give the uplink up; ``reason`` closes it).
    result: str = ""
    text: str = ""                  # the refusal's status text
    reason: str = ""                # the log's words after the peer's name
    close: str = ""                 # the connection's close reason (``leave``)


def refused(why: str, text: str = auth.FAILED_TEXT) -> Outcome:
    return Outcome(result="refused", text=text, reason=why)


@dataclass
class JoinerAuth:
    """Our side of joining a server that has a secret."""

    secret: bytes | None
    me: int
    state: str = "waiting"
    nonce: str = ""
    peer_nonce: str = ""
    peer_id: int = 0                # the server that challenged us
    pending: Registration | None = field(default=None, init=False)

    def on_challenge(self, msg: Status) -> Outcome:
        if msg.dest != self.me or self.state != "waiting":
            raise ProtocolError("authentication challenge for another id, or a second one")
        fields = auth.parse_auth(msg.text)
        if self.secret is None:
            return Outcome(result="leave", reason="requires a mesh secret (--secret-file); "
                           "leaving it", close="uplink requires a mesh secret")
        if fields.get("auth") != auth.SCHEME or not auth.valid_nonce(fields.get("nonce")):
            return Outcome(result="leave", reason=f"asks for authentication we do not speak "
                           f"({msg.text[:120]!r}); leaving it", close="unsupported authentication")
        self.state, self.peer_id = "proved", msg.source
        self.nonce, self.peer_nonce = auth.new_nonce(), fields["nonce"]
        return Outcome(send=(Status(self.me, msg.source, StatusCode.AUTH_PROOF, auth.auth_text(
            nonce=self.nonce,
            proof=auth.proof(self.secret, auth.JOIN, self.me, msg.source, self.nonce,
                             self.peer_nonce))),))

    def on_accepted(self, msg: Status) -> Outcome:
        """AUTH_OK: the server accepted our proof and sent its own."""
        if self.state != "proved" or msg.source != self.peer_id or msg.dest != self.me:
            raise ProtocolError("authentication accepted without a challenge")
        expected = auth.proof(self.secret, auth.ACCEPT, self.me, self.peer_id, self.nonce,
                              self.peer_nonce)
        if not auth.proof_matches(expected, auth.parse_auth(msg.text).get("proof")):
            return Outcome(result="leave", reason="failed to prove it knows the mesh secret; "
                           "leaving it", close="uplink failed authentication")
        self.state = "done"
        return Outcome(result="authenticated")


@dataclass
class ServerAuth:
    """A server that registered with us must answer our challenge."""

    secret: bytes
    me: int
    pending: Registration
    state: str = "challenged"
    nonce: str = field(default_factory=auth.new_nonce)

    def challenge(self) -> Status:
        return Status(self.me, self.pending.source, StatusCode.AUTH_CHALLENGE,
                      auth.auth_text(auth=auth.SCHEME, nonce=self.nonce))

    def on_proof(self, msg: Status) -> Outcome:
        joiner = self.pending
        if self.state != "challenged" or msg.source != joiner.source or msg.dest != self.me:
            raise ProtocolError("authentication proof from someone other than the joiner")
        fields = auth.parse_auth(msg.text)
        their = fields.get("nonce", "")
        if not auth.valid_nonce(their) or not auth.proof_matches(
                auth.proof(self.secret, auth.JOIN, joiner.source, self.me, their, self.nonce),
                fields.get("proof")):
            return refused("gave a wrong proof (wrong mesh secret?)")
        self.state = "done"
        return Outcome(result="authenticated", send=(Status(
            self.me, joiner.source, StatusCode.AUTH_OK, auth.auth_text(proof=auth.proof(
                self.secret, auth.ACCEPT, joiner.source, self.me, their, self.nonce))),))


@dataclass
class ClientAuth:
    """A client proves the secret after its hello; we prove it first.
    ``pending``: its registration, waiting for the proof when clients that do
    not prove it may not chat (``plain_clients="deny"``)."""

    secret: bytes
    me: int
    client: int
    pending: Registration | None = None
    state: str = "hello"
    nonce: str = ""
    peer_nonce: str = ""

    def on_hello(self, fields: dict[str, str]) -> dict[str, str] | None:
        """The client's hello: the fields our reply carries (our nonce and
        proof), or None if it offered no authentication."""
        their = fields.get("nonce", "")
        if not auth.valid_nonce(their):
            return None
        self.state, self.nonce, self.peer_nonce = "proving", auth.new_nonce(), their
        return {"nonce": self.nonce,
                "proof": auth.proof(self.secret, auth.TO_CLIENT, self.client, self.me, their,
                                    self.nonce)}

    def on_proof(self, msg: Status) -> Outcome:
        if self.state != "proving" or msg.source != self.client or msg.dest != self.me:
            raise ProtocolError("authentication proof from someone other than the client")
        expected = auth.proof(self.secret, auth.CLIENT, self.client, self.me, self.peer_nonce,
                              self.nonce)
        if not auth.proof_matches(expected, auth.parse_auth(msg.text).get("proof")):
            return refused("gave a wrong proof (wrong mesh secret?)")
        self.state = "done"
        return Outcome(result="authenticated", send=(
            Status(self.me, self.client, StatusCode.AUTH_OK, auth.auth_text(auth="ok")),))


Authentication = JoinerAuth | ServerAuth | ClientAuth
