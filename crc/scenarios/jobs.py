"""The job side of a scenario client: its files, jobs and builds, by label.

``ClientJobs`` puts a ``JobClient`` on a scenario's ``ChatClient`` and keeps
what every job command did under the label the scenario gave it: a
``SubmitRecord`` (one or more submitted jobs and every event they brought) or
a ``BuildRecord`` (a Rakefile build, or the errors that refused it). The
client's working directory is ``base_dir``: ``WRITEFILE`` writes there, jobs
take their required files from there, and produced files come back there.

``state()`` is what the scenario checks (docs/scenarios.md, "Jobs"): a
``jobs`` object (label -> summary) and a ``files`` object (every file of the
working directory with its size, SHA-256, mode and, when short UTF-8, text).

Every method runs in the client's loop thread; the machine calls it there.
It drives the client's job engine as a user would and never looks inside a
server; waiting on a job is ``jobsteps``'s.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..client import ChatClient
from ..client.jobs.build import ActionRun, Build
from ..client.jobs.engine import JobClient
from ..client.jobs.state import Job, JobError, RunState
from ..jobs.files import bad_relative_path
from ..jobs.rakefile import ActionSet, RakefileError, check_files, parse

#: ``output_before_exit``: a run's first output came this many seconds before its end
#: (its result, with any returned files, or its failure) reached the client.
OUTPUT_LEAD = 0.5
#: Files up to this size that decode as UTF-8 show their ``text``.
TEXT_LIMIT = 64 * 1024
#: Mode of a file ``WRITEFILE`` writes without ``--mode`` (whatever the umask).
DEFAULT_MODE = 0o644
#: Exit status of a build refused for errors in its Rakefile (as batch mode's).
REFUSED_EXIT = 2
STDOUT, STDERR = 1, 2


class LabelError(ValueError):
    """A job command naming a label it cannot use."""


def _text(chunks: list[tuple[int, bytes]], stream: int | None = None) -> str:
    data = b"".join(data for s, data in chunks if stream is None or s == stream)
    return data.decode("utf-8", "replace")


@dataclass
class RunLog:
    """What one run of a job sent, and when."""

    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    first_output: float | None = None
    ended: float | None = None


@dataclass
class SubmitRecord:
    """The jobs of one ``SUBMIT`` label (``--count`` of them, usually one)."""

    label: str
    jobs: list[Job] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)     # submissions refused locally
    logs: dict[str, RunLog] = field(default_factory=dict)
    chunks: list[tuple[int, bytes]] = field(default_factory=list)

    def listener(self, job: Job, run: RunState, event: str, data: Any) -> None:
        log = self.logs.setdefault(run.id, RunLog())
        if event == "output":
            stream, chunk = data
            now = time.monotonic()
            if log.first_output is None:
                log.first_output = now
            log.chunks.append((stream, chunk))
            self.chunks.append((stream, chunk))
        elif event in ("done", "failed"):
            log.ended = time.monotonic()

    @property
    def finished(self) -> bool:
        return all(job.finished for job in self.jobs)

    def runs(self) -> list[RunState]:
        return [run for job in self.jobs for run in job.runs.values()]

    def output(self) -> str:
        return _text(self.chunks)

    def state(self) -> dict[str, Any]:
        runs = self.runs()
        failed = bool(self.errors) or any(job.error for job in self.jobs) or \
            any(run.state == "failed" for run in runs)
        if failed:
            state = "failed"
        elif self.finished:
            state = "done"
        elif any(run.state in ("running", "collecting") for run in runs):
            state = "running"
        else:
            state = "submitted"
        return {
            "kind": "submit",
            "state": state,
            "exit": self._exit() if self.finished else None,
            "error": "; ".join(self._errors()),
            "output": _text(self.chunks),
            "stdout": _text(self.chunks, STDOUT),
            "stderr": _text(self.chunks, STDERR),
            "servers": dict(Counter(run.name for run in runs)),
            "ran_on": sorted({run.name for run in runs}),
            "runs": self._runs_state(runs),
            "returned": sorted({ref.name for run in runs for ref in run.files}),
            "output_before_exit": self._output_before_exit(),
        }

    def _exit(self) -> int:
        """The status batch mode would exit with: 0 if every run succeeded."""
        if self.errors:
            return 1
        for job in self.jobs:
            if job.exit_code != 0:
                return job.exit_code
        return 0

    def _errors(self) -> list[str]:
        errors = list(self.errors) + [job.error for job in self.jobs if job.error]
        errors += [run.error for run in self.runs() if run.error]
        return list(dict.fromkeys(errors))

    def _runs_state(self, runs: list[RunState]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for run in runs:
            key, n = run.name, 1
            while key in out:                 # several runs on one server: s1, s1#2, ...
                n += 1
                key = f"{run.name}#{n}"
            chunks = self.logs.get(run.id, RunLog()).chunks
            out[key] = {"state": run.state, "exit": run.exit, "error": run.error,
                        "output": _text(chunks), "stdout": _text(chunks, STDOUT),
                        "stderr": _text(chunks, STDERR),
                        "returned": sorted(ref.name for ref in run.files)}
        return out

    def _output_before_exit(self) -> bool:
        now = time.monotonic()
        for log in self.logs.values():
            if log.first_output is not None and \
                    (log.ended or now) - log.first_output >= OUTPUT_LEAD:
                return True
        return False


@dataclass
class BuildRecord:
    """One ``RAKE`` label: the build's progress, as its ``Reporter``."""

    label: str
    build: Build | None = None
    errors: list[str] = field(default_factory=list)     # Rakefile errors: nothing ran
    actionsets: list[str] = field(default_factory=list)
    actions: dict[str, ActionRun] = field(default_factory=dict)
    lines: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    all_lines: list[tuple[int, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    # -- Reporter -----------------------------------------------------------------------

    def actionset_started(self, actionset: ActionSet, runs: list[ActionRun]) -> None:
        self.actionsets.append(actionset.name)
        for run in runs:
            self.actions[run.name] = run
            self.lines.setdefault(run.name, [])

    def action_changed(self, run: ActionRun) -> None:
        pass

    def line(self, run: ActionRun, stream: int, text: str) -> None:
        self.lines.setdefault(run.name, []).append((stream, text))
        self.all_lines.append((stream, text))

    def actionset_finished(self, actionset: ActionSet, runs: list[ActionRun]) -> None:
        pass

    def build_finished(self, ok: bool, failed: list[ActionRun]) -> None:
        self.failed = [run.name for run in failed]

    # -- state ----------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return bool(self.errors) or (self.build is not None and self.build.exit_code is not None)

    def output(self) -> str:
        return _lines(self.all_lines)

    def state(self) -> dict[str, Any]:
        if self.errors:
            state, code = "refused", REFUSED_EXIT
        elif self.build is not None and self.build.exit_code is not None:
            code = self.build.exit_code
            state = "done" if code == 0 else "failed"
        else:
            state, code = "running", None
        remote = [run for run in self.actions.values() if run.action.remote]
        return {
            "kind": "rake",
            "state": state,
            "exit": code,
            "errors": list(self.errors),
            "actionsets": list(self.actionsets),
            "failed": list(self.failed),
            "actions": {name: self._action_state(run) for name, run in self.actions.items()},
            "servers": dict(Counter(run.server for run in remote)),
            "output": _lines(self.all_lines),
        }

    def _action_state(self, run: ActionRun) -> dict[str, Any]:
        lines = self.lines.get(run.name, [])
        return {"state": run.state, "exit": run.exit, "error": run.error, "server": run.server,
                "output": _lines(lines), "stdout": _lines(lines, STDOUT),
                "stderr": _lines(lines, STDERR)}


def _lines(lines: list[tuple[int, str]], stream: int | None = None) -> str:
    return "".join(text + "\n" for s, text in lines if stream is None or s == stream)


class ClientJobs:
    """A scenario client's working directory, jobs and builds."""

    def __init__(self, client: ChatClient, base_dir: Path) -> None:
        base_dir.mkdir(parents=True, exist_ok=True)
        self.client = client
        self.base_dir = base_dir.resolve()
        self.jobs = JobClient(client, self.base_dir)
        self.records: dict[str, SubmitRecord | BuildRecord] = {}

    def close(self) -> None:
        self.jobs.close()

    # -- commands ---------------------------------------------------------------------------

    def write_file(self, name: str, data: bytes, mode: int | None = None) -> None:
        why = bad_relative_path(name)
        if why:
            raise LabelError(why)
        path = self.base_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, DEFAULT_MODE if mode is None else mode)

    def submit(self, label: str, *, argv: list[str] | None, shell: str | None,
               files: list[str], on: str | None, runall: bool, timeout: float | None,
               count: int) -> None:
        record = SubmitRecord(label)
        self._new(label, record)
        for _ in range(count):
            try:
                record.jobs.append(self.jobs.submit(
                    argv=argv, shell=shell, files=files, on=on, everywhere=runall,
                    timeout=timeout, listener=record.listener))
            except JobError as exc:
                record.errors.append(str(exc))

    def rake(self, label: str, rakefile: str, on: str | None, timeout: float | None) -> None:
        record = BuildRecord(label)
        self._new(label, record)
        why = bad_relative_path(rakefile)
        path = self.base_dir / rakefile
        try:
            if why:
                raise RakefileError([why])
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise RakefileError([f"{rakefile}: cannot read: {exc}"]) from None
            parsed = parse(text, rakefile)
            check_files(parsed, self.base_dir)
        except RakefileError as exc:
            record.errors = list(exc.errors)
            return
        record.build = Build(parsed, self.jobs, self.client.loop, self.base_dir, record,
                             on=on, timeout=timeout)
        record.build.start()

    def cancel(self, label: str) -> None:
        record = self._record(label)
        if not isinstance(record, SubmitRecord):
            raise LabelError(f"{label!r} is a build; CANCEL takes a SUBMIT label")
        for job in record.jobs:
            self.jobs.cancel(job.id)

    def query_load(self, callback: Callable[[list[dict]], None]) -> None:
        self.jobs.query_load(callback)

    # -- conditions -------------------------------------------------------------------------

    def finished(self, label: str) -> bool:
        return self._record(label).finished

    def output(self, label: str) -> str:
        return self._record(label).output()

    def summary(self, label: str) -> str:
        """A short description of where a label stands (for a failed wait)."""
        state = self._record(label).state()
        return f"state {state['state']}, output {state['output'][-200:]!r}"

    # -- state ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"jobs": {label: record.state() for label, record in self.records.items()},
                "files": files_state(self.base_dir)}

    def _new(self, label: str, record: SubmitRecord | BuildRecord) -> None:
        if not label:
            raise LabelError("a job needs a label (--job)")
        if label in self.records:
            raise LabelError(f"job label {label!r} is already used by this client")
        self.records[label] = record

    def _record(self, label: str) -> SubmitRecord | BuildRecord:
        record = self.records.get(label)
        if record is None:
            raise LabelError(f"no job labelled {label!r} was submitted by this client")
        return record


def files_state(base: Path) -> dict[str, dict[str, Any]]:
    """Every regular file under ``base``: exists, size, sha256, mode and text."""
    out: dict[str, dict[str, Any]] = {}
    if not base.is_dir():
        return out
    for path in sorted(base.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.name.endswith(".crc-tmp"):
            continue
        data = path.read_bytes()
        text: str | None = None
        if len(data) <= TEXT_LIMIT:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        out[path.relative_to(base).as_posix()] = {
            "exists": True, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "mode": f"{path.stat().st_mode & 0o7777:04o}", "text": text}
    return out
