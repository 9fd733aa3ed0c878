"""The client side of jobs: submit, stream, cancel, collect produced files.

``JobClient`` rides on a ``ChatClient`` whose server link speaks extensions.
``submit`` hashes the job's required files (``local_files``), sends the job to the server the
client is attached to (the entry, which decides where it runs) and returns a
``Job``. Output, start, exit and failure arrive as events for the ``Job``'s
listener; when a run exits, the files it created or changed are pulled back
and written into ``base_dir`` (with their permission bits) before the run
counts as finished. The client also answers the executing servers' requests
for the required files it holds.

A lost connection does not lose jobs when the ``ChatClient`` is reconnecting
(``client.reconnecting``): runs wait, and once a new connection (to any
server of the mesh, under the same client id) is up, the client sends again
the SUBMITs that were never ACCEPTED (entries and executors run a job id
once) and asks each unfinished run's server for what it missed (FETCH, with
the bytes of output it already has, so nothing arrives twice). When a run's
outcome and files are all in, the client says so (RESULT_ACK) and the
server forgets them. Only when the client gives up reconnecting do its
unfinished jobs fail.

It opens and closes no connection (frames go out through
``ChatClient.send_extension``) and prints nothing: every change is an event
for the ``Job``'s listener.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import secrets
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from ...jobs.files import FileRef, Sweeper, bad_relative_path
from ...jobs.leftovers import mark_owner, sweep_stale
from ...jobs.store import BlobStore
from ...jobs.transfer import Transfers
from ...jobs.wire import (DEFAULT_MAX_JOBS, INLINE_MAX, STDIN_WINDOW, Kind, frame, pack_inline,
                          unpack, unpack_inline, unpack_view)
from ..core import ChatClient
from ...protocol import Extension, ProtocolError
from .local_files import LocalError as LocalFileError, LocalFiles
from .state import Job, JobError, JobListener, RunState, text_problem

log = logging.getLogger("crc.jobs.client")     # the name its log lines have always had

#: Our temporary directory's name starts so (``leftovers`` finds them).
TEMP_PREFIX = "crc-client-"
#: Prepared files' names remembered as checked (``submit``); forgotten all at once past this.
PREPARED_MAX = 50_000


class JobClient:
    def __init__(self, client: ChatClient, base_dir: Path | str = ".") -> None:
        self.client = client
        self.base_dir = Path(base_dir).resolve()
        self._tmp = tempfile.TemporaryDirectory(prefix=TEMP_PREFIX)
        mark_owner(Path(self._tmp.name))
        self.store = BlobStore(Path(self._tmp.name))
        # Clients killed outright leave their temporary directories: the
        # next client removes them (in the background, while it works).
        self.sweeper = Sweeper(client.loop, Path(self._tmp.name) / "trash")
        sweep_stale(TEMP_PREFIX, self.sweeper.discard)
        self.transfers = Transfers(client.id, self.store, client.send_extension)
        self.jobs: dict[str, Job] = {}
        self.runs: dict[str, tuple[Job, RunState]] = {}
        self.local = LocalFiles(self.store)   # files we offer, and put in place
        self._ids = itertools.count(1)
        # Job ids are unique across client processes using the same client
        # id: entries and executors recognise a job sent again by its id.
        self._session = secrets.token_hex(3)
        self._unacked: dict[str, int] = {}     # run id -> server owed a RESULT_ACK
        self._inlined: set[str] = set()        # files sent inside a SUBMIT already
        self.inlined_bytes = 0                 # ... their sizes, summed
        self._load_waiters: list[Callable[[list[dict]], None]] = []
        #: Jobs not sent yet: the entry server takes at most ``max_jobs``
        #: unfinished runs per client, so we keep the rest back and send them
        #: as ours finish (as ``make -j`` does), instead of having them refused.
        self._held: collections.deque[Job] = collections.deque()
        self._prepared: dict[tuple[str, str], Path] = {}
        self._live: dict[str, Job] = {}       # sent and not finished
        on = client.extension_handlers
        on[Kind.ACCEPTED] = self._on_accepted
        on[Kind.STARTED] = self._on_started
        on[Kind.OUTPUT] = self._on_output
        on[Kind.DONE] = self._on_done
        on[Kind.FAILED] = self._on_failed
        on[Kind.WANT] = self._on_want
        on[Kind.DATA] = self._on_data
        on[Kind.MISSING] = self._on_missing
        on[Kind.LOAD_TABLE] = self._on_load_table
        on[Kind.INPUT_ACK] = self._on_input_ack
        client.disconnect_listeners.append(self._on_disconnect)
        reconnect_listeners = getattr(client, "reconnect_listeners", None)
        if reconnect_listeners is not None:
            reconnect_listeners.append(self._on_reconnect)

    def close(self) -> None:
        self.sweeper.close()
        self._tmp.cleanup()

    # -- requests ------------------------------------------------------------------

    def describe_files(self, names: Sequence[str], base: Path | None = None) -> list[FileRef]:
        """Hash the named files under ``base`` (default ``base_dir``);
        ``JobError`` for a bad one."""
        try:
            return self.local.describe(names, base or self.base_dir)
        except LocalFileError as exc:
            raise JobError(str(exc)) from None

    def submit(self, *, argv: Sequence[str] | None = None, shell: str | None = None,
               files: Sequence[str] = (), stdin: bool = False, on: str | None = None,
               everywhere: bool = False, timeout: float | None = None,
               listener: JobListener | None = None, compiler: str | None = None,
               debug_dir: str | None = None, base_dir: Path | str | None = None,
               cache: bool = False, prepared: Sequence[tuple[FileRef, str]] = (),
               rooted: str | None = None, scratch: bool = False) -> Job:
        """Send a job; ``compiler`` (an id, ``crc.jobs.compilers``) sends it
        only to a server with that compiler, which runs it in ``argv[0]``'s
        place; ``debug_dir`` is the directory debug information should name;
        ``base_dir``, where this job's files are read and written (default:
        the client's); ``cache``: a compile may be answered from the compile
        cache (``crc.server.jobs.cache``); ``prepared``, files already
        described by the caller, each with the path it is read from (meshcc's
        agent, which hashes each header once per change); ``rooted``, a
        compile shipped as source (``crc.cc.ship``): the directory it runs in;
        ``scratch``: ``base_dir`` is a fresh directory only the caller reads,
        after the job (``Job.scratch``)."""
        base = Path(base_dir).resolve() if base_dir is not None else None
        extra: dict[str, Any] = {k: v for k, v in (("compiler", compiler),
                                                   ("debug_dir", debug_dir),
                                                   ("rooted", rooted)) if v}
        for ref, path in prepared:
            # (A build's compiles name the same headers again and again: each
            # name is checked, and its path made a Path, once.)
            known = self._prepared.get((ref.name, path))
            if known is None:
                problem = bad_relative_path(ref.name) or text_problem("file name", ref.name)
                if problem:
                    raise JobError(problem)
                if len(self._prepared) >= PREPARED_MAX:
                    self._prepared.clear()
                known = self._prepared[(ref.name, path)] = Path(path)
            self.local.held[ref.sha] = (known, ref.size)
        extra_refs = [ref for ref, _ in prepared]
        if cache and compiler:
            extra["cache"] = True
        if self._reconnecting():
            # Sent once the connection is back (``_on_reconnect``), checked then.
            return self._new_job(argv, shell, files, stdin, on, everywhere, timeout, listener,
                                 send=False, extra=extra, base=base, prepared=extra_refs,
                                 scratch=scratch)
        if not self.client.ext:
            raise JobError("the server does not speak mesh extensions (plain CRC v1): "
                           "it cannot run jobs")
        if self.client.config.secret is not None and not self.client.server_verified:
            raise JobError("the server did not prove it knows the mesh secret: jobs (and "
                           "their files) are not sent to it")
        return self._new_job(argv, shell, files, stdin, on, everywhere, timeout, listener,
                             extra=extra, base=base, prepared=extra_refs, scratch=scratch)

    def _new_job(self, argv: Sequence[str] | None, shell: str | None, files: Sequence[str],
                 stdin: bool, on: str | None, everywhere: bool, timeout: float | None,
                 listener: JobListener | None, send: bool = True,
                 extra: dict[str, Any] | None = None, base: Path | None = None,
                 prepared: Sequence[FileRef] = (), scratch: bool = False) -> Job:
        for i, word in enumerate(argv or ()):
            problem = text_problem(f"argument {i + 1}", word)
            if problem:
                raise JobError(problem)
        for what, text in (("command", shell), ("--on", on)):
            problem = text_problem(what, text) if text is not None else None
            if problem:
                raise JobError(problem)
        refs = self.describe_files(files, base) + list(prepared)
        inline, body = self._inline(refs)
        job_id = f"{self.client.id}.{self._session}.{next(self._ids)}"
        label = shell if shell is not None else " ".join(argv or ())
        job = Job(job_id, label, listener, stdin=stdin, base_dir=base,
                  scratch=scratch and base is not None)
        self.jobs[job_id] = job
        header: dict[str, Any] = {"job": job_id, "files": [r.to_json() for r in refs],
                                  "stdin": stdin}
        if shell is not None:
            header["shell"] = shell
        else:
            header["argv"] = list(argv or ())
        if on:
            header["on"] = on
        if everywhere:
            header["all"] = True
        if timeout:
            header["timeout"] = timeout
        header.update(extra or {})
        if inline:
            header["inline"] = inline
            job.request_body = body
        job.request = header
        self._held.append(job)
        if send:
            self._release_held()
        return job

    def _inline(self, refs: list[FileRef]) -> tuple[list[dict], bytes]:
        """What of a job's files rides in its SUBMIT: small ones this client
        has not sent before (a file it sent once is in the stores on the way,
        where every later job finds it: a header shared by a hundred compiles
        crosses each link once, not a hundred times)."""
        small = []
        for ref in refs:
            if ref.size <= INLINE_MAX and ref.sha not in self._inlined:
                path, _ = self.local.held[ref.sha]
                try:
                    small.append((ref.sha, path.read_bytes()))
                except OSError:
                    continue
        entries, body = pack_inline(small)
        for entry in entries:
            self._inlined.add(entry["sha"])
            self.inlined_bytes += entry.get("z", entry["n"])
        return entries, body

    @property
    def max_jobs(self) -> int:
        """Unfinished runs our entry server takes from us (its hello said)."""
        value = getattr(self.client, "server_fields", {}).get("max_jobs", "")
        return int(value) if value.isascii() and value.isdigit() and int(value) > 0 \
            else DEFAULT_MAX_JOBS

    def unfinished_runs(self) -> int:
        """Runs sent and not finished (a job not yet accepted counts once)."""
        count = 0
        for job_id, job in list(self._live.items()):
            if job.finished:
                del self._live[job_id]
            elif job.accepted:
                count += sum(1 for r in job.runs.values() if not r.finished)
            else:
                count += 1
        return count

    def _release_held(self) -> None:
        """Send held jobs while the entry's quota has room (and we are connected)."""
        if not self._held or self._reconnecting() or not self.client.ext:
            return
        room = self.max_jobs - self.unfinished_runs()
        while self._held and room > 0:
            job = self._held.popleft()
            if job.finished:
                continue
            job.sent = True
            self._live[job.id] = job
            self.client.send_extension(frame(Kind.SUBMIT, self.client.id, 0, job.request,
                                             job.request_body))
            room -= 1

    def fetch(self, run_id: str, server: int, listener: JobListener | None = None,
              name: str = "?") -> Job:
        """Take up a run this client id submitted earlier (perhaps in another
        process): ask ``server`` (its id) for its output, outcome and files."""
        found = self.runs.get(run_id)
        if found is not None:
            job, run = found
        else:
            job = Job(run_id, run_id, listener, accepted=True)
            run = RunState(run_id, server, name)
            job.runs[run_id] = run
            self.jobs[run_id] = job
            self.runs[run_id] = (job, run)
        self._send_fetch(run)
        return job

    def _send_fetch(self, run: RunState) -> bool:
        run.waiting = False
        return self.client.send_extension(frame(Kind.FETCH, self.client.id, 0, {
            "id": run.id, "server": run.server, "offsets": run.received[1:]}))

    def _reconnecting(self) -> bool:
        return bool(getattr(self.client, "reconnecting", False))

    def cancel(self, job_or_run: str) -> bool:
        held = self.jobs.get(job_or_run)
        if held is not None and not held.sent and not held.finished:
            self._held.remove(held)              # never sent: it ends here
            held.error = "cancelled before it was sent"
            held.emit(RunState(held.id, state="failed", error=held.error), "failed")
            return True
        known = job_or_run in self.jobs or job_or_run in self.runs
        if known:
            self.client.send_extension(frame(Kind.CANCEL, self.client.id, 0, {"id": job_or_run}))
        return known

    def cancel_unfinished(self) -> None:
        """Cancel every job not finished yet (a client leaving for good),
        also one sent and not yet accepted: the CANCEL follows its SUBMIT to
        the entry, which has dispatched its runs by then (one may already
        be running while its ACCEPTED is on its way back)."""
        for job in list(self._held):
            self.cancel(job.id)
        for job in self.jobs.values():
            if job.sent and not job.finished and not job.error:
                self.cancel(job.id)

    def send_input(self, run_id: str, data: bytes, eof: bool = False) -> None:
        job_run = self.runs.get(run_id)
        if job_run is None:
            return
        job_run[1].stdin_sent += len(data)
        self.client.send_extension(frame(Kind.INPUT, self.client.id, job_run[1].server,
                                         {"id": run_id, "eof": eof}, data, bulk=False))

    def stdin_room(self, run_id: str) -> int:
        """Bytes of standard input that may be sent to ``run_id`` now (its
        window, ``STDIN_WINDOW``, less what its server has not taken yet);
        0 for a run that is unknown or finished."""
        job_run = self.runs.get(run_id)
        if job_run is None or job_run[1].finished:
            return 0
        run = job_run[1]
        return max(0, STDIN_WINDOW - (run.stdin_sent - run.stdin_taken))

    def query_load(self, callback: Callable[[list[dict]], None]) -> None:
        self._load_waiters.append(callback)
        self.client.send_extension(frame(Kind.LOAD_QUERY, self.client.id, 0, {}))

    # -- events from the mesh ---------------------------------------------------------

    def _find(self, header: dict) -> tuple[Job, RunState] | None:
        run_id = header.get("id")
        return self.runs.get(run_id) if isinstance(run_id, str) else None

    def _on_accepted(self, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        job = self.jobs.get(header.get("job", ""))
        if job is None or job.accepted or job.error:
            return
        items = header.get("runs", [])
        names = [str(item.get("name", "?")) for item in items]
        for item, name in zip(items, names):
            if names.count(name) > 1:          # namesakes: told apart by their ids
                name = f"{name}({item['server']})"
            run = RunState(str(item["id"]), int(item["server"]), name)
            job.runs[run.id] = run
            self.runs[run.id] = (job, run)
        job.accepted = True
        job.request = None
        for run in job.runs.values():
            job.emit(run, "accepted")
        if job.resent:
            # It may have run (and ended) while we were away: ask for all of it.
            for run in job.runs.values():
                self._send_fetch(run)

    def _on_input_ack(self, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        found = self._find(header)
        taken = header.get("taken")
        if found is None or not isinstance(taken, int) or isinstance(taken, bool):
            return
        job, run = found
        if taken > run.stdin_taken:
            run.stdin_taken = min(taken, run.stdin_sent)
            job.emit(run, "input_room", self.stdin_room(run.id))

    def _on_started(self, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        found = self._find(header)
        if found:
            job, run = found
            if run.finished or run.state == "collecting":
                return
            run.waiting = False
            if run.state != "running":
                run.state = "running"
                job.emit(run, "started")

    def _on_output(self, msg: Extension) -> None:
        header, body = unpack(msg.payload)
        found = self._find(header)
        if found is None:
            return
        job, run = found
        stream = header.get("stream", 1)
        if stream not in (1, 2) or run.finished:
            return
        offset = header.get("offset")
        if isinstance(offset, int):
            have = run.received[stream]
            if offset > have:
                return          # after a gap (frames lost while away): a FETCH resends it
            if offset + len(body) <= have:
                return          # seen already (sent again by a FETCH)
            body = body[have - offset:]
        run.received[stream] += len(body)
        job.emit(run, "output", (stream, body))

    def _on_done(self, msg: Extension) -> None:
        header, body = unpack(msg.payload)
        found = self._find(header)
        if found is None:
            return
        job, run = found
        if run.finished or run.state == "collecting":
            return              # sent again (a FETCH crossing the first one)
        run.waiting = False
        run.exit = int(header.get("exit", -1))
        run.error = str(header.get("error") or "")
        run.seconds = float(header.get("seconds", 0.0))
        run.cached = header.get("cached") is True
        run.server = int(header.get("server", run.server))
        try:
            run.files = [FileRef.from_json(f) for f in header.get("files", [])]
        except (KeyError, TypeError, ValueError):
            raise ProtocolError("DONE with a malformed file list") from None
        if header.get("inline"):
            # Produced files that came with the result: no fetch for them,
            # written straight to where they go (not through the store).
            for sha, data in unpack_inline(header["inline"], body):
                if hashlib.sha256(data).hexdigest() == sha:
                    run.inline[sha] = bytes(data)
                else:
                    log.warning("an inline file of %s is not what it says (%s)", run.id,
                                sha[:12])
        run.state = "collecting"
        run.pending_files = len(run.files)
        run.collection += 1
        for ref in run.files:
            if ref.sha in run.inline:
                self._collected(job, run, ref, None, run.collection)
                continue
            self.transfers.fetch(ref.sha, ref.size, run.server,
                                 lambda sha, err, job=job, run=run, ref=ref, n=run.collection:
                                 self._collected(job, run, ref, err, n))
        if not run.files:
            self._settle(job, run)

    def _collected(self, job: Job, run: RunState, ref: FileRef, error: str | None,
                   collection: int = 0) -> None:
        if run.finished or collection != run.collection or run.state != "collecting":
            return              # an attempt a lost connection cut short
        if error is None:
            try:
                self.local.write_back(ref, job.base_dir or self.base_dir, run.inline.get(ref.sha),
                                      in_place=job.scratch)
                job.emit(run, "file", ref.name)
            except (OSError, ValueError) as exc:
                error = str(exc)
        if error is not None:
            run.error = run.error or f"could not bring back {ref.name}: {error}"
        run.pending_files -= 1
        if run.pending_files <= 0:
            self._settle(job, run)

    def _settle(self, job: Job, run: RunState) -> None:
        run.state = "done"
        # Acknowledged before anyone hears of it: a listener may leave at
        # once, and a RESULT_ACK queued after our goodbye is never read.
        self._acknowledge(run)
        job.emit(run, "done")
        self._release_held()

    def _acknowledge(self, run: RunState) -> None:
        """Tell the executing server it may forget the run's result (now, or
        when the connection is back)."""
        if run.server:
            self._unacked[run.id] = run.server
        self._send_acks()

    def _send_acks(self) -> None:
        for run_id, server in list(self._unacked.items()):
            if self.client.send_extension(frame(Kind.RESULT_ACK, self.client.id, server,
                                                {"id": run_id})):
                del self._unacked[run_id]

    def _on_failed(self, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        error = str(header.get("error") or "failed")
        found = self._find(header)
        if found is not None:
            job, run = found
            if not run.finished:
                run.state, run.error, run.lost = "failed", error, bool(header.get("lost"))
                run.stopped = run.lost and header.get("stopped") is True
                run.waiting = False
                if msg.source == run.server:       # the executor kept it: it may go
                    self._acknowledge(run)
                job.emit(run, "failed")
                self._release_held()
            return
        job = self.jobs.get(header.get("id", ""))
        if job is not None and not job.accepted and header.get("quota") \
                and self.unfinished_runs() > 1:
            # Others of ours hold the quota (a runall counted once before it
            # was accepted, another process of ours): send it again when one
            # of them finishes.
            job.sent = False
            self._live.pop(job.id, None)
            self._held.appendleft(job)
            return
        if job is not None and not job.accepted:
            job.error = error
            job.emit(RunState(job.id, state="failed", error=error), "failed")
            self._release_held()

    def _on_disconnect(self, reason: str) -> None:
        if self._reconnecting():
            self._wait_for_connection(reason)
            return
        self._fail_unfinished(f"lost the connection to the server: {reason}")
        self.transfers.reset("lost the connection to the server")

    def _wait_for_connection(self, reason: str) -> None:
        """The connection dropped and the client is trying again: nothing
        fails; files being collected are asked for again after the reconnect."""
        for job in self.jobs.values():
            if job.finished:
                continue
            for run in job.runs.values():
                if run.finished:
                    continue
                if run.state == "collecting":
                    run.state = "running"
                    run.collection += 1
                if not run.waiting:
                    run.waiting = True
                    job.emit(run, "waiting", reason)
        self.transfers.reset("the connection to the server was lost")

    def _on_reconnect(self) -> None:
        """A new connection is up (same client id, perhaps another server)."""
        why = ""
        if not self.client.ext:
            why = "the server does not speak mesh extensions (plain CRC v1): it cannot run jobs"
        elif getattr(self.client.config, "secret", None) is not None \
                and not getattr(self.client, "server_verified", False):
            why = ("the server did not prove it knows the mesh secret: jobs (and their files) "
                   "are not sent to it")
        if why:
            self._fail_unfinished(f"after reconnecting: {why}")
            return
        for job in list(self.jobs.values()):
            if job.finished:
                continue
            if not job.accepted:
                if job.request is not None and job.sent:
                    job.resent = True
                    self.client.send_extension(frame(Kind.SUBMIT, self.client.id, 0,
                                                     job.request, job.request_body))
                continue
            for run in job.runs.values():
                if not run.finished:
                    self._send_fetch(run)
        self._send_acks()
        self._release_held()

    def _fail_unfinished(self, error: str) -> None:
        for job in self.jobs.values():
            if not job.accepted and not job.error:
                job.error = error
                job.emit(RunState(job.id, state="failed", error=job.error), "failed")
            for run in job.runs.values():
                if not run.finished:
                    run.state, run.error, run.lost = "failed", error, True
                    job.emit(run, "failed")

    # -- files --------------------------------------------------------------------------

    def _on_want(self, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        held = self.local.held.get(str(header.get("sha", "")))
        if held is None:
            self.transfers.missing(msg.source, str(header.get("sha", ""))[:64],
                                   "the client no longer offers this file")
        elif not self.transfers.serve(msg.source, header, read=self.local.read, size=held[1]):
            self.transfers.missing(msg.source, str(header.get("sha", ""))[:64], "bad request")

    def _on_data(self, msg: Extension) -> None:
        header, body = unpack_view(msg.payload)
        self.transfers.on_data(header, body)

    def _on_missing(self, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        self.transfers.on_missing(header)

    def _on_load_table(self, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        rows = header.get("servers", [])
        waiters, self._load_waiters = self._load_waiters, []
        for callback in waiters:
            callback(rows)
