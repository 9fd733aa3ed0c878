"""The receiver's side of reliable chat: in-order delivery, no duplicates.

Per ``(source, stream)`` the inbox knows the next sequence number it expects.
A message below it is a duplicate (acknowledged again, not delivered); the
expected one is delivered together with any later ones held back; one beyond
it is held (up to ``max_held`` per stream) until the gap is filled by a
resend. The acknowledgement returned is cumulative: everything up to it has
been delivered.

A stream the inbox has no record of starts at the frame's ``base``: the
sender says everything below it was acknowledged already, by us before we
lost our state (a restart without ``--state-dir``).

Memory is bounded: at most ``max_streams`` streams are remembered, the least
recently used forgotten first.

Pure bookkeeping, like the outbox: nothing is sent from here; the caller
sends the acknowledgement ``accept`` returns.
"""

from __future__ import annotations

from collections import OrderedDict


class Inbox:
    def __init__(self, max_streams: int = 100_000, max_held: int = 4096) -> None:
        self.max_streams = max_streams
        self.max_held = max_held
        self.expected: OrderedDict[tuple[int, int], int] = OrderedDict()
        self.held: dict[tuple[int, int], dict[int, str]] = {}
        self.duplicates = 0

    def accept(self, source: int, stream: int, seq: int, base: int,
               text: str) -> tuple[list[tuple[int, str]], int]:
        """``(deliver, ack)``: ``(seq, text)`` pairs to hand to the user now, in
        order, and the cumulative acknowledgement to send (0: none yet)."""
        key = (source, stream)
        nxt = self.expected.get(key)
        if nxt is None:
            nxt = base
            self._remember(key, nxt)
        else:
            self.expected.move_to_end(key)
            if base > nxt:
                # Acknowledged beyond what we delivered: only our own
                # earlier incarnation could have; skip ahead as told.
                nxt = base
                self.expected[key] = nxt
        if seq < nxt:
            self.duplicates += 1
            return [], nxt - 1
        if seq > nxt:
            held = self.held.setdefault(key, {})
            if seq not in held and len(held) < self.max_held:
                held[seq] = text
            return [], nxt - 1
        out = [(seq, text)]
        nxt += 1
        held = self.held.get(key)
        if held:
            while nxt in held:
                out.append((nxt, held.pop(nxt)))
                nxt += 1
            if not held:
                del self.held[key]
        self.expected[key] = nxt
        return out, nxt - 1

    def restore(self, source: int, stream: int, delivered: int) -> None:
        """From the journal: everything up to ``delivered`` was handed over."""
        key = (source, stream)
        if delivered + 1 > self.expected.get(key, 0):
            self._remember(key, delivered + 1)

    def _remember(self, key: tuple[int, int], nxt: int) -> None:
        self.expected[key] = nxt
        self.expected.move_to_end(key)
        while len(self.expected) > self.max_streams:
            old, _ = self.expected.popitem(last=False)
            self.held.pop(old, None)
