"""Limits and liveness: connection cap, registration deadline, slow readers,
keepalives on silent links, per-client job quotas. Each is checked on live
in-process servers over real sockets, together with a well-behaved client that
must keep being served."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from crc.protocol import ClientChat, ClientRegistration, encode

from .meshkit import Mesh, call, wait_for
from .test_jobs import finished, submit


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the other end closes ``sock`` within ``timeout`` (reading and
    discarding whatever arrives meanwhile)."""
    sock.settimeout(0.05)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


def chat_round_trip(mesh: Mesh, node, tmp_path: Path, tag: str) -> None:
    """A registered client on ``node`` can still talk to another one."""
    a, _ = mesh.client(node, f"{tag}-a", tmp_path)
    b, _ = mesh.client(node, f"{tag}-b", tmp_path)
    wait_for(lambda: b.id in a.users, 5, "a to know b")
    call(a.loop, lambda: a.send_chat(b.id, f"still served ({tag})"))
    wait_for(lambda: any(t == f"still served ({tag})" for _, t in b.chat_log), 5,
             "the chat to arrive")


def test_a_connection_that_never_registers_is_closed_at_the_deadline(
        mesh: Mesh, tmp_path: Path) -> None:
    node = mesh.add("s1", server_options={"registration_timeout": 0.3})
    silent = socket.create_connection(("127.0.0.1", node.server.port))
    half = socket.create_connection(("127.0.0.1", node.server.port))
    half.sendall(encode(ClientRegistration(77, 0, "half", "a registration cut short"))[:9])
    chat_round_trip(mesh, node, tmp_path, "meanwhile")
    assert closed_by_peer(silent, 5)
    assert closed_by_peer(half, 5)
    assert 77 not in call(node.server.loop, lambda: node.server.routes.hosts)


def test_registered_clients_hold_no_timers_and_outlive_the_deadline(mesh: Mesh) -> None:
    """Admitted peers cost no timer each (the registration deadline is
    cancelled, the hello deadline is worked out when needed): a crowd of idle
    clients never wakes the server."""
    node = mesh.add("s1", server_options={"registration_timeout": 0.5})
    loop = node.server.loop

    def live_timers() -> int:
        return call(loop, lambda: sum(not t.cancelled for t in loop._timers))

    baseline = live_timers()
    crowd = []
    for i in range(40):
        sock = socket.create_connection(("127.0.0.1", node.server.port))
        sock.sendall(encode(ClientRegistration(500 + i, 0, f"idle{i}", "")))
        crowd.append(sock)
    wait_for(lambda: all(500 + i in call(loop, lambda: node.server.routes.hosts)
                         for i in range(40)), 10, "the crowd to register")
    assert live_timers() <= baseline
    late = socket.create_connection(("127.0.0.1", node.server.port))
    assert closed_by_peer(late, 5)                  # the deadline has passed for everyone
    assert all(500 + i in call(loop, lambda: node.server.routes.hosts) for i in range(40))
    for sock in crowd:
        sock.close()


def test_connections_over_the_limit_are_refused_and_logged(
        mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    node = mesh.add("s1", server_options={"max_connections": 4, "registration_timeout": 30})
    held = [socket.create_connection(("127.0.0.1", node.server.port)) for _ in range(4)]
    wait_for(lambda: call(node.server.loop, lambda: len(node.server.connections)) == 4, 5,
             "the server to hold four connections")
    with caplog.at_level(logging.WARNING, logger="crc.server.server"):
        extra = socket.create_connection(("127.0.0.1", node.server.port))
        assert closed_by_peer(extra, 5)
    assert "connection limit (4, --max-connections) reached" in caplog.text
    held.pop().close()
    wait_for(lambda: call(node.server.loop, lambda: len(node.server.connections)) == 3, 5,
             "a slot to free up")
    again = socket.create_connection(("127.0.0.1", node.server.port))
    again.sendall(encode(ClientRegistration(78, 0, "late", "")))
    wait_for(lambda: 78 in call(node.server.loop, lambda: node.server.routes.hosts), 5,
             "a connection to be accepted again")
    for sock in [*held, extra, again]:
        sock.close()


def test_a_client_that_does_not_read_is_dropped_and_others_are_served(
        mesh: Mesh, tmp_path: Path) -> None:
    node = mesh.add("s1", server_options={"max_send_buffer": 256 * 1024})
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", node.server.port))
    slow.sendall(encode(ClientRegistration(90, 0, "slow", "never reads")))
    wait_for(lambda: 90 in call(node.server.loop, lambda: node.server.routes.hosts), 5,
             "the slow client to register")
    flood = socket.create_connection(("127.0.0.1", node.server.port))
    flood.sendall(encode(ClientRegistration(91, 0, "flood", "")))
    chat = encode(ClientChat(91, 90, "x" * 4000))
    stop = threading.Event()

    def pour() -> None:           # until the server stops reading it or drops the slow one
        flood.settimeout(0.2)
        while not stop.is_set():
            try:
                flood.sendall(chat * 16)
            except (socket.timeout, OSError):
                pass
    pourer = threading.Thread(target=pour, daemon=True)
    pourer.start()
    try:
        wait_for(lambda: 90 not in call(node.server.loop, lambda: node.server.routes.hosts), 20,
                 "the slow reader to be dropped")
    finally:
        stop.set()
        pourer.join(5)
    chat_round_trip(mesh, node, tmp_path, "after")
    backlog = call(node.server.loop, lambda: max((c.buffered for c in node.server.connections),
                                                 default=0))
    assert backlog <= 256 * 1024
    slow.close()
    flood.close()


def test_a_silent_mesh_link_is_dropped_by_keepalive_and_a_quiet_one_kept(
        mesh: Mesh, tmp_path: Path) -> None:
    fast = {"keepalive": 0.1, "dead_after": 0.5}
    s1 = mesh.add("s1", server_options=fast)
    s2 = mesh.add("s2", s1, server_options=fast)
    client, _ = mesh.client(s1, "idle-client", tmp_path)
    mesh.wait_converged()
    # Quiet but alive: pings keep the link and the extension client up. The
    # client sends nothing but answers; each ping follows at least
    # ``keepalive`` (0.1 s) of quiet, so 15 of them span three ``dead_after``
    # periods in which only keepalives kept the client's link up.
    def client_pings() -> int:
        return call(s1.server.loop, lambda: s1.server.links[client.id].peer.pings
                    if client.id in s1.server.links else 0)
    wait_for(lambda: client_pings() >= 15, 20, "15 keepalive rounds on the client's link")
    assert call(s1.server.loop, lambda: s2.server.id in s1.server.routes.hosts)
    assert client.id in call(s1.server.loop, lambda: s1.server.routes.hosts)
    # Silent: s2's loop is frozen (a hung host; TCP reports nothing).
    release = threading.Event()
    s2.server.loop.call_soon_threadsafe(release.wait, 10)
    try:
        started = time.monotonic()
        wait_for(lambda: s2.server.id not in call(s1.server.loop,
                                                 lambda: s1.server.routes.hosts),
                 5, "s1 to give up on the silent s2")
        assert time.monotonic() - started < 2.0
    finally:
        release.set()


def test_a_client_over_its_job_quota_gets_a_clear_error(mesh: Mesh, tmp_path: Path) -> None:
    """The entry enforces the quota whatever a client does (here one that
    sends SUBMIT frames itself, past the window ``JobClient`` keeps)."""
    from crc.jobs.wire import Kind, frame
    (node,) = mesh.chain(1, max_jobs_per_client=2)
    client, jobs = mesh.client(node, "greedy", tmp_path)
    assert jobs.max_jobs == 2                        # told in the hello reply
    running = [submit(client, jobs, shell="sleep 30")[0] for _ in range(2)]
    wait_for(lambda: call(client.loop, lambda: all(j.accepted for j in running)), 10,
             "both to be accepted")
    refusals: list[str] = []
    call(client.loop, lambda: client.extension_handlers.__setitem__(
        Kind.FAILED, lambda msg: refusals.append(msg.payload.decode("utf-8", "replace"))))
    call(client.loop, lambda: client.send_extension(frame(Kind.SUBMIT, client.id, 0, {
        "job": f"{client.id}.raw.1", "files": [], "stdin": False, "shell": "true"})))
    wait_for(lambda: refusals, 10, "the refusal")
    assert "job quota: 2 unfinished job(s), at most 2 per client" in refusals[0]
    for job in running:
        call(client.loop, lambda job=job: jobs.cancel(job.id))


def test_jobs_beyond_the_quota_wait_for_room_instead_of_failing(
        mesh: Mesh, tmp_path: Path) -> None:
    (node,) = mesh.chain(1, max_jobs_per_client=2)
    client, jobs = mesh.client(node, "patient", tmp_path)
    running = [submit(client, jobs, shell="sleep 30")[0] for _ in range(2)]
    extra, _ = submit(client, jobs, shell="true")
    wait_for(lambda: call(client.loop, lambda: all(j.accepted for j in running)), 10,
             "the first two to be accepted")
    assert not call(client.loop, lambda: extra.sent)          # held back, not refused
    call(client.loop, lambda: jobs.cancel(running[0].id))
    assert finished(extra, 10).exit_code == 0
    assert not extra.error
    call(client.loop, lambda: jobs.cancel(running[1].id))
