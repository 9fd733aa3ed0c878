"""One TCP connection inside an ``EventLoop``: buffers, framing, teardown.

A ``Connection`` owns its socket, an incremental ``Decoder`` and two output
queues. ``send`` is the only way to write: bytes are queued and flushed at the
end of the loop pass; write interest is registered only while bytes remain
after a partial send, and dropped the moment the queue drains, so an idle
connection costs no CPU. Control traffic (``send``) always goes ahead of bulk
frames (``send_bulk``), which are released one frame at a time (a frame that
has started is finished before anything else), so a chat never waits behind
a large file on the same link.

Every failure — EOF, a reset, a protocol error, a send queue over its cap —
ends in ``close(reason)``: idempotent, it unregisters and closes the socket at
once and tells the owner via ``on_closed`` after the current pass.

The owner (server or client) implements ``ConnectionOwner``.

``crc.net.tls.TLSConnection`` is the same interface over TLS, handshaken
inside the same loop; ``crc.net.tls.new_connection`` builds whichever of the
two a link asks for. A plain connection never runs a line of the TLS code,
and this module never imports it.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
import sys
from time import monotonic as _monotonic
from typing import Any, Callable, Protocol

from ..protocol import ChatFrame, Decoder, Limits, Message, ProtocolError, encode
from .loop import EVENT_READ, EVENT_WRITE, EventLoop

log = logging.getLogger(__name__)

#: Bytes handed to one send(): large enough to fill a socket buffer, small
#: enough that a bulk frame never holds control traffic back for long.
SEND_SIZE = 256 * 1024
#: Unsent bulk bytes the kernel may hold for a connection (``TCP_NOTSENT_LOWAT``,
#: and the bulk written per wake-up): what a chat can find queued below us.
#: The rest of a file waits in user space, where a chat passes it. It follows
#: the link's speed, as the kernel measures it (``tcpi_delivery_rate``):
#: ``BULK_QUEUE_TIME`` of it, within these bounds: at least a few packets
#: (8 KiB, 1.3 ms on a 50 Mbit/s link; less costs a wake-up per packet or
#: two), at most what keeps the fastest path busy. A fixed megabyte would
#: hold a chat back for 160 ms on a 50 Mbit/s link.
BULK_UNSENT_MIN = 8 * 1024
BULK_UNSENT_MAX = 4 * 1024 * 1024
BULK_QUEUE_TIME = 0.002
#: How often (in bulk sends) the delivery rate is read again.
RATE_EVERY = 32
#: (Linux; the constant is missing from Python's socket module before 3.12.)
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


def tcp_keepalive(sock: socket.socket, idle: float, dead_after: float) -> None:
    """Let the kernel probe a quiet connection too (the only check a plain v1
    peer, which cannot answer pings, gets): dead after about ``dead_after``."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle_s = max(1, int(idle))
        interval = max(1, int((dead_after - idle) / 3) or 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except (OSError, AttributeError):
        pass                     # not TCP, or a platform without these options


class ConnectionOwner(Protocol):
    def on_messages(self, conn: "Connection", messages: list[Message]) -> None: ...
    def on_closed(self, conn: "Connection", reason: str) -> None: ...


class Connection:
    """A non-blocking, message-framed TCP connection."""

    #: TLS settings (``crc.net.tls.TLS``) of a ``TLSConnection``; None: plain TCP.
    tls: Any = None
    #: The peer's verified TLS certificate (``TLSConnection``); None: none.
    peer_cert: dict | None = None

    def __init__(self, loop: EventLoop, sock: socket.socket, owner: ConnectionOwner, *,
                 limits: Limits, label: str = "", max_send_buffer: int = 256 * 1024 * 1024,
                 connecting: bool = False) -> None:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (socketpair in tests)
        self.loop = loop
        self.sock = sock
        self.owner = owner
        self.decoder = Decoder(limits)
        self.label = label
        self.max_send_buffer = max_send_buffer
        self.fileno = sock.fileno()
        try:
            self.peer_address: Any = sock.getpeername()
        except OSError:
            self.peer_address = None
        self.closed = False
        self.close_reason = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_received = loop.time()     # for keepalives
        #: Free slot for the owner's per-link state (peer id, role, extensions...).
        self.peer: Any = None
        self._out = bytearray()
        self._bulk: collections.deque[list[memoryview]] = collections.deque()
        self._bulk_size = 0
        self._bulk_started = False     # the first bulk frame is partly sent
        self._unsent = BULK_UNSENT_MAX  # bulk bytes the kernel may hold (``_pace``)
        self._paced = 0                # bulk sends since the rate was read
        self._connecting = connecting
        self._close_after_flush = False
        self._reading = True
        self._events = EVENT_WRITE if connecting else EVENT_READ
        loop.register(sock, self._events, self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("connecting" if self._connecting else "open")
        polling = ("r" if self._events & EVENT_READ else "") + ("w" if self._events & EVENT_WRITE else "")
        return (f"<Connection {self.label or self.peer_address} fd={self.fileno} {state} "
                f"poll={polling or '-'} out={self.buffered}>")

    # -- output ---------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return len(self._out) + self._bulk_size

    def send(self, msg: Message) -> None:
        self.send_bytes(encode(msg))

    def send_bytes(self, data: bytes) -> None:
        if self.closed:
            return
        self._out += data
        self._queued()

    def send_bulk(self, *parts: bytes | bytearray | memoryview) -> None:
        """Queue one whole low-priority frame, given as the parts it is made of
        (sent, without joining them, when no control bytes wait)."""
        if self.closed:
            return
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        self._bulk.append(views)
        self._bulk_size += sum(len(v) for v in views)
        self._queued()

    def _queued(self) -> None:
        backlog = len(self._out) + self._bulk_size
        if backlog > self.max_send_buffer:
            log.warning("%r: send queue over %d bytes (peer not reading), dropping",
                        self, self.max_send_buffer)
            self.close("send queue overflow: peer is not reading")
            return
        if backlog > self.max_send_buffer // 2 and self._reading:
            # A peer that does not read what we send gets nothing more read
            # from it until it catches up (``flush`` resumes at a quarter).
            log.warning("%r: send queue over %d bytes; not reading from this peer until it "
                        "catches up", self, self.max_send_buffer // 2)
            self.pause_reading()
        self.loop.want_flush(self)

    def close_after_flush(self, reason: str) -> None:
        """Send what is queued, then close."""
        self._close_after_flush = True
        self.close_reason = reason
        if not self.buffered and not self._connecting:
            self.close(reason)
        else:
            self.loop.want_flush(self)

    def flush(self) -> None:
        if self.closed or self._connecting:
            return
        budget = self._unsent       # bulk bytes this pass: the kernel holds little
        try:
            while True:
                if self._out and not self._bulk_started:
                    out = self._out
                    n = self.sock.send(out if len(out) <= SEND_SIZE else memoryview(out)[:SEND_SIZE])
                    self.bytes_out += n
                    del self._out[:n]
                    if self._out:
                        break  # socket buffer full
                elif self._bulk and budget > 0:
                    # Bulk frames go out from their own buffers (one vectored
                    # send of their parts), not copied into ``_out``. Control
                    # bytes go first, but never into the middle of a frame: one
                    # that has started is finished first. At most ``budget``
                    # bytes per pass, the socket being writable again (below
                    # its NOTSENT_LOWAT) when the kernel can take more.
                    parts = self._bulk[0]
                    batch, room = [], budget
                    for part in parts:
                        batch.append(part if len(part) <= room else part[:room])
                        room -= len(batch[-1])
                        if room <= 0:
                            break
                    n = self.sock.sendmsg(batch) if len(batch) > 1 else self.sock.send(batch[0])
                    budget -= n
                    self._paced += 1
                    if self._paced >= RATE_EVERY:
                        self._pace()
                    self.bytes_out += n
                    self._bulk_size -= n
                    while parts and n >= len(parts[0]):
                        n -= len(parts.pop(0))
                    if not parts:
                        self._bulk.popleft()
                        self._bulk_started = False
                    else:
                        parts[0] = parts[0][n:]
                        self._bulk_started = True
                        break  # socket buffer full
                else:
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self.close(f"send failed: {exc.strerror or exc}")
            return
        if not self._reading and self.buffered <= self.max_send_buffer // 4:
            log.info("%r: caught up; reading again", self)
            self._reading = True
        events = self._read_bit()
        if self._out or self._bulk:
            events |= EVENT_WRITE
        elif self._close_after_flush:
            self.close(self.close_reason)
            return
        if events != self._events:
            self._set_events(events)

    def _pace(self) -> None:
        """Size the kernel's share of our bulk to the link: ``BULK_QUEUE_TIME``
        of its delivery rate (Linux's ``TCP_INFO``), set as ``TCP_NOTSENT_LOWAT``."""
        self._paced = 0
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
        except (OSError, AttributeError):
            return
        if len(info) < 168:
            return                        # a kernel without tcpi_delivery_rate
        rate = int.from_bytes(info[160:168], sys.byteorder)
        if rate <= 0:
            return
        unsent = int(min(BULK_UNSENT_MAX, max(BULK_UNSENT_MIN, rate * BULK_QUEUE_TIME)))
        if abs(unsent - self._unsent) * 4 < self._unsent:
            return                        # within a quarter: leave it
        self._unsent = unsent
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, unsent)
        except OSError:
            pass

    # -- input ------------------------------------------------------------------

    def pause_reading(self) -> None:
        self._reading = False
        self._set_events(self._events & ~EVENT_READ)

    def resume_reading(self) -> None:
        self._reading = True
        if not self.closed and not self._connecting:
            self._set_events(self._events | EVENT_READ)

    def _read_bit(self) -> int:
        return EVENT_READ if self._reading else 0

    def handle_event(self, mask: int) -> None:
        if self._connecting:
            self._finish_connect()
            return
        if mask & EVENT_READ:
            self._read()
        if mask & EVENT_WRITE and not self.closed:
            self.flush()

    def _finish_connect(self) -> None:
        if self._connect_failed():
            return
        self._established()

    def _connect_failed(self) -> bool:
        """Whether the non-blocking connect failed (the connection is then closed)."""
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.close(f"connect failed: {os.strerror(err)} ({errno.errorcode.get(err, err)})")
        return bool(err)

    def _established(self) -> None:
        """The link is up: read, send what was queued, tell the owner."""
        self._connecting = False
        try:
            self.peer_address = self.sock.getpeername()
        except OSError:
            pass
        self._set_events(self._read_bit() | (EVENT_WRITE if self.buffered else 0))
        on_connected = getattr(self.owner, "on_connected", None)
        if on_connected is not None:
            on_connected(self)
        self.loop.want_flush(self)

    def _read(self) -> None:
        if self.decoder.in_place:
            target = self.decoder.receive_buffer()
            if target is not None:
                # The rest of a large frame (or the next header) goes straight
                # where the decoder wants it.
                n = self._recv_into(target)
                messages = self.decoder.received(n) if n else None
                if messages:
                    self.owner.on_messages(self, messages)
                return
        buffer = self.loop.recv_buffer
        n = self._recv_into(buffer)
        if n:
            self.owner.on_data(self, buffer[:n].tobytes())

    def _recv_into(self, buffer: memoryview) -> int:
        """Bytes received into ``buffer``; 0 if none (nothing yet, or the
        connection ended: then it is closed, with the reason)."""
        try:
            n = self.sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self.close(f"receive failed: {exc.strerror or exc}")
            return 0
        if not n:
            self.close("connection closed by peer")
            return 0
        self.bytes_in += n
        self.last_received = _monotonic()
        return n

    def decode(self, data: bytes,
               relay: Callable[["Connection", list[ChatFrame]], None] | None = None) -> None:
        """Feed received bytes to the decoder and hand whole messages to the owner.

        With ``relay``, whole chats at the front of the stream go to it first,
        as wire frames (``Decoder.feed_relay``), and the rest to the owner.
        """
        try:
            if relay is None:
                chats, messages = None, self.decoder.feed(data)
            else:
                chats, messages = self.decoder.feed_relay(data)
        except ProtocolError as exc:
            log.warning("%r sent bad data: %s; disconnecting", self, exc)
            self.close(f"protocol error: {exc}")
            return
        if chats:
            relay(self, chats)
        if messages:
            self.owner.on_messages(self, messages)

    # -- teardown -----------------------------------------------------------------

    def _set_events(self, events: int) -> None:
        if events == self._events or self.closed:
            return
        # selectors cannot watch for nothing: a socket with no interest is
        # unregistered, and registered again when interest returns.
        if not events:
            self.loop.unregister(self.sock)
        elif not self._events:
            self.loop.register(self.sock, events, self)
        else:
            self.loop.modify(self.sock, events, self)
        self._events = events

    def abort(self, reason: str) -> None:
        self.close(reason)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.loop.unregister(self.sock)
        try:
            self.sock.close()
        except OSError:
            pass
        self._out.clear()
        self._bulk.clear()
        self._bulk_size = 0
        self.loop.call_soon(self.owner.on_closed, self, reason)
