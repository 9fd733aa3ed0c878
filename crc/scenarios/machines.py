"""The machines a scenario launches, behind one small interface.

* ``LoopServer`` / ``LoopClient``: a core ``MeshServer`` or ``ChatClient`` in
  its own ``EventLoop``, run in a thread named after the machine. Everything
  that reads or changes their state runs in that thread (``call``), so a
  snapshot is always consistent.
* ``RecordingServer``: a ``MeshServer`` that records the hex of every chunk
  it receives and handles none of it (``network_connectivity`` scenarios).
* ``ProcessServer``: ``mesh_server.py`` as a subprocess, read through the
  state query and ended with SIGTERM (stop) or SIGKILL (kill).
* ``PlainMachine``: the v1-only ``PlainClient``.

In job scenarios a ``LoopServer`` carries a ``JobService`` (a
``ProcessServer`` always has one), and a ``LoopClient`` creates its
``ClientJobs`` (working directory, jobs, builds) on first use.

``kill()`` ends a machine at once and returns its state at that moment.
``request_stop()`` then ``wait_stopped()`` end it after its state was taken
(two steps, so a whole network stops in parallel). Neither tells the network
anything: peers notice the closed sockets, as after a crash.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import subprocess
import sys
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from ..client import ChatClient, ClientConfig
from ..server.jobs.service import JobConfig, JobService
from ..net import Connection, EventLoop
from ..protocol import ClientChat, encode
from ..routing import Kind
from ..server import MeshServer, ServerConfig
from .jobs import ClientJobs
from .plain_client import BYTE_PACE, PlainClient
from ..server.query import query_state, wait_answering

log = logging.getLogger(__name__)

#: Seconds to wait for a machine's thread or process to answer or end.
DEADLINE = 10.0
LOCALHOST = "127.0.0.1"
T = TypeVar("T")


class MachineError(RuntimeError):
    """A machine could not be started, reached or stopped."""


class Machine(ABC):
    """What the runner needs of every machine."""

    name: str
    kind: Kind

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def snapshot(self) -> dict[str, Any]: ...

    @abstractmethod
    def kill(self) -> dict[str, Any]: ...

    @abstractmethod
    def request_stop(self) -> None: ...

    @abstractmethod
    def wait_stopped(self) -> None: ...


class ServerMachine(Machine):
    kind = Kind.SERVER
    config: ServerConfig


class ClientMachine(Machine):
    """A client the scenario drives. As with the original runner, a client
    connects in its own thread once launched, and a MESSAGE or QUIT given
    before it is on the network is lost (the reference client had no socket
    yet), which scenario files written for that runner expect
    (the runner's ``_lost``): a command given with no WAIT since LAUNCHCLIENT,
    however fast this machine connected, or before the client was welcomed."""

    kind = Kind.CLIENT

    @property
    @abstractmethod
    def welcomed(self) -> bool:
        """The server has welcomed the client: it is on the network."""

    @abstractmethod
    def send_chat(self, dest: int, text: str) -> None: ...

    @abstractmethod
    def send_chat_bytewise(self, dest: int, text: str) -> None: ...

    @abstractmethod
    def quit(self, text: str) -> None: ...


# -- machines in an event loop thread ------------------------------------------------


class _LoopThread:
    """A loop run by ``target`` in a thread named after the machine."""

    def __init__(self, name: str, loop: EventLoop, target: Callable[[], None]) -> None:
        self.loop = loop
        self.thread = threading.Thread(target=target, name=name, daemon=True)
        self.final: dict[str, Any] | None = None   # the state taken when killed

    def start(self) -> None:
        self.thread.start()

    def call(self, fn: Callable[[], Any], timeout: float = DEADLINE) -> Any:
        """Run ``fn`` in the loop's thread and return its result."""
        if not self.thread.is_alive():
            raise MachineError(f"{self.thread.name} is not running")
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:   # handed back to the caller's thread
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise MachineError(f"{self.thread.name} did not answer within {timeout:g} s") from None

    def snapshot(self, take: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if self.final is not None:
            return self.final
        return self.call(take)

    def kill(self, take: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Take the state and stop the loop in one step of the loop's thread."""
        if self.final is None:
            def take_and_stop() -> dict[str, Any]:
                state = take()
                self.loop.stop()
                return state
            self.final = self.call(take_and_stop)
        self.join()
        return self.final

    def join(self) -> None:
        self.thread.join(DEADLINE)
        if self.thread.is_alive():
            raise MachineError(f"{self.thread.name} did not stop within {DEADLINE:g} s")


class RecordingServer(MeshServer):
    """Records the hex of every received chunk instead of handling it.

    ``sent_messages_asdqw`` stays empty: the original runner's recording
    server fills it from a hook no server calls, so files expect it empty.
    """

    def __init__(self, config: ServerConfig, loop: EventLoop | None = None) -> None:
        super().__init__(config, loop)
        self.received_hex: list[str] = []

    def on_data(self, conn: Connection, data: bytes) -> None:
        self.received_hex.append(data.hex())

    def _registration_deadline(self, conn: Connection) -> None:
        """Nothing is handled here, so nothing ever registers: keep every
        connection open, as the original recording server does."""

    def snapshot(self) -> dict:
        state = super().snapshot()
        state["recvd_messages_asdqw"] = list(self.received_hex)
        state["sent_messages_asdqw"] = []
        return state


class LoopServer(ServerMachine):
    def __init__(self, name: str, config: ServerConfig, recording: bool = False,
                 jobs: JobConfig | None = None) -> None:
        self.name = name
        self.config = config
        cls = RecordingServer if recording else MeshServer
        self.server = cls(config)
        self.jobs = JobService(self.server, jobs) if jobs is not None else None
        self.runner = _LoopThread(name, self.server.loop, self.server.run)

    def start(self) -> None:
        try:
            self.server.start()
        except OSError as exc:
            self.server.close()
            raise MachineError(f"{self.name}: cannot listen on port {self.server.config.port}: "
                               f"{exc.strerror or exc}") from None
        self.runner.start()

    def snapshot(self) -> dict[str, Any]:
        return self.runner.snapshot(self.server.snapshot)

    def kill(self) -> dict[str, Any]:
        self.server.graceful = False       # (as a crash: nothing more is sent)
        return self.runner.kill(self.server.snapshot)

    def request_stop(self) -> None:
        self.server.stop()

    def wait_stopped(self) -> None:
        self.runner.join()


def client_state(client: ChatClient) -> dict[str, Any]:
    """A ``ChatClient``'s view in the runner's terms (call in its loop's thread)."""
    return {
        "id": client.id,
        "name": client.name,
        "connected_user_ids": sorted(client.users),
        "user_names": {str(uid): user.name for uid, user in sorted(client.users.items())},
        "status_updates_log": list(client.status_log),
        "chat_messages_log": [text for _, text in client.chat_log],
        "chat_sources": [source for source, _ in client.chat_log],
        "connected": client.connected and not client.has_quit,
        "extensions": client.ext,
    }


class LoopClient(ClientMachine):
    def __init__(self, name: str, config: ClientConfig, jobs_dir: Path | None = None) -> None:
        self.name = name
        self.client = ChatClient(config)
        self.runner = _LoopThread(name, self.client.loop, self._run)
        self.jobs_dir = jobs_dir
        self.jobs: ClientJobs | None = None

    @property
    def welcomed(self) -> bool:
        return self.client.welcomed

    def start(self) -> None:
        self.runner.start()

    def _run(self) -> None:
        try:
            self.client.start()
        except OSError as exc:
            log.error("%s: cannot connect to %s:%d: %s", self.name, *self.client.config.server,
                      exc.strerror or exc)
        self.client.run()

    def _state(self) -> dict[str, Any]:
        state = client_state(self.client)
        state.update(self.jobs.state() if self.jobs is not None else {"jobs": {}, "files": {}})
        return state

    def snapshot(self) -> dict[str, Any]:
        return self.runner.snapshot(self._state)

    def kill(self) -> dict[str, Any]:
        state = self.runner.kill(self._state)
        self._close_jobs()
        return state

    def request_stop(self) -> None:
        self.client.loop.stop()

    def wait_stopped(self) -> None:
        self.runner.join()
        self._close_jobs()

    def call(self, fn: Callable[[], T], timeout: float = DEADLINE) -> T:
        """Run ``fn`` in the client's loop thread and return its result."""
        return self.runner.call(fn, timeout)

    def job_call(self, fn: Callable[[ClientJobs], T], timeout: float = DEADLINE) -> T:
        """Run ``fn(jobs)`` in the loop thread, creating the ``ClientJobs`` first if needed."""
        def run() -> T:
            if self.jobs is None:
                if self.jobs_dir is None:
                    raise MachineError(f"{self.name} has no working directory for jobs")
                self.jobs = ClientJobs(self.client, self.jobs_dir)
            return fn(self.jobs)
        return self.runner.call(run, timeout)

    def _close_jobs(self) -> None:
        if self.jobs is not None and not self.runner.thread.is_alive():
            self.jobs.close()

    def send_chat(self, dest: int, text: str) -> None:
        self.client.send_chat_threadsafe(dest, text)

    def quit(self, text: str) -> None:
        self.client.quit_threadsafe(text, linger=True)

    def send_chat_bytewise(self, dest: int, text: str) -> None:
        """Write the chat one byte per ``send()``, paced apart; return when done."""
        data = encode(ClientChat(self.client.id, dest, text))
        done = threading.Event()
        loop = self.client.loop
        give_up = loop.time() + DEADLINE

        def step(i: int) -> None:
            conn = self.client.conn
            if conn is None or conn.closed or i >= len(data) or loop.time() > give_up:
                done.set()
                return
            if not self.client.welcomed:       # not registered yet: nothing may interleave
                loop.call_later(BYTE_PACE, step, i)
                return
            conn.send_bytes(data[i:i + 1])
            conn.flush()
            loop.call_later(BYTE_PACE, step, i + 1)

        loop.call_soon_threadsafe(step, 0)
        if not done.wait(DEADLINE + 1):
            raise MachineError(f"{self.name}: bytewise send did not finish")


class PlainMachine(ClientMachine):
    def __init__(self, name: str, client: PlainClient) -> None:
        self.name = name
        self.client = client
        self.final: dict[str, Any] | None = None

    @property
    def welcomed(self) -> bool:
        return self.client.welcomed

    def start(self) -> None:
        self.connected = threading.Event()
        threading.Thread(target=self._connect, name=f"{self.name}-connect", daemon=True).start()

    def _connect(self) -> None:
        try:
            self.client.start()
        except OSError as exc:
            log.error("%s: cannot connect to %s:%d: %s", self.name, *self.client.server,
                      exc.strerror or exc)
        self.connected.set()

    def snapshot(self) -> dict[str, Any]:
        return self.final if self.final is not None else self.client.snapshot()

    def kill(self) -> dict[str, Any]:
        if self.final is None:
            self.final = self.client.snapshot()
            self.connected.wait(DEADLINE)      # a connect under way ends first
            self.client.stop()
        return self.final

    def request_stop(self) -> None:
        self.connected.wait(DEADLINE)
        self.client.shutdown()

    def wait_stopped(self) -> None:
        self.client.stop()

    def send_chat(self, dest: int, text: str) -> None:
        self.client.send_chat(dest, text)

    def send_chat_bytewise(self, dest: int, text: str) -> None:
        self.client.send_chat_bytewise(dest, text)

    def quit(self, text: str) -> None:
        self.client.quit(text)


# -- servers as processes ------------------------------------------------------------------


class ProcessServer(ServerMachine):
    """``mesh_server.py`` in a subprocess."""

    def __init__(self, name: str, config: ServerConfig, script: Path, log_file: Path,
                 work_dir: Path, extra: Sequence[str] = ()) -> None:
        self.name = name
        self.config = config
        # The project's script, or (an installed package run elsewhere) the module.
        program = [str(script)] if script.is_file() else ["-m", "crc.server"]
        self.command = [sys.executable, *program, "--port", str(config.port),
                        "--id", str(config.id), "--name", config.name, "--info", config.info,
                        "--log-file", str(log_file), "--work-dir", str(work_dir), *extra]
        if config.connect:
            # Scenarios describe CRC v1 networks: a server that loses its uplink
            # stays apart, as a v1 server would.
            self.command += ["--connect", f"{config.connect[0]}:{config.connect[1]}",
                             "--no-rejoin"]
        self.process: subprocess.Popen | None = None
        self.final: dict[str, Any] | None = None

    def start(self) -> None:
        # The package we run from is importable in the child whatever its cwd.
        package_parent = str(Path(__file__).resolve().parents[2])
        path = os.environ.get("PYTHONPATH")
        env = dict(os.environ, PYTHONPATH=package_parent + (os.pathsep + path if path else ""))
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            state = wait_answering(LOCALHOST, self.config.port, DEADLINE,
                                   alive=lambda: self.process.poll() is None)
        except OSError as exc:
            error = self._end(signal.SIGKILL)
            raise MachineError(f"{self.name}: {exc}{': ' + error if error else ''}") from None
        if state.get("id") != self.config.id:
            self._end(signal.SIGKILL)
            raise MachineError(f"{self.name}: port {self.config.port} is answered by another "
                               f"server ({state.get('name')!r}, id {state.get('id')})")

    def snapshot(self) -> dict[str, Any]:
        if self.final is not None:
            return self.final
        return query_state(LOCALHOST, self.config.port, DEADLINE)

    def kill(self) -> dict[str, Any]:
        """SIGKILL the server, and the jobs it was running with it (as a crash would)."""
        if self.final is None:
            self.final = self.snapshot()
            groups = _child_groups(self.process.pid) if self.process is not None else []
            self._end(signal.SIGKILL)
            for group in groups:
                try:
                    os.killpg(group, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        return self.final

    def request_stop(self) -> None:
        self._signal(signal.SIGTERM)

    def wait_stopped(self) -> None:
        self._end(None)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def _end(self, sig: signal.Signals | None) -> str:
        """Signal the process (if ``sig``), wait for it, and return its standard error."""
        proc = self.process
        if proc is None:
            return ""
        if sig is not None:
            self._signal(sig)
        try:
            _, err = proc.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        return err.decode(errors="replace").strip()


def _child_groups(pid: int) -> list[int]:
    """Process groups led by children of ``pid`` (a server's jobs run in their own)."""
    groups = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue                      # gone meanwhile
        child, ppid, pgid = int(stat.parent.name), int(fields[1]), int(fields[2])
        if ppid == pid and pgid == child:
            groups.append(pgid)
    return groups
