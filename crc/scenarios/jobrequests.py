"""Job command lines as typed requests, checked before anything runs.

``request(command)`` turns a parsed ``WRITEFILE``, ``SUBMIT``, ``RAKE``,
``CANCEL`` or ``WAITJOB`` line into a frozen dataclass, or raises
``CommandError`` saying what is wrong with it; ``labels(requests)`` checks
that every label is defined once per client before it is used. The scenario
loader calls both, so a malformed job line fails the file up front; the
runner (``jobsteps``) carries the requests out. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .commands import Command, CommandError, tokenise
from .texts import sized_bytes

#: Seconds ``WAITJOB`` waits when the line gives no ``--timeout``.
DEFAULT_WAIT = 30.0


@dataclass(frozen=True)
class WriteFile:
    client: str
    name: str
    text: str | None = None
    size: int | None = None
    seed: int = 0
    mode: int | None = None

    def content(self) -> bytes:
        if self.text is not None:
            return self.text.encode("utf-8")
        return sized_bytes(self.size or 0, self.seed)


@dataclass(frozen=True)
class Submit:
    client: str
    label: str
    argv: tuple[str, ...] | None
    shell: str | None
    files: tuple[str, ...] = ()
    on: str | None = None
    runall: bool = False
    timeout: float | None = None
    count: int = 1


@dataclass(frozen=True)
class Rake:
    client: str
    label: str
    rakefile: str
    on: str | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class Cancel:
    client: str
    label: str


@dataclass(frozen=True)
class WaitJob:
    client: str
    label: str
    output: str | None = None
    timeout: float = DEFAULT_WAIT


JobRequest = WriteFile | Submit | Rake | Cancel | WaitJob


def request(cmd: Command) -> JobRequest:
    """The request a job command line makes; ``CommandError`` if malformed."""
    client = cmd.require("username")
    if cmd.name == "WRITEFILE":
        return _write_file(cmd, client)
    if cmd.name == "SUBMIT":
        return _submit(cmd, client)
    if cmd.name == "RAKE":
        _no_args(cmd)
        return Rake(client, cmd.require("job"), cmd.require("rakefile"), cmd.option("on"),
                    cmd.seconds("timeout"))
    if cmd.name == "CANCEL":
        _no_args(cmd)
        return Cancel(client, cmd.require("job"))
    if cmd.name == "WAITJOB":
        _no_args(cmd)
        return WaitJob(client, cmd.require("job"), cmd.option("output"),
                       cmd.seconds("timeout") or DEFAULT_WAIT)
    raise CommandError(f"{cmd.name} is not a job command")


def _no_args(cmd: Command) -> None:
    if cmd.args:
        raise CommandError(f"{cmd.name}: unexpected argument(s) {' '.join(cmd.args)!r}")


def _write_file(cmd: Command, client: str) -> WriteFile:
    _no_args(cmd)
    name, text, size = cmd.require("file"), cmd.option("text"), cmd.number("size")
    if (text is None) == (size is None):
        raise CommandError("WRITEFILE: give exactly one of --text and --size")
    if size is not None and size < 0:
        raise CommandError(f"WRITEFILE: --size {size} is negative")
    if text is not None and cmd.option("seed") is not None:
        raise CommandError("WRITEFILE: --seed goes with --size")
    mode_text = cmd.option("mode")
    mode = None
    if mode_text is not None:
        try:
            mode = int(mode_text, 8)
        except ValueError:
            raise CommandError(f"WRITEFILE: --mode {mode_text!r} is not octal "
                               f"(such as 0755)") from None
    return WriteFile(client, name, text, size, cmd.number("seed") or 0, mode)


def _submit(cmd: Command, client: str) -> Submit:
    shell = cmd.option("shell")
    argv = tuple(cmd.args) if cmd.args else None
    if (shell is None) == (argv is None):
        raise CommandError("SUBMIT: give either --shell COMMAND or an argv after --")
    if argv is not None and "--" not in tokenise(cmd.rest):
        raise CommandError("SUBMIT: put the command's argv after a lone --")
    if cmd.flag("runall") and cmd.option("on"):
        raise CommandError("SUBMIT: --runall and --on exclude each other")
    count = cmd.number("count")
    if count is not None and count < 1:
        raise CommandError(f"SUBMIT: --count {count} is not positive")
    return Submit(client, cmd.require("job"), argv, shell, tuple(cmd.values("file")),
                  cmd.option("on"), cmd.flag("runall"), cmd.seconds("timeout"), count or 1)


def labels(requests: Iterable[JobRequest]) -> dict[str, dict[str, str]]:
    """client -> label -> defining command; ``CommandError`` for a misused label."""
    defined: dict[str, dict[str, str]] = {}
    for req in requests:
        if isinstance(req, (Submit, Rake)):
            mine = defined.setdefault(req.client, {})
            if req.label in mine:
                raise CommandError(f"{req.client}: job label {req.label!r} is defined twice")
            mine[req.label] = "SUBMIT" if isinstance(req, Submit) else "RAKE"
        elif isinstance(req, (Cancel, WaitJob)):
            kind = defined.get(req.client, {}).get(req.label)
            if kind is None:
                raise CommandError(f"{req.client}: job label {req.label!r} is used before a "
                                   f"SUBMIT or RAKE defines it")
            if isinstance(req, Cancel) and kind != "SUBMIT":
                raise CommandError(f"{req.client}: CANCEL {req.label!r}: only SUBMIT jobs "
                                   f"can be cancelled")
    return defined
