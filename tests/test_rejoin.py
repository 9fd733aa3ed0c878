"""A tree that heals: a server that loses its uplink rejoins through its next
candidate with backoff, its subtree with it, and never links into itself."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .meshkit import Mesh, call, wait_for


def knows(node, other) -> bool:
    return other.server.id in call(node.server.loop, lambda: node.server.routes.hosts)


def test_a_server_that_loses_its_uplink_rejoins_through_the_next_candidate(
        mesh: Mesh, tmp_path: Path) -> None:
    s1 = mesh.add("s1")
    s2 = mesh.add("s2", s1)
    s3 = mesh.add("s3", s2, server_options={
        "candidates": (("127.0.0.1", s1.server.port),), "rejoin": True, "rejoin_delay": 0.05})
    s4 = mesh.add("s4", s3)                      # s3's subtree comes along
    mesh.wait_converged()
    alice, _ = mesh.client(s1, "alice", tmp_path)
    bob, _ = mesh.client(s4, "bob", tmp_path)
    wait_for(lambda: bob.id in alice.users, 5, "alice to see bob")
    s2.kill()
    wait_for(lambda: knows(s1, s3) and knows(s1, s4) and knows(s4, s1) and not knows(s1, s2),
             10, "s3 (with s4) to rejoin through s1")
    wait_for(lambda: bob.id in alice.users, 5, "alice to see bob again")
    call(alice.loop, lambda: alice.send_chat(bob.id, "across the healed tree"))
    wait_for(lambda: any(t == "across the healed tree" for _, t in bob.chat_log), 5,
             "the chat to cross the new link")
    assert call(s3.server.loop, lambda: sorted(s3.server.links)) == sorted(
        [s1.server.id, s4.server.id])


def test_a_server_never_links_into_its_own_subtree(mesh: Mesh) -> None:
    s1 = mesh.add("s1")
    s2 = mesh.add("s2", s1)
    s3 = mesh.add("s3", s2)
    # s2's only other candidate is its own child: joining it would close a loop.
    call(s2.server.loop, lambda: setattr(s2.server.config, "candidates",
                                         (("127.0.0.1", s3.server.port),)))
    call(s2.server.loop, lambda: setattr(s2.server.config, "rejoin", True))
    call(s2.server.loop, lambda: setattr(s2.server.config, "rejoin_delay", 0.02))
    mesh.wait_converged()
    s1.kill()
    wait_for(lambda: not knows(s2, s1) and not knows(s3, s1), 10, "s1's departure")
    # Several refused attempts (s3 knows s2's id; s2 knows s3's), then look.
    wait_for(lambda: call(s2.server.loop, lambda: s2.server.rejoin_attempts) >= 3, 10,
             "s2 to try its candidate a few times")
    assert call(s2.server.loop, lambda: sorted(s2.server.links)) == [s3.server.id]
    assert call(s3.server.loop, lambda: sorted(s3.server.links)) == [s2.server.id]
    assert call(s3.server.loop, lambda: s3.server.routes.first_link(s2.server.id)) == s2.server.id


def test_a_server_that_notices_a_dead_link_late_learns_the_new_path(
        mesh: Mesh, tmp_path: Path) -> None:
    """two loses its uplink silently while one still has the dead link. Its
    id is still known in the mesh, so three refuses it until one has timed
    the link out and its departure has reached three; then two joins through
    three and one, and alice, learn the new path: no server ever holds two
    routes to bob, and none loses him for good."""
    one = mesh.add("one", server_options={"keepalive": 0.2, "dead_after": 1.0})
    three = mesh.add("three", one)
    two = mesh.add("two", one, server_options={
        "candidates": (("127.0.0.1", three.server.port),), "rejoin": True,
        "rejoin_delay": 0.05})
    mesh.wait_converged()
    alice, _ = mesh.client(one, "alice", tmp_path)
    bob, _ = mesh.client(two, "bob", tmp_path)
    wait_for(lambda: bob.id in alice.users and alice.id in bob.users, 5, "both to know the other")
    kept: list[int] = []

    def lose_uplink_silently() -> None:
        uplink = two.server.uplink
        kept.append(os.dup(uplink.sock.fileno()))     # one's end sees no FIN
        uplink.close("test: link lost silently")
    call(two.server.loop, lose_uplink_silently)
    try:
        wait_for(lambda: knows(three, two) and call(
            three.server.loop, lambda: bob.id in three.server.routes.hosts), 5,
            "two (with bob) to rejoin through three")
        wait_for(lambda: not knows(one, two) or call(
            one.server.loop, lambda: one.server.routes.first_link(two.server.id))
            == three.server.id, 10, "one to time the dead link out")
        wait_for(lambda: call(one.server.loop, lambda: one.server.routes.first_link(bob.id))
                 == three.server.id, 5, "one to learn bob's new path")
        wait_for(lambda: bob.id in alice.users, 5, "alice to see bob again")
        call(alice.loop, lambda: alice.send_chat(bob.id, "over the new path"))
        call(bob.loop, lambda: bob.send_chat(alice.id, "and back"))
        wait_for(lambda: any(t == "over the new path" for _, t in bob.chat_log), 10,
                 "alice's chat to reach bob")
        wait_for(lambda: any(t == "and back" for _, t in alice.chat_log), 10,
                 "bob's chat to reach alice")
    finally:
        for fd in kept:
            os.close(fd)


def test_a_client_back_before_its_old_entry_left_is_refused_as_someone_then_admitted(
        mesh: Mesh, tmp_path: Path) -> None:
    """carol's link to one dies silently; she comes back through three under
    her id while the mesh still routes it to one. three (and one, while it
    holds the old link) refuse her with the client's duplicate text (she is a
    client: 'Someone ...'), she tries again, and once one has timed the old
    link out she is admitted, seen by dave and reached by his chats."""
    one = mesh.add("one", server_options={"keepalive": 0.2, "dead_after": 2.0})
    two = mesh.add("two", one)
    three = mesh.add("three", two)
    mesh.wait_converged()
    carol = mesh.chat_client(one, "carol", servers=(("127.0.0.1", three.server.port),),
                             reconnect_delay=0.05, reconnect_max_delay=0.2)
    dave = mesh.chat_client(three, "dave")
    wait_for(lambda: carol.id in dave.users and dave.id in carol.users, 5,
             "carol and dave to know each other")
    kept: list[int] = []

    def lose_link_silently() -> None:
        kept.append(os.dup(carol.conn.sock.fileno()))     # one's end sees no FIN
        carol.conn.close("test: link lost silently")
    call(carol.loop, lose_link_silently)
    try:
        text = f"Someone has already registered with ID {carol.id}"
        wait_for(lambda: text in call(carol.loop, lambda: list(carol.status_log)), 5,
                 "three to refuse carol while one still holds her old link")
        assert call(three.server.loop, lambda: three.server.routes.first_link(carol.id)) \
            == two.server.id
        wait_for(lambda: call(carol.loop, lambda: carol.connections) >= 2, 10,
                 "carol to be admitted again once one has timed her old link out")
        # Wherever she came back (three, or one itself), every server agrees.
        home = call(carol.loop, lambda: carol.server_address[1])
        entry = one if home == one.server.port else three
        for node in (one, two, three):
            hop = call(node.server.loop, lambda n=node: n.server.routes.first_link(carol.id))
            if node is entry:
                assert hop == carol.id
            else:
                wait_for(lambda n=node: call(n.server.loop, lambda: n.server.routes.first_link(
                    carol.id)) not in (None, carol.id), 5, f"{node.name} to route carol")
        wait_for(lambda: carol.id in dave.users, 5, "dave to see carol again")
        call(dave.loop, lambda: dave.send_chat(carol.id, "found you"))
        wait_for(lambda: any(t == "found you" for _, t in carol.chat_log), 10,
                 "dave's chat to reach carol")
        assert "A machine has already registered" not in " ".join(
            call(carol.loop, lambda: list(carol.status_log)))
    finally:
        for fd in kept:
            os.close(fd)


def test_a_client_leaves_a_frozen_server_for_its_next_one(mesh: Mesh) -> None:
    """one stops running (its loop blocked, its sockets open: what SIGSTOP
    does to a process); carol, whose pings go unanswered, takes it for gone
    after --dead-after and reconnects through two (admitted once two, too,
    has timed one out)."""
    quick = {"keepalive": 0.2, "dead_after": 1.0}
    one = mesh.add("one", server_options=quick)
    two = mesh.add("two", one, server_options=quick)
    mesh.wait_converged()
    carol = mesh.chat_client(one, "carol", servers=(("127.0.0.1", two.server.port),),
                             keepalive=0.2, dead_after=1.0, reconnect_delay=0.05)
    thaw = threading.Event()
    one.server.loop.call_soon_threadsafe(thaw.wait, 30)      # one freezes
    try:
        wait_for(lambda: call(carol.loop, lambda: carol.server_address[1]) == two.server.port
                 and carol.connections >= 2, 15, "carol to reconnect through two")
    finally:
        thaw.set()
    assert call(two.server.loop, lambda: two.server.routes.first_link(carol.id)) == carol.id
