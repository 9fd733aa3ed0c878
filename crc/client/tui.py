"""How the chat client looks: event lines, the /who table, help, errors.

This module owns presentation only. Whatever came from other machines
(names, infos, chat and status texts) is shown through ``crc.visible``:
control characters appear as escapes and never reach the terminal raw. ``event_text`` turns a ``ChatClient``
event into one line (``[chat] alice(101): text`` and so on) and is shared by
both views:

* ``LineView`` writes plain lines, for scripts and pipes: events and command
  output to stdout, errors to stderr.
* ``TerminalView`` writes styled, timestamped lines while a keyboard thread sits
  in ``input()``: before each line it erases the half-typed prompt line and
  afterwards draws the prompt and the typed text again (via ``readline`` when
  it is available), so incoming chat never lands in the middle of what the
  user is typing.

Views are called from the event-loop thread; ``TerminalView`` also gets its
prompt set from the keyboard thread, and serialises output with a lock.
"""

from __future__ import annotations

import errno
import importlib
import io
import sys
import threading
import time
from types import ModuleType
from typing import Any, Callable, Iterable, Protocol

from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from ..protocol import StatusCode
from ..visible import visible
from .core import User

STATUS_STYLE = {StatusCode.WELCOME: "blue", StatusCode.UNKNOWN_ID: "red",
                StatusCode.DUPLICATE_ID: "bold red"}


def event_text(kind: str, data: dict[str, Any]) -> Text | None:
    """One line for a ``ChatClient`` event, or None for events not shown.
    Everything that came from the network is shown ``visible``."""
    if kind == "chat":
        return Text.assemble(("[chat] ", "cyan"), (visible(data["name"]), "bold cyan"), ": ",
                             visible(data["text"]))
    if kind == "status":
        style = STATUS_STYLE.get(data.get("code"), "")
        return Text.assemble(("[status] ", style or "blue"), (visible(data["text"]), style))
    if kind == "join":
        return Text.assemble(("[join] ", "green"),
                             (f"{visible(data['name'])}({data['id']})", "green"))
    if kind == "quit":
        line = Text.assemble(("[quit] ", "yellow"),
                             (f"{visible(data['name'])}({data['id']})", "yellow"))
        if data["text"]:
            line.append(": ").append(visible(data["text"]))
        return line
    if kind == "unreachable":
        return Text.assemble(("[waiting] ", "yellow"), f"{data['waiting']} chat(s) to ",
                             (visible(data["name"]), "bold"),
                             f": {visible(data['reason'])}; will keep trying")
    if kind == "undelivered":
        return Text.assemble(("[undelivered] ", "bold red"), (visible(data["name"]), "bold"),
                             ": ", visible(data["text"]),
                             (f" ({visible(data['reason'])})", "dim"))
    return None


def sent_text(target: str, text: str) -> Text:
    """The echo of a chat this client sent."""
    return Text.assemble(("[sent] ", "dim"), (visible(target), "bold"), ": ", visible(text))


def who_table(me: User, users: Iterable[User]) -> Table:
    """The known clients, this one first, then by name and id."""
    others = sorted(users, key=lambda u: (u.name, u.id))
    table = Table(title=f"{len(others)} other client(s) known")
    table.add_column("id", justify="right")
    table.add_column("name")
    table.add_column("info")
    table.add_row(str(me.id), Text.assemble(visible(me.name), (" (you)", "dim")),
                  visible(me.info))
    for user in others:
        table.add_row(str(user.id), Text(visible(user.name)), Text(visible(user.info)))
    return table


def help_table() -> Table:
    table = Table(title="Commands", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    from .commands import COMMANDS, PLAIN_LINES   # (the chat's: a batch run needs none)
    for info in [*PLAIN_LINES, *COMMANDS.values()]:
        table.add_row(info.usage, info.summary)
    return table


class View(Protocol):
    """What the session needs from a view."""

    def event(self, kind: str, data: dict[str, Any]) -> None: ...
    def show(self, renderable: RenderableType) -> None: ...
    def info(self, text: str) -> None: ...
    def error(self, text: str) -> None: ...


class ClosedStream(io.TextIOBase):
    """Where a standard stream that was closed before we started (``>&-``)
    would be: every write fails as writing to a closed descriptor does."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "the stream is closed")

    def isatty(self) -> bool:
        return False


class SafeConsole(Console):
    """A rich console whose broken pipe is an ``OSError`` for its owner to
    handle (rich's own answer is ``SystemExit`` from deep inside a print,
    which would leave without cancelling anything)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


class Guarded:
    """Writes that may fail (a closed or full standard output or error): the
    first failure is handed to ``on_closed`` once, and nothing more is written."""

    def __init__(self) -> None:
        self.on_closed: Callable[[OSError], None] | None = None
        self.closed = False

    def _guard(self, write: Callable[[], Any]) -> None:
        if self.closed:
            return
        try:
            write()
        except OSError as exc:
            self.closed = True
            if self.on_closed is not None:
                self.on_closed(exc)


class LineView(Guarded):
    """Plain lines, no prompt: scripts and pipes."""

    def __init__(self, out: Console | None = None, err: Console | None = None) -> None:
        super().__init__()
        self.out = out or plain_console(sys.stdout)
        self.err = err or plain_console(sys.stderr)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        text = event_text(kind, data)
        if text is not None:
            self._guard(lambda: self.out.print(text))

    def show(self, renderable: RenderableType) -> None:
        self._guard(lambda: self.out.print(renderable))

    def info(self, text: str) -> None:
        self._guard(lambda: self.err.print(Text(visible(text, newlines=True), style="dim")))

    def error(self, text: str) -> None:
        self._guard(lambda: self.err.print(Text.assemble(("error: ", "bold red"),
                                                         visible(text, newlines=True))))


def plain_console(stream: Any) -> Console:
    """A console that never wraps lines or reads markup, colourless unless on
    a terminal. A stream that is not there (closed before we started) is
    taken as one that discards everything."""
    if stream is None:
        stream = ClosedStream()
    terminal = None if stream.isatty() else False
    return SafeConsole(file=stream, force_terminal=terminal, highlight=False, soft_wrap=True,
                       markup=False, emoji=False)


def load_readline() -> ModuleType | None:
    """``readline`` gives ``input()`` line editing and lets us redraw what was typed.

    Imported only for a terminal: it is not in every Python build, and some
    versions write control codes to standard output when loaded.
    """
    try:
        return importlib.import_module("readline")
    except ImportError:
        return None


class TerminalView:
    """Styled lines printed above the prompt of an ``input()`` running in another thread."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False, markup=False, emoji=False)
        self._lock = threading.Lock()
        self._prompt = ""
        self._reading = False
        self._readline = load_readline()

    # -- keyboard thread ---------------------------------------------------------

    def read_line(self, prompt: str) -> str:
        """``input(prompt)``, marking the prompt as on screen while it waits."""
        with self._lock:
            self._prompt, self._reading = prompt, True
        try:
            return input(prompt)
        except EOFError:
            with self._lock:
                self.console.file.write("\n")  # end the prompt line, as Enter would
            raise
        finally:
            with self._lock:
                self._reading = False

    # -- loop thread ---------------------------------------------------------------

    def event(self, kind: str, data: dict[str, Any]) -> None:
        text = event_text(kind, data)
        if text is not None:
            self._print(text)

    def show(self, renderable: RenderableType) -> None:
        self._print(renderable)

    def info(self, text: str) -> None:
        self._print(Text(visible(text, newlines=True), style="dim"))

    def error(self, text: str) -> None:
        self._print(Text.assemble(("error: ", "bold red"), visible(text, newlines=True)))

    def close(self) -> None:
        """Leave the cursor on a clean line (a prompt may still be showing)."""
        with self._lock:
            if self._reading:
                self._erase_prompt()
                self._reading = False

    def _print(self, renderable: RenderableType) -> None:
        with self._lock:
            if self._reading:
                self._erase_prompt()
            if isinstance(renderable, Text):
                renderable = Text.assemble((time.strftime("%H:%M:%S "), "dim"), renderable)
            self.console.print(renderable)
            if self._reading:
                self._redraw_prompt()

    def _typed(self) -> str:
        return self._readline.get_line_buffer() if self._readline is not None else ""

    def _erase_prompt(self) -> None:
        """Clear the prompt line, and the rows above it if the typed text wrapped."""
        width = max(1, self.console.width)
        rows = cell_len(self._prompt + self._typed()) // width
        self.console.file.write("\r\x1b[2K" + "\x1b[1A\x1b[2K" * rows)

    def _redraw_prompt(self) -> None:
        self.console.file.write(self._prompt + self._typed())
        self.console.file.flush()
