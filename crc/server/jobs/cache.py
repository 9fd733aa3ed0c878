"""The compile cache: a finished compile's produced files, found again by
the key of its inputs.

A compile job (one naming a ``compiler``) may ask for the cache with
``cache: true``. Its key is computed here, never taken from the client,
from everything that can change the output: the compiler's identity, the
command line, each required file's name, digest and mode (the preprocessed
source), and the directory debug information names — so no client can
file an object under someone else's key. The entry sends every such job to the same server among those that can run it
(rendezvous hashing over the key and the server ids, ``home``), so a key
compiled anywhere on the mesh is found again whichever client asks. There
the executor looks the key up before fetching anything: a hit answers at
once with the files the first run produced, nothing runs; a miss runs, and
a run that exits 0 having printed nothing is remembered.

Entries are small files under the server's state directory (they survive
a restart, like results); the objects themselves are blobs of the server's
store, bounded by ``--store-max`` with the store's eviction — an entry
whose blob was evicted is a miss and is removed. ``--cache-max`` bounds
the number of entries (oldest used first out).

Knows the blob store and the file system; no sockets, no job state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

from ...jobs.store import BlobStore

log = logging.getLogger("crc.jobs.service")     # the job service's log: one name for its parts

#: Entries kept, unless the server says otherwise (``--cache-max``).
DEFAULT_ENTRIES = 100_000


def home(key: str, servers: Iterable[int]) -> int | None:
    """The server a key belongs to: the highest hash of key and server id
    (a server joining or leaving moves only the keys that were its own)."""
    best, chosen = b"", None
    for server in servers:
        score = hashlib.sha256(f"{key}/{server}".encode()).digest()
        if score > best:
            best, chosen = score, server
    return chosen


def cache_key(header: dict) -> str | None:
    """The key of a SUBMIT or RUN header that asks for the cache (None if it
    does not, or is not a compile)."""
    if header.get("cache") is not True or not isinstance(header.get("compiler"), str):
        return None
    files = sorted((f.get("name"), f.get("sha"), f.get("mode")) for f in header.get("files", ())
                   if isinstance(f, dict))
    material = [header["compiler"], header.get("argv"), header.get("shell"), files,
                header.get("debug_dir")]
    if "rooted" in header:                       # (keys of earlier compiles unchanged)
        material.append(header["rooted"])
    text = json.dumps(material, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class CompileCache:
    def __init__(self, root: Path, store: BlobStore, max_entries: int = DEFAULT_ENTRIES) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self.stored = 0
        # Least recently used first; the files on disk are the truth, this
        # only orders eviction (rebuilt from the directory at start).
        self._order: OrderedDict[str, None] = OrderedDict()
        for path in sorted(self.root.glob("*/*"), key=lambda p: p.stat().st_mtime):
            self._order[path.name] = None

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lookup(self, key: str) -> list[dict] | None:
        """The files a run with this key produced, if they are all still here."""
        try:
            files = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            self.misses += 1
            return None
        if not isinstance(files, list) or not all(
                isinstance(f, dict) and isinstance(f.get("sha"), str) and
                self.store.has(f["sha"]) for f in files):
            self.forget(key)
            self.misses += 1
            return None
        self.hits += 1
        self._order.pop(key, None)
        self._order[key] = None
        return files

    def remember(self, key: str, files: list[dict]) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{key}.tmp")
        try:
            path.parent.mkdir(exist_ok=True)
            tmp.write_text(json.dumps(files, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot keep compile cache entry %s: %s", key[:16], exc)
            return
        self.stored += 1
        self._order.pop(key, None)
        self._order[key] = None
        while len(self._order) > self.max_entries:
            oldest, _ = self._order.popitem(last=False)
            self.forget(oldest)

    def forget(self, key: str) -> None:
        self._order.pop(key, None)
        try:
            self._path(key).unlink()
        except OSError:
            pass
