"""Reading what a job frame asks for: its run id, command, files, time limit
and FETCH offsets. Each reader returns plain values or raises
``ProtocolError`` naming what was wrong; nothing here touches the service."""

from __future__ import annotations

import math
import os
import shlex
from typing import NamedTuple

from ...jobs.files import FileRef, bad_relative_path
from ...jobs.plain import plain_words
from ...jobs.store import valid_sha
from ...protocol import ProtocolError


def run_id_of(header: dict) -> str:
    """A frame's run id; ``ProtocolError`` for anything but text."""
    run_id = header.get("id")
    if not isinstance(run_id, str):
        raise ProtocolError("job frame without a text 'id'")
    return run_id


def utf8(text: str, what: str) -> str:
    """``text`` if it can go on the wire and into a command line."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"{what} is not valid UTF-8") from None
    if "\0" in text:
        raise ProtocolError(f"{what} contains a NUL byte")
    return text


class Command(NamedTuple):
    argv: list[str]
    label: str
    #: The shell command ``argv`` are the words of, run without a shell
    #: (``crc.jobs.plain``); None when ``argv`` is the job's own list or
    #: ``/bin/sh -c`` with the command.
    plain: str | None = None


def parse_command(header: dict) -> Command:
    """What a SUBMIT/RUN header asks to run; ``ProtocolError`` if unusable.
    A shell command that needs no shell is run as its words (with a ``PATH``
    to search them in; else by ``/bin/sh``, whose default path differs)."""
    argv, shell = header.get("argv"), header.get("shell")
    if isinstance(shell, str) and shell.strip():
        utf8(shell, "the command")
        words = plain_words(shell)
        if words is not None and "PATH" in os.environ:
            return Command(words, shell, shell)
        return Command(["/bin/sh", "-c", shell], shell)
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        return Command([utf8(a, f"argument {i + 1}") for i, a in enumerate(argv)],
                       shlex.join(argv))
    raise ProtocolError("job has neither a non-empty 'argv' list nor a 'shell' command")


def parse_timeout(header: dict, max_runtime: float) -> float:
    """A job's time limit: its ``timeout`` (a positive finite number of
    seconds) capped at ``max_runtime``, or ``max_runtime`` when it has none."""
    timeout = header.get("timeout")
    if timeout is None:
        return max_runtime
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise ProtocolError(f"job timeout {timeout!r} is not a positive number of seconds")
    return min(float(timeout), max_runtime)


def parse_files(header: dict, max_file: int) -> list[FileRef]:
    """The files a job needs, each a safe relative name with a SHA-256 and a
    size within ``max_file``, no name twice."""
    raw = header.get("files", [])
    if not isinstance(raw, list):
        raise ProtocolError("job 'files' is not a list")
    files, seen = [], set()
    for item in raw:
        ref = _file_ref(item)
        if not 0 <= ref.size <= max_file:
            raise ProtocolError(f"file {ref.name!r} is {ref.size} bytes; the limit is {max_file}")
        if ref.name in seen:
            raise ProtocolError(f"file {ref.name!r} is listed twice")
        seen.add(ref.name)
        files.append(ref)
    return files


#: File entries found good lately (their fields as sent -> the FileRef): a
#: build's compiles name the same thirty headers again and again, and each
#: job's list is read by its entry and by its executor.
_GOOD: dict[tuple, FileRef] = {}
GOOD_MAX = 1 << 14


def _file_ref(item: object) -> FileRef:
    """One entry of a job's file list (name and digest checked)."""
    try:
        key = (item["name"], item["sha"], item["size"], item.get("mode", 0o644))  # type: ignore[index,union-attr]
        known = _GOOD.get(key)
    except (KeyError, TypeError, AttributeError):      # (unhashable: the long way says why)
        key = known = None
    if known is not None:
        return known
    try:
        ref = FileRef.from_json(item)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):  # (size Infinity)
        raise ProtocolError(f"bad file entry {item!r}") from None
    why = bad_relative_path(ref.name)
    if why:
        raise ProtocolError(why)
    if not valid_sha(ref.sha):
        raise ProtocolError(f"file {ref.name!r} has no valid SHA-256")
    if key is not None:
        if len(_GOOD) >= GOOD_MAX:
            _GOOD.clear()
        _GOOD[key] = ref
    return ref


def parse_offsets(value: object) -> list[int]:
    """The client's byte counts [stdout, stderr] from a FETCH (0 if absent)."""
    if isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return list(value)
    if value is None:
        return [0, 0]
    raise ProtocolError("FETCH 'offsets' is not a list of two byte counts")
