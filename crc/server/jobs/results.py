"""Durable job results on the executing server.

Every run a server executes gets a ``Record``: its output as it is produced,
and, once the run is over, the frame that ended it (DONE with the exit status
and the produced files, or FAILED with the reason). The record stays until
the submitting client acknowledges that it has everything (RESULT_ACK), or
until it expires unclaimed (``--result-ttl``). A client whose connection
dropped asks for it again with FETCH, naming how much output it already has,
and gets the rest: nothing twice, nothing missing.

On disk, in ``<state dir>/results``:

* ``journal``: an append-only log. When a run ends, one entry holds who ran
  it, its final frame and (if it fits in ``SPILL`` bytes) its whole output;
  when its result is acknowledged or expires, a second, tiny entry says it is
  gone. Two ``write`` calls per job into one open file: creating a file per
  job costs about 0.35 ms on an ext4 disk, which would halve the job rate.
* ``KEY.1`` and ``KEY.2`` (``KEY`` a hash of the run id): the stdout and
  stderr of a run whose output outgrew ``SPILL``, written as they arrive.

While a run goes on, its output (up to ``SPILL``) is kept in memory. The
journal is rewritten with only what is still kept when a start finds it, and
when what it holds for results already gone outgrows both ``COMPACT_MIN``
and twice what it holds for kept ones (so rewriting costs, on average, a
bounded number of bytes per byte written). Entries are ``u32 length | u32
header length | JSON header | output bytes``; a torn entry at the end (the
server was killed while writing it) is cut off at the next start.

Writes go into the page cache: microseconds, nothing the event loop waits
on. There is no ``fsync``: a server that is killed keeps what it wrote, a
machine that loses power may lose the last seconds of it. A run still going
when its server died has no entry: after a restart it is unknown, and a
client asking for it hears so. Removing spilled files renames them into a
trash folder that a child process empties (``Sweeper``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ...jobs.files import Sweeper

log = logging.getLogger("crc.jobs.results")     # the name its log lines have always had

STREAMS = (1, 2)
#: Output up to this many bytes (both streams) stays in memory while the run
#: goes on and is written with its outcome; more goes to files of its own.
SPILL = 64 * 1024
#: The journal is rewritten once entries of results already gone take more
#: than this, and more than twice what the kept ones take.
COMPACT_MIN = 16 << 20

_U32 = struct.Struct(">I")


def record_key(run_id: str) -> str:
    """A file name for a run id (ids are client-chosen text)."""
    return hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


@dataclass
class Record:
    """One run's result on its executing server."""

    id: str
    client: int
    entry: int
    label: str
    #: Bytes of output kept per stream (index 1 stdout, 2 stderr).
    sizes: list[int] = field(default_factory=lambda: [0, 0, 0])
    #: The frame that ended the run: (kind, header); None while it runs.
    outcome: tuple[int, dict[str, Any]] | None = None
    finished: float = 0.0                      # wall-clock time it ended
    #: Where the output is: in ``memory`` (while it runs), in files of its
    #: own (``spilled``), or in the journal from ``at`` (stdout, then stderr).
    memory: dict[int, bytearray] | None = field(
        default_factory=lambda: {1: bytearray(), 2: bytearray()})
    spilled: bool = False
    writers: dict[int, BinaryIO] = field(default_factory=dict)
    at: int = -1
    entry_size: int = 0                        # bytes of its journal entry
    broken: bool = False                       # output could not be written
    #: A FETCH being answered (``replay.Replay``); live output waits for it.
    replay: Any = None

    @property
    def done(self) -> bool:
        return self.outcome is not None

    @property
    def key(self) -> str:
        return record_key(self.id)

    def __repr__(self) -> str:
        state = "running" if self.outcome is None else f"ended ({self.outcome[0]})"
        return f"<Record {self.id} client={self.client} {state} out={self.sizes[1:]}>"


class ResultStore:
    def __init__(self, root: Path, sweeper: Sweeper) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweeper = sweeper
        #: Finished runs by run id (live ones belong to their ``Run``).
        self.finished: dict[str, Record] = {}
        self.path = self.root / "journal"
        self._journal: BinaryIO | None = None
        self._reader = -1
        self.size = 0                 # bytes in the journal
        self.dead = 0                 # ... of them for results already gone
        self.compactions = 0
        self._warned = False

    def __repr__(self) -> str:
        return (f"<ResultStore {self.root} finished={len(self.finished)} "
                f"journal={self.size} dead={self.dead}>")

    def file(self, record: Record, stream: int) -> Path:
        return self.root / f"{record.key}.{stream}"

    # -- a run in progress ---------------------------------------------------------

    def new(self, run_id: str, client: int, entry: int, label: str) -> Record:
        return Record(run_id, client, entry, label)

    def append(self, record: Record, stream: int, data: bytes) -> int:
        """Keep ``data`` of ``stream``; returns its offset within the stream."""
        offset = record.sizes[stream]
        record.sizes[stream] = offset + len(data)
        if record.memory is not None and not record.spilled:
            if record.sizes[1] + record.sizes[2] <= SPILL:
                record.memory[stream] += data
                return offset
            self._spill(record)
        if record.broken:
            return offset
        try:
            self._writer(record, stream).write(data)
        except OSError as exc:
            self._broken(record, exc)
        return offset

    def _writer(self, record: Record, stream: int) -> BinaryIO:
        writer = record.writers.get(stream)
        if writer is None:
            writer = open(self.file(record, stream), "wb", buffering=0)
            record.writers[stream] = writer
        return writer

    def _spill(self, record: Record) -> None:
        """The output outgrew memory: what it holds goes to files, and from
        now on everything does."""
        memory, record.memory, record.spilled = record.memory, None, True
        try:
            for stream in STREAMS:
                if memory[stream]:
                    self._writer(record, stream).write(memory[stream])
        except OSError as exc:
            self._broken(record, exc)

    def _broken(self, record: Record, exc: OSError) -> None:
        # Live output still flows; only a later FETCH misses what is not kept.
        log.warning("cannot keep the output of job %s on disk: %s", record.id, exc)
        record.broken = True

    def finish(self, record: Record, kind: int, header: dict[str, Any]) -> None:
        """The run ended with the frame ``kind``/``header``: keep it."""
        self._close_writers(record)
        record.outcome = (int(kind), dict(header))
        record.finished = time.time()
        self.finished[record.id] = record
        body = _body(record)
        at, record.entry_size = self._append(_meta(record), body)
        if at >= 0 and record.memory is not None:
            record.at = at
            record.memory = None          # read back from the journal from now on

    def _close_writers(self, record: Record) -> None:
        for writer in record.writers.values():
            writer.close()
        record.writers.clear()

    # -- the journal ---------------------------------------------------------------------

    def _open(self) -> None:
        if self._journal is None:
            self._journal = open(self.path, "ab", buffering=0)
            self.size = self._journal.tell()
            self._reader = os.open(self.path, os.O_RDONLY)

    def _append(self, meta: dict[str, Any], body: bytes = b"") -> tuple[int, int]:
        """Write an entry; returns where its body starts and its length
        ((-1, 0) if it could not be written)."""
        entry, body_at = _entry(meta, body)
        try:
            self._open()
            view = memoryview(entry)
            while view:
                view = view[self._journal.write(view):]
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot write the job results journal %s: %s; results are kept "
                            "in memory only", self.path, exc)
            return -1, 0
        start = self.size
        self.size += len(entry)
        return start + body_at, len(entry)

    # -- reading, removing --------------------------------------------------------------

    def read(self, record: Record, stream: int, offset: int, length: int) -> bytes:
        if offset >= record.sizes[stream]:
            return b""
        length = min(length, record.sizes[stream] - offset)
        try:
            if record.memory is not None:
                return bytes(record.memory[stream][offset:offset + length])
            if record.spilled:
                with open(self.file(record, stream), "rb") as f:
                    f.seek(offset)
                    return f.read(length)
            if record.at >= 0 and self._reader >= 0:
                start = record.at + (record.sizes[1] if stream == 2 else 0)
                return os.pread(self._reader, length, start + offset)
        except OSError:
            pass
        return b""

    def remove(self, record: Record) -> None:
        """Forget ``record`` and delete its output (files soon, by the sweeper)."""
        self._close_writers(record)
        record.replay = None
        if self.finished.get(record.id) is record:
            del self.finished[record.id]
            at, size = self._append({"op": "gone", "id": record.id})
            if at >= 0:
                self.dead += record.entry_size + size
        if record.spilled:
            for stream in STREAMS:
                path = self.file(record, stream)
                if os.path.lexists(path):
                    self.sweeper.discard(path)
        if self.dead > COMPACT_MIN and self.dead > 2 * (self.size - self.dead):
            self.compact()

    def expired(self, now: float, ttl: float) -> list[Record]:
        return [r for r in self.finished.values() if now - r.finished >= ttl]

    def referenced(self) -> set[str]:
        """SHA-256 names of the produced files that kept results list."""
        shas = set()
        for record in self.finished.values():
            if record.outcome is not None:
                for item in record.outcome[1].get("files") or ():
                    if isinstance(item, dict) and isinstance(item.get("sha"), str):
                        shas.add(item["sha"])
        return shas

    # -- rewriting, starting up ----------------------------------------------------------------

    def compact(self) -> None:
        """Rewrite the journal with only the results still kept."""
        tmp = self.root / "journal.new"
        try:
            with open(tmp, "wb") as out:
                size = 0
                placed: list[tuple[Record, int, int]] = []
                for record in self.finished.values():
                    body = _body(record)
                    if record.memory is None and not record.spilled and record.at >= 0:
                        total = record.sizes[1] + record.sizes[2]
                        body = os.pread(self._reader, total, record.at) if total else b""
                        if len(body) != total:
                            raise OSError(f"the journal lost the output of job {record.id}")
                    entry, body_at = _entry(_meta(record), body)
                    out.write(entry)
                    placed.append((record, size + body_at, len(entry)))
                    size += len(entry)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot rewrite the job results journal %s: %s", self.path, exc)
            tmp.unlink(missing_ok=True)
            return
        self._close_journal()
        for record, at, entry_size in placed:
            if not record.spilled:
                record.at = at
                record.memory = None
            record.entry_size = entry_size
        self.size, self.dead = size, 0
        self.compactions += 1
        self._open()

    def load(self) -> int:
        """Take up the results a previous run of the server left; returns how
        many. Files of runs that never ended, and a torn last entry, go."""
        for leftover in self.root.glob(f"{self.sweeper.trash.name}*"):
            if leftover.parent == self.root and leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
        (self.root / "journal.new").unlink(missing_ok=True)
        kept: dict[str, Record] = {}
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        pos, skipped = 0, 0
        while pos + 8 <= len(data):
            (length,) = _U32.unpack_from(data, pos)
            (head_len,) = _U32.unpack_from(data, pos + 4)
            end = pos + 4 + length
            if length < 4 or end > len(data) or head_len > length - 4:
                break                  # the framing itself is gone: nothing after it is sure
            try:
                meta = json.loads(data[pos + 8:pos + 8 + head_len])
                if meta["op"] == "done":
                    record = _record(meta, body=length - 4 - head_len)
                    record.at = pos + 8 + head_len
                    kept[record.id] = record
                elif meta["op"] == "gone":
                    kept.pop(str(meta["id"]), None)
                else:
                    raise ValueError(f"unknown op {meta['op']!r}")
            except (ValueError, KeyError, TypeError, IndexError, OverflowError,
                    RecursionError, UnicodeDecodeError) as exc:
                # One bad entry, framed like the others: skip it, keep the rest.
                skipped += 1
                log.warning("job results journal %s: skipping the unreadable entry at byte %d "
                            "(%s)", self.path, pos, exc)
            pos = end
        if pos < len(data):
            log.warning("job results journal %s: dropping %d unreadable byte(s) at its end",
                        self.path, len(data) - pos)
        del data
        self.finished.update(kept)
        names = {"journal", *(f"{r.key}.{s}" for r in kept.values() if r.spilled
                              for s in STREAMS)}
        for path in self.root.iterdir():
            if path.is_file() and path.name not in names:
                path.unlink(missing_ok=True)        # spilled output of a run that never ended
        if self.path.exists():
            self._open()
            self.compact()
        return len(kept)

    def _close_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._reader >= 0:
            os.close(self._reader)
            self._reader = -1

    def close(self) -> None:
        for record in self.finished.values():
            self._close_writers(record)
        self._close_journal()


def _record(meta: dict[str, Any], body: int) -> Record:
    """A kept result from its journal entry (``body``: the bytes of output
    the entry holds); ``ValueError`` for anything that does not add up."""
    out = [int(n) for n in meta["out"]]
    spilled = bool(meta.get("spilled"))
    if len(out) != 2 or min(out) < 0 or max(out) > 1 << 40 \
            or (not spilled and sum(out) != body):
        raise ValueError(f"output sizes {meta['out']!r} do not match the entry")
    header = meta["header"]
    if not isinstance(header, dict):
        raise ValueError("the final frame's header is not an object")
    record = Record(str(meta["id"]), int(meta["client"]), int(meta["entry"]),
                    str(meta.get("label", "")), memory=None)
    record.outcome = (int(meta["kind"]), header)
    record.finished = float(meta["finished"])
    record.sizes = [0, *out]
    record.spilled = spilled
    return record


def _head(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass")


def _entry(meta: dict[str, Any], body: bytes) -> tuple[bytes, int]:
    """A journal entry, and where its body starts within it."""
    head = _head(meta)
    entry = b"".join((_U32.pack(4 + len(head) + len(body)), _U32.pack(len(head)), head, body))
    return entry, 8 + len(head)


def _body(record: Record) -> bytes:
    """The output a record holds in memory (stdout, then stderr)."""
    if record.memory is None:
        return b""
    return bytes(record.memory[1] + record.memory[2])


def _meta(record: Record) -> dict[str, Any]:
    assert record.outcome is not None
    return {"op": "done", "id": record.id, "client": record.client, "entry": record.entry,
            "label": record.label, "finished": record.finished, "kind": record.outcome[0],
            "header": record.outcome[1], "out": record.sizes[1:], "spilled": record.spilled}
