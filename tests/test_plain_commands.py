"""Shell commands that need no shell run without one (``crc.jobs.plain``),
and a job cannot tell: the same output, status and messages as under
``/bin/sh -c``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from crc.jobs.plain import plain_words, shell_environment, shell_variables
from crc.server.jobs import executor

from .meshkit import Mesh
from .test_jobs import finished, submit


@pytest.mark.parametrize("command, words", [
    ("cc -O2 -c main.c -o main.o", ["cc", "-O2", "-c", "main.c", "-o", "main.o"]),
    ("  gcc\t-DX=1 -Iinc,x:y@z+%w -c a.c  ", ["gcc", "-DX=1", "-Iinc,x:y@z+%w", "-c", "a.c"]),
    ("./configure --prefix=/usr", ["./configure", "--prefix=/usr"]),
    ("/usr/bin/env", ["/usr/bin/env"]),
    ("sleep 1", ["sleep", "1"]),
])
def test_plain_lines_are_their_words(command: str, words: list[str]) -> None:
    assert plain_words(command) == words


@pytest.mark.parametrize("command", [
    "", "   ", "cc -c 'a b.c'", 'cc -c "a.c"', "cc -c $SRC", "cc -c `x`", "cc -c a\\ b.c",
    "cc -c *.c", "cc -c a?.c", "cc -c [ab].c", "cc -c ~/a.c", "cc -c a.c # note",
    "cc -c a.c; true", "cc -c a.c && true", "cc -c a.c | cat", "cc -c a.c > log",
    "cc -c a.c < in", "cc -c a.c &", "(cc -c a.c)", "cc -c {a,b}.c", "cc -c a.c\ncc -c b.c",
    "! cc -c a.c", "CFLAGS=-O2 cc -c a.c", "cd sub", "echo hi", "exit 3", "test -f a",
    "[ -f a ]", "true", "export X", "exec cc", "kill 1", "cc -c é.c", "cc -c a^b.c",
])
def test_lines_the_shell_gives_meaning_to_are_not_plain(command: str) -> None:
    assert plain_words(command) is None


def test_the_environment_is_what_the_shell_passes_on(tmp_path: Path) -> None:
    """Compared with dash itself: names that are not shell names dropped,
    IFS and OPTIND reset, PPID the parent's, PWD the physical directory
    (here reached through a symbolic link)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    environ = {"PATH": os.environ["PATH"], "FOO-BAR": "1", "A.B": "2", "1X": "3", "IFS": ":",
               "OPTIND": "5", "PPID": "7", "PWD": "/nowhere", "HOME": "/root", "X": "y z",
               "_": "/bin/x"}
    shown = subprocess.run(["/bin/sh", "-c", "env -0"], cwd=tmp_path / "link", env=environ,
                           capture_output=True, timeout=30, check=True).stdout
    under_sh = dict(line.split("=", 1) for line in shown.decode().split("\0") if line)
    under_sh.pop("_", None)         # (set by no shell here; env's own when it is)
    ours = shell_environment(shell_variables(environ, os.getpid()), str(tmp_path / "link"))
    ours.pop("_", None)
    assert ours == under_sh
    assert ours["PWD"] == str((tmp_path / "real").resolve())


def _stat_parent(output: bytes) -> int:
    """The parent pid in a ``/proc/self/stat`` line (after the ``(comm)``)."""
    return int(output.decode().rsplit(")", 1)[1].split()[1])


def test_a_plain_command_runs_without_a_shell_and_others_with_one(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(1)               # (the server runs in this process)
    client, jobs = mesh.client(nodes[0], "alice", work)
    plain, out_plain = submit(client, jobs, shell="cat /proc/self/stat")
    shelled, out_shelled = submit(client, jobs, shell="cat /proc/self/stat; true")
    finished(plain)
    finished(shelled)
    assert plain.exit_code == shelled.exit_code == 0
    assert _stat_parent(out_plain.output()) == os.getpid()
    assert _stat_parent(out_shelled.output()) != os.getpid()      # /bin/sh in between


def test_a_plain_command_sees_pwd_as_the_shell_would_export_it(mesh: Mesh, work: Path) -> None:
    nodes = mesh.chain(1)
    client, jobs = mesh.client(nodes[0], "alice", work)
    (work / "where.py").write_text(
        "import os\nprint(os.environ.get('PWD') == os.getcwd(), os.getcwd() != %r)\n"
        % os.getcwd())
    job, out = submit(client, jobs, shell="python3 where.py", files=["where.py"])
    finished(job)
    assert (job.exit_code, out.output()) == (0, b"True True\n")


def _under_sh(command: str, directory: Path) -> tuple[int, str]:
    done = subprocess.run(["/bin/sh", "-c", command], cwd=directory, capture_output=True,
                          text=True, timeout=30)
    return done.returncode, done.stderr


def _script(work: Path, name: str, text: str, mode: int = 0o755) -> None:
    (work / name).write_text(text)
    (work / name).chmod(mode)


@pytest.mark.parametrize("command, script, text, mode", [
    ("no-such-program-here a b", None, "", 0),                  # not found: 127
    ("./notexec", "notexec", "#!/bin/sh\necho ran\n", 0o644),    # not executable: 126
    ("./noshebang", "noshebang", "echo from-the-shell\nexit 4\n", 0o755),  # sh runs it
    ("./segv", "segv", "#!/bin/sh\nkill -SEGV $$\n", 0o755),     # 139, "Segmentation fault"
    ("./term", "term", "#!/bin/sh\nkill -TERM $$\n", 0o755),     # 143, "Terminated"
    ("./intr", "intr", "#!/bin/sh\nkill -INT $$\n", 0o755),      # 130, no line
])
def test_what_cannot_run_directly_or_dies_reads_as_under_the_shell(
        mesh: Mesh, work: Path, tmp_path: Path, command: str, script: str | None,
        text: str, mode: int) -> None:
    assert plain_words(command) is not None
    here = tmp_path / "here"
    here.mkdir()
    files = []
    if script is not None:
        _script(work, script, text, mode)
        _script(here, script, text, mode)
        files = [script]
    expected_code, expected_err = _under_sh(command, here)
    nodes = mesh.chain(1)
    client, jobs = mesh.client(nodes[0], "alice", work)
    job, out = submit(client, jobs, shell=command, files=files)
    finished(job)
    (run,) = job.runs.values()
    stdout = b"".join(d[1] for _, _, ev, d in out.events if ev == "output" and d[0] == 1)
    stderr = b"".join(d[1] for _, _, ev, d in out.events if ev == "output" and d[0] == 2)
    expected_out = b"from-the-shell\n" if script == "noshebang" else b""
    assert (run.exit, stderr.decode(), stdout) == (expected_code, expected_err, expected_out)
    assert run.error == ""


def test_a_start_that_fails_after_the_program_ran_is_not_run_again_by_the_shell(
        mesh: Mesh, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the program's own exec failure goes to /bin/sh: any other (no
    descriptor left, say, after the process started) must not run it twice."""
    starts: list[list[str]] = []

    def failing(loop, argv, *args, **kwargs):
        starts.append(list(argv))
        raise OSError(24, "Too many open files")       # (no file name: not the program's)
    monkeypatch.setattr(executor, "ChildProcess", failing)
    nodes = mesh.chain(1)
    client, jobs = mesh.client(nodes[0], "alice", work)
    job, _ = submit(client, jobs, shell="sleep 0.1")
    finished(job)
    (run,) = job.runs.values()
    assert run.error.startswith("cannot start:"), run.error
    assert starts == [["sleep", "0.1"]]
