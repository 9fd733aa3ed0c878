"""Which real compiler an invocation means, and how local work is limited.

``invocation(argv)`` tells the three ways meshcc is called apart — ``meshcc
gcc ...`` (``CC="meshcc gcc"``), ``meshcc /usr/bin/cc ...`` (CMake's
launcher) and a link named ``gcc`` earlier on PATH (masquerade) — and finds
the real compiler on PATH, skipping every entry that is meshcc itself.

``local_slot()`` holds one of CPU-count lock files for as long as the
process (or what it ``exec``s) lives, so that ``make -j32`` runs at most
that many preprocessors, fallbacks and links at once on this machine.
"""

from __future__ import annotations

import fcntl
import os

#: Names meshcc answers to itself (anything else is a masquerade link).
OWN_NAMES = {"meshcc", "meshcc.py", "__main__.py"}


class UsageError(Exception):
    """The command line does not name a compiler meshcc can find."""


class MeshFailure(Exception):
    """The mesh could not compile (not the compiler failing): why."""


def _is_self(path: str, me: str) -> bool:
    try:
        real = os.path.realpath(path)
    except OSError:
        return False
    return real == me or os.path.basename(real) in OWN_NAMES


def find_real(name: str, me: str) -> str:
    """The compiler ``name`` means: a path as it is, a bare name looked up
    on PATH skipping meshcc itself (``me``: meshcc's real path)."""
    if "/" in name:
        if _is_self(name, me):
            raise UsageError(f"{name} is meshcc itself, not a compiler")
        return name
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK) \
                and not _is_self(candidate, me):
            return candidate
    raise UsageError(f"{name}: no such compiler on PATH (other than meshcc itself)")


def invocation(argv: list[str], me: str) -> tuple[str, str, list[str]]:
    """``(name, real path, arguments)`` of the compiler ``argv`` (meshcc's
    own ``sys.argv``) asks for."""
    called = os.path.basename(argv[0]) if argv else "meshcc"
    if called not in OWN_NAMES:               # a masquerade link: we are "gcc"
        return called, find_real(called, me), argv[1:]
    if len(argv) < 2:
        raise UsageError("usage: meshcc COMPILER [ARGS...]  (e.g. make CC=\"meshcc gcc\")")
    name = argv[1]
    return name, find_real(name, me), argv[2:]


def local_slot(wait: bool = True) -> int | None:
    """Wait for one of CPU-count local slots and return its open file
    descriptor (inherited across ``exec``, released when the process ends);
    None when slots cannot be had (no writable temporary directory) or,
    without ``wait``, when none is free now."""
    slots = os.cpu_count() or 1
    tmp = os.environ.get("TMPDIR") or "/tmp"
    folder = os.path.join(tmp, f"crc-meshcc-{os.getuid()}")
    fds: list[int] = []
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        first = os.getpid() % slots          # spread the first tries
        for i in [*range(first, slots), *range(first)]:
            fd = os.open(os.path.join(folder, f"slot-{i}"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fds.append(fd)
                continue
            except OSError:
                os.close(fd)
                raise
            os.set_inheritable(fd, True)
            return fd
        if not wait:
            return None
        fd = fds.pop()
        fcntl.flock(fd, fcntl.LOCK_EX)          # all busy: wait for one
        os.set_inheritable(fd, True)
        return fd
    except OSError:
        return None
    finally:
        for other in fds:
            os.close(other)
