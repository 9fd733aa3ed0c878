"""Relay benchmark: throughput, latency, convergence and idle cost of real servers.

Run ``python bench/relay.py`` (under a minute on two idle cores) or ``python bench/relay.py
--quick`` (a sanity run of a few seconds with smaller counts). Every server is
a real ``mesh_server.py`` process on loopback; the benchmark's own clients are
raw sockets speaking CRC v1 through the project codec. Three measurements:

1. **Relay chains.** Chains of 2, 5 and 11 servers, each joining the previous
   one. Client A registers at the first server, client B at the last.
   *Pipelined*: A sends 50,000 chats of 100 text bytes to B as fast as its
   socket takes them (a sending thread); B checks every sequence number and
   counts lost, reordered and duplicated messages. *Ping-pong*: one chat in
   flight, A to B and back, 2,000 timed round trips. The same byte stream and
   the same ping-pongs then cross a chain of minimal byte forwarders
   (``bench/forwarder.py``) of the same length: the ceiling a relay written on
   ``selectors`` in Python could reach on this machine.
2. **Convergence.** A random tree of 50 servers (each joins a random earlier
   one); 200 clients spread over them register at once; the time from the
   first registration sent until every client has heard of all 199 others.
3. **Idle cost.** CPU and resident memory of one idle server with a few idle
   clients, then memory with 1,000 registered clients.

Results are printed as tables; ``--json FILE`` also writes them as JSON. The
exit status is 1 when a correctness check fails (a message lost, reordered or
duplicated, convergence not reached before its deadline, a server that would
not start), 0 otherwise: speed floors are reported, never fatal.

Everything is bounded in count and time, and every child process is stopped at
the end, on an error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import resource
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from common import (  # noqa: E402  (a sibling module; it also puts ROOT on sys.path)
    LOOPBACK, ROOT, BenchError, Processes, Server, free_port, start_forwarders, state_query,
    stop_group, wait_until,
)

import psutil  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from crc.protocol import (  # noqa: E402
    ClientChat, ClientRegistration, Decoder, Message, MsgType, Status, StatusCode, encode,
    welcome_text,
)

SERVER_SCRIPT = ROOT / "mesh_server.py"
#: The server under test; ``--server-script`` points it at another tree.
server_script = SERVER_SCRIPT
TEXT_SIZE = 100                       # chat text bytes of every benchmark message
FRAME_SIZE = 13 + TEXT_SIZE           # on the wire: the chat header plus the text
SEND_BATCH = 512                      # frames per sendall() of the pipelined sender
CLIENT_A, CLIENT_B = 900_001, 900_002

#: Tables need about 110 columns; a pipe or a file gets 120 instead of rich's 80.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


@dataclass(frozen=True)
class Params:
    """How much each measurement does; ``--quick`` shrinks all of it."""

    chains: tuple[int, ...] = (2, 5, 11)
    messages: int = 50_000
    rounds: int = 2_000
    warmup_rounds: int = 200
    tree_servers: int = 50
    tree_clients: int = 200
    idle_seconds: float = 5.0
    idle_clients: int = 3
    many_clients: int = 1_000
    flow_timeout: float = 120.0       # one pipelined run, at most
    stall_timeout: float = 10.0       # no bytes for this long: the rest is lost
    converge_timeout: float = 30.0
    setup_timeout: float = 60.0       # starting and joining one set of servers


QUICK = Params(chains=(2, 5), messages=5_000, rounds=200, warmup_rounds=20, tree_servers=10,
               tree_clients=40, idle_seconds=1.0, many_clients=100, flow_timeout=30.0,
               stall_timeout=5.0, converge_timeout=15.0, setup_timeout=30.0)


# -- servers ----------------------------------------------------------------------------

#: Scratch space for every receive of this process's main thread (the only one
#: that receives): ``recv(n)`` would allocate, and for large ``n`` map and unmap,
#: ``n`` bytes per call, a cost the measured round trips would include.
_SCRATCH = memoryview(bytearray(1 << 20))


def receive(sock: socket.socket) -> bytes:
    """One ``recv`` (b"" at end of stream), through the reused buffer."""
    n = sock.recv_into(_SCRATCH)
    return _SCRATCH[:n].tobytes()


def spawn_server(group: Processes, name: str, server_id: int, uplink: int | None) -> Server:
    port = free_port()
    args = [str(server_script), "--port", str(port), "--id", str(server_id), "--name", name,
            "--log-level", "WARNING", "--log-file", str(group.logdir / f"{name}.log")]
    if uplink is not None:
        args += ["--connect", f"{LOOPBACK}:{uplink}"]
    return Server(name, server_id, port, group.spawn(args, stderr_name=name))


def start_tree(group: Processes, parents: list[int | None], prefix: str,
               timeout: float) -> list[Server]:
    """Start one server per entry; server i joins server ``parents[i]`` (None: none).

    Servers start in waves by depth, each wave once its parents listen; a
    server that died at once (its port was taken meanwhile) is started again
    on another port. Returns once every server knows every other one.
    """
    deadline = time.monotonic() + timeout
    n = len(parents)
    depth = [0] * n
    for i, parent in enumerate(parents):
        if parent is not None:
            if not 0 <= parent < i:
                raise ValueError("a server may only join an earlier one")
            depth[i] = depth[parent] + 1
    ids = [1000 + i for i in range(n)]
    servers: list[Server | None] = [None] * n
    for level in range(max(depth) + 1):
        wave = [i for i in range(n) if depth[i] == level]
        attempts = dict.fromkeys(wave, 0)
        waiting: set[int] = set()

        def launch(i: int) -> None:
            attempts[i] += 1
            parent = parents[i]
            uplink = servers[parent].port if parent is not None else None
            servers[i] = spawn_server(group, f"{prefix}{i}", ids[i], uplink)
            waiting.add(i)

        for i in wave:
            launch(i)
        while waiting:
            if time.monotonic() > deadline:
                raise BenchError(f"servers {sorted(waiting)} of {prefix}* did not start in time")
            for i in sorted(waiting):
                server = servers[i]
                if server.proc.poll() is not None:
                    if attempts[i] >= 3:
                        raise BenchError(f"server {server.name} exited with status "
                                         f"{server.proc.returncode} (--keep-logs keeps its log)")
                    waiting.discard(i)
                    launch(i)
                elif (state := state_query(server.port, timeout=1.0)) is not None \
                        and state["id"] == server.id:
                    waiting.discard(i)
            if waiting:
                time.sleep(0.02)
    ready = [s for s in servers if s is not None]
    wait_until(lambda: all_joined(ready), deadline, f"the {prefix}* servers to learn of each other")
    return ready


def all_joined(servers: list[Server]) -> bool:
    everyone = {s.id for s in servers}
    for server in servers:
        state = state_query(server.port)
        if state is None or not everyone - {server.id} <= set(state["hosts_db"]):
            return False
    return True


# -- the benchmark's side of a link ------------------------------------------------------

class Wire:
    """A blocking socket and a decoder: one end of a benchmark connection."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        self.sock = sock
        self.decoder = Decoder()
        self.inbox: deque[Message] = deque()

    def fill(self) -> None:
        """Receive once (blocking) and decode; ConnectionError on EOF."""
        data = receive(self.sock)
        if not data:
            raise ConnectionError("connection closed by the other end")
        self.inbox.extend(self.decoder.feed(data))

    def next(self) -> Message:
        while not self.inbox:
            self.fill()
        return self.inbox.popleft()

    def wait_for(self, match: Callable[[Message], bool], deadline: float, what: str) -> Message:
        while True:
            if time.monotonic() > deadline:
                raise BenchError(f"timed out waiting for {what}")
            try:
                msg = self.next()
            except TimeoutError:
                continue
            if match(msg):
                return msg

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def register(port: int, client_id: int, name: str, deadline: float) -> Wire:
    """Connect a plain CRC v1 client and wait for its welcome."""
    wire = Wire(socket.create_connection((LOOPBACK, port), timeout=10.0))
    wire.sock.sendall(encode(ClientRegistration(client_id, 0, name, "")))
    wire.wait_for(lambda m: m.type is MsgType.STATUS and m.code == StatusCode.WELCOME,
                  deadline, f"the welcome of {name}")
    return wire


def knows(wire: Wire, other: int, deadline: float) -> None:
    wire.wait_for(lambda m: m.type is MsgType.CLIENT_REGISTRATION and m.source == other,
                  deadline, f"the registration of client {other}")


# -- pipelined flow and ping-pong ---------------------------------------------------------

def chat_text(seq: int) -> str:
    return f"{seq:010d}".ljust(TEXT_SIZE, ".")


_PAD = "." * (TEXT_SIZE - 10)


@dataclass
class Flow:
    """What the receiving end saw of one pipelined run."""

    messages: int
    received: int = 0
    seconds: float = 0.0
    lost: int = 0
    reordered: int = 0
    duplicated: int = 0
    corrupt: int = 0
    send_error: str = ""

    @property
    def msgs_per_s(self) -> float:
        return self.received / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.msgs_per_s * FRAME_SIZE / 1e6

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "msgs_per_s": round(self.msgs_per_s),
                "mb_per_s": round(self.mb_per_s, 2)}


def flow_chunks(count: int) -> list[bytes]:
    """The pipelined stream from A to B, encoded once, in ``sendall`` batches."""
    frames = [encode(ClientChat(CLIENT_A, CLIENT_B, chat_text(seq))) for seq in range(count)]
    return [b"".join(frames[i:i + SEND_BATCH]) for i in range(0, count, SEND_BATCH)]


def pipelined(sender: Wire, receiver: Wire, chunks: list[bytes], count: int,
              params: Params) -> Flow:
    """Send ``chunks`` from a thread as fast as the socket takes them; check at the far end."""
    flow = Flow(count)

    def send_all() -> None:
        try:
            for chunk in chunks:
                sender.sock.sendall(chunk)
        except OSError as exc:
            flow.send_error = str(exc)

    seen = bytearray(count)
    highest = -1
    receiver.sock.settimeout(params.stall_timeout)
    thread = threading.Thread(target=send_all, name="pipelined-sender", daemon=True)
    start = time.perf_counter()
    last = start
    deadline = start + params.flow_timeout
    thread.start()
    try:
        while flow.received < count and last < deadline:
            try:
                if not receiver.inbox:
                    receiver.fill()
            except (TimeoutError, ConnectionError):
                break
            batch, receiver.inbox = receiver.inbox, deque()
            for msg in batch:
                if msg.type is not MsgType.CLIENT_CHAT:
                    flow.corrupt += 1
                    continue
                text = msg.text
                try:
                    seq = int(text[:10])
                except ValueError:
                    seq = -1
                if not 0 <= seq < count or text[10:] != _PAD:
                    flow.corrupt += 1
                elif seen[seq]:
                    flow.duplicated += 1
                else:
                    seen[seq] = 1
                    flow.received += 1
                    if seq < highest:
                        flow.reordered += 1
                    else:
                        highest = seq
            last = time.perf_counter()
    finally:
        thread.join(timeout=params.stall_timeout)
        receiver.sock.settimeout(10.0)
    flow.seconds = last - start
    flow.lost = count - flow.received
    return flow


@dataclass
class Latency:
    rounds: int
    p50_us: float
    p99_us: float
    mean_us: float


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, round(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def ping_pong(a: Wire, b: Wire, rounds: int, warmup: int) -> Latency:
    """One chat in flight: A to B, B straight back to A; round trips in microseconds."""
    ping = encode(ClientChat(CLIENT_A, CLIENT_B, "ping".ljust(TEXT_SIZE, ".")))
    pong = encode(ClientChat(CLIENT_B, CLIENT_A, "pong".ljust(TEXT_SIZE, ".")))
    samples: list[float] = []
    for i in range(warmup + rounds):
        t0 = time.perf_counter_ns()
        a.sock.sendall(ping)
        if b.next().type is not MsgType.CLIENT_CHAT:
            raise BenchError("ping-pong: B received something other than the ping")
        b.sock.sendall(pong)
        if a.next().type is not MsgType.CLIENT_CHAT:
            raise BenchError("ping-pong: A received something other than the pong")
        if i >= warmup:
            samples.append((time.perf_counter_ns() - t0) / 1000)
    samples.sort()
    return Latency(rounds, percentile(samples, 50), percentile(samples, 99),
                   sum(samples) / len(samples))


# -- 1. relay chains ----------------------------------------------------------------------

@dataclass
class PathResult:
    """One kind of path (mesh servers or forwarders) of one chain length."""

    flow: Flow
    latency: Latency

    def as_dict(self) -> dict[str, Any]:
        return {"flow": self.flow.as_dict(), "latency": asdict(self.latency)}


def measure_path(a: Wire, b: Wire, chunks: list[bytes], params: Params) -> PathResult:
    flow = pipelined(a, b, chunks, params.messages, params)
    if flow.lost or flow.corrupt:
        raise BenchError(f"pipelined run incomplete: {flow.lost} lost, {flow.corrupt} corrupt"
                         + (f" (sender: {flow.send_error})" if flow.send_error else ""))
    return PathResult(flow, ping_pong(a, b, params.rounds, params.warmup_rounds))


def mesh_chain(length: int, chunks: list[bytes], params: Params, logdir: Path) -> PathResult:
    with Processes(logdir) as group:
        servers = start_tree(group, [None, *range(length - 1)], f"chain{length}-s",
                             params.setup_timeout)
        deadline = time.monotonic() + params.setup_timeout
        a = register(servers[0].port, CLIENT_A, "bench-a", deadline)
        b = register(servers[-1].port, CLIENT_B, "bench-b", deadline)
        try:
            knows(b, CLIENT_A, deadline)
            knows(a, CLIENT_B, deadline)
            return measure_path(a, b, chunks, params)
        finally:
            a.close()
            b.close()


def forwarder_chain(length: int, chunks: list[bytes], params: Params,
                    logdir: Path) -> PathResult:
    """The ceiling: A -> forwarder 1 -> ... -> forwarder N -> B, bytes only."""
    deadline = time.monotonic() + params.setup_timeout
    with Processes(logdir) as group, socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        target = start_forwarders(group, length, listener.getsockname()[1], deadline,
                                  f"chain{length}")
        a = Wire(socket.create_connection((LOOPBACK, target), timeout=10.0))
        listener.settimeout(max(0.1, deadline - time.monotonic()))
        b = Wire(listener.accept()[0])
        try:
            return measure_path(a, b, chunks, params)
        finally:
            a.close()
            b.close()


def relay_chains(params: Params, logdir: Path) -> list[dict[str, Any]]:
    chunks = flow_chunks(params.messages)
    rows = []
    for length in params.chains:
        console.log(f"chain of {length}: mesh servers")
        mesh = mesh_chain(length, chunks, params, logdir)
        console.log(f"chain of {length}: byte forwarders (ceiling)")
        ceiling = forwarder_chain(length, chunks, params, logdir)
        rows.append({
            "length": length,
            "mesh": mesh.as_dict(),
            "ceiling": ceiling.as_dict(),
            "throughput_ratio": round(mesh.flow.msgs_per_s / ceiling.flow.msgs_per_s, 3),
            "p50_ratio": round(mesh.latency.p50_us / ceiling.latency.p50_us, 3),
        })
    return rows


# -- 2. convergence -----------------------------------------------------------------------

def convergence(params: Params, logdir: Path, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    n_servers, n_clients = params.tree_servers, params.tree_clients
    parents: list[int | None] = [None, *(rng.randrange(i) for i in range(1, n_servers))]
    with Processes(logdir) as group, selectors.DefaultSelector() as sel:
        console.log(f"convergence: starting a random tree of {n_servers} servers")
        servers = start_tree(group, parents, "tree-s", params.setup_timeout)
        ids = [200_000 + i for i in range(n_clients)]
        socks: list[socket.socket] = []
        try:
            for i in range(n_clients):
                sock = socket.create_connection((LOOPBACK, servers[i % n_servers].port),
                                                timeout=10.0)
                sock.setblocking(False)
                socks.append(sock)
                sel.register(sock, selectors.EVENT_READ, i)
            frames = [encode(ClientRegistration(cid, 0, f"user{cid}", "")) for cid in ids]
            decoders = [Decoder() for _ in ids]
            known: list[set[int]] = [set() for _ in ids]
            members = set(ids)
            complete = welcomed = 0
            console.log(f"convergence: {n_clients} clients register at once")
            start = time.perf_counter()
            for sock, frame in zip(socks, frames):
                sock.send(frame)     # a few dozen bytes: always fits at once
            deadline = start + params.converge_timeout
            finished = start
            while complete < n_clients and time.perf_counter() < deadline:
                for key, _ in sel.select(0.2):
                    i = key.data
                    try:
                        data = receive(key.fileobj)
                    except BlockingIOError:
                        continue
                    if not data:
                        raise BenchError(f"client {ids[i]} was disconnected")
                    for msg in decoders[i].feed(data):
                        if msg.type is MsgType.CLIENT_REGISTRATION and msg.source in members \
                                and msg.source != ids[i] and msg.source not in known[i]:
                            known[i].add(msg.source)
                            if len(known[i]) == n_clients - 1:
                                complete += 1
                                finished = time.perf_counter()
                        elif msg.type is MsgType.STATUS and msg.code == StatusCode.WELCOME:
                            welcomed += 1
        finally:
            for sock in socks:
                sock.close()
    converged = complete == n_clients
    return {
        "servers": n_servers, "clients": n_clients, "seed": seed,
        "tree_depth": tree_depth(parents),
        "converged": converged,
        "seconds": round(finished - start, 3) if converged else None,
        "timeout": params.converge_timeout,
        "clients_complete": complete,
        "fewest_known": min(len(k) for k in known),
        "welcomed": welcomed,
    }


def tree_depth(parents: list[int | None]) -> int:
    depth = [0] * len(parents)
    for i, parent in enumerate(parents):
        if parent is not None:
            depth[i] = depth[parent] + 1
    return max(depth)


# -- 3. idle cost -------------------------------------------------------------------------

def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def idle_sample(proc: psutil.Process, seconds: float) -> dict[str, float]:
    """CPU use and wake-ups of ``proc`` over ``seconds`` of doing nothing."""
    cpu0, wake0, t0 = cpu_seconds(proc), proc.num_ctx_switches().voluntary, time.monotonic()
    time.sleep(seconds)
    cpu1, wake1, t1 = cpu_seconds(proc), proc.num_ctx_switches().voluntary, time.monotonic()
    return {"cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
            "wakeups_per_s": round((wake1 - wake0) / (t1 - t0), 1)}


def idle_cost(params: Params, logdir: Path) -> dict[str, Any]:
    with Processes(logdir) as group, selectors.DefaultSelector() as sel:
        server = start_tree(group, [None], "idle-s", params.setup_timeout)[0]
        proc = psutil.Process(server.proc.pid)
        time.sleep(0.5)
        rss_empty = proc.memory_info().rss
        deadline = time.monotonic() + params.setup_timeout
        few = [register(server.port, 300_000 + i, f"idle{i:04d}", deadline)
               for i in range(params.idle_clients)]
        socks: list[socket.socket] = []
        try:
            time.sleep(0.5)
            console.log(f"idle: {params.idle_seconds:g} s of an idle server "
                        f"with {len(few)} idle clients")
            idle = idle_sample(proc, params.idle_seconds)
            rss_idle = proc.memory_info().rss

            many = params.many_clients
            console.log(f"idle: {many} more clients register")
            for wire in few:
                wire.sock.setblocking(False)
                sel.register(wire.sock, selectors.EVENT_READ, None)
            for i in range(many):
                sock = socket.create_connection((LOOPBACK, server.port), timeout=10.0)
                sock.setblocking(False)
                socks.append(sock)
                sel.register(sock, selectors.EVENT_READ, i)
            # Every name has the same length, so the bytes each new client must
            # receive are known: its welcome and the registration of every other.
            names = [f"many{i:04d}" for i in range(many)]
            total = many + len(few)
            reg_size = len(encode(ClientRegistration(1, 1, names[0], "")))
            welcome_size = len(encode(Status(1, 1, 0, welcome_text(names[0]))))
            expect = welcome_size + reg_size * (total - 1)
            received = [0] * many
            start = time.monotonic()
            for i, sock in enumerate(socks):
                sock.sendall(encode(ClientRegistration(400_000 + i, 0, names[i], "")))
            done = 0
            deadline = start + params.setup_timeout
            while done < many:
                if time.monotonic() > deadline:
                    raise BenchError(f"only {done} of {many} clients fully registered in time")
                for key, _ in sel.select(0.2):
                    try:
                        data = receive(key.fileobj)
                    except BlockingIOError:
                        continue
                    if not data:
                        raise BenchError("the server closed a client connection")
                    i = key.data
                    if i is not None:
                        received[i] += len(data)
                        if received[i] == expect:
                            done += 1
            joined_seconds = time.monotonic() - start
            time.sleep(0.5)
            state = state_query(server.port)
            if state is None or len(state["adjacent_user_ids"]) != total:
                raise BenchError("the server does not list every client as adjacent")
            rss_many = proc.memory_info().rss
            busy = idle_sample(proc, params.idle_seconds)
        finally:
            for sock in socks:
                sock.close()
            for wire in few:
                wire.close()
    return {
        "idle_clients": len(few),
        "idle_seconds": params.idle_seconds,
        "cpu_percent": idle["cpu_percent"],
        "wakeups_per_s": idle["wakeups_per_s"],
        "rss_no_clients": rss_empty,
        "rss_idle": rss_idle,
        "many_clients": many,
        "many_join_seconds": round(joined_seconds, 3),
        "rss_many": rss_many,
        "rss_per_client": round((rss_many - rss_idle) / many),
        "cpu_percent_many": busy["cpu_percent"],
        "wakeups_per_s_many": busy["wakeups_per_s"],
    }


# -- report -------------------------------------------------------------------------------

@dataclass
class Floor:
    what: str
    limit: str
    measured: str
    met: bool


@dataclass
class Report:
    params: Params
    quick: bool
    started: str = ""
    #: Share of the machine's CPU used by processes other than the benchmark
    #: and its children while it ran (the machine may be shared).
    other_load_percent: float | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    chains: list[dict[str, Any]] = field(default_factory=list)
    convergence: dict[str, Any] | None = None
    idle: dict[str, Any] | None = None
    floors: list[Floor] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No correctness failure (speed floors do not count)."""
        if self.errors:
            return False
        for row in self.chains:
            for path in ("mesh", "ceiling"):
                flow = row[path]["flow"]
                if flow["lost"] or flow["reordered"] or flow["duplicated"] or flow["corrupt"]:
                    return False
        return self.convergence is None or self.convergence["converged"]

    def as_dict(self) -> dict[str, Any]:
        return {"started": self.started, "quick": self.quick, "ok": self.ok,
                "other_load_percent": self.other_load_percent,
                "server_script": str(server_script),
                "params": asdict(self.params), "machine": self.machine, "chains": self.chains,
                "convergence": self.convergence, "idle": self.idle,
                "floors": [asdict(f) for f in self.floors], "errors": self.errors}


class LoadMeter:
    """How busy the machine was meanwhile with work that is not ours."""

    def __init__(self) -> None:
        self.start = (time.monotonic(), self._busy(), self._ours())

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)

    @staticmethod
    def _ours() -> float:
        """CPU seconds of this process and of every child it has reaped."""
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            total += usage.ru_utime + usage.ru_stime
        return total

    def others_percent(self) -> float:
        """Call once every child has been reaped."""
        t0, busy0, ours0 = self.start
        wall = (time.monotonic() - t0) * (os.cpu_count() or 1)
        others = (self._busy() - busy0) - (self._ours() - ours0)
        return round(max(0.0, 100 * others / wall), 1) if wall > 0 else 0.0


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "system": platform.platform()}


def evaluate_floors(report: Report) -> None:
    longest = next((r for r in report.chains if r["length"] == 11), None)
    if longest is not None:
        rate = longest["mesh"]["flow"]["msgs_per_s"]
        p50 = longest["mesh"]["latency"]["p50_us"]
        report.floors.append(Floor("throughput across 11 servers", ">= 20,000 msgs/s",
                                   f"{rate:,} msgs/s", rate >= 20_000))
        report.floors.append(Floor("p50 round trip across 11 servers", "< 1,500 µs",
                                   f"{p50:,.0f} µs", p50 < 1_500))
    conv = report.convergence
    if conv is not None and conv["servers"] == 50 and conv["clients"] == 200:
        seconds = conv["seconds"]
        report.floors.append(Floor("convergence, 50 servers / 200 clients", "< 3 s",
                                   f"{seconds:.2f} s" if seconds is not None else "not reached",
                                   seconds is not None and seconds < 3))
    if report.idle is not None:
        cpu = report.idle["cpu_percent"]
        report.floors.append(Floor("CPU of an idle server", "~0 % (< 1 %)", f"{cpu:.2f} %",
                                   cpu < 1))


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def print_report(report: Report) -> None:
    if report.chains:
        table = Table(title="Relay chains: pipelined 100-byte chats and ping-pong round trips")
        table.add_column("chain", justify="right")
        table.add_column("path")
        for name in ("msgs/s", "MB/s", "p50 µs", "p99 µs", "msgs/s ÷ ceiling",
                     "p50 ÷ ceiling", "lost", "reordered", "duplicated"):
            table.add_column(name, justify="right")
        for row in report.chains:
            for path in ("mesh", "ceiling"):
                flow, lat = row[path]["flow"], row[path]["latency"]
                mesh = path == "mesh"
                table.add_row(
                    str(row["length"]) if mesh else "",
                    "mesh" if mesh else "ceiling",
                    f"{flow['msgs_per_s']:,}", f"{flow['mb_per_s']:.2f}",
                    f"{lat['p50_us']:,.0f}", f"{lat['p99_us']:,.0f}",
                    f"{row['throughput_ratio']:.2f}×" if mesh else "",
                    f"{row['p50_ratio']:.2f}×" if mesh else "",
                    str(flow["lost"]), str(flow["reordered"]), str(flow["duplicated"]),
                    end_section=not mesh)
        console.print(table)
        p = report.params
        console.print(f"  {p.messages:,} chats of {TEXT_SIZE} text bytes ({FRAME_SIZE} on the "
                      f"wire) per pipelined run; {p.rounds:,} timed round trips after "
                      f"{p.warmup_rounds:,} warm-up ones. MB/s counts wire bytes.")
    if report.convergence is not None:
        conv = report.convergence
        table = Table(title="Convergence: every client learns of every other")
        for name in ("servers", "clients", "tree depth", "seconds", "clients complete",
                     "fewest known"):
            table.add_column(name, justify="right")
        table.add_row(str(conv["servers"]), str(conv["clients"]), str(conv["tree_depth"]),
                      f"{conv['seconds']:.3f}" if conv["converged"]
                      else f"not in {conv['timeout']:g} s",
                      str(conv["clients_complete"]), str(conv["fewest_known"]))
        console.print(table)
    if report.idle is not None:
        idle = report.idle
        table = Table(title="One server at rest")
        table.add_column("state")
        for name in ("CPU", "wake-ups/s", "RSS"):
            table.add_column(name, justify="right")
        table.add_row("no clients", "", "", mib(idle["rss_no_clients"]))
        table.add_row(f"{idle['idle_clients']} idle clients", f"{idle['cpu_percent']:.2f} %",
                      f"{idle['wakeups_per_s']:.1f}", mib(idle["rss_idle"]))
        table.add_row(f"+{idle['many_clients']:,} clients (joined in "
                      f"{idle['many_join_seconds']:.2f} s)",
                      f"{idle['cpu_percent_many']:.2f} %", f"{idle['wakeups_per_s_many']:.1f}",
                      f"{mib(idle['rss_many'])} ({idle['rss_per_client'] / 1024:.1f} KiB/client)")
        console.print(table)
        console.print(f"  CPU and wake-ups over {idle['idle_seconds']:g} s each.")
    if report.floors:
        table = Table(title="Floors")
        for name in ("measurement", "floor", "measured", "met"):
            table.add_column(name)
        for floor in report.floors:
            table.add_row(floor.what, floor.limit, floor.measured,
                          "[green]yes[/]" if floor.met else "[red]MISSED[/]")
        console.print(table)
    if report.other_load_percent is not None:
        console.print(f"Other processes used {report.other_load_percent:g} % of the machine's "
                      "CPU during the run; every figure moves with that.")
    for error in report.errors:
        console.print(f"[red]error:[/] {error}")
    console.print("[green]correctness: ok[/]" if report.ok else "[red]correctness: FAILED[/]")


# -- main -------------------------------------------------------------------------------

def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so cleanup runs either way."""
    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


SECTIONS = ("chains", "convergence", "idle")


def run(report: Report, sections: set[str], logdir: Path, seed: int) -> None:
    steps: list[tuple[str, Callable[[], None]]] = [
        ("chains", lambda: report.chains.extend(relay_chains(report.params, logdir))),
        ("convergence", lambda: setattr(report, "convergence",
                                        convergence(report.params, logdir, seed))),
        ("idle", lambda: setattr(report, "idle", idle_cost(report.params, logdir))),
    ]
    for name, step in steps:
        if name not in sections:
            continue
        try:
            step()
        except (BenchError, OSError) as exc:
            report.errors.append(f"{name}: {exc}")
            console.log(f"[red]{name} failed:[/] {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark CRC Mesh relay servers on loopback.")
    parser.add_argument("--quick", action="store_true", help="small counts: a sanity run")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default: {','.join(SECTIONS)})")
    parser.add_argument("--chains", help="comma-separated chain lengths (default: 2,5,11)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random server tree")
    parser.add_argument("--server-script", type=Path, default=SERVER_SCRIPT,
                        help="the mesh_server.py to measure (default: this tree's); "
                             "for before/after comparisons")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the servers' log directory and print where it is")
    args = parser.parse_args(argv)
    global server_script
    server_script = args.server_script.resolve()
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    if not sections <= set(SECTIONS):
        parser.error(f"--only takes some of {', '.join(SECTIONS)}")
    params = QUICK if args.quick else Params()
    if args.chains:
        params = Params(**{**asdict(params), "chains": tuple(int(n) for n in args.chains.split(","))})

    raise_fd_limit(params.many_clients + params.tree_clients + 512)
    logdir = Path(tempfile.mkdtemp(prefix="crc-bench-"))
    report = Report(params, args.quick, started=datetime.datetime.now().isoformat(timespec="seconds"),
                    machine=machine_info())
    meter = LoadMeter()
    try:
        with terminate_as_interrupt():
            run(report, sections, logdir, args.seed)
    except KeyboardInterrupt:
        report.errors.append("interrupted")
        console.print("[red]interrupted[/]")
    finally:
        stop_group(Processes.live)
        if args.keep_logs:
            console.print(f"server logs kept in {logdir}")
        else:
            shutil.rmtree(logdir, ignore_errors=True)
    report.other_load_percent = meter.others_percent()
    evaluate_floors(report)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
