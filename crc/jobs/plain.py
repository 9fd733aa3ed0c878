"""Command lines that need no shell.

A job given as a shell command runs as ``/bin/sh -c COMMAND``. Most
Rakefile actions are plain ``cc -O2 -c a.c -o a.o`` lines in which the
shell does nothing but split words and search ``PATH``; starting it costs a
process (``/bin/sh -c true`` takes 1.3 ms of CPU here, ``true`` 0.5). As make
does for a recipe line, such a command is run directly: ``plain_words``
returns its words when running them directly means exactly what the shell
would have made of the line, and None otherwise.

A line is plain when every character is one the shell gives no meaning to
(letters, digits, space, tab and ``_ . / , : = + @ % -``: no quoting,
expansion, globbing, redirection, pipes, lists, comments, tildes nor
braces) and its first word is neither a variable assignment nor a reserved
word or builtin of the shell (whose behaviour is the shell's own, not a
program's). What the caller must do to keep the rest of the shell's
behaviour (the environment as the shell exports it: ``shell_environment``;
a command that cannot be run directly run through the shell after all;
the status and message of a death by signal) is said in
``crc.server.jobs.executor``.

Known differences: the command is its process group's and session's
leader (the shell was), so one that calls ``setsid()`` without forking
first is refused; and a line over 128 KiB, which the kernel refused as one
argument of ``/bin/sh -c``, runs.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

#: Characters that mean nothing to the shell, outside of quotes.
_PLAIN = re.compile(r"[A-Za-z0-9_./,:=+@% \t-]+")

#: Reserved words and builtins of POSIX shells and dash (``/bin/sh`` here):
#: a command starting with one is the shell's, not a program's.
SHELL_WORDS = frozenset("""
    ! { } [[ ]] case do done elif else esac fi for function if in select then time until while
    . : [ alias bg break builtin cd chdir command continue echo eval exec exit export false fc
    fg getopts hash jobs kill let local printf pwd read readonly return set shift source test
    times trap true type typeset ulimit umask unalias unset wait
""".split())


def plain_words(command: str) -> list[str] | None:
    """The words of ``command`` if it can run without a shell, else None."""
    if not _PLAIN.fullmatch(command):
        return None
    words = command.split()
    if not words or "=" in words[0] or words[0] in SHELL_WORDS:
        return None
    return words


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def shell_variables(environ: Mapping[str, str], parent: int) -> dict[str, str]:
    """What ``/bin/sh -c`` started by process ``parent`` with ``environ``
    passes on to the command it runs, but ``PWD`` (``shell_environment``):
    only variables with a shell name, ``IFS`` and ``OPTIND`` reset if
    present, ``PPID`` (if present) the parent's. The same for every job of
    a server: made once."""
    env = {k: v for k, v in environ.items() if _NAME.fullmatch(k)}
    if "IFS" in env:
        env["IFS"] = " \t\n"
    if "OPTIND" in env:
        env["OPTIND"] = "1"
    if "PPID" in env:
        env["PPID"] = str(parent)
    return env


def shell_environment(variables: Mapping[str, str], cwd: str) -> dict[str, str]:
    """``variables`` (``shell_variables``) with ``PWD`` as the shell sets it
    in ``cwd``: the directory's physical path."""
    return dict(variables, PWD=os.path.realpath(cwd))
