"""What both benchmarks need: child-process hygiene, free ports, deadlines,
and the state query.

Imported by ``bench/relay.py`` and ``bench/jobs.py`` as a sibling module (a
script's own directory is first on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from crc.server.query import StateQueryError, query_state  # noqa: E402

LOOPBACK = "127.0.0.1"
FORWARDER_SCRIPT = Path(__file__).resolve().parent / "forwarder.py"


class BenchError(Exception):
    """A step of the benchmark could not be carried out (not a slow result)."""


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True) \
    if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child (``preexec_fn``): get SIGTERM if the benchmark dies without cleaning up."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_processes(procs: Iterable[subprocess.Popen]) -> None:
    """SIGTERM, a grace period of 5 s, then SIGKILL for whoever is left."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.terminate()
    deadline = time.monotonic() + 5.0
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


#: What the clients a benchmark runs import: their byte code, written before
#: the first measured build (an installed environment has it; a fresh
#: ``PYTHONPYCACHEPREFIX`` does not, and the first client run would compile
#: rich and the rest while the build waits: 0.3 s of a two-second build).
CLIENT_MODULES = ("crc.client.cli", "crc.client.batch", "crc.client.jobs_ui", "crc.client.tui",
                  "crc.cc.agent", "crc.cc.wrapper", "crc.server.cli", "rich.console",
                  "rich.live", "rich.table", "rich.markup", "rich.text")


def write_bytecode(env: dict[str, str]) -> None:
    """Import ``CLIENT_MODULES`` under ``env`` (its ``PYTHONPYCACHEPREFIX``)."""
    subprocess.run([sys.executable, "-c", "import importlib, sys\n"
                    "for name in sys.argv[1:]: importlib.import_module(name)",
                    *CLIENT_MODULES], env=env, cwd=ROOT, check=True, timeout=300,
                   stdout=subprocess.DEVNULL)


def against_either_side(times: list[float], around: list[float]) -> list[float]:
    """Each of ``times`` divided by the mean of the two ``around`` it
    (``around[i]`` ran just before ``times[i]``, ``around[i + 1]`` just
    after): a ratio the machine's drift over minutes does not move."""
    return [round(t / ((around[i] + around[i + 1]) / 2), 3) for i, t in enumerate(times)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def state_query(port: int, timeout: float = 2.0) -> dict | None:
    """The server's snapshot (docs/protocol.md, "State query"), or None if it
    does not answer (yet)."""
    try:
        return query_state(LOOPBACK, port, timeout)
    except StateQueryError:
        return None


def wait_until(predicate: Callable[[], Any], deadline: float, what: str,
               interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something true; ``BenchError`` past ``deadline``."""
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(interval)


# -- child processes and servers ------------------------------------------------------

class Processes:
    """Child processes started by one step; all stopped when the step ends."""

    live: set[subprocess.Popen] = set()   # every group's, for the last-resort cleanup

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def spawn(self, args: list[str], *, stdout: int = subprocess.DEVNULL,
              stderr_name: str = "") -> subprocess.Popen:
        stderr: Any = subprocess.DEVNULL
        if stderr_name:
            stderr = open(self.logdir / f"{stderr_name}.stderr", "wb")
        try:
            proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                                    stdout=stdout, stderr=stderr, preexec_fn=die_with_parent)
        finally:
            if stderr_name:
                stderr.close()
        self.procs.append(proc)
        Processes.live.add(proc)
        return proc

    def stop_all(self) -> None:
        stop_group(self.procs)
        self.procs.clear()


def stop_group(procs: list[subprocess.Popen] | set[subprocess.Popen]) -> None:
    """Stop ``procs`` (``common.stop_processes``) and forget them."""
    procs = list(procs)
    stop_processes(procs)
    Processes.live.difference_update(procs)


@dataclass
class Server:
    name: str
    id: int
    port: int
    proc: subprocess.Popen


def read_ready(proc: subprocess.Popen, deadline: float) -> int:
    """The port a forwarder reports with its ``ready PORT`` line."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(max(0.0, deadline - time.monotonic())):
            raise BenchError("a forwarder did not report ready in time")
    finally:
        sel.close()
    line = proc.stdout.readline().decode().split()
    if len(line) != 2 or line[0] != "ready":
        raise BenchError(f"a forwarder failed to start (exit status {proc.poll()})")
    return int(line[1])


def start_forwarders(group: Processes, length: int, target: int, deadline: float,
                     name: str) -> int:
    """A chain of ``length`` byte forwarders (``bench/forwarder.py``) ending at
    loopback port ``target``; returns the port of its first one."""
    for i in reversed(range(length)):
        proc = group.spawn([str(FORWARDER_SCRIPT), "--to", f"{LOOPBACK}:{target}"],
                           stdout=subprocess.PIPE, stderr_name=f"{name}-f{i}")
        target = read_ready(proc, deadline)
    return target


#: What meshcc says (MESHCC_VERBOSE) of a compile it ran here, a local slot
#: being free, while the agent another meshcc started was starting.
STARTING = "compiling here: the meshcc agent is starting"
