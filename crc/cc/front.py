"""One compiler invocation from the native front, carried out in the agent.

The native front (``crc.cc.launcher``: a small C program make can start for
a millisecond where an interpreter takes several) knows nothing of compiler
command lines. It sends the agent its argv, working directory and
environment, and does what the answer says:

``exit STATUS TEXT``
    print TEXT on standard error and exit (the object and dependency file
    are in place, or a usage error or ``MESHCC_FALLBACK=0`` failure said);
``exec TEXT REAL ARGS...``
    print TEXT, take a local slot (as ``crc.cc.compiler.local_slot``) and
    become the real compiler: links, probes, anything ``plan`` keeps here,
    compiles that printed diagnostics, and fallbacks;
``python TEXT``
    print TEXT and hand the invocation to ``meshcc`` itself (the compiles
    preprocessed here: ``MESHCC_SHIP=0``, sources that cannot be shipped).

What happens in between is ``crc.cc.wrapper``'s own flow — ``begin``,
``look_up``, ``ship_request``, ``shipped``, ``failed`` — run with the
invocation's environment and working directory (``inside``: the agent runs
one step of one invocation at a time, so it lends them its process for the
step), so the two fronts behave alike by construction.

A shipped compile's object comes back into a work directory beside its
output, to be renamed into place. Making and removing a directory there
per compile blocked the agent 2-3 ms each time on ext4 under a build's load
(``rmdir`` alone 1.5-2 ms): ``WorkDirs`` keeps them, emptied, for the next
compile in the same folder while other compiles are in flight, and removes
them all before answering the last one (so no empty ``.meshcc-*`` folder is
left for whatever runs after the compiles, a link or a listing).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from .compiler import MeshFailure
from .wrapper import (Compile, CompileHere, Here, Verbose, begin, failed, flag, look_up,
                      make_work_dir, remove_tree, ship_request, shipped)

#: Empty work directories kept per output folder (about a build's -j).
KEEP_PER_FOLDER = 16


class Front:
    """One thin request: ``start`` does the invocation's first steps; the
    agent calls ``answer`` with the shipped compile's outcome."""

    def __init__(self, agent: Any, request: Any, fields: list[str]) -> None:
        self.agent = agent
        self.request = request            # (its reply goes out by ``request.send``)
        self.cwd, self.me = fields[0], fields[1]
        argc = int(fields[2])
        if argc < 1 or len(fields) < 3 + argc:
            raise ValueError("argv is missing")
        self.argv = fields[3:3 + argc]
        self.env = dict(f.split("=", 1) for f in fields[3 + argc:] if "=" in f)
        self.lines: list[str] = []
        self.job: Compile | None = None
        self.work: str | None = None
        self.verbose: Verbose | None = None

    # -- the invocation's environment, lent for one step ---------------------------------

    def inside(self) -> "_Inside":
        return _Inside(self)

    # -- steps ---------------------------------------------------------------------------

    def start(self) -> None:
        """Up to the shipped compile's submission (or the answer, if the
        invocation ends sooner); anything unforeseen: ``python``, and meshcc
        itself does it all again."""
        try:
            with self.inside():
                body = self._first_steps()
            if body is not None:
                self.agent.compile(self, body)
        except Exception:                           # noqa: BLE001 (meshcc will say it)
            self.forget_work()
            self.lines.clear()
            self.python()

    def _first_steps(self) -> dict | None:
        self.verbose = verbose = Verbose(flag("MESHCC_VERBOSE", False), self.lines.append)
        job = begin(self.argv, self.me, verbose)
        if isinstance(job, int):
            return self.exit(job)
        if isinstance(job, Here):
            return self.here(job)
        if not flag("MESHCC_SHIP", True):
            return self.python()
        try:
            if look_up(job, verbose):
                return self.exit(0)
            self.work = self.agent.workdirs.take(job.what.output)
            self.agent.fronts.add(self)
        except (CompileHere, MeshFailure) as exc:
            return self.ended(failed(job, exc, verbose))
        self.job = job
        verbose.step("shipping")
        return ship_request(job, self.work)

    def answer(self, result: dict) -> None:
        """The shipped compile's outcome (as the agent answers ``ship_request``)."""
        assert self.job is not None and self.verbose is not None and self.work is not None
        if self.request.answered or not self.request.waiting():
            # The front is gone (make interrupted, and it may have removed
            # the target on purpose): nothing is put in place for nobody.
            self.forget_work()
            self.request.close()
            return
        outcome: int | Here | None
        try:
            with self.inside():
                try:
                    outcome = shipped(self.job, result, self.work, self.verbose)
                except (CompileHere, MeshFailure) as exc:
                    outcome = failed(self.job, exc, self.verbose)
        except Exception:                           # noqa: BLE001 (meshcc will say it)
            self.lines.clear()
            outcome = None
        finally:
            self.forget_work()
        return self.python() if outcome is None else self.ended(outcome)

    def forget_work(self) -> None:
        """Give the work directory back (the agent calls this for fronts
        still waiting when it stops)."""
        self.agent.fronts.discard(self)
        if self.work is not None:
            self.agent.workdirs.give(self.work)
            self.work = None

    # -- answers -------------------------------------------------------------------------

    def ended(self, outcome: "int | Here") -> None:
        return self.exit(outcome) if isinstance(outcome, int) else self.here(outcome)

    def exit(self, status: int) -> None:
        self.request.send(["exit", str(status), self._text()])

    def here(self, here: Here) -> None:
        assert self.verbose is not None
        self.verbose.say(f"compiling here: {here.why}")
        self.request.send(["exec", self._text(), here.real, *here.args])

    def python(self) -> None:
        self.request.send(["python", self._text()])

    def _text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


class WorkDirs:
    """Work directories kept empty for the next compile in the same folder
    (``take`` one, ``give`` it back); all removed (``drain``) when one comes
    back with no other invocation in flight, and when the agent stops."""

    def __init__(self, busy: Any) -> None:
        self.busy = busy                  # () -> whether invocations are in flight
        self.idle: dict[str, list[str]] = {}

    def take(self, output: str) -> str:
        """An empty work directory beside ``output`` (the invocation's
        working directory is the current one)."""
        kept = self.idle.get(os.path.abspath(os.path.dirname(output) or "."))
        uid = os.getuid()
        while kept:
            path = kept.pop()
            try:
                st = os.lstat(path)
                if st.st_uid == uid and stat.S_ISDIR(st.st_mode) and not os.listdir(path):
                    return path
            except OSError:
                pass                      # (gone with its folder: make clean)
            # Anything else is not ours to touch any more: left as it is.
        return make_work_dir(output)

    def give(self, path: str) -> None:
        """``path``'s compile is over: emptied and kept, or removed."""
        kept = self.idle.setdefault(os.path.dirname(path), [])
        try:
            names = os.listdir(path)
            for name in names:
                os.unlink(os.path.join(path, name))
        except OSError:
            remove_tree(path)             # (a directory in it, or it is gone)
            return
        busy = self.busy()
        if busy and len(kept) < KEEP_PER_FOLDER:
            kept.append(path)
            return
        _rmdir(path)
        if not busy:                      # the last in flight: none left behind
            self.drain()

    def drain(self) -> None:
        for kept in self.idle.values():
            for path in kept:
                _rmdir(path)
        self.idle.clear()


def _rmdir(path: str) -> None:
    """Remove a kept work directory, emptied when it was kept (a directory
    that is not empty any more, or not a directory, is not ours to touch)."""
    try:
        os.rmdir(path)
    except OSError:
        pass


class _Inside:
    """The invocation's environment and working directory for one step (the
    wrapper's functions read ``os.environ`` and relative paths)."""

    def __init__(self, front: Front) -> None:
        self.front = front

    def __enter__(self) -> None:
        self.saved = os.environ
        os.environ = self.front.env               # type: ignore[assignment]
        try:
            os.chdir(self.front.cwd)
        except OSError:
            os.environ = self.saved
            raise

    def __exit__(self, *exc: object) -> None:
        os.environ = self.saved
        os.chdir("/")

