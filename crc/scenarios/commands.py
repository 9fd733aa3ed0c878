"""Scenario command lines: tokenising and option parsing, as the CRC runner does.

A line is split once, on its first space, into the command word and the rest.
The rest is cut into tokens separated by white space and commas, except
inside double quotes; a quoted token keeps its quote characters (``--info
"Home"`` gives the value ``"Home"``, quotes included). The tokens are then
read the way ``optparse`` reads an argument list: ``--name value`` or
``--name=value`` pairs, flags without a value, and positional arguments
anywhere in between. ``--log-file`` and ``--log_file`` are the same option.

Pure functions on strings; nothing here knows what a command does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: A token: a run of characters that are neither white space, commas nor
#: quotes, and of double-quoted stretches (with backslash escapes), glued.
_TOKEN = re.compile(r'''
    (?:
        [^\s,"]                 # an ordinary character
      | " (?: \\. | [^"] )* "   # a quoted stretch, kept with its quotes
    )+
''', re.VERBOSE)


class CommandError(ValueError):
    """A scenario line that cannot be understood."""


def tokenise(text: str) -> list[str]:
    """Split ``text`` into tokens (quotes kept, commas and blanks separate)."""
    return _TOKEN.findall(text)


def split_line(line: str) -> tuple[str, list[str]]:
    """The command word and the tokens of the rest of the line."""
    word, _, rest = line.strip().partition(" ")
    return word, tokenise(rest)


@dataclass(frozen=True)
class Command:
    """One parsed scenario line."""

    name: str
    options: dict[str, str | bool] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    line: str = ""

    def option(self, key: str, default: str | None = None) -> str | None:
        value = self.options.get(key, default)
        return value if value is None or isinstance(value, str) else str(value)

    def require(self, key: str) -> str:
        value = self.option(key)
        if value is None:
            raise CommandError(f"{self.name}: --{key} is required in {self.line!r}")
        return value

    def flag(self, key: str) -> bool:
        return bool(self.options.get(key, False))

    def number(self, key: str, default: int | None = None) -> int | None:
        value = self.option(key)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise CommandError(f"{self.name}: --{key} {value!r} is not a number") from None


#: Options each command accepts: True takes a value, False is a flag.
OPTIONS: dict[str, dict[str, bool]] = {
    "LAUNCHSERVER": {"id": True, "servername": True, "port": True, "info": True,
                     "log_file": True, "connect_to_host": True, "connect_to_port": True},
    "LAUNCHCLIENT": {"id": True, "serverhost": True, "serverport": True, "username": True,
                     "info": True, "log_file": True, "plain": False},
    "CLIENTCOMMAND": {"username": True, "command": True},
    "WAIT": {},
    "KILL": {},
}


def parse_options(tokens: list[str], known: dict[str, bool],
                  command: str = "") -> tuple[dict[str, str | bool], list[str]]:
    """Read ``--opt value`` pairs and flags out of ``tokens``; the rest is positional."""
    options: dict[str, str | bool] = {}
    args: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--":
            args += tokens[i:]
            break
        if not token.startswith("--"):
            args.append(token)
            continue
        name, eq, value = token[2:].partition("=")
        key = name.replace("-", "_")
        if key not in known:
            raise CommandError(f"{command}: unknown option --{name}")
        if not known[key]:
            if eq:
                raise CommandError(f"{command}: --{name} takes no value")
            options[key] = True
            continue
        if not eq:
            if i >= len(tokens):
                raise CommandError(f"{command}: --{name} needs a value")
            value = tokens[i]
            i += 1
        options[key] = value
    return options, args


def parse_command(line: str) -> Command:
    """Parse one scenario line; ``CommandError`` if it is not a known command."""
    word, tokens = split_line(line)
    if word not in OPTIONS:
        raise CommandError(f"unknown command {word!r} in {line!r}")
    options, args = parse_options(tokens, OPTIONS[word], word)
    return Command(word, options, tuple(args), line)
