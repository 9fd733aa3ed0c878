"""A fetch paces itself to its path (``crc.jobs.transfer``): the chunk it
asks for and the chunks it keeps in flight follow the rate data arrives at
and the shortest round trip of a chunk, so that a fast path is kept busy
and a slow one holds little in its queues. Driven by a simulated path: a
bottleneck of a given rate and a fixed delay, with a fake clock. And a
relay's fetch from a holder that left unnoticed is started again from one
that is there."""

from __future__ import annotations

import hashlib
import heapq
import os
from pathlib import Path

import pytest

from crc.jobs import transfer
from crc.jobs.store import BlobStore
from crc.jobs.transfer import Transfers
from crc.jobs.wire import Kind, unpack


def simulate(tmp_path: Path, rate, delay: float, size: int,
             meddle=None) -> tuple[Transfers, list]:
    """Fetch ``size`` random bytes over a path of ``rate`` bytes/s (or
    ``rate(time)``) and a one-way ``delay``; returns the requester and its fetch's history
    ``(time, chunk, window, bytes in flight)``. ``meddle(time, fetch)``, if
    given, sees the fetch after each arrival."""
    data = os.urandom(size)
    sha = hashlib.sha256(data).hexdigest()
    now = [0.0]
    events: list[tuple[float, int, int, int]] = []     # (arrival, seq, offset, length)
    link_free = [0.0]
    seq = [0]

    def send(msg) -> bool:
        header, _ = unpack(msg.payload)
        if msg.kind == Kind.WANT:
            # The WANT reaches the holder after `delay`; the DATA leaves when
            # the bottleneck is free and arrives `delay` after its last byte.
            start = max(now[0] + delay, link_free[0])
            link_free[0] = start + header["length"] / (rate(start) if callable(rate) else rate)
            seq[0] += 1
            heapq.heappush(events, (link_free[0] + delay, seq[0], header["offset"],
                                    header["length"]))
        return True

    store = BlobStore(tmp_path / "store")
    t = Transfers(1, store, send, clock=lambda: now[0])
    done: list = []
    t.fetch(sha, size, 2, lambda s, err: done.append(err))
    history = []
    while events and not done:
        at, _, offset, length = heapq.heappop(events)
        now[0] = at
        fetch = t.fetches.get(sha)
        t.on_data({"sha": sha, "offset": offset}, data[offset:offset + length])
        if fetch is not None and meddle is not None:
            meddle(at, fetch)
        if fetch is not None:
            history.append((at, fetch.chunk, fetch.window, fetch.in_flight * fetch.chunk))
    assert done == [None] and store.has(sha)
    assert store.path(sha).read_bytes() == data
    return t, history


def test_a_slow_path_gets_small_chunks_and_little_in_flight(tmp_path: Path) -> None:
    rate = 6.25e6                                   # 50 Mbit/s, 1 ms each way
    _, history = simulate(tmp_path, rate, 0.001, 8 * 1024 * 1024)
    end, chunk, window, in_flight = history[-1]
    assert chunk == transfer.MIN_CHUNK
    # What it keeps in flight is the path's round trip of the rate and a
    # little more:
    # not the megabyte a fixed window of large chunks would queue.
    assert in_flight <= 64 * 1024
    assert end < 8 * 1024 * 1024 / rate * 1.15       # and the path stayed busy


def test_what_stands_in_the_queue_is_not_taken_for_the_path(tmp_path: Path) -> None:
    """A round trip measured behind a queue (the first window going out at
    once, or a relay's stall) sizes a window that keeps that queue standing:
    every later chunk waits in it, so no shorter round trip is ever seen,
    and every chat crossing the path waits behind it. Here the fetch is made
    to believe, half a second in, that the path's round trip is 50 ms: the
    path's own is learnt again with the path drained."""
    rate, delay = 6.25e6, 0.001                     # 50 Mbit/s, 1 ms each way
    misled = []

    def mislead(at: float, fetch) -> None:
        if at > 0.5 and not misled:
            misled.append(at)
            fetch.min_rtt = 0.05
            fetch.window = int(rate * (0.05 + transfer.QUEUE_TIME) / fetch.chunk) + 1

    _, history = simulate(tmp_path, rate, delay, 24 * 1024 * 1024, mislead)
    assert misled
    end, chunk, window, in_flight = history[-1]
    own = 2 * delay + chunk / rate                  # a chunk's round trip, nothing queued
    late = [f for t, _, _, f in history if t > end - 1.0]
    assert max(late) <= rate * (own + transfer.QUEUE_TIME) + 2 * chunk
    assert end < 24 * 1024 * 1024 / rate * 1.1      # the drains cost little


def test_a_fast_path_gets_large_chunks_and_stays_busy(tmp_path: Path) -> None:
    rate = 125e6                                    # 1 Gbit/s, 1 ms each way
    _, history = simulate(tmp_path, rate, 0.001, 64 * 1024 * 1024)
    end, chunk, window, _ = history[-1]
    assert chunk >= 128 * 1024
    assert end < 64 * 1024 * 1024 / rate * 1.15


def test_the_queue_allowance_has_no_step() -> None:
    """Nowhere does a small change of rate move it much (each change of
    the window costs a drain)."""
    times = [transfer.queue_time(r * 1e6) for r in range(1, 601)]
    assert max(abs(a - b) for a, b in zip(times, times[1:])) < 1e-4


def test_starting_on_a_slow_path_queues_no_more_than_the_first_window(tmp_path: Path) -> None:
    for delay in (0.0002, 0.001, 0.01):
        _, history = simulate(tmp_path / str(delay), 6.25e6, delay, 4 * 1024 * 1024)
        assert max(f for _, _, _, f in history) <= transfer.WINDOW * transfer.FIRST_CHUNK


def test_a_fast_path_is_at_full_speed_within_a_few_round_trips(tmp_path: Path) -> None:
    """Starting, a fetch doubles what it keeps in flight with each
    measurement of the rate while the window is what holds it back (as TCP's
    slow start does), instead of growing by the queue allowance alone: on a
    path as fast as relays on loopback it is at full speed in tens of
    milliseconds, not in a tenth of a second; and what it queued meanwhile
    is drained again."""
    rate, delay, size = 650e6, 0.001, 100 * 1024 * 1024
    got: dict[float, int] = {}

    def watch(at: float, fetch) -> None:
        got[at] = fetch.received

    _, history = simulate(tmp_path, rate, delay, size, watch)
    early = max(n for at, n in got.items() if at <= 0.05)
    assert early >= 0.5 * rate * 0.05           # (growing by the allowance alone: 0.25)
    end, chunk, _, _ = history[-1]
    assert end < size / rate * 1.15
    # Once started, what it keeps in flight is the path's round trip of the
    # rate and a chunk: no queue allowance on a path this fast, where what
    # waits sits in socket buffers ahead of every chat.
    own = 2 * delay + chunk / rate
    late = [f for t, _, _, f in history if t > end / 2]
    assert max(late) <= rate * own + 2 * chunk


@pytest.mark.parametrize("rate", [1e6, 50e6, 1e9])
def test_the_window_never_leaves_its_bounds(tmp_path: Path, rate: float) -> None:
    _, history = simulate(tmp_path, rate, 0.0005, 4 * 1024 * 1024)
    for _, chunk, window, _ in history:
        assert transfer.MIN_CHUNK <= chunk <= transfer.CHUNK
        assert 2 <= window <= transfer.MAX_WINDOW


def test_a_relay_drops_a_fetch_whose_holder_left_unnoticed(tmp_path: Path) -> None:
    """A relay fetching a small blob from a machine that left while the
    relay was rejoining (no departure reached it) would wait forever; a
    WANT naming another holder that is on the mesh starts it again from
    that one, without failing the requester that asked anew."""
    sent: list = []
    present = {2, 30}                       # the old holder 20 is gone
    relay = Transfers(1, BlobStore(tmp_path / "store"), lambda m: sent.append(m) or True,
                      known=present.__contains__)
    sha, size = "ab" * 32, 4096
    header = {"sha": sha, "offset": 0, "length": size, "size": size}
    relay.want(2, 20, header)               # requester 2 asks of holder 20: the relay fetches
    assert relay.fetches[sha].holder == 20
    sent.clear()
    relay.want(2, 30, header)               # asked again, of holder 30
    assert relay.fetches[sha].holder == 30
    kinds = [(m.kind, m.dest) for m in sent]
    assert (Kind.WANT, 30) in kinds
    assert not any(kind == Kind.MISSING for kind, _ in kinds)
    # With both holders present, one fetch serves both requests (no restart).
    present.add(20)
    relay.want(5, 20, header)
    assert relay.fetches[sha].holder == 30


def test_a_copy_arriving_inline_does_not_break_a_fetch_under_way(tmp_path: Path) -> None:
    """A job's inline copy of a header reaching a server whose relay fetch of
    that header is half done (compiles shipped as source send dozens at
    once) leaves the fetch to finish: every waiter gets the file."""
    data = os.urandom(100_000)
    sha = hashlib.sha256(data).hexdigest()
    store = BlobStore(tmp_path / "store")
    sent: list = []
    t = Transfers(1, store, lambda m: sent.append(m) or True)
    done: list = []
    t.fetch(sha, len(data), 2, lambda s, err: done.append(err))
    first = unpack(sent[0].payload)[0]
    store.add_bytes(sha, data)                     # the inline copy, mid-fetch
    offset = 0
    while not done:
        header = next(unpack(m.payload)[0] for m in sent if unpack(m.payload)[0]["offset"]
                      == offset)
        t.on_data({"sha": sha, "offset": offset}, data[offset:offset + header["length"]])
        offset += header["length"]
    assert first["offset"] == 0 and done == [None]
    assert store.path(sha).read_bytes() == data


def test_the_queue_allowance_grows_with_the_path_speed_and_is_bounded() -> None:
    """A slow path keeps about QUEUE_TIME of its rate queued (ahead of any
    chat in the link's own queue); a fast one up to twice that (there the
    relays' turns on a CPU make round trips vary), never more; and one
    faster than any 1 Gbit/s link, limited by the relays' CPUs, nothing."""
    slow, fast = transfer.queue_time(6.25e6), transfer.queue_time(125e6)
    assert transfer.QUEUE_TIME <= slow < 1.1 * transfer.QUEUE_TIME
    assert fast == 2 * transfer.QUEUE_TIME
    assert max(transfer.queue_time(r * 1e6) for r in range(1, 2000)) <= fast
    assert transfer.queue_time(300e6) == transfer.queue_time(1e12) == 0


@pytest.mark.parametrize("rate", [8.5e6, 17e6, 34e6, 68e6])
def test_a_rate_near_a_chunk_boundary_does_not_flip_the_chunk_size(tmp_path: Path,
                                                                     rate: float) -> None:
    """Just above a rate where the chunk size doubles, a drain's dip in the
    measured rate must not halve the chunk (and the next recovery double it
    again): every change drains the path, and drains every few tens of
    milliseconds would cost a tenth of the speed."""
    _, history = simulate(tmp_path, rate, 0.001, 16 * 1024 * 1024)
    sizes = [chunk for _, chunk, _, _ in history]
    changes = sum(1 for a, b in zip(sizes, sizes[1:]) if a != b)
    assert changes <= 3
    assert history[-1][0] < 16 * 1024 * 1024 / rate * 1.05


def test_a_path_faster_than_any_gigabit_link_gets_megabyte_chunks(tmp_path: Path) -> None:
    """Relays pay CPU for every chunk: a path faster than any 1 Gbit/s link
    (here 300 MB/s, where 2 ms of the rate would be 600 KB) moves a file in
    chunks of ``CHUNK`` (1 MiB); a 1 Gbit/s link keeps the chunks that cross
    it within ``CHUNK_TIME``."""
    _, history = simulate(tmp_path / "fast", 300e6, 0.0002, 64 * 1024 * 1024)
    assert history[-1][1] == transfer.CHUNK == 1024 * 1024
    _, history = simulate(tmp_path / "lan", 125e6, 0.001, 32 * 1024 * 1024)
    assert max(chunk for _, chunk, _, _ in history) <= 125e6 * transfer.CHUNK_TIME


def test_the_chunk_time_grows_without_a_step_above_the_fastest_links() -> None:
    times = [transfer.chunk_time(r * 1e6) for r in range(0, 601, 5)]
    assert times[0] == transfer.chunk_time(transfer.FASTEST_RATE) == transfer.CHUNK_TIME
    assert transfer.chunk_time(2 * transfer.FASTEST_RATE) == 3 * transfer.CHUNK_TIME
    assert transfer.chunk_time(1e12) == 3 * transfer.CHUNK_TIME
    assert all(b >= a and b - a < 0.1 * transfer.CHUNK_TIME for a, b in zip(times, times[1:]))


class EarlierHolder:
    """A requester (1) and a holder (2) answering WANTs of 256 KiB at most, as
    earlier versions do; control frames (WANT, MISSING) pass the data still on
    its way, as they do on a link, which moves 1 GB/s with no delay."""

    def __init__(self, tmp_path: Path) -> None:
        self.now = 0.0
        self.control: list = []                # (from, frame)
        self.bulk: list = []
        self.refusals = 0
        self.requester = Transfers(1, BlobStore(tmp_path / "r"), self._from(1),
                                   clock=lambda: self.now)
        self.holder = Transfers(2, BlobStore(tmp_path / "h"), self._from(2))
        self.holder.max_chunk = transfer.LEGACY_CHUNK

    def _from(self, sender: int):
        def send(msg) -> bool:
            (self.bulk if msg.kind == Kind.DATA else self.control).append((sender, msg))
            return True
        return send

    def blob(self, size: int) -> tuple[str, bytes]:
        data = os.urandom(size)
        sha = hashlib.sha256(data).hexdigest()
        self.holder.store.add_bytes(sha, data)
        return sha, data

    def fetch(self, sha: str, size: int, done: list) -> None:
        self.requester.fetch(sha, size, 2, lambda s, err: done.append(err))

    def run(self, sha: str, data: bytes, done: list) -> None:
        while (self.control or self.bulk) and not done:
            sender, msg = (self.control if self.control else self.bulk).pop(0)
            header, body = unpack(msg.payload)
            if sender == 1:                                 # a WANT
                self.holder.want(1, 2, header)
            elif msg.kind == Kind.MISSING:
                self.refusals += 1
                self.requester.on_missing(header)
            else:
                self.now += len(body) / 1e9
                self.requester.on_data(header, body)
        assert done == [None]
        assert self.requester.store.path(sha).read_bytes() == data


def test_a_holder_answering_256_kib_at_most_is_asked_for_that(tmp_path: Path) -> None:
    """A holder of an earlier version refuses a WANT over 256 KiB ("malformed
    request"). The requester asks again from the first refused chunk on, in
    chunks it answers: the file arrives whole, and the next fetch from that
    holder asks for no more from the start."""
    path = EarlierHolder(tmp_path)
    for size, refused in ((24 * 1024 * 1024, True), (8 * 1024 * 1024, False)):
        sha, data = path.blob(size)
        done: list = []
        path.fetch(sha, size, done)
        path.run(sha, data, done)
        assert (path.refusals >= 1) is refused      # it asked for more (once) and was refused
        path.refusals = 0


def test_several_refused_requests_are_each_asked_again_once(tmp_path: Path) -> None:
    """Requests over 256 KiB already in flight when the first refusal comes
    back are refused too: each is asked again once (not the fetch failed)."""
    path = EarlierHolder(tmp_path)
    sha, data = path.blob(8 * 1024 * 1024)
    done: list = []
    path.fetch(sha, len(data), done)
    fetch = path.requester.fetches[sha]
    fetch.chunk, fetch.window = 512 * 1024, fetch.in_flight + 3     # three large at once
    path.requester._request_more(fetch)
    path.run(sha, data, done)
    assert path.refusals == 3
