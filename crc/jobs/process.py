"""A child process driven by the event loop: pipes and exit in one selector.

``ChildProcess`` starts a command in its own process group (so cancel kills
everything it spawned), registers its stdout and stderr pipes and a pidfd
(readable when the child exits) with the loop, and reports:
``on_output(stream, data)`` as bytes arrive, then ``on_exit(returncode)``
once the child has exited *and* both pipes are drained, so no trailing
output is lost. Standard input is written through a buffer with write
interest only while bytes wait, like a connection. Nothing blocks: reads and
writes are non-blocking, and the exit is collected with ``WNOHANG`` when the
pidfd says it is ready.

A server's jobs must not outlive it, even when it is killed outright
(``kill -9`` leaves no chance to clean up). A ``GroupReaper`` sees to it: one
small helper process per server, in its own session, told over a pipe the
process group of every job as it starts and ends. Every job also carries a
marker in its environment (``REAPER_ENV``), inherited by whatever it starts.
When the server dies, for whatever reason, the pipe reaches end of file: the
helper kills every group still listed, then every process that carries the
server's marker (one started an instant before the server died and not
listed yet, or one that left its group with ``setsid``), and exits. Only a
process that both left its group and cleared its environment escapes.

(A parent-death signal, ``prctl(PR_SET_PDEATHSIG)`` in a ``preexec_fn``,
would end only a job's first process, and a ``preexec_fn`` makes every spawn
fork the server instead of using ``vfork``: 3 to 5 ms more per job.)
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
from typing import Callable, Sequence

from ..net import EventLoop
from ..net.loop import EVENT_READ, EVENT_WRITE

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
STDOUT, STDERR = 1, 2
#: Seconds to keep reading pipes held open by leftovers after the job exited.
LINGER = 0.5
#: The environment variable marking a job (and what it starts) as its server's.
REAPER_ENV = "CRC_MESH_JOB"


class _Pipe:
    def __init__(self, child: "ChildProcess", fd: int, stream: int) -> None:
        self.child, self.fd, self.stream = child, fd, stream

    def handle_event(self, mask: int) -> None:
        self.child._read(self)

    def __repr__(self) -> str:
        return f"<pipe {self.stream} of {self.child!r}>"


class _Stdin:
    def __init__(self, child: "ChildProcess", fd: int) -> None:
        self.child, self.fd = child, fd
        self.buffer = bytearray()
        self.eof = False
        self.registered = False

    def handle_event(self, mask: int) -> None:
        self.child._write_stdin()


class _ExitWatch:
    def __init__(self, child: "ChildProcess", fd: int) -> None:
        self.child, self.fd = child, fd

    def handle_event(self, mask: int) -> None:
        self.child._reap()


class ChildProcess:
    def __init__(self, loop: EventLoop, argv: Sequence[str], cwd: str, *,
                 on_output: Callable[[int, bytes], None],
                 on_exit: Callable[[int], None],
                 stdin: bool = False, env: dict[str, str] | None = None,
                 reaper: "GroupReaper | None" = None,
                 on_stdin_taken: Callable[[int], None] | None = None) -> None:
        self.loop = loop
        self.argv = list(argv)
        self.on_output = on_output
        self.on_exit = on_exit
        #: Told how many bytes of standard input left our buffer (written to
        #: the child, or dropped because it closed its end): flow control.
        self.on_stdin_taken = on_stdin_taken
        self.returncode: int | None = None
        self._open_pipes: set[int] = set()
        self._exit_reported = False
        self.killed = False           # we signalled it (``kill``)
        self.core_dumped = False      # it died by a signal and left a core
        self._reaper = reaper
        if reaper is not None and reaper.env is not None:
            env = reaper.env if env is None else dict(env, **{REAPER_ENV: reaper.token})
        self.proc = subprocess.Popen(
            self.argv, cwd=cwd, env=env, start_new_session=True,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pid = self.proc.pid
        if reaper is not None:
            reaper.watch(self.pid)
        for stream, f in ((STDOUT, self.proc.stdout), (STDERR, self.proc.stderr)):
            fd = os.dup(f.fileno())
            f.close()
            os.set_blocking(fd, False)
            self._open_pipes.add(fd)
            loop.register(fd, EVENT_READ, _Pipe(self, fd, stream))
        self.stdin: _Stdin | None = None
        if stdin:
            fd = os.dup(self.proc.stdin.fileno())
            self.proc.stdin.close()
            os.set_blocking(fd, False)
            self.stdin = _Stdin(self, fd)
        self._pidfd = os.pidfd_open(self.pid)
        loop.register(self._pidfd, EVENT_READ, _ExitWatch(self, self._pidfd))

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"<ChildProcess pid={self.pid} {state} {' '.join(self.argv)[:40]!r}>"

    # -- control -------------------------------------------------------------------

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the job and everything it started)."""
        if self.returncode is not None:
            return
        self.killed = True
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def group_alive(self) -> bool:
        """Whether anything of the job's process group is still running (it
        has exited, but something it started in the background may not have)."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def write_stdin(self, data: bytes, eof: bool = False) -> None:
        s = self.stdin
        if s is None or s.eof:
            return
        s.buffer += data
        s.eof = eof
        self._write_stdin()

    # -- loop callbacks ------------------------------------------------------------

    def _write_stdin(self) -> None:
        s = self.stdin
        if s is None or s.fd < 0:
            return
        before = len(s.buffer)
        try:
            while s.buffer:
                n = os.write(s.fd, s.buffer[:READ_SIZE])
                del s.buffer[:n]
        except BlockingIOError:
            pass
        except OSError:           # the child closed its stdin: drop the rest
            s.buffer.clear()
            s.eof = True
        if before > len(s.buffer) and self.on_stdin_taken is not None:
            self.on_stdin_taken(before - len(s.buffer))
        if s.buffer and not s.registered:
            self.loop.register(s.fd, EVENT_WRITE, s)
            s.registered = True
        elif not s.buffer:
            if s.registered:
                self.loop.unregister(s.fd)
                s.registered = False
            if s.eof:
                os.close(s.fd)
                s.fd = -1

    def _read(self, pipe: _Pipe) -> None:
        try:
            data = os.read(pipe.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.on_output(pipe.stream, data)
            return
        self.loop.unregister(pipe.fd)
        os.close(pipe.fd)
        self._open_pipes.discard(pipe.fd)
        self._maybe_done()

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 0
        if pid == 0:
            return
        self.returncode = os.waitstatus_to_exitcode(status)
        self.core_dumped = os.WIFSIGNALED(status) and os.WCOREDUMP(status)
        self.proc.returncode = self.returncode
        self.loop.unregister(self._pidfd)
        os.close(self._pidfd)
        self._maybe_done()
        if self._open_pipes and not self._exit_reported:
            # Something the job started still holds its pipes open. The job is
            # over when its leader exits: drain briefly, then end the group.
            self.loop.call_later(LINGER, self._close_pipes)

    def _maybe_done(self) -> None:
        if self.returncode is not None and not self._open_pipes:
            self._report()

    def _close_pipes(self) -> None:
        if self._exit_reported:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for fd in list(self._open_pipes):
            self.loop.unregister(fd)
            os.close(fd)
        self._open_pipes.clear()
        self._report()

    def detach(self) -> None:
        """Stop watching the child (leave it running): close our ends of its pipes."""
        self._exit_reported = True
        for fd in list(self._open_pipes):
            self.loop.unregister(fd)
            os.close(fd)
        self._open_pipes.clear()
        if self.stdin is not None and self.stdin.fd >= 0:
            if self.stdin.registered:
                self.loop.unregister(self.stdin.fd)
            os.close(self.stdin.fd)
            self.stdin.fd = -1
        if self.returncode is None:
            self.loop.unregister(self._pidfd)
            os.close(self._pidfd)
            self.returncode = -1

    def _report(self) -> None:
        if self._exit_reported:
            return
        self._exit_reported = True
        if self._reaper is not None:
            self._reaper.unwatch(self.pid)
        if self.stdin is not None and self.stdin.fd >= 0:
            if self.stdin.registered:
                self.loop.unregister(self.stdin.fd)
            os.close(self.stdin.fd)
            self.stdin.fd = -1
        self.on_exit(self.returncode if self.returncode is not None else -1)


#: The helper's program (argument: the server's marker): remember groups
#: (+PGID / -PGID lines); at end of file (the server is gone, however it
#: went) kill those still listed, then every process carrying the marker.
#: A ``q`` line (a clean shutdown, which killed its jobs itself): just go.
_REAPER = """
import os, signal, sys
for name in ("SIGINT", "SIGHUP", "SIGTERM", "SIGPIPE"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)
marker = sys.argv[1].encode()
groups = set()
for line in sys.stdin.buffer:
    if line[:1] == b"+":
        groups.add(int(line[1:]))
    elif line[:1] == b"-":
        groups.discard(int(line[1:]))
    elif line[:1] == b"q":
        sys.exit(0)
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
me = str(os.getpid())
for _ in range(3):
    found = False
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            with open("/proc/" + pid + "/environ", "rb") as f:
                env = f.read().split(bytes(1))
        except OSError:
            continue
        if marker in env:
            try:
                os.kill(int(pid), signal.SIGKILL)
                found = True
            except OSError:
                pass
    if not found:
        break
"""


class GroupReaper:
    """Kills the process groups of a server's jobs once the server is gone.

    The helper starts with the first job (a server that never runs one never
    starts it). ``close`` (a clean shutdown, after the jobs were killed) lets
    it go without killing anything or waiting for it."""

    def __init__(self, loop: EventLoop, name: str = "") -> None:
        self.loop = loop
        self.name = name
        #: The environment entry marking this server's jobs.
        self.token = f"{os.getpid()}.{secrets.token_hex(8)}"
        #: The environment of every job: ours, with the marker (built once).
        self.env: dict[str, str] | None = None
        self.child: ChildProcess | None = None
        self.failed = False
        self.restarts = 0
        self.groups: set[int] = set()
        self._pending = bytearray()
        self._flush_soon = False

    def __repr__(self) -> str:
        return f"<GroupReaper {self.name} pid={self.child.pid if self.child else '-'} " \
               f"groups={len(self.groups)}>"

    def ensure(self) -> None:
        """Start the helper if it is not running (and has not failed)."""
        if self.child is not None or self.failed:
            return
        try:
            self.child = ChildProcess(
                self.loop, [sys.executable, "-I", "-S", "-c", _REAPER,
                            f"{REAPER_ENV}={self.token}"], "/", stdin=True,
                on_output=self._said, on_exit=self._exited)
            self.env = dict(os.environ, **{REAPER_ENV: self.token})
        except OSError as exc:
            self.failed = True
            log.warning("%s: cannot start the job reaper (%s); jobs may outlive a killed "
                        "server", self.name, exc)

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    def watch(self, group: int) -> None:
        if self.child is not None:
            self.groups.add(group)
            self._tell(b"+%d\n" % group)

    def unwatch(self, group: int) -> None:
        if self.child is not None and group in self.groups:
            self.groups.discard(group)
            self._tell(b"-%d\n" % group)

    def _tell(self, line: bytes) -> None:
        """Lines go out once per turn of the loop: one write (and one wake-up
        of the helper) for a burst of jobs. Until then a job is covered by
        its marker."""
        self._pending += line
        if not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        if self.child is not None and self._pending:
            self.child.write_stdin(bytes(self._pending))
        self._pending.clear()

    def _said(self, stream: int, data: bytes) -> None:
        log.warning("%s: job reaper: %s", self.name, data.decode("utf-8", "replace").strip())

    def _exited(self, code: int) -> None:
        if self.child is not None:
            self.restarts += 1
            self.child = None
            if self.restarts > 3:
                self.failed = True
                log.warning("%s: the job reaper keeps exiting (%d); jobs may outlive a "
                            "killed server", self.name, code)
                return
            log.warning("%s: the job reaper exited (%d); starting another", self.name, code)
            groups, self.groups = self.groups, set()
            self._pending.clear()
            self.ensure()
            for group in groups:
                self.watch(group)

    def close(self) -> None:
        """A clean shutdown (the jobs are killed already): let the helper go."""
        child, self.child = self.child, None
        if child is not None:
            child.write_stdin(b"q\n", eof=True)
            child.detach()
