"""Jobs as a user runs them: real server processes, `chat_client.py` batch mode
and job commands in a script."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .test_blackbox import CLIENT, DEADLINE, ROOT, Processes, Server


@pytest.fixture
def mesh(procs: Processes, tmp_path: Path) -> list[Server]:
    first = Server(procs, tmp_path, 1, "alpha")
    second = Server(procs, tmp_path, 2, "beta", connect=first.port)
    third = Server(procs, tmp_path, 3, "gamma", connect=second.port)
    return [first, second, third]


def batch(procs: Processes, server: Server, cwd: Path, *words: str,
          stdin: str = "") -> subprocess.CompletedProcess:
    proc = procs.start([CLIENT, "--server", server.address, *words], cwd=cwd,
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(stdin, timeout=DEADLINE * 2)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_all_schedulable(procs: Processes, mesh: list[Server], cwd: Path) -> None:
    """`runall` answers from every server once load reports have spread."""
    result = None
    for _ in range(50):
        result = batch(procs, mesh[0], cwd, "runall", "--", "true")
        if result.returncode == 0 and all(s.name in result.stdout for s in mesh):
            return
    raise AssertionError(f"not every server became schedulable: {result}")


def test_run_keeps_arguments_intact_and_returns_the_exit_status(
        procs: Processes, mesh: list[Server], tmp_path: Path) -> None:
    args = ["a b", "'single'", '"double"', "héllo «wörld»", "$HOME"]
    result = batch(procs, mesh[0], tmp_path, "run", "--", "python3", "-c",
                   "import sys; print(sys.argv[1:]); sys.exit(5)", *args)
    assert result.returncode == 5, result.stderr
    assert result.stdout.strip() == repr(args)


def test_run_ships_files_and_brings_results_back(
        procs: Processes, mesh: list[Server], tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("one\ntwo\n")
    result = batch(procs, mesh[0], tmp_path, "run", "--on", "gamma", "--file", "data.txt", "--",
                   "sh", "-c", "wc -l < data.txt > count.txt; printf '#!/bin/sh\\n' > tool; "
                   "chmod +x tool")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "count.txt").read_text().strip() == "2"
    assert os.access(tmp_path / "tool", os.X_OK)


def test_run_forwards_standard_input(
        procs: Processes, mesh: list[Server], tmp_path: Path) -> None:
    result = batch(procs, mesh[2], tmp_path, "run", "-i", "--", "tr", "a-z", "A-Z",
                   stdin="piped text\n")
    assert (result.returncode, result.stdout) == (0, "PIPED TEXT\n"), result.stderr


def test_runall_prefixes_lines_and_summarises_exit_codes(
        procs: Processes, mesh: list[Server], tmp_path: Path) -> None:
    wait_all_schedulable(procs, mesh, tmp_path)
    result = batch(procs, mesh[1], tmp_path, "runall", "--", "sh", "-c", "echo line; exit 0")
    assert result.returncode == 0, result.stderr
    for server in mesh:
        assert f"[{server.name}] line" in result.stdout.splitlines()
    failing = batch(procs, mesh[1], tmp_path, "runall", "--", "false")
    assert failing.returncode == 1


def test_rake_builds_the_example_and_the_binary_runs(
        procs: Processes, mesh: list[Server], tmp_path: Path) -> None:
    project = tmp_path / "cproject"
    shutil.copytree(ROOT / "examples" / "cproject", project,
                    ignore=shutil.ignore_patterns("*.o", "program"))
    wait_all_schedulable(procs, mesh, tmp_path)
    result = batch(procs, mesh[0], project, "rake")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[run#1] square     144" in result.stdout.splitlines()
    servers = {line.rsplit("-> ", 1)[1] for line in result.stderr.splitlines()
               if "remote-cc" in line and "-> " in line}
    assert len(servers) >= 2, f"compiles did not spread: {servers}"
    binary = subprocess.run([str(project / "program"), "3"], capture_output=True, text=True,
                            timeout=DEADLINE)
    assert binary.stdout.split() == ["square", "9", "cube", "27", "sum_to", "6"]


def test_a_failing_actionset_stops_the_build_and_names_the_action(
        procs: Processes, mesh: list[Server], tmp_path: Path) -> None:
    (tmp_path / "Rakefile").write_text(
        "first:\n\tremote-sh -c 'echo about to fail; exit 3'\n\techo fine\n"
        "second:\n\ttouch should-not-exist\n")
    result = batch(procs, mesh[0], tmp_path, "rake")
    assert result.returncode != 0
    assert "first#1" in result.stderr and "exit status 3" in result.stderr
    assert not (tmp_path / "should-not-exist").exists()


def test_a_rakefile_syntax_error_is_reported_before_anything_runs(
        procs: Processes, mesh: list[Server], tmp_path: Path) -> None:
    (tmp_path / "Rakefile").write_text("set:\n\ttouch ran\n\tremote-cc -c x.c\n\t\trequires x.c\n"
                                       "FOO = bar\n")
    result = batch(procs, mesh[0], tmp_path, "rake")
    assert result.returncode == 2
    assert "Rakefile:5: unknown setting 'FOO'" in result.stderr
    assert not (tmp_path / "ran").exists()
    # Once the syntax is sound, a missing required file is caught the same way.
    (tmp_path / "Rakefile").write_text("set:\n\ttouch ran\n\tremote-cc -c x.c\n\t\trequires x.c\n")
    result = batch(procs, mesh[0], tmp_path, "rake")
    assert result.returncode == 2
    assert "Rakefile:3: required file 'x.c' does not exist" in result.stderr
    assert not (tmp_path / "ran").exists()


def test_job_commands_in_a_chat_script(
        procs: Processes, mesh: list[Server], tmp_path: Path) -> None:
    wait_all_schedulable(procs, mesh, tmp_path)
    script = "/run --on beta echo from beta\n/runall echo everywhere\n/jobs\n/load\n"
    proc = procs.start([CLIENT, "--server", mesh[0].address, "--name", "scripter"], cwd=tmp_path,
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(script, timeout=DEADLINE)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert any(line.endswith("@beta] from beta") for line in lines)
    assert sum(line.endswith("] everywhere") for line in lines) == 3
    assert "Server load" in out and all(s.name in out for s in mesh)


def test_rake_jobs_limit_bounds_the_remote_actions_in_flight(
        procs: Processes, mesh: list[Server], tmp_path: Path) -> None:
    """``rake -j N`` as ``make -j N``: never more than N remote actions at
    once (the servers' six slots would take all six), and all of them run."""
    log = tmp_path / "in-flight.log"
    step = f"remote-sh -c 'echo begin >> {log}; sleep 0.2; echo end >> {log}'\n"
    (tmp_path / "Rakefile").write_text("set:\n" + "".join("\t" + step for _ in range(6)))
    for limit in (1, 2):
        log.write_text("")
        result = batch(procs, mesh[0], tmp_path, "rake", "-j", str(limit))
        assert result.returncode == 0, result.stderr
        lines = log.read_text().split()
        assert lines.count("begin") == lines.count("end") == 6
        running = peak = 0
        for line in lines:
            running += 1 if line == "begin" else -1
            peak = max(peak, running)
        assert 1 <= peak <= limit, lines
    result = batch(procs, mesh[0], tmp_path, "rake", "-j", "0")
    assert result.returncode == 2 and "at least one job" in result.stderr
