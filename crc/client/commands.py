"""The chat client's command language: one typed or scripted line to a value.

This module owns the syntax only. ``parse`` is a pure function: it never looks
at the network, the known users or the screen, so whoever executes a command
(``crc.client.session``) decides what a name means and what happens next.

A line is either a slash-command (``/msg bob hi``) or plain text for the
current target. Text is kept exactly as written — spaces, quotes, non-ASCII —
except for the line ending; ``//text`` sends ``/text`` literally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

#: Default deadline of ``/wait`` and ``/waitmsg``, in seconds.
DEFAULT_WAIT = 10.0


@dataclass(frozen=True)
class Say:
    """Plain text for the current target."""
    text: str


@dataclass(frozen=True)
class Msg:
    """Send ``text`` to ``target`` (a name or an id) and make it the current target.

    An empty ``text`` only changes the target.
    """
    target: str
    text: str = ""


@dataclass(frozen=True)
class Who:
    """Show the clients this client knows."""


@dataclass(frozen=True)
class Help:
    """Show the commands."""


@dataclass(frozen=True)
class Quit:
    """Leave the network with a goodbye text."""
    text: str = ""


@dataclass(frozen=True)
class Wait:
    """Pause until ``target``'s registration has been seen (error after ``seconds``)."""
    target: str
    seconds: float = DEFAULT_WAIT


@dataclass(frozen=True)
class WaitMsg:
    """Pause until a chat from ``target`` arrives (error after ``seconds``).

    Each arrived chat satisfies one ``/waitmsg``, so two in a row wait for two chats.
    """
    target: str
    seconds: float = DEFAULT_WAIT


@dataclass(frozen=True)
class Sleep:
    """Pause for ``seconds`` (the network is still served)."""
    seconds: float


@dataclass(frozen=True)
class Nothing:
    """A blank line, or a ``#`` comment in a script."""


@dataclass(frozen=True)
class Run:
    """Run ``command`` (a shell command line) on the mesh."""
    command: str
    on: str | None = None          # pinned server name
    stdin: bool = False            # forward the keyboard to the job's stdin


@dataclass(frozen=True)
class RunAll:
    """Run ``command`` on every server at once."""
    command: str


@dataclass(frozen=True)
class Jobs:
    """List this client's jobs."""


@dataclass(frozen=True)
class Cancel:
    """Cancel a job (or one server's run of a /runall job)."""
    job: str


@dataclass(frozen=True)
class Load:
    """Show every server's load and its age."""


@dataclass(frozen=True)
class TreeCmd:
    """Show the spanning tree of servers (``chat_client.py monitor``'s tree)."""


@dataclass(frozen=True)
class Rake:
    """Build a Rakefile."""
    path: str = "Rakefile"


@dataclass(frozen=True)
class Eof:
    """Close the standard input of the job that takes the keyboard (/run -i)."""


Command = (Say | Msg | Who | Help | Quit | Wait | WaitMsg | Sleep | Nothing
           | Run | RunAll | Jobs | Cancel | Load | TreeCmd | Rake | Eof)


class CommandError(ValueError):
    """A line that is not a valid command; the message says what is wrong."""


@dataclass(frozen=True)
class CommandInfo:
    usage: str
    summary: str


#: Every command, in the order ``/help`` lists them.
COMMANDS: dict[str, CommandInfo] = {
    "msg": CommandInfo("/msg NAME|ID [TEXT]",
                       "send TEXT to a user and make them the target of plain lines "
                       "(a name with blanks in double quotes: /msg \"alice smith\" hi)"),
    "who": CommandInfo("/who", "list the clients this client knows"),
    "wait": CommandInfo("/wait NAME|ID [SECONDS]",
                        f"pause until that user has joined (error after {DEFAULT_WAIT:g} s)"),
    "waitmsg": CommandInfo("/waitmsg NAME|ID [SECONDS]",
                           f"pause until a chat from that user arrives "
                           f"(error after {DEFAULT_WAIT:g} s)"),
    "sleep": CommandInfo("/sleep SECONDS", "pause, still receiving"),
    "run": CommandInfo("/run [--on NAME] [-i] CMD",
                       "run a shell command on the least-loaded server (or NAME); "
                       "-i: your lines go to its stdin until /eof"),
    "runall": CommandInfo("/runall CMD", "run a shell command on every server"),
    "jobs": CommandInfo("/jobs", "list your jobs"),
    "cancel": CommandInfo("/cancel ID|N", "cancel a job: its id, or its number N (as /jobs "
                                        "shows it)"),
    "load": CommandInfo("/load", "show every server's load"),
    "tree": CommandInfo("/tree", "show the spanning tree of servers"),
    "rake": CommandInfo("/rake [FILE]", "build a Rakefile (default: ./Rakefile)"),
    "eof": CommandInfo("/eof", "end the input of the job started with /run -i"),
    "quit": CommandInfo("/quit [TEXT]", "say goodbye and exit"),
    "help": CommandInfo("/help", "show this help"),
}

#: Lines that are not commands, for ``/help``.
PLAIN_LINES: list[CommandInfo] = [
    CommandInfo("TEXT", "send TEXT to the current target (set by /msg)"),
    CommandInfo("//TEXT", "send TEXT starting with '/'"),
    CommandInfo("# TEXT", "a comment (in a script only)"),
]


def strip_line_end(line: str) -> str:
    """Drop one trailing newline (``\\n`` or ``\\r\\n``) and nothing else."""
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def parse(line: str, *, script: bool = False) -> Command:
    """Parse one input line; ``CommandError`` if it is not valid.

    In a script (``script=True``) a line whose first non-blank character is
    ``#`` is a comment; interactively it is ordinary text.
    """
    line = strip_line_end(line)
    stripped = line.strip()
    if not stripped or (script and stripped.startswith("#")):
        return Nothing()
    if line.startswith("//"):
        return Say(line[1:])
    if not line.startswith("/"):
        return Say(line)
    word, rest = _split_word(line[1:])
    if not word:
        raise CommandError("a command name must follow '/' (type /help)")
    parser = _PARSERS.get(word.lower())
    if parser is None:
        raise CommandError(f"unknown command /{word} (type /help)")
    return parser(word.lower(), rest)


def _split_word(text: str) -> tuple[str, str]:
    """The first whitespace-separated word and everything after the whitespace that follows it."""
    text = text.lstrip()
    for i, char in enumerate(text):
        if char.isspace():
            return text[:i], text[i:].lstrip()
    return text, ""


def _usage_error(name: str, problem: str) -> CommandError:
    return CommandError(f"{problem}; usage: {COMMANDS[name].usage}")


def _no_arguments(name: str, rest: str) -> None:
    if rest.strip():
        raise _usage_error(name, f"/{name} takes no arguments")


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _usage_error(name, f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise _usage_error(name, f"{text!r} is not a number of seconds (0 or more)")
    return value


def _split_target(name: str, text: str) -> tuple[str, str]:
    """A user name or id and the rest: a name with blanks is written in double
    quotes (``"alice smith"``; ``\\"`` and ``\\\\`` inside stand for ``"``
    and a backslash)."""
    text = text.lstrip()
    if not text.startswith('"'):
        return _split_word(text)
    chars, i = [], 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
            chars.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            rest = text[i + 1:]
            if rest and not rest[0].isspace():
                raise _usage_error(name, "a quoted name must be followed by a blank")
            return "".join(chars), rest.lstrip()
        chars.append(char)
        i += 1
    raise _usage_error(name, "a quoted name has no closing '\"'")


def _parse_msg(name: str, rest: str) -> Command:
    target, text = _split_target(name, rest)
    if not target:
        raise _usage_error(name, "/msg needs a user name or id")
    return Msg(target, text)


def _parse_target_wait(name: str, rest: str) -> tuple[str, float]:
    target, tail = _split_target(name, rest)
    if not target:
        raise _usage_error(name, f"/{name} needs a user name or id")
    seconds_text, extra = _split_word(tail)
    if extra:
        raise _usage_error(name, f"unexpected {extra!r}")
    return target, _seconds(name, seconds_text) if seconds_text else DEFAULT_WAIT


def _parse_wait(name: str, rest: str) -> Command:
    return Wait(*_parse_target_wait(name, rest))


def _parse_waitmsg(name: str, rest: str) -> Command:
    return WaitMsg(*_parse_target_wait(name, rest))


def _parse_sleep(name: str, rest: str) -> Command:
    seconds_text, extra = _split_word(rest)
    if not seconds_text:
        raise _usage_error(name, "/sleep needs a number of seconds")
    if extra:
        raise _usage_error(name, f"unexpected {extra!r}")
    return Sleep(_seconds(name, seconds_text))


def _parse_quit(name: str, rest: str) -> Command:
    return Quit(rest)


def _parse_who(name: str, rest: str) -> Command:
    _no_arguments(name, rest)
    return Who()


def _parse_help(name: str, rest: str) -> Command:
    _no_arguments(name, rest)
    return Help()


def _parse_run(name: str, rest: str) -> Command:
    on, stdin = None, False
    while True:
        word, tail = _split_word(rest)
        if word == "--on":
            on, rest = _split_word(tail)
            if not on:
                raise _usage_error(name, "--on needs a server name")
        elif word == "-i":
            stdin, rest = True, tail
        else:
            break
    if not rest.strip():
        raise _usage_error(name, "/run needs a command")
    return Run(rest.strip(), on, stdin)


def _parse_runall(name: str, rest: str) -> Command:
    if not rest.strip():
        raise _usage_error(name, "/runall needs a command")
    return RunAll(rest.strip())


def _parse_cancel(name: str, rest: str) -> Command:
    job, extra = _split_word(rest)
    if not job or extra:
        raise _usage_error(name, "/cancel needs exactly one job id")
    return Cancel(job)


def _parse_rake(name: str, rest: str) -> Command:
    path, extra = _split_word(rest)
    if extra:
        raise _usage_error(name, f"unexpected {extra!r}")
    return Rake(path or "Rakefile")


def _simple(command: Command) -> Callable[[str, str], Command]:
    def parse_simple(name: str, rest: str) -> Command:
        _no_arguments(name, rest)
        return command
    return parse_simple


_PARSERS = {
    "msg": _parse_msg,
    "who": _parse_who,
    "wait": _parse_wait,
    "waitmsg": _parse_waitmsg,
    "sleep": _parse_sleep,
    "quit": _parse_quit,
    "help": _parse_help,
    "run": _parse_run,
    "runall": _parse_runall,
    "jobs": _simple(Jobs()),
    "cancel": _parse_cancel,
    "load": _simple(Load()),
    "tree": _simple(TreeCmd()),
    "rake": _parse_rake,
    "eof": _simple(Eof()),
}
