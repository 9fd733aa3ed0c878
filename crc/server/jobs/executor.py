"""The executor: the server a job runs on. It fetches the job's files, runs
it in a fresh directory with at most ``slots`` jobs at once, feeds it the
client's standard input within a window, streams output back (keeping it in
the result store), returns the exit status and the files the job created or
changed, and cleans up. Job processes die with the server, even a killed one
(``process.GroupReaper``). Never picks where a job runs (the entry does)."""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...jobs.compilers import ROOT_DIR
from ...jobs.files import FileRef
from ...jobs.plain import shell_environment, shell_variables
from ...jobs.process import STDERR, ChildProcess, GroupReaper
from ...jobs.store import StoreError
from ...jobs.wire import (INLINE_MAX, STDIN_ACK_EVERY, STDIN_WINDOW, Kind, pack_inline, unpack,
                          unpack_inline)
from ...net import Connection, Timer
from ...protocol import Extension, ProtocolError
from .cache import cache_key
from .frames import parse_command, parse_files, parse_timeout, run_id_of
from .jobdir import DirPool, Fingerprint, JobDir, JobDirError, fingerprint
from .results import Record

if TYPE_CHECKING:
    from .service import JobService

log = logging.getLogger("crc.jobs.service")     # the job service's log: one name for its parts


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
    #: A compile's directory as its client sees it: debug information names
    #: it instead of this run's job directory (meshcc, ``-g``).
    debug_dir: str | None = None
    #: A compile shipped as source (``crc.cc.ship``): its client's working
    #: directory, which it runs in under the job's ``ROOT_DIR``.
    rooted: str | None = None
    #: The compile cache's key for this run (``cache``), when it asked for it.
    cache_key: str | None = None
    #: The shell command this run's ``argv`` are the words of, run without a
    #: shell (``frames.Command``); None once it has gone to ``/bin/sh``.
    plain: str | None = None

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.state} client={self.client} {self.label[:30]!r}>"


def rooted_problem(header: dict) -> str | None:
    """What is wrong with a job's ``rooted`` field (a compile shipped as
    source: the absolute, plain directory it runs in under ``ROOT_DIR``)."""
    rooted = header.get("rooted")
    if not isinstance(header.get("compiler"), str):
        return "job field 'rooted' is only for compiles (no 'compiler')"
    if not isinstance(rooted, str) or not rooted.startswith("/") or "\0" in rooted \
            or len(rooted) > 4096 or any(p in (".", "..") for p in rooted.split("/")):
        return "job field 'rooted' is not an absolute, plain directory"
    return None


class Executor:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.server = jobs.server
        self.loop = jobs.loop
        self.me = jobs.me
        self.config = jobs.config
        self.reaper = GroupReaper(self.loop, self.server.name)
        self.runs: dict[str, Run] = {}
        self.queue: list[str] = []
        self.origins: dict[int, int] = {}            # entry id -> jobs received from it
        self.cancels_refused = 0                     # CANCELs from neither client nor entry
        #: Blobs hard-linked into a live job directory, with their fingerprint then.
        self.linked: dict[str, Fingerprint] = {}
        #: ... and by how many live jobs (compiles shipped as source share links).
        self.link_count: dict[str, int] = {}
        self.started = 0                  # runs started here, ever (monitors' rates)
        #: Directories of finished shipped compiles, for the next ones.
        self.pool = DirPool(jobs.root / "jobs", keep=max(2, 2 * self.config.slots))
        #: ... and of other jobs, with the copies of their inputs.
        self.plain_pool = DirPool(jobs.root / "jobs", keep=max(2, 2 * self.config.slots),
                                  copies=True)
        self.failed = 0                   # ... that exited non-zero or failed
        #: What /bin/sh would pass on to a plain command, but PWD (``_spawn``).
        self.shell_variables = shell_variables(os.environ, os.getpid())

    @property
    def running(self) -> int:
        return sum(1 for r in self.runs.values() if r.state == "running")

    def needed(self) -> set[str]:
        """The blobs live jobs need: their files and what is linked."""
        needed = set(self.linked)
        for run in self.runs.values():
            needed.update(ref.sha for ref in run.files)
        return needed

    # -- a job arrives -----------------------------------------------------------------

    def refuse_run(self, conn: Connection | None, msg: Extension) -> bool:
        """Refuse a RUN that must not run here nor pass on (``run_refusal``):
        the client hears why; True if refused."""
        refused = self.server.gate.run_refusal(conn)
        if not refused:
            return False
        header, _ = unpack(msg.payload)
        run_id, client = header.get("id"), header.get("client")
        log.warning("%s: refusing job %r for client %r: %s", self.server.name, run_id, client,
                    refused)
        if isinstance(run_id, str) and isinstance(client, int):
            self.jobs.to_client(client, Kind.FAILED, {"id": run_id, "error": refused})
        return True

    def tap_run(self, conn: Connection, msg: Extension) -> bool:
        """A RUN passing through: it goes on only over links it may cross."""
        return self.refuse_run(conn, msg)

    def on_run(self, conn: Connection | None, msg: Extension) -> None:
        if self.refuse_run(conn, msg):
            return
        header, body = unpack(msg.payload)
        run_id, client, entry = header.get("id"), header.get("client"), header.get("entry")
        if not isinstance(run_id, str) or not isinstance(client, int) or not isinstance(entry, int):
            raise ProtocolError("RUN without id, client or entry")
        self.origins[entry] = self.origins.get(entry, 0) + 1
        try:
            argv, label, plain = parse_command(header)
            files = parse_files(header, self.config.max_file)
            timeout = parse_timeout(header, self.config.max_runtime)
            argv = self.jobs.with_compiler(header, argv)
        except ProtocolError as exc:
            self.jobs.to_client(client, Kind.FAILED, {"id": run_id, "error": str(exc)})
            return
        run = Run(run_id, client, entry, argv, files, bool(header.get("stdin")),
                  min(float(timeout), self.config.max_runtime), label, plain=plain)
        debug_dir = header.get("debug_dir")
        if isinstance(debug_dir, str) and debug_dir and "compiler" in header:
            run.debug_dir = debug_dir
        if "rooted" in header:
            problem = rooted_problem(header)
            if problem:
                self.jobs.to_client(client, Kind.FAILED, {"id": run_id, "error": problem})
                return
            run.rooted = header["rooted"]
        results = self.jobs.results
        live = self.runs.get(run_id)
        kept = live.record if live is not None else results.finished.get(run_id)
        if live is not None or kept is not None:
            owner = live.client if live is not None else kept.client
            if owner == client:
                # Sent again (a client's SUBMIT repeated through another entry):
                # one run per id; the client fetches its result.
                log.info("%s: job %s from client %d is here already; not running it again",
                         self.server.name, run_id, client)
            else:
                self.jobs.to_client(client, Kind.FAILED,
                                    {"id": run_id, "error": "duplicate job id"})
            return
        run.record = results.new(run_id, client, entry, label)
        run.cache_key = cache_key(header)
        if run.cache_key is not None and self._from_cache(run):
            return
        self._keep_inline(run, files, header, body)
        self.runs[run_id] = run
        self.queue.append(run_id)
        log.info("%s: job %s from client %d queued: %s", self.server.name, run_id, client, label)
        run.missing = len(files)
        for ref in files:
            self.jobs.transfers.fetch(
                ref.sha, ref.size, client,
                lambda sha, err, run=run, ref=ref: self._file_ready(run, ref, err))
        if not files:
            self._file_ready(run, None, None)
        self.jobs.reports.changed()

    def _keep_inline(self, run: Run, files: list[FileRef], header: dict, body: bytes) -> None:
        """Store the required files that came inside the RUN (each checked
        against its digest; one that is not what it says is fetched instead)."""
        if not header.get("inline"):
            return
        wanted = {ref.sha for ref in files}
        try:
            carried = unpack_inline(header["inline"], body)
        except ProtocolError as exc:
            log.warning("%s: job %s: inline files unusable (%s); fetching them",
                        self.server.name, run.id, exc)
            return
        for sha, data in carried:
            if sha in wanted:
                try:
                    self.jobs.store.add_bytes(sha, data)
                except StoreError as exc:
                    log.warning("%s: job %s: %s; fetching it", self.server.name, run.id, exc)

    def _inline_result(self, files: list[dict]) -> tuple[list[dict], bytes]:
        """Produced files small enough to go back inside the DONE frame."""
        store, small = self.jobs.store, []
        for f in files:
            if f.get("size", INLINE_MAX + 1) <= INLINE_MAX:
                try:
                    small.append((f["sha"], store.path(f["sha"]).read_bytes()))
                except OSError:
                    continue
        return pack_inline(small)

    def _from_cache(self, run: Run) -> bool:
        """Answer ``run`` from the compile cache if its key is there."""
        files = self.jobs.cache.lookup(run.cache_key)
        if files is None:
            return False
        log.info("%s: job %s from client %d answered from the compile cache",
                 self.server.name, run.id, run.client)
        self._finish(run)
        self._conclude(run, Kind.DONE, {
            "id": run.id, "exit": 0, "error": "", "files": files, "server": self.me,
            "name": self.server.name, "seconds": 0.0, "cached": True},
            inline=self._inline_result(files))
        return True

    def _file_ready(self, run: Run, ref: FileRef | None, error: str | None) -> None:
        if run.state != "fetching":
            return
        if error:
            # With its client gone, nothing ran: a rebuild may run it elsewhere.
            self.abort(run, f"required file {ref.name if ref else '?'}: {error}",
                       lost=not self.server.routes.known(run.client))
            return
        if ref is not None:
            run.missing -= 1
        if run.missing <= 0:
            run.state = "ready"
            self._start_ready()

    # -- running ---------------------------------------------------------------------

    def _start_ready(self) -> None:
        for run_id in list(self.queue):
            if self.running >= self.config.slots:
                return
            run = self.runs.get(run_id)
            if run is not None and run.state == "ready":
                self.queue.remove(run_id)
                self._start(run)

    def _start(self, run: Run) -> None:
        store = self.jobs.store
        try:
            run.jobdir = (self.pool if run.rooted is not None else self.plain_pool).take(run.id)
            # A blob another live job has linked is copied (a job may edit an
            # input in place), but a compile shipped as source links it all the
            # same: it writes only its object and dependency file, and dozens
            # of headers per compile are shared by every compile at once.
            share = run.jobdir.shared_links = run.rooted is not None
            run.jobdir.drop_unused({ref.name for ref in run.files})
            for ref in run.files:
                shared = self.linked.get(ref.sha)
                placed = run.jobdir.place(ref, store.file(ref.sha),
                                          may_link=shared is None or share, expect=shared)
                if ref.name in run.jobdir.linked:
                    self.linked[ref.sha] = placed      # (a new link moved its ctime)
                    self.link_count[ref.sha] = self.link_count.get(ref.sha, 0) + 1
            self.reaper.ensure()
            argv, cwd = run.argv, str(run.jobdir.path)
            if run.debug_dir is not None:
                argv = [*argv, f"-fdebug-prefix-map={run.jobdir.path}={run.debug_dir}"]
            if run.rooted is not None:
                root = f"{run.jobdir.path}/{ROOT_DIR}"
                cwd = root + run.rooted.rstrip("/")
                os.makedirs(cwd, exist_ok=True)
                argv = [*argv, f"-ffile-prefix-map={root}="]
            run.process = self._spawn(run, argv, cwd)
        except (OSError, ValueError, JobDirError) as exc:    # ValueError: a NUL in argv
            self.abort(run, f"cannot start: {exc}")
            return
        run.state = "running"
        run.started = time.monotonic()
        self.started += 1
        run.timer = self.loop.call_later(run.timeout, self._timed_out, run)
        for data, eof in run.pending_input:
            run.process.write_stdin(data, eof)
        run.pending_input.clear()
        self.jobs.to_client(run.client, Kind.STARTED, {"id": run.id, "server": self.me,
                                                       "name": self.server.name,
                                                       "pid": run.process.pid})
        self.jobs.reports.changed()

    def _spawn(self, run: Run, argv: list[str], cwd: str) -> ChildProcess:
        """Start ``run``'s process. A plain shell command (``Run.plain``) runs
        as its words, in the environment ``/bin/sh`` would give it; one that
        cannot be run so (not found, not executable, a script without ``#!``)
        goes to ``/bin/sh -c`` after all, which says or does what it always
        did with it."""
        def start(argv: list[str], env: dict[str, str] | None) -> ChildProcess:
            return ChildProcess(
                self.loop, argv, cwd, env=env, stdin=run.stdin,
                on_output=lambda stream, data, run=run: self._output(run, stream, data),
                on_exit=lambda code, run=run: self._exited(run, code), reaper=self.reaper,
                on_stdin_taken=lambda n, run=run: self._stdin_taken(run, n))
        if run.plain is None:
            return start(argv, None)
        try:
            return start(argv, shell_environment(self.shell_variables, cwd))
        except OSError as exc:
            if exc.filename != argv[0]:        # (not the program: the directory, ...)
                raise
            command, run.plain = run.plain, None
            return start(["/bin/sh", "-c", command], None)

    def _as_the_shell_says(self, run: Run, code: int) -> int:
        """The status of a plain command (run without a shell) as ``/bin/sh``
        would have given it: a death by a signal we did not send is 128 plus
        the signal, with the shell's line naming it on standard error (none
        for SIGINT and SIGPIPE)."""
        process = run.process
        if run.plain is None or code >= 0 or process is None or process.killed:
            return code
        sig = -code
        if sig not in (signal.SIGINT, signal.SIGPIPE):
            try:
                name = signal.strsignal(sig) or f"Signal {sig}"
            except ValueError:
                name = f"Signal {sig}"
            note = " (core dumped)" if process.core_dumped else ""
            self._output(run, STDERR, f"{name}{note}\n".encode())
        return 128 + sig

    def _output(self, run: Run, stream: int, data: bytes) -> None:
        run.output_bytes += len(data)
        if run.output_bytes > self.config.max_output:
            if not run.error:
                run.error = f"output exceeds {self.config.max_output} bytes; job killed"
                run.process.kill()
            return
        record = run.record
        offset = self.jobs.results.append(record, stream, data)
        if record.replay is None:          # else the replay sends it, in order
            self.jobs.to_client(run.client, Kind.OUTPUT,
                                {"id": run.id, "stream": stream, "offset": offset}, data)

    def _timed_out(self, run: Run) -> None:
        if run.state == "running" and run.process is not None:
            run.error = run.error or f"timed out after {run.timeout:g} s; job killed"
            run.process.kill()

    def _exited(self, run: Run, code: int) -> None:
        if run.timer is not None:
            run.timer.cancel()
        code = self._as_the_shell_says(run, code)
        files, warnings = [], []
        if run.jobdir is not None:
            files, warnings = self._collect(run)
            self._discard(run)
        for w in warnings:
            self._output(run, STDERR, f"crc: {w}\n".encode())
        seconds = round(time.monotonic() - run.started, 3)
        if code != 0 or run.error:
            self.failed += 1
        log.info("%s: job %s exited %d in %.3f s (%d file(s) back)", self.server.name, run.id,
                 code, seconds, len(files))
        self._finish(run)
        if run.cache_key is not None and code == 0 and not run.error \
                and run.output_bytes == 0 and files:
            self.jobs.cache.remember(run.cache_key, files)
        self._conclude(run, Kind.DONE, {
            "id": run.id, "exit": code, "error": run.error, "files": files,
            "server": self.me, "name": self.server.name, "seconds": seconds},
            inline=self._inline_result(files))
        self.jobs.trim_store()        # (its files are kept: its result lists them)

    def _collect(self, run: Run) -> tuple[list[dict], list[str]]:
        """The files a finished job created or changed, moved into the store
        (each within ``--max-file``), and warnings about what was not."""
        store = self.jobs.store
        files: list[dict] = []
        warnings: list[str] = []
        try:
            produced, warnings = run.jobdir.produced()
            for sha in run.jobdir.tainted:
                log.info("%s: job %s changed linked blob %s in place; dropped from the store",
                         self.server.name, run.id, sha[:12])
                store.forget(sha)
            for name, path, mode in produced:
                size = path.stat().st_size
                if size > self.config.max_file:
                    # The job did not deliver what it made: it failed.
                    run.error = run.error or (
                        f"produced file {name} is {size} bytes, over the "
                        f"{self.config.max_file} byte limit (--max-file); not returned")
                    continue
                sha, size = store.add_file(path, move=True)
                files.append(FileRef(name, sha, size, mode).to_json())
        except OSError as exc:
            run.error = run.error or f"could not collect produced files: {exc}"
        return files, warnings

    def _conclude(self, run: Run, kind: Kind, header: dict,
                  inline: tuple[list[dict], bytes] | None = None) -> None:
        """The run is over: keep its final frame and send it (after a replay
        in progress, which sends it itself). Files ``inline`` go with the live
        frame only: a replayed result lists them, and they are fetched."""
        entries, body = inline or ([], b"")
        live = dict(header, inline=entries) if entries else header
        record = run.record
        if record is None:
            self.jobs.to_client(run.client, kind, live, body)
            return
        self.jobs.results.finish(record, kind, header)
        if record.replay is None:
            self.jobs.to_client(run.client, kind, live, body)

    def _discard(self, run: Run) -> None:
        """Hand a finished job's directory to the sweeper; its links are free again."""
        assert run.jobdir is not None
        run.jobdir.release()
        for sha in run.jobdir.linked.values():
            left = self.link_count.get(sha, 1) - 1
            if left > 0:
                self.link_count[sha] = left
                # Our unlinking moved its ctime: what a copy checks against
                # now, unless its content changed (then copies refuse it).
                try:
                    now = fingerprint(os.stat(self.jobs.store.file(sha)))
                except OSError:
                    continue
                if sha in self.linked and now[:2] == self.linked[sha][:2]:
                    self.linked[sha] = now
            else:
                self.link_count.pop(sha, None)
                self.linked.pop(sha, None)
        # Kept for another job only if nothing the job started lives on (a
        # process left in the background could change what the next one finds).
        if (run.process is None or not run.process.group_alive()) and \
                (self.pool if run.rooted is not None else self.plain_pool).give(run.jobdir):
            return
        self.jobs.sweeper.discard(run.jobdir)

    def _finish(self, run: Run) -> None:
        run.state = "done"
        self.runs.pop(run.id, None)
        if run.id in self.queue:
            self.queue.remove(run.id)
        self.jobs.entry.dispatched.pop(run.id, None)
        self.jobs.reports.changed()
        self.loop.call_soon(self._start_ready)

    def abort(self, run: Run, error: str, lost: bool = False) -> None:
        """End a run with ``error``: killed if running (its exit reports it),
        else failed at once."""
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

    def cancel(self, source: int, run_id: str) -> None:
        """A CANCEL from an entry server (perhaps us): only the entry that
        dispatched the run, or its own client, may cancel it."""
        run = self.runs.get(run_id)
        if run is not None and source not in (run.entry, run.client):
            log.warning("%s: ignoring a CANCEL of %s from %d: neither its client nor "
                        "its entry", self.server.name, run_id[:40], source)
            self.cancels_refused += 1
            return
        if run is not None:
            log.info("%s: job %s cancelled", self.server.name, run_id)
            self.abort(run, "cancelled")

    def clients_left(self, ids: set[int]) -> None:
        for run in self.runs.values():
            if run.client in ids:
                # It may come back (a reconnect) and fetch the result; else
                # the result expires. A run still fetching files from it fails
                # (lost: nothing ran) through the transfer's failure.
                log.info("%s: client of %r left; the job goes on, its result is kept",
                         self.server.name, run)

    # -- standard input ------------------------------------------------------------------

    def _stdin_taken(self, run: Run, n: int) -> None:
        """The process took ``n`` more bytes of its stdin: tell the client
        (every ``STDIN_ACK_EVERY`` bytes, and whenever our buffer is empty),
        which keeps at most ``STDIN_WINDOW`` bytes unacknowledged."""
        run.stdin_taken += n
        stdin = run.process.stdin if run.process is not None else None
        drained = stdin is None or not stdin.buffer
        if run.stdin_taken - run.stdin_acked >= STDIN_ACK_EVERY or drained:
            run.stdin_acked = run.stdin_taken
            self.jobs.to_client(run.client, Kind.INPUT_ACK,
                                {"id": run.id, "taken": run.stdin_taken})

    def on_input(self, conn: Connection | None, msg: Extension) -> None:
        header, body = unpack(msg.payload)
        run = self.runs.get(run_id_of(header))
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
            self.abort(run, f"standard input sent beyond the {STDIN_WINDOW} byte window "
                            "(the client does not wait for INPUT_ACK)")
            return
        if run.process is not None:
            run.process.write_stdin(body, eof)
        else:
            run.pending_input.append((body, eof))

    # -- shutdown --------------------------------------------------------------------

    def close(self) -> None:
        """Kill running jobs; their results say the server stopped."""
        for run in list(self.runs.values()):
            # A job whose own process had ended (something it started holds
            # its output open) ran: not one to run again for nothing.
            ended = run.process is not None and run.process.returncode is not None
            if run.process is not None:
                run.process.kill()
            if run.jobdir is not None:
                run.jobdir.remove()
            if run.record is not None and not run.record.done:
                header = {"id": run.id, "lost": True,
                          "error": f"server {self.server.name} stopped while running the job"}
                if not self.server.graceful:        # (``MeshServer.kill``: as a crash)
                    self.jobs.results.finish(run.record, Kind.FAILED, header)
                    continue
                # ``stopped``: shut down on purpose (a restart), nothing the
                # job did: a build runs it again elsewhere without counting
                # it. Kept, and sent now (the server flushes its links once
                # before closing them): the client need not wait for a FETCH.
                if not ended:
                    header["stopped"] = True
                self._conclude(run, Kind.FAILED, header)
        self.runs.clear()
        self.pool.close()
        self.plain_pool.close()
        self.reaper.close()
