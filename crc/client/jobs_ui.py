"""How jobs and builds look in the terminal (rich).

Output lines are printed whole, prefixed with who produced them: the action
(``build#2``) or the server (for ``runall``), so concurrent output stays
readable. On a terminal a live table shows the current actionset (each
action's state and the server running it); elsewhere (pipes, CI) only plain
lines are written, standard output to stdout and standard error to stderr.

Presentation only: it is told about jobs and builds, and starts, cancels or
changes none of them.
"""

from __future__ import annotations

import errno
import sys
from typing import Any, Iterable

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .jobs.build import ActionRun
from .jobs.state import Job, RunState, describe_exit
from ..jobs.rakefile import ActionSet
from ..visible import visible
from .tui import ClosedStream, Guarded, SafeConsole

STATE_STYLE = {"waiting": "dim", "running": "yellow", "ok": "green", "failed": "bold red"}


class Output(Guarded):
    """Two consoles: one per stream, each plain when not a terminal. Every
    write is guarded: a closed or full stream is reported once
    (``on_closed``) and written to no more."""

    def __init__(self, out: Console | None = None, err: Console | None = None) -> None:
        super().__init__()
        self.out = out or SafeConsole(file=sys.stdout or ClosedStream(), highlight=False,
                                      soft_wrap=True)
        self.err = err or SafeConsole(file=sys.stderr or ClosedStream(), highlight=False,
                                      soft_wrap=True)

    def line(self, prefix: str, stream: int, text: str) -> None:
        console = self.out if stream == 1 else self.err
        style = "cyan" if stream == 1 else "magenta"
        self._guard(lambda: console.print(Text.assemble((f"[{prefix}] ", style), text)))

    def print(self, renderable: Any) -> None:
        """Something on standard output (a table)."""
        self._guard(lambda: self.out.print(renderable))

    def info(self, text: str) -> None:
        """A line of rich markup (callers escape what they quote)."""
        self._guard(lambda: self.err.print(text))

    def note(self, text: str) -> None:
        """A plain line, shown as it is (control characters visible)."""
        self._guard(lambda: self.err.print(escape(visible(text, newlines=True))))

    def error(self, text: str) -> None:
        self._guard(lambda: self.err.print(
            f"[bold red]error:[/] {escape(visible(text, newlines=True))}"))

    def bytes(self, stream: int, data: bytes) -> None:
        """A job's output as it came (batch ``run``)."""
        target = sys.stdout if stream == 1 else sys.stderr

        def write() -> None:
            if target is None:                  # closed before we started (``>&-``)
                raise OSError(errno.EBADF, "the stream is closed")
            target.buffer.write(data)
            target.buffer.flush()
        self._guard(write)


def load_table(rows: Iterable[dict]) -> Table:
    table = Table(title="Server load")
    for col in ("server", "id", "cpu %", "mem %", "load1", "running", "queued", "slots", "age s"):
        table.add_column(col, justify="left" if col == "server" else "right")
    for r in rows:
        age = f"{r.get('age', 0):.1f}" + (" (stale)" if r.get("stale") else "")
        table.add_row(Text(visible(str(r.get("name")))), str(r.get("server")), f"{r.get('cpu', 0):.0f}",
                      f"{r.get('mem', 0):.0f}", f"{r.get('load1', 0):.2f}", str(r.get("running")),
                      str(r.get("queued")), str(r.get("slots")), age)
    return table


def exit_table(job: Job) -> Table:
    table = Table(title=f"runall {escape(job.label)}")
    table.add_column("server")
    table.add_column("exit", justify="right")
    table.add_column("note")
    for run in sorted(job.runs.values(), key=lambda r: r.name):
        code = describe_exit(run.exit)
        style = "green" if run.ok else "red"
        table.add_row(Text(visible(run.name)), Text(code, style=style),
                      Text(visible(run.error)))
    return table


def run_note(run: RunState) -> str:
    if run.error:
        # A job refused before any server took it has no server name.
        return f"{run.name}: {run.error}" if run.server else run.error
    return f"{run.name}: exit {describe_exit(run.exit)} in {run.seconds:.2f} s"


class BuildView:
    """``Reporter`` for ``crc.client.jobs.build.Build``."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self.live: Live | None = None
        self.runs: list[ActionRun] = []
        self.title = ""
        self.interactive = output.out.is_terminal
        self._announced: dict[str, str] = {}      # action -> server last shown

    def _table(self) -> Table:
        done = sum(r.state == "ok" for r in self.runs)
        failed = sum(r.state == "failed" for r in self.runs)
        running = sum(r.state == "running" for r in self.runs)
        table = Table(title=f"{self.title}: {done} done, {running} running, {failed} failed")
        for col in ("action", "command", "server", "state"):
            table.add_column(col)
        for r in self.runs:
            table.add_row(r.name, Text(r.action.label), Text(visible(r.server)),
                          Text(r.state, style=STATE_STYLE.get(r.state, "")))
        return table

    def actionset_started(self, actionset: ActionSet, runs: list[ActionRun]) -> None:
        self.runs, self.title = runs, actionset.name
        if self.interactive:
            self.live = Live(self._table(), console=self.output.out, refresh_per_second=8,
                             transient=True)
            self.live.start()
        else:
            self.output.info(f"== {escape(actionset.name)}: {len(runs)} action(s)")

    def action_changed(self, run: ActionRun) -> None:
        if self.live is not None:
            self.live.update(self._table())
        elif run.state == "running" and run.server not in ("?", "") \
                and self._announced.get(run.name) != run.server:
            self._announced[run.name] = run.server
            self.output.info(f"   {run.name} {escape(run.action.label)} -> "
                             f"{escape(visible(run.server))}")
        elif run.finished:
            mark = "ok" if run.state == "ok" else f"FAILED ({run.error or f'exit {run.exit}'})"
            self.output.info(f"   {run.name} {escape(visible(mark))}")

    def line(self, run: ActionRun, stream: int, text: str) -> None:
        prefix = run.name if run.server in ("local", "?") else f"{run.name}@{visible(run.server)}"
        self.output.line(prefix, stream, text)

    def actionset_finished(self, actionset: ActionSet, runs: list[ActionRun]) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
            self.output.print(self._table())

    def build_finished(self, ok: bool, failed: list[ActionRun]) -> None:
        if ok:
            self.output.info("[bold green]build succeeded[/]")
            return
        self.output.error("build failed; failed action(s):")
        for run in failed:
            self.output.info(f"  {escape(visible(run.describe_failure()))}")
