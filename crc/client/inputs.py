"""Where the chat client's command lines come from.

Three sources, each handing lines to ``on_line(text)`` and the end of input to
``on_eof()`` in the event-loop thread:

* ``Keyboard``: a daemon thread blocked in ``input()`` (the only thread the
  client starts). Each line crosses to the loop with ``call_soon_threadsafe``;
  the thread then waits until the loop has taken the line, so the next prompt
  shows the target that line may have chosen.
* ``PipeReader``: a non-terminal standard input (a pipe or socket), read in
  the loop itself whenever the selector says it is readable, so the network
  is served while a script is still arriving.
* ``feed_text``: a whole script read up front (``--script FILE``, or a
  standard input the selector cannot watch, such as a regular file).

A source only reads lines and hands them on: what a line means is for
``commands`` and ``session``, and no source touches the ``ChatClient``.
"""

from __future__ import annotations

import codecs
import os
import threading
from typing import Callable

from ..net import EventLoop
from ..net.loop import EVENT_READ

LineHandler = Callable[[str], None]
EofHandler = Callable[[], None]

#: How long the keyboard thread waits for the loop to take a line before prompting again.
HANDOFF_WAIT = 1.0


def split_lines(text: str) -> list[str]:
    """Lines of ``text`` split on ``\\n`` only (a Unicode line separator is chat text)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def feed_text(text: str, on_line: LineHandler, on_eof: EofHandler) -> None:
    for line in split_lines(text):
        on_line(line)
    on_eof()


class PipeReader:
    """Reads lines from a file descriptor inside the event loop."""

    def __init__(self, loop: EventLoop, fd: int, on_line: LineHandler,
                 on_eof: EofHandler) -> None:
        self.loop = loop
        self.fd = fd
        self.on_line = on_line
        self.on_eof = on_eof
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def start(self) -> bool:
        """Watch the descriptor; False if the selector cannot (a regular file, say)."""
        try:
            self.loop.register(self.fd, EVENT_READ, self)
        except (OSError, ValueError):
            return False
        return True

    def handle_event(self, mask: int) -> None:
        try:
            data = os.read(self.fd, 64 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # treat a broken input as its end
        if not data:
            self._finish()
            return
        lines = (self._partial + self._decoder.decode(data)).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.on_line(line)

    def _finish(self) -> None:
        self.loop.unregister(self.fd)
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        if rest:
            self.on_line(rest)
        self.on_eof()


class Keyboard:
    """A daemon thread reading lines with ``input()`` and handing them to the loop."""

    def __init__(self, loop: EventLoop, read_line: Callable[[str], str],
                 prompt: Callable[[], str], on_line: LineHandler, on_eof: EofHandler) -> None:
        self.loop = loop
        self.read_line = read_line
        self.prompt = prompt
        self.on_line = on_line
        self.on_eof = on_eof
        self.thread = threading.Thread(target=self._run, name="keyboard", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                line = self.read_line(self.prompt())
            except (EOFError, OSError, ValueError):  # end of input, or stdin closed under us
                self.loop.call_soon_threadsafe(self.on_eof)
                return
            taken = threading.Event()
            self.loop.call_soon_threadsafe(self._deliver, line, taken)
            taken.wait(HANDOFF_WAIT)

    def _deliver(self, line: str, taken: threading.Event) -> None:
        try:
            self.on_line(line)
        finally:
            taken.set()
