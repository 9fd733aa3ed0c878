"""Running one scenario: launch machines, play the commands, check the end state.

``run_scenario(path)`` plays a scenario file line by line and returns a
``ScenarioResult``. Servers are core ``MeshServer`` objects in threads of
this process (the default) or ``mesh_server.py`` subprocesses
(``processes=True``); clients always run here. ``network_connectivity``
scenarios need to hook the servers' input, so they always run in-process.

``KILL ALL`` (and the end of the commands) first takes the state of every
running machine, then stops them all: the verdict is about the network as it
was, not as it looks while it is being torn down. ``KILL NAME`` ends one
machine at once (its state is taken at that moment); the rest keep running
and clean up after it.

In a job scenario (``Scenario.uses_jobs``) every server runs jobs: an
in-process server gets a ``JobService`` whose work directory lies in the
run's temporary directory, a server process is given ``--slots`` and
``--load-interval``; each client's working directory is
``<temporary directory>/clients/<name>``. The job commands are carried out
by ``jobsteps``.

Each scenario logs to ``Logs/<scenario>.log`` through a handler on the
``crc`` logger, with the thread (= machine) name on every line; server
processes log to ``Logs/<scenario>.<server>.log``. Nothing here prints.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..client import ClientConfig
from ..server.jobs.service import JobConfig
from ..protocol import MAX_ID, random_id
from ..server import ServerConfig
from .checks import Problem, check
from .commands import Command, CommandError, parse_int, parse_seconds
from .jobsteps import JobSteps
from .machines import (
    LOCALHOST, ClientMachine, LoopClient, LoopServer, Machine, MachineError, PlainMachine,
    ProcessServer,
)
from .plain_client import PlainClient
from .scenario import Scenario, ScenarioError, load
from ..server.query import StateQueryError
from .texts import sized_text

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]   # the project directory
LOG_FORMAT = "%(asctime)s %(threadName)-12s %(levelname)-7s %(name)s: %(message)s"

#: Called before each command: (index from 1, number of commands, line).
Progress = Callable[[int, int, str], None]

#: Seconds between load reports at the latest, for servers in job scenarios.
LOAD_INTERVAL = 0.5

#: Errors that end a scenario run early (reported as a problem, not raised).
RUN_ERRORS = (CommandError, ScenarioError, MachineError, StateQueryError, OSError, ValueError,
              OverflowError)


@dataclass
class ScenarioResult:
    name: str
    passed: bool
    seconds: float
    problems: list[Problem] = field(default_factory=list)
    mode: str = "in-process"
    log_file: Path | None = None
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""


#: Bounds on what a scenario may ask for: a WAIT, a generated chat.
MAX_WAIT = 3600.0
MAX_MESSAGE_SIZE = 64 << 20


def _port(value: int | None, what: str) -> int | None:
    if value is not None and not 0 < value < 65536:
        raise CommandError(f"{what} {value} is not a port (1-65535)")
    return value


def _id(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= MAX_ID:
        raise CommandError(f"--id {value} is not in 1..{MAX_ID}")
    return value


def run_scenario(source: Path | Scenario, *, processes: bool = False, root: Path = ROOT,
                 progress: Progress | None = None) -> ScenarioResult:
    """Play one scenario and compare the final state; never raises for a failing scenario."""
    started = time.monotonic()
    try:
        scenario = source if isinstance(source, Scenario) else load(source)
    except ScenarioError as exc:
        name = source.stem if isinstance(source, Path) else "?"
        return ScenarioResult(name, False, time.monotonic() - started,
                              [Problem("(scenario)", "", str(exc))])
    processes = processes and scenario.type != "network_connectivity"
    log_dir = root / "Logs"
    log_dir.mkdir(exist_ok=True)
    log_file = log_dir / f"{scenario.name}.log"
    with _scenario_logging(log_file), tempfile.TemporaryDirectory(prefix="crc-scenario-") as tmp:
        run = _Run(scenario, processes, root, log_dir, Path(tmp))
        problems = run.play(progress)
    return ScenarioResult(scenario.name, not problems, time.monotonic() - started, problems,
                          "processes" if processes else "in-process", log_file, run.states,
                          scenario.description)


@contextmanager
def _scenario_logging(path: Path) -> Iterator[None]:
    """Send the ``crc`` loggers to ``path`` for the duration of one scenario."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger("crc")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    thread = threading.current_thread()
    thread_name, thread.name = thread.name, "manager"
    try:
        yield
    finally:
        thread.name = thread_name
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


class _Run:
    """The machines of one scenario run, and the commands acting on them."""

    def __init__(self, scenario: Scenario, processes: bool, root: Path, log_dir: Path,
                 work_dir: Path) -> None:
        self.scenario = scenario
        self.processes = processes
        self.root = root
        self.log_dir = log_dir
        self.work_dir = work_dir
        self.machines: dict[str, Machine] = {}
        self.running: dict[str, Machine] = {}
        #: Clients launched with no WAIT since: their MESSAGE and QUIT are lost
        #: (``client_command``), whatever the load of this machine.
        self.unpaced: set[str] = set()
        self.states: dict[str, dict[str, Any]] = {}
        self.handlers: dict[str, Callable[[Command], None]] = {
            "LAUNCHSERVER": self.launch_server,
            "LAUNCHCLIENT": self.launch_client,
            "CLIENTCOMMAND": self.client_command,
            "SEND": self.send,
            "WAIT": self.wait,
            "KILL": self.kill,
        }
        steps = JobSteps(self.machines, lambda name: self.running.get(name))
        self.handlers.update(steps.handlers())

    def play(self, progress: Progress | None) -> list[Problem]:
        commands = self.scenario.commands
        log.info("scenario %s (%s, %s)", self.scenario.name, self.scenario.type,
                 "processes" if self.processes else "in-process")
        where = "start"
        try:
            for index, command in enumerate(commands, 1):
                where = f"line {index} ({command.line})"
                if progress is not None:
                    progress(index, len(commands), command.line)
                log.info("line %d: %s", index, command.line)
                self.handlers[command.name](command)
            where = "the end (implicit KILL ALL)"
            self.kill_all()
        except RUN_ERRORS as exc:
            log.error("scenario stopped at %s: %s", where, exc)
            return [Problem("(scenario)", "", f"{where}: {exc}")]
        finally:
            self.stop_all()
        kinds = {name: machine.kind for name, machine in self.machines.items()}
        problems = check(self.scenario.type, self.scenario.final_state, kinds, self.states)
        for problem in problems:
            log.error("check failed: %s", problem)
        return problems

    # -- launching ---------------------------------------------------------------------

    def _add(self, name: str, machine: Machine) -> None:
        if not name:
            raise CommandError("a machine needs a name")
        if name in self.machines:
            raise CommandError(f"a machine named {name!r} was already launched")
        machine.start()
        self.machines[name] = self.running[name] = machine

    def launch_server(self, cmd: Command) -> None:
        name = cmd.require("servername")
        connect_port = _port(cmd.number("connect_to_port"), "--connect_to_port")
        config = ServerConfig(port=_port(_required(cmd.number("port"), "--port"), "--port"),
                              id=_id(cmd.number("id")) or 0, name=name,
                              info=cmd.option("info", "") or "", host=LOCALHOST,
                              connect=(LOCALHOST, connect_port) if connect_port else None)
        slots = cmd.number("slots")
        interval = parse_seconds(cmd.option("load_interval") or str(LOAD_INTERVAL),
                                 "--load-interval")
        if slots is not None and slots < 1:
            raise CommandError(f"--slots {slots} is not positive")
        work_dir = self.work_dir / "servers" / name
        if self.processes:
            extra = ["--load-interval", f"{interval:g}"] if self.scenario.uses_jobs else []
            extra += ["--slots", str(slots)] if slots is not None else []
            machine: LoopServer | ProcessServer = ProcessServer(
                name, config, ROOT / "mesh_server.py",
                self.log_dir / f"{self.scenario.name}.{name}.log", work_dir, extra)
        else:
            jobs = None
            if self.scenario.uses_jobs:
                jobs = JobConfig(work_dir=work_dir, load_interval=interval,
                                 **({"slots": slots} if slots is not None else {}))
            machine = LoopServer(name, config,
                                 recording=self.scenario.type == "network_connectivity",
                                 jobs=jobs)
        self._add(name, machine)

    def launch_client(self, cmd: Command) -> None:
        name = cmd.require("username")
        server = (LOCALHOST, _port(_required(cmd.number("serverport"), "--serverport"),
                                   "--serverport"))
        client_id = _id(cmd.number("id")) or random_id()
        info = cmd.option("info", "") or ""
        if cmd.flag("plain"):
            machine: LoopClient | PlainMachine = PlainMachine(
                name, PlainClient(client_id, name, info, server))
        else:
            machine = LoopClient(name, ClientConfig(server, name, client_id, info),
                                 jobs_dir=self.work_dir / "clients" / name)
        self._add(name, machine)
        self.unpaced.add(name)

    # -- client commands -----------------------------------------------------------------

    def client_command(self, cmd: Command) -> None:
        """MESSAGE DEST TEXT and QUIT [TEXT]: one token of text, as the original runner reads."""
        name = cmd.require("username")
        machine = self.running.get(name)
        if not isinstance(machine, ClientMachine):
            raise CommandError(f"no running client named {name!r}")
        what, args = cmd.require("command"), cmd.args
        if what == "QUIT":
            if not self._lost(name, machine, what):
                machine.quit(args[0] if args else "")
            return
        if what not in ("MESSAGE", "MESSAGE_BYTEWISE", "MESSAGE_SIZE") or len(args) < 2:
            raise CommandError(f"{what}: expected MESSAGE, MESSAGE_BYTEWISE or MESSAGE_SIZE "
                               f"with a destination id and a text (or size)")
        if len(args) > 2:
            log.warning("%s: only the first text token is sent; ignoring %s",
                        what, " ".join(args[2:]))
        dest = parse_int(args[0], "destination id")
        size = parse_int(args[1], "size") if what == "MESSAGE_SIZE" else 0
        if not 0 <= size <= MAX_MESSAGE_SIZE:
            raise CommandError(f"MESSAGE_SIZE {size} is not from 0 to {MAX_MESSAGE_SIZE}")
        if self._lost(name, machine, what):
            return
        if what == "MESSAGE_SIZE":
            machine.send_chat(dest, sized_text(size))
        elif what == "MESSAGE_BYTEWISE":
            machine.send_chat_bytewise(dest, args[1])
        else:
            machine.send_chat(dest, args[1])

    def _lost(self, name: str, machine: ClientMachine, what: str) -> bool:
        """A MESSAGE or QUIT given before the client is on the network is lost,
        as with the original runner, whose client had no socket yet: with no
        WAIT since LAUNCHCLIENT (however fast this machine connects), or
        before the server welcomed it."""
        if name in self.unpaced or not machine.welcomed:
            log.warning("%s: %s given before the client was welcomed: lost, as with the "
                        "original runner (put a WAIT after LAUNCHCLIENT)", name, what)
            return True
        return False

    def send(self, cmd: Command) -> None:
        """The original runner's SEND reaches a hook that sends nothing; so does this."""
        log.info("SEND from %s to %s: nothing is sent", cmd.option("source"),
                 cmd.option("destination"))

    # -- pacing and ending ----------------------------------------------------------------

    def wait(self, cmd: Command) -> None:
        try:
            seconds = float(cmd.rest)
        except ValueError:
            raise CommandError(f"WAIT {cmd.rest!r} is not a number of seconds") from None
        if not 0 <= seconds <= MAX_WAIT:        # (nan fails too)
            raise CommandError(f"WAIT {cmd.rest!r} is not from 0 to {MAX_WAIT:g} seconds")
        self.unpaced.clear()
        time.sleep(seconds)

    def kill(self, cmd: Command) -> None:
        """KILL ALL, or KILL NAME...; an unknown name is ignored, as by the original runner."""
        if cmd.rest == "ALL":
            self.kill_all()
            return
        for name in cmd.args:
            machine = self.running.pop(name, None)
            if machine is None:
                log.warning("KILL %s: no running machine of that name", name)
                continue
            self.states[name] = machine.kill()
            log.info("%s killed", name)

    def kill_all(self) -> None:
        """Take every running machine's state, then stop them all."""
        for name, machine in self.running.items():
            self.states[name] = machine.snapshot()
        self.stop_all()

    def stop_all(self) -> None:
        machines, self.running = list(self.running.values()), {}
        for machine in machines:
            _quietly(machine.request_stop, machine)
        for machine in machines:
            _quietly(machine.wait_stopped, machine)


def _required(value: int | None, what: str) -> int:
    if value is None:
        raise CommandError(f"{what} is required")
    return value


def _quietly(action: Callable[[], None], machine: Machine) -> None:
    try:
        action()
    except Exception as exc:   # stopping must reach every machine
        log.error("stopping %s failed: %s", machine.name, exc)
