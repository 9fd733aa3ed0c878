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

Entries are lines of one append-only file under the server's state
directory, ``entries.log`` (they survive a restart, like results): a key
and its files' JSON, or a key and ``-`` when it goes. A file per entry cost
every compile a new inode (a third of a millisecond and more on ext4),
where a line costs one ``write``; the file is rewritten with only the live
entries when it holds more dead lines than live ones (and at start). The
entries are held in memory too (their JSON text: about 300 bytes each).
Entries of the earlier one-file-per-entry layout are taken over at start.
The objects themselves are blobs of the server's store, bounded by
``--store-max`` with the store's eviction — an entry whose blob was evicted
is a miss and is removed. ``--cache-max`` bounds the number of entries
(oldest used first out).

Knows the blob store and the file system; no sockets, no job state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
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


#: The entries' file, in the cache's directory.
LOG = "entries.log"
#: Dead lines the file may hold beyond its live ones before it is rewritten.
SLACK = 1000
#: Seconds before writing the file is tried again after it failed.
RETRY_WRITE = 60.0


class CompileCache:
    def __init__(self, root: Path, store: BlobStore, max_entries: int = DEFAULT_ENTRIES) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self.stored = 0
        #: key -> its files' JSON, least recently used first.
        self._order: OrderedDict[str, str] = OrderedDict()
        self._lines = 0                 # lines in the file, live or dead
        self._log = str(self.root / LOG)
        self._fd = -1
        self._failed_at: float | None = None    # when writing the file last failed
        self._load()

    def _load(self) -> None:
        taken = self._take_legacy()
        readable = True
        try:
            with open(self._log, "rb") as f:
                for raw in f:
                    self._lines += 1
                    key, _, text = raw.decode("utf-8", "replace").rstrip("\n").partition(" ")
                    if len(key) != 64 or not text:
                        continue                # (a line cut short by a crash)
                    self._order.pop(key, None)
                    if text != "-":
                        self._order[key] = text
        except FileNotFoundError:
            pass
        except OSError as exc:
            # Kept as it is (not rewritten empty): what this run adds is
            # appended, and a later start may read it all again.
            readable = False
            log.warning("cannot read the compile cache's entries (%s): %s; starting empty",
                        self._log, exc)
        for key, text in taken:
            self._order.pop(key, None)
            self._order[key] = text
        while len(self._order) > self.max_entries:
            self._order.popitem(last=False)
        if readable:
            self._rewrite()
        else:
            self._reopen()

    def _take_legacy(self) -> list[tuple[str, str]]:
        """Entries of the one-file-per-entry layout (``XX/KEY``), oldest
        first; their files and folders are removed."""
        found = []
        for path in self.root.glob("??/*"):
            try:
                found.append((path.stat().st_mtime, path.name, path.read_text()))
                path.unlink()
            except (OSError, UnicodeDecodeError):
                continue
        for folder in self.root.glob("??"):
            try:
                folder.rmdir()
            except OSError:
                pass
        taken = []
        for _, key, text in sorted(found):
            try:
                if len(key) == 64:
                    taken.append((key, json.dumps(json.loads(text), separators=(",", ":"))))
            except ValueError:
                continue
        return taken

    def _rewrite(self) -> None:
        """The file again, with the live entries only."""
        self.close()
        self._failed_at = time.monotonic()      # (until it worked)
        tmp = f"{self._log}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8", errors="surrogatepass") as f:
                f.writelines(f"{key} {text}\n" for key, text in self._order.items())
            os.replace(tmp, self._log)
            self._lines = len(self._order)
            self._fd = os.open(self._log, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self._failed_at = None
        except OSError as exc:
            log.warning("cannot write the compile cache's entries (%s): %s; kept in memory, "
                        "tried again in %.0f s", self._log, exc, RETRY_WRITE)

    def _reopen(self) -> None:
        try:
            self._fd = os.open(self._log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o644)
        except OSError as exc:
            self._failed_at = time.monotonic()
            log.warning("cannot write the compile cache's entries (%s): %s", self._log, exc)

    def _append(self, key: str, text: str) -> None:
        if self._fd < 0:
            if self._failed_at is None or time.monotonic() - self._failed_at < RETRY_WRITE:
                return
            self._rewrite()                     # (this entry is in memory: it goes too)
            return
        line = f"{key} {text}\n".encode("utf-8", "surrogatepass")
        try:
            written = os.write(self._fd, line)
        except OSError as exc:
            written = -1
            log.warning("cannot keep compile cache entry %s: %s", key[:16], exc)
        self._lines += 1
        if written != len(line):
            # Part of a line (a full disk?) would glue the next one to it:
            # the file is written again whole, now or once it can be.
            self._rewrite()
        elif self._lines > 2 * len(self._order) + SLACK:
            self._rewrite()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def lookup(self, key: str) -> list[dict] | None:
        """The files a run with this key produced, if they are all still here."""
        text = self._order.get(key)
        try:
            files = json.loads(text) if text is not None else None
        except ValueError:
            files = None
        if files is None:
            if text is not None:
                self.forget(key)
            self.misses += 1
            return None
        if not isinstance(files, list) or not all(
                isinstance(f, dict) and isinstance(f.get("sha"), str) and
                self.store.has(f["sha"]) for f in files):
            self.forget(key)
            self.misses += 1
            return None
        self.hits += 1
        self._order.move_to_end(key)
        return files

    def remember(self, key: str, files: list[dict]) -> None:
        text = json.dumps(files, separators=(",", ":"))
        self._order.pop(key, None)
        self._order[key] = text
        self.stored += 1
        self._append(key, text)
        while len(self._order) > self.max_entries:
            oldest, _ = self._order.popitem(last=False)
            self._append(oldest, "-")

    def forget(self, key: str) -> None:
        if self._order.pop(key, None) is not None:
            self._append(key, "-")
