"""Running a Rakefile: actionsets in order, actions of one set at once.

``Build`` walks a parsed ``Rakefile`` inside the client's event loop. Remote
actions go through the mesh as jobs (``JobClient``) with their required files;
local actions run on this machine in ``base_dir`` as child processes in the
same selector. Output is cut into whole lines per action and stream before it
reaches the ``reporter``, so actions running at once never interleave
mid-line. With ``jobs_limit`` set, at most that many remote actions are in flight
at once (``make -j``'s meaning: the rest wait here, not in the servers'
queues). The first actionset with a failed action ends the build once its
running actions have finished; the result names every failed action.

A remote action lost with its server (the server died or left the mesh) is
retried once on another server: an action depends only on its required
files, so running it again elsewhere is safe.

It builds no frames and prints nothing: remote actions are ``JobClient``
jobs, and everything to show goes to the ``reporter``.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from ...jobs.process import ChildProcess
from ...jobs.rakefile import Action, ActionSet, Rakefile
from ...net import EventLoop, Timer
from .engine import JobClient
from .state import Job, JobError, RunState

log = logging.getLogger("crc.jobs.build")     # the name its log lines have always had

#: After ``Build.abort``, seconds local actions get to end before SIGKILL.
ABORT_GRACE = 2.0
#: Runs of one remote action at most, however its servers were lost: a
#: rolling restart may stop an action's server, then the one it was retried
#: on; an action that stops servers itself (``kill -TERM $PPID``) costs at
#: most this many.
MAX_ATTEMPTS = 4


@dataclass
class ActionRun:
    action: Action
    actionset: str
    index: int                       # 1-based within its actionset
    state: str = "waiting"           # waiting -> running -> ok | failed
    server: str = "local"
    exit: int | None = None
    error: str = ""
    attempts: int = 0
    #: Times its server was lost under it for no reason we know (it died, or
    #: became unreachable): one is retried (the action might be what killed
    #: it: a second server is all it may cost); a server that said it was
    #: stopping (a restart) is not counted, up to ``MAX_ATTEMPTS`` in all.
    losses: int = 0
    job: Job | None = None
    process: ChildProcess | None = None        # a local action's, while it runs
    timer: Timer | None = None                 # a local action's --timeout
    partial: dict[int, bytearray] = field(default_factory=dict)   # stream -> unfinished line

    @property
    def name(self) -> str:
        return f"{self.actionset}#{self.index}"

    @property
    def finished(self) -> bool:
        return self.state in ("ok", "failed")

    def describe_failure(self) -> str:
        why = self.error or f"exit status {self.exit}"
        return f"{self.name} ({self.action.label}) on {self.server}: {why}"


class Reporter(Protocol):
    def actionset_started(self, actionset: ActionSet, runs: list[ActionRun]) -> None: ...
    def action_changed(self, run: ActionRun) -> None: ...
    def line(self, run: ActionRun, stream: int, text: str) -> None: ...
    def actionset_finished(self, actionset: ActionSet, runs: list[ActionRun]) -> None: ...
    def build_finished(self, ok: bool, failed: list[ActionRun]) -> None: ...


class Build:
    def __init__(self, rakefile: Rakefile, jobs: JobClient, loop: EventLoop, base_dir: Path,
                 reporter: Reporter, on: str | None = None, timeout: float | None = None,
                 done: Callable[[int], None] | None = None, jobs_limit: int | None = None) -> None:
        self.rakefile = rakefile
        self.jobs = jobs
        self.loop = loop
        self.base_dir = Path(base_dir)
        self.reporter = reporter
        self.on = on
        self.timeout = timeout
        self.done = done
        self.index = -1
        self.current: list[ActionRun] = []
        self.failed: list[ActionRun] = []
        self.exit_code: int | None = None
        self.aborted = False
        self.local_slots = max(2, os.cpu_count() or 1)
        self._local_waiting: list[ActionRun] = []
        #: Remote actions in flight at most (None: all of an actionset at once).
        self.jobs_limit = jobs_limit
        self._remote_waiting: list[ActionRun] = []
        self._after_abort: Callable[[], None] | None = None
        self._abort_timer: Timer | None = None

    def start(self) -> None:
        """Begin; the caller has parsed and checked the Rakefile (``check_files``)."""
        self._next_actionset()

    # -- sequencing ----------------------------------------------------------------

    def _next_actionset(self) -> None:
        self.index += 1
        if self.index >= len(self.rakefile.actionsets):
            self._finish(True)
            return
        actionset = self.rakefile.actionsets[self.index]
        self.current = [ActionRun(a, actionset.name, i + 1) for i, a in enumerate(actionset.actions)]
        self.reporter.actionset_started(actionset, self.current)
        self._local_waiting = [r for r in self.current if not r.action.remote]
        self._remote_waiting = [r for r in self.current if r.action.remote]
        self._start_remote()
        self._start_local()

    def _start_remote(self) -> None:
        """Remote actions, all at once or at most ``jobs_limit`` in flight."""
        running = sum(1 for r in self.current if r.action.remote and r.state == "running")
        limit = self.jobs_limit or running + len(self._remote_waiting)
        self._launch_from(self._remote_waiting, limit, running)

    def _start_local(self) -> None:
        """Local actions run at most ``local_slots`` at a time (like ``make
        -j``): ten thousand at once would exhaust this machine's processes
        and descriptors. The rest wait their turn."""
        running = sum(1 for r in self.current if r.process is not None)
        self._launch_from(self._local_waiting, self.local_slots, running)

    def _launch_from(self, waiting: list[ActionRun], limit: int, running: int) -> None:
        """Launch from the front of ``waiting`` until ``limit`` are running."""
        while waiting and running < limit and not self.aborted:
            self._launch(waiting.pop(0))
            running += 1

    def _launch(self, run: ActionRun) -> None:
        run.attempts += 1
        run.state = "running"
        run.error = ""
        if run.action.remote:
            try:
                run.job = self.jobs.submit(shell=run.action.command, files=run.action.requires,
                                           on=self.on, timeout=self.timeout,
                                           listener=lambda job, r, ev, data, run=run:
                                           self._job_event(run, r, ev, data))
                run.server = "?"
            except JobError as exc:
                self._settle(run, None, str(exc))
                return
        else:
            try:
                run.process = ChildProcess(
                    self.loop, ["/bin/sh", "-c", run.action.command], str(self.base_dir),
                    on_output=lambda stream, data, run=run: self._output(run, stream, data),
                    on_exit=lambda code, run=run: self._local_exited(run, code))
            except (OSError, ValueError) as exc:
                self._settle(run, None, f"cannot start: {exc}")
                return
            if self.timeout:
                run.timer = self.loop.call_later(self.timeout, self._local_timed_out, run)
        self.reporter.action_changed(run)

    def _local_timed_out(self, run: ActionRun) -> None:
        run.timer = None
        if run.process is not None and run.process.returncode is None:
            run.error = f"timed out after {self.timeout:g} s (--timeout); killed"
            run.process.kill()

    def _local_exited(self, run: ActionRun, code: int) -> None:
        run.process = None
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        self._settle(run, code, run.error)
        if self.aborted and self._after_abort is not None \
                and not any(r.process for r in self.current):
            self._aborted()
        elif not self.aborted:
            self._start_local()

    def abort(self, signum: int = signal.SIGTERM,
              then: Callable[[], None] | None = None) -> None:
        """Stop the build: no further actionset starts, and every local action
        still running gets ``signum`` (its whole process group; SIGKILL after
        ``ABORT_GRACE`` seconds). ``then`` is called once they have all ended.
        Remote actions are the caller's to cancel (``JobClient``)."""
        self.aborted = True
        self._after_abort = then
        running = [r for r in self.current if r.process is not None]
        for run in running:
            run.process.kill(signum)
        if not running:
            self._aborted()
        elif signum != signal.SIGKILL:
            self._abort_timer = self.loop.call_later(ABORT_GRACE, self._kill_leftovers)

    def _kill_leftovers(self) -> None:
        for run in self.current:
            if run.process is not None:
                run.process.kill(signal.SIGKILL)

    def _aborted(self) -> None:
        if 0 <= self.index < len(self.rakefile.actionsets) and self.current:
            self.reporter.actionset_finished(self.rakefile.actionsets[self.index], self.current)
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        then, self._after_abort = self._after_abort, None
        if then is not None:
            then()

    def _job_event(self, run: ActionRun, state: RunState, event: str, data: Any) -> None:
        if event in ("accepted", "started"):
            run.server = state.name
            self.reporter.action_changed(run)
        elif event == "output":
            stream, chunk = data
            self._output(run, stream, chunk)
        elif event == "done":
            self._settle(run, state.exit, state.error)
        elif event == "failed":
            if state.lost and not self.aborted and self._retry(run, state):
                self._flush_lines(run)
                self.reporter.line(run, 2, f"crc: {state.error}; retrying on another server")
                self._launch(run)
                return
            self._settle(run, state.exit, state.error)

    @staticmethod
    def _retry(run: ActionRun, state: RunState) -> bool:
        """Whether a remote action whose server was lost under it runs again."""
        if not state.stopped:
            run.losses += 1
        return run.losses <= 1 and run.attempts < MAX_ATTEMPTS

    def _output(self, run: ActionRun, stream: int, chunk: bytes) -> None:
        buf = run.partial.setdefault(stream, bytearray())
        buf += chunk
        *lines, rest = buf.split(b"\n")
        for line in lines:
            self.reporter.line(run, stream, line.decode("utf-8", "replace"))
        run.partial[stream] = bytearray(rest)

    def _flush_lines(self, run: ActionRun) -> None:
        for stream, buf in run.partial.items():
            if buf:
                self.reporter.line(run, stream, buf.decode("utf-8", "replace"))
        run.partial.clear()

    def _settle(self, run: ActionRun, code: int | None, error: str) -> None:
        if run.finished:
            return
        if self.aborted:
            run.state, run.exit, run.error = "failed", code, error or "interrupted"
            return
        self._flush_lines(run)
        run.exit = code
        run.error = error
        run.state = "ok" if code == 0 and not error else "failed"
        self.reporter.action_changed(run)
        if run.action.remote and self._remote_waiting:
            self.loop.call_soon(self._start_remote)
        if all(r.finished for r in self.current):
            actionset = self.rakefile.actionsets[self.index]
            self.reporter.actionset_finished(actionset, self.current)
            failed = [r for r in self.current if r.state == "failed"]
            if failed:
                self.failed = failed
                self._finish(False)
            else:
                self.loop.call_soon(self._next_actionset)

    def _finish(self, ok: bool) -> None:
        self.exit_code = 0 if ok else 1
        self.reporter.build_finished(ok, self.failed)
        if self.done is not None:
            self.done(self.exit_code)
