"""Routing state of one server: every machine it knows and its first link.

Theory of operation. Servers form a spanning tree; clients hang off exactly
one server. For every other machine M, a server records the *first link*: the
id of the adjacent machine (directly connected server or client) through
which M is reached. An adjacent machine is its own first link. Because the
graph is a tree, the first link is unique, and "everything reached through
link L" is exactly the set of hosts whose first link is L — which is what must
disappear when L is lost.

Invariants kept here:
  * ``own_id`` is never a key of ``hosts``;
  * every host's ``first_link`` is the id of an adjacent host that is itself
    in ``hosts`` (so removing a link removes its whole subtree);
  * ids are unique: registering a known id is refused, never overwritten.

Pure data: no sockets, no logging, no clocks. The server owns the mapping from
adjacent ids to connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    SERVER = "server"
    CLIENT = "client"


#: The info text of a job-only client (meshcc's agent, ``chat_client.py run``
#: and friends): servers route to it and flood it to each other as to any
#: client, but chat participants are not told it joined or left, so a build
#: does not fill every chat screen with joins and quits. (A plain v1 server
#: in the tree shows it as any client, with this text as its info.)
QUIET_INFO = "crc-mesh job connection"


@dataclass(slots=True)
class Host:
    id: int
    kind: Kind
    name: str
    info: str
    first_link: int

    @property
    def adjacent(self) -> bool:
        return self.first_link == self.id

    @property
    def quiet(self) -> bool:
        """A job-only client: never announced to chat participants."""
        return self.kind is Kind.CLIENT and self.info == QUIET_INFO


class RoutingError(Exception):
    """An update that would break the table's invariants."""


class RoutingTable:
    def __init__(self, own_id: int) -> None:
        if own_id == 0:
            raise RoutingError("0 is not a valid id")
        self.own_id = own_id
        self.hosts: dict[int, Host] = {}
        #: Server ids by name (names need not be unique): lookups by name
        #: stay O(1) however many hosts are announced.
        self.servers_named: dict[str, set[int]] = {}

    # -- queries ---------------------------------------------------------

    def __contains__(self, host_id: int) -> bool:
        return host_id in self.hosts

    def __len__(self) -> int:
        return len(self.hosts)

    def get(self, host_id: int) -> Host | None:
        return self.hosts.get(host_id)

    def known(self, host_id: int) -> bool:
        """True for our own id and every recorded host (for duplicate checks)."""
        return host_id == self.own_id or host_id in self.hosts

    def first_link(self, host_id: int) -> int | None:
        host = self.hosts.get(host_id)
        return None if host is None else host.first_link

    def adjacent(self, kind: Kind | None = None) -> list[int]:
        return [h.id for h in self.hosts.values()
                if h.first_link == h.id and (kind is None or h.kind is kind)]

    def of_kind(self, kind: Kind) -> list[Host]:
        return [h for h in self.hosts.values() if h.kind is kind]

    def behind(self, link_id: int) -> list[Host]:
        """Every host reached through adjacent ``link_id``, the link itself first."""
        link = self.hosts.get(link_id)
        if link is None:
            return []
        rest = [h for h in self.hosts.values() if h.first_link == link_id and h.id != link_id]
        return [link, *rest]

    # -- updates -----------------------------------------------------------

    def add(self, host_id: int, kind: Kind, name: str, info: str, first_link: int) -> Host:
        """Record a host; ``first_link == host_id`` for an adjacent one."""
        if host_id == 0:
            raise RoutingError("0 is not a valid id")
        if self.known(host_id):
            raise RoutingError(f"id {host_id} is already registered")
        if first_link != host_id:
            link = self.hosts.get(first_link)
            if link is None or not link.adjacent:
                raise RoutingError(f"first link {first_link} of {host_id} is not an adjacent host")
        host = Host(host_id, kind, name, info, first_link)
        self.hosts[host_id] = host
        if kind is Kind.SERVER:
            self.servers_named.setdefault(name, set()).add(host_id)
        return host

    def remove(self, host_id: int) -> list[Host]:
        """Remove a host; an adjacent one takes everything behind it along.

        Returns the removed hosts (empty when ``host_id`` was unknown).
        """
        host = self.hosts.get(host_id)
        if host is None:
            return []
        gone = self.behind(host_id) if host.adjacent else [host]
        for h in gone:
            del self.hosts[h.id]
            if h.kind is Kind.SERVER:
                named = self.servers_named[h.name]
                named.discard(h.id)
                if not named:
                    del self.servers_named[h.name]
        return gone
