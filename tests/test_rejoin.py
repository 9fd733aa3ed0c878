"""A tree that heals: a server that loses its uplink rejoins through its next
candidate with backoff, its subtree with it, and never links into itself."""

from __future__ import annotations

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
