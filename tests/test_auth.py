"""Authentication with a mesh secret, and the job gates (docs/security.md).

Real servers and clients over real sockets. Where the test plays a peer
itself (a joiner with a wrong proof, a replayed proof, a plain CRC v1 client)
it speaks the frames with ``crc.protocol.encode`` and ``Decoder`` over a raw
socket. Every wait is a condition with a deadline.

The loopback rules are tested two ways: with a real non-loopback address of
this machine when it has one (the peer address the server sees is then
genuinely not loopback; skipped otherwise), and with the server's address
predicate replaced (``ServerConfig.is_local``): that one is a simulation of a
remote peer, said so in its name.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from crc.client import ChatClient, ClientConfig
from crc.client.jobs.engine import Job, JobClient, JobError
from crc.server.jobs.service import JobConfig, JobService
from crc.jobs.wire import Kind, frame
from crc.protocol import (
    ClientChat, ClientRegistration, Decoder, ServerRegistration, Status, StatusCode,
    encode,
)
from crc.protocol import auth
from crc.protocol.handshake import Hello
from crc.server import MeshServer, ServerConfig
from crc.server import cli as server_cli
from crc.server.query import StateQueryError, query_state

from .meshkit import Mesh, Node, call, wait_for

SECRET = b"correct horse battery staple, 2024"
OTHER = b"a different secret, long enough too"


# -- helpers -------------------------------------------------------------------------------

@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


def add(mesh: Mesh, name: str, connect: tuple[str, int] | None = None, **options) -> Node:
    """A server with a job service (``options``: more ServerConfig fields)."""
    server = MeshServer(ServerConfig(port=0, name=name, connect=connect, **options))
    jobs = JobService(server, JobConfig(slots=2, work_dir=mesh.tmp / name, load_interval=0.5))
    server.start()
    node = Node(server, jobs)
    node.thread.start()
    mesh.nodes.append(node)
    return node


def attach(mesh: Mesh, node: Node, name: str, base_dir: Path, *, host: str = "127.0.0.1",
           until: str | None = "ext", **options) -> tuple[ChatClient, JobClient]:
    """A mesh client (``options``: more ClientConfig fields); waits until
    ``client.<until>`` is true (None: not at all)."""
    client, jobs = mesh.start_client(ClientConfig((host, node.server.port), name, **options),
                                     base_dir)
    if until:
        wait_for(lambda: getattr(client, until), 10, f"{name}: {until}")
    return client, jobs


def on(node: Node, fn):
    return call(node.server.loop, fn)


def knows(node: Node, host_id: int) -> bool:
    return on(node, lambda: node.server.routes.known(host_id))


def submit(client: ChatClient, jobs: JobClient, **kw) -> Job:
    return call(client.loop, lambda: jobs.submit(**kw))


def finished(job: Job, timeout: float = 30.0) -> Job:
    wait_for(lambda: job.finished, timeout, f"job {job.id} ({job.label}) to finish")
    return job


def job_error(job: Job) -> str:
    return job.error or " ".join(r.error for r in job.runs.values())


def runs_received(node: Node) -> int:
    """RUN frames this server accepted (from any entry, itself included)."""
    return on(node, lambda: sum(node.jobs.origins.values()))


def is_status(code: int):
    return lambda m: isinstance(m, Status) and m.code == code


class Raw:
    """A peer played by the test over a raw socket."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.decoder = Decoder()
        self.inbox: list = []
        self.eof = False

    def send(self, *msgs) -> None:
        """One write for all of ``msgs``: they arrive together (pipelined)."""
        self.sock.sendall(b"".join(encode(m) for m in msgs))

    def _receive(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            return
        except ConnectionError:
            data = b""
        if not data:
            self.eof = True
            return
        self.inbox += self.decoder.feed(data)

    def expect(self, match, what: str, timeout: float = 10.0):
        """The first received message ``match`` accepts (earlier ones are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.inbox):
                if match(msg):
                    del self.inbox[:i + 1]
                    return msg
            left = deadline - time.monotonic()
            if self.eof or left <= 0:
                raise AssertionError(f"no {what} ({'closed' if self.eof else 'timed out'}); "
                                     f"received {self.inbox}")
            self._receive(min(left, 0.5))

    def wait_closed(self, timeout: float = 10.0) -> list:
        """Everything received until the server closed the connection."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection still open after {timeout:g} s; "
                                     f"received {self.inbox}")
            self._receive(min(left, 0.5))
        return self.inbox

    def close(self) -> None:
        self.sock.close()


def marker_job(marker: Path) -> str:
    """A shell command that leaves evidence wherever it runs (same machine)."""
    return f"touch {marker}"


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback and that we can
    listen on and connect to; None if there is none."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family != socket.AF_INET or a.address.startswith("127."):
                continue
            try:
                with socket.socket() as srv:
                    srv.bind((a.address, 0))
                    srv.listen(1)
                    with socket.create_connection(srv.getsockname(), timeout=2):
                        pass
                return a.address
            except OSError:
                continue
    return None


REMOTE = non_loopback_ipv4()
needs_remote = pytest.mark.skipif(REMOTE is None, reason="this machine has no usable "
                                  "non-loopback IPv4 address")


# -- the secret file ------------------------------------------------------------------------

def write_secret(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_secret_file_trailing_newline_is_ignored(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "s", SECRET + b"\n")
    assert auth.load_secret(path) == SECRET


@pytest.mark.parametrize("data, mode, says", [
    (b"too short\n", 0o600, "at least 16"),
    (SECRET, 0o644, "accessible by other users"),
    (SECRET, 0o606, "accessible by other users"),
])
def test_unusable_secret_files_are_refused_naming_the_file(tmp_path: Path, data: bytes,
                                                           mode: int, says: str) -> None:
    path = write_secret(tmp_path / "secret", data, mode)
    with pytest.raises(auth.SecretError, match=says) as err:
        auth.load_secret(path)
    assert str(path) in str(err.value)


def test_missing_secret_file_is_a_clear_startup_error(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope"
    assert server_cli.main(["--port", "0", "--secret-file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read secret file {missing}" in err


def test_group_readable_secret_is_used_with_a_warning(tmp_path: Path, log) -> None:
    path = write_secret(tmp_path / "s", SECRET, 0o640)
    assert auth.load_secret(path) == SECRET
    assert "accessible by its group" in log.text


def test_proofs_differ_by_role_and_by_every_input() -> None:
    n1, n2 = auth.new_nonce(), auth.new_nonce()
    base = auth.proof(SECRET, auth.JOIN, 1, 2, n1, n2)
    others = {auth.proof(SECRET, auth.ACCEPT, 1, 2, n1, n2),
              auth.proof(SECRET, auth.CLIENT, 1, 2, n1, n2),
              auth.proof(SECRET, auth.TO_CLIENT, 1, 2, n1, n2),
              auth.proof(SECRET, auth.JOIN, 2, 1, n1, n2),
              auth.proof(SECRET, auth.JOIN, 1, 2, n2, n1),
              auth.proof(OTHER, auth.JOIN, 1, 2, n1, n2)}
    assert base not in others and len(others) == 6
    tampered = base[:-1] + ("1" if base[-1] == "0" else "0")
    assert auth.proof_matches(base, base) and not auth.proof_matches(base, tampered)
    assert not auth.proof_matches(base, "é" * 64) and not auth.proof_matches(base, None)


# -- servers -----------------------------------------------------------------------------------

def test_servers_with_the_same_secret_link_and_carry_chat_and_jobs(mesh: Mesh, work: Path,
                                                                   log) -> None:
    s1, s2, s3 = mesh.chain(3, server_options={"secret": SECRET})
    for node in (s1, s2, s3):
        assert on(node, lambda node=node: [c.peer.authenticated
                                           for c in node.server.links.values()]) \
            in ([True], [True, True])
    alice, alice_jobs = attach(mesh, s1, "alice", work, until="authenticated", secret=SECRET)
    bob, _ = attach(mesh, s3, "bob", work, until="authenticated", secret=SECRET)
    wait_for(lambda: bob.id in alice.users, 10, "alice to learn of bob")
    call(alice.loop, lambda: alice.send_chat(bob.id, "across two authenticated links"))
    wait_for(lambda: (alice.id, "across two authenticated links") in bob.chat_log, 10,
             "the chat to arrive")
    job = finished(submit(alice, alice_jobs, shell="echo built > out.txt", on="s3"))
    assert job.exit_code == 0, job_error(job)
    assert (work / "out.txt").read_text() == "built\n"
    assert runs_received(s3) == 1


def test_wrong_secret_is_refused_and_nothing_of_the_joiner_is_kept(mesh: Mesh, log) -> None:
    hub = add(mesh, "hub", secret=SECRET)
    intruder = add(mesh, "intruder", connect=("127.0.0.1", hub.server.port), secret=OTHER)
    wait_for(lambda: "authentication failed" in on(intruder, lambda: intruder.server.status_log),
             10, "the intruder to be told")
    wait_for(lambda: on(intruder, lambda: intruder.server.uplink is None), 10,
             "the intruder's uplink to close")
    assert "gave a wrong proof (wrong mesh secret?)" in log.text
    refusal = next(r.getMessage() for r in log.records if "gave a wrong proof" in r.getMessage())
    assert "from 127.0.0.1:" in refusal and r"'intruder'" in refusal
    assert "join refused by" in log.text and "is our mesh secret the same" in log.text
    assert not knows(hub, intruder.server.id) and not knows(intruder, hub.server.id)
    assert on(hub, lambda: hub.server.snapshot()["hosts_db"]) == []
    assert runs_received(hub) == 0


def test_raw_joiner_with_a_wrong_proof_gets_nothing_run(mesh: Mesh, work: Path,
                                                        tmp_path: Path, log) -> None:
    hub = add(mesh, "hub", secret=SECRET)
    marker = tmp_path / "pwned"
    raw = Raw(hub.server.port)
    raw.send(ServerRegistration(666, 0, "mallory", ""))
    challenge = raw.expect(is_status(StatusCode.AUTH_CHALLENGE), "challenge")
    assert (challenge.source, challenge.dest) == (hub.server.id, 666)
    fields = auth.parse_auth(challenge.text)
    assert fields["auth"] == "hmac-sha256" and auth.valid_nonce(fields["nonce"])
    guess = auth.new_nonce()
    raw.send(Status(666, hub.server.id, StatusCode.AUTH_PROOF,
                    auth.auth_text(nonce=guess, proof=auth.proof(
                        OTHER, auth.JOIN, 666, hub.server.id, guess, fields["nonce"]))),
             # ... and, pipelined behind the bad proof, a job.
             Status(666, 666, StatusCode.MESH_HELLO, Hello().text()),
             frame(Kind.RUN, 666, hub.server.id, {"id": "x", "client": 666, "entry": 666,
                                                  "shell": marker_job(marker)}))
    refused = raw.expect(is_status(StatusCode.AUTH_REFUSED), "refusal")
    assert refused.text == "authentication failed"
    raw.wait_closed()
    # The hub still serves: an authenticated client's job runs there and ends.
    alice, jobs = attach(mesh, hub, "alice", work, until="authenticated", secret=SECRET)
    assert finished(submit(alice, jobs, shell="true")).exit_code == 0
    assert not marker.exists()
    assert runs_received(hub) == 1 and not knows(hub, 666)


def test_joiner_without_a_secret_is_refused(mesh: Mesh, log) -> None:
    hub = add(mesh, "hub", secret=SECRET)
    plain = add(mesh, "nosecret", connect=("127.0.0.1", hub.server.port))
    wait_for(lambda: on(plain, lambda: plain.server.uplink is None), 10,
             "the joiner to give up its uplink")
    assert "requires a mesh secret (--secret-file)" in log.text
    assert not knows(hub, plain.server.id) and not knows(plain, hub.server.id)
    wait_for(lambda: "closed before authenticating" in log.text, 10, "the hub to note it")


def test_joiner_with_a_secret_refuses_an_uplink_without_one(mesh: Mesh, log) -> None:
    open_hub = add(mesh, "openhub")
    careful = add(mesh, "careful", connect=("127.0.0.1", open_hub.server.port), secret=SECRET)
    wait_for(lambda: on(careful, lambda: careful.server.uplink is None), 10,
             "the joiner to leave its uplink")
    assert "did not authenticate (it has no mesh secret" in log.text
    assert not knows(careful, open_hub.server.id)
    wait_for(lambda: not knows(open_hub, careful.server.id), 10,
             "the open hub to forget the joiner again")


def test_plain_v1_joiner_is_closed_when_it_does_not_authenticate(mesh: Mesh, log) -> None:
    hub = add(mesh, "hub", secret=SECRET, registration_timeout=1.5)
    raw = Raw(hub.server.port)
    raw.send(ServerRegistration(777, 0, "oldserver", ""))
    raw.expect(is_status(StatusCode.AUTH_CHALLENGE), "challenge")
    # A CRC v1 server logs the challenge and waits for a registration that never comes.
    refused = raw.expect(is_status(StatusCode.AUTH_REFUSED), "refusal")
    assert refused.text == auth.REQUIRED_TEXT
    raw.wait_closed()
    assert "did not authenticate within 1.5 s (--registration-timeout)" in log.text
    assert not knows(hub, 777)


class Recorder:
    """A TCP relay between one joiner and its acceptor that records what the
    joiner sends: a wiretap on a real handshake."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream = bytearray()
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        joiner, _ = self.listener.accept()
        acceptor = socket.create_connection(("127.0.0.1", self.target_port))
        self.sockets += [joiner, acceptor]
        threading.Thread(target=self._pump, args=(acceptor, joiner, None), daemon=True).start()
        self._pump(joiner, acceptor, self.upstream)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        try:
            while data := src.recv(1 << 16):
                if record is not None:
                    record += data
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()


def test_replayed_proof_from_a_real_handshake_is_refused(mesh: Mesh, log) -> None:
    hub = add(mesh, "hub", secret=SECRET)
    tap = Recorder(hub.server.port)
    try:
        joiner = add(mesh, "joiner", connect=("127.0.0.1", tap.port), secret=SECRET)
        wait_for(lambda: knows(hub, joiner.server.id), 10, "the joiner to be admitted")
        recorded = Decoder().feed(bytes(tap.upstream))
        registration = next(m for m in recorded if isinstance(m, ServerRegistration))
        proof = next(m for m in recorded if is_status(StatusCode.AUTH_PROOF)(m))
        joiner.kill()
        wait_for(lambda: not knows(hub, joiner.server.id), 10, "the hub to see the joiner go")
    finally:
        tap.close()

    replay = Raw(hub.server.port)
    replay.send(registration)
    challenge = replay.expect(is_status(StatusCode.AUTH_CHALLENGE), "challenge")
    replay.send(proof)                       # a valid proof, for another nonce
    assert replay.expect(is_status(StatusCode.AUTH_REFUSED), "refusal").text == \
        "authentication failed"
    replay.wait_closed()
    assert not knows(hub, registration.source)

    # The control: the same raw peer, proving for the nonce it was given, is admitted.
    honest = Raw(hub.server.port)
    honest.send(registration)
    nonce = auth.parse_auth(honest.expect(is_status(StatusCode.AUTH_CHALLENGE),
                                          "challenge").text)["nonce"]
    assert nonce != auth.parse_auth(challenge.text)["nonce"]
    mine = auth.new_nonce()
    honest.send(Status(registration.source, hub.server.id, StatusCode.AUTH_PROOF, auth.auth_text(
        nonce=mine, proof=auth.proof(SECRET, auth.JOIN, registration.source, hub.server.id,
                                     mine, nonce))))
    ok = honest.expect(is_status(StatusCode.AUTH_OK), "acceptance")
    assert auth.proof_matches(auth.proof(SECRET, auth.ACCEPT, registration.source, hub.server.id,
                                         mine, nonce), auth.parse_auth(ok.text)["proof"])
    assert honest.expect(lambda m: isinstance(m, ServerRegistration), "the hub's registration") \
        == ServerRegistration(hub.server.id, hub.server.id, "hub", "")
    wait_for(lambda: knows(hub, registration.source), 10, "the honest peer to be admitted")
    honest.close()


# -- clients ----------------------------------------------------------------------------------------

def test_client_without_the_secret_chats_but_runs_no_job(mesh: Mesh, work: Path,
                                                         tmp_path: Path, log) -> None:
    s1, s2 = mesh.chain(2, server_options={"secret": SECRET})
    marker = tmp_path / "pwned"
    guest, guest_jobs = attach(mesh, s1, "guest", work)                      # no secret
    member, member_jobs = attach(mesh, s2, "member", work, until="authenticated", secret=SECRET)
    assert not guest.authenticated
    wait_for(lambda: member.id in guest.users and guest.id in member.users, 10, "both to meet")
    call(guest.loop, lambda: guest.send_chat(member.id, "hello from a guest"))
    call(member.loop, lambda: member.send_chat(guest.id, "hello guest"))
    wait_for(lambda: (guest.id, "hello from a guest") in member.chat_log
             and (member.id, "hello guest") in guest.chat_log, 10, "chat both ways")

    for where in (None, "s2"):
        job = finished(submit(guest, guest_jobs, shell=marker_job(marker), on=where))
        assert job.error == "this mesh requires authentication to run jobs (--secret-file)"
    assert "refusing job" in log.text
    # Going around the entry: RUN frames of its own making, to either server.
    for dest in (s1.server.id, s2.server.id):
        call(guest.loop, lambda dest=dest: guest.send_extension(frame(
            Kind.RUN, guest.id, dest, {"id": f"sneak{dest}", "client": guest.id,
                                       "entry": s1.server.id, "shell": marker_job(marker)})))
    # Barriers: a load query answered on the guest's own link (so its frames
    # were handled), then a member's job over the same s1 -> s2 link.
    tables: list = []
    call(guest.loop, lambda: guest_jobs.query_load(tables.append))
    wait_for(lambda: tables, 10, "the guest's load query to be answered")
    member_on_s1, jobs_on_s1 = attach(mesh, s1, "member2", work, until="authenticated",
                                      secret=SECRET)
    done = finished(submit(member_on_s1, jobs_on_s1, shell="true", on="s2"))
    assert done.exit_code == 0, job_error(done)
    assert runs_received(s1) == 0 and runs_received(s2) == 1
    assert not marker.exists()
    assert guest.connected


def test_authenticated_client_cannot_send_run_frames_itself(mesh: Mesh, work: Path,
                                                            tmp_path: Path, log) -> None:
    s1, s2 = mesh.chain(2, server_options={"secret": SECRET})
    marker = tmp_path / "pwned"
    member, _ = attach(mesh, s1, "member", work, until="authenticated", secret=SECRET)
    call(member.loop, lambda: member.send_extension(frame(
        Kind.RUN, member.id, s2.server.id, {"id": "direct", "client": member.id,
                                            "entry": s1.server.id,
                                            "shell": marker_job(marker)})))
    wait_for(lambda: not member.connected, 10, "the client to be disconnected")
    assert "a job (RUN) frame from a client" in log.text
    assert runs_received(s2) == 0 and not marker.exists()


def test_client_with_a_wrong_secret_disconnects(mesh: Mesh, work: Path, log) -> None:
    (hub,) = mesh.chain(1, server_options={"secret": SECRET})
    client, _ = attach(mesh, hub, "wrong", work, until=None, secret=OTHER)
    wait_for(lambda: client.closed_reason, 10, "the client to give up")
    assert client.closed_reason == "the server failed to prove the mesh secret"
    assert not client.ext and not client.authenticated
    assert "failed to prove the mesh secret" in log.text


def test_a_reconnecting_client_does_not_retry_a_failed_proof(mesh: Mesh, log) -> None:
    hub, other = mesh.chain(2, server_options={"secret": SECRET})
    client = mesh.chat_client(hub, "wrong", wait=False, secret=OTHER,
                              servers=(("127.0.0.1", other.server.port),))
    wait_for(lambda: client.closed_reason, 10, "the client to give up")
    assert client.fatal == "the server failed to prove the mesh secret"
    assert not client.reconnecting and client.connections == 0


def test_client_with_a_secret_sends_no_jobs_to_a_server_without_one(mesh: Mesh, work: Path,
                                                                     log) -> None:
    (hub,) = mesh.chain(1)
    client, jobs = attach(mesh, hub, "careful", work, secret=SECRET)
    other, _ = attach(mesh, hub, "other", work)
    assert not client.server_verified
    assert "did not prove the mesh secret (it has none)" in log.text
    with pytest.raises(JobError, match="did not prove it knows the mesh secret"):
        submit(client, jobs, shell="true")
    wait_for(lambda: other.id in client.users, 10, "the client to learn of the other")
    call(client.loop, lambda: client.send_chat(other.id, "chat still works"))
    wait_for(lambda: (client.id, "chat still works") in other.chat_log, 10, "the chat")


def plain_v1_client(port: int, cid: int, name: str) -> Raw:
    raw = Raw(port)
    raw.send(ClientRegistration(cid, 0, name, ""))
    welcome = raw.expect(is_status(StatusCode.WELCOME), "welcome")
    assert welcome.text == f"Welcome to the Clemson Relay Chat network {name}"
    return raw


def test_deny_admits_only_clients_with_the_secret(mesh: Mesh, work: Path, log) -> None:
    hub = add(mesh, "hub", secret=SECRET, plain_clients="deny", registration_timeout=2.0)
    patient = add(mesh, "patient", secret=SECRET, plain_clients="deny",
                  registration_timeout=60.0)
    member, _ = attach(mesh, hub, "member", work, until="authenticated", secret=SECRET)
    friend, _ = attach(mesh, hub, "friend", work, until="authenticated", secret=SECRET)
    wait_for(lambda: friend.id in member.users, 10, "members to meet")
    call(friend.loop, lambda: friend.send_chat(member.id, "members only"))
    wait_for(lambda: (friend.id, "members only") in member.chat_log, 10, "a members' chat")

    # A plain v1 client that says nothing more: closed at the registration deadline.
    quiet = plain_v1_client(hub.server.port, 501, "quiet")
    assert not knows(hub, 501)
    refused = quiet.expect(is_status(StatusCode.AUTH_REFUSED), "refusal")
    assert refused.text.startswith("authentication required")
    quiet.wait_closed()
    assert "did not authenticate within 2 s" in log.text

    # One that chats at once: closed at once (the deadline here is a minute away),
    # and its chat goes nowhere.
    watcher, _ = attach(mesh, patient, "watcher", work, until="authenticated", secret=SECRET)
    chatty = plain_v1_client(patient.server.port, 502, "chatty")
    chatty.send(ClientChat(502, watcher.id, "let me in"))
    assert chatty.expect(is_status(StatusCode.AUTH_REFUSED), "refusal", timeout=10).text \
        == auth.REQUIRED_TEXT
    chatty.wait_closed(timeout=10)
    neighbour, _ = attach(mesh, patient, "neighbour", work, until="authenticated",
                          secret=SECRET)
    wait_for(lambda: neighbour.id in watcher.users, 10, "the watcher to see the neighbour")
    call(neighbour.loop, lambda: neighbour.send_chat(watcher.id, "after"))
    wait_for(lambda: watcher.chat_log, 10, "the neighbour's chat")
    assert watcher.chat_log == [(neighbour.id, "after")]
    assert 502 not in watcher.users

    # A mesh client without the secret: refused right after its hello.
    guest, _ = attach(mesh, hub, "guest", work, until=None)
    wait_for(lambda: guest.closed_reason, 10, "the guest to be closed")
    assert auth.REQUIRED_TEXT in guest.status_log
    assert "offered no authentication in its hello" in log.text

    assert not any(knows(hub, i) for i in (501, guest.id))
    assert set(member.users) == {friend.id}
    assert member.chat_log == [(friend.id, "members only")]


# -- jobs without a secret: loopback only ------------------------------------------------------

def test_simulated_remote_client_gets_no_job_without_a_secret(mesh: Mesh, work: Path,
                                                              tmp_path: Path, log) -> None:
    """Simulated: the server's address predicate says no peer is local."""
    marker = tmp_path / "pwned"
    strict = add(mesh, "strict", is_local=lambda address: False)
    client, jobs = attach(mesh, strict, "far", work)
    job = finished(submit(client, jobs, shell=marker_job(marker)))
    assert "runs jobs only for clients on its own machine (loopback)" in job.error
    assert "--insecure-remote-jobs" in job.error
    lax = add(mesh, "lax", is_local=lambda address: False, insecure_remote_jobs=True)
    assert "INSECURE: --insecure-remote-jobs without a mesh secret" in log.text
    client2, jobs2 = attach(mesh, lax, "far2", work)
    assert finished(submit(client2, jobs2, shell="echo ran > ran.txt")).exit_code == 0
    assert (work / "ran.txt").exists() and not marker.exists()
    assert runs_received(strict) == 0


@needs_remote
def test_remote_client_and_remote_link_get_no_job_without_a_secret(mesh: Mesh, work: Path,
                                                                   tmp_path: Path, log) -> None:
    """Real: peers connect through a non-loopback address of this machine."""
    marker = tmp_path / "pwned"
    relay = add(mesh, "relay", host="0.0.0.0")
    assert "listening on 0.0.0.0 without a mesh secret: jobs from clients and servers" in log.text
    # entry -(non-loopback)- relay -(loopback)- target
    entry = add(mesh, "entry", connect=(REMOTE, relay.server.port))
    target = add(mesh, "target", connect=("127.0.0.1", relay.server.port))
    mesh.wait_converged()

    far, far_jobs = attach(mesh, relay, "far", work, host=REMOTE)
    job = finished(submit(far, far_jobs, shell=marker_job(marker)))
    assert "runs jobs only for clients on its own machine (loopback)" in job.error

    near, near_jobs = attach(mesh, entry, "near", work)
    job = finished(submit(near, near_jobs, shell=marker_job(marker), on="relay"))
    assert "refuses jobs arriving over a link from another machine" in job_error(job)
    job = finished(submit(near, near_jobs, shell=marker_job(marker), on="target"))
    assert "server relay refuses jobs arriving over a link from another machine" \
        in job_error(job)
    # Loopback all the way still works: a client of the target's own machine link.
    local, local_jobs = attach(mesh, target, "local", work)
    ok = finished(submit(local, local_jobs, shell="true", on="relay"))
    assert ok.exit_code == 0, job_error(ok)
    assert runs_received(target) == 0 and runs_received(relay) == 1
    assert not marker.exists()


@needs_remote
def test_insecure_remote_jobs_lets_a_remote_client_run(mesh: Mesh, work: Path, log) -> None:
    lax = add(mesh, "lax", host="0.0.0.0", insecure_remote_jobs=True)
    client, jobs = attach(mesh, lax, "far", work, host=REMOTE)
    assert finished(submit(client, jobs, shell="true")).exit_code == 0


def test_state_query_needs_loopback_when_there_is_a_secret(mesh: Mesh) -> None:
    (hub,) = mesh.chain(1, server_options={"secret": SECRET})
    assert query_state("127.0.0.1", hub.server.port)["name"] == "s1"
    shy = add(mesh, "shy", secret=SECRET, is_local=lambda address: False)   # simulated remote
    with pytest.raises(StateQueryError):
        query_state("127.0.0.1", shy.server.port)


# -- the command line ----------------------------------------------------------------------------

def test_command_line_secret_file_links_servers_and_gates_jobs(procs, tmp_path: Path) -> None:
    from .test_blackbox import CLIENT, DEADLINE, SERVER, Server
    from .test_blackbox_jobs import batch

    secret = write_secret(tmp_path / "mesh.secret", SECRET + b"\n")
    other = write_secret(tmp_path / "other.secret", OTHER)
    short = write_secret(tmp_path / "short.secret", b"short\n")
    for command in ([SERVER, "--port", "0"], [CLIENT, "--server", "127.0.0.1:9", "run"]):
        bad = subprocess.run([sys.executable, *command[:3], "--secret-file", str(short),
                              *command[3:]], capture_output=True, text=True, timeout=DEADLINE)
        assert bad.returncode == 2 and f"secret file {short} holds 5 byte(s)" in bad.stderr

    alpha = Server(procs, tmp_path, 11, "alpha", options=("--secret-file", str(secret)))
    beta = Server(procs, tmp_path, 12, "beta", connect=alpha.port,
                  options=("--secret-file", str(secret)))
    intruder = Server(procs, tmp_path, 13, "intruder", connect=alpha.port,
                      options=("--secret-file", str(other), "--no-rejoin"))
    wait_for(lambda: "joined the mesh through alpha" in beta.log.read_text(), DEADLINE,
             "beta to join")
    wait_for(lambda: "is our mesh secret the same" in intruder.log.read_text(), DEADLINE,
             "the intruder to be refused")
    assert "gave a wrong proof (wrong mesh secret?)" in alpha.log.read_text()

    ok = batch(procs, alpha, tmp_path, "--secret-file", str(secret), "run", "--", "echo", "ok")
    assert (ok.returncode, ok.stdout) == (0, "ok\n"), ok.stderr
    marker = tmp_path / "pwned"
    refused = batch(procs, beta, tmp_path, "run", "--", "touch", str(marker))
    assert refused.returncode != 0
    assert "this mesh requires authentication to run jobs (--secret-file)" in refused.stderr
    assert not marker.exists()


def test_a_submit_addressed_past_the_entry_breaks_no_server_link(mesh: Mesh, work: Path,
                                                                 log) -> None:
    s1, s2 = mesh.chain(2, server_options={"secret": SECRET})
    member, jobs = attach(mesh, s1, "member", work, until="authenticated", secret=SECRET)
    call(member.loop, lambda: member.send_extension(frame(
        Kind.SUBMIT, member.id, s2.server.id, {"job": "past", "shell": "true"})))
    wait_for(lambda: not member.connected, 10, "the client to be disconnected")
    assert "SUBMIT addressed past the client's own server" in log.text
    assert on(s1, lambda: s2.server.id in s1.server.links)
    again, again_jobs = attach(mesh, s1, "again", work, until="authenticated", secret=SECRET)
    assert finished(submit(again, again_jobs, shell="true", on="s2")).exit_code == 0


def test_a_refused_uplink_makes_a_rejoining_server_try_its_next_candidate(mesh: Mesh,
                                                                          log) -> None:
    open_hub = add(mesh, "openhub")
    other_mesh = add(mesh, "othermesh", secret=OTHER)
    hub = add(mesh, "hub", secret=SECRET)
    joiner = add(mesh, "joiner", connect=("127.0.0.1", open_hub.server.port), secret=SECRET,
                 rejoin=True, rejoin_delay=0.05,
                 candidates=(("127.0.0.1", other_mesh.server.port),
                             ("127.0.0.1", hub.server.port)))
    wait_for(lambda: on(joiner, lambda: joiner.server.uplink is not None
                        and joiner.server.uplink.peer.peer_id == hub.server.id), 20,
             "the joiner to settle on the hub with its secret")
    assert knows(hub, joiner.server.id) and not knows(other_mesh, joiner.server.id)
    assert "did not authenticate (it has no mesh secret" in log.text
    assert "authentication failed (is our mesh secret the same" in log.text
