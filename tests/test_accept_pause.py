"""A listener whose ``accept`` runs out of descriptors does not spin the loop.

Out of descriptors (EMFILE), ``accept`` fails and the connection stays
queued: the listening socket stays readable, and a loop watching it would
call its handler on every pass, burning a CPU until a descriptor frees. The
server's own acceptor pauses; the shared ``accept_pending`` (the metrics
endpoint, meshcc's agent) now pauses too when it is given the loop and the
handler: the listener is not watched for ``ACCEPT_PAUSE`` seconds, then it is
again.
"""

from __future__ import annotations

import errno
import socket
import time

import pytest

from crc.net import loop as loop_module
from crc.net.loop import EVENT_READ, EventLoop, accept_pending


class OutOfDescriptors:
    """A listener that is always readable and whose ``accept`` fails with
    EMFILE until told otherwise; then hands out one real connection."""

    def __init__(self) -> None:
        self.readable, self.other = socket.socketpair()
        self.other.send(b"x")           # (readable for as long as it is not read)
        self.failing = True
        self.accepts = 0

    def fileno(self) -> int:
        return self.readable.fileno()

    def accept(self) -> tuple[socket.socket, object]:
        self.accepts += 1
        if self.failing:
            raise OSError(errno.EMFILE, "Too many open files")
        if self.other.fileno() < 0:
            raise BlockingIOError()
        given, self.other = self.other, socket.socket()
        self.other.close()
        return given, None

    def getsockname(self) -> str:
        return "test-listener"

    def close(self) -> None:
        self.readable.close()
        if self.other.fileno() >= 0:
            self.other.close()


class Handler:
    def __init__(self, loop: EventLoop, listener: OutOfDescriptors, paused: bool) -> None:
        self.loop, self.listener, self.paused = loop, listener, paused
        self.calls = 0
        self.accepted: list[socket.socket] = []

    def handle_event(self, mask: int) -> None:
        self.calls += 1
        if self.paused:
            self.accepted += list(accept_pending(self.listener, self.loop, self))
        else:
            self.accepted += list(accept_pending(self.listener))


@pytest.fixture
def setup():
    loop = EventLoop()
    listener = OutOfDescriptors()
    made = []

    def make(paused: bool) -> Handler:
        handler = Handler(loop, listener, paused)
        loop.register(listener, EVENT_READ, handler)
        made.append(handler)
        return handler
    yield loop, listener, make
    for handler in made:
        for conn in handler.accepted:
            conn.close()
    listener.close()
    loop.close()


def test_without_the_loop_the_listener_wakes_every_pass(setup) -> None:
    """What the pause prevents: the listener is ready on every pass."""
    loop, _, make = setup
    handler = make(paused=False)
    for _ in range(50):
        loop.run_once(0)
    assert handler.calls == 50


def test_out_of_descriptors_pauses_the_listener_then_watches_it_again(setup) -> None:
    loop, listener, make = setup
    handler = make(paused=True)
    for _ in range(50):
        loop.run_once(0)
    assert handler.calls == 1 and listener.accepts == 1       # paused after one try
    # A descriptor frees: once the pause is over the connection is taken.
    listener.failing = False
    deadline = time.monotonic() + 10
    while not handler.accepted and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert len(handler.accepted) == 1


def test_a_listener_closed_while_paused_is_not_watched_again(setup) -> None:
    loop, listener, make = setup
    handler = make(paused=True)
    loop.run_once(0)
    assert handler.calls == 1 and loop._timers      # paused, its resumption pending
    listener.readable.close()           # its owner closed it during the pause
    deadline = time.monotonic() + loop_module.ACCEPT_PAUSE + 10
    while loop._timers and time.monotonic() < deadline:   # (the resume timer runs)
        loop.run_once(0.05)
    assert not loop._timers
    assert handler.calls == 1
