"""TLS on server and client links: a mesh that chats and runs jobs over TLS,
refusals with a clear reason (untrusted CA, wrong name, no certificate, a peer
that does not speak TLS), and the command lines.

Certificates come from ``trustme`` (a throwaway CA per test module). Every
wait is a condition with a deadline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

trustme = pytest.importorskip("trustme")

from crc.client import ChatClient, ClientConfig  # noqa: E402
from crc.net.tls import TLS, ServerTLS, TLSConfigError, client_tls, server_tls  # noqa: E402

from .meshkit import Mesh, call, wait_for  # noqa: E402
from .test_blackbox import (  # noqa: E402
    CLIENT, DEADLINE, SERVER, Processes, Server, child_env,
)

SECRET_TEXT = "over TLS: «héllo» across two hops"


class PKI:
    """A CA, a second CA nobody trusts, and certificates as files."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = trustme.CA(organization_name="CRC Mesh test CA")
        self.rogue = trustme.CA(organization_name="Somebody else")
        self.ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        self.rogue.cert_pem.write_to_path(str(directory / "rogue-ca.pem"))
        self._write("server", self.ca.issue_cert("127.0.0.1", "localhost"))
        self._write("named", self.ca.issue_cert("s1.mesh.test"))       # no IP address in it
        self._write("client", self.ca.issue_cert("client.mesh.test"))
        self._write("rogue-client", self.rogue.issue_cert("client.mesh.test"))

    def _write(self, name: str, cert) -> None:
        cert.cert_chain_pems[0].write_to_path(str(self.dir / f"{name}.crt"))
        cert.private_key_pem.write_to_path(str(self.dir / f"{name}.key"))

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def server(self, cert: str = "server", **options) -> ServerTLS:
        return server_tls(self.path(f"{cert}.crt"), self.path(f"{cert}.key"),
                          self.path("ca.pem"), **options)

    def client(self, ca: str = "ca", cert: str | None = None, **options) -> TLS:
        return client_tls(self.path(f"{ca}.pem"),
                          self.path(f"{cert}.crt") if cert else None,
                          self.path(f"{cert}.key") if cert else None, **options)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def start(mesh: Mesh, port: int, name: str, tls: TLS | None) -> ChatClient:
    """A client that may never connect: started, not waited for."""
    client, _ = mesh.start_client(ClientConfig(("127.0.0.1", port), name, tls=tls))
    return client


def logged(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    """Warning lines (from any thread) containing every one of ``words``."""
    return [r.getMessage() for r in list(caplog.records)
            if r.levelno >= logging.WARNING and all(w in r.getMessage() for w in words)]


def disconnected(client: ChatClient) -> bool:
    return bool(client.closed_reason)


# -- a mesh over TLS ------------------------------------------------------------------------


def test_chat_and_a_job_with_a_large_file_cross_a_three_server_tls_mesh(
        mesh: Mesh, work: Path, pki: PKI) -> None:
    nodes = mesh.chain(3, server_options={"tls": pki.server()})
    alice, jobs = mesh.client(nodes[0], "alice", work, tls=pki.client())
    bob, _ = mesh.client(nodes[2], "bob", work, tls=pki.client(cert="client"))

    # Every link of every server is TLS, and server links are verified both ways.
    for node in nodes:
        server = node.server
        links = call(server.loop, lambda s=server: [
            (c.peer.role.value, c.sock.version(), c.peer_cert is not None)
            for c in s.connections])
        assert links and all(version and version.startswith("TLS") for _, version, _ in links)
        assert all(certified for role, _, certified in links if role == "server"), links

    wait_for(lambda: bob.id in alice.users and alice.id in bob.users, 10,
             "alice and bob to know each other")
    call(alice.loop, lambda: alice.send_chat(bob.id, SECRET_TEXT))
    wait_for(lambda: (alice.id, SECRET_TEXT) in bob.chat_log, 10, "bob to get alice's chat")
    call(bob.loop, lambda: bob.send_chat(alice.id, "and back"))
    wait_for(lambda: (bob.id, "and back") in alice.chat_log, 10, "alice to get bob's answer")

    # A job on the far server: a 4 MiB file goes out in bulk frames over two
    # TLS hops, and a 3 MiB file the job writes comes back the same way.
    data = os.urandom(4 << 20)
    (work / "big.bin").write_bytes(data)
    output: list[bytes] = []

    def listener(job, run, event, payload) -> None:
        if event == "output":
            output.append(payload[1])

    job = call(alice.loop, lambda: jobs.submit(
        on="s3", files=["big.bin"], listener=listener,
        shell="sha256sum big.bin; head -c 3145728 /dev/urandom > made.bin; sha256sum made.bin"))
    wait_for(lambda: job.finished, 90, "the job to finish")
    assert job.exit_code == 0, job
    sums = dict(line.split()[::-1] for line in b"".join(output).decode().splitlines())
    assert sums["big.bin"] == hashlib.sha256(data).hexdigest()
    made = (work / "made.bin").read_bytes()
    assert len(made) == 3 << 20 and sums["made.bin"] == hashlib.sha256(made).hexdigest()


def test_a_server_without_a_certificate_cannot_link(mesh: Mesh, pki: PKI,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    (first,) = mesh.chain(1, server_options={"tls": pki.server()})
    # Trusts the CA, but offers no certificate of its own: fine for a client,
    # not for a server.
    certless = ServerTLS(accept=pki.server().accept, connect=pki.client())
    intruder = mesh.add("intruder", first, server_options={"tls": certless})
    wait_for(lambda: logged(caplog, "must present a certificate"), 10,
             "the refusal to be logged")
    known = call(first.server.loop, lambda: set(first.server.routes.hosts))
    assert intruder.server.id not in known


# -- refusals --------------------------------------------------------------------------------


def test_untrusted_certificates_are_refused_with_a_reason_and_others_are_served(
        mesh: Mesh, work: Path, pki: PKI,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    (node,) = mesh.chain(1, server_options={"tls": pki.server()})
    port = node.server.port

    # The client does not trust the server's CA.
    doubter = start(mesh, port, "doubter", pki.client(ca="rogue-ca"))
    wait_for(lambda: disconnected(doubter), 10, "the doubting client to give up")
    assert "certificate did not verify" in doubter.closed_reason
    wait_for(lambda: logged(caplog, "TLS handshake failed", "does not trust our certificate"),
             10, "the server to log why the handshake failed")

    # The server does not trust the client's certificate.
    stranger = start(mesh, port, "stranger", pki.client(cert="rogue-client"))
    wait_for(lambda: logged(caplog, "TLS handshake failed", "did not verify"), 10,
             "the server to log the untrusted client certificate")
    wait_for(lambda: disconnected(stranger), 10, "the stranger to be disconnected")
    # The server's alert, or (if the reset overtook it) what it most likely means.
    assert "TLS handshake failed" in stranger.closed_reason
    assert ("does not trust our certificate" in stranger.closed_reason
            or "may have refused our certificate" in stranger.closed_reason)
    assert not stranger.welcomed

    # Meanwhile a good client is served as usual.
    good, _ = mesh.client(node, "good", work, tls=pki.client())
    assert good.welcomed and good.connected
    wait_for(lambda: call(node.server.loop, lambda: len(node.server.connections)) == 1, 10,
             "the refused connections to be gone")


def test_a_required_client_certificate(mesh: Mesh, work: Path, pki: PKI,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    (node,) = mesh.chain(1, server_options={"tls": pki.server(require_client_cert=True)})
    anonymous = start(mesh, node.server.port, "anonymous", pki.client())
    wait_for(lambda: disconnected(anonymous), 10, "the certificate-less client to be refused")
    assert "TLS handshake failed" in anonymous.closed_reason
    assert ("requires a certificate" in anonymous.closed_reason
            or "may have refused our certificate" in anonymous.closed_reason)
    wait_for(lambda: logged(caplog, "sent no certificate"), 10, "the server to say why")
    holder, _ = mesh.client(node, "holder", work, tls=pki.client(cert="client"))
    assert holder.ext


def test_the_certificate_must_carry_the_name_dialled_unless_one_is_given(
        mesh: Mesh, work: Path, pki: PKI) -> None:
    (node,) = mesh.chain(1, server_options={"tls": pki.server(cert="named")})
    by_address = start(mesh, node.server.port, "by-address", pki.client())
    wait_for(lambda: disconnected(by_address), 10, "the name check to fail")
    assert "mismatch" in by_address.closed_reason and "127.0.0.1" in by_address.closed_reason
    by_name, _ = mesh.client(node, "by-name", work, tls=pki.client(server_name="s1.mesh.test"))
    assert by_name.ext


def test_plain_and_tls_peers_on_the_wrong_port_fail_fast(
        mesh: Mesh, pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    tls_node = mesh.add("tls", server_options={"tls": pki.server()})
    plain_node = mesh.add("plain")
    started = time.monotonic()
    plain_client = start(mesh, tls_node.server.port, "plain", None)
    tls_client = start(mesh, plain_node.server.port, "tls", pki.client())
    # Well before any registration or handshake timeout (10 s).
    wait_for(lambda: disconnected(plain_client) and disconnected(tls_client), 8,
             "both clients to see the failure")
    assert time.monotonic() - started < 8
    assert not plain_client.welcomed and not tls_client.welcomed
    assert "TLS handshake failed" in tls_client.closed_reason
    wait_for(lambda: logged(caplog, "TLS handshake failed", "does not speak TLS"), 10,
             "the TLS server to say the peer does not speak TLS")


def test_a_handshake_that_never_completes_ends_at_the_registration_timeout(
        mesh: Mesh, pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    node = mesh.add("s1", server_options={"tls": pki.server(), "registration_timeout": 0.5})
    with socket.create_connection(("127.0.0.1", node.server.port), timeout=10) as silent, \
            socket.create_connection(("127.0.0.1", node.server.port), timeout=10) as halfway:
        halfway.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
        wait_for(lambda: len(logged(caplog, "--registration-timeout")) >= 2, 10,
                 "both stalled handshakes to be dropped")
        for sock in (silent, halfway):
            sock.settimeout(10)
            assert sock.recv(100) == b""       # closed by the server, not left hanging
    # (The socket closes a moment before the server forgets the connection.)
    wait_for(lambda: call(node.server.loop, lambda: len(node.server.connections)) == 0, 10,
             "the server to forget both connections")


def test_a_client_gives_up_on_a_server_that_never_answers_the_handshake(
        pki: PKI, mesh: Mesh) -> None:
    with socket.create_server(("127.0.0.1", 0)) as mute:      # accepts, never speaks
        client = start(mesh, mute.getsockname()[1], "patient",
                               pki.client(handshake_timeout=0.3))
        wait_for(lambda: disconnected(client), 10, "the client's handshake timeout")
    assert client.closed_reason == "TLS handshake failed: not completed within 0.3 s"


# -- the loop stays single-threaded and non-blocking -----------------------------------------


def test_bulk_output_survives_write_and_read_interruptions(pki: PKI) -> None:
    """Small socket buffers make SSL writes stop half way again and again;
    every frame still arrives whole and in order (control bytes never land
    inside a bulk frame)."""
    from crc.net import EventLoop
    from crc.net.tls import TLSConnection as Connection
    from crc.protocol import ClientChat, Extension, Limits, encode_parts

    class Collector:
        def __init__(self) -> None:
            self.messages: list = []

        def on_data(self, conn, data) -> None:
            conn.decode(data)

        def on_messages(self, conn, messages) -> None:
            self.messages += messages

        def on_closed(self, conn, reason) -> None:
            pass

    loop = EventLoop()
    near, far = socket.socketpair()
    near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    received = Collector()
    sender = Connection(loop, near, Collector(), limits=Limits(), label="sender",
                        tls=pki.client().towards("127.0.0.1"))
    receiver = Connection(loop, far, received, limits=Limits(), label="receiver",
                          tls=pki.server().accept)
    frames = [Extension(21, 1, 2, 1, os.urandom(n)) for n in (700_000, 1, 300_000, 65_536)]
    chats = [ClientChat(1, 2, f"chat {i}") for i in range(50)]
    for msg in frames:
        sender.send_bulk(*encode_parts(msg))
    deadline = time.monotonic() + 30
    i = 0
    while len(received.messages) < len(frames) + len(chats):
        assert time.monotonic() < deadline, f"got {len(received.messages)} messages"
        if i < len(chats):
            sender.send(chats[i])
            i += 1
        loop.run_once(max_wait=0.01)
    assert [m for m in received.messages if isinstance(m, Extension)] == frames
    assert [m for m in received.messages if isinstance(m, ClientChat)] == chats
    assert sender.buffered == 0 and not sender.closed and not receiver.closed
    sender.close("done")
    receiver.close("done")
    loop.close()


# -- command lines ------------------------------------------------------------------------------


def tls_server_flags(pki: PKI, *extra: str) -> tuple[str, ...]:
    return ("--tls-cert", pki.path("server.crt"), "--tls-key", pki.path("server.key"),
            "--tls-ca", pki.path("ca.pem"), *extra)


def test_command_lines_over_tls_and_one_server_thread(
        procs: Processes, tmp_path: Path, pki: PKI) -> None:
    first = Server(procs, tmp_path, 1, "alpha", options=tls_server_flags(pki))
    second = Server(procs, tmp_path, 2, "beta", connect=first.port, options=tls_server_flags(pki))
    (tmp_path / "data.txt").write_text("one\ntwo\nthree\n")
    client_flags = ["--tls-ca", pki.path("ca.pem"), "--tls-cert", pki.path("client.crt"),
                    "--tls-key", pki.path("client.key")]

    def batch(*words: str) -> subprocess.CompletedProcess:
        proc = procs.start([CLIENT, "--server", first.address, *client_flags, *words],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL)
        out, err = proc.communicate(timeout=DEADLINE * 2)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    # Batch mode across the TLS link between the servers (once beta's load
    # report has reached alpha, which is what makes --on beta schedulable).
    def ran_on_beta() -> subprocess.CompletedProcess | None:
        result = batch("run", "--on", "beta", "--file", "data.txt", "--", "wc", "-l", "data.txt")
        return result if result.returncode == 0 else None

    result = wait_for(ran_on_beta, DEADLINE * 2, "a batch run on beta over TLS")
    assert result.stdout.split()[0] == "3"

    # The monitor over TLS: both servers, their link shown as TLS.
    watched = batch("monitor", "--once", "--json")
    assert watched.returncode == 0, watched.stderr
    servers = {s["name"]: s for s in json.loads(watched.stdout)["servers"].values()}
    assert set(servers) == {"alpha", "beta"}
    assert [link["tls"] for link in servers["beta"]["links"]] == [True]

    # A chat client over TLS (script mode, from standard input).
    chat = procs.start([CLIENT, "--server", second.address, "--name", "carol", *client_flags],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       cwd=tmp_path)
    out, err = chat.communicate("/who\n/quit bye\n", timeout=DEADLINE)
    assert chat.returncode == 0, (out, err)
    assert "carol" in out

    # All of that — handshakes, bulk transfers, a job — in one thread per server.
    for server in (first, second):
        assert psutil.Process(server.proc.pid).num_threads() == 1
    # The servers logged nothing alarming about the clients (only, perhaps,
    # the test's own port probes, which connect and close without TLS).
    for server in (first, second):
        text = server.log.read_text()
        assert "certificate did not verify" not in text and "does not trust" not in text


def test_bad_certificate_files_stop_the_programs_before_they_start(
        tmp_path: Path, pki: PKI) -> None:
    missing = str(tmp_path / "missing.pem")
    cases = [
        ([SERVER, "--port", "0", "--tls-cert", missing, "--tls-key", pki.path("server.key"),
          "--tls-ca", pki.path("ca.pem")], f"--tls-cert {missing}"),
        ([SERVER, "--port", "0", "--tls-cert", pki.path("server.crt"),
          "--tls-key", pki.path("client.key"), "--tls-ca", pki.path("ca.pem")],
         "does not belong to the certificate"),
        ([SERVER, "--port", "0", "--tls-cert", pki.path("server.crt"),
          "--tls-key", pki.path("server.key"), "--tls-ca", pki.path("server.key")],
         f"--tls-ca {pki.path('server.key')}: no PEM certificate"),
        ([SERVER, "--port", "0", "--tls-cert", pki.path("server.crt")], "missing: --tls-key"),
        ([CLIENT, "--server", "127.0.0.1:1", "--name", "x", "--tls-ca", missing],
         f"--tls-ca {missing}"),
        ([CLIENT, "--server", "127.0.0.1:1", "--tls-ca", pki.path("ca.pem"),
          "--tls-cert", pki.path("client.crt"), "--tls-key", pki.path("server.key"),
          "run", "--", "true"], "does not belong to the certificate"),
        ([CLIENT, "--server", "127.0.0.1:1", "--name", "x", "--tls-cert", pki.path("client.crt"),
          "--tls-key", pki.path("client.key")], "--tls-cert needs --tls-ca"),
    ]
    # Nothing half-started: no log file opened, no work directory made.
    started = ["--log-file", str(tmp_path / "server.log"), "--work-dir", str(tmp_path / "work")]
    for args, expected in cases:
        if args[0] == SERVER:
            args = [*args, *started]
        result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                                env=child_env(), timeout=DEADLINE, stdin=subprocess.DEVNULL,
                                cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "server.log").exists() and not (tmp_path / "work").exists()


def test_settings_errors_name_the_file(tmp_path: Path, pki: PKI) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(TLSConfigError, match=f"--tls-ca {junk}: not a usable PEM certificate"):
        client_tls(str(junk))
    with pytest.raises(TLSConfigError, match="--tls-cert and --tls-key go together"):
        client_tls(pki.path("ca.pem"), pki.path("client.crt"))
