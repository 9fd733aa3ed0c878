"""Server behaviour over in-memory socket pairs, one loop pass at a time.

Each test drives a ``MeshServer`` that never listens: peers are attached
through ``socket.socketpair()`` and the test plays the other end with the
codec, so every byte the server sends is checked and nothing depends on
timing.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from crc.protocol import (
    ClientChat, ClientQuit, ClientRegistration, Decoder, LinkKind, MsgType,
    ServerRegistration, Status, StatusCode, encode,
)
from crc.protocol.handshake import Hello
from crc.server import Link, MeshServer, Role, ServerConfig


class Peer:
    """The far end of a socketpair attached to the server."""

    def __init__(self, harness: "Harness", sock: socket.socket) -> None:
        self.harness = harness
        self.sock = sock
        self.sock.setblocking(False)
        self.decoder = Decoder()
        self.inbox: list = []
        self.eof = False

    def send(self, *msgs) -> None:
        for msg in msgs:
            self.sock.sendall(encode(msg))
        self.harness.pump()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.harness.pump()

    def read(self) -> list:
        """Everything received since the last read."""
        self.harness.pump()
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            if not data:
                self.eof = True
                break
            self.inbox += self.decoder.feed(data)
        out, self.inbox = self.inbox, []
        return out


class Harness:
    def __init__(self, server_id: int = 1, name: str = "hub") -> None:
        self.server = MeshServer(ServerConfig(port=0, id=server_id, name=name))

    def pump(self, passes: int = 5) -> None:
        for _ in range(passes):
            self.server.loop.run_once(0)

    def attach(self, label: str = "peer") -> Peer:
        ours, theirs = socket.socketpair()
        self.server._new_connection(ours, Link(Role.PENDING), label)
        return Peer(self, theirs)

    def client(self, cid: int, name: str, hello: bool = False) -> Peer:
        peer = self.attach(name)
        peer.send(ClientRegistration(cid, 0, name, "info"))
        if hello:
            peer.send(Status(cid, cid, StatusCode.MESH_HELLO, Hello(role="client").text()))
        return peer

    def mesh_server(self, sid: int, name: str) -> Peer:
        """An adjacent server that completes the extension handshake."""
        peer = self.attach(name)
        peer.send(ServerRegistration(sid, 0, name, ""))
        peer.send(Status(sid, sid, StatusCode.MESH_HELLO, Hello().text()))
        return peer

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def hub():
    h = Harness()
    yield h
    h.close()


def statuses(msgs: list) -> list[str]:
    return [m.text for m in msgs if isinstance(m, Status)]


def test_client_gets_exact_welcome_then_the_other_clients(hub: Harness) -> None:
    alice = hub.client(10, "alice")
    assert alice.read() == [Status(1, 10, StatusCode.WELCOME,
                                   "Welcome to the Clemson Relay Chat network alice")]
    bob = hub.client(11, "bob")
    got = bob.read()
    assert got[0].text == "Welcome to the Clemson Relay Chat network bob"
    assert got[1:] == [ClientRegistration(10, 1, "alice", "info")]
    assert alice.read() == [ClientRegistration(11, 1, "bob", "info")]


def test_duplicate_client_id_is_refused_with_exact_text_and_closed(hub: Harness) -> None:
    alice = hub.client(10, "alice")
    dup = hub.client(10, "mallory")
    assert dup.read() == [Status(1, 10, StatusCode.DUPLICATE_ID,
                                 "Someone has already registered with ID 10")]
    dup.read()
    assert dup.eof
    assert sorted(hub.server.routes.hosts) == [10]
    assert not alice.eof


def test_duplicate_of_the_server_own_id_is_refused(hub: Harness) -> None:
    peer = hub.attach()
    peer.send(ServerRegistration(1, 0, "twin", ""))
    assert statuses(peer.read()) == ["A machine has already registered with ID 1"]


@pytest.mark.parametrize("newcomer, text", [
    (ClientRegistration(10, 2, "mallory", "far"), "Someone has already registered with ID 10"),
    (ServerRegistration(10, 2, "mordor", "far"), "A machine has already registered with ID 10"),
    (ClientRegistration(1, 2, "mallory", "far"), "Someone has already registered with ID 1"),
    (ServerRegistration(1, 2, "mordor", "far"), "A machine has already registered with ID 1"),
], ids=["client-over-client", "server-over-client", "client-over-server", "server-over-server"])
def test_a_duplicate_arriving_through_another_server_is_refused_towards_the_newcomer(
        hub: Harness, newcomer, text: str) -> None:
    alice, far = alice_and_a_mesh_server(hub)
    far.send(newcomer)
    # Back over the link it came on: there, the id leads to the newcomer.
    assert far.read() == [Status(1, newcomer.source, StatusCode.DUPLICATE_ID, text)]
    assert alice.read() == []
    assert hub.server.routes.get(10).name == "alice"
    assert sorted(hub.server.routes.hosts) == [2, 10]


def test_a_departure_of_a_host_reached_elsewhere_is_answered_with_its_registration(
        hub: Harness) -> None:
    """A client that came back through us while the far side still dropped its
    old path: the far side's quit is answered by announcing the client there
    again, and the client stays."""
    alice, far = alice_and_a_mesh_server(hub)
    far.send(ClientQuit(10, "link lost"))
    assert far.read() == [ClientRegistration(10, 1, "alice", "info")]
    assert alice.read() == [] and not alice.eof
    assert hub.server.routes.first_link(10) == 10
    # A departure the far side may announce (a host behind it) is taken as before.
    far.send(ClientRegistration(20, 2, "bob", ""))
    assert alice.read() == [ClientRegistration(20, 1, "bob", "")]
    far.send(ClientQuit(20, "bye"))
    assert alice.read() == [ClientQuit(20, "bye")]
    assert far.read() == []


def test_joining_server_gets_own_registration_first_then_everything(hub: Harness) -> None:
    alice = hub.client(10, "alice")
    alice.read()
    joiner = hub.attach()
    joiner.send(ServerRegistration(2, 0, "b", "B info"))
    got = joiner.read()
    assert got[0] == ServerRegistration(1, 1, "hub", "")
    assert got[1:] == [ClientRegistration(10, 1, "alice", "info")]
    # Clients are never told about servers.
    assert alice.read() == []


def test_registrations_flood_but_never_back(hub: Harness) -> None:
    b = hub.mesh_server(2, "b")
    c = hub.mesh_server(3, "c")
    b.read(), c.read()
    b.send(ServerRegistration(20, 2, "far", ""), ClientRegistration(21, 2, "zed", ""))
    assert b.read() == []
    assert c.read() == [ServerRegistration(20, 1, "far", ""), ClientRegistration(21, 1, "zed", "")]
    assert hub.server.routes.first_link(21) == 2


def test_chat_follows_the_first_link_and_unknown_dest_gets_status(hub: Harness) -> None:
    b = hub.mesh_server(2, "b")
    b.send(ClientRegistration(21, 2, "zed", ""))
    alice = hub.client(10, "alice")
    b.read(), alice.read()
    alice.send(ClientChat(10, 21, "hi zed"))
    assert b.read() == [ClientChat(10, 21, "hi zed")]
    alice.send(ClientChat(10, 999, "anyone?"))
    assert alice.read() == [Status(1, 10, StatusCode.UNKNOWN_ID, "Unknown ID 999")]


def test_spoofed_source_is_dropped(hub: Harness) -> None:
    alice = hub.client(10, "alice")
    bob = hub.client(11, "bob")
    alice.read(), bob.read()
    alice.send(ClientChat(11, 10, "I am bob"))   # alice pretends to be bob
    assert alice.read() == [] and bob.read() == []


def test_status_for_server_is_logged_others_forwarded(hub: Harness) -> None:
    b = hub.mesh_server(2, "b")
    alice = hub.client(10, "alice")
    b.read(), alice.read()
    b.send(Status(2, 1, 0, "for hub"), Status(2, 0, 0, "for whoever"), Status(2, 10, 0, "for alice"))
    assert hub.server.status_log == ["for hub", "for whoever"]
    assert statuses(alice.read()) == ["for alice"]


def test_client_quit_floods_and_removes(hub: Harness) -> None:
    b = hub.mesh_server(2, "b")
    alice = hub.client(10, "alice")
    bob = hub.client(11, "bob")
    b.read(), alice.read(), bob.read()
    alice.send(ClientQuit(10, "bye"))
    assert b.read() == [ClientQuit(10, "bye")]
    assert bob.read() == [ClientQuit(10, "bye")]
    assert 10 not in hub.server.routes


def test_plain_v1_server_never_receives_extension_types(hub: Harness) -> None:
    """Link loss behind a mesh link is told to a v1 server as client quits only."""
    v1 = hub.attach("v1")
    v1.send(ServerRegistration(5, 0, "old", ""))        # never says hello
    mesh = hub.mesh_server(2, "b")
    mesh.send(ServerRegistration(3, 2, "c", ""), ClientRegistration(30, 2, "carol", ""))
    alice = hub.client(10, "alice")
    v1.read(), alice.read()
    mesh.sock.close()                                   # the mesh subtree vanishes
    got = v1.read()
    assert {type(m) for m in got} == {ClientQuit}
    assert sorted(m.source for m in got) == [2, 3, 30]
    assert all(m.type in (MsgType.SERVER_REGISTRATION, MsgType.CLIENT_REGISTRATION,
                          MsgType.STATUS, MsgType.CLIENT_CHAT, MsgType.CLIENT_QUIT) for m in got)
    # Clients hear only of clients.
    assert alice.read() == [ClientQuit(30, "link lost")]
    assert sorted(hub.server.routes.hosts) == [5, 10]


def test_mesh_server_hears_server_departures(hub: Harness) -> None:
    left = hub.mesh_server(2, "b")
    left.send(ServerRegistration(3, 2, "c", ""), ClientRegistration(30, 2, "carol", ""))
    right = hub.mesh_server(4, "d")
    right.read()
    left.sock.close()
    got = right.read()
    assert sorted((type(m).__name__, m.source) for m in got) == [
        ("ClientQuit", 30), ("ServerQuit", 2), ("ServerQuit", 3)]


def test_hello_handshake_marks_link_and_echo_means_v1() -> None:
    h = Harness()
    try:
        b = h.mesh_server(2, "b")
        got = b.read()
        reply = [m for m in got if isinstance(m, Status) and m.code == StatusCode.MESH_HELLO_REPLY]
        assert reply and reply[0].source == 1 and reply[0].dest == 2
        assert h.server.links[2].peer.ext
        # A v1 client never says hello and its link stays plain.
        h.client(10, "plain")
        assert not h.server.links[10].peer.ext
    finally:
        h.close()


def test_garbage_disconnects_only_the_sender(hub: Harness) -> None:
    alice = hub.client(10, "alice")
    bob = hub.client(11, "bob")
    alice.read(), bob.read()
    bob.send_raw(b"\x99garbage")
    bob.read()
    assert bob.eof
    assert alice.read() == [ClientQuit(11, "link lost")]
    alice.send(ClientChat(10, 11, "still there?"))
    assert statuses(alice.read()) == ["Unknown ID 11"]


def test_extension_frames_from_a_v1_link_are_a_protocol_error(hub: Harness) -> None:
    from crc.protocol import Extension
    v1 = hub.attach("v1")
    v1.send(ServerRegistration(5, 0, "old", ""))
    v1.read()
    v1.send(Extension(1, 5, 0, 0, b"x"))
    v1.read()
    assert v1.eof and 5 not in hub.server.routes


def test_state_query_returns_snapshot_json(hub: Harness) -> None:
    alice = hub.client(10, "alice")
    alice.read()
    q = hub.attach("query")
    q.send(Status(0, 0, StatusCode.STATE_QUERY, ""))
    (reply,) = q.read()
    state = json.loads(reply.text)
    assert reply.code == StatusCode.STATE_REPLY
    assert state["hosts_db"] == [10] and state["adjacent_user_ids"] == [10]
    q.read()
    assert q.eof


def test_large_chat_written_one_byte_at_a_time(hub: Harness) -> None:
    alice = hub.client(10, "alice")
    bob = hub.client(11, "bob")
    alice.read(), bob.read()
    raw = encode(ClientChat(10, 11, "é" * 3000))
    for i in range(len(raw)):
        alice.sock.send(raw[i:i + 1])
        hub.pump(1)
    deadline = time.monotonic() + 5
    got: list = []
    while not got and time.monotonic() < deadline:
        got = bob.read()
    assert got == [ClientChat(10, 11, "é" * 3000)]


def test_uplink_accepting_us_late_is_told_to_servers_that_joined_us_first(hub: Harness) -> None:
    """A server that joined us before our own join completed learns of the uplink."""
    early = hub.mesh_server(2, "early")
    early.read()
    ours, theirs = socket.socketpair()
    hub.server._new_connection(ours, Link(Role.JOINING, outbound=True), "uplink")
    uplink = Peer(hub, theirs)
    uplink.send(ServerRegistration(9, 9, "up", ""))
    assert ServerRegistration(9, 1, "up", "") in early.read()
    assert ServerRegistration(2, 1, "early", "") in uplink.read()


def _chat_between_hellos(hub: Harness):
    """alice (a mesh client) sends a reliable chat to bob, behind server two,
    whose hello has not come yet: the hub holds it and answers nothing."""
    from crc.delivery.wire import ChatKind, pack_chat
    from crc.protocol import Extension
    alice = hub.client(10, "alice", hello=True)
    two = hub.attach("two")
    two.send(ServerRegistration(20, 0, "two", ""), ClientRegistration(21, 20, "bob", ""))
    alice.read(), two.read()
    chat = Extension(ChatKind.CHAT, 10, 21, 0, pack_chat(77, 1, 1, "early"))
    alice.send(chat)
    alice.send(chat)                                  # a resend meanwhile: held once
    assert [m for m in two.read() if isinstance(m, Extension)] == []
    assert [m for m in alice.read() if isinstance(m, Extension)] == []
    return alice, two, chat


def test_a_reliable_chat_waits_for_the_next_links_hello_then_goes_on(hub: Harness) -> None:
    from crc.protocol import Extension
    alice, two, chat = _chat_between_hellos(hub)
    two.send(Status(20, 20, StatusCode.MESH_HELLO, Hello().text()))
    assert [m for m in two.read() if isinstance(m, Extension)] == [chat]


def test_a_held_chat_goes_out_as_v1_when_the_next_link_is_plain(hub: Harness) -> None:
    from crc.delivery.wire import ChatKind, pack_ack
    from crc.protocol import Extension
    alice, two, chat = _chat_between_hellos(hub)
    two.send(Status(1, 1, StatusCode.MESH_HELLO, Hello().text()))   # a v1 server echoes it
    assert [m for m in two.read() if isinstance(m, ClientChat)] == [ClientChat(10, 21, "early")]
    assert [m for m in alice.read() if isinstance(m, Extension)] == [
        Extension(ChatKind.ACK, 21, 10, 0, pack_ack(77, 1))]


def test_held_chats_are_dropped_if_the_hello_never_comes(hub: Harness) -> None:
    """The sender resends them; each is handed over then (converting the held
    copies could race a resend already on its way and show a chat twice)."""
    alice, two, _ = _chat_between_hellos(hub)
    conn = hub.server.links[20]
    conn.peer.settle_at = hub.server.loop.time()          # the time limit passes in silence
    hub.server._flush_held(conn)
    assert conn.peer.held == {} and two.read() == [] and alice.read() == []


def test_chats_held_for_hellos_are_capped_per_link_and_counted_back(hub: Harness) -> None:
    from crc.delivery.wire import ChatKind, pack_chat
    from crc.protocol import Extension
    from crc.server.server import HELD_MAX
    alice = hub.client(10, "alice", hello=True)
    two = hub.attach("two")
    two.send(ServerRegistration(20, 0, "two", ""), ClientRegistration(21, 20, "bob", ""))
    alice.read(), two.read()
    text = "x" * (HELD_MAX // 4)
    for seq in range(1, 7):                      # six chats of a quarter of the cap each
        alice.send(Extension(ChatKind.CHAT, 10, 21, 0, pack_chat(5, seq, 1, text)))
    link = hub.server.links[20].peer
    assert len(link.held) == 3 and link.held_bytes <= HELD_MAX     # the rest: resent later
    assert hub.server._held_total == link.held_bytes
    two.send(Status(20, 20, StatusCode.MESH_HELLO, Hello().text()))
    assert len([m for m in two.read() if isinstance(m, Extension)]) == 3
    assert link.held == {} and hub.server._held_total == 0


# -- v1 conformance: our status codes from afar are plain statuses --------------------------

def alice_and_a_mesh_server(hub: Harness) -> tuple[Peer, Peer]:
    """alice (10) on the hub, and an adjacent mesh server "b" (2); both read."""
    alice = hub.client(10, "alice")
    alice.read()
    far = hub.mesh_server(2, "b")
    far.read()
    alice.read()
    return alice, far


def alice_and_a_plain_server_with_bob(hub: Harness) -> tuple[Peer, Peer]:
    """alice (10) on the hub, and a plain v1 server (2) with bob (20) behind it."""
    alice = hub.client(10, "alice")
    alice.read()
    plain = hub.attach("plain")
    plain.send(ServerRegistration(2, 0, "plain", ""))
    plain.read()
    plain.send(ClientRegistration(20, 2, "bob", ""))
    assert alice.read() == [ClientRegistration(20, 1, "bob", "")]
    return alice, plain


@pytest.mark.parametrize("code", [StatusCode.MESH_HELLO, StatusCode.MESH_HELLO_REPLY,
                                  StatusCode.AUTH_CHALLENGE, StatusCode.AUTH_PROOF,
                                  StatusCode.AUTH_OK])
def test_a_status_with_our_codes_not_between_the_link_ends_is_passed_on(
        hub: Harness, code: int) -> None:
    """A plain v1 server may forward any status; one carrying our codes that
    is not a step of this link (from further away, or to someone else) is a
    v1 status: passed on or logged, never a reason to drop the link."""
    alice, plain = alice_and_a_plain_server_with_bob(hub)
    relayed = Status(20, 10, code, "from bob")
    plain.send(relayed)
    assert alice.read() == [relayed]
    plain.send(Status(20, 1, code, "for the hub"), Status(2, 0, code, "for anyone"))
    assert hub.server.status_log[-2:] == ["for the hub", "for anyone"]
    assert not plain.eof and sorted(hub.server.routes.hosts) == [2, 10, 20]


def test_a_status_whose_source_is_not_behind_its_link_is_dropped(hub: Harness) -> None:
    alice = hub.client(10, "alice")
    alice.read()
    bob = hub.client(11, "bob")
    bob.read()
    alice.read()
    bob.send(Status(10, 10, StatusCode.UNKNOWN_ID, "Unknown ID 5"))   # claims to be alice
    assert alice.read() == [] and not bob.eof


def test_a_flooded_registration_with_id_0_is_ignored_and_the_link_kept(hub: Harness) -> None:
    alice, far = alice_and_a_mesh_server(hub)
    far.send(ClientRegistration(0, 2, "nobody", ""), ServerRegistration(0, 2, "nothing", ""))
    far.send(ClientRegistration(20, 2, "bob", ""))
    assert alice.read() == [ClientRegistration(20, 1, "bob", "")]
    assert not far.eof and sorted(hub.server.routes.hosts) == [2, 10, 20]


def test_a_newcomer_with_id_0_is_refused_as_invalid(hub: Harness) -> None:
    peer = hub.attach()
    peer.send(ClientRegistration(0, 0, "zero", ""))
    assert statuses(peer.read()) == ["ID 0 is not a valid ID: choose one from 1 to 4294967295"]
    peer.read()
    assert peer.eof and not hub.server.routes.hosts


def test_a_server_quitting_as_a_client_takes_its_link_and_subtree_along(hub: Harness) -> None:
    alice, plain = alice_and_a_plain_server_with_bob(hub)
    plain.send(ClientQuit(2, "leaving"))
    plain.read()
    assert plain.eof
    assert sorted(hub.server.routes.hosts) == [10]
    assert alice.read() == [ClientQuit(20, "link lost")]
    # A server of the same id may join again afterwards.
    again = hub.attach("again")
    again.send(ServerRegistration(2, 0, "plain", ""))
    assert again.read()[0] == ServerRegistration(1, 1, "hub", "")


def test_names_and_infos_that_do_not_fit_the_wire_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match="name is 300 bytes"):
        ServerConfig(port=0, name="n" * 300)
    with pytest.raises(ValueError, match="info is 70000 bytes"):
        ServerConfig(port=0, info="i" * 70000)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        ServerConfig(port=0, name="a\udcffb")
    ServerConfig(port=0, name="é" * 127, info="i" * 65535)          # 254 bytes: fine


def test_a_recording_server_keeps_connections_that_never_register() -> None:
    from crc.scenarios.machines import RecordingServer
    server = RecordingServer(ServerConfig(port=0, id=1, name="recorder"))
    try:
        ours, theirs = socket.socketpair()
        conn = server._new_connection(ours, Link(Role.PENDING), "peer")
        theirs.sendall(b"\x00\x01")
        server._registration_deadline(conn)
        server.loop.run_once(0)
        assert not conn.closed
        theirs.close()
    finally:
        server.close()


# -- a server that was not running itself ----------------------------------------------------

def test_a_server_that_did_not_run_pings_before_it_judges_a_silent_link(hub: Harness) -> None:
    """After a freeze (SIGSTOP, a starved VM) the first pass may run timers
    before it reads what peers sent meanwhile: our own silence is not theirs."""
    alice = hub.client(10, "alice", hello=True)
    alice.read()
    server = hub.server
    conn = server.links[10]
    now = server.loop.time()
    server._tick_due = now - 10.0                   # the tick is 10 s late: we were stopped
    conn.last_received = now - 10.0                 # ... and read nothing meanwhile
    server._keepalive_tick()
    hub.pump()
    assert not conn.closed
    assert [m.kind for m in alice.read()] == [LinkKind.PING]
    # A link that is really silent is still dropped when the server did run.
    server._tick_due = server.loop.time()
    conn.last_received = server.loop.time() - server.config.dead_after - 1
    server._keepalive_tick()
    hub.pump()
    assert conn.closed


def test_a_shared_server_name_is_said_once_however_many_share_it(
        hub: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """(Each announcement used to list every namesake: quadratic in both the
    time it took and the log it wrote, a flood of registrations froze us.)"""
    far = hub.mesh_server(2, "b")
    far.read()
    for start in range(0, 300, 50):
        far.send(*(ServerRegistration(100 + i, 2, f"name{i % 3}", "")
                   for i in range(start, start + 50)))
    assert len(hub.server.routes) == 301
    assert caplog.text.count("give each server its own --name") == 3
