"""The chat client's job commands: /run, /runall, /jobs, /cancel, /load, /rake.

``JobCommands`` executes those commands for a ``Session`` through a
``JobClient``, and shows what comes back through the session's view: each
output line whole, prefixed with its job and server; an exit line per run; a
table per ``/runall``, ``/jobs`` and ``/load``. It also owns keyboard
forwarding for ``/run -i``: while such a job runs, plain lines go to its
standard input and ``/eof`` closes it.

In a script, a job command holds the script until the job (or build)
finishes, so a script's later lines see its results; interactively the prompt
returns at once and output appears as it arrives.

It builds no frames and writes to no connection: jobs go through the
``JobClient``, and whatever is shown goes through the session's view.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Callable, Protocol

from rich.table import Table
from rich.text import Text

from .jobs.build import Build
from .jobs.engine import JobClient
from .jobs.state import Job, JobError, RunState, describe_exit
from ..jobs.rakefile import RakefileError, check_files, parse
from ..jobs.rakefile import read as read_rakefile
from . import commands as cmd
from .batch import LineSplitter
from ..visible import visible
from .jobs_ui import BuildView, Output, exit_table, load_table, run_note

#: The longest a script waits for one job command to finish.
SCRIPT_JOB_LIMIT = 24 * 3600.0


class Session(Protocol):
    """What job commands use of the chat session they serve (``session.Session``)."""

    view: Any
    client: Any
    loop: Any
    script: bool

    @property
    def leaving(self) -> bool: ...
    def fail(self, message: str) -> None: ...
    def wait_until(self, check: Callable[[], bool], seconds: float, timeout_error: str,
                   doing: str) -> None: ...
    def job_settled(self) -> None: ...


class _ViewOutput(Output):
    """``Output`` that prints through a session view (keeps the prompt intact)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def line(self, prefix: str, stream: int, text: str) -> None:
        # A job's output in the chat window: shown, never obeyed (batch
        # ``run`` is where output stays byte-exact).
        style = "cyan" if stream == 1 else "magenta"
        self.session.view.show(Text.assemble((f"[{visible(prefix)}] ", style), visible(text)))

    def info(self, text: str) -> None:
        self.session.view.show(Text.from_markup(text))

    def note(self, text: str) -> None:
        self.session.view.info(text)

    def error(self, text: str) -> None:
        self.session.view.error(text)

    @property
    def out(self) -> Any:  # BuildView prints tables and asks for a terminal
        return _ViewConsole(self.session)

    @property
    def err(self) -> Any:
        return _ViewConsole(self.session)


class _ViewConsole:
    """Just enough of a console for ``BuildView``: line output, no live table."""

    is_terminal = False

    def __init__(self, session: Session) -> None:
        self.session = session

    def print(self, renderable: Any) -> None:
        self.session.view.show(renderable)


class JobCommands:
    def __init__(self, session: Session, jobs: JobClient) -> None:
        self.session = session
        self.jobs = jobs
        self.output = _ViewOutput(session)
        self.lines = LineSplitter(lambda prefix, stream, text: self.output.line(prefix, stream, text))
        #: The /run -i job taking our lines, and what it was sent before the
        #: mesh told us where it runs (delivered on acceptance).
        self.stdin_job: Job | None = None
        self._early_input: list[tuple[bytes, bool]] = []
        self.builds: list[Build] = []
        self.cancelled: set[str] = set()      # jobs the user cancelled (/cancel)

    def execute(self, command: cmd.Command) -> None:
        """Run a job command; what it cannot do is the session's error."""
        try:
            self._execute(command)
        except (JobError, RakefileError) as exc:
            self.session.fail(str(exc))

    def _execute(self, command: cmd.Command) -> None:
        match command:
            case cmd.Run(line, on, stdin):
                # A job reading our lines must not hold the lines back.
                self._submit(self.jobs.submit, hold=not stdin, shell=line, on=on, stdin=stdin)
            case cmd.RunAll(line):
                self._submit(self.jobs.submit, shell=line, everywhere=True)
            case cmd.Jobs():
                self.session.view.show(self._jobs_table())
            case cmd.Cancel(job):
                self._cancel(job)
            case cmd.Load():
                self._require_mesh()
                answered: list[bool] = []

                def show(rows: list[dict]) -> None:
                    self.session.view.show(load_table(rows))
                    answered.append(True)
                    self.session.job_settled()
                self.jobs.query_load(show)
                self._hold_script_until(lambda: bool(answered))
            case cmd.TreeCmd():
                self._require_mesh()
                shown: list[bool] = []

                def show_tree(rows: list[dict]) -> None:
                    from rich.markup import escape

                    from .monitor import snapshot, tree_text
                    snap = snapshot(rows, self.jobs.client.server_id)
                    self.session.view.show(escape(tree_text(snap)))
                    shown.append(True)
                    self.session.job_settled()
                self.jobs.query_load(show_tree)
                self._hold_script_until(lambda: bool(shown))
            case cmd.Rake(path):
                self._rake(path)
            case cmd.Eof():
                if self.stdin_job is None:
                    self.session.fail("no job is reading your input (start one with /run -i)")
                else:
                    self._input(b"", eof=True)
                    self.stdin_job = None

    def _cancel(self, wanted: str) -> None:
        """``/cancel``: a job or run id, or a job's number (the last part of
        its id, as /jobs shows it); unfinished jobs only."""
        ids = list(self.jobs.jobs) + [run for job in self.jobs.jobs.values()
                                       for run in job.runs]
        if wanted in ids:
            matches = [wanted]
        else:
            matches = [job_id for job_id, job in self.jobs.jobs.items()
                       if job_id.rsplit(".", 1)[-1] == wanted and not job.finished]
        if not matches:
            self.session.fail(f"no unfinished job {wanted!r} (see /jobs)")
            return
        if len(matches) > 1:
            self.session.fail(f"/cancel {wanted}: more than one job has that number: "
                               f"{', '.join(matches)}; give the id")
            return
        self.cancelled.add(matches[0].split("@", 1)[0])
        self.jobs.cancel(matches[0])
        self.session.view.info(f"cancelling {matches[0]}")

    def forward(self, line: str) -> bool:
        """Send a typed line to the /run -i job; False when none is reading."""
        if self.stdin_job is None:
            return False
        self._input(line.encode() + b"\n")
        return True

    def _input(self, data: bytes, eof: bool = False) -> None:
        job = self.stdin_job
        if job is not None and job.runs:
            self.jobs.send_input(next(iter(job.runs)), data, eof)
        else:
            self._early_input.append((data, eof))

    # -- running --------------------------------------------------------------------

    def _require_mesh(self) -> None:
        if not self.session.client.ext:
            raise JobError("this server does not run jobs (it speaks plain CRC v1)")

    def _submit(self, submit: Callable[..., Job], hold: bool = True, **kw: Any) -> None:
        self._require_mesh()
        job = submit(listener=self._event, **kw)
        self.session.view.info(f"job {job.id}: {job.label}")
        if job.stdin:
            self.stdin_job, self._early_input = job, []
            self.session.view.info(f"{job.id}: your lines now go to its input; /eof ends it")
        if hold:
            self._hold_script_until(lambda: job.finished)

    def cancel_all(self) -> int:
        """Cancel every unfinished job and build of ours (leaving); how many
        jobs were still running."""
        running = sum(1 for job in self.jobs.jobs.values() if not job.finished)
        for build in self.builds:
            if build.exit_code is None:
                build.abort(signal.SIGTERM)
        self.jobs.cancel_unfinished()
        return running

    def busy(self) -> bool:
        """A job or build of ours has not finished yet."""
        return any(not job.finished for job in self.jobs.jobs.values()) or \
            any(build.exit_code is None for build in self.builds)

    def _event(self, job: Job, run: RunState, event: str, data: Any) -> None:
        prefix = f"{job.id}@{run.name}"
        if event == "accepted" and job.stdin:
            for data, eof in self._early_input:
                self.jobs.send_input(run.id, data, eof)
            self._early_input = []
        elif event == "output":
            self.lines.feed(prefix, *data)
        elif event in ("done", "failed"):
            self.lines.flush(prefix)
            if self.stdin_job is job:
                self.stdin_job = None
            if self.session.leaving:
                return                  # cancelled on leaving: said so once already
            if job.id in self.cancelled and not run.ok:
                self.session.view.info(f"{prefix}: cancelled")
            elif run.ok:
                self.session.view.info(run_note(run))
            else:
                self.session.view.error(run_note(run) if run.error else
                                        f"{run.name}: exit {describe_exit(run.exit)}")
            if job.finished and len(job.runs) > 1:
                self.session.view.show(exit_table(job))
            self.session.job_settled()

    def _rake(self, path_text: str) -> None:
        self._require_mesh()
        path = Path(path_text)
        rakefile = parse(read_rakefile(path), str(path))
        base = path.resolve().parent
        check_files(rakefile, base)
        self.jobs.base_dir = base
        build = Build(rakefile, self.jobs, self.session.loop, base, BuildView(self.output),
                      done=lambda code: self.session.job_settled())
        self.builds.append(build)
        build.start()
        self._hold_script_until(lambda: build.exit_code is not None)

    def _hold_script_until(self, finished: Callable[[], bool]) -> None:
        if self.session.script:
            self.session.wait_until(finished, SCRIPT_JOB_LIMIT, "job did not finish", "")

    def _jobs_table(self) -> Table:
        table = Table(title="Jobs")
        for col in ("id", "command", "server", "state", "exit"):
            table.add_column(col)
        for job in self.jobs.jobs.values():
            if job.error:
                table.add_row(job.id, Text(visible(job.label)), "-", Text("failed", style="red"),
                              Text(visible(job.error)))
            elif not job.runs:
                table.add_row(job.id, Text(visible(job.label)), "?", "submitted", "")
            for run in job.runs.values():
                style = "green" if run.ok else ("red" if run.finished else "yellow")
                table.add_row(Text(visible(run.id)), Text(visible(job.label)),
                              Text(visible(run.name)), Text(run.state, style=style),
                              "" if run.exit is None else describe_exit(run.exit))
        return table

