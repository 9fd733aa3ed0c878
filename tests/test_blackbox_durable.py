"""Faults with real server processes: ``kill -9`` of a server mid-build (of
another server, and of the build client's own), and of the server a client is
attached to mid-job. Builds finish right, nothing finished runs twice, and
nothing a killed server started survives it."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil

from crc.client import ChatClient, ClientConfig
from crc.client.jobs.engine import Job, JobClient

from .meshkit import call, wait_for
from .test_blackbox import CLIENT, DEADLINE, Processes, Server
from .test_blackbox_jobs import wait_all_schedulable

def options(tmp: Path, name: str) -> tuple[str, ...]:
    """Two slots each; job directories under ``tmp/NAME``, so a job's working
    directory says which server ran it."""
    return ("--slots", "2", "--work-dir", str(tmp / name))


def gone(pid: int) -> bool:
    """Exited (a zombie nobody has reaped yet counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def descendants(server: Server) -> list[psutil.Process]:
    try:
        return psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def running_actions(server: Server) -> set[int]:
    """Numbers of the build actions (``part N``) running on ``server`` now."""
    found = set()
    for proc in descendants(server):
        try:
            words = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        found.update(i for i in range(1, 7) if f"part{i}.txt" in words)
    return found


def slow_build(project: Path, count: Path) -> None:
    """Six two-second remote actions, each noting where it starts, then a
    local one joining what they made."""
    actions = "".join(f"\tremote-sh -c 'echo {i} $(pwd) >> {count}; sleep 2; echo part {i} > "
                      f"part{i}.txt; echo built {i}'\n" for i in range(1, 7))
    parts = " ".join(f"part{i}.txt" for i in range(1, 7))
    (project / "Rakefile").write_text(f"compile:\n{actions}join:\n\tcat {parts} > all.txt\n")


def executions(count: Path, tmp: Path) -> list[tuple[int, str]]:
    """(action, server) of every start of an action."""
    runs = []
    for line in count.read_text().splitlines():
        number, _, where = line.partition(" ")
        if where.startswith(str(tmp)):          # (a line being written is skipped)
            runs.append((int(number), Path(where).relative_to(tmp).parts[0]))
    return runs


def check_build(build: subprocess.Popen, project: Path, count: Path, victim: Server,
                tmp: Path) -> float:
    """Kill ``victim`` while actions run there. The build succeeds with every
    part right; the actions interrupted there ran again elsewhere, once; every
    other action ran once; nothing the killed server started is left.
    Returns the seconds the build took after the kill."""
    def busy_there() -> set[int]:
        """Actions that have started on the victim (noted it) and still run."""
        running = running_actions(victim)
        if not count.exists():
            return set()
        return running & {n for n, server in executions(count, tmp) if server == victim.name}

    wait_for(busy_there, DEADLINE, f"actions to run on {victim.name}")
    victims = descendants(victim)
    killed = busy_there()
    killed_at = time.monotonic()
    os.kill(victim.proc.pid, signal.SIGKILL)
    out, err = build.communicate(timeout=DEADLINE * 2)
    finished_in = time.monotonic() - killed_at
    assert build.returncode == 0, out + err
    assert (project / "all.txt").read_text() == "".join(f"part {i}\n" for i in range(1, 7))
    runs = executions(count, tmp)
    for i in range(1, 7):
        there = sum(1 for n, server in runs if n == i and server == victim.name)
        elsewhere = sum(1 for n, server in runs if n == i and server != victim.name)
        if i in killed:                 # interrupted: run again, once, elsewhere
            assert (there, elsewhere) == (1, 1), (i, runs, out + err)
        elif there:                     # ran there and may have ended before the kill
            assert there == 1 and elsewhere <= 1, (i, runs, out + err)
        else:
            assert elsewhere == 1, (i, runs, out + err)
    assert "left the mesh while running the job; retrying on another server" in out + err
    # Not the jobs' shells, not what they started, not the reaper.
    pids = [p.pid for p in victims]
    wait_for(lambda: all(gone(pid) for pid in pids), 10,
             f"every process {victim.name} started ({pids}) to be gone")
    return finished_in


def star(procs: Processes, tmp_path: Path) -> tuple[Server, Server, Server]:
    """alpha, with beta and gamma hanging off it: losing beta or gamma leaves
    the other two linked."""
    alpha = Server(procs, tmp_path, 1, "alpha", options=options(tmp_path, "alpha"))
    beta = Server(procs, tmp_path, 2, "beta", connect=alpha.port,
                  options=options(tmp_path, "beta"))
    gamma = Server(procs, tmp_path, 3, "gamma", connect=alpha.port,
                   options=options(tmp_path, "gamma"))
    return alpha, beta, gamma


def slow_build_on_a_star(procs: Processes, tmp_path: Path, client_first: int
                         ) -> tuple[list[Server], Path, Path]:
    """The star, the slow build's project and its count file, once every
    server (the client's own, ``star()[client_first]``, first) runs jobs."""
    servers = list(star(procs, tmp_path))
    project, count = tmp_path / "project", tmp_path / "count"
    project.mkdir()
    order = [servers[client_first]] + [s for s in servers if s is not servers[client_first]]
    wait_all_schedulable(procs, order, project)
    slow_build(project, count)
    return servers, project, count


def test_kill_9_of_a_server_mid_build_the_build_finishes_and_its_jobs_die(
        procs: Processes, tmp_path: Path) -> None:
    (alpha, beta, _), project, count = slow_build_on_a_star(procs, tmp_path, 0)
    # Six actions over three servers with two slots each: some on beta.
    build = procs.start([CLIENT, "--server", alpha.address, "rake"], cwd=project,
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    took = check_build(build, project, count, beta, tmp_path)
    print(f"build finished {took:.2f} s after beta was killed")


def test_kill_9_of_the_clients_own_server_mid_build_it_reconnects_and_finishes(
        procs: Processes, tmp_path: Path) -> None:
    (alpha, _, gamma), project, count = slow_build_on_a_star(procs, tmp_path, 2)
    # The client is on gamma and falls back on alpha.
    build = procs.start([CLIENT, "--server", f"{gamma.address},{alpha.address}", "rake"],
                        cwd=project, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
    wait_for(lambda: running_actions(gamma) and running_actions(alpha), DEADLINE,
             "actions to run on gamma and alpha")
    took = check_build(build, project, count, gamma, tmp_path)
    print(f"build finished {took:.2f} s after the client's server was killed")


class Listener:
    def __init__(self) -> None:
        self.out = bytearray()
        self.events: list[str] = []

    def __call__(self, job: Job, run, event: str, data: object) -> None:
        self.events.append(event)
        if event == "output" and data[0] == 1:
            self.out += data[1]


def test_kill_9_of_the_clients_server_mid_job_the_result_arrives_once_after_reconnecting(
        procs: Processes, tmp_path: Path) -> None:
    alpha = Server(procs, tmp_path, 1, "alpha")
    beta = Server(procs, tmp_path, 2, "beta", connect=alpha.port)
    gamma = Server(procs, tmp_path, 3, "gamma", connect=alpha.port)
    work = tmp_path / "work"
    work.mkdir()
    wait_all_schedulable(procs, [beta, alpha, gamma], work)
    count = tmp_path / "count"
    # The client is on beta, with gamma to fall back on.
    client = ChatClient(ClientConfig(("127.0.0.1", beta.port), "alice", reconnect=True,
                                     reconnect_delay=0.1,
                                     servers=(("127.0.0.1", gamma.port),)))
    jobs = JobClient(client, work)
    client.start()
    thread = threading.Thread(target=client.loop.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: client.ext, DEADLINE, "the client's handshake")
        listener = Listener()
        lines = 30
        shell = (f"echo ran >> {count}; i=0; while [ $i -lt {lines} ]; do i=$((i+1)); "
                 f"echo line $i; sleep 0.1; done; echo result > result.txt")
        job = call(client.loop, lambda: jobs.submit(shell=shell, on="alpha", listener=listener))
        wait_for(lambda: b"line 3\n" in listener.out, DEADLINE, "the job's first lines")
        os.kill(beta.proc.pid, signal.SIGKILL)
        wait_for(lambda: job.finished, DEADLINE, "the job to finish after the reconnect")
        (run,) = job.runs.values()
        assert (run.state, run.exit, run.error) == ("done", 0, "")
        assert client.server_address == ("127.0.0.1", gamma.port)
        assert bytes(listener.out) == "".join(f"line {i}\n" for i in range(1, lines + 1)).encode()
        assert count.read_text() == "ran\n"
        assert (work / "result.txt").read_text() == "result\n"
        assert "waiting" in listener.events
    finally:
        client.config.reconnect = False
        client.loop.call_soon_threadsafe(client.loop.stop)
        thread.join(10)
        client.close()

