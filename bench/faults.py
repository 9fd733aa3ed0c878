#!/usr/bin/env python3
"""Faults injected into a live mesh while clients chat; what was lost or doubled.

Each step starts real ``mesh_server.py`` and ``chat_client.py`` processes,
has two clients send numbered chats to each other (reliable chat: the
default), injects one fault mid-traffic, sends more, lets both clients leave
(each waits until its chats are acknowledged) and counts, per direction:

* sent       - chats the sending client accepted ("[sent]" lines, over all its lives);
* delivered  - distinct chats the receiver showed;
* duplicated - chats the receiver showed more than once (must be 0);
* lost       - sent but never shown (must be 0);
* reordered  - shown out of order (must be 0);
* heal       - seconds from the fault until the first chat sent after it
  was shown (everything before it first, in order).

Faults: the server between the two clients killed (kill -9; the far server
rejoins through its other candidate), a client's own server killed (the
client reconnects to its next server), the sender and the receiver each
killed and restarted with ``--state-dir``, and - with root - a link between
two network namespaces cut silently (keepalives notice, the tree heals).

    python bench/faults.py [--quick] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (LOOPBACK, BenchError, Processes, free_port, state_query,  # noqa: E402
                          wait_until)
from bench.netns import PORT, SENT, Hosts, LineClient, available, chat_pattern  # noqa: E402

SERVER_SCRIPT = str(Path(__file__).resolve().parent.parent / "mesh_server.py")
LIVENESS = ("--keepalive", "0.3", "--dead-after", "1.5")
A, B = 9101, 9102          # the two clients' ids


@dataclass
class Row:
    fault: str
    sent: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0
    reordered: int = 0
    heal: float = 0.0


class Conversation:
    """Two clients chatting both ways; every life of each is kept for counting."""

    def __init__(self, a_server: str, b_server: str, *, a_args: tuple = (), b_args: tuple = (),
                 a_prefix: list[str] | None = None, b_prefix: list[str] | None = None) -> None:
        self.spec = {"a": (a_server, "alice", A, a_args, a_prefix),
                     "b": (b_server, "bob", B, b_args, b_prefix)}
        self.lives: dict[str, list[LineClient]] = {"a": [], "b": []}
        for side in "ab":
            self.start(side)
        self.next = 0

    def start(self, side: str) -> LineClient:
        server, name, cid, args, prefix = self.spec[side]
        client = LineClient(server, name, cid, *args, prefix=prefix)
        self.lives[side].append(client)
        return client

    def current(self, side: str) -> LineClient:
        return self.lives[side][-1]

    def burst(self, count: int) -> int:
        """Each side sends ``count`` more numbered chats; returns the first number."""
        first = self.next
        self.next += count
        for side, dest in (("a", B), ("b", A)):
            self.current(side).write("".join(f"/msg {dest} m{i}\n"
                                             for i in range(first, first + count)))
        return first

    def shown(self, side: str) -> list[int]:
        sender, sid = ("bob", B) if side == "a" else ("alice", A)
        pattern = chat_pattern(sender, sid)
        return [n for life in self.lives[side] for n in life.numbers(pattern)]

    def wait_shown(self, number: int, deadline: float) -> None:
        wait_until(lambda: all(number in self.shown(s) for s in "ab"), deadline,
                   f"chat m{number} to be shown on both sides")

    def finish(self, timeout: float) -> None:
        for side in "ab":
            code = self.current(side).finish(timeout)
            if code != 0:
                raise BenchError(f"{self.spec[side][1]} exited with {code}: "
                                 f"{self.current(side).errors[-3:]}")

    def kill_all(self) -> None:
        for lives in self.lives.values():
            for life in lives:
                if life.proc.poll() is None:
                    life.kill()

    def count(self, row: Row) -> Row:
        for side, other in (("a", "b"), ("b", "a")):
            sent = {n for life in self.lives[other] for n in life.numbers(SENT)}
            shown = self.shown(side)
            row.sent += len(sent)
            row.delivered += len(set(shown))
            row.duplicated += len(shown) - len(set(shown))
            row.lost += len(sent - set(shown))
            row.reordered += sum(1 for x, y in zip(shown, shown[1:]) if y <= x)
        return row


def spawn_server(group: Processes, name: str, server_id: int, connect: list[int],
                 deadline: float) -> tuple[int, object]:
    port = free_port()
    args = [SERVER_SCRIPT, "--port", str(port), "--id", str(server_id), "--name", name,
            "--log-level", "WARNING", "--log-file", str(group.logdir / f"{name}.log"),
            "--work-dir", str(group.logdir / name), *LIVENESS]
    if connect:
        args += ["--connect", ",".join(f"{LOOPBACK}:{p}" for p in connect)]
    proc = group.spawn(args, stderr_name=name)
    wait_until(lambda: state_query(port, 1.0) is not None, deadline, f"server {name} to listen")
    return port, proc


def knows(port: int, names: set[str]) -> bool:
    state = state_query(port, 1.0)
    return bool(state) and names <= {h["name"] for h in state["hosts"].values()}


def measured(fault: str, conv: Conversation, inject, settle, p: argparse.Namespace) -> Row:
    """Traffic, the fault, more traffic; the heal time; the counts."""
    deadline = time.monotonic() + p.timeout
    try:
        conv.wait_shown(conv.burst(1), deadline)          # both sides up and talking
        conv.burst(p.burst)
        inject()
        start = time.monotonic()
        marker = conv.burst(1)
        conv.wait_shown(marker, deadline)
        heal = time.monotonic() - start
        settle()
        conv.burst(p.burst)
        conv.finish(p.timeout)
    finally:
        conv.kill_all()
    return conv.count(Row(fault, heal=heal))


def middle_server_killed(p: argparse.Namespace, group: Processes) -> Row:
    deadline = time.monotonic() + p.timeout
    s1, _ = spawn_server(group, "s1", 1, [], deadline)
    s2, victim = spawn_server(group, "s2", 2, [s1], deadline)
    s3, _ = spawn_server(group, "s3", 3, [s2, s1], deadline)
    wait_until(lambda: knows(s1, {"s2", "s3"}), deadline, "the chain to form")
    conv = Conversation(f"{LOOPBACK}:{s1}", f"{LOOPBACK}:{s3}")
    return measured("server between the clients killed (-9)", conv, victim.kill,
                    lambda: None, p)


def own_server_killed(p: argparse.Namespace, group: Processes) -> Row:
    deadline = time.monotonic() + p.timeout
    s1, _ = spawn_server(group, "s1", 1, [], deadline)
    s2, victim = spawn_server(group, "s2", 2, [s1], deadline)
    wait_until(lambda: knows(s1, {"s2"}), deadline, "the servers to link")
    conv = Conversation(f"{LOOPBACK}:{s2},{LOOPBACK}:{s1}", f"{LOOPBACK}:{s1}")
    return measured("a client's own server killed (-9)", conv, victim.kill, lambda: None, p)


def client_restarted(side: str, p: argparse.Namespace, group: Processes) -> Row:
    deadline = time.monotonic() + p.timeout
    s1, _ = spawn_server(group, "s1", 1, [], deadline)
    s2, _ = spawn_server(group, "s2", 2, [s1], deadline)
    wait_until(lambda: knows(s1, {"s2"}), deadline, "the servers to link")
    state = ("--state-dir", str(group.logdir / f"state-{side}"))
    conv = Conversation(f"{LOOPBACK}:{s1}", f"{LOOPBACK}:{s2}",
                        a_args=state if side == "a" else (), b_args=state if side == "b" else ())

    def inject() -> None:
        conv.current(side).kill()
        conv.start(side)
    who = "sender" if side == "a" else "receiver"
    return measured(f"{who} killed (-9) and restarted, --state-dir", conv, inject,
                    lambda: None, p)


def link_cut(p: argparse.Namespace, group: Processes) -> Row:
    hosts = Hosts(str(os.getpid() % 10000))
    try:
        hosts.create()
        deadline = time.monotonic() + p.timeout
        hosts.start_tree(group.logdir,
                         lambda condition, what: wait_until(condition, deadline, what))
        server = f"127.0.0.1:{PORT}"
        conv = Conversation(server, server, a_prefix=hosts.prefix("h1"),
                            b_prefix=hosts.prefix("h2"))
        return measured("link cut silently (netns), restored later", conv,
                        lambda: hosts.set_link("h1", "h2", up=False),
                        lambda: hosts.set_link("h1", "h2", up=True), p)
    finally:
        hosts.destroy()


STEPS = {
    "middle": middle_server_killed,
    "own": own_server_killed,
    "sender": lambda p, g: client_restarted("a", p, g),
    "receiver": lambda p, g: client_restarted("b", p, g),
    "link": link_cut,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller bursts (a smoke run)")
    ap.add_argument("--only", default=",".join(STEPS), help="comma-separated steps: "
                    + ", ".join(STEPS))
    ap.add_argument("--timeout", type=float, default=90.0, help="deadline per step (s)")
    p = ap.parse_args(argv)
    p.burst = 50 if p.quick else 300
    chosen = [s.strip() for s in p.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        ap.error(f"unknown step(s): {', '.join(unknown)}")
    if "link" in chosen and not available():
        print("skipping 'link': network namespaces need root and iproute2", file=sys.stderr)
        chosen.remove("link")
    rows = []
    with tempfile.TemporaryDirectory(prefix="crc-faults-") as tmp:
        # Clients are killed outright on purpose: what they keep in temporary
        # directories goes with this run's directory, not into /tmp.
        os.environ["TMPDIR"] = str(Path(tmp))
        for name in chosen:
            logdir = Path(tmp) / name
            logdir.mkdir()
            with Processes(logdir) as group:
                rows.append(STEPS[name](p, group))
    header = f"{'fault':<48} {'sent':>6} {'delivered':>9} {'duplicated':>10} {'lost':>5} " \
             f"{'reordered':>9} {'heal (s)':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.fault:<48} {r.sent:>6} {r.delivered:>9} {r.duplicated:>10} {r.lost:>5} "
              f"{r.reordered:>9} {r.heal:>8.2f}")
    bad = [r.fault for r in rows if r.duplicated or r.lost or r.reordered]
    if bad:
        print(f"FAILED: {'; '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
