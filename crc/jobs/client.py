"""The client side of jobs: submit, stream, cancel, collect produced files.

``JobClient`` rides on a ``ChatClient`` whose server link speaks extensions.
``submit`` hashes the job's required files, sends the job to the server the
client is attached to (the entry, which decides where it runs) and returns a
``Job``. Output, start, exit and failure arrive as events for the ``Job``'s
listener; when a run exits, the files it created or changed are pulled back
and written into ``base_dir`` (with their permission bits) before the run
counts as finished. The client also answers the executing servers' requests
for the required files it holds.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..client.core import ChatClient
from ..protocol import Extension, ProtocolError
from .jobdir import FileRef
from .rakefile import bad_relative_path
from .store import BlobStore, hash_file
from .transfer import Transfers
from .wire import Kind, frame, unpack, unpack_view

log = logging.getLogger(__name__)

TERMINAL = ("done", "failed")


class JobError(Exception):
    """A job that cannot be submitted (a missing file, no extension link...)."""


@dataclass
class RunState:
    id: str
    server: int = 0
    name: str = "?"
    state: str = "submitted"       # submitted -> running -> collecting -> done | failed
    exit: int | None = None
    error: str = ""
    lost: bool = False
    seconds: float = 0.0
    files: list[FileRef] = field(default_factory=list)
    pending_files: int = 0

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @property
    def ok(self) -> bool:
        return self.state == "done" and self.exit == 0 and not self.error


#: listener(job, run, event, data): event is one of accepted, started,
#: output (data: (stream, bytes)), done, failed, file (data: name).
JobListener = Callable[["Job", RunState, str, Any], None]


@dataclass
class Job:
    id: str
    label: str
    listener: JobListener | None = None
    runs: dict[str, RunState] = field(default_factory=dict)
    accepted: bool = False
    error: str = ""
    stdin: bool = False

    @property
    def finished(self) -> bool:
        if self.error:
            return True
        return self.accepted and all(r.finished for r in self.runs.values())

    @property
    def exit_code(self) -> int:
        """0 when every run exited 0; else the first failing run's code (1 if none)."""
        if self.error:
            return 1
        for run in self.runs.values():
            if not run.ok:
                return run.exit if run.exit not in (None, 0) else 1
        return 0

    def _emit(self, run: RunState, event: str, data: Any = None) -> None:
        if self.listener is not None:
            self.listener(self, run, event, data)


class JobClient:
    def __init__(self, client: ChatClient, base_dir: Path | str = ".") -> None:
        self.client = client
        self.base_dir = Path(base_dir).resolve()
        self._tmp = tempfile.TemporaryDirectory(prefix="crc-client-")
        self.store = BlobStore(Path(self._tmp.name))
        self.transfers = Transfers(client.id, self.store, client.send_extension)
        self.jobs: dict[str, Job] = {}
        self.runs: dict[str, tuple[Job, RunState]] = {}
        self.files: dict[str, tuple[Path, int]] = {}       # sha -> (path, size) we can serve
        self._ids = itertools.count(1)
        self._load_waiters: list[Callable[[list[dict]], None]] = []
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
        client.disconnect_listeners.append(self._on_disconnect)

    def close(self) -> None:
        self._tmp.cleanup()

    # -- requests ------------------------------------------------------------------

    def describe_files(self, names: Sequence[str]) -> list[FileRef]:
        """Hash the named files under ``base_dir``; ``JobError`` for a bad one."""
        refs = []
        for name in names:
            why = bad_relative_path(name)
            if why:
                raise JobError(why)
            path = self.base_dir / name
            if not path.is_file():
                raise JobError(f"required file {name!r} does not exist in {self.base_dir}")
            sha, size = hash_file(path)
            self.files[sha] = (path, size)
            refs.append(FileRef(name, sha, size, path.stat().st_mode & 0o777))
        return refs

    def submit(self, *, argv: Sequence[str] | None = None, shell: str | None = None,
               files: Sequence[str] = (), stdin: bool = False, on: str | None = None,
               everywhere: bool = False, timeout: float | None = None,
               listener: JobListener | None = None) -> Job:
        if not self.client.ext:
            raise JobError("the server does not speak mesh extensions (plain CRC v1): "
                           "it cannot run jobs")
        refs = self.describe_files(files)
        job_id = f"{self.client.id}.{next(self._ids)}"
        label = shell if shell is not None else " ".join(argv or ())
        job = Job(job_id, label, listener, stdin=stdin)
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
        self.client.send_extension(frame(Kind.SUBMIT, self.client.id, 0, header))
        return job

    def cancel(self, job_or_run: str) -> bool:
        known = job_or_run in self.jobs or job_or_run in self.runs
        if known:
            self.client.send_extension(frame(Kind.CANCEL, self.client.id, 0, {"id": job_or_run}))
        return known

    def send_input(self, run_id: str, data: bytes, eof: bool = False) -> None:
        job_run = self.runs.get(run_id)
        if job_run is None:
            return
        self.client.send_extension(frame(Kind.INPUT, self.client.id, job_run[1].server,
                                         {"id": run_id, "eof": eof}, data, bulk=False))

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
        if job is None:
            return
        for item in header.get("runs", []):
            run = RunState(str(item["id"]), int(item["server"]), str(item.get("name", "?")))
            job.runs[run.id] = run
            self.runs[run.id] = (job, run)
        job.accepted = True
        for run in job.runs.values():
            job._emit(run, "accepted")

    def _on_started(self, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        found = self._find(header)
        if found:
            job, run = found
            run.state = "running"
            job._emit(run, "started")

    def _on_output(self, msg: Extension) -> None:
        header, body = unpack(msg.payload)
        found = self._find(header)
        if found:
            job, run = found
            job._emit(run, "output", (int(header.get("stream", 1)), body))

    def _on_done(self, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        found = self._find(header)
        if found is None:
            return
        job, run = found
        run.exit = int(header.get("exit", -1))
        run.error = str(header.get("error") or "")
        run.seconds = float(header.get("seconds", 0.0))
        run.server = int(header.get("server", run.server))
        try:
            run.files = [FileRef.from_json(f) for f in header.get("files", [])]
        except (KeyError, TypeError, ValueError):
            raise ProtocolError("DONE with a malformed file list") from None
        run.state = "collecting"
        run.pending_files = len(run.files)
        for ref in run.files:
            self.transfers.fetch(ref.sha, ref.size, run.server,
                                 lambda sha, err, job=job, run=run, ref=ref:
                                 self._collected(job, run, ref, err))
        if not run.files:
            self._settle(job, run)

    def _collected(self, job: Job, run: RunState, ref: FileRef, error: str | None) -> None:
        if run.finished:
            return
        if error is None:
            try:
                self._write_back(ref)
                job._emit(run, "file", ref.name)
            except (OSError, ValueError) as exc:
                error = str(exc)
        if error is not None:
            run.error = run.error or f"could not bring back {ref.name}: {error}"
        run.pending_files -= 1
        if run.pending_files <= 0:
            self._settle(job, run)

    def _write_back(self, ref: FileRef) -> None:
        why = bad_relative_path(ref.name)
        dest = self.base_dir / ref.name
        if why or not dest.parent.resolve().is_relative_to(self.base_dir):
            raise ValueError(why or f"{ref.name!r} leaves the working directory")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.crc-tmp"
        with open(self.store.path(ref.sha), "rb") as src, open(tmp, "wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
        os.chmod(tmp, ref.mode & 0o777)
        os.replace(tmp, dest)
        self.files[ref.sha] = (dest, ref.size)

    def _settle(self, job: Job, run: RunState) -> None:
        run.state = "done"
        job._emit(run, "done")

    def _on_failed(self, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        error = str(header.get("error") or "failed")
        found = self._find(header)
        if found is not None:
            job, run = found
            if not run.finished:
                run.state, run.error, run.lost = "failed", error, bool(header.get("lost"))
                job._emit(run, "failed")
            return
        job = self.jobs.get(header.get("id", ""))
        if job is not None and not job.accepted:
            job.error = error
            job._emit(RunState(job.id, state="failed", error=error), "failed")

    def _on_disconnect(self, reason: str) -> None:
        for job in self.jobs.values():
            if not job.accepted and not job.error:
                job.error = f"lost the connection to the server: {reason}"
                job._emit(RunState(job.id, state="failed", error=job.error), "failed")
            for run in job.runs.values():
                if not run.finished:
                    run.state, run.error, run.lost = "failed", \
                        f"lost the connection to the server: {reason}", True
                    job._emit(run, "failed")

    # -- files --------------------------------------------------------------------------

    def _on_want(self, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        held = self.files.get(str(header.get("sha", "")))
        if held is None:
            self.transfers.missing(msg.source, str(header.get("sha", ""))[:64],
                                   "the client no longer offers this file")
        elif not self.transfers.serve(msg.source, header, read=self._read, size=held[1]):
            self.transfers.missing(msg.source, str(header.get("sha", ""))[:64], "bad request")

    def _read(self, sha: str, offset: int, length: int) -> bytes | None:
        path, _size = self.files[sha]
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

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
