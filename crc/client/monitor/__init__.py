"""``chat_client.py monitor``: the whole mesh at a glance.

Every server's LOAD report (flooded by every server at least every
``--load-interval``, watched or not) carries a *view* of it: its links to
other servers (TLS, authenticated, seconds since last heard), its client
count, counters (chats relayed, bulk bytes moved, jobs started and failed)
and the jobs it holds. The monitor asks its own server for the table of
reports twice a second — one message to one server per watcher; the mesh
carries nothing more for it — and shows:

* the spanning tree of servers (from the links each reports), the entry
  server at its root;
* per server: CPU, slots, running and queued jobs, clients, rates since the
  previous table (chats/s, jobs/s, bulk bytes/s), how long ago it reported;
* the jobs running and queued: command, submitter, for how long;
* events seen between tables: servers appearing and leaving, clients joining
  and leaving, links lost and up, jobs failed, connections refused, compiles
  sent back to be compiled locally (no server with the compiler).

``snapshot`` turns a table into plain data (``--json``), ``text`` into lines
(``--once`` when not a terminal), ``renderable`` into a rich ``Group``
(``Tree`` and ``Table``s) for ``Live``; ``Watch`` drives them from a batch
client's loop (``crc.client.batch``). ``python -m crc.client.monitor`` and
``crc-monitor`` run it (``command_line``).
"""

from __future__ import annotations

from typing import Any, Callable


def snapshot(rows: list[dict], entry: int, previous: dict | None = None,
             elapsed: float = 0.0) -> dict:
    """The mesh as plain data: servers (with rates against ``previous``, the
    snapshot ``elapsed`` seconds before), the tree, jobs, events."""
    servers: dict[int, dict] = {}
    for row in rows:
        view = row.get("view") if isinstance(row.get("view"), dict) else {}
        sid = int(row.get("server", 0))
        servers[sid] = {
            "id": sid, "name": str(row.get("name", "?")), "cpu": row.get("cpu", 0.0),
            "load1": row.get("load1", 0.0), "slots": row.get("slots", 0),
            "running": row.get("running", 0), "queued": row.get("queued", 0),
            "age": row.get("age", 0.0), "stale": bool(row.get("stale", False)),
            "clients": int(view.get("clients", 0)),
            "links": [{"peer": int(link[0]), "tls": bool(link[1]), "auth": bool(link[2]),
                       "heard": float(link[3])}
                      for link in view.get("links", []) if isinstance(link, list)
                      and len(link) == 4],
            "counters": {k: int(view.get(k, 0)) for k in ("chats", "bulk", "started",
                                                          "failed", "refused", "fallbacks")},
            "jobs": [{"command": str(j[0]), "client": j[1], "state": str(j[2]),
                      "seconds": j[3]} for j in view.get("jobs", [])
                     if isinstance(j, list) and len(j) == 4],
        }
    events: list[str] = []
    before = (previous or {}).get("servers", {})
    for sid, server in servers.items():
        old = before.get(sid) or before.get(str(sid))
        rates = {"chats_per_s": 0.0, "jobs_per_s": 0.0, "bulk_bytes_per_s": 0.0}
        if old is not None and elapsed > 0:
            c, o = server["counters"], old["counters"]
            rates = {"chats_per_s": round(max(0, c["chats"] - o["chats"]) / elapsed, 1),
                     "jobs_per_s": round(max(0, c["started"] - o["started"]) / elapsed, 1),
                     "bulk_bytes_per_s": round(max(0, c["bulk"] - o["bulk"]) / elapsed)}
            for key, what in (("failed", "job(s) failed"),
                              ("refused", "connection(s) refused"),
                              ("fallbacks", "compile(s) sent back: no server has the compiler")):
                if c.get(key, 0) > o.get(key, 0):
                    events.append(f"{server['name']}: {c[key] - o.get(key, 0)} {what}")
            joined = server["clients"] - old["clients"]
            if joined:
                events.append(f"{server['name']}: {abs(joined)} client(s) "
                              f"{'joined' if joined > 0 else 'left'}")
            old_peers = {link["peer"] for link in old["links"]}
            new_peers = {link["peer"] for link in server["links"]}
            for peer in sorted(old_peers - new_peers):
                events.append(f"{server['name']}: link to {_name(servers, before, peer)} lost")
            for peer in sorted(new_peers - old_peers):
                events.append(f"{server['name']}: link to {_name(servers, before, peer)} up")
        elif previous is not None:
            events.append(f"{server['name']} appeared")
        server["rates"] = rates
    for sid, old in before.items():
        if int(sid) not in servers:
            events.append(f"{old['name']} left")
    return {"entry": entry, "servers": {str(k): v for k, v in servers.items()},
            "tree": tree(servers, entry), "events": events}


def _name(servers: dict, before: dict, sid: int) -> str:
    found = servers.get(sid) or before.get(sid) or before.get(str(sid))
    return found["name"] if found else str(sid)


def tree(servers: dict[int, dict], root: int) -> dict:
    """The spanning tree from ``root`` over the links servers report (a link
    counts if either end reports it): ``{"id", "name", "children": [...]}``."""
    edges: dict[int, set[int]] = {sid: set() for sid in servers}
    for sid, server in servers.items():
        for link in server["links"]:
            edges.setdefault(sid, set()).add(link["peer"])
            edges.setdefault(link["peer"], set()).add(sid)
    if root not in edges:
        root = min(edges) if edges else root
    seen = {root}

    def grow(sid: int) -> dict:
        node = {"id": sid, "name": servers.get(sid, {}).get("name", str(sid)), "children": []}
        for peer in sorted(edges.get(sid, ()), key=lambda p: servers.get(p, {}).get("name", "")):
            if peer not in seen:
                seen.add(peer)
                node["children"].append(grow(peer))
        return node
    return grow(root) if edges else {}


def _tree_lines(node: dict, servers: dict, prefix: str = "") -> list[str]:
    if not node:
        return []
    lines = [prefix + _label(node, servers)]
    for child in node["children"]:
        lines += _tree_lines(child, servers, prefix + "  ")
    return lines


def _label(node: dict, servers: dict) -> str:
    server = servers.get(str(node["id"])) or servers.get(node["id"]) or {}
    parent_links = server.get("links", [])
    secure = [("tls" if link["tls"] else "tcp") + ("+auth" if link["auth"] else "")
              for link in parent_links]
    kinds = ",".join(sorted(set(secure))) or "-"
    return f"{node['name']} (id {node['id']}; links: {kinds})"


def tree_text(snap: dict) -> str:
    """The tree of a snapshot, a line per server (``/tree``)."""
    return "\n".join(_tree_lines(snap["tree"], snap["servers"]))


def text(snap: dict) -> str:
    """A snapshot as plain lines (``--once`` into a pipe or file)."""
    servers = snap["servers"]
    out = ["tree:"] + ["  " + line for line in _tree_lines(snap["tree"], servers)]
    out.append("servers:")
    for server in sorted(servers.values(), key=lambda s: s["name"]):
        r = server.get("rates", {})
        out.append(f"  {server['name']}: cpu {server['cpu']:.0f}% slots {server['slots']} "
                   f"running {server['running']} queued {server['queued']} "
                   f"clients {server['clients']} chats/s {r.get('chats_per_s', 0)} "
                   f"jobs/s {r.get('jobs_per_s', 0)} bulk B/s {r.get('bulk_bytes_per_s', 0)} "
                   f"reported {server['age']:.1f}s ago" + (" (stale)" if server["stale"] else ""))
    jobs = [(s["name"], j) for s in servers.values() for j in s["jobs"]]
    out.append("jobs:" if jobs else "jobs: none")
    for name, job in jobs:
        out.append(f"  {name}: {job['state']} {job['seconds']:.1f}s client {job['client']}: "
                   f"{job['command']}")
    for event in snap["events"]:
        out.append(f"event: {event}")
    return "\n".join(out)


def renderable(snap: dict, events: list[str]) -> Any:
    """A snapshot for ``rich.live.Live``: the tree, a table of servers, the
    jobs, the latest events."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.tree import Tree
    servers = snap["servers"]

    def grow(node: dict, into: Any) -> None:
        for child in node.get("children", []):
            grow(child, into.add(escape(_label(child, servers))))
    root = Tree(escape(_label(snap["tree"], servers)) if snap["tree"] else "(no servers yet)")
    if snap["tree"]:
        grow(snap["tree"], root)
    table = Table(title="servers", expand=False)
    for column in ("server", "cpu %", "slots", "running", "queued", "clients", "chats/s",
                   "jobs/s", "bulk B/s", "reported"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for server in sorted(servers.values(), key=lambda s: s["name"]):
        r = server.get("rates", {})
        table.add_row(escape(server["name"]), f"{server['cpu']:.0f}", str(server["slots"]),
                      str(server["running"]), str(server["queued"]), str(server["clients"]),
                      str(r.get("chats_per_s", 0)), str(r.get("jobs_per_s", 0)),
                      str(r.get("bulk_bytes_per_s", 0)),
                      f"{server['age']:.1f}s" + (" stale" if server["stale"] else ""))
    jobs = Table(title="jobs", expand=False)
    for column in ("server", "state", "for", "client", "command"):
        jobs.add_column(column)
    for server in servers.values():
        for job in server["jobs"]:
            jobs.add_row(escape(server["name"]), job["state"], f"{job['seconds']:.1f}s",
                         str(job["client"]), escape(job["command"]))
    recent = "\n".join(escape(e) for e in events[-10:]) or "(no events yet)"
    return Group(root, table, jobs, recent)


#: ``crc-monitor``'s own options and how many words each takes (the rest are
#: the chat client's: --server, TLS, the secret...).
MONITOR_FLAGS = {"--once": 0, "--json": 0, "--interval": 1}


def command_line(words: list[str]) -> list[str]:
    """``crc-monitor``'s words as ``chat_client.py``'s: the client's options,
    then ``monitor`` and the monitor's own."""
    own, rest, i = [], [], 0
    while i < len(words):
        word = words[i]
        name = word.split("=", 1)[0]
        if name in MONITOR_FLAGS:
            take = MONITOR_FLAGS[name] if "=" not in word else 0
            own += words[i:i + 1 + take]
            i += 1 + take
            continue
        rest.append(word)
        i += 1
    return [*rest, "monitor", *own]



class Watch:
    """The ``monitor`` command inside a batch client: ask for the table every
    ``interval`` seconds, show it (``rich.live.Live``), or print one snapshot
    (``--once``, two tables a moment apart so that rates mean something)."""

    def __init__(self, jobs: Any, loop: Any, args: Any, server_id: Callable[[], int],
                 stop: Callable[[int], None]) -> None:
        self.jobs, self.loop, self.args = jobs, loop, args
        self.server_id, self.stop = server_id, stop
        self.snap: dict | None = None
        self.at = 0.0
        self.events: list[str] = []
        self.live: Any = None
        self.tables = 0

    def start(self) -> None:
        self.jobs.query_load(self.on_table)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()                     # the terminal as it was
            self.live = None

    def on_table(self, rows: list[dict]) -> None:
        import json
        import sys
        import time
        now = time.monotonic()
        snap = snapshot(rows, self.server_id(), self.snap,
                        now - self.at if self.snap is not None else 0.0)
        self.snap, self.at = snap, now
        self.tables += 1
        stamp = time.strftime("%H:%M:%S")
        self.events += [f"{stamp} {e}" for e in snap["events"]][-100:]
        if self.args.once:
            if self.tables < 2:
                self.loop.call_later(min(1.0, self.args.interval * 2), self.start)
                return
            if self.args.json:
                print(json.dumps(snap, indent=2, sort_keys=True))
            elif sys.stdout.isatty():
                from rich.console import Console
                Console().print(renderable(snap, self.events))
            else:
                print(text(snap))
            self.stop(0)
            return
        if self.live is None:
            from rich.live import Live
            self.live = Live(renderable(snap, self.events), refresh_per_second=4)
            self.live.start()
        else:
            self.live.update(renderable(snap, self.events))
        self.loop.call_later(self.args.interval, self.start)
