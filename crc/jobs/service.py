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
  cleans up.

Nothing here blocks or starts a thread: child pipes and exits are selector
events like sockets.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..net import Connection, Timer
from ..protocol import Extension, ProtocolError
from ..routing import Host
from ..server.server import MeshServer, Role
from .jobdir import FileRef, JobDir, JobDirError, Sweeper
from .load import LoadReport, LoadSampler, LoadTable, should_send
from .process import STDERR, ChildProcess
from .rakefile import bad_relative_path
from .scheduler import Ledger, by_name, pick
from .store import BlobStore, valid_sha
from .transfer import Transfers, cached_by_relays
from .wire import Kind, frame, unpack, unpack_view

log = logging.getLogger(__name__)


@dataclass
class JobConfig:
    slots: int = os.cpu_count() or 1
    work_dir: Path | None = None            # default: a fresh temporary directory
    load_interval: float = 2.0
    stale_after: float | None = None        # default: 3 x load_interval
    max_file: int = 1 << 30                 # bytes per required / returned file
    max_output: int = 64 << 20              # bytes of stdout + stderr per job
    max_runtime: float = 3600.0             # seconds; a job's own timeout may be shorter
    max_jobs_per_client: int = 256          # unfinished jobs a client may have through us

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

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.state} client={self.client} {self.label[:30]!r}>"


def parse_command(header: dict) -> tuple[list[str], str]:
    """(argv, label) from a SUBMIT/RUN header; ``ProtocolError`` if unusable."""
    argv, shell = header.get("argv"), header.get("shell")
    if isinstance(shell, str) and shell.strip():
        return ["/bin/sh", "-c", shell], shell
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        return list(argv), shlex.join(argv)
    raise ProtocolError("job has neither a non-empty 'argv' list nor a 'shell' command")


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
        self.loop = server.loop
        self.me = server.id
        self._own_root = self.config.work_dir is None
        root = self.config.work_dir or Path(tempfile.mkdtemp(prefix=f"crc-{server.name}-"))
        self.root = Path(root)
        self.store = BlobStore(self.root / "blobs", max_blob=self.config.max_file)
        self.sweeper = Sweeper(self.loop, self.root / "jobs-trash")
        self.transfers = Transfers(self.me, self.store, self._send)
        self.sampler = LoadSampler()
        self.table = LoadTable(self.config.stale_after)
        self.ledger = Ledger()
        self.runs: dict[str, Run] = {}
        self.queue: list[str] = []
        self.origins: dict[int, int] = {}            # entry id -> jobs received from it
        self.dispatched: dict[str, tuple[int, int]] = {}   # run id -> (client, server)
        self.linked: set[str] = set()        # blobs hard-linked into a live job directory
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
        taps = server.extension_taps
        taps[Kind.WANT] = self._tap_want
        taps[Kind.DONE] = self._tap_result
        taps[Kind.FAILED] = self._tap_result
        server.departure_listeners.append(self._on_departure)
        server.close_listeners.append(self.close)
        server.extension_link_listeners.append(self._on_link_up)
        self._tick()

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
            if chosen is None:
                known = ", ".join(sorted(r.name for r in candidates)) or "none"
                self._to_client(client, Kind.FAILED, {
                    "id": job, "error": f"no server named {header['on']!r} (known: {known})"})
                return
            targets = [chosen]
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
                "id": job, "error": f"job quota: {unfinished} unfinished job(s), at most "
                                    f"{quota} per client on this server"})
            return
        runs = []
        for target in targets:
            run_id = f"{job}@{target.name}" if header.get("all") else job
            self.ledger.record(target.server)
            self.dispatched[run_id] = (client, target.server)
            runs.append({"id": run_id, "server": target.server, "name": target.name})
        self._to_client(client, Kind.ACCEPTED, {"job": job, "runs": runs})
        for run in runs:
            body = dict(header, id=run["id"], client=client, entry=self.me)
            self._send(frame(Kind.RUN, self.me, run["server"], body))

    def _on_cancel(self, conn: Connection | None, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        target = header.get("id")
        if not isinstance(target, str):
            raise ProtocolError("CANCEL without a job id")
        if msg.dest != 0:
            # From an entry server (perhaps us): the run is here.
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
        for run in list(self.runs.values()):
            if run.client in ids:
                log.info("%s: client of %r left; cancelling", self.server.name, run)
                self._abort(run, "client left the mesh", notify=False)

    # -- executor: run -----------------------------------------------------------------

    def _on_run(self, conn: Connection | None, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        run_id, client, entry = header.get("id"), header.get("client"), header.get("entry")
        if not isinstance(run_id, str) or not isinstance(client, int) or not isinstance(entry, int):
            raise ProtocolError("RUN without id, client or entry")
        self.origins[entry] = self.origins.get(entry, 0) + 1
        try:
            argv, label = parse_command(header)
            files = parse_files(header, self.config.max_file)
        except ProtocolError as exc:
            self._to_client(client, Kind.FAILED, {"id": run_id, "error": str(exc)})
            return
        timeout = header.get("timeout") or self.config.max_runtime
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            timeout = self.config.max_runtime
        run = Run(run_id, client, entry, argv, files, bool(header.get("stdin")),
                  min(float(timeout), self.config.max_runtime), label)
        if run_id in self.runs:
            self._to_client(client, Kind.FAILED, {"id": run_id, "error": "duplicate job id"})
            return
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
            self._abort(run, f"required file {ref.name if ref else '?'}: {error}")
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
                run.jobdir.place(ref, self.store.path(ref.sha), may_link=ref.sha not in self.linked)
                self.linked.update(run.jobdir.linked.values())
            run.process = ChildProcess(
                self.loop, run.argv, str(run.jobdir.path), stdin=run.stdin,
                on_output=lambda stream, data, run=run: self._output(run, stream, data),
                on_exit=lambda code, run=run: self._exited(run, code))
        except (OSError, JobDirError) as exc:
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
        self._to_client(run.client, Kind.OUTPUT, {"id": run.id, "stream": stream}, data)

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
                        warnings.append(f"{name} is {size} bytes, over the {self.config.max_file}"
                                        " byte limit; not returned")
                        continue
                    sha, size = self.store.add_file(path, move=True)
                    files.append(FileRef(name, sha, size, mode).to_json())
            except OSError as exc:
                warnings.append(f"could not collect produced files: {exc}")
            self._discard(run)
        for w in warnings:
            self._output(run, STDERR, f"crc: {w}\n".encode())
        seconds = round(time.monotonic() - run.started, 3)
        log.info("%s: job %s exited %d in %.3f s (%d file(s) back)", self.server.name, run.id,
                 code, seconds, len(files))
        self._finish(run)
        self._to_client(run.client, Kind.DONE, {
            "id": run.id, "exit": code, "error": run.error, "files": files,
            "server": self.me, "name": self.server.name, "seconds": seconds})

    def _discard(self, run: Run) -> None:
        """Hand a finished job's directory to the sweeper; its links are free again."""
        assert run.jobdir is not None
        self.linked.difference_update(run.jobdir.linked.values())
        self.sweeper.discard(run.jobdir)

    def _finish(self, run: Run) -> None:
        run.state = "done"
        self.runs.pop(run.id, None)
        if run.id in self.queue:
            self.queue.remove(run.id)
        self.dispatched.pop(run.id, None)
        self._changed()
        self.loop.call_soon(self._start_ready)

    def _abort(self, run: Run, error: str, notify: bool = True) -> None:
        if run.state == "running" and run.process is not None:
            run.error = error
            run.process.kill()          # _exited reports it
            return
        if run.jobdir is not None:
            self._discard(run)
        self._finish(run)
        if notify:
            self._to_client(run.client, Kind.FAILED, {"id": run.id, "error": error})

    def _cancel_here(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is not None:
            log.info("%s: job %s cancelled", self.server.name, run_id)
            self._abort(run, "cancelled")

    def _on_input(self, conn: Connection | None, msg: Extension) -> None:
        header, body = unpack(msg.payload)
        run = self.runs.get(header.get("id", ""))
        if run is None or run.client != msg.source:
            return
        eof = bool(header.get("eof"))
        if run.process is not None:
            run.process.write_stdin(body, eof)
        else:
            run.pending_input.append((body, eof))

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
        self.runs.clear()
        self.sweeper.close()
        for sha in list(self.store.partials):
            self.store.abandon(sha)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
