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
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Callable, Sequence

from ..net import EventLoop
from ..net.loop import EVENT_READ, EVENT_WRITE

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
STDOUT, STDERR = 1, 2
#: Seconds to keep reading pipes held open by leftovers after the job exited.
LINGER = 0.5


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
                 stdin: bool = False, env: dict[str, str] | None = None) -> None:
        self.loop = loop
        self.argv = list(argv)
        self.on_output = on_output
        self.on_exit = on_exit
        self.returncode: int | None = None
        self._open_pipes: set[int] = set()
        self._exit_reported = False
        self.proc = subprocess.Popen(
            self.argv, cwd=cwd, env=env, start_new_session=True,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pid = self.proc.pid
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
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

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
        try:
            while s.buffer:
                n = os.write(s.fd, s.buffer[:READ_SIZE])
                del s.buffer[:n]
        except BlockingIOError:
            pass
        except OSError:           # the child closed its stdin: drop the rest
            s.buffer.clear()
            s.eof = True
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

    def _report(self) -> None:
        if self._exit_reported:
            return
        self._exit_reported = True
        if self.stdin is not None and self.stdin.fd >= 0:
            if self.stdin.registered:
                self.loop.unregister(self.stdin.fd)
            os.close(self.stdin.fd)
            self.stdin.fd = -1
        self.on_exit(self.returncode if self.returncode is not None else -1)
