"""Content-addressed file store: blobs named by their SHA-256.

A server keeps the files it has received, produced or relayed here, so a
file with the same content never crosses a link twice, within a budget
(``--store-max``): past it, the least recently used blobs that no job or
unclaimed result needs are evicted (``trim``). Blobs arrive in
order, chunk by chunk, into a ``Partial`` that hashes as it writes; only a
complete blob whose hash matches its name is committed (renamed into place),
so a half-received or corrupted file is never served.

Files only: no sockets, no frames, no loop. What to fetch and from whom is
``transfer``'s; deleting an evicted blob is the caller's ``discard``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Callable

_SHA = re.compile(r"^[0-9a-f]{64}$")
BLOCK = 1 << 20


def valid_sha(sha: object) -> bool:
    return isinstance(sha, str) and bool(_SHA.match(sha))


def hash_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


class StoreError(Exception):
    pass


class Partial:
    def __init__(self, path: Path, sha: str, size: int) -> None:
        self.path, self.sha, self.size = path, sha, size
        self.received = 0
        self._hash = hashlib.sha256()
        self._file = open(path, "wb")

    @property
    def complete(self) -> bool:
        return self.received >= self.size

    def write(self, offset: int, data: bytes) -> None:
        if offset != self.received:
            raise StoreError(f"blob {self.sha[:12]}: chunk at {offset}, expected {self.received}")
        if self.received + len(data) > self.size:
            raise StoreError(f"blob {self.sha[:12]}: more data than its size {self.size}")
        self._file.write(data)
        self._file.flush()            # relays read what has arrived while it arrives
        self._hash.update(data)
        self.received += len(data)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class BlobStore:
    """Blobs under ``root``; at most ``max_bytes`` of them (None: no bound) once
    ``trim`` has run: least recently used first, never one the caller keeps."""

    def __init__(self, root: Path, max_blob: int = 1 << 30,
                 max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        self.max_blob = max_blob
        self.max_bytes = max_bytes
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for leftover in tmp.iterdir():        # partial blobs of a process that was killed
            leftover.unlink(missing_ok=True)
        self.partials: dict[str, Partial] = {}
        # Fan-out directories known to exist: a mkdir per stored blob costs a
        # path lookup under the store's directory lock, milliseconds on a
        # busy disk, for nothing once the directory is there.
        self._made: set[str] = set()
        #: Every stored blob's size, least recently used first.
        self.sizes: OrderedDict[str, int] = OrderedDict()
        self.total = 0
        self._load()

    def __repr__(self) -> str:
        return (f"<BlobStore {self.root} blobs={len(self.sizes)} bytes={self.total} "
                f"partial={len(self.partials)}>")

    def _load(self) -> None:
        """What an earlier run left, oldest first (by modification time)."""
        found = []
        for fan in self.root.iterdir():
            if len(fan.name) != 2 or not fan.is_dir():
                continue
            self._made.add(fan.name)
            for entry in os.scandir(fan):
                if valid_sha(entry.name):
                    st = entry.stat()
                    found.append((st.st_mtime, entry.name, st.st_size))
        for _, sha, size in sorted(found):
            self.sizes[sha] = size
            self.total += size

    def path(self, sha: str) -> Path:
        return Path(self.file(sha))

    def file(self, sha: str) -> str:
        """Where blob ``sha`` is (as ``path``; a string, for the hot paths)."""
        if sha in self.sizes:
            self.sizes.move_to_end(sha)       # used: the last to be evicted
        return f"{self._root}/{sha[:2]}/{sha}"

    def _stored(self, sha: str, size: int) -> None:
        if sha not in self.sizes:
            self.total += size
        self.sizes[sha] = size
        self.sizes.move_to_end(sha)

    def over_budget(self) -> bool:
        return self.max_bytes is not None and self.total > self.max_bytes

    def trim(self, keep: Callable[[str], bool], discard: Callable[[Path], None]) -> int:
        """Evict least recently used blobs that ``keep`` does not claim until
        the store is down to 90 % of ``max_bytes``; each goes to ``discard``
        (a sweeper: deleting a large file is not for the event loop). Bytes
        freed."""
        if not self.over_budget():
            return 0
        target = int(self.max_bytes * 0.9)
        freed = 0
        for sha, size in list(self.sizes.items()):
            if self.total <= target:
                break
            if keep(sha) or sha in self.partials:
                continue
            del self.sizes[sha]
            self.total -= size
            freed += size
            discard(self.root / sha[:2] / sha)
        return freed

    def _destination(self, sha: str) -> Path:
        """Where blob ``sha`` goes, its fan-out directory made if need be."""
        if sha[:2] not in self._made:
            (self.root / sha[:2]).mkdir(exist_ok=True)
            self._made.add(sha[:2])
        return self.path(sha)

    def _publish(self, source: Path, sha: str) -> None:
        """Rename ``source`` into place as blob ``sha``."""
        size = source.stat().st_size
        try:
            os.replace(source, self._destination(sha))
        except FileNotFoundError:      # its fan-out directory was removed behind our back
            self._made.discard(sha[:2])
            os.replace(source, self._destination(sha))
        self._stored(sha, size)

    def has(self, sha: str) -> bool:
        if not valid_sha(sha):
            return False
        if sha in self.sizes:
            self.sizes.move_to_end(sha)       # used: the last to be evicted
        return os.path.isfile(f"{self._root}/{sha[:2]}/{sha}")

    def size(self, sha: str) -> int:
        return self.path(sha).stat().st_size

    def read(self, sha: str, offset: int, length: int) -> bytes:
        with open(self.path(sha), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def add_file(self, source: Path, move: bool = False) -> tuple[str, int]:
        """Hash ``source`` and keep a copy; returns (sha, size). With ``move`` the
        file itself is taken (hard-linked: its directory is about to go)."""
        sha, size = hash_file(source)
        if not self.has(sha):
            dest = self._destination(sha)
            if move:
                try:
                    os.link(source, dest)
                    self._stored(sha, size)
                    return sha, size
                except OSError:
                    pass        # another file system: copy
            tmp = self.root / "tmp" / f"{sha}.{os.getpid()}.add"
            with open(source, "rb") as src, open(tmp, "wb") as out:
                while block := src.read(BLOCK):
                    out.write(block)
            self._publish(tmp, sha)
        return sha, size

    def add_bytes(self, sha: str, data: bytes) -> None:
        """Keep ``data`` as blob ``sha``; ``StoreError`` if it is not that blob.
        A fetch of it already under way (a relay's for others, a job's) is
        left to finish and store it: ending it here would fail every job
        waiting on it ("transfer state lost")."""
        if self.has(sha) or sha in self.partials:
            return
        partial = self.begin(sha, len(data))
        try:
            partial.write(0, data)
        except BaseException:
            self.abandon(sha)
            raise
        self.commit(partial)

    def take(self, sha: str, dest: str) -> bool:
        """Move blob ``sha`` out of the store to ``dest`` (a rename: no copy, no
        new file); False, the store unchanged, if it cannot be (not here,
        another file system)."""
        if sha not in self.sizes:
            return False
        try:
            os.rename(self.file(sha), dest)
        except OSError:
            return False
        self.total -= self.sizes.pop(sha, 0)
        return True

    def forget(self, sha: str) -> None:
        """Drop a blob (one whose file was changed behind the store's back)."""
        if valid_sha(sha):
            self.path(sha).unlink(missing_ok=True)
            self.total -= self.sizes.pop(sha, 0)

    def begin(self, sha: str, size: int) -> Partial:
        """Start (or continue) receiving blob ``sha`` of ``size`` bytes."""
        if not valid_sha(sha):
            raise StoreError(f"{sha!r} is not a SHA-256 name")
        if not 0 <= size <= self.max_blob:
            raise StoreError(f"blob of {size} bytes exceeds the limit of {self.max_blob}")
        partial = self.partials.get(sha)
        if partial is None:
            partial = Partial(self.root / "tmp" / f"{sha}.part", sha, size)
            self.partials[sha] = partial
        return partial

    def commit(self, partial: Partial) -> None:
        """Verify and publish a complete blob; ``StoreError`` if its hash is wrong."""
        partial.close()
        self.partials.pop(partial.sha, None)
        if partial._hash.hexdigest() != partial.sha:
            partial.path.unlink(missing_ok=True)
            raise StoreError(f"blob {partial.sha[:12]} arrived with a different hash; discarded")
        self._publish(partial.path, partial.sha)

    def abandon(self, sha: str) -> None:
        partial = self.partials.pop(sha, None)
        if partial is not None:
            partial.close()
            partial.path.unlink(missing_ok=True)
