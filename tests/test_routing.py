"""Routing table: pure data, no sockets."""

from __future__ import annotations

import pytest

from crc.routing import Kind, RoutingError, RoutingTable


def tree() -> RoutingTable:
    """Server 1 with adjacent server 2 (which reaches 3 and client 30) and client 10."""
    t = RoutingTable(1)
    t.add(2, Kind.SERVER, "b", "", first_link=2)
    t.add(3, Kind.SERVER, "c", "", first_link=2)
    t.add(30, Kind.CLIENT, "carol", "", first_link=2)
    t.add(10, Kind.CLIENT, "alice", "", first_link=10)
    return t


def test_first_links_and_adjacency() -> None:
    t = tree()
    assert t.first_link(3) == 2
    assert t.first_link(30) == 2
    assert t.first_link(10) == 10
    assert t.first_link(99) is None
    assert sorted(t.adjacent()) == [2, 10]
    assert t.adjacent(Kind.SERVER) == [2]
    assert t.adjacent(Kind.CLIENT) == [10]
    assert [h.id for h in t.of_kind(Kind.CLIENT)] == [30, 10]


def test_removing_an_adjacent_link_removes_its_whole_subtree() -> None:
    t = tree()
    gone = t.remove(2)
    assert [h.id for h in gone] == [2, 3, 30]
    assert sorted(t.hosts) == [10]


def test_removing_a_remote_host_removes_only_it() -> None:
    t = tree()
    assert [h.id for h in t.remove(30)] == [30]
    assert sorted(t.hosts) == [2, 3, 10]
    assert t.remove(30) == []


@pytest.mark.parametrize("host_id, first_link, why", [
    (1, 1, "already registered"),      # our own id
    (3, 2, "already registered"),      # a known id is never overwritten
    (0, 0, "not a valid id"),
    (40, 3, "not an adjacent host"),   # 3 is known but not adjacent
    (40, 99, "not an adjacent host"),  # unknown first link
])
def test_invariant_breaking_updates_are_refused(host_id: int, first_link: int, why: str) -> None:
    t = tree()
    with pytest.raises(RoutingError, match=why):
        t.add(host_id, Kind.CLIENT, "x", "", first_link=first_link)
    assert sorted(t.hosts) == [2, 3, 10, 30]


def test_known_includes_own_id() -> None:
    t = tree()
    assert t.known(1) and t.known(30) and not t.known(31)
    assert 1 not in t and 30 in t
