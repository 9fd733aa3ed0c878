"""Reliable chat on live in-process meshes: every message exactly once, in order,
across cut connections, cut server links, absent recipients and plain v1 peers."""

from __future__ import annotations

from crc.client import ChatClient
from crc.delivery import ChatKind, pack_chat
from crc.protocol import Extension
from .meshkit import Mesh, call, wait_for


def texts_from(client: ChatClient, source: int) -> list[str]:
    return call(client.loop, lambda: [t for s, t in client.chat_log if s == source])


def send_many(client: ChatClient, dest: int, texts: list[str]) -> None:
    call(client.loop, lambda: [client.send_chat(dest, t) for t in texts])


def outbox_empty(client: ChatClient) -> bool:
    return call(client.loop, lambda: len(client.outbox) == 0)


def test_chats_cross_three_servers_in_order_and_are_acknowledged(mesh):
    s1, s2, s3 = mesh.chain(3)
    alice = mesh.chat_client(s1, "alice")
    bob = mesh.chat_client(s3, "bob")
    assert alice.rchat and bob.rchat
    texts = [f"m{i} ünïcode" for i in range(300)]
    send_many(alice, bob.id, texts)
    wait_for(lambda: len(texts_from(bob, alice.id)) >= 300, 10, "300 chats at bob")
    wait_for(lambda: outbox_empty(alice), 10, "alice's outbox to drain")
    assert texts_from(bob, alice.id) == texts


def test_a_cut_client_connection_loses_and_repeats_nothing(mesh):
    s1, s2 = mesh.chain(2)
    alice = mesh.chat_client(s1, "alice", servers=(("127.0.0.1", s2.server.port),))
    bob = mesh.chat_client(s2, "bob")
    texts = [f"before {i}" for i in range(400)]

    def burst_then_cut() -> None:
        for t in texts:
            alice.send_chat(bob.id, t)
        alice.conn.close("cut by the test")       # much of the burst is still queued
    call(alice.loop, burst_then_cut)
    wait_for(lambda: call(alice.loop, lambda: alice.connections) >= 2, 15,
             "alice to reconnect")
    more = [f"after {i}" for i in range(100)]
    send_many(alice, bob.id, more)
    wait_for(lambda: len(texts_from(bob, alice.id)) >= 500, 15, "500 chats at bob")
    wait_for(lambda: outbox_empty(alice), 10, "alice's outbox to drain")
    assert texts_from(bob, alice.id) == texts + more


def test_a_cut_server_link_heals_and_nothing_is_lost(mesh):
    s1 = mesh.add("s1")
    s2 = mesh.add("s2", s1)
    s3 = mesh.add("s3", s2, server_options={
        "rejoin": True, "candidates": (("127.0.0.1", s1.server.port),),
        "rejoin_delay": 0.05})
    mesh.wait_converged()
    alice = mesh.chat_client(s1, "alice", resend_after=0.3)
    bob = mesh.chat_client(s3, "bob", resend_after=0.3)
    sent: list[str] = []
    for round_ in range(3):
        batch = [f"r{round_} m{i}" for i in range(200)]
        sent += batch
        send_many(alice, bob.id, batch)
        send_many(bob, alice.id, batch)
        if round_ == 1:
            # Cut s3's uplink mid-traffic: s3 rejoins through s1.
            call(s2.server.loop, lambda: s2.server.links[s3.server.id].close("cut by the test"))
    wait_for(lambda: len(texts_from(bob, alice.id)) >= len(sent), 20, "alice's chats at bob")
    wait_for(lambda: len(texts_from(alice, bob.id)) >= len(sent), 20, "bob's chats at alice")
    wait_for(lambda: outbox_empty(alice) and outbox_empty(bob), 10, "outboxes to drain")
    assert texts_from(bob, alice.id) == sent
    assert texts_from(alice, bob.id) == sent
    assert call(s3.server.loop, lambda: s3.server.uplink is not None
                and s3.server.uplink.peer.peer_id == s1.server.id)


def test_chats_to_an_absent_user_wait_for_them(mesh):
    s1, s2 = mesh.chain(2)
    events: list[tuple[str, dict]] = []
    alice = mesh.chat_client(s1, "alice", resend_after=0.2)
    alice.listener = lambda kind, data: events.append((kind, data))
    carol_id = 424242
    send_many(alice, carol_id, ["are you there?", "hello?"])
    wait_for(lambda: any(k == "unreachable" for k, _ in events), 10, "an unreachable notice")
    notice = next(d for k, d in events if k == "unreachable")
    assert notice["reason"] == f"Unknown ID {carol_id}" and notice["waiting"] == 2
    carol = mesh.chat_client(s2, "carol", id=carol_id)
    wait_for(lambda: len(texts_from(carol, alice.id)) >= 2, 15, "the waiting chats at carol")
    wait_for(lambda: outbox_empty(alice), 10, "alice's outbox to drain")
    assert texts_from(carol, alice.id) == ["are you there?", "hello?"]


def test_a_plain_v1_recipient_gets_plain_chats_acknowledged_by_its_server(mesh):
    s1, s2 = mesh.chain(2)
    alice = mesh.chat_client(s1, "alice")
    dave = mesh.chat_client(s2, "dave", reliable=False, extensions=False)
    assert dave.plain
    texts = [f"plain {i}" for i in range(50)]
    send_many(alice, dave.id, texts)
    wait_for(lambda: len(texts_from(dave, alice.id)) >= 50, 10, "50 chats at dave")
    wait_for(lambda: outbox_empty(alice), 10, "alice's outbox to drain (server acks)")
    assert texts_from(dave, alice.id) == texts


def test_state_dir_keeps_the_outbox_and_the_identity_across_a_restart(mesh, tmp_path):
    s1, s2 = mesh.chain(2)
    state = tmp_path / "alice-state"
    alice = mesh.chat_client(s1, "alice", state_dir=state, resend_after=0.2)
    bob_id = 5151
    first = [f"first {i}" for i in range(20)]
    send_many(alice, bob_id, first)              # bob is not there: nothing is acknowledged
    wait_for(lambda: call(alice.loop, lambda: alice.outbox.by_dest[bob_id].unreachable), 10,
             "the chats to be refused for now")
    old_id = alice.id
    kill(mesh, alice)

    again = mesh.chat_client(s2, "alice", state_dir=state, resend_after=0.2)
    assert again.id == old_id
    send_many(again, bob_id, ["second"])
    bob = mesh.chat_client(s1, "bob", id=bob_id)
    wait_for(lambda: len(texts_from(bob, old_id)) >= 21, 15, "all 21 chats at bob")
    wait_for(lambda: outbox_empty(again), 10, "the outbox to drain")
    assert texts_from(bob, old_id) == first + ["second"]


def test_receiver_state_dir_prevents_repeats_after_a_restart(mesh, tmp_path):
    s1, s2 = mesh.chain(2)
    state = tmp_path / "bob-state"
    alice = mesh.chat_client(s1, "alice")
    bob = mesh.chat_client(s2, "bob", state_dir=state)
    send_many(alice, bob.id, ["one", "two"])
    wait_for(lambda: len(texts_from(bob, alice.id)) == 2, 10, "two chats at bob")
    kill(mesh, bob)
    # As if bob's acknowledgements had been lost: alice sends the same
    # frames again (same stream, same numbers), before and after bob is back.
    call(alice.loop, lambda: resend_first_two(alice, bob.id))
    bob2 = mesh.chat_client(s2, "bob", state_dir=state)
    assert bob2.id == bob.id
    call(alice.loop, lambda: resend_first_two(alice, bob.id))
    send_many(alice, bob.id, ["three"])
    wait_for(lambda: texts_from(bob2, alice.id) == ["three"], 10, "only the new chat at bob")
    assert call(bob2.loop, lambda: bob2.inbox.duplicates) >= 2


def kill(mesh: Mesh, client: ChatClient) -> None:
    """As if the process died: no goodbye, the journal left as it is, the
    socket closed by the kernel."""
    for c, thread in mesh.clients:
        if c is client:
            client.loop.stop()
            thread.join(10)
    client.conn.sock.close()


def resend_first_two(client: ChatClient, dest: int) -> None:
    stream = client.outbox.by_dest[dest].id
    for seq, text in ((1, "one"), (2, "two")):
        client.conn.send(Extension(ChatKind.CHAT, client.id, dest, 0,
                                   pack_chat(stream, seq, 1, text)))


def test_a_chat_too_large_for_a_link_on_the_way_is_refused_and_the_rest_go_on(mesh):
    """gamma takes frames of at most 64 KiB; alice's server learnt of beta's
    limits before gamma joined, so it lets a 100 kB chat go: beta refuses it
    for good (REFUSED), alice reports it undeliverable, and the chats behind
    it arrive in order; nothing is resent for ever, no link is dropped."""
    from crc.protocol import Limits
    alpha = mesh.add("alpha")
    beta = mesh.add("beta", alpha)
    gamma = mesh.add("gamma", beta, server_options={"limits": Limits(max_payload=64 << 10)})
    mesh.wait_converged()
    events: list[tuple[str, dict]] = []
    alice = mesh.chat_client(alpha, "alice")
    carol = mesh.chat_client(gamma, "carol")
    call(alice.loop, lambda: setattr(alice, "listener", lambda kind, data: events.append(
        (kind, data))))
    wait_for(lambda: carol.id in alice.users, 5, "alice to see carol")
    assert alice.max_chat > 100_000
    send_many(alice, carol.id, ["first", "x" * 100_000, "third", "fourth"])
    wait_for(lambda: texts_from(carol, alice.id) == ["first", "third", "fourth"], 10,
             "the chats around the refused one")
    wait_for(lambda: outbox_empty(alice), 10, "alice's outbox to drain")
    undelivered = [d for k, d in events if k == "undelivered"]
    assert len(undelivered) == 1 and len(undelivered[0]["text"]) == 100_000
    assert "too large for the link" in undelivered[0]["reason"]
    assert call(beta.server.loop, lambda: sorted(beta.server.links)) == sorted(
        [alpha.server.id, gamma.server.id])


def test_a_client_learns_the_chat_limit_and_refuses_longer_chats_up_front(mesh):
    from crc.client.core import Undeliverable
    from crc.protocol import Limits
    small = mesh.add("small", server_options={"limits": Limits(max_payload=64 << 10)})
    mesh.wait_converged()
    for reliable in (True, False):
        alice = mesh.chat_client(small, f"alice{int(reliable)}", reliable=reliable)
        assert alice.max_chat == (64 << 10) - 24

        def too_long() -> str:
            try:
                alice.send_chat(alice.id, "y" * (64 << 10))
            except Undeliverable as exc:
                return str(exc)
            return ""
        assert "carries at most 65512 bytes" in call(alice.loop, too_long)
        assert call(alice.loop, lambda: len(alice.outbox)) == 0
