"""The server's job service: load reports, dispatch, execution, file relay.

Attached to a ``MeshServer`` (``JobService(server, config)``), it plays three
parts, all inside the server's event loop:

* **every server** samples its load and floods a report across mesh links
  when it changes meaningfully and at least every ``load_interval`` seconds;
  it keeps the table of every server's latest report. Relays answer and cache
  file transfers passing through (``transfer``).
* **entry** (the server a client submitted to): picks where each job runs
  (``scheduler.pick``, a pinned name, or every server), tells the client,
  sends the job on, remembers where it went, and reports a job lost with a
  server that left the mesh.
* **executor** (the server a job runs on): fetches the job's files, runs it in
  a fresh directory with at most ``slots`` jobs at once, streams output back,
  returns the exit status and the files the job created or changed, and
  cleans up. It keeps each run's output and outcome (``results``) until the
  client acknowledges them, so a client that lost its connection fetches
  them again (FETCH) instead of losing them; unclaimed results expire after
  ``result_ttl`` seconds. Job processes die with the server, even a killed
  one (``process.GroupReaper``).

An entry remembers the jobs it dispatched per client and job id, so a SUBMIT
sent again after a reconnect is answered, not run twice.

Nothing here blocks or starts a thread: child pipes and exits are selector
events like sockets.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import shutil
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from ...net import Connection, Timer
from ...protocol import Extension, ProtocolError
from ...routing import Host
from ..links import Role
from ..server import MeshServer
from ...jobs.files import FileRef, Sweeper
from .jobdir import Fingerprint, JobDir, JobDirError
from ...jobs.leftovers import mark_owner, sweep_stale
from ...jobs.load import LoadReport, LoadSampler, LoadTable, should_send
from ...jobs.process import STDERR, ChildProcess, GroupReaper
from ...jobs.rakefile import bad_relative_path
from .results import STREAMS, Record, ResultStore
from ...jobs.scheduler import Ledger, by_name, pick
from ...jobs.store import BlobStore, valid_sha
from ...jobs.transfer import Transfers, cached_by_relays
from ...jobs.wire import (DEFAULT_MAX_JOBS, STDIN_ACK_EVERY, STDIN_WINDOW, Kind, frame, unpack,
                   unpack_view)

log = logging.getLogger("crc.jobs.service")     # the name its log lines have always had

#: Output is sent again (FETCH) in frames of this size, at most
#: ``REPLAY_BUDGET`` bytes per turn of the loop, pausing while the link
#: towards the client holds ``REPLAY_BACKLOG`` unsent bytes.
REPLAY_CHUNK = 64 * 1024
REPLAY_BUDGET = 1 << 20
REPLAY_BACKLOG = 4 << 20
#: Jobs an entry remembers for answering a SUBMIT sent again (at most, and
#: for at most ``result_ttl`` seconds).
SUBMITTED_MAX = 100_000
#: A FETCH for a server we do not know waits for our view of the mesh to
#: settle: this long (at least two load intervals) after our start or after
#: a server link came up, and at most ``FETCH_HOLD_MAX`` in all.
VIEW_SETTLE = 3.0
FETCH_HOLD_MAX = 30.0
#: Our temporary work directory's name starts so (``leftovers`` finds them).
TEMP_PREFIX = "crc-server-"


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

    def __post_init__(self) -> None:
        if self.stale_after is None:
            self.stale_after = 3 * self.load_interval


@dataclass
class Run:
    """A job on its executing server."""

    id: str
    client: int
    entry: int
    argv: list[str]
    files: list[FileRef]
    stdin: bool
    timeout: float
    label: str
    state: str = "fetching"           # fetching -> ready -> running -> done
    missing: int = 0
    error: str = ""
    output_bytes: int = 0
    started: float = 0.0
    process: ChildProcess | None = None
    jobdir: JobDir | None = None
    timer: Timer | None = None
    pending_input: list[tuple[bytes, bool]] = field(default_factory=list)
    stdin_taken: int = 0                  # bytes of stdin the process took (or dropped)
    stdin_acked: int = 0                  # ... of which the client has been told
    record: Record | None = None          # its output and outcome, kept (``results``)

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.state} client={self.client} {self.label[:30]!r}>"


def _run_id(header: dict) -> str:
    """A frame's run id; ``ProtocolError`` for anything but text."""
    run_id = header.get("id")
    if not isinstance(run_id, str):
        raise ProtocolError("job frame without a text 'id'")
    return run_id


def _utf8(text: str, what: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"{what} is not valid UTF-8") from None
    if "\0" in text:
        raise ProtocolError(f"{what} contains a NUL byte")
    return text


def parse_command(header: dict) -> tuple[list[str], str]:
    """(argv, label) from a SUBMIT/RUN header; ``ProtocolError`` if unusable."""
    argv, shell = header.get("argv"), header.get("shell")
    if isinstance(shell, str) and shell.strip():
        return ["/bin/sh", "-c", _utf8(shell, "the command")], shell
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        return [_utf8(a, f"argument {i + 1}") for i, a in enumerate(argv)], shlex.join(argv)
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
    raw = header.get("files", [])
    if not isinstance(raw, list):
        raise ProtocolError("job 'files' is not a list")
    files, seen = [], set()
    for item in raw:
        try:
            ref = FileRef.from_json(item)
        except (KeyError, TypeError, ValueError):
            raise ProtocolError(f"bad file entry {item!r}") from None
        why = bad_relative_path(ref.name)
        if why:
            raise ProtocolError(why)
        if not valid_sha(ref.sha):
            raise ProtocolError(f"file {ref.name!r} has no valid SHA-256")
        if not 0 <= ref.size <= max_file:
            raise ProtocolError(f"file {ref.name!r} is {ref.size} bytes; the limit is {max_file}")
        if ref.name in seen:
            raise ProtocolError(f"file {ref.name!r} is listed twice")
        seen.add(ref.name)
        files.append(ref)
    return files


class JobService:
    def __init__(self, server: MeshServer, config: JobConfig | None = None) -> None:
        self.server = server
        self.config = config or JobConfig()
        # Clients hold their submissions within this (crc/jobs/client.py).
        server.hello_fields["max_jobs"] = str(self.config.max_jobs_per_client)
        self.loop = server.loop
        self.me = server.id
        self._own_root = self.config.work_dir is None
        root = self.config.work_dir or Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{server.id}-"))
        self.root = Path(root)
        self.state_root = Path(self.config.state_dir) if self.config.state_dir else self.root
        self.store = BlobStore(self.state_root / "blobs", max_blob=self.config.max_file,
                               max_bytes=self.config.store_max)
        self.sweeper = Sweeper(self.loop, self.root / "jobs-trash")
        self._clear_leftovers()
        self.results_sweeper = Sweeper(self.loop, self.state_root / "results" / "trash")
        self.results = ResultStore(self.state_root / "results", self.results_sweeper)
        kept = self.results.load()
        if kept:
            log.info("%s: %d job result(s) kept in %s can be fetched", server.name, kept,
                     self.results.root)
        self.reaper = GroupReaper(self.loop, server.name)
        #: (client, job id) -> (the runs it was dispatched as, wall-clock time).
        self.submitted: OrderedDict[tuple[int, str], tuple[list[dict], float]] = OrderedDict()
        self.fetches_served = 0              # FETCHes answered here as the executor
        self.transfers = Transfers(self.me, self.store, self._send)
        self.sampler = LoadSampler()
        self.table = LoadTable(self.config.stale_after)
        self.ledger = Ledger()
        self.runs: dict[str, Run] = {}
        self.queue: list[str] = []
        self.origins: dict[int, int] = {}            # entry id -> jobs received from it
        self.cancels_refused = 0                     # CANCELs from neither client nor entry
        self.dispatched: dict[str, tuple[int, int]] = {}   # run id -> (client, server)
        #: Blobs hard-linked into a live job directory, with their fingerprint then.
        self.linked: dict[str, Fingerprint] = {}
        #: FETCHes for servers not known yet (we just started or rejoined):
        #: (since, client, run id, server, offsets).
        self._unknown_fetches: list[tuple[float, int, str, int, list[int]]] = []
        self._fetch_timer: Timer | None = None
        self._view_changed = self.loop.time()
        self._seq = 0
        self._last_sent: LoadReport | None = None
        self._last_sent_at = 0.0
        self._report_soon: Timer | None = None
        self._cpu = (0.0, 0.0, 0.0, os.cpu_count() or 1)
        on = server.extension_handlers
        on[Kind.LOAD] = self._on_load
        on[Kind.LOAD_QUERY] = self._on_load_query
        on[Kind.SUBMIT] = self._on_submit
        on[Kind.RUN] = self._on_run
        on[Kind.CANCEL] = self._on_cancel
        on[Kind.INPUT] = self._on_input
        on[Kind.WANT] = self._on_want
        on[Kind.DATA] = self._on_data
        on[Kind.MISSING] = self._on_missing
        on[Kind.FETCH] = self._on_fetch
        on[Kind.RESULT_ACK] = self._on_result_ack
        taps = server.extension_taps
        taps[Kind.WANT] = self._tap_want
        taps[Kind.DONE] = self._tap_result
        taps[Kind.FAILED] = self._tap_result
        taps[Kind.FETCH] = self._tap_fetch
        taps[Kind.RUN] = self._tap_run
        taps[Kind.SUBMIT] = self._tap_submit
        server.job_kinds.update(Kind)
        server.departure_listeners.append(self._on_departure)
        server.close_listeners.append(self.close)
        server.extension_link_listeners.append(self._on_link_up)
        self._tick()
        self.loop.call_later(self._expiry_period(), self._expire)

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
        running = sum(1 for r in self.runs.values() if r.state == "running")
        return f"<JobService {self.server.name} running={running} queued={len(self.queue)}>"

    # -- sending -------------------------------------------------------------------

    def _send(self, msg: Extension) -> bool:
        if msg.dest == self.me:
            self._dispatch_local(msg)
            return True
        return self.server.send_extension(msg)

    def _dispatch_local(self, msg: Extension) -> None:
        """A frame we address to ourselves (entry and executor on one server)."""
        self.loop.call_soon(self._handle, None, msg)

    def _handle(self, conn: Connection | None, msg: Extension) -> None:
        handler = self.server.extension_handlers.get(msg.kind)
        if handler is not None:
            handler(conn, msg)

    def _to_client(self, client: int, kind: Kind, header: dict, body: bytes = b"",
                   bulk: bool = False) -> None:
        self._send(frame(kind, self.me, client, header, body, bulk=bulk))

    # -- load ------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return sum(1 for r in self.runs.values() if r.state == "running")

    def report(self) -> LoadReport:
        cpu, mem, load1, ncpu = self._cpu
        return LoadReport(self.me, self.server.name, cpu, mem, load1, ncpu, self.config.slots,
                          self.running, len(self.queue), dict(self.origins), self._seq)

    def _tick(self) -> None:
        """Periodic: sample the machine, maybe flood a report."""
        if self.loop.stopping:
            return
        self._cpu = self.sampler.sample()
        self._maybe_report()
        self._trim_store()             # (received and relayed files count too)
        self.loop.call_later(min(1.0, self.config.load_interval / 2), self._tick)

    def _changed(self) -> None:
        """Jobs started or ended: report soon (coalesced)."""
        if self._report_soon is None:
            self._report_soon = self.loop.call_later(0.02, self._flush_report)

    def _flush_report(self) -> None:
        self._report_soon = None
        self._maybe_report()

    def _maybe_report(self) -> None:
        now = time.monotonic()
        self._seq += 1
        new = self.report()
        self.table.update(new, now)
        if should_send(self._last_sent, new, now - self._last_sent_at, self.config.load_interval):
            self._last_sent, self._last_sent_at = new, now
            self.server.flood_extension(frame(Kind.LOAD, self.me, 0, {}, new.to_bytes()))

    def _on_link_up(self, conn: Connection) -> None:
        """A new mesh server link: tell it every fresh report we hold, ours first."""
        if conn.peer.role is not Role.SERVER:
            return
        self._view_changed = self.loop.time()     # what lies beyond it is arriving
        self._maybe_report()
        for entry in sorted(self.table.fresh(), key=lambda e: e.report.server != self.me):
            report = entry.report
            conn.send(frame(Kind.LOAD, report.server, 0, {}, report.to_bytes()))

    def _on_load(self, conn: Connection | None, msg: Extension) -> None:
        _, body = unpack(msg.payload)
        try:
            report = LoadReport.from_bytes(body)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"bad load report: {exc}") from None
        if report.server != msg.source or report.server == self.me:
            return
        if self.table.update(report):
            exclude = conn.peer.peer_id if conn is not None else None
            self.server.flood_extension(msg, exclude=exclude)

    def _on_load_query(self, conn: Connection | None, msg: Extension) -> None:
        now = time.monotonic()
        rows = []
        for entry in sorted(self.table.entries.values(), key=lambda e: e.report.name):
            data = {k: v for k, v in vars(entry.report).items() if k != "origins"}
            data["age"] = round(entry.age(now), 2)
            data["stale"] = entry.age(now) > self.table.stale_after
            rows.append(data)
        self._to_client(msg.source, Kind.LOAD_TABLE, {"servers": rows})

    def eligible(self) -> list[LoadReport]:
        return [e.report for e in self.table.fresh()]

    # -- entry: submit, dispatch, cancel, loss ------------------------------------------

    def _on_submit(self, conn: Connection | None, msg: Extension) -> None:
        if conn is None or conn.peer.role is not Role.CLIENT or conn.peer.peer_id != msg.source:
            raise ProtocolError("job submitted by something other than an adjacent client")
        header, _ = unpack(msg.payload)
        client = msg.source
        job = header.get("job")
        if not isinstance(job, str) or not job:
            raise ProtocolError("SUBMIT without a job id")
        _utf8(job, "the job id")
        refused = self.server.job_refusal(conn)
        if refused:
            log.warning("%s: refusing job %s from client %d at %s: %s", self.server.name,
                        job[:40], client, conn.peer_address, refused)
            self._to_client(client, Kind.FAILED, {"id": job, "error": refused})
            return
        known = self.submitted.get((client, job))
        if known is not None:
            # Sent again after a reconnect: it went out already; say where.
            log.info("%s: job %s from client %d was dispatched already; not again",
                     self.server.name, job[:40], client)
            self._to_client(client, Kind.ACCEPTED, {"job": job, "runs": known[0]})
            return
        try:
            parse_command(header)
            parse_files(header, self.config.max_file)
        except ProtocolError as exc:
            self._to_client(client, Kind.FAILED, {"id": job, "error": str(exc)})
            return
        candidates = self.eligible()
        if header.get("all"):
            targets = sorted(candidates, key=lambda r: r.name)
        elif isinstance(header.get("on"), str) and header["on"]:
            chosen = by_name(candidates, header["on"])
            if not chosen:
                known = ", ".join(sorted(r.name for r in candidates)) or "none"
                self._to_client(client, Kind.FAILED, {
                    "id": job, "error": f"no server named {header['on']!r} (known: {known})"})
                return
            if len(chosen) > 1:
                ids = ", ".join(str(r.server) for r in sorted(chosen, key=lambda r: r.server))
                self._to_client(client, Kind.FAILED, {
                    "id": job, "error": f"{len(chosen)} servers are named {header['on']!r} "
                                        f"(ids {ids}); give --on one of the ids"})
                return
            targets = chosen
        else:
            chosen = pick(candidates, self.ledger, self.me)
            targets = [chosen] if chosen else []
        if not targets:
            self._to_client(client, Kind.FAILED, {"id": job, "error": "no server can run jobs"})
            return
        unfinished = sum(1 for c, _ in self.dispatched.values() if c == client)
        quota = self.config.max_jobs_per_client
        if unfinished + len(targets) > quota:
            log.warning("%s: client %d has %d unfinished jobs; refusing job %s "
                        "(--max-jobs-per-client %d)", self.server.name, client, unfinished,
                        job[:40], quota)
            self._to_client(client, Kind.FAILED, {
                "id": job, "quota": True,
                "error": f"job quota: {unfinished} unfinished job(s), at most "
                         f"{quota} per client on this server"})
            return
        runs = []
        for target in targets:
            # Ids, not names, keep the copies of a runall apart: two servers
            # may share a name.
            run_id = f"{job}@{target.server}" if header.get("all") else job
            self.ledger.record(target.server)
            self.dispatched[run_id] = (client, target.server)
            runs.append({"id": run_id, "server": target.server, "name": target.name})
        self._to_client(client, Kind.ACCEPTED, {"job": job, "runs": runs})
        self.submitted[(client, job)] = (runs, time.time())
        while len(self.submitted) > SUBMITTED_MAX:
            self.submitted.popitem(last=False)
        for run in runs:
            body = dict(header, id=run["id"], client=client, entry=self.me)
            self._send(frame(Kind.RUN, self.me, run["server"], body))

    def _on_cancel(self, conn: Connection | None, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        target = header.get("id")
        if not isinstance(target, str):
            raise ProtocolError("CANCEL without a job id")
        if msg.dest != 0:
            # From an entry server (perhaps us): the run is here. Only the
            # entry that dispatched it, or its own client, may cancel it.
            run = self.runs.get(target)
            if run is not None and msg.source not in (run.entry, run.client):
                log.warning("%s: ignoring a CANCEL of %s from %d: neither its client nor "
                            "its entry", self.server.name, target[:40], msg.source)
                self.cancels_refused += 1
                return
            self._cancel_here(target)
            return
        # From our client (addressed to its adjacent server): pass it on to
        # wherever each run of that job went.
        for run_id, (client, server) in list(self.dispatched.items()):
            if client == msg.source and (run_id == target or run_id.startswith(target + "@")):
                self._send(frame(Kind.CANCEL, self.me, server, {"id": run_id}))

    def _tap_result(self, conn: Connection, msg: Extension) -> bool:
        """DONE / FAILED passing through on its way to our client."""
        try:
            header, _ = unpack(msg.payload)
        except ProtocolError:
            return False
        if isinstance(header.get("id"), str):
            self.dispatched.pop(header["id"], None)
        return False

    def _on_departure(self, gone: list[Host]) -> None:
        ids = {h.id for h in gone}
        for host_id in ids:
            self.table.forget(host_id)
            self.transfers.holder_lost(host_id)
        for run_id, (client, server) in list(self.dispatched.items()):
            if server in ids and client not in ids:
                name = next((h.name for h in gone if h.id == server), str(server))
                del self.dispatched[run_id]
                self._to_client(client, Kind.FAILED, {
                    "id": run_id, "lost": True,
                    "error": f"server {name} left the mesh while running the job"})
            elif client in ids:
                del self.dispatched[run_id]
        for run in self.runs.values():
            if run.client in ids:
                # It may come back (a reconnect) and fetch the result; else
                # the result expires. A run still fetching files from it fails
                # (lost: nothing ran) through the transfer's failure.
                log.info("%s: client of %r left; the job goes on, its result is kept",
                         self.server.name, run)

    # -- executor: run -----------------------------------------------------------------

    def _refuse_run(self, conn: Connection | None, msg: Extension) -> bool:
        """Refuse a RUN that must not run here nor pass on (``run_refusal``):
        the client hears why; True if refused."""
        refused = self.server.run_refusal(conn)
        if not refused:
            return False
        header, _ = unpack(msg.payload)
        run_id, client = header.get("id"), header.get("client")
        log.warning("%s: refusing job %r for client %r: %s", self.server.name, run_id, client,
                    refused)
        if isinstance(run_id, str) and isinstance(client, int):
            self._to_client(client, Kind.FAILED, {"id": run_id, "error": refused})
        return True

    def _tap_submit(self, conn: Connection, msg: Extension) -> bool:
        """A SUBMIT is for the client's own server (destination 0) only; one
        addressed past it would reach another server over a server link."""
        raise ProtocolError("SUBMIT addressed past the client's own server")

    def _tap_run(self, conn: Connection, msg: Extension) -> bool:
        """A RUN passing through: it goes on only over links it may cross."""
        return self._refuse_run(conn, msg)

    def _on_run(self, conn: Connection | None, msg: Extension) -> None:
        if self._refuse_run(conn, msg):
            return
        header, _ = unpack(msg.payload)
        run_id, client, entry = header.get("id"), header.get("client"), header.get("entry")
        if not isinstance(run_id, str) or not isinstance(client, int) or not isinstance(entry, int):
            raise ProtocolError("RUN without id, client or entry")
        self.origins[entry] = self.origins.get(entry, 0) + 1
        try:
            argv, label = parse_command(header)
            files = parse_files(header, self.config.max_file)
            timeout = parse_timeout(header, self.config.max_runtime)
        except ProtocolError as exc:
            self._to_client(client, Kind.FAILED, {"id": run_id, "error": str(exc)})
            return
        run = Run(run_id, client, entry, argv, files, bool(header.get("stdin")),
                  min(float(timeout), self.config.max_runtime), label)
        live = self.runs.get(run_id)
        kept = live.record if live is not None else self.results.finished.get(run_id)
        if live is not None or kept is not None:
            owner = live.client if live is not None else kept.client
            if owner == client:
                # Sent again (a client's SUBMIT repeated through another entry):
                # one run per id; the client fetches its result.
                log.info("%s: job %s from client %d is here already; not running it again",
                         self.server.name, run_id, client)
            else:
                self._to_client(client, Kind.FAILED, {"id": run_id, "error": "duplicate job id"})
            return
        run.record = self.results.new(run_id, client, entry, label)
        self.runs[run_id] = run
        self.queue.append(run_id)
        log.info("%s: job %s from client %d queued: %s", self.server.name, run_id, client, label)
        run.missing = len(files)
        for ref in files:
            self.transfers.fetch(ref.sha, ref.size, client,
                                 lambda sha, err, run=run, ref=ref: self._file_ready(run, ref, err))
        if not files:
            self._file_ready(run, None, None)
        self._changed()

    def _file_ready(self, run: Run, ref: FileRef | None, error: str | None) -> None:
        if run.state != "fetching":
            return
        if error:
            # With its client gone, nothing ran: a rebuild may run it elsewhere.
            self._abort(run, f"required file {ref.name if ref else '?'}: {error}",
                        lost=not self.server.routes.known(run.client))
            return
        if ref is not None:
            run.missing -= 1
        if run.missing <= 0:
            run.state = "ready"
            self._start_ready()

    def _start_ready(self) -> None:
        for run_id in list(self.queue):
            if self.running >= self.config.slots:
                return
            run = self.runs.get(run_id)
            if run is not None and run.state == "ready":
                self.queue.remove(run_id)
                self._start(run)

    def _start(self, run: Run) -> None:
        try:
            run.jobdir = JobDir.create(self.root / "jobs", run.id)
            for ref in run.files:
                shared = self.linked.get(ref.sha)
                placed = run.jobdir.place(ref, self.store.path(ref.sha), may_link=shared is None,
                                          expect=shared)
                if shared is None and ref.name in run.jobdir.linked:
                    self.linked[ref.sha] = placed
            self.reaper.ensure()
            run.process = ChildProcess(
                self.loop, run.argv, str(run.jobdir.path), stdin=run.stdin,
                on_output=lambda stream, data, run=run: self._output(run, stream, data),
                on_exit=lambda code, run=run: self._exited(run, code), reaper=self.reaper,
                on_stdin_taken=lambda n, run=run: self._stdin_taken(run, n))
        except (OSError, ValueError, JobDirError) as exc:    # ValueError: a NUL in argv
            self._abort(run, f"cannot start: {exc}")
            return
        run.state = "running"
        run.started = time.monotonic()
        run.timer = self.loop.call_later(run.timeout, self._timed_out, run)
        for data, eof in run.pending_input:
            run.process.write_stdin(data, eof)
        run.pending_input.clear()
        self._to_client(run.client, Kind.STARTED, {"id": run.id, "server": self.me,
                                                   "name": self.server.name, "pid": run.process.pid})
        self._changed()

    def _output(self, run: Run, stream: int, data: bytes) -> None:
        run.output_bytes += len(data)
        if run.output_bytes > self.config.max_output:
            if not run.error:
                run.error = f"output exceeds {self.config.max_output} bytes; job killed"
                run.process.kill()
            return
        record = run.record
        offset = self.results.append(record, stream, data)
        if record.replay is None:          # else the replay sends it, in order
            self._to_client(run.client, Kind.OUTPUT,
                            {"id": run.id, "stream": stream, "offset": offset}, data)

    def _timed_out(self, run: Run) -> None:
        if run.state == "running" and run.process is not None:
            run.error = run.error or f"timed out after {run.timeout:g} s; job killed"
            run.process.kill()

    def _exited(self, run: Run, code: int) -> None:
        if run.timer is not None:
            run.timer.cancel()
        files, warnings = [], []
        if run.jobdir is not None:
            try:
                produced, warnings = run.jobdir.produced()
                for sha in run.jobdir.tainted:
                    log.info("%s: job %s changed linked blob %s in place; dropped from the store",
                             self.server.name, run.id, sha[:12])
                    self.store.forget(sha)
                for name, path, mode in produced:
                    size = path.stat().st_size
                    if size > self.config.max_file:
                        # The job did not deliver what it made: it failed.
                        run.error = run.error or (
                            f"produced file {name} is {size} bytes, over the "
                            f"{self.config.max_file} byte limit (--max-file); not returned")
                        continue
                    sha, size = self.store.add_file(path, move=True)
                    files.append(FileRef(name, sha, size, mode).to_json())
            except OSError as exc:
                run.error = run.error or f"could not collect produced files: {exc}"
            self._discard(run)
        for w in warnings:
            self._output(run, STDERR, f"crc: {w}\n".encode())
        seconds = round(time.monotonic() - run.started, 3)
        log.info("%s: job %s exited %d in %.3f s (%d file(s) back)", self.server.name, run.id,
                 code, seconds, len(files))
        self._finish(run)
        self._conclude(run, Kind.DONE, {
            "id": run.id, "exit": code, "error": run.error, "files": files,
            "server": self.me, "name": self.server.name, "seconds": seconds})
        self._trim_store()            # (its files are kept: its result lists them)

    def _conclude(self, run: Run, kind: Kind, header: dict) -> None:
        """The run is over: keep its final frame and send it (after a replay
        in progress, which sends it itself)."""
        record = run.record
        if record is None:
            self._to_client(run.client, kind, header)
            return
        self.results.finish(record, kind, header)
        if record.replay is None:
            self._to_client(run.client, kind, header)

    def _trim_store(self) -> None:
        """Keep the store within ``--store-max``: evict least recently used
        blobs that no live job, transfer or unclaimed result needs."""
        if not self.store.over_budget():
            return
        needed = set(self.linked) | self.results.referenced()
        for run in self.runs.values():
            needed.update(ref.sha for ref in run.files)
        freed = self.store.trim(needed.__contains__, self.sweeper.discard)
        if freed:
            log.info("%s: file store over %d bytes (--store-max): evicted %d bytes of files "
                     "no job needs", self.server.name, self.store.max_bytes, freed)

    def _discard(self, run: Run) -> None:
        """Hand a finished job's directory to the sweeper; its links are free again."""
        assert run.jobdir is not None
        run.jobdir.release()
        for sha in run.jobdir.linked.values():
            self.linked.pop(sha, None)
        self.sweeper.discard(run.jobdir)

    def _finish(self, run: Run) -> None:
        run.state = "done"
        self.runs.pop(run.id, None)
        if run.id in self.queue:
            self.queue.remove(run.id)
        self.dispatched.pop(run.id, None)
        self._changed()
        self.loop.call_soon(self._start_ready)

    def _abort(self, run: Run, error: str, lost: bool = False) -> None:
        if run.state == "running" and run.process is not None:
            run.error = error
            run.process.kill()          # _exited reports it
            return
        if run.jobdir is not None:
            self._discard(run)
        self._finish(run)
        header = {"id": run.id, "error": error}
        if lost:
            header["lost"] = True
        self._conclude(run, Kind.FAILED, header)

    def _cancel_here(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is not None:
            log.info("%s: job %s cancelled", self.server.name, run_id)
            self._abort(run, "cancelled")

    def _stdin_taken(self, run: Run, n: int) -> None:
        """The process took ``n`` more bytes of its stdin: tell the client
        (every ``STDIN_ACK_EVERY`` bytes, and whenever our buffer is empty),
        which keeps at most ``STDIN_WINDOW`` bytes unacknowledged."""
        run.stdin_taken += n
        stdin = run.process.stdin if run.process is not None else None
        drained = stdin is None or not stdin.buffer
        if run.stdin_taken - run.stdin_acked >= STDIN_ACK_EVERY or drained:
            run.stdin_acked = run.stdin_taken
            self._to_client(run.client, Kind.INPUT_ACK, {"id": run.id, "taken": run.stdin_taken})

    def _on_input(self, conn: Connection | None, msg: Extension) -> None:
        header, body = unpack(msg.payload)
        run = self.runs.get(_run_id(header))
        if run is None or run.client != msg.source:
            return
        eof = bool(header.get("eof"))
        stdin = run.process.stdin if run.process is not None else None
        held = len(stdin.buffer) if stdin is not None else sum(
            len(data) for data, _ in run.pending_input)
        if held + len(body) > 2 * STDIN_WINDOW:
            # The client ignores INPUT_ACK: what it sends would pile up here.
            log.warning("%s: client %d sent job %s standard input far beyond its window; "
                        "stopping the job", self.server.name, msg.source, run.id)
            self._abort(run, f"standard input sent beyond the {STDIN_WINDOW} byte window "
                             "(the client does not wait for INPUT_ACK)")
            return
        if run.process is not None:
            run.process.write_stdin(body, eof)
        else:
            run.pending_input.append((body, eof))

    # -- durable results: FETCH, replay, RESULT_ACK, expiry ------------------------------

    def _on_fetch(self, conn: Connection | None, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        run_id = header.get("id")
        if not isinstance(run_id, str) or not run_id:
            raise ProtocolError("FETCH without a job id")
        offsets = _offsets(header.get("offsets"))
        if msg.dest == 0:
            self._fetch_for_client(conn, msg.source, run_id, header.get("server"), offsets)
            return
        # From an entry server (perhaps us), on behalf of its client.
        if conn is not None and conn.peer.role is not Role.SERVER:
            raise ProtocolError("FETCH for a job from something other than a server")
        client = header.get("client")
        if not isinstance(client, int):
            raise ProtocolError("FETCH without a client")
        run = self.runs.get(run_id)
        record = run.record if run is not None else self.results.finished.get(run_id)
        if record is None or record.client != client:
            self._to_client(client, Kind.FAILED, {
                "id": run_id, "lost": True, "error": f"unknown job (not on server "
                                                     f"{self.server.name}, or expired)"})
            return
        self.fetches_served += 1
        log.info("%s: client %d fetches job %s from offsets %s", self.server.name, client,
                 run_id, offsets)
        if run is not None and run.state == "running" and run.process is not None:
            self._to_client(client, Kind.STARTED, {"id": run.id, "server": self.me,
                                                   "name": self.server.name,
                                                   "pid": run.process.pid})
        self._replay(_Replay(record, client, [0, *(min(o, record.sizes[s])
                                                   for o, s in zip(offsets, STREAMS))]))

    def _fetch_for_client(self, conn: Connection | None, client: int, run_id: str,
                          server: object, offsets: list[int]) -> None:
        """Our client asks for a run's results again: pass it on to where the
        run is (and watch for that server leaving, as for a new job)."""
        if conn is None or conn.peer.role is not Role.CLIENT or conn.peer.peer_id != client:
            raise ProtocolError("FETCH from something other than an adjacent client")
        if not isinstance(server, int) or server <= 0:
            raise ProtocolError("FETCH without the executing server's id")
        refused = self.server.job_refusal(conn)
        if refused:
            self._to_client(client, Kind.FAILED, {"id": run_id, "error": refused})
            return
        if server != self.me and not self.server.routes.known(server):
            if self._view_settling():
                # "Not known yet" is not "gone": we may have just started or
                # rejoined, and the registrations are still arriving.
                self._unknown_fetches.append((self.loop.time(), client, run_id, server, offsets))
                self._recheck_unknown_fetches()
                return
            self._to_client(client, Kind.FAILED, {
                "id": run_id, "lost": True,
                "error": f"server {server} left the mesh while running the job"})
            return
        self.dispatched[run_id] = (client, server)
        self._send(frame(Kind.FETCH, self.me, server,
                         {"id": run_id, "client": client, "offsets": offsets}))

    def _view_settling(self) -> bool:
        """Whether our view of the mesh may still be filling in: within
        ``settle`` seconds of our start or of a server link coming up, or while
        we are (re)joining through an uplink that has not taken us yet."""
        settle = max(VIEW_SETTLE, 2 * self.config.load_interval)
        if self.loop.time() < self._view_changed + settle:
            return True
        cfg = self.server.config
        joining = bool(cfg.connect) and cfg.rejoin and not self.server.ext_servers()
        return joining

    def _recheck_unknown_fetches(self) -> None:
        """FETCHes held for servers we did not know yet: on to the server once
        it is known, or a clear "lost" once our view has settled without it
        (or after ``FETCH_HOLD_MAX`` seconds in any case)."""
        if self._fetch_timer is not None:
            return
        held, self._unknown_fetches = self._unknown_fetches, []
        now = self.loop.time()
        for since, client, run_id, server, offsets in held:
            if self.server.routes.known(server):
                self.dispatched[run_id] = (client, server)
                self._send(frame(Kind.FETCH, self.me, server,
                                 {"id": run_id, "client": client, "offsets": offsets}))
            elif self._view_settling() and now - since < FETCH_HOLD_MAX:
                self._unknown_fetches.append((since, client, run_id, server, offsets))
            else:
                self._to_client(client, Kind.FAILED, {
                    "id": run_id, "lost": True,
                    "error": f"server {server} left the mesh while running the job"})
        if self._unknown_fetches:
            self._fetch_timer = self.loop.call_later(0.1, self._fetch_recheck_due)

    def _fetch_recheck_due(self) -> None:
        self._fetch_timer = None
        self._recheck_unknown_fetches()

    def _tap_fetch(self, conn: Connection, msg: Extension) -> bool:
        """A FETCH passing through must come from a server: a client sends its
        own to its server (destination 0), which vouches for who asks."""
        if conn.peer.role is not Role.SERVER:
            log.warning("%s: dropping a FETCH from %r addressed past its server",
                        self.server.name, conn)
            return True
        return False

    def _replay(self, replay: "_Replay") -> None:
        """Send the output a client lacks, then (once over) the final frame.
        Live output of the run waits in the file meanwhile, so the client sees
        every stream in order."""
        record = replay.record
        record.replay = replay
        self._replay_step(replay)

    def _replay_step(self, replay: "_Replay") -> None:
        record = replay.record
        if record.replay is not replay or self.loop.stopping:
            return                     # superseded by another FETCH, or removed
        first = self.server.routes.first_link(replay.client)
        conn = self.server.links.get(first) if first is not None else None
        if conn is None:
            record.replay = None       # gone again: it will ask once more
            return
        budget = REPLAY_BUDGET
        while budget > 0:
            if conn.buffered > REPLAY_BACKLOG:
                self.loop.call_later(0.01, self._replay_step, replay)
                return
            sent = 0
            for stream in STREAMS:
                offset = replay.offsets[stream]
                if offset >= record.sizes[stream]:
                    continue
                data = self.results.read(record, stream, offset, REPLAY_CHUNK)
                if not data:           # not on disk (a write failed): skip the gap
                    replay.offsets[stream] = record.sizes[stream]
                    continue
                self._to_client(replay.client, Kind.OUTPUT,
                                {"id": record.id, "stream": stream, "offset": offset}, data)
                replay.offsets[stream] = offset + len(data)
                sent += len(data)
            if not sent:
                break
            budget -= sent
        else:
            self.loop.call_soon(self._replay_step, replay)
            return
        record.replay = None           # caught up: live output flows again
        if record.outcome is not None:
            kind, header = record.outcome
            self._to_client(replay.client, Kind(kind), header)

    def _on_result_ack(self, conn: Connection | None, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        run_id = header.get("id")
        record = self.results.finished.get(run_id) if isinstance(run_id, str) else None
        if record is None or record.client != msg.source:
            return
        log.debug("%s: client %d has the result of job %s; deleted", self.server.name,
                  msg.source, run_id)
        self.results.remove(record)

    def _expiry_period(self) -> float:
        return max(0.05, min(60.0, self.config.result_ttl / 4))

    def _expire(self) -> None:
        """Periodic: delete results nobody fetched within ``result_ttl``."""
        if self.loop.stopping:
            return
        ttl = self.config.result_ttl
        now = time.time()
        expired = self.results.expired(now, ttl)
        if expired:
            produced: set[str] = set()
            for record in expired:
                log.info("%s: the result of job %s (client %d) expired unclaimed after %g s "
                         "(--result-ttl); deleted", self.server.name, record.id, record.client,
                         now - record.finished)
                produced |= _produced(record)
                self.results.remove(record)
            needed = self.results.referenced() | self.linked.keys() | {
                ref.sha for run in self.runs.values() for ref in run.files}
            for sha in produced - needed:
                self.store.forget(sha)
        while self.submitted:
            key, (_, when) = next(iter(self.submitted.items()))
            if now - when < ttl:
                break
            del self.submitted[key]
        self.loop.call_later(self._expiry_period(), self._expire)

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

    # -- shutdown ------------------------------------------------------------------------

    def close(self) -> None:
        """Kill running jobs and remove what we keep on disk (if we made it)."""
        for run in list(self.runs.values()):
            if run.process is not None:
                run.process.kill()
            if run.jobdir is not None:
                run.jobdir.remove()
            if run.record is not None and not run.record.done:
                self.results.finish(run.record, Kind.FAILED, {
                    "id": run.id, "lost": True,
                    "error": f"server {self.server.name} stopped while running the job"})
        self.runs.clear()
        self.reaper.close()
        self.results.close()
        self.sweeper.close()
        self.results_sweeper.close()
        for sha in list(self.store.partials):
            self.store.abandon(sha)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class _Replay:
    """A FETCH being answered: where each stream stands (index 1 and 2)."""

    record: Record
    client: int
    offsets: list[int]


def _offsets(value: object) -> list[int]:
    """The client's byte counts [stdout, stderr] from a FETCH (0 if absent)."""
    if isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return list(value)
    if value is None:
        return [0, 0]
    raise ProtocolError("FETCH 'offsets' is not a list of two byte counts")


def _produced(record: Record) -> set[str]:
    files = record.outcome[1].get("files") if record.outcome else None
    return {f["sha"] for f in files or () if isinstance(f, dict) and isinstance(f.get("sha"), str)}
