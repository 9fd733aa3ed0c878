"""A small single-threaded event loop on the standard ``selectors`` module.

It owns one selector, a timer heap, a queue of callbacks to run after the
current pass, and the set of connections with output waiting to be flushed.
One pass: wait for I/O (until the next timer at most), dispatch every ready
handler, run due timers, run queued callbacks, then flush every connection
written to during the pass — so many messages produced by one ``recv`` leave
in one ``send``.

Nothing here is process-global: any number of loops may run in one process,
each in its own thread. The only thread-safe entry points are
``call_soon_threadsafe`` and ``stop``; everything else belongs to the thread
running ``run``.

A handler is any object with ``handle_event(mask)`` registered through
``register``. An exception escaping a handler is logged and, if the handler
has ``abort(reason)``, passed to it: a bug in one connection never stops the
loop for everyone else. ``accept_pending`` is the accept loop of a listening
handler (the metrics endpoint, meshcc's agent); out of descriptors, it stops
watching the listener for a moment rather than wake the loop in a spin.
"""

from __future__ import annotations

import collections
import errno
import heapq
import itertools
import logging
import math
import selectors
import socket
import time
from typing import Any, Callable, Iterator, Protocol

log = logging.getLogger(__name__)

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE


class Handler(Protocol):
    def handle_event(self, mask: int) -> None: ...


class Flushable(Protocol):
    def flush(self) -> None: ...


class Timer:
    """A scheduled call; ``cancel()`` makes it a no-op."""

    __slots__ = ("when", "seq", "callback", "args", "cancelled")

    def __init__(self, when: float, seq: int, callback: Callable[..., Any], args: tuple) -> None:
        self.when, self.seq, self.callback, self.args = when, seq, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: "Timer") -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def __repr__(self) -> str:
        name = getattr(self.callback, "__qualname__", repr(self.callback))
        state = "cancelled" if self.cancelled else f"at {self.when:.3f}"
        return f"<Timer {name} {state}>"


class _Waker:
    """The read end of a socketpair: lets another thread interrupt select()."""

    def __init__(self) -> None:
        self.rsock, self.wsock = socket.socketpair()
        self.rsock.setblocking(False)
        self.wsock.setblocking(False)

    def handle_event(self, mask: int) -> None:
        try:
            while self.rsock.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def wake(self) -> None:
        try:
            self.wsock.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # a wake-up is already pending
        except OSError:
            pass  # loop already closed

    def close(self) -> None:
        self.rsock.close()
        self.wsock.close()


#: Size of the loop's shared receive buffer: the most one ``recv`` takes.
RECV_SIZE = 256 * 1024


class EventLoop:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        #: Scratch space for ``recv_into``, shared by every handler of this loop:
        #: handlers run one at a time and copy out what they received before
        #: returning. (``recv(n)`` would allocate, and for large ``n`` map and
        #: unmap, an ``n``-byte buffer on every call.)
        self.recv_buffer = memoryview(bytearray(RECV_SIZE))
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._ready: collections.deque[tuple[Callable[..., Any], tuple]] = collections.deque()
        self._dirty: dict[Flushable, None] = {}  # insertion-ordered set
        self._stopping = False
        self._closed = False
        self._waker = _Waker()
        self.selector.register(self._waker.rsock, EVENT_READ, self._waker)

    def __repr__(self) -> str:
        return (f"<EventLoop fds={len(self.selector.get_map())} timers={len(self._timers)} "
                f"{'stopping' if self._stopping else 'running'}>")

    # -- registration ---------------------------------------------------------

    def register(self, fileobj: Any, events: int, handler: Handler) -> None:
        self.selector.register(fileobj, events, handler)

    def modify(self, fileobj: Any, events: int, handler: Handler) -> None:
        self.selector.modify(fileobj, events, handler)

    def unregister(self, fileobj: Any) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    # -- scheduling -------------------------------------------------------------

    @staticmethod
    def time() -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(time.monotonic() + max(0.0, delay), next(self._seq), callback, args)
        heapq.heappush(self._timers, timer)
        return timer

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback`` after the current pass (same thread only)."""
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """Queue ``callback`` from any thread and wake the loop."""
        self._ready.append((callback, args))  # deque.append is atomic
        self._waker.wake()

    def want_flush(self, conn: Flushable) -> None:
        """Ask for ``conn.flush()`` at the end of this pass."""
        self._dirty[conn] = None

    # -- running ----------------------------------------------------------------

    def stop(self) -> None:
        """Make ``run`` return after the current pass; safe from any thread."""
        self._stopping = True
        self._waker.wake()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def run(self) -> None:
        """Run passes until ``stop`` (a loop is run once; a stop before ``run`` holds)."""
        while not self._stopping:
            self.run_once()

    def run_once(self, max_wait: float | None = None) -> None:
        timeout = self._timeout(max_wait)
        for key, mask in self.selector.select(timeout):
            handler = key.data
            try:
                handler.handle_event(mask)
            except Exception as exc:  # a bug in one handler must not stop the loop
                log.exception("handler %r failed", handler)
                abort = getattr(handler, "abort", None)
                if abort is not None:
                    abort(f"internal error: {exc!r}")
        if self._timers:
            self._run_timers()
        if self._ready:
            self._run_ready()
        if self._dirty:
            self._flush()

    def _timeout(self, max_wait: float | None) -> float | None:
        if self._ready or self._dirty or self._stopping:
            return 0
        timeout = max_wait
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        if self._timers:
            until = max(0.0, self._timers[0].when - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        return timeout

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].when <= now:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._call(timer.callback, timer.args)

    def _run_ready(self) -> None:
        for _ in range(len(self._ready)):
            callback, args = self._ready.popleft()
            self._call(callback, args)

    def _flush(self) -> None:
        while self._dirty:
            dirty, self._dirty = self._dirty, {}
            for conn in dirty:
                try:
                    conn.flush()
                except Exception as exc:
                    log.exception("flush of %r failed", conn)
                    abort = getattr(conn, "abort", None)
                    if abort is not None:
                        abort(f"internal error: {exc!r}")

    @staticmethod
    def _call(callback: Callable[..., Any], args: tuple) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("callback %r failed", callback)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.selector.close()
        self._waker.close()


#: Seconds a listener is not watched after ``accept`` ran out of descriptors.
ACCEPT_PAUSE = 0.25
#: When each listener's pause was last logged (at most one line a second each).
_pause_logged: dict[int, float] = {}


def accept_pending(listener: socket.socket, loop: "EventLoop | None" = None,
                   handler: Handler | None = None) -> Iterator[socket.socket]:
    """Every connection waiting on a non-blocking ``listener``, accepted; ends
    when none is left, or when this process is out of descriptors. One
    aborted by its peer before it was taken is skipped.

    Out of descriptors, the connection stays queued and the listener stays
    readable: watched by ``loop`` (for ``handler``), it would wake the loop
    at once, again and again. Given them, the listener is not watched for
    ``ACCEPT_PAUSE`` seconds (``pause_listener``) — as the server's own
    acceptor does — and the connections in hand go on."""
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno == errno.ECONNABORTED:
                continue
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                if loop is not None and handler is not None:
                    _say_paused(loop, listener, exc)
                    pause_listener(loop, listener, handler)
                return
            raise
        yield conn


def pause_listener(loop: "EventLoop", listener: socket.socket, handler: Handler,
                   seconds: float = ACCEPT_PAUSE) -> Timer | None:
    """Stop watching ``listener`` for ``seconds``, then watch it again for
    ``handler`` (unless it was closed meanwhile); the caller says why. The
    timer that resumes it (None if it was not being watched: an owner that
    stops watching it for good without closing it cancels that)."""
    try:
        loop.selector.get_key(listener)
    except (KeyError, ValueError):
        return None                     # (paused already, or closed)
    loop.unregister(listener)

    def resume() -> None:
        if listener.fileno() < 0:
            return                      # closed while paused
        try:
            loop.register(listener, EVENT_READ, handler)
        except (KeyError, ValueError, OSError):
            pass                        # (registered again by its owner, or gone)

    return loop.call_later(seconds, resume)


def _say_paused(loop: "EventLoop", listener: socket.socket, exc: OSError) -> None:
    """Why a listener is paused, at most once a second for each."""
    now, where = loop.time(), listener.fileno()
    if now - _pause_logged.get(where, -math.inf) >= 1.0:
        _pause_logged[where] = now
        log.warning("accept on %s failed: %s; not accepting for %.2f s (out of file "
                    "descriptors: raise the limit, ulimit -n)", _name_of(listener),
                    exc.strerror or exc, ACCEPT_PAUSE)


def _name_of(listener: socket.socket) -> str:
    try:
        name = listener.getsockname()
    except OSError:
        return "a listener"
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)
