"""What a job is to the client: its runs and their states, the events a
listener hears, and how exits and unusable text are put into words. Plain
data; the engine (``engine.JobClient``) changes it, the interfaces read it."""

from __future__ import annotations

import signal
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

from ...jobs.files import FileRef

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
    cached: bool = False           # answered from the compile cache, nothing ran
    error: str = ""
    lost: bool = False
    #: Lost because its server shut down on purpose (a restart), not because
    #: it died or became unreachable: nothing the job could have caused.
    stopped: bool = False
    seconds: float = 0.0
    files: list[FileRef] = field(default_factory=list)
    #: Produced files that came inside the result (sha -> bytes, checked).
    inline: dict[str, bytes] = field(default_factory=dict)
    pending_files: int = 0
    #: Output bytes received per stream (index 1 stdout, 2 stderr): what a
    #: FETCH asks to skip, and what repeated output is recognised by.
    received: list[int] = field(default_factory=lambda: [0, 0, 0])
    waiting: bool = False          # the connection is down; it resumes on reconnect
    collection: int = 0            # which attempt at collecting files is current
    stdin_sent: int = 0            # bytes of standard input sent to the job
    stdin_taken: int = 0           # ... of which its server has taken (INPUT_ACK)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @property
    def ok(self) -> bool:
        return self.state == "done" and self.exit == 0 and not self.error


#: listener(job, run, event, data): event is one of accepted, started,
#: output (data: (stream, bytes)), done, failed, file (data: name), waiting
#: (data: why; the connection is down and the run resumes after a reconnect),
#: input_room (data: bytes of standard input that may be sent now).
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
    request: dict | None = None    # the SUBMIT header, kept until ACCEPTED
    request_body: bytes = b""      # ... and the files it carries inline
    resent: bool = False           # SUBMIT sent again after a reconnect
    sent: bool = False             # SUBMIT sent (else held back: ``JobClient._held``)
    base_dir: Path | None = None   # where its files are read and written, if not the client's
    #: ``base_dir`` is a fresh directory of the caller's that nobody else
    #: reads until the job is over: produced files are written in place
    #: (no temporary name renamed over them, a directory operation the
    #: caller's own rename into place makes twice over).
    scratch: bool = False

    @property
    def finished(self) -> bool:
        if self.error:
            return True
        return self.accepted and all(r.finished for r in self.runs.values())

    @property
    def exit_code(self) -> int:
        """0 when every run exited 0; else the first failing run's status as a
        shell gives it (128 + N for signal N), 1 if it has none."""
        if self.error:
            return 1
        for run in self.runs.values():
            if not run.ok:
                return shell_status(run.exit) if run.exit not in (None, 0) else 1
        return 0

    def emit(self, run: RunState, event: str, data: Any = None) -> None:
        if self.listener is not None:
            self.listener(self, run, event, data)


def text_problem(what: str, text: str) -> str | None:
    """Why ``text`` cannot go into a job (not UTF-8, or a NUL byte, which no
    command line can carry), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} {text.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8"
    if "\0" in text:
        return f"{what} {text!r} contains a NUL byte"
    return None


def shell_status(exit: int) -> int:
    """A process's exit as a shell reports it: its code, or 128 + N when
    killed by signal N (``subprocess`` says -N)."""
    return 128 - exit if exit < 0 else exit


def describe_exit(exit: int | None) -> str:
    """``0``, ``3``, ``137 (SIGKILL)``, or ``-`` when there is none."""
    if exit is None:
        return "-"
    if exit < 0:
        try:
            name = signal.Signals(-exit).name
        except ValueError:
            name = f"signal {-exit}"
        return f"{128 - exit} ({name})"
    return str(exit)
