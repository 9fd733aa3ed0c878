"""A server stopped on purpose under a build's action (a restart, ``SIGTERM``)
is nothing the action did: the client is told at once (``stopped``), and the
build runs the action again elsewhere without spending the one retry it
allows an action whose server died for no reason it knows. A rolling restart
may stop an action's server, then the server it was retried on: the build
still succeeds."""

from __future__ import annotations

import subprocess
from pathlib import Path

from crc.client.jobs.state import Job
from crc.jobs.wire import Kind

from .meshkit import Mesh, Node, call, wait_for
from .test_blackbox import CLIENT, DEADLINE, Processes, Server
from .test_blackbox_durable import executions, options
from .test_blackbox_jobs import wait_all_schedulable


def test_an_action_whose_servers_are_stopped_twice_under_it_still_finishes(
        procs: Processes, tmp_path: Path) -> None:
    # The client's own server, alpha, has one slot and it is taken: the
    # action goes to the others, and is retried among them.
    alpha = Server(procs, tmp_path, 1, "alpha", options=("--slots", "1", "--work-dir",
                                                          str(tmp_path / "alpha")))
    others = [Server(procs, tmp_path, 2 + i, name, connect=alpha.port,
                     options=options(tmp_path, name))
              for i, name in enumerate(("beta", "gamma", "delta"))]
    project, count = tmp_path / "project", tmp_path / "count"
    project.mkdir()
    wait_all_schedulable(procs, [alpha, *others], project)
    busy = procs.start([CLIENT, "--server", alpha.address, "run", "--on", "alpha", "--",
                        "sh", "-c", f"echo {tmp_path}/busy >> {count}; sleep 120"],
                       cwd=project, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    wait_for(lambda: count.exists() and "busy" in count.read_text(), DEADLINE,
             "alpha's slot to be taken")
    (project / "Rakefile").write_text(
        "compile:\n"
        f"\tremote-sh -c 'echo 1 $(pwd) >> {count}; sleep 6; echo built > out.txt'\n")
    build = procs.start([CLIENT, "--server", alpha.address, "rake"], cwd=project,
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    by_name = {s.name: s for s in others}
    stopped = []
    for attempt in (1, 2):
        runs = wait_for(lambda: len(executions(count, tmp_path)) >= attempt and
                        executions(count, tmp_path), DEADLINE, f"run {attempt} of the action")
        where = runs[attempt - 1][1]
        assert where in by_name, runs          # (never alpha: its slot is taken)
        assert by_name[where].terminate() == 0  # a clean stop, mid-action
        stopped.append(where)
    out, err = build.communicate(timeout=DEADLINE * 2)
    busy.kill()
    assert build.returncode == 0, out + err
    assert (project / "out.txt").read_text() == "built\n"
    runs = executions(count, tmp_path)
    assert len(runs) == 3 and runs[2][1] not in stopped, runs
    for name in stopped:
        assert f"server {name} stopped while running the job; retrying on another server" \
            in out + err, out + err


def running_on_s2(mesh: Mesh, work: Path) -> tuple[Node, Node, Job]:
    """Two in-process servers, s1 (a client's) and s2, and a long job of
    that client's running on s2."""
    entry, stopping = mesh.chain(2)
    client, jobs = mesh.client(entry, "alice", work)
    job = call(client.loop, lambda: jobs.submit(on="s2", shell="echo running; sleep 60"))
    wait_for(lambda: any(r.state == "running" for r in job.runs.values()), 10,
             "the job to start on s2")
    return entry, stopping, job


def test_a_server_stopped_on_purpose_is_out_of_the_placements_before_its_jobs_say_so(
        mesh: Mesh, work: Path) -> None:
    # A build sends a stopped action again the moment its FAILED arrives:
    # if the entry still placed jobs on the stopping server then, the new
    # run would land there and be lost when its links close (a loss the
    # build counts). So the stopping server's goodbye report comes first,
    # on the same links, and the entry has forgotten it by then.
    entry, stopping, job = running_on_s2(mesh, work)
    seen: list[bool] = []
    taps = entry.server.extension_taps
    tap = taps[Kind.FAILED]

    def watched(conn, msg):       # (on the entry's loop, as FAILED passes)
        seen.append(stopping.server.id in entry.jobs.reports.table.entries)
        return tap(conn, msg)
    call(entry.server.loop, lambda: taps.__setitem__(Kind.FAILED, watched))
    call(stopping.server.loop, stopping.server.stop)
    stopping.thread.join(10)
    wait_for(lambda: job.finished, 10, "the job's end")
    (run,) = job.runs.values()
    assert run.stopped and "s2 stopped while running the job" in run.error, run
    assert seen == [False], seen
    assert stopping.server.id not in call(entry.server.loop, lambda: {
        r.server for r in entry.jobs.eligible()})


def test_a_run_still_out_on_a_server_that_said_it_is_leaving_is_reported_stopped(
        mesh: Mesh, work: Path) -> None:
    # A run can reach a stopping server after its loop has stopped (placed
    # before its goodbye arrived): nothing ends it there, and its entry
    # learns of it only when the server's links drop. Having had the
    # goodbye, the entry says "stopped" (not counted against the retry).
    entry, stopping, job = running_on_s2(mesh, work)
    # The goodbye as the entry receives it, then the links drop with the
    # run unanswered (as when the RUN came in too late to be read).
    call(entry.server.loop, lambda: entry.jobs.entry.leaving.add(stopping.server.id))
    stopping.kill()
    wait_for(lambda: job.finished, 10, "the job's end")
    (run,) = job.runs.values()
    assert run.lost and run.stopped, run
    assert "s2 stopped while running the job" in run.error, run


def test_the_retry_rule_counts_only_losses_it_cannot_explain() -> None:
    """Of the losses of one action: one a server's death (or an unreachable
    server) is retried, a second is not — the action may be what killed
    them; a server stopped on purpose is not counted, up to MAX_ATTEMPTS runs."""
    from crc.client.jobs.build import MAX_ATTEMPTS, ActionRun, Build
    from crc.client.jobs.state import RunState
    died = RunState("r", state="failed", lost=True)
    stopped = RunState("r", state="failed", lost=True, stopped=True)

    run = ActionRun(action=None, actionset="compile", index=1, attempts=1)
    assert Build._retry(run, died)
    run.attempts += 1
    assert not Build._retry(run, died)

    run = ActionRun(action=None, actionset="compile", index=1, attempts=1)
    verdicts = []
    while len(verdicts) < MAX_ATTEMPTS + 2:
        verdicts.append(Build._retry(run, stopped))
        run.attempts += 1
    assert verdicts == [True] * (MAX_ATTEMPTS - 1) + [False] * 3
    run = ActionRun(action=None, actionset="compile", index=1, attempts=2, losses=0)
    assert Build._retry(run, died) and not Build._retry(run, died)   # stops, then deaths
