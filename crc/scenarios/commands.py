"""Scenario command lines: tokenising and option parsing, as the CRC runner does.

A line is split once, on its first space, into the command word and the rest.
The rest is cut into tokens separated by white space and commas, except
inside double quotes; a quoted token keeps its quote characters (``--info
"Home"`` gives the value ``"Home"``, quotes included). The tokens are then
read the way ``optparse`` reads an argument list: ``--name value`` or
``--name=value`` pairs (a long name may be shortened to any unambiguous
prefix), ``-X value`` short forms, flags without a value, and positional
arguments anywhere in between. ``--log-file`` and ``--log_file`` are the
same option. ``WAIT`` and ``KILL`` take the rest of the line as it is.

The job commands (``JOB_COMMANDS``) are ours, not the original runner's:
their option values and arguments are *unquoted* (``unquote``): quotes
group and are removed, and ``\\n``, ``\\t``, ``\\\\`` and ``\\"`` inside
quotes are escapes. ``--file`` of ``SUBMIT`` may be given several times.

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


#: Escapes inside quotes of an unquoted token; any other backslash is kept.
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"'}


def tokenise(text: str) -> list[str]:
    """Split ``text`` into tokens (quotes kept, commas and blanks separate)."""
    return _TOKEN.findall(text)


def unquote(token: str) -> str:
    """``token`` without its quotes, escapes inside quotes resolved.

    ``"a b"`` gives ``a b``, ``x"1, 2"y`` gives ``x1, 2y``, ``""`` gives the
    empty string and ``"say \\"hi\\"\\n"`` gives ``say "hi"`` and a newline.
    """
    out: list[str] = []
    quoted, i = False, 0
    while i < len(token):
        char = token[i]
        if char == '"':
            quoted = not quoted
        elif quoted and char == "\\" and i + 1 < len(token):
            i += 1
            out.append(_ESCAPES.get(token[i], "\\" + token[i]))
        else:
            out.append(char)
        i += 1
    return "".join(out)


def split_line(line: str) -> tuple[str, str]:
    """The command word and the rest of the line (split on the first space)."""
    word, _, rest = line.strip().partition(" ")
    return word, rest


@dataclass(frozen=True)
class OptionSpec:
    """The options of one command: name -> takes a value; short form -> name."""

    values: dict[str, bool]
    short: dict[str, str] = field(default_factory=dict)
    raw: bool = False          # no options at all: the rest of the line as is
    multi: frozenset[str] = frozenset()   # may repeat: the values collect in a list
    unquote: bool = False      # values and arguments lose their quotes (``unquote``)


#: What each command accepts (the original runner's options, plus ours).
COMMANDS: dict[str, OptionSpec] = {
    "LAUNCHSERVER": OptionSpec({
        "id": True, "servername": True, "port": True, "info": True, "log_file": True,
        "connect_to_host": True, "connect_to_port": True, "slots": True, "load_interval": True}),
    "LAUNCHCLIENT": OptionSpec({
        "id": True, "serverhost": True, "serverport": True, "username": True, "info": True,
        "log_file": True, "simulate": False, "verbose": False, "debug": False, "plain": False},
        short={"S": "serverhost", "P": "serverport", "U": "username", "I": "info"}),
    "CLIENTCOMMAND": OptionSpec({"username": True, "command": True}),
    "SEND": OptionSpec({"source": True, "destination": True, "message": True}),
    "WAIT": OptionSpec({}, raw=True),
    "KILL": OptionSpec({}, raw=True),
    # -- jobs (docs/scenarios.md, "Jobs") --
    "WRITEFILE": OptionSpec({"username": True, "file": True, "text": True, "size": True,
                             "seed": True, "mode": True}, unquote=True),
    "SUBMIT": OptionSpec({"username": True, "job": True, "shell": True, "on": True,
                          "runall": False, "file": True, "timeout": True, "count": True},
                         multi=frozenset({"file"}), unquote=True),
    "RAKE": OptionSpec({"username": True, "job": True, "rakefile": True, "on": True,
                        "timeout": True}, unquote=True),
    "CANCEL": OptionSpec({"username": True, "job": True}, unquote=True),
    "WAITJOB": OptionSpec({"username": True, "job": True, "output": True, "timeout": True},
                          unquote=True),
}

#: The commands that make a scenario a job scenario (its servers run jobs).
JOB_COMMANDS = frozenset({"WRITEFILE", "SUBMIT", "RAKE", "CANCEL", "WAITJOB"})


@dataclass(frozen=True)
class Command:
    """One parsed scenario line."""

    name: str
    options: dict[str, str | bool | list[str]] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    line: str = ""
    rest: str = ""             # everything after the command word

    def option(self, key: str, default: str | None = None) -> str | None:
        value = self.options.get(key, default)
        if isinstance(value, list):
            return value[-1] if value else default
        return value if value is None or isinstance(value, str) else str(value)

    def values(self, key: str) -> list[str]:
        """Every value of an option that may repeat (empty if never given)."""
        value = self.options.get(key)
        if value is None:
            return []
        return list(value) if isinstance(value, list) else [str(value)]

    def require(self, key: str) -> str:
        value = self.option(key)
        if value is None:
            raise CommandError(f"{self.name}: --{key} is required")
        return value

    def flag(self, key: str) -> bool:
        return bool(self.options.get(key, False))

    def number(self, key: str) -> int | None:
        value = self.option(key)
        return None if value is None else parse_int(value, f"--{key}")

    def seconds(self, key: str) -> float | None:
        """A positive number of seconds, or None if the option is absent."""
        value = self.option(key)
        return None if value is None else parse_seconds(value, f"--{key}")


def parse_int(text: str, what: str) -> int:
    """An integer as optparse reads one: decimal, or 0x / 0o / 0b prefixed."""
    bases = {"0x": 16, "0o": 8, "0b": 2}
    try:
        base = bases.get(text[:2].lower(), 10)
        return int(text[2:] if base != 10 else text, base)
    except ValueError:
        raise CommandError(f"{what} {text!r} is not a number") from None


def parse_seconds(text: str, what: str) -> float:
    """A positive number of seconds (``0.5``, ``3``)."""
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"{what} {text!r} is not a number of seconds") from None
    if not value > 0:
        raise CommandError(f"{what} {text!r} is not a positive number of seconds")
    return value


def _long_name(name: str, spec: OptionSpec, command: str) -> str:
    key = name.replace("-", "_")
    if key in spec.values:
        return key
    matches = [known for known in spec.values if known.startswith(key)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CommandError(f"{command}: --{name} is ambiguous ({', '.join(matches)})")
    raise CommandError(f"{command}: unknown option --{name}")


def parse_options(tokens: list[str], spec: OptionSpec,
                  command: str = "") -> tuple[dict[str, str | bool | list[str]], list[str]]:
    """Read options and flags out of ``tokens``; the rest is positional."""
    options: dict[str, str | bool | list[str]] = {}
    args: list[str] = []
    queue = list(tokens)
    while queue:
        token = queue.pop(0)
        if token == "--":
            args += queue
            break
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            key, inline = _long_name(name, spec, command), value if eq else None
        elif token.startswith("-") and len(token) > 1:
            if token[1] not in spec.short:
                raise CommandError(f"{command}: unknown option -{token[1]}")
            key, inline = spec.short[token[1]], token[2:] or None
        else:
            args.append(token)
            continue
        if not spec.values[key]:
            if inline is not None:
                raise CommandError(f"{command}: --{key} takes no value")
            options[key] = True
            continue
        if inline is None:
            if not queue:
                raise CommandError(f"{command}: --{key} needs a value")
            inline = queue.pop(0)
        if spec.unquote:
            inline = unquote(inline)
        if key in spec.multi:
            previous = options.get(key)
            options[key] = (previous if isinstance(previous, list) else []) + [inline]
        else:
            options[key] = inline
    if spec.unquote:
        args = [unquote(arg) for arg in args]
    return options, args


def parse_command(line: str) -> Command:
    """Parse one scenario line; ``CommandError`` if it is not a known command."""
    word, rest = split_line(line)
    spec = COMMANDS.get(word)
    if spec is None:
        raise CommandError(f"unknown command {word!r}")
    tokens = tokenise(rest)
    if spec.raw:
        return Command(word, {}, tuple(tokens), line, rest.strip())
    options, args = parse_options(tokens, spec, word)
    return Command(word, options, tuple(args), line, rest.strip())
