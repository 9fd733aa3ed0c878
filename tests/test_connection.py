"""Connection output: bulk frames sent from their own buffers, never split by
control bytes, and large payloads received in place."""

from __future__ import annotations

import os
import socket
import time

from crc.net import EventLoop
from crc.net.connection import Connection
from crc.protocol import ClientChat, Decoder, Extension, Limits, encode, encode_parts


class Collector:
    def __init__(self) -> None:
        self.messages: list = []
        self.closed: str | None = None

    def on_data(self, conn: Connection, data: bytes) -> None:
        conn.decode(data)

    def on_messages(self, conn: Connection, messages: list) -> None:
        self.messages += messages

    def on_closed(self, conn: Connection, reason: str) -> None:
        self.closed = reason


def pump(loop: EventLoop, done, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        loop.run_once(max_wait=0.05)


def test_control_bytes_queued_mid_frame_wait_for_the_frame_to_finish() -> None:
    loop = EventLoop()
    near, far = socket.socketpair()
    near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sender = Connection(loop, near, Collector(), limits=Limits())
    bulk = [Extension(21, 1, 2, 1, os.urandom(300_000)) for _ in range(2)]
    chat = ClientChat(1, 2, "overtakes bulk, but not mid-frame")
    for msg in bulk:
        sender.send_bulk(*encode_parts(msg))
    sender.flush()                      # the first frame is part-way out
    assert 0 < sender.bytes_out < len(encode(bulk[0]))
    sender.send(chat)
    decoder, got = Decoder(), []
    far.setblocking(False)
    deadline = time.monotonic() + 10
    while len(got) < 3:
        assert time.monotonic() < deadline, f"got only {got!r:.200}"
        loop.run_once(max_wait=0.01)
        try:
            got += decoder.feed(far.recv(1 << 20))
        except BlockingIOError:
            pass
    # The chat went ahead of the second bulk frame, after the first one whole.
    assert got == [bulk[0], chat, bulk[1]]
    sender.close("done")
    far.close()


def test_large_frames_arrive_whole_through_in_place_receives() -> None:
    loop = EventLoop()
    a, b = socket.socketpair()
    collector = Collector()
    sender = Connection(loop, a, Collector(), limits=Limits())
    receiver = Connection(loop, b, collector, limits=Limits())
    frames = [Extension(21, 1, 2, 1, os.urandom(n)) for n in (40_000, 262_144, 100, 262_144)]
    frames.insert(2, ClientChat(1, 2, "between chunks"))
    for msg in frames:
        if isinstance(msg, Extension):
            sender.send_bulk(*encode_parts(msg))
        else:
            sender.send(msg)
    pump(loop, lambda: len(collector.messages) == len(frames))
    # Control traffic overtakes queued bulk frames; the bulk frames keep their order.
    chat = frames.pop(2)
    assert collector.messages == [chat, *frames]
    assert receiver.bytes_in == sum(len(encode(m)) for m in [chat, *frames])
    sender.close("done")
    receiver.close("done")
