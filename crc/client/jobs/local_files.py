"""The job client's files on this machine: the required files it offers,
and the produced files it puts in place.

``LocalFiles.describe`` names and hashes a job's required files (the digest
of a file is remembered by its stat — size, inode, modification and change
times — so the same headers named by a hundred compiles of a Rakefile are
read once, except files changed in the last ``FRESH`` seconds, which a
second change within the file system's timestamp tick could hide); ``held``
is every file the client can serve to a server that asks (``read``).
``write_back`` puts a produced file in place: the bytes that came inline
with the result, else the fetched blob moved out of the client's store by a
rename (a new file costs more than its bytes on some file systems), else a
copy of the same content put in place before.

Knows the file system and the client's blob store; no frames, no sockets.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Sequence

from ...jobs.files import FileRef, bad_relative_path
from ...jobs.store import BlobStore, hash_file
from .state import text_problem

#: A required file changed less than this many seconds ago is hashed again
#: every time it is named.
FRESH = 2.0
#: Digests remembered at most (then forgotten all at once).
REMEMBERED = 10_000


class LocalError(Exception):
    """A required or produced file that cannot be used; the text says why."""


Stamp = tuple[int, int, int, int]


class LocalFiles:
    def __init__(self, store: BlobStore) -> None:
        self.store = store
        #: sha -> (path, size) of every file we can serve.
        self.held: dict[str, tuple[Path, int]] = {}
        #: path -> (stat stamp, sha, size) of files hashed before.
        self.digests: dict[str, tuple[Stamp, str, int]] = {}

    def describe(self, names: Sequence[str], base: Path) -> list[FileRef]:
        """Hash the named files under ``base``; ``LocalError`` for a bad one."""
        refs, seen = [], set()
        for name in names:
            why = bad_relative_path(name) or text_problem("file name", name)
            if why:
                raise LocalError(why)
            if os.path.normpath(name) in seen:
                raise LocalError(f"required file {name!r} is listed twice")
            seen.add(os.path.normpath(name))
            path = base / name
            try:
                st = os.stat(path)
            except OSError:
                raise LocalError(f"required file {name!r} does not exist in {base}") from None
            if stat.S_ISDIR(st.st_mode):
                raise LocalError(f"required {name!r} is a directory; name the files in it")
            if not stat.S_ISREG(st.st_mode):
                raise LocalError(f"required {name!r} is not a regular file")
            sha, size = self.digest(path, st)
            self.held[sha] = (path, size)
            refs.append(FileRef(name, sha, size, st.st_mode & 0o777))
        return refs

    def digest(self, path: Path, st: os.stat_result) -> tuple[str, int]:
        """``hash_file(path)``, remembered while the file's stat stays as it was."""
        key = str(path)
        stamp = (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        known = self.digests.get(key)
        if known is not None and known[0] == stamp:
            return known[1], known[2]
        sha, size = hash_file(path)
        if time.time() - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 >= FRESH:
            if len(self.digests) >= REMEMBERED:
                self.digests.clear()
            self.digests[key] = (stamp, sha, size)
        return sha, size

    def read(self, sha: str, offset: int, length: int) -> bytes | None:
        """Bytes of a file we hold, for a server that asks."""
        path, _size = self.held[sha]
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def write_back(self, ref: FileRef, base: Path, data: bytes | None = None,
                   in_place: bool = False) -> None:
        """Put a produced file in place under ``base`` with its mode: ``data``
        (it came inline), else the fetched blob. ``ValueError`` for a name
        that leaves ``base``; ``OSError`` from the file system. ``in_place``:
        ``base`` is a fresh directory nobody reads yet (``Job.scratch``): a
        new file there is written as it is, not renamed over."""
        why = bad_relative_path(ref.name)
        if why:
            raise ValueError(why)
        dest = base / ref.name
        if in_place and data is not None and "/" not in ref.name:
            try:
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                             os.O_CLOEXEC, 0o600)
            except FileExistsError:
                pass                    # (not a new file after all: as below)
            else:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fchmod(fd, ref.mode & 0o777)
                finally:
                    os.close(fd)
                self.held[ref.sha] = (dest, ref.size)
                return
        if "/" in ref.name:
            # (A name with no directory in it is in ``base`` itself: nothing
            # to resolve or make, which a compile's every result would pay.)
            if not dest.parent.resolve().is_relative_to(base):
                raise ValueError(f"{ref.name!r} leaves the working directory")
            dest.parent.mkdir(parents=True, exist_ok=True)
        elif not base.is_dir():
            base.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.crc-tmp"
        placed = False
        try:
            if data is not None:
                with open(tmp, "wb") as out:
                    out.write(data)
            elif not self.store.take(ref.sha, str(tmp)):
                placed = self.held.get(ref.sha)              # (put in place once already)
                if self.store.has(ref.sha) or placed is None:
                    source = self.store.path(ref.sha)
                else:
                    source = placed[0]
                    if hash_file(source)[0] != ref.sha:      # (changed since)
                        raise FileNotFoundError(f"{ref.name}: its content is gone from "
                                                "this client")
                with open(source, "rb") as src, open(tmp, "wb") as out:
                    while block := src.read(1 << 20):
                        out.write(block)
            os.chmod(tmp, ref.mode & 0o777)
            os.replace(tmp, dest)
            placed = True
        finally:
            if not placed:
                tmp.unlink(missing_ok=True)
        self.held[ref.sha] = (dest, ref.size)
