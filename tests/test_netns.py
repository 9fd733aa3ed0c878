"""Real faults across real hosts: three network namespaces joined by veth
links, a server in each. A link is cut (``ip link set ... down``: no RST, no
FIN, just silence), keepalives notice, the cut-off server rejoins through its
other candidate, and the tree converges again; then the link comes back.
Chats crossing the cut link arrive exactly once, in order.

Needs root and ``ip`` (CI runs as root); elsewhere the module is skipped with
the reason."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench.netns import PORT, SENT, Hosts, LineClient, available, chat_pattern

from .meshkit import wait_for

pytestmark = pytest.mark.skipif(not available(), reason="network namespaces need root and iproute2")


@pytest.fixture
def hosts(tmp_path: Path):
    h = Hosts(str(os.getpid() % 10000))
    try:
        h.create()
        yield h
    finally:
        h.destroy()


def test_a_cut_link_is_detected_by_keepalives_and_the_tree_heals(
        hosts: Hosts, tmp_path: Path) -> None:
    hosts.start_tree(tmp_path, lambda condition, what: wait_for(condition, 20, what))
    first = hosts.state("h2")
    assert first is not None
    ids = {h["name"]: int(i) for i, h in first["hosts"].items()}
    ids["two"] = first["id"]
    assert first["adjacent_server_ids"] == [ids["one"]]      # two hangs off one
    hosts.set_link("h1", "h2", up=False)                     # silence, not a reset
    cut = time.monotonic()

    def healed_around_the_cut() -> bool:
        """two hangs off three, and one reaches two through three."""
        two, one = hosts.state("h2"), hosts.state("h1")
        return (two is not None and one is not None
                and two["adjacent_server_ids"] == [ids["three"]]
                and one["hosts"].get(str(ids["two"]), {}).get("first_link") == ids["three"])
    # two's uplink falls silent: keepalives drop it, two rejoins through three.
    wait_for(healed_around_the_cut, 30, "the tree to heal around the cut")
    healed = time.monotonic() - cut
    assert healed < 15, f"took {healed:.1f} s to heal"
    print(f"healed in {healed:.2f} s")
    hosts.set_link("h1", "h2", up=True)
    # The restored link changes nothing: two stays where it rejoined, no loop.
    wait_for(lambda: hosts.names_known("h2") == {"one", "three"}, 10, "a stable view")
    assert healed_around_the_cut()
    assert hosts.state("h1")["adjacent_server_ids"] == [ids["three"]]


def diagnosis(readers, logs: Path) -> str:
    """The clients' last lines and what the servers logged about joining,
    losing and learning hosts: enough to tell a slow heal from a lost chat."""
    wanted = ("joined", "lost link", "ignoring", "unreachable", "dropping")
    events = [f"{log.stem}: {line}" for log in sorted(logs.glob("*.log"))
              for line in log.read_text(errors="replace").splitlines()
              if any(word in line for word in wanted)][-60:]
    ends = [f"{writer}'s reader: {reader.lines[-4:]} {reader.errors[-3:]}"
            for reader, writer, _ in readers]
    return "\n".join(ends + events)


def test_chats_across_a_cut_link_arrive_exactly_once_in_order(
        hosts: Hosts, tmp_path: Path) -> None:
    hosts.start_tree(tmp_path, lambda condition, what: wait_for(condition, 20, what))
    server = f"127.0.0.1:{PORT}"
    alice = LineClient(server, "alice", 9001, prefix=hosts.prefix("h1"))
    bob = LineClient(server, "bob", 9002, prefix=hosts.prefix("h2"))
    try:
        wait_for(lambda: {"alice", "bob"} <= hosts.names_known("h1"), 20, "both clients")

        def burst(first: int, count: int) -> None:
            alice.write("".join(f"/msg 9002 m{i}\n" for i in range(first, first + count)))
            bob.write("".join(f"/msg 9001 m{i}\n" for i in range(first, first + count)))
        uplink = hosts.state("h2")["adjacent_server_ids"]

        def healed() -> bool:            # two hangs off another server and sees alice again
            state = hosts.state("h2")
            return bool(state and state["adjacent_server_ids"]
                        and state["adjacent_server_ids"] != uplink
                        and "alice" in {h["name"] for h in state["hosts"].values()})
        burst(0, 150)
        hosts.set_link("h1", "h2", up=False)             # mid-traffic, silently
        burst(150, 150)
        wait_for(healed, 30, "the tree to heal")
        burst(300, 100)
        hosts.set_link("h1", "h2", up=True)
        # Both stay until each has shown all the other sent (a client at the
        # end of its input leaves once its own chats are acknowledged).
        readers = ((bob, "alice", 9001), (alice, "bob", 9002))

        def shown() -> list[list[int]]:
            return [reader.numbers(chat_pattern(writer, wid)) for reader, writer, wid in readers]
        try:
            wait_for(lambda: all(len(got) >= 400 for got in shown()), 60,
                     "each side to show the other's 400 chats")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {[len(got) for got in shown()]} shown; "
                                 f"{diagnosis(readers, tmp_path)}") from None
        assert alice.finish() == 0, alice.errors
        assert bob.finish() == 0, bob.errors
    finally:
        for client in (alice, bob):
            if client.proc.poll() is None:
                client.kill()
    for got in shown():
        assert got == list(range(400)), diagnosis(readers, tmp_path)
    assert len(alice.numbers(SENT)) == len(bob.numbers(SENT)) == 400
