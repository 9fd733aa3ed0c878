"""``mesh_server.py --config FILE``: any server flag, in a TOML file.

A key is a flag's name without its dashes (``max-connections`` or
``max_connections``), at the top level of the file; a value is what the flag
takes — a string or a number, ``true``/``false`` for a switch, a list of
``"HOST:PORT"`` strings for ``connect``. The file becomes the flags it says,
placed before the command line's, so a flag given there wins (``connect``
given there replaces the file's list). Every value goes through the flag's
own check; an unknown key, a value of the wrong kind or one the check
refuses is an error naming the file, the line and the key, before anything
listens. ``render`` writes the effective settings back as such a file
(``--print-config``), which loads again to the same settings.

Pure: reads the one file it is given; knows argparse, not the server.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from typing import Any

#: Flags that are not settings (they say where settings come from, or what to do).
NOT_SETTINGS = {"help", "config", "print_config"}


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names where."""


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Settings by key (``max_connections``), each with its long flag."""
    found = {}
    for action in parser._actions:                       # noqa: SLF001 (argparse's own list)
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in NOT_SETTINGS:
            found[action.dest] = action
    return found


def _line_of(text: str, key: str) -> int:
    """The line that sets ``key`` (1-based; 0 when it cannot be told)."""
    spelled = "|".join(re.escape(k) for k in {key, key.replace("_", "-")})
    pattern = re.compile(rf'^[ \t]*(?:(?:{spelled}|"(?:{spelled})"|\'(?:{spelled})\')[ \t]*='
                         rf'|\[[ \t]*(?:{spelled})[ \t]*\])', re.M)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else 0


def config_argv(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The flags the file at ``path`` says; ``ConfigError`` if it cannot be used."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    text = raw.decode("utf-8", "replace")
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    actions = _actions(parser)
    argv: list[str] = []
    for key, value in table.items():
        dest = key.replace("-", "_")
        where = f"{path}:{_line_of(text, key)}: {key}"
        action = actions.get(dest)
        if isinstance(value, dict):
            raise ConfigError(f"{where}: a table; settings are plain key = value lines, "
                              "before any [table]")
        if action is None:
            known = ", ".join(sorted(k.replace("_", "-") for k in actions))
            raise ConfigError(f"{where}: unknown setting (known: {known})")
        argv += _flag_words(action, value, where)
    return argv


def _flag_words(action: argparse.Action, value: Any, where: str) -> list[str]:
    """``value`` as the command-line words of ``action``, checked by its type."""
    flag = next(o for o in action.option_strings if o.startswith("--"))
    if action.nargs == 0:                                 # a switch (store_true)
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: is a switch: true or false, not {value!r}")
        return [flag] if value else []
    if isinstance(value, bool):
        raise ConfigError(f"{where}: takes a value, not {str(value).lower()}")
    if isinstance(value, list) and action.dest == "connect":
        if not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: a list of \"HOST:PORT\" strings")
        value = ",".join(value)
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where}: a string or a number, not a "
                          f"{'table' if isinstance(value, dict) else 'list'}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    word = str(value)
    if action.choices is not None and word not in action.choices:
        raise ConfigError(f"{where}: {word!r} is not one of {', '.join(action.choices)}")
    if action.type is not None:
        try:
            action.type(word)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return [flag, word]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) \
            and isinstance(value[1], int) and not isinstance(value[1], bool):
        return _toml_value(f"{value[0]}:{value[1]}")             # HOST:PORT
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, tuple) and len(v) == 2 for v in value):
        return "[" + ", ".join(_toml_value(f"{h}:{p}") for h, p in value) + "]"
    if isinstance(value, (list, tuple)):
        return _toml_value(",".join(str(v) for v in value))
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _accepted(action: argparse.Action, value: Any) -> bool:
    try:
        action.type(str(value))
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False
    return True


def render(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The effective settings as a configuration file (unset ones commented)."""
    lines = ["# mesh_server.py settings (--print-config); load with --config FILE"]
    for dest, action in _actions(parser).items():
        key = dest.replace("_", "-")
        value = getattr(args, dest, None)
        if value is None or value == []:
            lines.append(f"# {key} = (not set)")
        elif value == action.default and action.type is not None and not _accepted(action,
                                                                                   value):
            lines.append(f"# {key} = (default: {value!r})")   # e.g. id 0: a random one
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--config FILE`` (or ``--config=FILE``) out of ``argv``: the file and the rest."""
    rest, path = [], None
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--config" and i + 1 < len(argv):
            path, i = argv[i + 1], i + 2
            continue
        if word.startswith("--config="):
            path = word.split("=", 1)[1]
            i += 1
            continue
        rest.append(word)
        i += 1
    return path, rest


def merged_argv(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The command line with its ``--config`` file's flags before it; a
    ``--connect`` given here replaces the file's."""
    path, rest = split_config(argv)
    if path is None:
        return rest
    from_file = config_argv(path, parser)
    if any(w == "--connect" or w.startswith("--connect=") for w in rest):
        kept, i = [], 0
        while i < len(from_file):
            if from_file[i] == "--connect":
                i += 2
                continue
            kept.append(from_file[i])
            i += 1
        from_file = kept
    return from_file + rest
