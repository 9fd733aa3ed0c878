"""Batch mode: ``chat_client.py --server HOST:PORT rake|run|runall|monitor ...``.

Connects, waits for the extension handshake (a plain CRC v1 server cannot run
jobs: that is a clear error, not a hang), runs one request and exits with its
status — the job's exit code for ``run`` (128 + N for a job killed by signal
N), 0 only if every server succeeded for ``runall``, 0 only if every actionset
succeeded for ``rake``; 1 for a connection problem (none reachable, refused,
a plain v1 server), 2 for a bad command line, Rakefile or file list, 128 + N
when stopped by signal N (the jobs are cancelled).

A lost connection is not the end (unless ``--no-reconnect``): the client
tries its ``--server`` addresses in turn for ``--reconnect-for`` seconds
(``BATCH_RECONNECT_FOR`` when not given) and picks up its jobs where they
were (docs/jobs.md, "Durable results").

Batch mode has no chat session and no command language (``session``,
``commands``): one request, then exit. It sets its signal handlers only while
its loop runs, and puts the previous ones back after.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .jobs.build import Build
from .jobs.engine import JobClient
from .jobs.state import Job, JobError, RunState, shell_status, text_problem
from ..jobs.files import bad_relative_path
from ..jobs.rakefile import RakefileError, check_files, parse
from ..jobs.rakefile import read as read_rakefile
from ..visible import visible
from ..net import EventLoop
from ..net.loop import EVENT_READ
from ..protocol import StatusCode
from ..routing import QUIET_INFO
from .core import ChatClient, ClientConfig
from .jobs_ui import BuildView, Output, exit_table, run_note

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
#: Signals that end a batch run like Ctrl-C: jobs cancelled, exit 128 + signal
#: (SIGHUP: the terminal went away).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: After a signal, how long the cancellations and goodbye may take to leave.
INTERRUPT_GRACE = 3.0
#: Seconds batch mode keeps trying to reconnect when ``--reconnect-for`` is 0.
BATCH_RECONNECT_FOR = 60.0
COMMANDS = ("rake", "run", "runall")


def timeout_seconds(text: str) -> float:
    """A positive, finite number of seconds (no --timeout at all: no limit but
    the server's --max-runtime)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive number of seconds (leave --timeout out for no limit "
            "but the server's --max-runtime)")
    return value


def job_count(text: str) -> int:
    """``rake -j N``: a whole number of actions, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of jobs") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least one job must be allowed")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chat_client.py --server HOST:PORT",
                                description="Run jobs and builds on the mesh.")
    sub = p.add_subparsers(dest="command", required=True)
    rake = sub.add_parser("rake", help="build a Rakefile")
    rake.add_argument("rakefile", nargs="?", default="Rakefile")
    rake.add_argument("--on", metavar="NAME", help="run every remote action on this server")
    rake.add_argument("--timeout", type=timeout_seconds, help="seconds allowed per action")
    rake.add_argument("-j", "--jobs", type=job_count, metavar="N",
                      help="at most N remote actions at once (default: all of an actionset; "
                      "the servers queue what their slots cannot take)")
    run = sub.add_parser("run", help="run one command on the least-loaded server")
    run.add_argument("--on", metavar="NAME", help="run on this server")
    run.add_argument("-i", "--stdin", action="store_true", help="forward standard input to the job")
    run.add_argument("--file", "-f", action="append", default=[], metavar="FILE",
                     help="a file the command needs (repeatable)")
    run.add_argument("--timeout", type=timeout_seconds, help="seconds allowed")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    monitor = sub.add_parser("monitor", help="watch the whole mesh (crc-monitor)")
    monitor.add_argument("--once", action="store_true",
                         help="print one snapshot and exit (plain text unless a terminal)")
    monitor.add_argument("--json", action="store_true", help="with --once: as JSON")
    monitor.add_argument("--interval", type=timeout_seconds, default=0.5, metavar="SECONDS",
                         help="refresh period (default 0.5)")
    runall = sub.add_parser("runall", help="run one command on every server")
    runall.add_argument("--file", "-f", action="append", default=[], metavar="FILE")
    runall.add_argument("--timeout", type=timeout_seconds, help="seconds allowed")
    runall.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return p


def exit_status(run: RunState) -> int:
    if run.exit:
        return shell_status(run.exit)  # its code, or 128 + N for signal N
    return 0 if run.ok else 1


class LineSplitter:
    """Cuts a byte stream into whole lines (per key) before printing: text
    lines for ``emit``, or, with ``raw``, the lines' bytes as they came."""

    def __init__(self, emit: Callable[[Any, int, Any], None], raw: bool = False) -> None:
        self.emit = emit
        self.raw = raw
        self.partial: dict[tuple[Any, int], bytearray] = {}

    def _line(self, key: Any, stream: int, line: bytes) -> None:
        self.emit(key, stream, bytes(line) if self.raw else line.decode("utf-8", "replace"))

    def feed(self, key: Any, stream: int, data: bytes) -> None:
        buf = self.partial.setdefault((key, stream), bytearray())
        buf += data
        *lines, rest = buf.split(b"\n")
        for line in lines:
            self._line(key, stream, line)
        self.partial[(key, stream)] = bytearray(rest)

    def flush(self, key: Any) -> None:
        for (k, stream), buf in list(self.partial.items()):
            if k == key and buf:
                self._line(k, stream, buf)
                buf.clear()


class Batch:
    def __init__(self, server: tuple[str, int], args: argparse.Namespace, name: str,
                 client_id: int = 0, output: Output | None = None, tls: Any = None,
                 secret: bytes | None = None, servers: Sequence[tuple[str, int]] = (),
                 reconnect: bool = False, reconnect_for: float = BATCH_RECONNECT_FOR,
                 liveness: dict[str, float] | None = None, info: str = "") -> None:
        self.args = args
        self.output = output or Output()
        self.output.on_closed = self._output_closed
        self.loop = EventLoop()
        self.server = server
        self.liveness = dict(liveness or {})
        self.client = ChatClient(ClientConfig(server, name, client_id, info, tls=tls,
                                              secret=secret,
                                              servers=tuple(servers), reconnect=reconnect,
                                              reconnect_for=reconnect_for, **self.liveness),
                                 self.loop,
                                 listener=self._on_client_event)
        self.jobs = JobClient(self.client, Path.cwd())
        self.code = 1
        self.started = False
        self._stdin: StdinForwarder | None = None
        self.build: Build | None = None
        self._monitor: Any = None          # the monitor command's (``crc.client.monitor``)
        self._signalled = False

    def run(self) -> int:
        try:
            self.client.start()
        except OSError as exc:
            self.output.error(f"cannot connect to {self.server[0]}:{self.server[1]}: {exc}")
            return 1
        self.loop.call_later(self.liveness.get("handshake_timeout", HANDSHAKE_TIMEOUT) + 1.0,
                             self._handshake_timeout)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            self.loop.run()
        finally:
            if self._monitor is not None:
                self._monitor.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._stdin is not None:
                self._stdin.stop()
            if self.build is not None:
                self.build.abort(signal.SIGKILL)      # nothing local outlives us
            self.jobs.close()
            self.client.close()
        return self.code

    def _on_signal(self, signum: int, _frame: object) -> None:
        # In the signal handler: only hand over to the loop.
        self.loop.call_soon_threadsafe(self._interrupted, signum)

    def _interrupted(self, signum: int) -> None:
        """SIGINT or SIGTERM (Ctrl-C, ``kill``, ``timeout``, a CI cancelling):
        cancel every job of ours still running on the mesh (the servers would
        otherwise run them to their end for a client that may come back),
        stop local actions, and exit with 128 + the signal. A second signal
        stops at once."""
        name = signal.Signals(signum).name
        if self._monitor is not None:
            self._monitor.close()            # (monitor) Ctrl-C is how one leaves it
            self._stop(0)
            return
        if self._signalled:
            self.loop.stop()
            self.output.error(f"{name} again: stopping now")
            return
        self._stop_everything(128 + signum)
        # Said last: a closed standard error must not keep the jobs running.
        self.output.error(f"interrupted ({name}): cancelling what is still running")

    def _output_closed(self, exc: OSError) -> None:
        """Our standard output or error cannot be written (a reader that went
        away, as ``| head``, a closed or full stream): nobody will see the
        rest, so the jobs stop, once; 141 (128 + SIGPIPE) for a broken pipe."""
        if self._signalled:
            return
        self._stop_everything(128 + signal.SIGPIPE if exc.errno == errno.EPIPE else 1)
        try:
            print(f"chat_client.py: cannot write the output ({exc.strerror or exc}); "
                  "cancelling what is still running", file=sys.stderr)
        except (OSError, ValueError, AttributeError):
            pass

    def _stop_everything(self, code: int) -> None:
        """Cancel our jobs on the mesh, stop local actions, leave with ``code``."""
        self._signalled = True
        self.code = code
        if self._stdin is not None:
            self._stdin.stop()
        self.jobs.cancel_unfinished()
        if self.build is not None:
            self.build.abort(signal.SIGTERM if code != 128 + signal.SIGINT else signal.SIGINT,
                             then=self._leave_after_interrupt)
        else:
            self._leave_after_interrupt()

    def _leave_after_interrupt(self) -> None:
        self.client.finish()
        self.loop.call_later(INTERRUPT_GRACE, self.loop.stop)

    def _stop(self, code: int) -> None:
        if self._signalled:
            return                     # the exit status is the signal's
        self.code = code
        self.client.finish()

    def _on_client_event(self, kind: str, data: dict) -> None:
        if kind == "extensions" and not self.started:
            self.started = True
            self._begin()
        elif kind == "plain":
            self.output.error(f"{self.server[0]}:{self.server[1]} is a plain CRC v1 server; "
                              "it cannot run jobs")
            self._stop(1)
        elif kind == "status" and (data.get("code") == StatusCode.AUTH_REFUSED or
                                   data.get("code") == 2 and not self.started):
            # (A duplicate id after a reconnect: the mesh has not yet noticed
            # our old connection is gone; the client tries again.)
            self.output.error(f"server refused us: {data.get('text')}")
            self._stop(1)
        elif kind == "disconnected" and not self.loop.stopping and self.code == 1 \
                and not self.started:
            if data.get("reconnecting") and len(self.client.config.candidates) > 1:
                return                  # the next address is tried; the handshake deadline holds
            self.output.error(f"cannot connect to {self.server[0]}:{self.server[1]}: "
                              f"{data.get('reason')}")
            self.code = 1
            self.loop.stop()
        elif kind == "disconnected" and self.started and data.get("reconnecting"):
            self.output.note(f"connection lost ({data.get('reason')}); reconnecting, the jobs "
                             "go on")
        elif kind == "reconnected":
            self.output.note(f"reconnected to {data.get('server')}")

    def _handshake_timeout(self) -> None:
        if not self.started:
            limit = self.liveness.get("handshake_timeout", HANDSHAKE_TIMEOUT)
            self.output.error(f"no server completed the mesh handshake within {limit:g} s "
                              f"(--connect-timeout)")
            self._stop(1)

    def _begin(self) -> None:
        if self.client.config.secret is not None and not self.client.server_verified:
            self.output.error(f"{self.server[0]}:{self.server[1]} did not prove it knows the "
                              "mesh secret: no job (nor its files) is sent to it")
            self._stop(1)
            return
        try:
            getattr(self, f"_begin_{self.args.command}")()
        except (JobError, RakefileError, OSError) as exc:
            self.output.error(str(exc))
            self._stop(2)

    # -- run ------------------------------------------------------------------------

    def _argv(self) -> list[str]:
        return command_words(self.args)

    def _begin_run(self) -> None:
        if self.args.on:
            self.jobs.query_load(lambda rows: self._on_known(rows, self._submit_run))
        else:
            self._submit_run()

    def _submit_run(self) -> None:
        try:
            self.jobs.submit(argv=self._argv(), files=self.args.file, on=self.args.on,
                             stdin=self.args.stdin, timeout=self.args.timeout,
                             listener=self._on_run_event)
        except JobError as exc:
            self.output.error(str(exc))
            self._stop(2)

    def _on_run_event(self, job: Job, run: RunState, event: str, data: Any) -> None:
        if event == "accepted" and self.args.stdin and self._stdin is None:
            try:
                fd = sys.stdin.fileno()
                os.fstat(fd)
            except (AttributeError, OSError, ValueError):       # no standard input at all
                self.jobs.send_input(run.id, b"", eof=True)
            else:
                self._stdin = StdinForwarder(self.loop, self.jobs, run.id, fd)
        elif event == "input_room" and self._stdin is not None:
            self._stdin.resume()
        elif event == "output":
            self.output.bytes(*data)
        elif event in ("done", "failed"):
            if self._stdin is not None:
                self._stdin.stop()
            if self._signalled:
                return                  # cancelled by us: said so already
            if run.error:
                self.output.error(run_note(run))
            self._stop(exit_status(run) if event == "done" else 1)

    # -- monitor ---------------------------------------------------------------------

    def _begin_monitor(self) -> None:
        from .monitor import Watch
        self._monitor = Watch(self.jobs, self.loop, self.args, lambda: self.client.server_id,
                              self._stop)
        self._monitor.start()

    # -- runall ----------------------------------------------------------------------

    def _begin_runall(self) -> None:
        # Each line whole, after its server's name; the line's bytes as the job
        # wrote them (as ``run`` keeps them), only the name made visible.
        self.lines = LineSplitter(self._prefixed, raw=True)
        self.jobs.submit(argv=self._argv(), files=self.args.file, everywhere=True,
                         timeout=self.args.timeout, listener=self._on_runall_event)

    def _on_runall_event(self, job: Job, run: RunState, event: str, data: Any) -> None:
        if event == "output":
            self.lines.feed(run.name, *data)
        elif event in ("done", "failed"):
            self.lines.flush(run.name)
            if job.finished and not self._signalled:
                self.output.print(exit_table(job))
                self._stop(job.exit_code)

    def _prefixed(self, name: str, stream: int, line: bytes) -> None:
        self.output.bytes(stream, f"[{visible(name)}] ".encode() + line + b"\n")

    # -- rake --------------------------------------------------------------------------

    def _begin_rake(self) -> None:
        path = Path(self.args.rakefile)
        base = path.resolve().parent
        # (Read and checked before connecting, by ``batch_main``; a file gone
        # since is said when its action is sent.)
        rakefile = getattr(self.args, "loaded_rakefile", None)
        if rakefile is None:
            rakefile = parse(read_rakefile(path), str(path))
            check_files(rakefile, base)
        self.jobs.base_dir = base
        self.build = Build(rakefile, self.jobs, self.loop, base, BuildView(self.output),
                           on=self.args.on, timeout=self.args.timeout, done=self._stop,
                           jobs_limit=self.args.jobs)
        if self.args.on:
            # A server that does not exist (or a name two servers share) is
            # said once, before anything runs, not by every action.
            self.jobs.query_load(lambda rows: self._on_known(rows, self.build.start))
        else:
            self.build.start()

    def _on_known(self, rows: list[dict], then: Callable[[], None]) -> None:
        """``--on``: go on with ``then`` if it names exactly one server of the
        load table, else say why (exit 2), before anything runs."""
        on = self.args.on
        matches = [r for r in rows if str(r.get("server")) == on] or \
            [r for r in rows if r.get("name") == on]
        if len(matches) == 1:
            then()
            return
        if matches:
            ids = ", ".join(str(r.get("server")) for r in matches)
            self.output.error(f"--on {on}: {len(matches)} servers have that name (ids {ids}); "
                              "give one of the ids")
        else:
            known = ", ".join(sorted(str(r.get("name")) for r in rows)) or "none"
            self.output.error(f"--on {on}: no such server in the mesh (known: {known})")
        self._stop(2)


class StdinForwarder:
    """Our standard input to a job, to its end, within the job's window.

    A pipe, terminal or socket is watched by the selector. A regular file or
    a device such as ``/dev/null`` cannot be (epoll refuses them, and they
    are always "ready"): it is read a chunk per loop pass instead, so the
    network is served in between. Either way reading stops while the job's
    server holds ``STDIN_WINDOW`` bytes it has not taken, and goes on when
    it says it has (``resume``)."""

    CHUNK = 64 * 1024

    def __init__(self, loop: EventLoop, jobs: JobClient, run_id: str, fd: int) -> None:
        self.loop, self.jobs, self.run_id, self.fd = loop, jobs, run_id, fd
        self.done = False
        self.registered = False
        self._step_due = False
        self._was_blocking = os.get_blocking(fd)
        try:
            os.set_blocking(fd, False)
        except OSError:
            pass
        try:
            loop.register(fd, EVENT_READ, self)
            self.registered = self.watched = True
        except (OSError, ValueError):
            self.watched = False
            self._schedule()

    def handle_event(self, mask: int) -> None:
        self._step()

    def _schedule(self) -> None:
        if not self._step_due and not self.done:
            self._step_due = True
            self.loop.call_soon(self._step)

    def _step(self) -> None:
        self._step_due = False
        if self.done:
            return
        room = self.jobs.stdin_room(self.run_id)
        if room <= 0:
            self._watch(False)          # until the server has taken some
            return
        try:
            data = os.read(self.fd, min(room, self.CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("standard input cannot be read (%s); sending end of file",
                        exc.strerror or exc)
            data = b""
        self.jobs.send_input(self.run_id, data, eof=not data)
        if not data:
            self.stop()
        elif not self.watched:
            self._schedule()

    def resume(self) -> None:
        """The job's server took some input: read on."""
        if self.done or self.jobs.stdin_room(self.run_id) <= 0:
            return
        if self.watched:
            self._watch(True)
        else:
            self._schedule()

    def _watch(self, on: bool) -> None:
        if not self.watched or on == self.registered:
            return
        if on:
            self.loop.register(self.fd, EVENT_READ, self)
        else:
            self.loop.unregister(self.fd)
        self.registered = on

    def stop(self) -> None:
        """No more input is wanted (end of file, or the job ended)."""
        if self.done:
            return
        self.done = True
        self._watch(False)
        try:
            os.set_blocking(self.fd, self._was_blocking)
        except OSError:
            pass


def load_rakefile(path: str) -> tuple[Any, list[str]]:
    """Read, parse and check a Rakefile without a server: ``(rakefile, [])``,
    or ``(None, ["FILE:LINE: reason", ...])``."""
    try:
        rakefile = parse(read_rakefile(Path(path)), path)
        check_files(rakefile, Path(path).resolve().parent)
    except RakefileError as exc:
        return None, exc.errors
    return rakefile, []


def command_words(args: argparse.Namespace) -> list[str]:
    """The command of ``run``/``runall`` (after an optional ``--``);
    ``JobError`` if there is none."""
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise JobError(f"no command given (use: {args.command} -- CMD ARGS...)")
    return argv


def command_line_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with a ``run``/``runall`` command line, found before
    anything connects: the command's words, ``--on``, the ``--file`` list."""
    try:
        argv = command_words(args)
    except JobError as exc:
        return [str(exc)]
    problems = [p for i, word in enumerate(argv)
                if (p := text_problem(f"argument {i + 1}", word))]
    on = getattr(args, "on", None)
    if on is not None:
        if not on.strip():
            problems.append("--on needs a server name or id")
        elif (p := text_problem("--on", on)):
            problems.append(p)
    seen: set[str] = set()
    for name in args.file:
        why = bad_relative_path(name) or text_problem("--file", name)
        path = Path(name)
        if why:
            problems.append(why)
        elif os.path.normpath(name) in seen:
            problems.append(f"--file {name!r} is listed twice")
        elif path.is_dir():
            problems.append(f"--file {name!r} is a directory; name the files in it")
        elif not path.exists():
            problems.append(f"--file {name!r} does not exist")
        elif not path.is_file():
            problems.append(f"--file {name!r} is not a regular file")
        seen.add(os.path.normpath(name))
    return problems


def batch_main(servers: Sequence[tuple[str, int]] | None, words: list[str], name: str,
               client_id: int = 0, tls: Any = None, secret: bytes | None = None,
               reconnect: bool = False, reconnect_for: float = 0.0,
               liveness: dict[str, float] | None = None, info: str = "") -> int:
    """Run one batch command against ``servers`` (the first, then the rest in
    turn); for ``rake`` without servers, the Rakefile's ``HOSTS`` are used."""
    args = build_parser().parse_args(words)
    if args.command in ("run", "runall"):
        problems = command_line_problems(args)
        if problems:
            for problem in problems:
                print(f"chat_client.py {args.command}: {visible(problem)}", file=sys.stderr)
            return 2
    if args.command == "rake" and args.on is not None and not args.on.strip():
        print("chat_client.py rake: --on needs a server name or id", file=sys.stderr)
        return 2
    if args.command == "rake":
        # Errors in the Rakefile are reported before anything connects or runs.
        rakefile, errors = load_rakefile(args.rakefile)
        if errors:
            for e in errors:
                print(visible(e), file=sys.stderr)
            return 2
        args.loaded_rakefile = rakefile
        if not servers:
            servers = list(rakefile.hosts)
            if not servers:
                print(f"chat_client.py: no --server given (nor $CRC_MESH) and "
                      f"{args.rakefile} lists no HOSTS", file=sys.stderr)
                return 2
    assert servers
    # A job-only connection: chat participants are not told it came and went
    # (unless the user gave it an --info of its own to be seen by).
    return Batch(servers[0], args, name, client_id, tls=tls, secret=secret,
                 servers=servers[1:], reconnect=reconnect,
                 reconnect_for=reconnect_for or BATCH_RECONNECT_FOR, liveness=liveness,
                 info=info or QUIET_INFO).run()
