"""Rakefile parsing and checking (format: shared/rakefile.md). Pure: no I/O but
reading the files it is asked to check.

``parse(text, path)`` returns a ``Rakefile`` or raises ``RakefileError``
carrying *every* problem found, each as ``FILE:LINE: reason``, so a user fixes
them all in one go and nothing runs before the file is known to be sound.

Indentation: an action is indented one level, its ``requires`` line two. A
level is a tab; spaces are tolerated: the first action line of the file fixes
what one level looks like, and a line indented deeper than its action is a
``requires`` line.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..options import OptionError, host_port
from .files import bad_relative_path

DEFAULT_PORT = 31101
#: The longest command line an action may have (a shell's own limit is near).
MAX_COMMAND = 128 * 1024
REMOTE_PREFIX = "remote-"
_NAME = re.compile(r"^([A-Za-z0-9_.\-]+)\s*:\s*$")
_SETTING = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


@dataclass(frozen=True)
class Action:
    command: str              # what runs (``remote-`` removed), via /bin/sh -c
    remote: bool
    line: int
    requires: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return ("remote-" if self.remote else "") + self.command


@dataclass(frozen=True)
class ActionSet:
    name: str
    line: int
    actions: tuple[Action, ...]


@dataclass(frozen=True)
class Rakefile:
    path: str
    port: int = DEFAULT_PORT
    hosts: tuple[tuple[str, int], ...] = ()
    actionsets: tuple[ActionSet, ...] = ()


class RakefileError(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _indent(raw: str) -> tuple[int, str]:
    stripped = raw.lstrip(" \t")
    prefix = raw[: len(raw) - len(stripped)]
    return len(prefix.expandtabs(8)), stripped


@dataclass
class _Open:
    name: str
    line: int
    actions: list[Action] = field(default_factory=list)


def parse(text: str, path: str = "Rakefile") -> Rakefile:
    errors: list[str] = []
    port, hosts_text, hosts_line = DEFAULT_PORT, "", 0
    sets: list[_Open] = []
    names: set[str] = set()
    current: _Open | None = None
    last_action_indent = 0
    level, level_line = 0, 0           # the first action's indentation fixes one level
    after_action = False               # the line before was an action (or its requires)

    def err(line: int, reason: str) -> None:
        errors.append(f"{path}:{line}: {reason}")

    if text.startswith("\ufeff"):
        text = text[1:]                       # a byte-order mark from an editor
    # Lines end at "\n" only: a form feed or U+2028 inside a line is text, and
    # line numbers are what an editor shows.
    for number, raw in enumerate(text.split("\n"), start=1):
        width, body = _indent(raw.rstrip("\r"))
        body = body.rstrip()
        if not body or body.startswith("#"):
            continue
        if width == 0:
            after_action = False
            name = _NAME.match(body)
            setting = _SETTING.match(body)
            if name:
                if name.group(1) in names:
                    err(number, f"actionset {name.group(1)!r} is defined twice")
                names.add(name.group(1))
                current = _Open(name.group(1), number)
                sets.append(current)
            elif setting:
                key, value = setting.group(1), setting.group(2).strip()
                if key == "PORT":
                    if not (value.isascii() and value.isdigit()) or not 0 < int(value) < 65536:
                        err(number, f"PORT must be a number from 1 to 65535, not {value!r}")
                    else:
                        port = int(value)
                elif key == "HOSTS":
                    hosts_text, hosts_line = value, number
                else:
                    err(number, f"unknown setting {key!r} (known: PORT, HOSTS)")
            else:
                err(number, f"expected 'NAME:' to open an actionset or 'KEY = value', got {body!r}")
            continue
        is_requires = current is not None and current.actions and width > last_action_indent
        if is_requires:
            word, _, rest = body.partition(" ")
            if word != "requires":
                err(number, f"line indented under an action must start with 'requires', got {body!r}")
                continue
            files = rest.split()
            if not files:
                err(number, "'requires' lists no files")
            seen: set[str] = set()
            for name in files:
                why = bad_relative_path(name)
                if why:
                    err(number, why)
                if os.path.normpath(name) in seen:
                    err(number, f"required file {name!r} is listed twice")
                seen.add(os.path.normpath(name))
            last = current.actions[-1]
            if last.requires:
                err(number, f"second 'requires' line for the action on line {last.line}")
            current.actions[-1] = Action(last.command, last.remote, last.line,
                                         last.requires + tuple(files))
            continue
        if body.startswith("requires") and (body == "requires" or body[8] in " \t"):
            if after_action and current is not None and current.actions:
                err(number, f"'requires' must be indented deeper than its action (line "
                            f"{current.actions[-1].line}): two levels, like two tabs")
            else:
                err(number, "'requires' with no action above it")
            continue
        if current is None:
            err(number, f"action outside an actionset: {body!r}")
            continue
        if not level:
            level, level_line = width, number
        elif width != level:
            err(number, f"action indented {width} column(s), but this file's actions are "
                        f"indented {level} (line {level_line}): one level, a tab or the same "
                        f"spaces, for every action")
            continue
        remote = body.startswith(REMOTE_PREFIX)
        command = body[len(REMOTE_PREFIX):].strip() if remote else body
        if not command:
            err(number, "'remote-' with no command")
            continue
        if "\0" in command:
            err(number, "the command contains a NUL byte")
            continue
        if len(command) > MAX_COMMAND:
            err(number, f"the command is {len(command)} characters long; at most {MAX_COMMAND}")
            continue
        try:
            shlex.split(command)
        except ValueError as exc:
            err(number, f"cannot parse command {command!r}: {exc}")
            continue
        current.actions.append(Action(command, remote, number))
        last_action_indent = width
        after_action = True

    hosts: list[tuple[str, int]] = []
    for item in hosts_text.replace(",", " ").split():
        bare = item.startswith("[") and item.endswith("]") or (":" not in item)
        try:
            hosts.append(host_port(f"{item}:{port}") if bare else host_port(item))
        except OptionError as exc:
            err(hosts_line, f"bad host {item!r}: {exc} (expected HOST, HOST:PORT or "
                            f"[IPV6]:PORT)")
    for s in sets:
        if not s.actions:
            err(s.line, f"actionset {s.name!r} has no actions")
    if not sets and not errors:
        err(1, "no actionsets: nothing to build")
    if errors:
        raise RakefileError(errors)
    return Rakefile(path, port, tuple(hosts),
                    tuple(ActionSet(s.name, s.line, tuple(s.actions)) for s in sets))


def read(path: Path) -> str:
    """A Rakefile's text; ``RakefileError`` (one line, naming the file) when it
    cannot be read: missing, a directory, unreadable, not UTF-8."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise RakefileError([f"{path}: is a directory; name the Rakefile in it "
                             f"({path / 'Rakefile'})"]) from None
    except FileNotFoundError:
        raise RakefileError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise RakefileError([f"{path}: cannot read it: {exc.strerror or exc}"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise RakefileError([f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x}); "
                             f"save the Rakefile as UTF-8"]) from None


_OUTPUT_FLAG = re.compile(r"^-o(.+)$")


def likely_outputs(action: Action) -> set[str]:
    """Files an action will probably create: ``-o F``, ``> F`` and the ``.o``
    of each ``-c X.c`` — enough to tell a typo from a file made by an earlier
    actionset when checking ``requires`` before the build starts."""
    try:
        words = shlex.split(action.command)
    except ValueError:
        return set()
    out: set[str] = set()
    compile_only = "-c" in words
    for i, w in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w in ("-o", ">", ">>") and nxt:
            out.add(nxt)
        elif (m := _OUTPUT_FLAG.match(w)):
            out.add(m.group(1))
        elif w.startswith(">") and len(w) > 1:
            out.add(w.lstrip(">"))
        elif compile_only and re.search(r"\.(c|cc|cpp|cxx|s|S)$", w):
            out.add(os.path.basename(re.sub(r"\.[^.]+$", ".o", w)))
    return out


def check_files(rakefile: Rakefile, base: Path) -> None:
    """Raise ``RakefileError`` for required files that neither exist under
    ``base`` nor look like the output of an action in an earlier actionset."""
    errors = []
    produced: set[str] = set()
    kinds: dict[str, int] = {}        # name -> its stat mode (0: nothing there); one stat each

    def kind(name: str) -> int:
        if name not in kinds:
            try:
                kinds[name] = os.stat(os.path.join(base, name)).st_mode
            except (OSError, ValueError):
                kinds[name] = 0
        return kinds[name]

    for actionset in rakefile.actionsets:
        for action in actionset.actions:
            for name in action.requires:
                if stat.S_ISDIR(kind(name)):
                    errors.append(f"{rakefile.path}:{action.line}: required {name!r} is a "
                                  f"directory; 'requires' lists files (name each one)")
                elif name not in produced and not stat.S_ISREG(kind(name)):
                    errors.append(f"{rakefile.path}:{action.line}: required file {name!r} "
                                  f"does not exist and no earlier action makes it")
        for action in actionset.actions:
            produced |= likely_outputs(action)
    if errors:
        raise RakefileError(errors)
