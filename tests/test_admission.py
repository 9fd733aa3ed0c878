"""The authentication state machines (``crc.server.admission``), without
sockets: statuses in, outcomes out.

Each case plays one exchange against a machine and says what must come of
it: a verdict (``authenticated``, ``refused``, ``leave``), a ``ProtocolError``
(a step out of order, from the wrong peer, for the wrong id), or nothing yet.
The peers' proofs are made with ``crc.protocol.auth`` itself, so a case that
uses the wrong secret, an old nonce or the wrong role is exactly what a
misbehaving or mistaken peer would send.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest

from crc.protocol import ProtocolError, ServerRegistration, Status, StatusCode, auth
from crc.protocol.codec import Decoder, Limits, encode
from crc.server.admission import ClientAuth, JoinerAuth, Outcome, ServerAuth

SECRET = b"s" * 32
OTHER = b"o" * 32
ACCEPTOR, JOINER, CLIENT, STRANGER = 10, 20, 30, 40


def joiner_registration() -> ServerRegistration:
    return ServerRegistration(JOINER, 0, "joiner", "a server joining")


def status(source: int, dest: int, code: StatusCode, **fields: str) -> Status:
    return Status(source, dest, code, auth.auth_text(**fields))


def joiner_proof(secret: bytes, challenge: Status, *, nonce: str | None = None,
                 role: str = auth.JOIN, source: int = JOINER, dest: int = ACCEPTOR) -> Status:
    """What a joining server answers a challenge with."""
    theirs = auth.parse_auth(challenge.text)["nonce"]
    mine = nonce or auth.new_nonce()
    return status(source, dest, StatusCode.AUTH_PROOF, nonce=mine,
                  proof=auth.proof(secret, role, JOINER, ACCEPTOR, mine, theirs))


# -- the acceptor's side: a server registered with us and was challenged --------------


@dataclass
class ServerCase:
    name: str
    answer: Callable[[ServerAuth], list[Status]]   # the joiner's statuses, in order
    result: str                                    # the last step's verdict, or "error"


def _replayed(machine: ServerAuth) -> list[Status]:
    """A proof recorded from an earlier exchange (another challenge nonce)."""
    earlier = ServerAuth(SECRET, ACCEPTOR, joiner_registration())
    return [joiner_proof(SECRET, earlier.challenge())]


SERVER_CASES = [
    ServerCase("right proof", lambda m: [joiner_proof(SECRET, m.challenge())], "authenticated"),
    ServerCase("wrong secret", lambda m: [joiner_proof(OTHER, m.challenge())], "refused"),
    ServerCase("replayed proof", _replayed, "refused"),
    ServerCase("proof made for another role",
               lambda m: [joiner_proof(SECRET, m.challenge(), role=auth.CLIENT)], "refused"),
    ServerCase("no proof field",
               lambda m: [status(JOINER, ACCEPTOR, StatusCode.AUTH_PROOF,
                                 nonce=auth.new_nonce())], "refused"),
    ServerCase("no nonce of its own",
               lambda m: [status(JOINER, ACCEPTOR, StatusCode.AUTH_PROOF, proof="0" * 64)],
               "refused"),
    ServerCase("a proof status whose text is not an authentication text",
               lambda m: [Status(JOINER, ACCEPTOR, StatusCode.AUTH_PROOF, "hello")], "error"),
    ServerCase("proof from another id",
               lambda m: [joiner_proof(SECRET, m.challenge(), source=STRANGER)], "error"),
    ServerCase("proof addressed to another server",
               lambda m: [joiner_proof(SECRET, m.challenge(), dest=STRANGER)], "error"),
    ServerCase("a second proof after the verdict",
               lambda m: [joiner_proof(SECRET, m.challenge())] * 2, "error"),
]


@pytest.mark.parametrize("case", SERVER_CASES, ids=lambda c: c.name)
def test_acceptor_machine(case: ServerCase) -> None:
    machine = ServerAuth(SECRET, ACCEPTOR, joiner_registration())
    *before, last = case.answer(machine)
    for msg in before:
        machine.on_proof(msg)
    if case.result == "error":
        with pytest.raises(ProtocolError):
            machine.on_proof(last)
        return
    outcome = machine.on_proof(last)
    assert outcome.result == case.result
    if case.result == "refused":
        assert outcome.text == auth.FAILED_TEXT and "wrong proof" in outcome.reason
        assert outcome.send == () and machine.state == "challenged"
    else:
        (ok,) = outcome.send
        assert (ok.code, ok.source, ok.dest) == (StatusCode.AUTH_OK, ACCEPTOR, JOINER)
        assert machine.state == "done"


def test_acceptor_challenge_is_a_v1_status_and_nothing_is_admitted_without_an_answer() -> None:
    """A plain CRC v1 joiner that ignores the challenge: the challenge is an
    ordinary v1 status it can parse, and the machine stays waiting (the
    server's registration deadline closes such a link)."""
    machine = ServerAuth(SECRET, ACCEPTOR, joiner_registration())
    challenge = machine.challenge()
    (decoded,) = Decoder(Limits()).feed(encode(challenge))
    assert decoded == challenge and decoded.dest == JOINER
    fields = auth.parse_auth(challenge.text)
    assert fields["auth"] == auth.SCHEME and auth.valid_nonce(fields["nonce"])
    assert machine.state == "challenged" and machine.pending.source == JOINER


def test_every_challenge_has_a_fresh_nonce() -> None:
    nonces = {auth.parse_auth(ServerAuth(SECRET, ACCEPTOR, joiner_registration())
                              .challenge().text)["nonce"] for _ in range(50)}
    assert len(nonces) == 50


# -- the joiner's side: our uplink challenges us ----------------------------------


def challenge(secret_scheme: str = auth.SCHEME, nonce: str | None = None,
              source: int = ACCEPTOR, dest: int = JOINER) -> Status:
    return status(source, dest, StatusCode.AUTH_CHALLENGE, auth=secret_scheme,
                  nonce=nonce if nonce is not None else auth.new_nonce())


def accept(secret: bytes, sent: Status, chal: Status, source: int = ACCEPTOR) -> Status:
    """What the acceptor answers our proof with (its own proof)."""
    ours = auth.parse_auth(sent.text)["nonce"]
    theirs = auth.parse_auth(chal.text)["nonce"]
    return status(source, JOINER, StatusCode.AUTH_OK,
                  proof=auth.proof(secret, auth.ACCEPT, JOINER, ACCEPTOR, ours, theirs))


@dataclass
class JoinerCase:
    name: str
    secret: bytes | None
    #: Drives the machine; returns the last step's outcome (may raise).
    play: Callable[[JoinerAuth], Outcome]
    result: str                                    # verdict, or "error"
    reason: str = ""                               # words the reason must contain


def _full(secret_of_acceptor: bytes) -> Callable[[JoinerAuth], Outcome]:
    def play(m: JoinerAuth) -> Outcome:
        chal = challenge()
        (sent,) = m.on_challenge(chal).send
        return m.on_accepted(accept(secret_of_acceptor, sent, chal))
    return play


def _replayed_accept(m: JoinerAuth) -> Outcome:
    """An AUTH_OK recorded from an earlier exchange of ours."""
    earlier = JoinerAuth(SECRET, JOINER)
    old_chal = challenge()
    (old_sent,) = earlier.on_challenge(old_chal).send
    recorded = accept(SECRET, old_sent, old_chal)
    m.on_challenge(challenge())
    return m.on_accepted(recorded)


def _accept_from_another(m: JoinerAuth) -> Outcome:
    chal = challenge()
    (sent,) = m.on_challenge(chal).send
    return m.on_accepted(accept(SECRET, sent, chal, source=STRANGER))


JOINER_CASES = [
    JoinerCase("both know the secret", SECRET, _full(SECRET), "authenticated"),
    JoinerCase("the acceptor's proof is wrong", SECRET, _full(OTHER), "leave",
               "failed to prove"),
    JoinerCase("a replayed acceptance", SECRET, _replayed_accept, "leave", "failed to prove"),
    JoinerCase("we have no secret", None, lambda m: m.on_challenge(challenge()), "leave",
               "requires a mesh secret"),
    JoinerCase("an unsupported scheme", SECRET,
               lambda m: m.on_challenge(challenge("hmac-md5")), "leave", "do not speak"),
    JoinerCase("a challenge without a usable nonce", SECRET,
               lambda m: m.on_challenge(challenge(nonce="short")), "leave", "do not speak"),
    JoinerCase("a challenge for another id", SECRET,
               lambda m: m.on_challenge(challenge(dest=STRANGER)), "error"),
    JoinerCase("a second challenge", SECRET,
               lambda m: (m.on_challenge(challenge()), m.on_challenge(challenge()))[1], "error"),
    JoinerCase("accepted before any challenge", SECRET,
               lambda m: m.on_accepted(status(ACCEPTOR, JOINER, StatusCode.AUTH_OK,
                                              proof="0" * 64)), "error"),
    JoinerCase("accepted by a server that did not challenge us", SECRET,
               _accept_from_another, "error"),
]


@pytest.mark.parametrize("case", JOINER_CASES, ids=lambda c: c.name)
def test_joiner_machine(case: JoinerCase) -> None:
    machine = JoinerAuth(case.secret, JOINER)
    if case.result == "error":
        with pytest.raises(ProtocolError):
            case.play(machine)
        return
    outcome = case.play(machine)
    assert outcome.result == case.result
    assert case.reason in outcome.reason
    if case.result == "leave":
        assert outcome.close and machine.state != "done"
    else:
        assert machine.state == "done"


def test_joiner_proof_is_what_the_acceptor_machine_accepts() -> None:
    """The two machines against each other: one exchange, both sides satisfied."""
    joiner = JoinerAuth(SECRET, JOINER)
    acceptor = ServerAuth(SECRET, ACCEPTOR, joiner_registration())
    (proof,) = joiner.on_challenge(acceptor.challenge()).send
    verdict = acceptor.on_proof(proof)
    assert verdict.result == "authenticated"
    (ok,) = verdict.send
    assert joiner.on_accepted(ok).result == "authenticated"
    assert joiner.state == acceptor.state == "done"


# -- a client: its hello carries its nonce; our reply carries our proof --------------


def client_proof(secret: bytes, reply: dict[str, str], client_nonce: str, *,
                 source: int = CLIENT, role: str = auth.CLIENT) -> Status:
    return status(source, ACCEPTOR, StatusCode.AUTH_PROOF, proof=auth.proof(
        secret, role, CLIENT, ACCEPTOR, client_nonce, reply["nonce"]))


@dataclass
class ClientCase:
    name: str
    play: Callable[[ClientAuth], Outcome]
    result: str


def _hello_then(secret: bytes, **kw) -> Callable[[ClientAuth], Outcome]:
    def play(m: ClientAuth) -> Outcome:
        mine = auth.new_nonce()
        reply = m.on_hello({"nonce": mine})
        assert reply is not None
        return m.on_proof(client_proof(secret, reply, mine, **kw))
    return play


def _replayed_client(m: ClientAuth) -> Outcome:
    earlier = ClientAuth(SECRET, ACCEPTOR, CLIENT)
    old_nonce = auth.new_nonce()
    recorded = client_proof(SECRET, earlier.on_hello({"nonce": old_nonce}), old_nonce)
    m.on_hello({"nonce": auth.new_nonce()})
    return m.on_proof(recorded)


def _proof_before_hello(m: ClientAuth) -> Outcome:
    return m.on_proof(status(CLIENT, ACCEPTOR, StatusCode.AUTH_PROOF, proof="0" * 64))


def _hello_without_nonce_then_proof(m: ClientAuth) -> Outcome:
    assert m.on_hello({}) is None and m.state == "hello"
    return _proof_before_hello(m)


def _twice(m: ClientAuth) -> Outcome:
    mine = auth.new_nonce()
    reply = m.on_hello({"nonce": mine})
    m.on_proof(client_proof(SECRET, reply, mine))
    return m.on_proof(client_proof(SECRET, reply, mine))


CLIENT_CASES = [
    ClientCase("right proof", _hello_then(SECRET), "authenticated"),
    ClientCase("wrong secret", _hello_then(OTHER), "refused"),
    ClientCase("a proof made for a joining server", _hello_then(SECRET, role=auth.JOIN),
               "refused"),
    ClientCase("replayed proof", _replayed_client, "refused"),
    ClientCase("proof before the hello", _proof_before_hello, "error"),
    ClientCase("plain v1 client: hello without a nonce, then a proof",
               _hello_without_nonce_then_proof, "error"),
    ClientCase("proof from another id", _hello_then(SECRET, source=STRANGER), "error"),
    ClientCase("a second proof after the verdict", _twice, "error"),
]


@pytest.mark.parametrize("case", CLIENT_CASES, ids=lambda c: c.name)
def test_client_machine(case: ClientCase) -> None:
    machine = ClientAuth(SECRET, ACCEPTOR, CLIENT)
    if case.result == "error":
        with pytest.raises(ProtocolError):
            case.play(machine)
        return
    outcome = case.play(machine)
    assert outcome.result == case.result
    if case.result == "refused":
        assert outcome.send == () and machine.state == "proving"
        assert outcome.text == auth.FAILED_TEXT
    else:
        (ok,) = outcome.send
        assert (ok.code, ok.source, ok.dest) == (StatusCode.AUTH_OK, ACCEPTOR, CLIENT)
        assert machine.state == "done"


@pytest.mark.parametrize("nonce", ["", "short", "z" * 64, 7])
def test_client_hello_without_a_usable_nonce_is_not_answered_with_a_proof(nonce) -> None:
    machine = ClientAuth(SECRET, ACCEPTOR, CLIENT)
    assert machine.on_hello({"nonce": nonce}) is None
    assert machine.state == "hello"


def test_our_reply_to_a_client_proves_the_secret_for_that_client_only() -> None:
    machine = ClientAuth(SECRET, ACCEPTOR, CLIENT)
    mine = auth.new_nonce()
    reply = machine.on_hello({"nonce": mine})
    assert reply is not None
    expected = auth.proof(SECRET, auth.TO_CLIENT, CLIENT, ACCEPTOR, mine, reply["nonce"])
    assert auth.proof_matches(expected, reply["proof"])
    for other in (auth.proof(SECRET, auth.TO_CLIENT, STRANGER, ACCEPTOR, mine, reply["nonce"]),
                  auth.proof(OTHER, auth.TO_CLIENT, CLIENT, ACCEPTOR, mine, reply["nonce"])):
        assert not auth.proof_matches(other, reply["proof"])
