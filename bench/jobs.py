"""Job benchmark: remote job rate, file transfer, chat under load, mesh builds.

Run ``python bench/jobs.py`` (under a minute) or ``python bench/jobs.py
--quick`` (a sanity run of a few seconds with smaller counts). Every server is a
real ``mesh_server.py`` process on loopback; the benchmark drives the mesh
with the project's own client engine (``ChatClient`` + ``JobClient`` in an
``EventLoop`` pumped from this process). Each figure is measured against a
baseline taken in the same run, on the same machine:

1. **Job rate.** A chain ``A-B-C-D``; a client on ``A`` runs ``true`` jobs
   pinned (``on``) to ``B`` (one hop) and to ``D`` (three hops), keeping a
   fixed number outstanding (and as many slots on the servers). Baseline: the
   same number of ``true`` processes spawned locally with the same
   child-process code and the same concurrency. Rounds are interleaved and
   the best of each counts, since other load on the machine comes and goes.
2. **File transfer.** A ``true`` job pinned to ``D`` that requires a fresh
   random file: the time from submitting it until it starts is the time the
   file took to cross ``A-B-C-D`` (pulled chunk by chunk, passing the relays
   untouched, stored and verified on ``D``). Baselines: the same bytes copied
   over one loopback TCP connection from a sending thread to a receiver that
   writes them to a new file on the servers' file system, and to one that
   only counts them; and, as the ceiling of any relay path of this shape,
   the same bytes through three ``bench/forwarder.py`` processes to a
   receiver that writes and hashes them as ``D`` does. Each round has
   ``raw_repeats`` fresh files; each crosses the forwarders and the mesh
   back to back (the order alternating), each try writing into memory
   just freed (``settle_memory``), and each side's best try counts: the
   mesh and its ceiling get the same number of tries, in the same moments
   and the same memory state. The figure asked to stay at 0.7 or more is the median, over the
   rounds, of each round's forwarders' time over the mesh's.
3. **Chat under load.** Two plain CRC v1 chat clients, one on ``A`` and one
   on ``D``, ping-pong 100-byte chats (in a separate process, so the
   benchmark's own work never delays them): round-trip latency while idle,
   and while a second fresh file crosses the same links.
4. **Build.** A synthetic C project (shared headers, real work in every
   function, a link step) generated into a temporary directory, built through
   a three-server mesh (a chain ``b1-b2-b3``, default slots, the client on
   ``b2``) from a Rakefile, and with ``make -j2`` locally: wall
   time, and the bytes that crossed the mesh's TCP links and the client's
   link (from the servers' state query counters and the client's own
   connection) against the project's total source and object size. Both
   programs are run and must print the same result.

Results are printed as tables, each figure with its baseline, the ratio, the
floor and PASS/MISS; ``--json FILE`` also writes them. The exit status is 1
when a step cannot be carried out (a server that would not start, a job or
build that fails, binaries that disagree), 0 otherwise: speed floors are
reported, never fatal.

Everything is bounded in count and time, and every child process (servers,
the chat process, ``make``) is stopped at the end, on an error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import itertools
import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from common import (  # noqa: E402  (a sibling module; it also puts ROOT on sys.path)
    LOOPBACK, ROOT, BenchError, Processes, Server, free_port, start_forwarders, state_query,
    wait_until,
)

import psutil  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from crc.client import ChatClient, ClientConfig  # noqa: E402
from crc.client.jobs.build import ActionRun, Build  # noqa: E402
from crc.client.jobs.engine import Job, JobClient, RunState  # noqa: E402
from crc.jobs.process import ChildProcess  # noqa: E402
from crc.jobs.rakefile import ActionSet, check_files, parse  # noqa: E402
from crc.jobs.store import hash_file  # noqa: E402
from crc.net import EventLoop  # noqa: E402
from crc.protocol import (  # noqa: E402
    ClientChat, ClientRegistration, Decoder, Message, MsgType, encode,
)

SERVER_SCRIPT = ROOT / "mesh_server.py"
MB = 1_000_000
MIB = 1 << 20
CHAT_TEXT = "x" * 100
CHAT_A, CHAT_D = 910_001, 910_002

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


@dataclass(frozen=True)
class Params:
    """How much each measurement does; ``--quick`` shrinks all of it."""

    jobs: int = 500                   # timed jobs per target (B, D, local) and round
    rounds: int = 2                   # job rates and transfers: the best round counts
    transfer_rounds: int = 4          # transfers (alternating which goes first)
    warmup_jobs: int = 30
    window: int = 32                  # jobs outstanding at once (and the job servers' slots)
    file_mib: int = 100
    raw_repeats: int = 3              # raw loopback copies; the best counts
    idle_rounds: int = 2_000          # chat round trips while idle
    c_files: int = 60                 # including main.c
    headers: int = 10
    setup_timeout: float = 30.0
    step_timeout: float = 120.0       # any one measurement, at most


QUICK = Params(jobs=60, rounds=1, transfer_rounds=2, warmup_jobs=5, window=16, file_mib=8, raw_repeats=2,
               idle_rounds=200, c_files=8, headers=4, setup_timeout=20.0, step_timeout=60.0)


# -- servers -------------------------------------------------------------------------------

def start_servers(group: Processes, names: list[str], parents: list[int | None],
                  workdir: Path, timeout: float, slots: int | None = None) -> list[Server]:
    """Start ``mesh_server.py`` processes; server i joins server ``parents[i]``.

    Each server starts once its parent answers the state query; one that
    exits at once (its free port was taken meanwhile) is tried again on
    another port. Returns once every server knows every other one.
    """
    deadline = time.monotonic() + timeout
    servers: list[Server] = []
    for i, (name, parent) in enumerate(zip(names, parents)):
        for _attempt in range(3):
            port = free_port()
            args = [str(SERVER_SCRIPT), "--port", str(port), "--id", str(5001 + i),
                    "--name", name, "--work-dir", str(workdir / name),
                    "--log-level", "WARNING", "--log-file", str(group.logdir / f"{name}.log")]
            if slots is not None:
                args += ["--slots", str(slots)]
            if parent is not None:
                args += ["--connect", f"{LOOPBACK}:{servers[parent].port}"]
            proc = group.spawn(args, stderr_name=name)
            server = Server(name, 5001 + i, port, proc)
            up = wait_until(lambda: proc.poll() is not None or state_query(port, 1.0) is not None,
                            deadline, f"server {name} to listen")
            if proc.poll() is None and up:
                servers.append(server)
                break
        else:
            raise BenchError(f"server {name} exited with status {proc.returncode}; "
                             f"see {group.logdir / (name + '.log')}")
    everyone = {s.id for s in servers}

    def joined() -> bool:
        for server in servers:
            state = state_query(server.port)
            if state is None or not everyone - {server.id} <= set(state["hosts_db"]):
                return False
        return True

    wait_until(joined, deadline, "the servers to learn of each other")
    return servers


def link_bytes(servers: list[Server]) -> int:
    """Bytes every server has sent over its adjacent links (servers and clients)."""
    total = 0
    for server in servers:
        state = state_query(server.port)
        if state is None or "bytes_out" not in state:
            raise BenchError(f"server {server.name} did not report its byte counters")
        total += int(state["bytes_out"])
    return total


# -- the benchmark's client ----------------------------------------------------------------

class Session:
    """A chat client with a job client, pumped from this thread."""

    def __init__(self, server: Server, name: str, base_dir: Path, timeout: float) -> None:
        self.loop = EventLoop()
        self.client = ChatClient(ClientConfig((LOOPBACK, server.port), name), self.loop)
        self.jobs = JobClient(self.client, base_dir)
        self.client.start()
        self.pump(lambda: self.client.ext, timeout, f"{name} to complete the mesh handshake")

    def pump(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Run the loop until ``done()``; ``BenchError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            if self.client.conn is None or self.client.conn.closed:
                raise BenchError(f"lost the server while waiting for {what}: "
                                 f"{self.client.closed_reason}")
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
            self.loop.run_once(max_wait=0.05)

    def run_job(self, timeout: float, what: str, **submit: Any) -> Job:
        job = self.jobs.submit(**submit)
        self.pump(lambda: job.finished, timeout, what)
        return job

    @property
    def bytes_out(self) -> int:
        return self.client.conn.bytes_out if self.client.conn is not None else 0

    def close(self) -> None:
        with contextlib.suppress(BenchError):
            if self.client.connected:
                self.client.quit("benchmark done")
                self.pump(lambda: not self.client.connected, 5.0, "the quit to be sent")
        self.jobs.close()
        self.client.close()


def wait_job_servers(session: Session, names: list[str], timeout: float) -> None:
    """Until ``runall -- true`` succeeds on every one of ``names``."""
    deadline = time.monotonic() + timeout
    while True:
        job = session.run_job(max(1.0, deadline - time.monotonic()), "runall true",
                              argv=["true"], everywhere=True)
        ok = {run.name for run in job.runs.values() if run.ok}
        if set(names) <= ok:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"only {sorted(ok)} of {names} run jobs")
        pause = time.monotonic() + 0.2      # fresh load reports arrive meanwhile
        session.pump(lambda: time.monotonic() >= pause, 1.0, "the next load reports")


# -- 1. job rate ---------------------------------------------------------------------------

def remote_rate(session: Session, on: str, total: int, window: int, timeout: float) -> float:
    """``true`` jobs per second pinned to ``on``, ``window`` outstanding."""
    state = {"submitted": 0, "finished": 0}
    failures: list[str] = []

    def listener(job: Job, run: RunState, event: str, data: Any) -> None:
        if event in ("done", "failed"):
            state["finished"] += 1
            if not run.ok:
                failures.append(f"{run.id}: {run.error or f'exit {run.exit}'}")
            submit()

    def submit() -> None:
        if state["submitted"] < total:
            state["submitted"] += 1
            session.jobs.submit(argv=["true"], on=on, listener=listener)

    start = time.perf_counter()
    for _ in range(min(window, total)):
        submit()
    session.pump(lambda: state["finished"] >= total or bool(failures), timeout,
                 f"{total} jobs on {on}")
    elapsed = time.perf_counter() - start
    if failures:
        raise BenchError(f"a job on {on} failed: {failures[0]}")
    return total / elapsed


def local_rate(total: int, window: int, cwd: Path, timeout: float) -> float:
    """``true`` spawned locally with the servers' child-process code, ``window`` at once."""
    loop = EventLoop()
    state = {"started": 0, "finished": 0, "failed": 0}

    def exited(code: int) -> None:
        state["finished"] += 1
        state["failed"] += code != 0
        spawn()

    def spawn() -> None:
        if state["started"] < total:
            state["started"] += 1
            ChildProcess(loop, ["true"], str(cwd), on_output=lambda stream, data: None,
                         on_exit=exited)

    try:
        start = time.perf_counter()
        deadline = time.monotonic() + timeout
        for _ in range(min(window, total)):
            spawn()
        while state["finished"] < total:
            if time.monotonic() > deadline:
                raise BenchError("timed out spawning local processes")
            loop.run_once(max_wait=0.05)
        elapsed = time.perf_counter() - start
    finally:
        loop.close()
    if state["failed"]:
        raise BenchError(f"{state['failed']} local `true` processes failed")
    return total / elapsed


# -- 2. file transfer ----------------------------------------------------------------------

def random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(MIB, left))
            f.write(block)
            left -= len(block)


def mesh_transfer(session: Session, on: str, name: str, timeout: float) -> tuple[float, float]:
    """Submit a job on ``on`` that requires ``name``: (time the job was sent, time it
    started), both ``time.monotonic()``; the difference is the time the file took."""
    started: list[float] = []

    def listener(job: Job, run: RunState, event: str, data: Any) -> None:
        if event == "started" and not started:
            started.append(time.monotonic())

    job = session.jobs.submit(argv=["true"], on=on, files=[name], listener=listener)
    sent = time.monotonic()         # submit() has hashed the file before sending the job
    session.pump(lambda: bool(started) or job.finished, timeout, f"{name} to reach {on}")
    session.pump(lambda: job.finished, timeout, f"the job on {on} to finish")
    if job.exit_code != 0 or not started:
        errors = "; ".join(r.error for r in job.runs.values() if r.error) or job.error
        raise BenchError(f"the transfer job on {on} failed: {errors}")
    return sent, started[0]


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` so far (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def settle_memory(directory: Path, size: int) -> None:
    """Write ``size`` bytes into a file under ``directory`` and remove it.

    On this machine (a virtual one) a write into memory the system has not
    touched for a while costs up to ten times one into memory just freed:
    the host backs a guest's free memory lazily. Which of two writers meets
    which state is luck, not the writers' work; after this, the next
    ``size`` bytes written land in memory just freed, whoever writes them."""
    spill = directory / "settle.bin"
    block = bytes(MIB)
    with open(spill, "wb") as f:
        for _ in range(size // MIB):
            f.write(block)
    spill.unlink()


def raw_copy(path: Path, into: Path | None = None, *, sha: str = "",
             via: tuple[socket.socket, int] | None = None) -> float:
    """Seconds to copy ``path``'s bytes over loopback TCP, from a sending thread
    to a receiver that keeps them in memory, or (``into``) writes them to that
    new file, as any file transfer must (the caller removes it). With ``sha``
    the receiver also hashes what it receives and checks the result, as the
    mesh's executing server does. The copy takes one connection, or with
    ``via`` (a listener and the port of the first of a chain of byte
    forwarders ending at it) crosses those forwarders."""
    size = path.stat().st_size
    with contextlib.ExitStack() as stack:
        if via is None:
            listener = stack.enter_context(socket.socket())
            listener.bind((LOOPBACK, 0))
            listener.listen(1)
            port = listener.getsockname()[1]
        else:
            listener, port = via
        errors: list[BaseException] = []

        def send() -> None:
            try:
                with socket.create_connection((LOOPBACK, port), timeout=30) as out, \
                        open(path, "rb") as f:
                    while block := f.read(256 * 1024):
                        out.sendall(block)
            except OSError as exc:
                errors.append(exc)

        start = time.perf_counter()
        sender = threading.Thread(target=send, name="raw-sender", daemon=True)
        sender.start()
        listener.settimeout(30)
        conn, _ = listener.accept()
        digest = hashlib.sha256()
        with conn, (open(into, "wb") if into is not None else contextlib.nullcontext()) as out:
            conn.settimeout(30)
            buf = bytearray(MIB)
            view = memoryview(buf)
            got = 0
            while got < size:
                n = conn.recv_into(buf)
                if not n:
                    break
                if out is not None:
                    out.write(view[:n])
                if sha:
                    digest.update(view[:n])
                got += n
        elapsed = time.perf_counter() - start
        sender.join(30)
    if errors or got != size:
        raise BenchError(f"raw loopback copy moved {got} of {size} bytes: {errors}")
    if sha and digest.hexdigest() != sha:
        raise BenchError("raw loopback copy: the received bytes have another SHA-256")
    return elapsed


# -- 3. chat ping-pong (runs in its own process) -------------------------------------------

class _ChatEnd:
    """A blocking plain CRC v1 client for the ping-pong."""

    def __init__(self, port: int | socket.socket, client_id: int, name: str) -> None:
        self.id = client_id
        # A port on loopback, or a socket already connected (bench/dataplane.py:
        # connected inside another network namespace).
        self.sock = port if isinstance(port, socket.socket) else \
            socket.create_connection((LOOPBACK, port), timeout=10)
        self.sock.settimeout(10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = Decoder()
        self.inbox: collections.deque[Message] = collections.deque()
        self.sock.sendall(encode(ClientRegistration(client_id, 0, name, "")))

    def next_chat(self) -> ClientChat:
        while True:
            while self.inbox:
                msg = self.inbox.popleft()
                if msg.type is MsgType.CLIENT_CHAT:
                    return msg
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the chat connection")
            self.inbox.extend(self.decoder.feed(data))

    def wait_registration(self, other: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            for msg in self.inbox:
                if msg.type is MsgType.CLIENT_REGISTRATION and msg.source == other:
                    self.inbox.clear()
                    return
            self.inbox.clear()
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the chat connection")
            self.inbox.extend(self.decoder.feed(data))
        raise TimeoutError(f"client {self.id} never heard of client {other}")

    def send_chat(self, dest: int) -> None:
        self.sock.sendall(encode(ClientChat(self.id, dest, CHAT_TEXT)))


def chat_worker(port_a: int | socket.socket, port_d: int | socket.socket, pipe: multiprocessing.connection.Connection,
                stop: multiprocessing.synchronize.Event) -> None:
    """Child process: answer ("idle", n) and ("until_stop",) with round-trip samples."""
    try:
        a = _ChatEnd(port_a, CHAT_A, "ping")
        d = _ChatEnd(port_d, CHAT_D, "pong")
        a.wait_registration(CHAT_D, time.monotonic() + 10)

        def round_trip() -> float:
            t0 = time.perf_counter()
            a.send_chat(CHAT_D)
            d.next_chat()
            d.send_chat(CHAT_A)
            a.next_chat()
            return time.perf_counter() - t0

        pipe.send(("ready", None))
        while True:
            command = pipe.recv()
            if command[0] == "idle":
                pipe.send(("idle", [round_trip() for _ in range(command[1])]))
            elif command[0] == "until_stop":
                samples = []
                while not stop.is_set() and len(samples) < 1_000_000:
                    at = time.monotonic()
                    samples.append((at, round_trip()))
                pipe.send(("samples", samples))
            else:
                break
    except Exception as exc:  # reported to the benchmark, which fails the step
        with contextlib.suppress(OSError):
            pipe.send(("error", repr(exc)))


class ChatProbe:
    """The ping-pong process and its two chat clients (A's end and D's end)."""

    def __init__(self, port_a: int | socket.socket, port_d: int | socket.socket,
                 timeout: float) -> None:
        ctx = multiprocessing.get_context("fork")
        self.pipe, child = ctx.Pipe()
        self.stop = ctx.Event()
        self.proc = ctx.Process(target=chat_worker, args=(port_a, port_d, child, self.stop),
                                name="chat-pingpong", daemon=True)
        self.proc.start()
        child.close()
        try:
            self._expect("ready", timeout)
        except BaseException:
            self.close()
            raise

    def _expect(self, kind: str, timeout: float) -> Any:
        if not self.pipe.poll(timeout):
            raise BenchError(f"the chat process did not answer ({kind}) within {timeout:g} s")
        got, value = self.pipe.recv()
        if got != kind:
            raise BenchError(f"the chat process failed: {value}")
        return value

    def idle(self, rounds: int, timeout: float) -> list[float]:
        self.pipe.send(("idle", rounds))
        return self._expect("idle", timeout)

    @contextlib.contextmanager
    def running(self, timeout: float) -> Iterator[list[tuple[float, float]]]:
        """Ping-pong for the duration of the ``with`` block; samples filled at its end."""
        self.stop.clear()
        self.pipe.send(("until_stop",))
        samples: list[tuple[float, float]] = []
        try:
            yield samples
        finally:
            self.stop.set()
            samples.extend(self._expect("samples", timeout))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.send(("quit",))
        self.proc.join(3)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(3)
        self.pipe.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


# -- 4. build ------------------------------------------------------------------------------

def header_text(k: int, variant: int) -> str:
    lines = [f"#ifndef COMMON{k}_H", f"#define COMMON{k}_H", "#include <stddef.h>",
             "#include <stdint.h>", "", f"#define COMMON{k}_VARIANT {variant}",
             f"typedef struct {{ double w[8]; int32_t tag; }} rec{k}_t;"]
    for j in range(12):
        lines.append(f"static inline double c{k}_f{j}(double x) {{ double y = x * "
                     f"{1.0 + k * 0.1 + j * 0.01:.3f}; for (int i = 0; i < {3 + j % 4}; i++) "
                     f"y = y * 0.5 + (double)i; return y; }}")
    lines += [f"#define C{k}_SCALE {k + 3}", "#endif", ""]
    return "\n".join(lines)


def unit_text(i: int, headers: int, variant: int) -> str:
    """A translation unit with five loops of real work (tens of ms at -O2)."""
    includes = "".join(f'#include "common{k}.h"\n' for k in range(headers))
    functions = []
    for j in range(5):
        h0, h1, h2 = j % headers, (j + 1) % headers, (j + 2) % headers
        functions.append(f"""
static double u{i}_g{j}(const double *v, size_t n, double s)
{{
    double acc = 0.0;
    for (size_t a = 0; a < n; a++) {{
        double t = v[a] * s + c{h0}_f{(i + j) % 12}(v[a]);
        for (size_t b = 0; b < 8; b++)
            t = t * 0.999 + (double)(b * C{h1}_SCALE) * 1e-3;
        switch ((a + {j}) % 7) {{
        case 0: acc += t; break;
        case 1: acc -= t * 0.5; break;
        case 2: acc += t * t * 1e-6; break;
        case 3: acc *= 0.9999; break;
        case 4: acc += (double)((int64_t)t % 97); break;
        case 5: acc += c{h2}_f{j}(t) * 1e-3; break;
        default: acc += 1.0; break;
        }}
    }}
    return acc;
}}""")
    calls = " + ".join(f"u{i}_g{j}(v, n, {j + 1}.0)" for j in range(5))
    return f"""{includes}{"".join(functions)}

long unit{i:02d}_run(int seed)
{{
    double v[256];
    size_t n = sizeof v / sizeof v[0];
    for (size_t a = 0; a < n; a++)
        v[a] = (double)((seed * 31 + (int)a * {i + 7}) % 1000) / 10.0;
    rec0_t r = {{ {{0}}, {i} }};
    r.w[0] = {calls};
    return (long)r.w[0] + r.tag + {variant};
}}
"""


def main_text(units: int, headers: int, variant: int) -> str:
    includes = "".join(f'#include "common{k}.h"\n' for k in range(headers))
    decls = "".join(f"long unit{i:02d}_run(int seed);\n" for i in range(1, units + 1))
    calls = "".join(f"    total += unit{i:02d}_run(seed + {i});\n" for i in range(1, units + 1))
    return f"""#include <stdio.h>
#include <stdlib.h>
{includes}{decls}
int main(int argc, char **argv)
{{
    int seed = argc > 1 ? atoi(argv[1]) : 7;
    long total = {variant};
{calls}    printf("checksum %ld over {units} units\\n", total);
    return 0;
}}
"""


#: The project's Rakefile that links on the client (``generate_project``).
LINK_HERE = "Rakefile.linkhere"


@dataclass
class Project:
    root: Path
    sources: list[str]
    headers: list[str]

    @property
    def objects(self) -> list[str]:
        return [s[:-2] + ".o" for s in self.sources]

    def actions(self) -> list[tuple[str, list[str], str]]:
        """(Rakefile command, files it requires, file it produces) of every remote action."""
        compiles = [(f"cc -O2 -c {source}", [source, *self.headers], obj)
                    for source, obj in zip(self.sources, self.objects)]
        return compiles + [(f"cc -O2 -o program {' '.join(self.objects)}", self.objects, "program")]


def generate_project(root: Path, c_files: int, headers: int, variant: int = 0) -> Project:
    """``c_files`` C files (main.c and units) that all include every header;
    a Rakefile (compile, link) and a Makefile doing the same. Projects of
    different ``variant`` differ in every source and object file."""
    root.mkdir(parents=True, exist_ok=True)
    header_names = [f"common{k}.h" for k in range(headers)]
    for k, name in enumerate(header_names):
        (root / name).write_text(header_text(k, variant))
    units = c_files - 1
    sources = ["main.c"] + [f"unit{i:02d}.c" for i in range(1, units + 1)]
    (root / "main.c").write_text(main_text(units, headers, variant))
    for i in range(1, units + 1):
        (root / f"unit{i:02d}.c").write_text(unit_text(i, headers, variant))
    project = Project(root, sources, header_names)
    rake = ["# Generated by bench/jobs.py: compile every file remotely, then link remotely."]
    for i, (command, requires, _) in enumerate(project.actions()):
        if i == 0 or i == len(project.sources):
            rake += ["", "compile:" if i == 0 else "link:"]
        rake += [f"\tremote-{command}", f"\t\trequires {' '.join(requires)}"]
    rake.append("")
    (root / "Rakefile").write_text("\n".join(rake))
    # The build a make user gets from distcc or meshcc: compiles on the mesh,
    # the link here (its objects are here already: every remote action's
    # products come back).
    compiles, (link, _, _) = rake[:-5], project.actions()[-1]
    compiles[0] = "# Generated by bench/jobs.py: compile every file remotely, link here as make does."
    (root / LINK_HERE).write_text("\n".join([*compiles, "", "link:", f"\t{link}", ""]))
    make = ["# Generated by bench/jobs.py: the same build for make.", "CC = cc",
            "CFLAGS = -O2", f"OBJS = {' '.join(project.objects)}",
            f"HEADERS = {' '.join(header_names)}", "",
            "program: $(OBJS)", "\t$(CC) $(CFLAGS) -o program $(OBJS)", "",
            "%.o: %.c $(HEADERS)", "\t$(CC) $(CFLAGS) -c $<", ""]
    (root / "Makefile").write_text("\n".join(make))
    return project


def copy_project(project: Project, dest: Path) -> Project:
    shutil.copytree(project.root, dest)
    return Project(dest, project.sources, project.headers)


def run_bounded(argv: list[str], cwd: Path, timeout: float,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command in its own process group; kill the whole group on timeout."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise BenchError(f"{' '.join(argv)} did not finish within {timeout:g} s") from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def local_make(project: Project, jobs: int, timeout: float) -> float:
    start = time.perf_counter()
    result = run_bounded(["make", "-s", f"-j{jobs}"], project.root, timeout)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise BenchError(f"make -j{jobs} failed:\n"
                         f"{result.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


class QuietReporter:
    """``Build`` reporter that keeps what went wrong and prints nothing."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.placement: dict[str, str] = {}          # command -> server that ran it
        self.failed: list[ActionRun] = []

    def actionset_started(self, actionset: ActionSet, runs: list[ActionRun]) -> None:
        pass

    def action_changed(self, run: ActionRun) -> None:
        if run.state == "ok":
            self.placement[run.action.command] = run.server

    def line(self, run: ActionRun, stream: int, text: str) -> None:
        if len(self.lines) < 50:
            self.lines.append(f"[{run.name}@{run.server}] {text}")

    def actionset_finished(self, actionset: ActionSet, runs: list[ActionRun]) -> None:
        pass

    def build_finished(self, ok: bool, failed: list[ActionRun]) -> None:
        self.failed = failed


def mesh_build(session: Session, project: Project, timeout: float) -> tuple[float, QuietReporter]:
    rakefile = parse((project.root / "Rakefile").read_text(), str(project.root / "Rakefile"))
    check_files(rakefile, project.root)
    session.jobs.base_dir = project.root
    reporter = QuietReporter()
    result: list[int] = []
    build = Build(rakefile, session.jobs, session.loop, project.root, reporter,
                  done=result.append)
    start = time.perf_counter()
    build.start()
    session.pump(lambda: bool(result), timeout, "the mesh build")
    elapsed = time.perf_counter() - start
    if result[0] != 0:
        failures = "; ".join(r.describe_failure() for r in reporter.failed)
        raise BenchError(f"the mesh build failed: {failures}\n" + "\n".join(reporter.lines))
    return elapsed, reporter


def program_output(project: Project, timeout: float) -> str:
    program = project.root / "program"
    if not os.access(program, os.X_OK):
        raise BenchError(f"{program} is missing or not executable")
    result = run_bounded([str(program), "12"], project.root, timeout)
    if result.returncode != 0:
        raise BenchError(f"{program} exited with status {result.returncode}")
    return result.stdout.decode().strip()


def placement_bytes(project: Project, placement: dict[str, str],
                    edges: list[tuple[str, str]]) -> int:
    """File bytes that must cross links for this placement of the actions.

    A file crosses each link on its way from where it originates (the client
    for sources, the server that made it for objects) to every machine that
    needs it, once: relays keep what they pass on. ``edges`` is the tree
    (``"client"`` is the builder's machine).
    """
    neighbours: dict[str, set[str]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)

    def path(src: str, dst: str) -> set[frozenset[str]]:
        """The links between two machines of the tree."""
        previous: dict[str, str | None] = {src: None}
        queue = collections.deque([src])
        while queue:
            node = queue.popleft()
            for other in neighbours[node]:
                if other not in previous:
                    previous[other] = node
                    queue.append(other)
        links: set[frozenset[str]] = set()
        node, before = dst, previous[dst]
        while before is not None:
            links.add(frozenset((node, before)))
            node, before = before, previous[before]
        return links

    origin = {name: "client" for name in project.sources + project.headers}
    needed: dict[str, set[str]] = {}
    for command, requires, produces in project.actions():
        server = placement[command]
        origin[produces] = server
        needed.setdefault(produces, set()).add("client")      # collected after the action
        for name in requires:
            needed.setdefault(name, set()).add(server)
    total = 0
    for name, needers in needed.items():
        links = set().union(*(path(origin[name], node) for node in needers))
        total += (project.root / name).stat().st_size * len(links)
    return total


def project_bytes(project: Project) -> tuple[int, int]:
    """(source bytes, object bytes including the linked program)."""
    source = sum((project.root / n).stat().st_size for n in project.sources + project.headers)
    objects = sum((project.root / n).stat().st_size for n in project.objects + ["program"])
    return source, objects


# -- results -------------------------------------------------------------------------------

@dataclass
class Figure:
    """One measured figure against its baseline, with an optional floor."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    floor: str = ""
    passed: bool | None = None        # None: no floor on this figure

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline


@dataclass
class Results:
    params: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def results_table(results: Results) -> Table:
    table = Table(title="CRC Mesh jobs benchmark")
    for col, justify in (("measurement", "left"), ("figure", "right"), ("baseline", "right"),
                         ("ratio", "right"), ("floor", "left"), ("result", "center")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for f in results.figures:
        baseline = fmt(f.baseline, f.unit) + (f" ({f.baseline_label})" if f.baseline_label else "")
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else "-"
        if f.passed is None:
            verdict = Text("-", style="dim")
        else:
            verdict = (Text("PASS", style="bold green") if f.passed
                       else Text("MISS", style="bold red"))
        table.add_row(f.name, fmt(f.value, f.unit), baseline, ratio, f.floor or "-", verdict)
    return table


def details_table(details: dict[str, Any]) -> Table:
    table = Table(title="Details")
    table.add_column("item")
    table.add_column("value", overflow="fold")
    for key, value in details.items():
        table.add_row(key, str(value))
    return table


# -- the steps -----------------------------------------------------------------------------

STEPS = ("rates", "transfer", "chat", "build")


def step_chain(params: Params, results: Results, tmp: Path, logdir: Path,
               only: set[str]) -> None:
    """Measurements 1-3 on one chain of four servers."""
    names = ["A", "B", "C", "D"]
    base = tmp / "client"
    base.mkdir()
    with Processes(logdir) as group:
        console.print("[bold]chain A-B-C-D[/]: starting servers")
        servers = start_servers(group, names, [None, 0, 1, 2], tmp / "servers",
                                params.setup_timeout, slots=params.window)
        by_name = {s.name: s for s in servers}
        probe = ChatProbe(by_name["A"].port, by_name["D"].port, params.setup_timeout)
        session = None
        try:
            session = Session(by_name["A"], "bench", base, params.setup_timeout)
            wait_job_servers(session, names, params.setup_timeout)
            if "rates" in only:
                measure_job_rates(params, results, session, base)
            if "transfer" in only:
                measure_transfer(params, results, session, base, tmp / "servers", group,
                                 servers)
            if "chat" in only:
                measure_chat(params, results, session, probe, base)
        finally:
            if session is not None:
                session.close()
            probe.close()


def measure_job_rates(params: Params, results: Results, session: Session, base: Path) -> None:
    console.print(f"jobs: {params.jobs} x `true` per target, {params.window} outstanding, "
                  f"best of {params.rounds}")
    for on in ("B", "D"):
        remote_rate(session, on, params.warmup_jobs, params.window, params.step_timeout)
    local_rate(params.warmup_jobs, params.window, base, params.step_timeout)
    rates: dict[str, list[float]] = {"local": [], "B": [], "D": []}
    for _ in range(params.rounds):          # interleaved, so a busy moment hits all alike
        rates["local"].append(local_rate(params.jobs, params.window, base, params.step_timeout))
        for on in ("B", "D"):
            rates[on].append(remote_rate(session, on, params.jobs, params.window,
                                         params.step_timeout))
    local, one_hop, three_hops = max(rates["local"]), max(rates["B"]), max(rates["D"])
    results.add(Figure("remote `true` jobs, 1 hop (A->B)", one_hop, "jobs/s", local,
                       "local spawn", ">= 150 jobs/s", one_hop >= 150))
    results.add(Figure("remote `true` jobs, 3 hops (A->D)", three_hops, "jobs/s", local,
                       "local spawn"))
    results.details["job rates, every round (jobs/s)"] = ", ".join(
        f"{name}: {' '.join(f'{r:.0f}' for r in values)}" for name, values in rates.items())


def measure_transfer(params: Params, results: Results, session: Session, base: Path,
                     servers_dir: Path, group: Processes, servers: list[Server]) -> None:
    size = params.file_mib * MIB
    rounds = max(params.rounds, params.transfer_rounds)
    console.print(f"transfer: {params.file_mib} MiB through A-B-C-D, {rounds} rounds of "
                  f"{params.raw_repeats} files each")
    # The ceiling for any relay: the same path (a sender, three processes that
    # only move bytes, a receiver that writes and verifies what it gets, as D
    # does), with nothing parsed, framed or scheduled on the way.
    with socket.socket() as sink:
        sink.bind((LOOPBACK, 0))
        sink.listen(1)
        entry = start_forwarders(group, 3, sink.getsockname()[1],
                                 time.monotonic() + params.setup_timeout, "transfer")
        forwarders = [proc.pid for proc in group.procs[-3:]]
        times: dict[str, list[float]] = {"raw": [], "file": [], "chain": [], "mesh": []}
        cpu: list[list[float]] = []             # each server's CPU seconds, in a round's best try
        chain_cpu: list[list[float]] = []       # each forwarder's, likewise
        for round_ in range(rounds):
            # Fresh random bytes for every try (no server has them): the mesh
            # keeps what it receives, and a file it has is not sent again.
            repeats = range(params.raw_repeats)
            paths = [base / f"bulk{round_}-{k}.bin" for k in repeats]
            for path in paths:
                random_file(path, size)
            shas = [hash_file(path)[0] for path in paths]
            # Received copies are kept until the step ends, as the mesh keeps what
            # it receives: a new file costs more to write than one over freed pages.
            copies = (servers_dir / f"raw-copy-{round_}-{i}.bin" for i in itertools.count())
            times["raw"].append(min(raw_copy(paths[0]) for _ in repeats))
            times["file"].append(min(raw_copy(paths[0], next(copies)) for _ in repeats))
            # The forwarders and the mesh each get one try per file, back to
            # back, the order alternating, each try writing into memory just
            # freed (``settle_memory``: otherwise a pair's second writer may
            # meet memory ten times slower to write than the first did); the
            # best try of each counts for the round.
            tries: dict[str, list[tuple[float, list[float]]]] = {"chain": [], "mesh": []}
            for k, (path, sha) in enumerate(zip(paths, shas)):
                for which in (("chain", "mesh") if (round_ + k) % 2 == 0 else ("mesh", "chain")):
                    settle_memory(servers_dir, 2 * size)
                    if which == "chain":
                        before = [cpu_seconds(pid) for pid in forwarders]
                        took = raw_copy(path, next(copies), sha=sha, via=(sink, entry))
                        pids = forwarders
                    else:
                        before = [cpu_seconds(s.proc.pid) for s in servers]
                        start, end = mesh_transfer(session, "D", path.name, params.step_timeout)
                        took = end - start
                        pids = [s.proc.pid for s in servers]
                    tries[which].append((took, [round(cpu_seconds(pid) - b, 3)
                                                for pid, b in zip(pids, before)]))
            best = {key: min(values) for key, values in tries.items()}
            times["chain"].append(best["chain"][0])
            chain_cpu.append(best["chain"][1])
            times["mesh"].append(best["mesh"][0])
            cpu.append(best["mesh"][1])
            for path in paths:
                path.unlink()
    for copy in servers_dir.glob("raw-copy-*.bin"):
        copy.unlink()
    rate = {key: size / min(values) / MB for key, values in times.items()}
    raw_floor = ">= 30% of raw"
    results.add(Figure(f"file transfer, 3 hops ({params.file_mib} MiB)", rate["mesh"], "MB/s",
                       rate["file"], "raw loopback copy into a file", raw_floor,
                       rate["mesh"] >= 0.3 * rate["file"]))
    results.add(Figure("file transfer vs a copy that writes nothing", rate["mesh"], "MB/s",
                       rate["raw"], "raw loopback copy, memory only"))
    results.add(Figure("file transfer vs the same path of byte forwarders", rate["mesh"], "MB/s",
                       rate["chain"], "3 forwarders, receiver writes + hashes"))
    results.add(Figure("ceiling: 3 byte forwarders, receiver writes + hashes", rate["chain"],
                       "MB/s", rate["file"], "raw loopback copy into a file", raw_floor,
                       rate["chain"] >= 0.3 * rate["file"]))
    # Each round's transfer against the same round's forwarders (they ran
    # back to back, their order alternating): a write into memory the system
    # has not touched for a while costs up to ten times one into memory just
    # freed, so the best of each, above, may pair one's lucky round with the
    # other's ordinary ones.
    paired = [chain / mesh for mesh, chain in zip(times["mesh"], times["chain"])]
    same_round = statistics.median(paired)
    results.add(Figure("file transfer vs byte forwarders, same round (median)",
                       same_round, "x", None, "", ">= 0.7 of forwarders", same_round >= 0.7))
    results.details["file transfer / forwarders, each round"] = " ".join(
        f"{r:.2f}" for r in paired)
    results.details["file transfer, CPU s of A B C D in each"] = "; ".join(
        " ".join(f"{x:.2f}" for x in row) for row in cpu)
    results.details["byte forwarders, CPU s of each in each"] = "; ".join(
        " ".join(f"{x:.2f}" for x in row) for row in chain_cpu)
    results.details["file transfer, every round (s)"] = "; ".join(
        f"{label} {' '.join(f'{t:.4f}' for t in times[key])}"
        for key, label in (("mesh", "mesh"), ("chain", "3 forwarders"),
                           ("file", "raw into a file"), ("raw", "raw in memory")))


def measure_chat(params: Params, results: Results, session: Session, probe: ChatProbe,
                 base: Path) -> None:
    console.print(f"chat: {params.idle_rounds} idle round trips, then during a transfer")
    idle = probe.idle(params.idle_rounds, params.step_timeout)
    size = params.file_mib * MIB
    path = base / "bulk-chat.bin"
    random_file(path, size)
    with probe.running(params.step_timeout) as samples:
        time.sleep(0.1)                   # the ping-pong is under way before the file moves
        start, end = mesh_transfer(session, "D", path.name, params.step_timeout)
    path.unlink()
    busy = [rtt for at, rtt in samples if start <= at and at + rtt <= end]
    if not busy:
        raise BenchError("no chat round trip completed during the transfer")
    idle_p50, busy_p50 = percentile(idle, 50) * 1e3, percentile(busy, 50) * 1e3
    idle_p99, busy_p99 = percentile(idle, 99) * 1e3, percentile(busy, 99) * 1e3
    results.add(Figure("chat round trip p50 during transfer", busy_p50, "ms", idle_p50,
                       "idle p50", "p50 < 5 ms", busy_p50 < 5.0))
    results.add(Figure("chat round trip p99 during transfer", busy_p99, "ms", idle_p99,
                       "idle p99"))
    results.details.update({
        "transfer with chat ping-pong":
            f"{end - start:.3f} s ({size / (end - start) / MB:.0f} MB/s)",
        "chat round trips": f"{len(idle)} idle (max {max(idle) * 1e3:.2f} ms), "
                            f"{len(busy)} during the transfer (p90 {percentile(busy, 90) * 1e3:.2f}"
                            f" ms, max {max(busy) * 1e3:.2f} ms)",
    })


@dataclass
class BuildRound:
    make_seconds: float
    wide_seconds: float
    mesh_seconds: float
    wire: int
    project: Project
    reporter: QuietReporter


def step_build(params: Params, results: Results, tmp: Path, logdir: Path) -> None:
    """Measurement 4: the same project through a three-server mesh and with make -j2
    (and, for reference, with make running as many compilers at once as the mesh)."""
    names = ["b1", "b2", "b3"]
    mesh_slots = len(names) * (os.cpu_count() or 1)      # the servers' default slots
    rounds: list[BuildRound] = []
    with Processes(logdir) as group:
        console.print(f"build: {params.c_files} C files, {params.headers} shared headers; "
                      f"servers b1-b2-b3 (default slots), client on b2; best of {params.rounds}")
        servers = start_servers(group, names, [None, 0, 1], tmp / "build-servers",
                                params.setup_timeout)
        session = Session(servers[1], "builder", tmp, params.setup_timeout)
        try:
            wait_job_servers(session, names, params.setup_timeout)
            for round_ in range(params.rounds):
                # Every round builds different files: nothing is cached from the last one.
                base = tmp / "build" if round_ == 0 else tmp / f"build-{round_ + 1}"
                source = generate_project(base / "source", params.c_files, params.headers,
                                          variant=round_)
                local = copy_project(source, base / "local")
                wide = copy_project(source, base / "local-wide")
                meshed = copy_project(source, base / "mesh")
                # Warm the compiler's own files in the page cache for all builds alike.
                run_bounded(["cc", "-O2", "-fsyntax-only", "main.c"], source.root,
                            params.step_timeout)
                make_seconds = local_make(local, 2, params.step_timeout)
                wide_seconds = local_make(wide, mesh_slots, params.step_timeout)
                before = link_bytes(servers) + session.bytes_out
                mesh_seconds, reporter = mesh_build(session, meshed, params.step_timeout)
                wire = link_bytes(servers) + session.bytes_out - before
                expected, got = program_output(local, 10), program_output(meshed, 10)
                if expected != got:
                    raise BenchError(f"the mesh-built program printed {got!r}, "
                                     f"make's printed {expected!r}")
                rounds.append(BuildRound(make_seconds, wide_seconds, mesh_seconds, wire,
                                         meshed, reporter))
        finally:
            session.close()
    best = min(rounds, key=lambda r: r.mesh_seconds)
    make_seconds = min(r.make_seconds for r in rounds)
    wide_seconds = min(r.wide_seconds for r in rounds)
    source_bytes, object_bytes = project_bytes(best.project)
    total = source_bytes + object_bytes
    edges = [("b1", "b2"), ("b2", "b3"), ("client", "b2")]
    files = placement_bytes(best.project, best.reporter.placement, edges)
    results.add(Figure(f"build of {params.c_files} C files, wall time", best.mesh_seconds, "s",
                       make_seconds, "make -j2", "<= 1.3x make",
                       best.mesh_seconds <= 1.3 * make_seconds))
    results.add(Figure("build, same, against make at the mesh's concurrency",
                       best.mesh_seconds, "s", wide_seconds, f"make -j{mesh_slots}"))
    results.add(Figure("build, bytes on the wire", best.wire / 1e3, "kB", total / 1e3,
                       "source + objects", "<= 1.5x", best.wire <= 1.5 * total))
    results.add(Figure("build, file bytes this placement needs", files / 1e3, "kB",
                       total / 1e3, "source + objects"))
    per_server: dict[str, int] = {}
    for server in best.reporter.placement.values():
        per_server[server] = per_server.get(server, 0) + 1
    results.details.update({
        "build, every round (s)": "; ".join(
            f"mesh {r.mesh_seconds:.2f}, make -j2 {r.make_seconds:.2f}, "
            f"make -j{mesh_slots} {r.wide_seconds:.2f}" for r in rounds),
        "build: actions per server": ", ".join(f"{k}: {v}" for k, v in sorted(per_server.items())),
        "build: link step ran on": best.reporter.placement[best.project.actions()[-1][0]],
        "build: project bytes": f"{source_bytes:,} source (.c, .h) + {object_bytes:,} objects "
                                f"(.o, program)",
        "build: wire bytes": f"{best.wire:,} on the links, for {files:,} bytes of file "
                             f"contents this placement has to move (chunks that compress travel "
                             f"deflated) plus frames, requests and reports",
        "build: program output": program_output(best.project, 10),
    })


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy since boot."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def own_cpu() -> float:
    """CPU seconds of this process and every child it has waited for (and theirs)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), \
        resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def run(params: Params, quick: bool, keep: Path | None, only: set[str]) -> Results:
    results = Results(asdict(params) | {"quick": quick})
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise BenchError(f"--keep {keep}: the directory is not empty")
    tmp = Path(tempfile.mkdtemp(prefix="crc-bench-jobs-")) if keep is None else keep
    tmp.mkdir(parents=True, exist_ok=True)
    logdir = tmp / "logs"
    logdir.mkdir(exist_ok=True)
    try:
        if only & {"rates", "transfer", "chat"}:
            step_chain(params, results, tmp, logdir, only)
        if "build" in only:
            step_build(params, results, tmp, logdir)
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            for name in ("client", "servers", "build-servers"):
                shutil.rmtree(tmp / name, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a sanity run")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR and keep the generated projects and logs there")
    parser.add_argument("--only", metavar="STEPS", default=",".join(STEPS),
                        help=f"comma-separated steps to run, of: {', '.join(STEPS)} (default: all)")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else Params()
    only = {step.strip() for step in args.only.split(",") if step.strip()}
    if not only or only - set(STEPS):
        parser.error(f"--only: unknown step(s) {', '.join(sorted(only - set(STEPS))) or '(none)'}; "
                     f"choose from {', '.join(STEPS)}")

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    console.print(f"bench/jobs.py on {platform.node()}: Python {platform.python_version()}, "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
                  f"{' (quick)' if args.quick else ''}")
    start, machine_start, own_start = time.monotonic(), machine_cpu(), own_cpu()
    try:
        results = run(params, args.quick, args.keep, only)
    except BenchError as exc:
        console.print(f"[bold red]benchmark failed:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        return 130
    wall = time.monotonic() - start
    others = max(0.0, machine_cpu() - machine_start - (own_cpu() - own_start))
    results.details["total time"] = f"{wall:.1f} s"
    results.details["CPU used by other processes meanwhile"] = (
        f"{others:.1f} s ({others / (wall * (os.cpu_count() or 1)):.0%} of the machine)")
    console.print(results_table(results))
    console.print(details_table(results.details))
    if args.json:
        args.json.write_text(json.dumps({"params": results.params,
                                         "figures": [asdict(f) | {"ratio": f.ratio}
                                                     for f in results.figures],
                                         "details": results.details}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
