"""A compiler named by its content, so that the mesh never mixes objects of
different compilers.

``identity(path)`` is what a C/C++ driver is: its target triple, its full
version, and a digest of the driver and its compilers proper (``cc1``,
``cc1plus``) — two machines' ``gcc`` are the same compiler only if all of
that is equal; the ``id`` is a short digest of it. Servers advertise the ids
of the compilers they have (``crc.server.jobs.reports``), ``meshcc`` asks
for the id of the one it was given, and a compile goes only where that id is.

Computing an identity runs the driver three times and reads some tens of
megabytes, so it is remembered in a small file under the user's cache
directory, keyed by each file's path, size, inode and modification time:
a changed or replaced compiler is examined again. The file is in
``marshal`` format and this module imports only ``os`` and ``marshal`` up
front: every compile of a build reads it, and ``json`` alone would cost
more than the lookup (an unreadable file is simply examined again).
Blocking (subprocesses and file reads): call it at start-up or in a client,
never from an event loop.
"""

from __future__ import annotations

import marshal
import os

#: Names looked for on PATH when a server is not told which compilers it has.
DEFAULT_NAMES = ("cc", "gcc", "c++", "g++", "clang", "clang++")
#: A compile shipped as source (``crc.cc.ship``) names its files by their
#: absolute paths under this directory of the job, and runs in it.
ROOT_DIR = ".meshcc-root"
_PROGRAMS = ("cc1", "cc1plus")
_TIMEOUT = 10.0


class CompilerError(Exception):
    """The program cannot be examined as a C/C++ compiler; says which and why."""


def cache_file() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "crc-mesh", "compilers.marshal")


def _stamp(path: str) -> list:
    st = os.stat(path)
    return [path, st.st_size, st.st_ino, st.st_mtime_ns]


def _run(argv: list[str]) -> str:
    import subprocess
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompilerError(f"{argv[0]}: cannot run it: {exc}") from None
    if done.returncode != 0:
        raise CompilerError(f"{' '.join(argv)}: exit {done.returncode}: "
                            f"{done.stderr.strip()[:200]}")
    return done.stdout.strip()


def _digest(paths: list[str]) -> str:
    import hashlib
    h = hashlib.sha256()
    for path in paths:
        h.update(path.rsplit("/", 1)[-1].encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def examine(path: str) -> dict:
    """The identity of the driver at ``path`` (absolute), computed afresh."""
    triple = _run([path, "-dumpmachine"])
    try:
        version = _run([path, "-dumpfullversion"])
    except CompilerError:
        version = _run([path, "-dumpversion"])
    parts = [path]
    for prog in _PROGRAMS:
        found = _run([path, f"-print-prog-name={prog}"])
        if os.path.isabs(found) and os.path.isfile(found):
            parts.append(os.path.realpath(found))
    digest = _digest(parts)
    import hashlib
    key = "\0".join((triple, version, digest)).encode()
    return {"id": hashlib.sha256(key).hexdigest()[:20], "triple": triple, "version": version,
            "digest": digest, "files": parts}


def identity(path: str, *, cache: str | None = None) -> dict:
    """The identity of the compiler at ``path`` (resolved), from the cache
    when none of its files changed since it was examined."""
    real = os.path.realpath(path)
    if not os.path.isfile(real) or not os.access(real, os.X_OK):
        raise CompilerError(f"{path}: not an executable file")
    cache = cache or cache_file()
    try:
        with open(cache, "rb") as f:
            known = marshal.load(f)
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError, EOFError, TypeError):
        known = {}
    entry = known.get(real)
    if isinstance(entry, dict):
        try:
            if entry.get("stamps") == [_stamp(p) for p in entry.get("files", ())]:
                return entry
        except OSError:
            pass
    entry = examine(real)
    entry["stamps"] = [_stamp(p) for p in entry["files"]]
    known[real] = entry
    tmp = f"{cache}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        with open(tmp, "wb") as f:
            marshal.dump(known, f)
        os.replace(tmp, cache)
    except (OSError, ValueError):
        try:
            os.unlink(tmp)
        except OSError:
            pass                    # no cache: examined again next time
    return entry


def installed(names: tuple[str, ...] = DEFAULT_NAMES) -> dict[str, str]:
    """``{id: path}`` of the compilers found on PATH under ``names`` (a name
    that is not there, or not a compiler we can examine, is skipped)."""
    import shutil
    found: dict[str, str] = {}
    for name in names:
        path = shutil.which(name)
        if path is None:
            continue
        try:
            found.setdefault(identity(path)["id"], os.path.realpath(path))
        except CompilerError:
            continue
    return found
