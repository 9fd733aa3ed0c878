"""Reliable chat state on disk (``--state-dir``): who we are, what is in flight.

Two files in the state directory (created with mode 0700):

* ``identity.json`` - the client's id and name, so a restarted client comes
  back as the same sender and receiver;
* ``journal`` - one JSON array per line, appended as things happen:

      ["send", stream, dest, seq, text]   a message entered the outbox
      ["ack", stream, seq]                acknowledged up to seq
      ["drop", stream]                    the stream was given up
      ["refuse", stream, seq]             that message can never be carried
      ["recv", source, stream, seq]       delivered to the user up to seq

Each line is written and flushed to the operating system before the event
takes effect (before a message is sent, before a received one is shown), so
a client killed at any point - even with SIGKILL - loses nothing and, on
restart, shows nothing twice. Lines are not fsync'ed: a power cut can lose
the last moments (documented in docs/security.md). On open, the journal is
replayed and rewritten compactly; a torn last line (a kill mid-write) is
ignored, anything else malformed is a ``JournalError`` naming file and line.

The journal records what it is told and decides nothing: no sockets, no
loop, no clock (times are passed in).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..protocol import MAX_ID
from .inbox import Inbox
from .outbox import Outbox, Pending


class JournalError(Exception):
    """The state directory cannot be used; the message says where and why."""


class Journal:
    COMPACT_AFTER = 50_000          # lines appended since the last rewrite

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise JournalError(f"cannot use state directory {self.dir}: {exc.strerror}") from None
        self.path = self.dir / "journal"
        self.file: Any = None
        self.appended = 0

    # -- identity ---------------------------------------------------------------------

    def identity(self) -> dict[str, Any] | None:
        path = self.dir / "identity.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise JournalError(f"{path}: unreadable: {exc}") from None
        if not isinstance(data, dict) or not _whole(data.get("id"), 1, MAX_ID) \
                or not isinstance(data.get("name"), str):
            raise JournalError(f"{path}: expected {{\"id\": a number from 1 to {MAX_ID}, "
                               f"\"name\": text}}")
        return data

    def save_identity(self, client_id: int, name: str) -> None:
        tmp = self.dir / "identity.json.tmp"
        try:
            tmp.write_text(json.dumps({"id": client_id, "name": name}) + "\n")
            os.replace(tmp, self.dir / "identity.json")
        except OSError as exc:
            raise JournalError(f"cannot write state directory {self.dir}: "
                               f"{exc.strerror or exc}") from None

    # -- replay -----------------------------------------------------------------------

    def load(self, outbox: Outbox, inbox: Inbox, now: float) -> None:
        """Replay the journal into ``outbox`` and ``inbox``, then rewrite it compactly."""
        try:
            lines = self.path.read_text(encoding="utf-8").split("\n")
        except FileNotFoundError:
            lines = []
        except (OSError, UnicodeDecodeError) as exc:
            raise JournalError(f"{self.path}: unreadable: {exc}") from None
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                self._apply(json.loads(line), outbox, inbox, now)
            except (ValueError, TypeError, IndexError, KeyError, OverflowError,
                    RecursionError) as exc:
                if number == last:
                    break                # torn by a kill mid-write: never took effect
                raise JournalError(f"{self.path}:{number + 1}: malformed entry: "
                                   f"{type(exc).__name__}: {exc}") from None
        try:
            self.compact(outbox, inbox)
        except OSError as exc:
            raise JournalError(f"cannot write state directory {self.dir}: "
                               f"{exc.strerror or exc}") from None

    @staticmethod
    def _apply(entry: list, outbox: Outbox, inbox: Inbox, now: float) -> None:
        if not isinstance(entry, list) or not entry:
            raise ValueError("expected a JSON list like [\"send\", ...]")
        kind = entry[0]
        if kind == "send":
            _, stream, dest, seq, text = entry
            if not isinstance(text, str):
                raise ValueError("the text is not a string")
            outbox.restore(_stream(stream), _id(dest), _seq(seq), text, now)
        elif kind == "ack":
            outbox.acked(_stream(entry[1]), _seq(entry[2]), now)
        elif kind == "drop":
            outbox.abandon(_stream(entry[1]))
        elif kind == "refuse":
            outbox.refused(_stream(entry[1]), _seq(entry[2]))
        elif kind == "recv":
            inbox.restore(_id(entry[1]), _stream(entry[2]), _seq(entry[3]))
        else:
            raise ValueError(f"unknown entry {kind!r}")

    def compact(self, outbox: Outbox, inbox: Inbox) -> None:
        """Rewrite the journal as just the live state, atomically."""
        tmp = self.dir / "journal.tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            for stream in outbox.by_dest.values():
                for msg in stream.unacked:
                    out.write(_line(["send", msg.stream, msg.dest, msg.seq, msg.text]))
            for (source, stream_id), nxt in inbox.expected.items():
                if nxt > 1:
                    out.write(_line(["recv", source, stream_id, nxt - 1]))
        os.replace(tmp, self.path)
        if self.file is not None:
            self.file.close()
        self.file = open(self.path, "a", encoding="utf-8")
        self.appended = 0

    # -- appending --------------------------------------------------------------------

    def _append(self, entry: list) -> None:
        self.file.write(_line(entry))
        self.file.flush()
        self.appended += 1

    def sent(self, msg: Pending) -> None:
        self._append(["send", msg.stream, msg.dest, msg.seq, msg.text])

    def acked(self, stream: int, seq: int) -> None:
        self._append(["ack", stream, seq])

    def dropped(self, stream: int) -> None:
        self._append(["drop", stream])

    def refused(self, stream: int, seq: int) -> None:
        self._append(["refuse", stream, seq])

    def delivered(self, source: int, stream: int, seq: int) -> None:
        self._append(["recv", source, stream, seq])

    def due_for_compaction(self) -> bool:
        return self.appended >= self.COMPACT_AFTER

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _checked(value: object, low: int, high: int, what: str) -> int:
    if not _whole(value, low, high):
        raise ValueError(f"{what} {value!r} is not a whole number from {low} to {high}")
    return value  # type: ignore[return-value]


def _id(value: object) -> int:
    return _checked(value, 1, MAX_ID, "id")


def _stream(value: object) -> int:
    return _checked(value, 1, (1 << 64) - 1, "stream")


def _seq(value: object) -> int:
    return _checked(value, 1, (1 << 64) - 1, "sequence number")


def _line(entry: list) -> str:
    return json.dumps(entry, separators=(",", ":")) + "\n"
