"""The sender's side of reliable chat: streams, sequence numbers, resends.

One *stream* per destination. ``add`` numbers a message and keeps it until an
acknowledgement covers it (acknowledgements are cumulative). A stream with
unacknowledged messages has a deadline; when it passes, ``due`` hands back
every unacknowledged message of that stream, oldest first, to be sent again
(go-back-N: the receiver drops what it already has), and the stream's retry
interval doubles up to ``max_rto``. A stream whose oldest message has waited
``give_up`` seconds (0: never) is abandoned and its messages reported as
undeliverable, never silently dropped.

Pure bookkeeping: times are passed in, nothing is sent from here.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

_random = random.SystemRandom()


def new_stream_id() -> int:
    return _random.getrandbits(64) or 1


@dataclass
class Pending:
    stream: int
    dest: int
    seq: int
    text: str
    queued: float            # when the message was first added
    sends: int = 0


@dataclass
class Stream:
    id: int
    dest: int
    next_seq: int = 1
    unacked: deque[Pending] = field(default_factory=deque)
    rto: float = 0.0
    deadline: float | None = None
    unreachable: str = ""    # the last NACK's reason, until an ACK clears it
    unreachable_since: float = 0.0

    @property
    def base(self) -> int:
        """Lowest unacknowledged sequence number (``next_seq`` when none)."""
        return self.unacked[0].seq if self.unacked else self.next_seq


class OutboxFull(Exception):
    """More unacknowledged messages than ``max_pending``."""


class Outbox:
    def __init__(self, rto: float = 1.0, max_rto: float = 16.0, give_up: float = 600.0,
                 max_pending: int = 100_000) -> None:
        self.base_rto = rto
        self.max_rto = max_rto
        self.give_up = give_up
        self.max_pending = max_pending
        self.by_dest: dict[int, Stream] = {}
        self.by_id: dict[int, Stream] = {}
        self.pending = 0

    def __len__(self) -> int:
        return self.pending

    def stream_to(self, dest: int, stream_id: int | None = None) -> Stream:
        stream = self.by_dest.get(dest)
        if stream is None:
            stream = Stream(stream_id or new_stream_id(), dest, rto=self.base_rto)
            self.by_dest[dest] = stream
            self.by_id[stream.id] = stream
        return stream

    def add(self, dest: int, text: str, now: float) -> Pending:
        if self.pending >= self.max_pending:
            raise OutboxFull(f"{self.pending} messages are waiting for acknowledgement "
                             f"(at most {self.max_pending})")
        stream = self.stream_to(dest)
        msg = Pending(stream.id, dest, stream.next_seq, text, now)
        stream.next_seq += 1
        stream.unacked.append(msg)
        self.pending += 1
        if stream.deadline is None:
            stream.deadline = now + stream.rto
        return msg

    def restore(self, stream_id: int, dest: int, seq: int, text: str, now: float) -> None:
        """A message read back from the journal (``seq`` in order per stream)."""
        stream = self.by_id.get(stream_id)
        if stream is None:
            old = self.by_dest.get(dest)
            if old is not None:          # an abandoned stream's successor: keep the newest
                self._remove(old)
            stream = self.stream_to(dest, stream_id)
        if seq >= stream.next_seq:
            stream.unacked.append(Pending(stream_id, dest, seq, text, now))
            stream.next_seq = seq + 1
            self.pending += 1
            stream.deadline = now

    def acked(self, stream_id: int, seq: int, now: float) -> list[Pending]:
        """An acknowledgement of everything up to ``seq``: what it newly covers."""
        stream = self.by_id.get(stream_id)
        if stream is None:
            return []
        done = []
        while stream.unacked and stream.unacked[0].seq <= seq:
            done.append(stream.unacked.popleft())
        self.pending -= len(done)
        if done or stream.unreachable:
            stream.rto = self.base_rto
            stream.unreachable = ""
            stream.deadline = now + stream.rto if stream.unacked else None
        if seq >= stream.next_seq:           # acknowledged beyond what we sent: from a
            stream.next_seq = seq + 1        # journal that lost its tail; never reuse
        return done

    def nacked(self, stream_id: int, seq: int, reason: str, now: float) -> bool:
        """A server could not deliver ``seq`` (unknown destination): try again
        after the retry interval. True the first time a stream is refused."""
        stream = self.by_id.get(stream_id)
        if stream is None or not stream.unacked or seq < stream.base:
            return False
        first = not stream.unreachable
        if first:
            stream.unreachable_since = now
        stream.unreachable = reason or "not deliverable"
        stream.deadline = now + stream.rto
        return first

    def refused(self, stream_id: int, seq: int) -> Pending | None:
        """A server can never carry ``seq`` (it is too large for a link on the
        way): it leaves the stream, reported by the caller, and the messages
        behind it go on (the next frames' ``base`` tells the receiver to skip
        it). The refused message, or None if it is no longer waiting."""
        stream = self.by_id.get(stream_id)
        if stream is None:
            return None
        for i, msg in enumerate(stream.unacked):
            if msg.seq == seq:
                del stream.unacked[i]
                self.pending -= 1
                if not stream.unacked:
                    stream.deadline = None
                return msg
        return None

    def wake(self, dest: int, now: float) -> bool:
        """``dest`` has just (re)appeared: resend its stream now, retry interval
        back to the start. True if there is something to resend."""
        stream = self.by_dest.get(dest)
        if stream is None or not stream.unacked:
            return False
        stream.rto = self.base_rto
        stream.deadline = now
        return True

    def due(self, now: float) -> tuple[list[Pending], list[Pending]]:
        """``(resend, abandoned)``: messages to send again now, in order per
        stream, and messages of streams given up on."""
        resend: list[Pending] = []
        abandoned: list[Pending] = []
        for stream in list(self.by_dest.values()):
            if stream.deadline is None or stream.deadline > now:
                continue
            if not stream.unacked:
                stream.deadline = None
                continue
            if self.give_up and now - stream.unacked[0].queued >= self.give_up:
                abandoned.extend(stream.unacked)
                self._remove(stream)
                continue
            resend.extend(stream.unacked)
            stream.rto = min(stream.rto * 2, self.max_rto)
            stream.deadline = now + stream.rto
        return resend, abandoned

    def everything(self, now: float) -> list[Pending]:
        """Every unacknowledged message, in order per stream (after a reconnect);
        retry intervals start over."""
        out: list[Pending] = []
        for stream in self.by_dest.values():
            out.extend(stream.unacked)
            stream.rto = self.base_rto
            stream.deadline = now + stream.rto if stream.unacked else None
        return out

    def next_deadline(self) -> float | None:
        deadlines = [s.deadline for s in self.by_dest.values() if s.deadline is not None]
        return min(deadlines) if deadlines else None

    def abandon(self, stream_id: int) -> None:
        """Forget a stream and its unacknowledged messages (given up on)."""
        stream = self.by_id.get(stream_id)
        if stream is not None:
            self._remove(stream)

    def _remove(self, stream: Stream) -> None:
        self.pending -= len(stream.unacked)
        del self.by_dest[stream.dest]
        del self.by_id[stream.id]
