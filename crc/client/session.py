"""Running command lines against a ``ChatClient``, inside its event loop.

A ``Session`` owns what the user (or a script) asked for and has not finished
yet: the queue of input lines, the current chat target, a pause in progress
(``/wait``, ``/waitmsg``, ``/sleep``), and the process's exit status. It is
the ``ChatClient``'s listener: every event goes to the view, and may end a
pause.

Everything here runs in the loop thread. Lines arrive through ``feed`` (from
a keyboard thread via ``call_soon_threadsafe``, or from a script) and are
executed in order, one after the other, but only once the server has
welcomed us; a pause holds back the lines after it while the loop keeps
serving the network. At the end of a script the session says goodbye and
stops the loop once the goodbye has been flushed.

In a script, a bad line or an expired wait is an error: it is reported with
its line number, the client leaves, and the exit status is non-zero.
Interactively the error is shown and the session carries on.

The session writes nothing to the terminal itself (everything shown goes to
the view) and leaves the syntax of a line to ``commands``.
"""

from __future__ import annotations

import collections
import errno
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..net import Timer
from ..protocol import EncodeError, StatusCode
from . import commands as cmd
from .core import ChatClient, LookupFailed, Undeliverable, User
from .tui import View, help_table, sent_text, who_table

EXIT_OK = 0
EXIT_CONNECTION = 1      # could not connect, refused, or connection lost
EXIT_SCRIPT = 3          # a script line failed (bad command, unknown user, wait timed out),
                         # or chats it sent were left undelivered
EXIT_INTERRUPTED = 130   # a script stopped by SIGINT (128 + N for signal N)

#: How long a goodbye may take to flush before the loop stops anyway.
QUIT_GRACE = 5.0
#: Chats remembered for ``/waitmsg`` (the oldest are forgotten first).
MAX_UNCLAIMED = 10_000
#: At the end of a script, how long to wait for the last chats to be
#: acknowledged before leaving anyway.
DRAIN_TIMEOUT = 30.0
#: ... and for chats to a user the mesh does not know, this long from the
#: first refusal (they may be reconnecting).
UNREACHABLE_GRACE = 5.0


@dataclass
class _Pause:
    """A ``/wait``, ``/waitmsg`` or ``/sleep`` in progress."""
    check: Callable[[], bool] | None   # None: only the timer ends it
    timer: Timer
    timeout_error: str | None          # None: running out of time is success


@dataclass
class _Received:
    """A chat no ``/waitmsg`` has claimed yet."""
    source: int
    name: str          # the sender's name when the chat arrived ("" if unknown)


def _quit_text(line: str, script: bool) -> str | None:
    """The goodbye text if ``line`` is a /quit command, else None."""
    if not line.lstrip().startswith("/q"):
        return None
    try:
        command = cmd.parse(line, script=script)
    except cmd.CommandError:
        return None
    return command.text if isinstance(command, cmd.Quit) else None


def names_user(target: str, user_id: int, name: str) -> bool:
    """Does ``target`` (a name or a decimal id) denote this user?"""
    if target == name:
        return True
    return target.isascii() and target.isdigit() and int(target) == user_id



class JobCommandsLike(Protocol):
    """What a session asks of its job commands (``job_commands.JobCommands``)."""

    def execute(self, command: cmd.Command) -> None: ...
    def cancel_all(self) -> int: ...
    def busy(self) -> bool: ...
    def forward(self, line: str) -> bool: ...

class Session:
    def __init__(self, client: ChatClient, view: View, *, script: bool,
                 connect_timeout: float = 10.0) -> None:
        self.client = client
        self.loop = client.loop
        self.view = view
        self.script = script
        self.connect_timeout = connect_timeout
        host, port = client.config.server
        self.server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.exit_code: int | None = None
        self.target: int | None = None
        #: The prompt for the next line, kept current for the keyboard thread.
        self.prompt = "> "
        self._lines: collections.deque[tuple[int, str]] = collections.deque()
        self._line_count = 0
        self._line_no = 0
        self._eof = False
        self._pause: _Pause | None = None
        self._leaving = False
        self._refusal = ""
        self._unclaimed: collections.deque[_Received] = collections.deque(maxlen=MAX_UNCLAIMED)
        self._pump_scheduled = False
        self._connect_timer: Timer | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "status": self._on_status, "join": self._on_join, "chat": self._on_chat,
            "disconnected": self._on_disconnected,
            "extensions": self._on_negotiated, "plain": self._on_negotiated,
            "reconnected": self._on_reconnected, "delivered": self._on_negotiated,
            "undelivered": self._on_undelivered, "unreachable": self._on_negotiated,
        }
        self._drain_timer: Timer | None = None
        self._drain_expired = False
        self._undelivered = False          # chats left undelivered at the end of a script
        self._quit_text = ""               # the goodbye of /quit
        self._quit_requested = False
        self._jobs_cancelled = False
        self._server_timer: Timer | None = None
        client.listener = self.on_event
        #: Job commands (/run, /rake, ...), when the client was built with them.
        self.jobs: JobCommandsLike | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> bool:
        """Connect and register; False (exit status set) if that fails at once."""
        try:
            self.client.start()
        except OSError as exc:
            self.view.error(f"cannot connect to {self.server}: {exc.strerror or exc}")
            self.exit_code = EXIT_CONNECTION
            return False
        self._connect_timer = self.loop.call_later(self.connect_timeout, self._no_welcome)
        return True

    def leave(self, text: str = "", code: int = EXIT_OK) -> None:
        """Say goodbye with ``text`` and stop the loop once it has been flushed."""
        self._set_exit(code)
        if self._leaving:
            return
        self._leaving = True
        self._lines.clear()
        self._end_pause()
        if self.client.connected:
            self.client.quit(text)
            self.loop.call_later(QUIT_GRACE, self.loop.stop)
        else:
            self.loop.stop()

    def interrupt(self, signum: int = signal.SIGINT) -> None:
        """A signal: leave politely (jobs still running are cancelled, and
        the user told so), or stop at once if already leaving. A script exits
        128 + the signal; an interactive session ended by Ctrl-C exits 0."""
        if self._leaving:
            self.loop.stop()
        else:
            self._cancel_jobs()
            interactive_ctrl_c = not self.script and signum == signal.SIGINT
            self.leave("", EXIT_OK if interactive_ctrl_c else 128 + signum)

    def output_closed(self, exc: OSError) -> None:
        """Our standard output (or error) cannot be written: nobody sees what
        follows. Leave as for a signal: 141 (128 + SIGPIPE) for a broken pipe."""
        if not self._leaving:
            self._cancel_jobs()
            self.leave("", 128 + signal.SIGPIPE if exc.errno == errno.EPIPE else EXIT_CONNECTION)

    @property
    def leaving(self) -> bool:
        return self._leaving

    def _set_exit(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code

    def _no_welcome(self) -> None:
        if self.client.welcomed or self._leaving:
            return
        self.view.error(f"no welcome from {self.server} within {self.connect_timeout:g} s")
        self._set_exit(EXIT_CONNECTION)
        self._leaving = True
        self.loop.stop()

    # -- input ------------------------------------------------------------------------

    def feed(self, line: str) -> None:
        """One input line; run at once if nothing is holding the queue.

        ``/quit`` ends the input: it takes effect once the lines before it
        have run (even while the connection is down and they wait), and
        nothing after it is read."""
        self._line_count += 1
        if self._line_count == 1 and line.startswith("\ufeff"):
            line = line[1:]                    # a byte-order mark from an editor
        if self._leaving or self._eof:
            return
        quit_text = _quit_text(line, self.script)
        if quit_text is not None:
            self._quit_text, self._quit_requested = quit_text, True
            self.feed_eof()
            return
        self._lines.append((self._line_count, line))
        self._pump()

    def feed_eof(self) -> None:
        """No more lines: leave once the queued ones are done."""
        self._eof = True
        self._pump()

    # -- running lines ----------------------------------------------------------------

    def _runnable(self) -> bool:
        return (self.client.welcomed and self.client.negotiated and not self._leaving
                and self._pause is None)

    def _pump(self) -> None:
        self._pump_scheduled = False
        while self._lines and self._runnable():
            self._line_no, line = self._lines.popleft()
            self._run_line(line)
        if not self._eof or self._leaving:
            return
        if not (self.client.welcomed and self.client.negotiated):
            self._await_server()          # the input is over, the connection down
            return
        if self._server_timer is not None:
            self._server_timer.cancel()
            self._server_timer = None
        if self._lines or self._pause is not None:
            return
        if self._jobs_busy():
            if not self._quit_requested:
                return                     # the end of a script waits for its jobs
            self._cancel_jobs()
        if not self._chats_unacknowledged():
            self.leave(self._quit_text, EXIT_SCRIPT if self._undelivered else EXIT_OK)

    def _await_server(self) -> None:
        """The input has ended (or /quit) while no server is connected: wait
        ``connect_timeout`` seconds for one, then leave saying what is lost."""
        if self._server_timer is None and self.client.connections:
            self._server_timer = self.loop.call_later(self.connect_timeout, self._no_server)

    def _no_server(self) -> None:
        self._server_timer = None
        if self._leaving or (self.client.welcomed and self.client.negotiated):
            return
        self.view.error(f"no server reachable within {self.connect_timeout:g} s "
                        f"(--connect-timeout) after the end of input")
        if self._lines:
            self.view.error(f"{len(self._lines)} line(s) not run, from line "
                            f"{self._lines[0][0]}")
        self._drain_expired = True
        self._chats_unacknowledged()       # names what stays undelivered
        self.leave("", EXIT_CONNECTION)

    def _cancel_jobs(self) -> None:
        """Leaving with jobs running: cancel them, and say so."""
        if self.jobs is None or self._jobs_cancelled:
            return
        self._jobs_cancelled = True
        running = self.jobs.cancel_all()
        if running:
            self.view.info(f"cancelled {running} running job(s) on leaving")

    def _chats_unacknowledged(self) -> bool:
        """Reliable chats still on their way (at the end of a script, wait for
        them - up to ``DRAIN_TIMEOUT``; not for chats to users the mesh does
        not know now, which are reported instead)."""
        outbox = self.client.outbox
        waiting = [s for s in outbox.by_dest.values() if s.unacked]
        if waiting and not self._drain_expired:
            if self._drain_timer is None:
                self._drain_timer = self.loop.call_later(DRAIN_TIMEOUT, self._drain_timeout)
            if not all(s.unreachable for s in waiting):
                return True
            left = max(s.unreachable_since for s in waiting) + UNREACHABLE_GRACE - time.monotonic()
            if left > 0:
                self.loop.call_later(left, self._schedule_pump)
                return True
        for stream in waiting:
            self._undelivered = True        # the script's exit status says so too
            kept = ("kept in the state directory for next time"
                    if self.client.journal is not None else "not sent")
            why = stream.unreachable or f"not acknowledged within {DRAIN_TIMEOUT:g} s"
            self.view.error(f"{len(stream.unacked)} chat(s) to "
                            f"{self.client.display_name(stream.dest)} undelivered ({why}); {kept}")
        return False

    def _drain_timeout(self) -> None:
        self._drain_expired = True
        self._schedule_pump()

    def _jobs_busy(self) -> bool:
        return self.jobs is not None and self.jobs.busy()

    def job_settled(self) -> None:
        """A job or build finished: a pause or the end of a script may be over."""
        self._recheck_pause()
        self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self.loop.call_soon(self._pump)

    def _run_line(self, line: str) -> None:
        if self.jobs is not None and not line.startswith("/") and self.jobs.forward(line):
            return
        try:
            command = cmd.parse(line, script=self.script)
        except cmd.CommandError as exc:
            self.fail(str(exc))
            return
        try:
            self._execute(command)
        except LookupFailed as exc:
            self.fail(str(exc))

    def fail(self, message: str) -> None:
        if self.script:
            self.view.error(f"line {self._line_no}: {message}")
            self.leave("", EXIT_SCRIPT)
        else:
            self.view.error(message)

    def _execute(self, command: cmd.Command) -> None:
        match command:
            case cmd.Nothing():
                pass
            case cmd.Say(text):
                self._say(text)
            case cmd.Msg(target, text):
                self._msg(target, text)
            case cmd.Who():
                self.view.show(who_table(self._me(), self.client.users.values()))
            case cmd.Help():
                self.view.show(help_table())
            case cmd.Quit(text):               # (``feed`` takes /quit before it queues)
                self._quit_text, self._quit_requested = text, True
                self.feed_eof()
            case cmd.Wait(target, seconds):
                self.wait_until(lambda: self._knows(target), seconds,
                                 f"/wait {target}: no such user joined within {seconds:g} s",
                                 f"waiting for {target} to join")
            case cmd.WaitMsg(target, seconds):
                self.wait_until(lambda: self._take_chat_from(target), seconds,
                                 f"/waitmsg {target}: no chat from them within {seconds:g} s",
                                 f"waiting for a chat from {target}")
            case cmd.Sleep(seconds):
                self._pause = _Pause(None, self.loop.call_later(seconds, self._pause_over), None)
            case cmd.Run() | cmd.RunAll() | cmd.Jobs() | cmd.Cancel() | cmd.Load() \
                    | cmd.TreeCmd() | cmd.Rake() | cmd.Eof():
                if self.jobs is None:
                    self.fail("job commands are not available in this client")
                else:
                    self.jobs.execute(command)

    def _me(self) -> User:
        return User(self.client.id, self.client.name, self.client.config.info)

    # -- sending ----------------------------------------------------------------------

    def _say(self, text: str) -> None:
        if self.target is None:
            self.fail("no one to send to yet: start with /msg NAME|ID TEXT")
            return
        self._send(self.target, text)

    def _resolve(self, target: str) -> int:
        """A known user's id, or ours when ``target`` names only us."""
        try:
            return self.client.resolve(target)
        except LookupFailed:
            if names_user(target, self.client.id, self.client.name):
                return self.client.id
            raise

    def _msg(self, target: str, text: str) -> None:
        dest = self._resolve(target)
        self.target = dest
        self.prompt = f"{self.client.display_name(dest)}> "
        if text:
            self._send(dest, text)
        elif not self.script:
            self.view.info(f"plain lines now go to {self.client.display_name(dest)}")

    def _send(self, dest: int, text: str) -> None:
        try:
            self.client.send_chat(dest, text)
        except (EncodeError, Undeliverable) as exc:
            self.fail(f"cannot send that: {exc}")
            return
        self.view.show(sent_text(self.client.display_name(dest), text))

    # -- pauses -----------------------------------------------------------------------

    def wait_until(self, check: Callable[[], bool], seconds: float, timeout_error: str,
                    doing: str) -> None:
        if check():
            return
        if not self.script and doing:
            self.view.info(f"{doing} (up to {seconds:g} s)...")
        self._pause = _Pause(check, self.loop.call_later(seconds, self._pause_over),
                             timeout_error)

    def _recheck_pause(self) -> None:
        pause = self._pause
        if pause is not None and pause.check is not None and pause.check():
            self._end_pause()
            self._schedule_pump()

    def _pause_over(self) -> None:
        pause, self._pause = self._pause, None
        if pause is not None and pause.timeout_error is not None:
            self.fail(pause.timeout_error)
        self._schedule_pump()

    def _end_pause(self) -> None:
        if self._pause is not None:
            self._pause.timer.cancel()
            self._pause = None

    def _name_of(self, user_id: int) -> str:
        if user_id == self.client.id:
            return self.client.name
        user = self.client.users.get(user_id)
        return user.name if user else ""

    def _knows(self, target: str) -> bool:
        """Has ``target`` joined (we count as known to ourselves)?"""
        return names_user(target, self.client.id, self.client.name) or any(
            names_user(target, u.id, u.name) for u in self.client.users.values())

    def _take_chat_from(self, target: str) -> bool:
        """Claim the oldest unclaimed chat from ``target``; False if there is none."""
        for i, chat in enumerate(self._unclaimed):
            if names_user(target, chat.source, chat.name):
                del self._unclaimed[i]
                return True
        return False

    # -- client events ------------------------------------------------------------------

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        self.view.event(kind, data)
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(data)

    def _on_status(self, data: dict[str, Any]) -> None:
        code = data.get("code")
        if code == StatusCode.WELCOME:
            if self._connect_timer is not None:
                self._connect_timer.cancel()
            if not self.script:
                self.view.info(f"connected to {self.server} as "
                               f"{self.client.name}({self.client.id}); type /help for commands")
            self._schedule_pump()
        elif code == StatusCode.DUPLICATE_ID and not self.client.welcomed:
            self._refusal = data.get("text", "")

    def _on_negotiated(self, data: dict[str, Any]) -> None:
        self._schedule_pump()

    def _on_undelivered(self, data: dict[str, Any]) -> None:
        self._undelivered = True          # a script's exit status says so (3)
        self._schedule_pump()

    def _on_join(self, data: dict[str, Any]) -> None:
        self._recheck_pause()

    def _on_chat(self, data: dict[str, Any]) -> None:
        self._unclaimed.append(_Received(data["source"], self._name_of(data["source"])))
        self._recheck_pause()

    def _on_reconnected(self, data: dict[str, Any]) -> None:
        self.view.info(f"reconnected to {data.get('server')} as "
                       f"{self.client.name}({self.client.id})")
        self._schedule_pump()

    def _on_disconnected(self, data: dict[str, Any]) -> None:
        if self._leaving:
            self.loop.stop()
            return
        reason = data.get("reason", "")
        if data.get("reconnecting"):
            self.view.info(f"connection lost ({reason}); reconnecting")
            self._schedule_pump()          # input that has ended must not wait for ever
            return
        if self._refusal:
            self.view.error(f"{self.server} refused {self.client.name}({self.client.id}): "
                            f"{self._refusal}")
        elif not self.client.welcomed:
            self.view.error(f"cannot connect to {self.server}: {reason}")
        else:
            self.view.error(f"connection to {self.server} lost: {reason}")
        self._set_exit(EXIT_CONNECTION)
        self._leaving = True
        self._end_pause()
        self.loop.stop()
