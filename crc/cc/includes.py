"""Which files a compile reads, found without running the preprocessor.

meshcc ships a source with the headers it includes instead of preprocessing
it here (``crc.cc.ship``). ``Scanner.closure`` follows the ``#include``
directives of a source and of every header found, searching directories as
GCC does — the includer's own directory first for ``"..."``, then the
``-iquote`` chain, then the bracket chain (``-I``, ``-isystem``, the
compiler's own directories, ``-idirafter``); ``#include_next`` from after
the directory the includer was found in — and records each file as the
compiler would name it (the directory as given, a ``/``, the name).

It over-approximates on purpose: conditionals are not evaluated, so a header
behind ``#if 0`` is shipped too, and ``__has_include`` operands that exist
are shipped so that the test answers the same over there. Whatever it
cannot follow — ``#include MACRO``, ``__has_include`` of a macro, assembler
``.incbin``, a precompiled header (``.gch``) beside a header — raises
``Unscannable`` and the compile is preprocessed here instead, as before. A
header it cannot find is not shipped: if the compile needs it, it fails
there and is compiled here, where the compiler says so.

Each file is read once per change (cached by size, inode and times), with
its SHA-256 and its directives: a build reads every shared header once.
Used by the meshcc agent, which lives for a whole build.
"""

from __future__ import annotations

import hashlib
import os
import re

#: ``#include``, ``#include_next`` and ``#import`` with a quoted or bracketed name.
_DIRECTIVE = re.compile(
    rb'^[ \t]*#[ \t]*(include_next|include|import)[ \t]*(?:"([^"\n]*)"|<([^>\n]*)>|(.*))',
    re.MULTILINE)
_HAS_INCLUDE = re.compile(
    rb'__has_include(_next)?[ \t]*\([ \t]*(?:"([^"\n]*)"|<([^>\n]*)>|([^)\n]*))')
#: Macros whose value is the moment of the compile (never cached).
TIME_MACROS = (b"__DATE__", b"__TIME__", b"__TIMESTAMP__")


class Unscannable(Exception):
    """The includes of a compile cannot be followed without preprocessing; why."""


class FileInfo:
    """One file as read: its stat stamp, digest, mode and directives."""
    __slots__ = ("stamp", "sha", "size", "mode", "includes", "problem", "timed")

    def __init__(self, stamp: tuple, sha: str, size: int, mode: int,
                 includes: list[tuple[bool, bool, str]], problem: str | None,
                 timed: str | None) -> None:
        self.stamp = stamp
        self.sha = sha
        self.size = size
        self.mode = mode
        self.includes = includes      # (quoted, next, name)
        self.problem = problem        # why it cannot be followed, if it cannot
        self.timed = timed            # which of __DATE__ / __TIME__ / __TIMESTAMP__ it uses


def directives(data: bytes) -> tuple[list[tuple[bool, bool, str]], str | None]:
    """The includes of a file's text (``(quoted, next, name)``) and, if some
    cannot be followed, why."""
    if b"\\\n" in data:                     # a directive may be continued over lines
        data = data.replace(b"\\\r\n", b"").replace(b"\\\n", b"")
    found: list[tuple[bool, bool, str]] = []
    if b"include" in data or b"import" in data:
        for m in _DIRECTIVE.finditer(data):
            quoted, bracketed = m.group(2), m.group(3)
            if quoted is None and bracketed is None:
                rest = m.group(4).strip()
                if rest.startswith((b"//", b"/*")) or not rest:
                    continue                # not a directive we know (or a comment)
                return found, f"#{m.group(1).decode()} {rest[:40].decode(errors='replace')}"
            name = (quoted if quoted is not None else bracketed).decode("utf-8",
                                                                        "surrogateescape")
            found.append((quoted is not None, m.group(1) == b"include_next", name))
    if b"__has_include" in data:
        for m in _HAS_INCLUDE.finditer(data):
            quoted, bracketed = m.group(2), m.group(3)
            if quoted is None and bracketed is None:
                return found, "__has_include of a macro"
            name = (quoted if quoted is not None else bracketed).decode("utf-8",
                                                                        "surrogateescape")
            found.append((quoted is not None, m.group(1) is not None, name))
    if b".incbin" in data:
        return found, "assembler .incbin"
    return found, None


class Found:
    """A file of a compile's closure, as the compiler names it."""
    __slots__ = ("name", "path", "info", "system")

    def __init__(self, name: str, path: str, info: FileInfo, system: bool) -> None:
        self.name = name              # as the compiler names it (relative to cwd, or absolute)
        self.path = path              # absolute, normalised: where it goes over there
        self.info = info
        self.system = system          # found in a system directory


class Search:
    """Where includes are looked for: ``chain`` is the quote directories
    followed by the bracket ones (``bracket`` is where those start);
    ``system`` marks each as a system directory or not."""
    __slots__ = ("chain", "bracket", "system")

    def __init__(self, quote: list[str], bracket: list[tuple[str, bool]]) -> None:
        self.chain = [*quote, *(d for d, _ in bracket)]
        self.bracket = len(quote)
        self.system = [False] * len(quote) + [s for _, s in bracket]


def _through_missing(path: str) -> bool:
    """Whether ``path`` (absolute) climbs out (``..``) of a directory that does
    not exist here."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if part == ".." and i > 1 and not os.path.isdir("/".join(parts[:i])):
            return True
    return False


def _join(folder: str, name: str) -> str:
    if not folder:
        return name
    return folder + name if folder.endswith("/") else folder + "/" + name


class Scanner:
    """Reads and remembers files; follows a compile's includes."""

    def __init__(self, max_files: int = 20000) -> None:
        self.files: dict[str, FileInfo] = {}
        self.max_files = max_files
        self.read = 0                 # files read (not answered from memory)

    def info(self, path: str) -> FileInfo | None:
        """What ``path`` (absolute) holds now; None if it is not a regular file."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not (st.st_mode & 0o170000 == 0o100000):
            return None
        stamp = (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        known = self.files.get(path)
        if known is not None and known.stamp == stamp:
            return known
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        self.read += 1
        includes, problem = directives(data)
        timed = next((m.decode() for m in TIME_MACROS if m in data), None)
        info = FileInfo(stamp, hashlib.sha256(data).hexdigest(), len(data), st.st_mode & 0o777,
                        includes, problem, timed)
        if len(self.files) >= self.max_files:
            self.files.clear()
        self.files[path] = info
        return info

    def closure(self, cwd: str, source: str, search: Search,
                preincludes: list[tuple[str, str | None]]) -> list[Found]:
        """Every file a compile of ``source`` in ``cwd`` may read: the source,
        then ``preincludes`` (``(name, where the compiler itself finds it)``
        for its own, ``(name, None)`` for ``-include``/``-imacros``, each
        found as ``-include`` finds it) and everything they include.
        ``Unscannable`` if that cannot be known here."""
        found: list[Found] = []
        seen: dict[str, None] = {}
        exists: dict[str, FileInfo | None] = {}

        def lookup(name: str) -> FileInfo | None:
            path = name if name.startswith("/") else os.path.join(cwd, name)
            if path not in exists:
                if "/.." in path and _through_missing(path):
                    # Here the name leads nowhere; over there a directory
                    # kept from an earlier compile could make it lead somewhere.
                    raise Unscannable(f"{name}: '..' after a directory that is not here")
                exists[path] = self.info(path)
            return exists[path]

        def add(name: str, info: FileInfo, system: bool, index: int | None) -> None:
            if name in seen:
                return
            seen[name] = None
            path = name if name.startswith("/") else os.path.join(cwd, name)
            normal = os.path.normpath(path)
            if normal != path and ".." in path.split("/") and \
                    os.path.realpath(normal) != os.path.realpath(path):
                raise Unscannable(f"{name}: '..' after a symbolic link")
            if info.problem:
                raise Unscannable(f"{name}: {info.problem}")
            if os.path.exists(path + ".gch"):
                # The compiler would read the precompiled header instead.
                raise Unscannable(f"{name}: a precompiled header ({name}.gch) is used")
            found.append(Found(name, normal, info, system))
            queue.append((name, info, system, index))

        def resolve(quoted: bool, next_: bool, name: str, includer: str, system: bool,
                    index: int | None) -> None:
            if name.startswith("/"):
                info = lookup(name)
                if info is not None:
                    add(name, info, system, None)
                return
            if next_ and index is not None:
                start = index + 1
            else:
                if quoted and not next_:
                    candidate = _join(os.path.dirname(includer), name)
                    info = lookup(candidate)
                    if info is not None:
                        add(candidate, info, system, None)
                        return
                start = 0 if quoted else search.bracket
            for i in range(start, len(search.chain)):
                candidate = _join(search.chain[i], name)
                info = lookup(candidate)
                if info is not None:
                    add(candidate, info, search.system[i], i)
                    return

        queue: list[tuple[str, FileInfo, bool, int | None]] = []
        info = lookup(source)
        if info is None:
            raise Unscannable(f"cannot read {source}")
        add(source, info, False, None)
        for name, expected in preincludes:
            # As -include finds them: the working directory first, then the
            # quote chain. The compiler's own (stdc-predef.h) must be the
            # one it would have found itself.
            before = len(found)
            info = lookup(name)
            if info is not None:
                add(name, info, False, None)
            else:
                resolve(True, False, name, "", False, None)
            if expected is not None:
                if len(found) == before or found[-1].path != os.path.normpath(expected):
                    raise Unscannable(f"{name} is not found as the compiler finds it")
        while queue:
            name, info, system, index = queue.pop()
            for quoted, next_, include in info.includes:
                resolve(quoted, next_, include, name, system, index)
        return found
