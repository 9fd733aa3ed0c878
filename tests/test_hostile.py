"""Hostile input against a live server, while well-behaved clients keep chatting.

A real ``mesh_server.py`` process (started as the black-box tests start one,
with a short ``--registration-timeout``) is fed, in two identical rounds:
random bytes (before and after a registration), 80 MiB of well-formed
statuses addressed to the server, truncated frames (then a close, or
silence), headers with huge length fields (at the caps, over them, and
claiming a payload the decoder could receive in place), a slow writer that
never finishes its registration, a slow writer that does (one byte at a
time), and 1,000 idle connections, all held at once. Meanwhile two plain CRC
v1 clients chat with each other every 20 ms.

Asserted: every chat arrives, in order, during and after the attacks, with no
long gap; the slow but valid writer's chat arrives whole; every hostile
connection that must be closed is closed (a protocol error, or the
registration deadline); the server's file descriptors come back to where
they were, its resident memory stays under baseline + 64 MiB during and
after each round and does not grow from one round to the next; the server
is alive and answers a state query naming only the two chatters.

Everything is bounded: a fixed number of connections per round, at most
``MAX_CHATS`` chats per client, every wait a condition with a deadline, and
all traffic to loopback. The in-process tests at the end pin the two bugs
this file found (memory reserved on a header's say-so before the hello
exchange; an unbounded status log).
"""

from __future__ import annotations

import contextlib
import random
import resource
import select
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest

from crc.protocol import (
    ClientChat, ClientQuit, ClientRegistration, Decoder, Extension, MsgType, ProtocolError,
    ServerQuit, ServerRegistration, Status, StatusCode, encode,
)
from crc.protocol.codec import IN_PLACE_MAX
from crc.server.query import StateQueryError, query_state
from crc.server.server import STATUS_LOG_CHARS, STATUS_LOG_ENTRIES

from .meshkit import Mesh, call, wait_for
from .test_blackbox import Processes, Server

LOOPBACK = "127.0.0.1"
MiB = 1 << 20
SEED = 20240917

REGISTRATION_TIMEOUT = 3.0     # seconds; the server's --registration-timeout
ROUNDS = 2
IDLE = 1000                    # idle connections per round, held at once
IN_PLACE_CLAIMS = 150          # headers claiming an extension payload of IN_PLACE_MAX
AT_CAP_CLAIMS = 10             # chat headers claiming exactly the text cap, then silence
RANDOM_PENDING = 30            # random bytes as a connection's first bytes
RANDOM_REGISTERED = 10         # random bytes after a registration was welcomed
TRUNCATED = 40                 # a frame cut short: half then close, half then silence
STATUS_FLOOD = 80              # statuses of 1 MiB each, addressed to the server
MEMORY_BOUND = 64 * MiB        # over the baseline, during and after every round
ROUND_GROWTH = 16 * MiB        # growth allowed from one round's end to the next
MAX_GAP = 2.0                  # seconds between two chats arriving, at most (< the deadline)
PACE = 0.02                    # seconds between a chatter's chats
MAX_CHATS = 5000               # per chatter: the traffic bound
DEADLINE = 30.0                # for anything that should happen "soon"
A_ID, B_ID = 910_001, 910_002
TEXT_CAP = 16 * MiB            # Limits.max_text and --max-frame of a default server


def raise_fd_limit(needed: int) -> None:
    """Let this process (and the server it starts) hold ``needed`` descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def connect(port: int) -> socket.socket:
    """A connection to the server, in blocking mode (so that a ``MSG_DONTWAIT``
    receive never waits: on a socket with a timeout, Python polls first)."""
    sock = socket.create_connection((LOOPBACK, port), timeout=DEADLINE)
    sock.settimeout(None)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (whatever it sent before is discarded)."""
    try:
        while True:
            if not sock.recv(65536, socket.MSG_DONTWAIT):
                return True
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True                      # reset


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (anything it
    sends meanwhile is discarded)."""
    poller = select.poll()              # not select(): the test holds 1,000+ descriptors
    poller.register(sock, select.POLLIN)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not poller.poll(left * 1000):
            return False
        if closed_by_server(sock):
            return True
    return False


def wait_all_closed(socks: list[socket.socket], timeout: float, what: str) -> None:
    still_open = list(socks)

    def done() -> bool:
        still_open[:] = [s for s in still_open if not closed_by_server(s)]
        return not still_open
    try:
        wait_for(done, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {len(still_open)} of {len(socks)} still open") from None


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


# -- the well-behaved side -------------------------------------------------------------

class Chatter:
    """A plain CRC v1 client on a raw socket: one thread reads everything that
    arrives, another sends numbered chats to a peer every ``PACE`` seconds."""

    def __init__(self, port: int, my_id: int, name: str) -> None:
        self.id = my_id
        self.sock = connect(port)
        self.sock.settimeout(0.2)
        self.decoder = Decoder()
        self.welcomed = False
        self.known: set[int] = set()
        #: Chats from the peer: (arrival time, sequence number, send time).
        self.arrivals: list[tuple[float, int, float]] = []
        #: Chats from anyone else: (source, text).
        self.others: list[tuple[int, str]] = []
        self.unknown_id: list[str] = []        # "Unknown ID" statuses: none expected
        self.peer = 0
        self.sent = 0
        self.error = ""
        self._reading = threading.Event()
        self._stop_sending = threading.Event()
        self.sock.sendall(encode(ClientRegistration(my_id, 0, name, "well-behaved")))
        self._reading.set()
        self.reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self.reader.start()
        self.sender: threading.Thread | None = None

    def _read(self) -> None:
        while self._reading.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as exc:
                self.error = f"receive failed: {exc}"
                return
            if not data:
                self.error = "closed by the server"
                return
            now = time.monotonic()
            try:
                messages = self.decoder.feed(data)
            except ProtocolError as exc:
                self.error = f"bad data from the server: {exc}"
                return
            for msg in messages:
                if msg.type is MsgType.CLIENT_CHAT:
                    if msg.source == self.peer and msg.dest == self.id:
                        seq, sent = msg.text.split()
                        self.arrivals.append((now, int(seq), float(sent)))
                    else:
                        self.others.append((msg.source, msg.text))
                elif msg.type is MsgType.CLIENT_REGISTRATION:
                    self.known.add(msg.source)
                elif msg.type is MsgType.STATUS:
                    if msg.code == StatusCode.WELCOME:
                        self.welcomed = True
                    elif msg.code == StatusCode.UNKNOWN_ID:
                        self.unknown_id.append(msg.text)

    def start_chatting(self, peer: int) -> None:
        self.peer = peer
        self._stop_sending.clear()
        self.sender = threading.Thread(target=self._send, name=f"{self.id}-sender", daemon=True)
        self.sender.start()

    def _send(self) -> None:
        while self.sent < MAX_CHATS:
            text = f"{self.sent} {time.monotonic():.6f}"
            try:
                self.sock.sendall(encode(ClientChat(self.id, self.peer, text)))
            except OSError as exc:
                self.error = f"send failed: {exc}"
                return
            self.sent += 1
            if self._stop_sending.wait(PACE):    # the next chat after PACE, unless told to stop
                return

    def stop_sending(self) -> None:
        self._stop_sending.set()
        if self.sender is not None:
            self.sender.join(DEADLINE)

    def close(self) -> None:
        self._stop_sending.set()
        self._reading.clear()
        self.reader.join(DEADLINE)
        with contextlib.suppress(OSError):
            self.sock.close()

    def arrived_between(self, start: float, end: float) -> list[float]:
        return [t for t, _, _ in self.arrivals if start <= t <= end]

    def max_gap(self, start: float, end: float) -> float:
        """The longest time without a chat from the peer within [start, end]."""
        times = [start, *self.arrived_between(start, end), end]
        return max(b - a for a, b in zip(times, times[1:]))


class MemorySampler:
    """Samples the server's resident memory every 20 ms, keeping the peak."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.peak = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.thread.start()

    def rss(self) -> int:
        value = self.proc.memory_info().rss
        self.peak = max(self.peak, value)
        return value

    def _run(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.rss()
            if self._stop.wait(0.02):    # the next sample after 20 ms, unless stopped
                return

    def reset_peak(self) -> None:
        self.peak = 0

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(DEADLINE)


# -- the hostile side ------------------------------------------------------------------

#: First bytes that are valid message types: random bytes after one of these
#: get past the type check and into the length fields.
TYPES = [int(t) for t in MsgType]

#: A sample of every frame type, to be cut short.
SAMPLES = [
    ClientRegistration(5, 0, "truncated", "i" * 40), ServerRegistration(6, 0, "trunc", "x" * 9),
    Status(1, 2, 0, "a status"), ClientChat(1, 2, "a chat cut short"), ClientQuit(1, "bye"),
    ServerQuit(1, 0, "gone"), Extension(21, 1, 2, 0, b"p" * 50),
]


def random_stream(rng: random.Random) -> bytes:
    body = rng.randbytes(rng.randint(1, 2048))
    return bytes([rng.choice(TYPES)]) + body if rng.random() < 0.5 else body


def welcomed(port: int, client_id: int) -> socket.socket:
    """A connection registered as client ``client_id``, its welcome received."""
    sock = connect(port)
    sock.settimeout(0.2)
    sock.sendall(encode(ClientRegistration(client_id, 0, f"hostile{client_id}", "")))
    decoder = Decoder()
    inbox: list = []

    def welcome() -> bool:
        with contextlib.suppress(socket.timeout):
            data = sock.recv(65536)
            assert data, f"client {client_id} closed before its welcome"
            inbox.extend(decoder.feed(data))
        return any(m.type is MsgType.STATUS and m.code == StatusCode.WELCOME for m in inbox)
    wait_for(welcome, DEADLINE, f"the welcome of hostile client {client_id}")
    sock.settimeout(None)
    return sock


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send ``data``; the server may already have closed the connection."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


class SlowWriter(threading.Thread):
    """Sends ``frames`` one byte at a time, ``pause`` seconds apart, until done
    or the server closes the connection (then ``closed`` is set)."""

    def __init__(self, sock: socket.socket, frames: list[bytes], pause: float) -> None:
        super().__init__(name="slow-writer", daemon=True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # each byte its own segment
        self.sock, self.frames, self.pause = sock, frames, pause
        self.sent = 0
        self.finished = False
        self.closed = False

    def run(self) -> None:
        for frame in self.frames:
            for i in range(len(frame)):
                try:
                    self.sock.sendall(frame[i:i + 1])
                except OSError:
                    self.closed = True
                    return
                self.sent += 1
                # The attack: a byte, then a pause - cut short if the server
                # closes the connection meanwhile.
                if closed_within(self.sock, self.pause):
                    self.closed = True
                    return
        self.finished = True


class Round:
    """One round of every attack: what must be closed, what we close ourselves."""

    def __init__(self, port: int, rng: random.Random, base_id: int, b_id: int) -> None:
        self.port = port
        self.rng = rng
        self.base_id = base_id
        self.b_id = b_id
        self.must_close: list[socket.socket] = []     # by a protocol error or the deadline
        self.ours: list[socket.socket] = []           # we close these
        self.over_cap = 0                             # protocol errors the log must show
        self.slow_id = base_id + 999
        self.slow_text = f"slow but whole, round {base_id} ✓"
        self.slowloris: SlowWriter | None = None
        self.slow_valid: SlowWriter | None = None

    #: Connections of ``open_held``, all held by the server at once.
    HELD = IN_PLACE_CLAIMS + AT_CAP_CLAIMS + IDLE

    def open_held(self, accepted: Callable[[int], None]) -> None:
        """Connections that stay silent after their first bytes (if any), so the
        server holds them until the registration deadline: headers with huge
        length fields (extension payloads of IN_PLACE_MAX, 1 MiB, each; chats
        at the text cap), then 1,000 that send nothing at all. Opened in
        batches, each once the server has accepted the ones before
        (``accepted(n)``), so that its accept queue never overflows."""
        headers = ([struct.pack(">BHIIBI", MsgType.EXTENSION, 21, 1, 2, 0, IN_PLACE_MAX)]
                   * IN_PLACE_CLAIMS
                   + [struct.pack(">BIII", MsgType.CLIENT_CHAT, 1, 2, TEXT_CAP)] * AT_CAP_CLAIMS
                   + [b""] * IDLE)
        for i, header in enumerate(headers):
            if i and i % 100 == 0:
                accepted(i)
            sock = connect(self.port)
            if header:
                send_quietly(sock, header)
            self.must_close.append(sock)
        accepted(len(headers))

    def open_rest(self) -> None:
        port, rng = self.port, self.rng
        # Over the caps: refused as soon as the header is in.
        for length in (TEXT_CAP + 1, 0xFFFFFFFF):
            for header in (struct.pack(">BIII", MsgType.CLIENT_CHAT, 1, 2, length),
                           struct.pack(">BIIHI", MsgType.STATUS, 1, 2, 0, length),
                           struct.pack(">BII", MsgType.CLIENT_QUIT, 1, length),
                           struct.pack(">BIII", MsgType.SERVER_QUIT, 1, 0, length),
                           struct.pack(">BHIIBI", MsgType.EXTENSION, 21, 1, 2, 0, length)):
                self._send_and_hold(header, self.must_close)
                self.over_cap += 1
        # Slow writers: one never finishes its registration before the deadline,
        # the other registers and chats to B one byte at a time, well within it.
        self.slowloris = SlowWriter(connect(port), [encode(ClientRegistration(
            self.base_id + 998, 0, "s" * 255, "slowloris"))], pause=0.05)
        self.slow_valid = SlowWriter(connect(port), [
            encode(ClientRegistration(self.slow_id, 0, "slowpoke", "")),
            encode(ClientChat(self.slow_id, self.b_id, self.slow_text))], pause=0.005)
        self.slowloris.start()
        self.slow_valid.start()
        # Random bytes as the first bytes of a connection: closed, by an error or the deadline.
        for _ in range(RANDOM_PENDING):
            self._send_and_hold(random_stream(rng), self.must_close)
        # Random bytes on a registered link: closed whenever the decoder calls them an error.
        for i in range(RANDOM_REGISTERED):
            sock = welcomed(port, self.base_id + i)
            stream = random_stream(rng)
            try:
                Decoder().feed(stream)
                self.ours.append(sock)           # valid so far: may be held, like a slow peer
            except ProtocolError:
                self.must_close.append(sock)
            send_quietly(sock, stream)
        # Well-formed but endless: statuses addressed to the server, which keeps
        # the newest of them (for the state query) and must forget the rest.
        flood = welcomed(port, self.base_id + 997)
        text = "f" * MiB
        for _ in range(STATUS_FLOOD):
            flood.sendall(encode(Status(self.base_id + 997, 0, 5, text)))
        self.ours.append(flood)
        # Truncated frames: half then a close, half then silence (held to the deadline).
        for i in range(TRUNCATED):
            frame = encode(rng.choice(SAMPLES))
            sock = connect(port)
            send_quietly(sock, frame[:rng.randint(1, len(frame) - 1)])
            if i % 2:
                sock.close()
            else:
                self.must_close.append(sock)

    def _send_and_hold(self, data: bytes, into: list[socket.socket]) -> None:
        sock = connect(self.port)
        send_quietly(sock, data)
        into.append(sock)

    def close(self) -> None:
        slow = [w.sock for w in (self.slowloris, self.slow_valid) if w is not None]
        close_all(self.must_close + self.ours + slow)


# -- the test ---------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_hostile_input_does_not_hurt_well_behaved_clients(procs: Processes,  # noqa: F811
                                                          tmp_path: Path) -> None:
    per_round = Round.HELD + RANDOM_PENDING + RANDOM_REGISTERED + TRUNCATED + 16
    raise_fd_limit(2 * per_round + 256)
    started = time.monotonic()
    server = Server(procs, tmp_path, 7, "target",
                    options=("--registration-timeout", str(REGISTRATION_TIMEOUT)))
    proc = psutil.Process(server.proc.pid)
    rng = random.Random(SEED)

    a = Chatter(server.port, A_ID, "alice")
    b = Chatter(server.port, B_ID, "bob")
    chatters = (a, b)
    rounds: list[Round] = []
    sampler = MemorySampler(proc)
    figures: list[str] = []
    try:
        wait_for(lambda: a.welcomed and b.welcomed and B_ID in a.known and A_ID in b.known,
                 DEADLINE, "the two chatters to register and learn of each other")
        # Each knows whom it hears from before either sends: alice's first
        # chat could otherwise reach bob before bob's peer is set, and be
        # taken for someone else's.
        a.peer, b.peer = B_ID, A_ID
        a.start_chatting(B_ID)
        b.start_chatting(A_ID)
        wait_for(lambda: len(a.arrivals) >= 10 and len(b.arrivals) >= 10, DEADLINE,
                 "the first chats to arrive")
        base_fds = proc.num_fds()
        baseline = sampler.rss()
        after: list[int] = []

        def accepted(count: int) -> None:
            wait_for(lambda: proc.num_fds() >= base_fds + count, DEADLINE,
                     f"the server to accept {count} hostile connections")

        for n in range(ROUNDS):
            sampler.reset_peak()
            round_start = time.monotonic()
            r = Round(server.port, rng, 700_000 + 10_000 * n, B_ID)
            rounds.append(r)
            r.open_held(accepted)
            fds = proc.num_fds()         # all of them held at once (accepted() saw to it)
            held_rss = sampler.rss()
            opened = time.monotonic()
            r.open_rest()
            # Every connection that must be closed is, and nothing else is left behind.
            wait_all_closed(r.must_close, REGISTRATION_TIMEOUT + DEADLINE,
                            "hostile connections to be closed")
            wait_for(lambda r=r: r.slowloris.closed, DEADLINE, "the slowloris to be cut off")
            assert r.slowloris.sent < len(r.slowloris.frames[0])
            wait_for(lambda r=r: r.slow_valid.finished, DEADLINE, "the slow writer to finish")
            wait_for(lambda r=r: (r.slow_id, r.slow_text) in b.others, DEADLINE,
                     "the slow writer's chat to arrive whole")
            r.close()
            wait_for(lambda: proc.num_fds() <= base_fds + 2, DEADLINE,
                     "the server to release every hostile connection")
            round_end = time.monotonic()
            after.append(sampler.rss())
            assert sampler.peak < baseline + MEMORY_BOUND, \
                f"round {n + 1}: peak RSS {sampler.peak / MiB:.1f} MiB over the bound"
            assert after[-1] < baseline + MEMORY_BOUND
            for c in chatters:
                assert c.arrived_between(round_start, round_end), "no chat during the attack"
                gap = c.max_gap(round_start, round_end)
                assert gap < MAX_GAP, f"chats to {c.id} stalled for {gap:.2f} s"
            lat = sorted(t - sent for c in chatters for t, _, sent in c.arrivals
                         if round_start <= t <= round_end)
            figures.append(
                f"round {n + 1}: {fds - base_fds} hostile connections held at once; "
                f"opened in {opened - round_start:.2f} s, all closed after "
                f"{round_end - round_start:.2f} s; RSS baseline {baseline / MiB:.1f} MiB, "
                f"held {held_rss / MiB:.1f}, peak {sampler.peak / MiB:.1f}, "
                f"after {after[-1] / MiB:.1f} MiB; chats meanwhile "
                f"{sum(len(c.arrived_between(round_start, round_end)) for c in chatters)}, "
                f"longest gap {max(c.max_gap(round_start, round_end) for c in chatters):.3f} s, "
                f"latency p50 {lat[len(lat) // 2] * 1000:.1f} ms max {lat[-1] * 1000:.1f} ms")

        # The rounds leave nothing behind: no growth from one to the next.
        assert after[-1] - after[0] < ROUND_GROWTH, \
            f"RSS grew {(after[-1] - after[0]) / MiB:.1f} MiB between rounds"
        # Over-cap headers were refused for what they are (not at the deadline).
        log_text = server.log.read_text(encoding="utf-8")
        assert log_text.count("exceeds the limit of") >= sum(r.over_cap for r in rounds)

        # After the attack: chats keep coming, then every one has arrived, in order.
        quiet_from = time.monotonic()
        wait_for(lambda: all(len(c.arrived_between(quiet_from, time.monotonic())) >= 20
                             for c in chatters), DEADLINE, "20 more chats each after the attack")
        for c in chatters:
            c.stop_sending()
        for c, peer in ((a, b), (b, a)):
            try:
                wait_for(lambda c=c, peer=peer: len(c.arrivals) >= peer.sent, DEADLINE,
                         f"every chat to {c.id}")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {describe_arrivals(c, peer)}; server "
                                     f"{'alive' if server.proc.poll() is None else 'exited'}"
                                     ) from None
            assert [seq for _, seq, _ in c.arrivals] == list(range(peer.sent))
            assert not c.error and not c.unknown_id
        assert server.proc.poll() is None, "the server died"
        state = wait_for(lambda: (s := state_or_none(server.port)) and
                         set(s["hosts_db"]) == {A_ID, B_ID} and s, DEADLINE,
                         "the server to know only the two chatters")
        assert state["id"] == 7
        figures.append(f"chats delivered in order: {a.sent} + {b.sent}; "
                       f"whole test {time.monotonic() - started:.1f} s")
    finally:
        sampler.stop()
        for r in rounds:
            r.close()
        for c in chatters:
            c.close()
        print("\n" + "\n".join(figures))
    assert server.terminate() == 0


def describe_arrivals(c: Chatter, peer: Chatter) -> str:
    """What a chatter got of its peer's chats: enough to tell a lost chat from
    a dead reader or a stalled server when the wait for them fails."""
    seqs = [seq for _, seq, _ in c.arrivals]
    missing = sorted(set(range(peer.sent)) - set(seqs))
    last = f"{time.monotonic() - c.arrivals[-1][0]:.1f} s ago" if c.arrivals else "never"
    return (f"{len(seqs)} of {peer.sent} arrived, the last {last}; missing {len(missing)} "
            f"(first {missing[:10]}); out of order: {seqs != sorted(seqs)}; reader "
            f"{'alive' if c.reader.is_alive() else 'stopped'} ({c.error or 'no error'}); "
            f"sender error: {peer.error or 'none'}; other chats: {len(c.others)}, "
            f"unknown-id statuses: {len(c.unknown_id)}")


def state_or_none(port: int) -> dict | None:
    try:
        return query_state(LOOPBACK, port, timeout=2.0)
    except StateQueryError:
        return None


# -- regressions, in process -------------------------------------------------------------

def test_a_header_alone_reserves_nothing_before_the_hello_exchange(mesh: Mesh,
                                                                   tmp_path: Path) -> None:
    # It used to: 16 bytes claiming a 1 MiB extension payload got a 1 MiB
    # buffer at once, on any connection (500 of them: +500 MiB of RSS).
    node = mesh.add("s1", server_options={"registration_timeout": 30})
    sock = connect(node.server.port)
    sock.sendall(struct.pack(">BHIIBI", MsgType.EXTENSION, 21, 1, 2, 0, IN_PLACE_MAX))

    def received() -> list:
        return call(node.server.loop, lambda: [c.bytes_in for c in node.server.connections])
    wait_for(lambda: received() == [16], DEADLINE, "the header to arrive")
    (conn,) = call(node.server.loop, lambda: list(node.server.connections))
    target = call(node.server.loop, conn.decoder.receive_buffer)
    assert target is None, f"{len(target)} bytes reserved on a header's say-so"
    assert call(node.server.loop, lambda: conn.decoder.pending) == 16
    # Once a peer may send extension frames, large payloads go in place again.
    client, _ = mesh.client(node, "ext-client", tmp_path)
    allowed = call(node.server.loop, lambda: node.server.links[client.id].decoder.allow_in_place)
    assert allowed
    sock.close()


def test_a_peer_cannot_grow_the_status_log_without_bound(mesh: Mesh) -> None:
    node = mesh.add("s1")
    sock = connect(node.server.port)
    sock.sendall(encode(ClientRegistration(55, 0, "chatty", "")))
    text = "z" * 8192
    burst = b"".join(encode(Status(55, 0, 5, f"{i} {text}")) for i in range(STATUS_LOG_ENTRIES * 2))
    sock.sendall(burst)
    last = f"{STATUS_LOG_ENTRIES * 2 - 1} {text}"
    wait_for(lambda: call(node.server.loop, lambda: node.server.status_log[-1:] == [last]),
             DEADLINE, "the last status to be logged")
    kept = call(node.server.loop, lambda: list(node.server.status_log))
    assert len(kept) <= STATUS_LOG_ENTRIES
    assert sum(map(len, kept)) <= STATUS_LOG_CHARS
    assert kept[-1] == last                 # the newest are the ones kept
    sock.close()
