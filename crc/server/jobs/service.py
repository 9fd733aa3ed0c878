"""The server's job service: ties the parts of running build jobs to a
``MeshServer`` and owns what they share.

Attached to a server (``JobService(server, config)``), it plays three parts,
all inside the server's event loop, each in its own module:

* **every server** samples its load and floods reports (``reports``); relays
  answer and cache file transfers passing through (``crc.jobs.transfer``);
* **entry** (the server a client submitted to) picks where each job runs and
  remembers where it went (``entry``);
* **executor** (the server a job runs on) fetches its files, runs it, streams
  output back and returns the outcome and produced files (``executor``), and
  keeps each run's result until the client acknowledges it, replaying it to
  a client that lost its connection (``replay``, over ``results``).

Here: the configuration, the work and state directories, the file store,
result store and sweepers, the wiring of frame kinds to the parts, sending,
the store's budget, and shutdown. Nothing here blocks or starts a thread:
child pipes and exits are selector events like sockets.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ...jobs.compilers import installed
from ...jobs.files import Sweeper
from ...jobs.leftovers import mark_owner, sweep_stale
from ...jobs.load import LoadReport, LoadTable
from ...jobs.store import BlobStore
from ...jobs.transfer import Transfers, cached_by_relays
from ...jobs.wire import DEFAULT_MAX_JOBS, Kind, frame, unpack, unpack_view
from ...net import Connection
from ...protocol import Extension, ProtocolError
from ...routing import Host
from ..links import Role
from ..server import MeshServer
from .cache import DEFAULT_ENTRIES, CompileCache
from .entry import Entry
from .executor import Executor, Run
from .jobdir import Fingerprint
from .frames import parse_offsets
from .replay import Replays, expiry_period
from .reports import LoadReports
from .results import ResultStore

log = logging.getLogger("crc.jobs.service")     # the name its log lines have always had

#: Our temporary work directory's name starts so (``leftovers`` finds them).
TEMP_PREFIX = "crc-server-"

__all__ = ["JobConfig", "JobService", "Run"]


@dataclass
class JobConfig:
    slots: int = os.cpu_count() or 1
    work_dir: Path | None = None            # default: a fresh temporary directory
    load_interval: float = 2.0
    stale_after: float | None = None        # default: 3 x load_interval
    max_file: int = 1 << 30                 # bytes per required / returned file
    max_output: int = 64 << 20              # bytes of stdout + stderr per job
    max_runtime: float = 3600.0             # seconds; a job's own timeout may be shorter
    max_jobs_per_client: int = DEFAULT_MAX_JOBS   # unfinished runs a client may have through us
    #: Where results (and the file store) are kept; default: in ``work_dir``.
    #: Results there survive a restart of the server with the same directory.
    state_dir: Path | None = None
    result_ttl: float = 24 * 3600.0         # seconds an unclaimed result is kept
    #: Bytes the file store may hold; past it, files no job needs are evicted.
    store_max: int | None = 4 << 30
    #: ``{id: path}`` of the compilers jobs may ask for by id (meshcc);
    #: None: those found on PATH at start (``crc.jobs.compilers.installed``).
    compilers: dict[str, str] | None = None
    #: Compile cache entries kept (``crc.server.jobs.cache``).
    cache_max: int = DEFAULT_ENTRIES

    def __post_init__(self) -> None:
        if self.stale_after is None:
            self.stale_after = 3 * self.load_interval


class JobService:
    def __init__(self, server: MeshServer, config: JobConfig | None = None) -> None:
        self.server = server
        self.config = config or JobConfig()
        # Clients hold their submissions within this (crc/client/jobs/engine.py).
        server.hello_fields["max_jobs"] = str(self.config.max_jobs_per_client)
        self.loop = server.loop
        self.me = server.id
        self.compilers = (dict(self.config.compilers) if self.config.compilers is not None
                          else installed())
        self.compiler_ids = tuple(sorted(self.compilers))
        self._own_root = self.config.work_dir is None
        root = self.config.work_dir or Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{server.id}-"))
        self.root = Path(root)
        self.state_root = Path(self.config.state_dir) if self.config.state_dir else self.root
        self.store = BlobStore(self.state_root / "blobs", max_blob=self.config.max_file,
                               max_bytes=self.config.store_max)
        self.cache = CompileCache(self.state_root / "cache", self.store, self.config.cache_max)
        self.sweeper = Sweeper(self.loop, self.root / "jobs-trash")
        self._clear_leftovers()
        self.results_sweeper = Sweeper(self.loop, self.state_root / "results" / "trash")
        self.results = ResultStore(self.state_root / "results", self.results_sweeper)
        kept = self.results.load()
        if kept:
            log.info("%s: %d job result(s) kept in %s can be fetched", server.name, kept,
                     self.results.root)
        self.transfers = Transfers(self.me, self.store, self.send,
                                   known=lambda host: self.server.routes.known(host))
        self.reports = LoadReports(self)
        self.entry = Entry(self)
        self.executor = Executor(self)
        self.replays = Replays(self)
        on = server.extension_handlers
        on[Kind.LOAD] = self.reports.on_load
        on[Kind.LOAD_QUERY] = self.reports.on_load_query
        on[Kind.SUBMIT] = self.entry.on_submit
        on[Kind.RUN] = self.executor.on_run
        on[Kind.CANCEL] = self._on_cancel
        on[Kind.INPUT] = self.executor.on_input
        on[Kind.WANT] = self._on_want
        on[Kind.DATA] = self._on_data
        on[Kind.MISSING] = self._on_missing
        on[Kind.FETCH] = self._on_fetch
        on[Kind.RESULT_ACK] = self.replays.on_result_ack
        taps = server.extension_taps
        taps[Kind.WANT] = self._tap_want
        taps[Kind.DONE] = self.entry.tap_result
        taps[Kind.FAILED] = self.entry.tap_result
        taps[Kind.FETCH] = self._tap_fetch
        taps[Kind.RUN] = self.executor.tap_run
        taps[Kind.SUBMIT] = self._tap_submit
        server.job_kinds.update(Kind)
        server.departure_listeners.append(self._on_departure)
        server.close_listeners.append(self.close)
        server.extension_link_listeners.append(self.reports.on_link_up)
        self.reports.tick()
        self.loop.call_later(expiry_period(self.config.result_ttl), self._expire)

    def _clear_leftovers(self) -> None:
        """What a server killed outright left: the job directories in our work
        directory (their jobs died with it), and other servers' temporary
        directories whose process is gone. Removed in the background."""
        if self._own_root:
            mark_owner(self.root)
            stale = sweep_stale(TEMP_PREFIX, self.sweeper.discard, self.root.parent)
            if stale:
                log.info("%s: removing %d temporary director(y/ies) of servers that were killed",
                         self.server.name, stale)
        jobs = self.root / "jobs"
        if jobs.exists():
            log.info("%s: removing job directories left in %s by an earlier run",
                     self.server.name, jobs)
            self.sweeper.discard(jobs)

    def __repr__(self) -> str:
        return (f"<JobService {self.server.name} running={self.running} "
                f"queued={len(self.executor.queue)}>")

    # -- what the parts hold, as one service shows it ------------------------------------

    @property
    def running(self) -> int:
        return self.executor.running

    @property
    def runs(self) -> dict[str, Run]:
        return self.executor.runs

    @property
    def origins(self) -> dict[int, int]:
        return self.executor.origins

    @property
    def cancels_refused(self) -> int:
        return self.executor.cancels_refused

    @property
    def linked(self) -> dict[str, Fingerprint]:
        return self.executor.linked

    @property
    def dispatched(self) -> dict[str, tuple[int, int]]:
        return self.entry.dispatched

    @property
    def table(self) -> LoadTable:
        return self.reports.table

    @property
    def fetches_served(self) -> int:
        return self.replays.fetches_served

    def report(self) -> LoadReport:
        return self.reports.report()

    def with_compiler(self, header: dict, argv: list[str]) -> list[str]:
        """``argv`` with its program replaced by our path of the compiler the
        job names by id (meshcc's compiles); ``ProtocolError`` if we have none."""
        wanted = header.get("compiler")
        if wanted is None:
            return argv
        path = self.compilers.get(wanted) if isinstance(wanted, str) else None
        if path is None:
            raise ProtocolError(f"this server does not have the compiler asked for "
                                f"(id {str(wanted)[:20]})")
        if any(a.startswith(("-save-temps", "--save-temps")) for a in argv):
            return [path, *argv[1:]]
        # Stages joined by pipes, not temporary files: the same object, one
        # file fewer made and removed per compile. (A driver option: not in
        # the debug information's producer string nor in -frecord-gcc-switches;
        # first, so that no "--" can make it a file name.)
        return [path, "-pipe", *argv[1:]]

    def eligible(self) -> list[LoadReport]:
        return self.reports.eligible()

    # -- sending -------------------------------------------------------------------

    def send(self, msg: Extension) -> bool:
        """Send a job frame on its way; one addressed to us is handled on the
        next turn of the loop (entry and executor on one server)."""
        if msg.dest == self.me:
            self.loop.call_soon(self._handle, None, msg)
            return True
        return self.server.send_extension(msg)

    def _handle(self, conn: Connection | None, msg: Extension) -> None:
        handler = self.server.extension_handlers.get(msg.kind)
        if handler is not None:
            handler(conn, msg)

    def to_client(self, client: int, kind: Kind, header: dict, body: bytes = b"",
                  bulk: bool = False) -> None:
        self.send(frame(kind, self.me, client, header, body, bulk=bulk))

    # -- frames that concern two parts ---------------------------------------------------

    def _on_cancel(self, conn: Connection | None, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        target = header.get("id")
        if not isinstance(target, str):
            raise ProtocolError("CANCEL without a job id")
        if msg.dest != 0:
            self.executor.cancel(msg.source, target)     # from an entry: the run is here
        else:
            self.entry.cancel(msg.source, target)        # from our client: pass it on

    def _on_fetch(self, conn: Connection | None, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        run_id = header.get("id")
        if not isinstance(run_id, str) or not run_id:
            raise ProtocolError("FETCH without a job id")
        offsets = parse_offsets(header.get("offsets"))
        if msg.dest == 0:
            self.entry.fetch_for_client(conn, msg.source, run_id, header.get("server"), offsets)
        else:
            self.replays.on_fetch(conn, msg, run_id, header, offsets)

    def _tap_fetch(self, conn: Connection, msg: Extension) -> bool:
        """A FETCH passing through must come from a server: a client sends its
        own to its server (destination 0), which vouches for who asks."""
        if conn.peer.role is not Role.SERVER:
            log.warning("%s: dropping a FETCH from %r addressed past its server",
                        self.server.name, conn)
            return True
        return False

    def _tap_submit(self, conn: Connection, msg: Extension) -> bool:
        """A SUBMIT is for the client's own server (destination 0) only; one
        addressed past it would reach another server over a server link."""
        raise ProtocolError("SUBMIT addressed past the client's own server")

    def _on_departure(self, gone: list[Host]) -> None:
        ids = {h.id for h in gone}
        for host_id in ids:
            self.reports.forget(host_id)
            self.transfers.holder_lost(host_id)
        self.entry.on_departure(gone)
        self.executor.clients_left(ids)

    def _expire(self) -> None:
        """Periodic: delete results nobody fetched within ``result_ttl``."""
        if self.loop.stopping:
            return
        ttl = self.config.result_ttl
        now = time.time()
        self.replays.expire(now, ttl)
        self.entry.expire(now, ttl)
        self.loop.call_later(expiry_period(ttl), self._expire)

    # -- files -------------------------------------------------------------------------

    def _on_want(self, conn: Connection | None, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        self.transfers.want(msg.source, self.me, header)

    def _tap_want(self, conn: Connection, msg: Extension) -> bool:
        """A WANT passing through: answer it here (we cache what we relay)."""
        try:
            header, _ = unpack(msg.payload)
        except ProtocolError:
            return False
        size = header.get("size")
        if not isinstance(size, int) or not cached_by_relays(size):
            return False
        self.transfers.want(msg.source, msg.dest, header)
        return True

    def _on_data(self, conn: Connection | None, msg: Extension) -> None:
        header, body = unpack_view(msg.payload)
        self.transfers.on_data(header, body)

    def _on_missing(self, conn: Connection | None, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        self.transfers.on_missing(header)

    def trim_store(self) -> None:
        """Keep the store within ``--store-max``: evict least recently used
        blobs that no live job, transfer or unclaimed result needs."""
        if not self.store.over_budget():
            return
        needed = self.executor.needed() | self.results.referenced()
        freed = self.store.trim(needed.__contains__, self.sweeper.discard)
        if freed:
            log.info("%s: file store over %d bytes (--store-max): evicted %d bytes of files "
                     "no job needs", self.server.name, self.store.max_bytes, freed)

    # -- shutdown ------------------------------------------------------------------------

    def close(self) -> None:
        """Kill running jobs and remove what we keep on disk (if we made it)."""
        if self.server.graceful:
            self.reports.leaving()      # (before the ended jobs' results)
        self.executor.close()
        self.results.close()
        self.sweeper.close()
        self.results_sweeper.close()
        self.cache.close()
        for sha in list(self.store.partials):
            self.store.abandon(sha)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
