"""The edges a new user hits first: odd standard inputs, dead or frozen
servers in the address list, signals, oversized input, hostile text, bad
files and flags. Real processes throughout (``test_blackbox``'s machinery);
every wait has a deadline. docs/edges.md maps each input to its behaviour and
to the test here (or elsewhere) that holds it."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from .meshkit import wait_for
from .test_blackbox import CLIENT, DEADLINE, SERVER, Processes, Server, run_client


def dead_address() -> str:
    """A loopback address nobody listens on (bound, never listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def batch(procs: Processes, servers: str, cwd: Path, *words: str, stdin=subprocess.DEVNULL,
          timeout: float = DEADLINE * 2) -> subprocess.CompletedProcess:
    proc = procs.start([CLIENT, "--server", servers, *words], cwd=cwd, stdin=stdin,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def alpha(procs: Processes, tmp_path: Path) -> Server:
    return Server(procs, tmp_path, 1, "alpha")


# -- the address list ------------------------------------------------------------------

def test_batch_with_a_dead_first_server_runs_on_the_next(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    servers = f"{dead_address()},{alpha.address}"
    result = batch(procs, servers, tmp_path, "run", "--", "echo", "ran")
    assert (result.returncode, result.stdout) == (0, "ran\n"), result.stderr
    (tmp_path / "Rakefile").write_text("all:\n\tremote-echo built\n")
    built = batch(procs, servers, tmp_path, "rake")
    assert built.returncode == 0, built.stderr
    assert "built" in built.stdout


# -- standard input ----------------------------------------------------------------------

def test_run_reads_standard_input_from_a_regular_file_and_devices(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    data = bytes(range(256)) * 12_000 + b"tail without newline"        # about 3 MiB
    source = tmp_path / "input.bin"
    source.write_bytes(data)
    with source.open("rb") as f:
        counted = batch(procs, alpha.address, tmp_path, "run", "-i", "--", "sha256sum", stdin=f)
    assert counted.returncode == 0, counted.stderr
    assert counted.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    with open(os.devnull, "rb") as f:
        empty = batch(procs, alpha.address, tmp_path, "run", "-i", "--", "wc", "-c", stdin=f)
    assert (empty.returncode, empty.stdout.strip()) == (0, "0"), empty.stderr


def test_standard_input_in_flight_is_bounded_by_the_job_window(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    """An endless input to a job that reads only its first bytes: the client
    sends no more than the window beyond what the job took, so the server
    holds little, and the run ends when the job does."""
    server = psutil.Process(alpha.proc.pid)
    before = server.memory_info().rss
    with open("/dev/zero", "rb") as zero:
        proc = procs.start([CLIENT, "--server", alpha.address, "run", "-i", "--", "sh", "-c",
                            "head -c 1000 >/dev/null; sleep 2; echo finished"],
                           cwd=tmp_path, stdin=zero, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    peak = before
    while proc.poll() is None:
        peak = max(peak, server.memory_info().rss)
        try:
            proc.wait(0.05)
        except subprocess.TimeoutExpired:
            pass
    out, err = proc.communicate(timeout=DEADLINE)
    assert (proc.returncode, out) == (0, "finished\n"), err
    assert peak - before < 64 << 20, f"server grew by {(peak - before) >> 20} MiB"


# -- signals -------------------------------------------------------------------------------

def processes_running(argv: list[str]) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] == argv:
            found.append(proc)
    return found


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signalled_batch_run_cancels_its_remote_job(
        procs: Processes, alpha: Server, tmp_path: Path, sig: int, status: int) -> None:
    marker = ["sleep", f"{60 + sig}.25"]
    proc = procs.start([CLIENT, "--server", alpha.address, "run", "--", *marker], cwd=tmp_path,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: processes_running(marker), DEADLINE, "the remote job to start")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == status, err
    assert f"interrupted ({signal.Signals(sig).name})" in err
    wait_for(lambda: not processes_running(marker), DEADLINE, "the remote job to be cancelled")


def test_a_signalled_rake_stops_local_and_remote_actions(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    local, remote = ["sleep", "71.25"], ["sleep", "72.25"]
    (tmp_path / "Rakefile").write_text(
        f"both:\n\t{' '.join(local)}\n\tremote-{' '.join(remote)}\n")
    proc = procs.start([CLIENT, "--server", alpha.address, "rake"], cwd=tmp_path,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: processes_running(local) and processes_running(remote), DEADLINE,
             "both actions to start")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 143, err
    wait_for(lambda: not processes_running(local) and not processes_running(remote), DEADLINE,
             "both actions to be stopped")


def test_rake_timeout_applies_to_local_actions(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    (tmp_path / "Rakefile").write_text("slow:\n\tsleep 73.25\nnever:\n\techo never ran\n")
    result = batch(procs, alpha.address, tmp_path, "rake", "--timeout", "0.5")
    assert result.returncode == 1, result.stderr
    assert "timed out after 0.5 s" in result.stderr
    assert "never ran" not in result.stdout
    assert not processes_running(["sleep", "73.25"])


# -- oversized chats --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [(), ("--plain-chat",)], ids=["reliable", "plain-chat"])
def test_a_chat_longer_than_the_mesh_carries_is_refused_by_the_client(
        procs: Processes, tmp_path: Path, mode: tuple[str, ...]) -> None:
    small = Server(procs, tmp_path, 1, "small", options=("--max-frame", "65536"))
    script = f"/msg {'x' * 100_000}\n"
    result = run_client(procs, small, "alice", 101, "/wait alice 5\n" + script.replace(
        "/msg ", "/msg alice "), *mode)
    assert result.returncode == 3, result.stderr
    assert "cannot send that: the chat is 100000 bytes" in result.stderr
    assert "carries at most 65512 bytes" in result.stderr
    assert "[sent]" not in result.stdout
    joins = small.log.read_text().count("client alice (id 101) joined")
    assert joins == 1, "the client connected once, no reconnect storm"


# -- the job quota -----------------------------------------------------------------------------

def test_an_actionset_larger_than_the_job_quota_is_windowed_not_failed(
        procs: Processes, tmp_path: Path) -> None:
    """The entry server takes at most 6 unfinished runs from a client; a set
    of 60 actions is held back and sent as runs finish, as make -j does."""
    server = Server(procs, tmp_path, 1, "tight", options=("--max-jobs-per-client", "6",
                                                           "--slots", "3"))
    actions = "".join(f"\tremote-echo action {i}\n" for i in range(60))
    (tmp_path / "Rakefile").write_text(f"many:\n{actions}")
    result = batch(procs, server.address, tmp_path, "rake")
    assert result.returncode == 0, result.stderr
    assert "job quota" not in result.stderr
    for i in range(60):
        assert f"action {i}" in result.stdout


# -- leaving ---------------------------------------------------------------------------------

def test_quit_waits_for_undelivered_chats_and_names_them(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    result = run_client(procs, alpha, "alice", 101, "/msg 777 are you there?\n/quit bye\n"
                        "/msg 778 never read\n")
    assert result.returncode == 3, result.stderr
    assert "1 chat(s) to 777 undelivered" in result.stderr
    assert "778" not in result.stdout + result.stderr


@pytest.mark.parametrize("ending", ["", "/quit bye\n"], ids=["end-of-input", "quit"])
def test_a_script_whose_server_is_gone_ends_after_the_connect_timeout(
        procs: Processes, alpha: Server, tmp_path: Path, ending: str) -> None:
    out = tmp_path / "alice.out"
    with out.open("w") as stdout:
        proc = procs.start([CLIENT, "--server", alpha.address, "--name", "alice",
                            "--connect-timeout", "2"], stdin=subprocess.PIPE, stdout=stdout,
                           stderr=subprocess.PIPE)
    proc.stdin.write("/who\n")                # answered once the link is fully up
    proc.stdin.flush()
    wait_for(lambda: "(you)" in out.read_text(), DEADLINE, "alice's link to be up")
    alpha.proc.kill()
    alpha.proc.wait(DEADLINE)
    proc.stdin.write("/msg 5 lost with the server\n" + ending)
    proc.stdin.close()
    err = proc.stderr.read()
    assert proc.wait(DEADLINE) == 1, err
    assert "no server reachable within 2 s" in err


# -- peers that accept and never answer -------------------------------------------------------

@pytest.fixture
def frozen() -> Iterator[str]:
    """The address of a 'frozen' server: it listens (the kernel completes
    connections) and never reads or answers, like a stopped process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"127.0.0.1:{s.getsockname()[1]}"


def test_a_client_skips_a_server_that_never_answers(
        procs: Processes, alpha: Server, tmp_path: Path, frozen: str) -> None:
    proc = procs.start([CLIENT, "--server", f"{frozen},{alpha.address}", "--name", "alice",
                        "--connect-timeout", "4"], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate("/who\n", timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert out.startswith("[status] Welcome to the Clemson Relay Chat network alice"), out
    result = batch(procs, f"{frozen},{alpha.address}", tmp_path, "--connect-timeout", "4",
                   "run", "--", "echo", "ran")
    assert (result.returncode, result.stdout) == (0, "ran\n"), result.stderr


def test_a_server_joins_through_the_next_candidate_when_one_never_answers(
        procs: Processes, alpha: Server, tmp_path: Path, frozen: str) -> None:
    joiner = Server(procs, tmp_path, 2, "joiner",
                    options=("--connect", f"{frozen},{alpha.address}", "--join-timeout", "1"))
    wait_for(lambda: "joined the mesh through alpha" in joiner.log.read_text(), DEADLINE,
             "the joiner to give up on the frozen candidate and join alpha")
    assert "no answer within 1 s (--join-timeout)" in joiner.log.read_text()


def test_an_unresolvable_candidate_is_skipped_with_a_clear_line(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    joiner = Server(procs, tmp_path, 2, "joiner",
                    options=("--connect", f"nosuchhost.invalid:9,{alpha.address}"))
    wait_for(lambda: "joined the mesh through alpha" in joiner.log.read_text(), DEADLINE,
             "the joiner to join through its second candidate")
    alone = subprocess.run([sys.executable, SERVER, "--port", "0", "--connect",
                            "nosuchhost.invalid:9"], capture_output=True, text=True,
                           timeout=DEADLINE, stdin=subprocess.DEVNULL)
    assert alone.returncode == 2
    assert "cannot resolve 'nosuchhost.invalid'" in alone.stderr
    assert "Traceback" not in alone.stderr


# -- hostile text ---------------------------------------------------------------------------

def test_control_characters_from_other_users_are_shown_not_obeyed(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    evil_name = "mal\x1b[5mlory\nfake"
    evil_text = "\x1b]0;TITLE\x07hidden \x1b[31mred\r\u202egnp.exe"
    alice_out = tmp_path / "alice.out"
    with alice_out.open("w") as out:
        alice = procs.start([CLIENT, "--server", alpha.address, "--name", "alice", "--id", "101"],
                            stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE)
    wait_for(lambda: "[status] Welcome" in alice_out.read_text(), DEADLINE, "alice's welcome")
    mallory = run_client(procs, alpha, evil_name, 666,
                         f"/wait alice 10\n/msg alice {evil_text}\n/who\n")
    assert mallory.returncode == 0, mallory.stderr
    wait_for(lambda: "hidden" in alice_out.read_text(), DEADLINE, "the chat at alice")
    alice.stdin.write("/who\n")
    alice.stdin.close()
    assert alice.wait(DEADLINE) == 0
    shown = alice_out.read_text()
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown
    assert "\u202e" not in shown
    assert ("[chat] mal\\x1b[5mlory\\nfake(666): \\x1b]0;TITLE\\x07hidden \\x1b[31mred\\r"
            "\\u202egnp.exe") in shown.splitlines()
    assert "[join] mal\\x1b[5mlory\\nfake(666)" in shown.splitlines()
    # The server's log keeps one line per entry, whatever the name holds.
    log_lines = alpha.log.read_text().splitlines()
    joined = [line for line in log_lines if "(id 666) joined" in line]
    assert len(joined) == 1 and "mal\\x1b[5mlory\\nfake" in joined[0]
    assert not any(line.startswith("fake") for line in log_lines)


# -- servers that share a name --------------------------------------------------------------

def test_servers_sharing_a_name_are_told_apart_by_id(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    twin1 = Server(procs, tmp_path, 2, "twin", connect=alpha.port)
    twin2 = Server(procs, tmp_path, 3, "twin", connect=alpha.port)
    wait_for(lambda: "named 'twin' like server 2" in alpha.log.read_text(), DEADLINE,
             "alpha to warn about the second 'twin'")
    runall = None
    for _ in range(50):          # until load reports from all three have spread
        runall = batch(procs, alpha.address, tmp_path, "runall", "--", "echo", "here")
        if runall.returncode == 0 and runall.stdout.count("[twin(") >= 2:
            break
    assert runall is not None and runall.returncode == 0, runall.stderr
    assert "twin(2)" in runall.stdout and "twin(3)" in runall.stdout
    ambiguous = batch(procs, alpha.address, tmp_path, "run", "--on", "twin", "--", "true")
    assert ambiguous.returncode != 0
    assert "--on twin: 2 servers have that name (ids 2, 3)" in ambiguous.stderr
    chosen = batch(procs, alpha.address, tmp_path, "run", "--on", "3", "--", "true")
    assert chosen.returncode == 0, chosen.stderr
    assert twin1.proc.poll() is None and twin2.proc.poll() is None


# -- what the servers keep on disk -------------------------------------------------------------

def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_the_file_store_stays_within_store_max(procs: Processes, tmp_path: Path) -> None:
    work = tmp_path / "work"
    server = Server(procs, tmp_path, 1, "keeper", options=("--work-dir", str(work),
                                                           "--store-max", "3M"))
    for i in range(5):                 # 5 different 1 MiB results, each collected
        result = batch(procs, server.address, tmp_path, "run", "--", "sh", "-c",
                       f"head -c 1048576 /dev/urandom > out{i}")
        assert result.returncode == 0, result.stderr
        assert (tmp_path / f"out{i}").stat().st_size == 1 << 20
    wait_for(lambda: tree_size(work / "blobs") <= 3 << 20, DEADLINE,
             "the store to be trimmed to --store-max")
    assert "evicted" in server.log.read_text()


def test_a_produced_file_over_max_file_fails_the_job(
        procs: Processes, tmp_path: Path) -> None:
    server = Server(procs, tmp_path, 1, "strict", options=("--max-file", "1K"))
    result = batch(procs, server.address, tmp_path, "run", "--", "sh", "-c",
                   "head -c 5000 /dev/zero > big; echo made it")
    assert result.returncode == 1, result.stderr
    assert "produced file big is 5000 bytes, over the 1024 byte limit (--max-file)" \
        in result.stderr
    assert not (tmp_path / "big").exists()


def test_a_killed_servers_leftovers_go_at_the_next_start(
        procs: Processes, tmp_path: Path) -> None:
    temp = procs.tmpdir
    victim = Server(procs, tmp_path, 1, "victim")
    mine = [p for p in temp.iterdir() if p.name.startswith("crc-server-1-")]
    assert len(mine) == 1
    (mine[0] / "jobs" / "a-job").mkdir(parents=True)
    (mine[0] / "jobs" / "a-job" / "object.o").write_bytes(b"x" * 100_000)
    victim.proc.kill()
    victim.proc.wait(DEADLINE)
    work = tmp_path / "work"
    (work / "jobs" / "left-123").mkdir(parents=True)
    (work / "jobs" / "left-123" / "file").write_text("from a killed run")
    Server(procs, tmp_path, 2, "next", options=("--work-dir", str(work)))
    Server(procs, tmp_path, 3, "third")
    wait_for(lambda: not mine[0].exists(), DEADLINE, "the killed server's temporary directory "
             "to be removed")
    wait_for(lambda: not (work / "jobs" / "left-123").exists(), DEADLINE,
             "the job directory left in --work-dir to be removed")


def test_a_batch_run_acknowledges_its_result_before_it_leaves(
        procs: Processes, tmp_path: Path) -> None:
    """The executing server may forget a result once the client has it; a
    RESULT_ACK queued after the client's goodbye was never read, so every
    batch result stayed for --result-ttl (a day)."""
    server = Server(procs, tmp_path, 1, "forgetful", options=("--log-level", "DEBUG"))
    result = batch(procs, server.address, tmp_path, "run", "--", "sh", "-c", "echo x > made")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: "has the result of job" in server.log.read_text(), DEADLINE,
             "the server to hear that the client has the result")


def test_a_killed_clients_temporary_directory_goes_with_the_next_client(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    (tmp_path / "input").write_text("some input\n")
    proc = procs.start([CLIENT, "--server", alpha.address, "run", "--file", "input", "--",
                        "sleep", "74.25"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    wait_for(lambda: processes_running(["sleep", "74.25"]), DEADLINE, "the job to start")
    left = [p for p in procs.tmpdir.iterdir() if p.name.startswith("crc-client-")]
    assert len(left) == 1
    proc.kill()
    proc.wait(DEADLINE)
    assert left[0].exists()
    result = batch(procs, alpha.address, tmp_path, "run", "--", "true")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: not left[0].exists(), DEADLINE, "the killed client's directory to go")
    assert not list(tmp_path.glob(".*.crc-tmp"))


# -- bad input: clear errors, no tracebacks ------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "-5", "0", "inf", "soon"])
def test_a_timeout_that_is_not_a_positive_number_is_refused(
        procs: Processes, alpha: Server, tmp_path: Path, value: str) -> None:
    result = batch(procs, alpha.address, tmp_path, "run", "--timeout", value, "--", "true")
    assert result.returncode == 2
    assert "argument --timeout" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["--max-runtime", "--keepalive", "--load-interval"])
def test_server_seconds_must_be_positive_and_finite(tmp_path: Path, flag: str) -> None:
    for value in ("inf", "nan", "0"):
        result = subprocess.run([sys.executable, SERVER, "--port", "0", flag, value],
                                capture_output=True, text=True, timeout=DEADLINE,
                                stdin=subprocess.DEVNULL, cwd=tmp_path)
        assert result.returncode == 2, (flag, value, result.stderr)
        assert "Traceback" not in result.stderr


def rake_in(procs: Processes, alpha: Server, tmp_path: Path, content: bytes,
            *words: str) -> subprocess.CompletedProcess:
    (tmp_path / "Rakefile").write_bytes(content)
    return batch(procs, alpha.address, tmp_path, "rake", *words)


@pytest.mark.parametrize("content, words, expected", [
    (b"all:\n\techo caf\xe9\n", (), "Rakefile:2: not UTF-8 text (byte 0xe9)"),
    (b"all:\n\techo x\n", (".",), ".: is a directory; name the Rakefile in it"),
    (b"all:\n\tremote-cat a\n\trequires a\n", (),
     "'requires' must be indented deeper than its action (line 2)"),
    (b"all:\n\tremote-cat adir\n\t\trequires adir\n", (), "required 'adir' is a directory"),
    (b"all:\n\tremote-cat a\n\t\trequires a a\n", (), "required file 'a' is listed twice"),
    (b"all:\n\techo one\n    echo two\n", (),
     "Rakefile:3: action indented 4 column(s), but this file's actions are indented 8"),
], ids=["not-utf8", "directory", "requires-level", "requires-dir", "listed-twice", "mixed-indent"])
def test_rakefile_mistakes_are_named_before_anything_runs(
        procs: Processes, alpha: Server, tmp_path: Path, content: bytes, words: tuple,
        expected: str) -> None:
    (tmp_path / "a").write_text("a\n")
    (tmp_path / "adir").mkdir()
    result = rake_in(procs, alpha, tmp_path, content, *words)
    assert result.returncode == 2
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_rake_on_a_server_that_does_not_exist_fails_once_up_front(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    result = rake_in(procs, alpha, tmp_path, b"all:\n\tremote-true\n\tremote-true\n",
                     "--on", "nosuch")
    assert result.returncode == 2
    assert result.stderr.count("no such server") == 1
    assert "known: alpha" in result.stderr


def test_a_rakefile_names_its_servers_with_hosts_and_port(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    (tmp_path / "Rakefile").write_text(f"PORT = {alpha.port}\nHOSTS = {dead_address()} "
                                       f"127.0.0.1\n\nall:\n\tremote-echo from the HOSTS\n")
    proc = procs.start([CLIENT, "rake"], cwd=tmp_path, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=dict(procs.env(), CRC_MESH=""))
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert "from the HOSTS" in out
    missing = procs.start([CLIENT, "run", "--", "true"], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=dict(procs.env(), CRC_MESH=""))
    _, err = missing.communicate(timeout=DEADLINE)
    assert missing.returncode == 2 and "--server is required (or set CRC_MESH" in err


def test_unusable_directories_and_files_for_a_server_are_named(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    cases = [
        (["--work-dir", str(a_file)], f"--work-dir {a_file}: exists and is not a directory"),
        (["--state-dir", str(a_file / "sub")], f"--state-dir {a_file / 'sub'}: cannot be used"),
        (["--log-file", str(tmp_path / "missing" / "x.log")], "cannot open --log-file"),
        (["--name", "a\udcffb"], "is not valid UTF-8"),
    ]
    for args, expected in cases:
        result = subprocess.run([sys.executable, SERVER, "--port", "0", *args],
                                capture_output=True, text=True, timeout=DEADLINE,
                                stdin=subprocess.DEVNULL, cwd=tmp_path, errors="surrogateescape")
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


# -- rough edges ---------------------------------------------------------------------------------

def test_a_name_with_blanks_is_addressed_in_quotes(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    out = tmp_path / "smith.out"
    with out.open("w") as stdout:
        smith = procs.start([CLIENT, "--server", alpha.address, "--name", "alice smith"],
                            stdin=subprocess.PIPE, stdout=stdout, stderr=subprocess.PIPE)
    wait_for(lambda: "[status] Welcome" in out.read_text(), DEADLINE, "alice smith's welcome")
    bob = run_client(procs, alpha, "bob", 102, '/wait "alice smith" 10\n'
                                               '/msg "alice smith" hello with blanks\n')
    assert bob.returncode == 0, bob.stderr
    wait_for(lambda: "hello with blanks" in out.read_text(), DEADLINE, "the chat")
    smith.stdin.close()
    assert smith.wait(DEADLINE) == 0


def test_a_job_is_cancelled_by_its_number_and_that_is_not_an_error(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    proc = procs.start([CLIENT, "--server", alpha.address, "--name", "canceller"],
                       cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    proc.stdin.write("/run -i sleep 75.25\n")      # -i: the script goes on meanwhile
    proc.stdin.flush()
    wait_for(lambda: processes_running(["sleep", "75.25"]), DEADLINE, "the job to start")
    out, err = proc.communicate("/cancel 1\n", timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert "cancelling " in err and ": cancelled" in err
    assert "error" not in err
    wait_for(lambda: not processes_running(["sleep", "75.25"]), DEADLINE, "the job to end")


def test_runall_reports_a_killed_job_as_a_shell_does_and_keeps_output_bytes(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    timed_out = batch(procs, alpha.address, tmp_path, "runall", "--timeout", "0.5", "--",
                      "sleep", "76.25")
    assert timed_out.returncode == 137, timed_out.stderr
    assert "137 (SIGKILL)" in timed_out.stdout
    ran = batch(procs, alpha.address, tmp_path, "run", "--timeout", "0.5", "--",
                "sleep", "76.25")
    assert ran.returncode == 137
    proc = procs.start([CLIENT, "--server", alpha.address, "runall", "--", "printf",
                        "caf\\351\\n"], cwd=tmp_path, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, encoding=None)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert b"[alpha] caf\xe9\n" in out


# -- an entry server that comes back -------------------------------------------------------------

def test_an_entry_restarted_mid_rake_fetches_finished_runs_instead_of_rerunning_them(
        procs: Processes, tmp_path: Path, frozen: str) -> None:
    """alpha, the build's entry, is killed while both actions run on beta and
    comes back on the same port, joining through a frozen candidate first, so
    the client's FETCHes reach it before it knows beta. "Not known yet" is not
    "gone": it waits for its view to settle, fetches the finished results, and
    nothing runs twice."""
    beta = Server(procs, tmp_path, 2, "beta")
    port = int(dead_address().rsplit(":", 1)[1])
    alpha = Server(procs, tmp_path, 1, "alpha", options=("--port", str(port), "--connect",
                                                          beta.address))
    wait_for(lambda: "joined the mesh through beta" in alpha.log.read_text(), DEADLINE,
             "alpha to join beta")
    count = tmp_path / "count"
    (tmp_path / "Rakefile").write_text(
        "both:\n" + "".join(f"\tremote-sh -c 'echo {i} >> {count}; sleep 3; echo done {i}'\n"
                            for i in range(2)))
    proc = procs.start([CLIENT, "--server", alpha.address, "rake", "--on", "beta"],
                       cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: count.exists() and len(count.read_text().split()) == 2, DEADLINE,
             "both actions to run on beta")
    alpha.proc.kill()
    alpha.proc.wait(DEADLINE)
    Server(procs, tmp_path, 1, "alpha-again", options=(
        "--port", str(port), "--connect", f"{frozen},{beta.address}", "--join-timeout", "2"))
    out, err = proc.communicate(timeout=DEADLINE * 2)
    assert proc.returncode == 0, err
    assert "done 0" in out and "done 1" in out
    assert sorted(count.read_text().split()) == ["0", "1"], "an action ran twice"


@pytest.mark.parametrize("words, expected", [
    (["run", "--", "echo", "\udcff"], "argument 2 b'\\xff' is not valid UTF-8"),
    (["run", "--on", "\udcff", "--", "true"], "--on b'\\xff' is not valid UTF-8"),
    (["run", "--on", "", "--", "true"], "--on needs a server name or id"),
    (["runall"], "no command given (use: runall -- CMD ARGS...)"),
    (["run", "--file", "sub", "--", "true"], "--file 'sub' is a directory"),
    (["run", "--file", "a", "--file", "a", "--", "true"], "--file 'a' is listed twice"),
    (["run", "--file", "fifo", "--", "true"], "--file 'fifo' is not a regular file"),
], ids=["argv-utf8", "on-utf8", "on-empty", "runall-empty", "file-dir", "file-twice", "fifo"])
def test_a_bad_batch_command_line_is_named_before_anything_connects(
        procs: Processes, tmp_path: Path, words: list[str], expected: str) -> None:
    (tmp_path / "a").write_text("a\n")
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "fifo")
    result = batch(procs, dead_address(), tmp_path, *words)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr, result.stderr


@pytest.mark.parametrize("flags, expected", [
    (["--secret-file", ""], "--secret-file needs a file name"),
    (["--tls-ca", ""], "--tls-ca needs a file name"),
    (["--state-dir", "", "--name", "x"], "--state-dir needs a file name"),
    (["--script", "s.txt", "run", "--", "true"], "--script is for chat mode"),
    (["--no-reconnect", "--reconnect-for", "5", "--name", "x"], "contradict"),
    (["run", "--server", "127.0.0.1:5", "--", "true"], "--server goes before the command word"),
    (["--connect-timeout", "1e30", "--name", "x"], "is not a number of seconds"),
], ids=["empty-secret", "empty-ca", "empty-state", "script-in-batch", "contradiction",
        "server-late", "huge-seconds"])
def test_client_flags_that_would_fail_open_or_be_ignored_are_refused(
        procs: Processes, tmp_path: Path, flags: list[str], expected: str) -> None:
    proc = procs.start([CLIENT, "--server", "127.0.0.1:9", *flags], cwd=tmp_path,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2, err
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("flags, expected", [
    (["--secret-file", ""], "--secret-file needs a file name"),
    (["--tls-cert", "", "--tls-key", "", "--tls-ca", ""], "--tls-cert needs a file name"),
    (["--host", "\udcff"], "is not a host name or address"),
    (["--dead-after", "1e10"], "is not a number of seconds"),
    (["--max-frame", "1"], "is out of range (64K"),
    (["--work-dir", "w" * 300], "cannot be used"),
], ids=["empty-secret", "empty-tls", "host-utf8", "huge-seconds", "tiny-frame", "long-name"])
def test_server_flags_that_would_fail_open_or_break_later_are_refused(
        tmp_path: Path, flags: list[str], expected: str) -> None:
    result = subprocess.run([sys.executable, SERVER, "--port", "0", *flags],
                            capture_output=True, text=True, timeout=DEADLINE,
                            stdin=subprocess.DEVNULL, cwd=tmp_path, errors="surrogateescape")
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_local_actions_run_a_few_at_a_time(procs: Processes, alpha: Server,
                                           tmp_path: Path) -> None:
    """Forty local actions in one set: they all run, never all at once."""
    (tmp_path / "running").mkdir()
    action = "\tsh -c 'ls running | wc -l >> seen; touch running/$$; sleep 0.1; rm running/$$'\n"
    (tmp_path / "Rakefile").write_text("many:\n" + action * 40)
    result = batch(procs, alpha.address, tmp_path, "rake")
    assert result.returncode == 0, result.stderr
    seen = [int(n) for n in (tmp_path / "seen").read_text().split()]
    assert len(seen) == 40
    assert max(seen) < max(2, os.cpu_count() or 1)


# -- streams and signals, swept --------------------------------------------------------------

def test_a_batch_run_whose_reader_goes_away_cancels_its_job_and_exits_141(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    """``run ... | head -1``: the rest of the output has no reader."""
    marker = ["sh", "-c", "while :; do echo line; sleep 0.01; done # 77.25"]
    client = procs.start([CLIENT, "--server", alpha.address, "run", "--", *marker],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         encoding=None)
    assert client.stdout.readline() == b"line\n"
    client.stdout.close()                           # what head does after one line
    assert client.wait(DEADLINE) == 141
    assert b"cannot write the output (Broken pipe)" in client.stderr.read()
    wait_for(lambda: not processes_running(marker), DEADLINE, "the job to be cancelled")


def test_a_batch_run_with_standard_output_closed_says_so_and_exits_1(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    result = subprocess.run(f"exec {sys.executable} {CLIENT} --server {alpha.address} run -- "
                            f"echo hi >&-", shell=True, capture_output=True, text=True,
                            timeout=DEADLINE, env=procs.env(), cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot write the output" in result.stderr and "Traceback" not in result.stderr


def test_sighup_stops_a_batch_run_like_sigterm(procs: Processes, alpha: Server,
                                               tmp_path: Path) -> None:
    marker = ["sleep", "78.25"]
    client = procs.start([CLIENT, "--server", alpha.address, "run", "--", *marker],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: processes_running(marker), DEADLINE, "the job to start")
    client.send_signal(signal.SIGHUP)
    assert client.wait(DEADLINE) == 129
    wait_for(lambda: not processes_running(marker), DEADLINE, "the job to be cancelled")


def test_sighup_stops_a_server_cleanly_with_a_log_line(procs: Processes,
                                                       tmp_path: Path) -> None:
    server = Server(procs, tmp_path, 1, "hungup")
    server.proc.send_signal(signal.SIGHUP)
    assert server.proc.wait(DEADLINE) == 0
    assert "SIGHUP received, shutting down" in server.log.read_text()


def test_a_chat_script_stopped_by_sigterm_exits_143(procs: Processes, alpha: Server,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("w") as stdout:
        client = procs.start([CLIENT, "--server", alpha.address, "--name", "terminated"],
                             stdin=subprocess.PIPE, stdout=stdout, stderr=subprocess.PIPE)
    wait_for(lambda: "[status] Welcome" in out.read_text(), DEADLINE, "the welcome")
    client.send_signal(signal.SIGTERM)
    assert client.wait(DEADLINE) == 143


def test_a_server_out_of_descriptors_pauses_accepting_instead_of_spinning(
        procs: Processes, tmp_path: Path) -> None:
    server = Server(procs, tmp_path, 1, "starved")
    psutil.Process(server.proc.pid).rlimit(psutil.RLIMIT_NOFILE, (48, 48))
    held = []
    try:
        for _ in range(80):
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        wait_for(lambda: "accept failed" in server.log.read_text(), DEADLINE,
                 "the server to run out of descriptors")
        wait_for(lambda: server.log.read_text().count("accept failed") >= 2, DEADLINE,
                 "a second pause")
        # Said at most once a second (a spinning accept said it 120,000 times).
        assert server.log.read_text().count("accept failed") <= 3
    finally:
        for sock in held:
            sock.close()
    chat = run_client(procs, server, "after", 5, "/msg 777 still there?\n")
    assert "Unknown ID 777" in chat.stdout, chat.stderr


def test_batch_against_a_server_nobody_runs_exits_1(procs: Processes, tmp_path: Path) -> None:
    result = batch(procs, dead_address(), tmp_path, "--connect-timeout", "2", "run", "--",
                   "true")
    assert result.returncode == 1, result.stderr
    assert "cannot connect" in result.stderr or "no server completed" in result.stderr


def test_leaving_a_script_with_a_job_running_cancels_it_and_says_so(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    marker = ["sleep", "79.25"]
    proc = procs.start([CLIENT, "--server", alpha.address, "--name", "leaver"], cwd=tmp_path,
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(f"/run -i {' '.join(marker)}\n")
    proc.stdin.flush()
    wait_for(lambda: processes_running(marker), DEADLINE, "the job to start")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 130
    assert "cancelled 1 running job(s) on leaving" in err
    assert "lost the connection" not in err
    wait_for(lambda: not processes_running(marker), DEADLINE, "the job to be cancelled")


def test_permanent_join_refusals_are_said_once_and_backed_off(
        procs: Processes, alpha: Server, tmp_path: Path) -> None:
    """A server whose id is taken, and one told to join itself: neither
    writes an ERROR on every attempt; joining itself is given up."""
    twin = Server(procs, tmp_path, 1, "twin", options=("--connect", alpha.address))
    wait_for(lambda: twin.log.read_text().count("join refused") >= 3, DEADLINE,
             "three refusals")
    log_text = twin.log.read_text()
    assert log_text.count("WARNING crc.server.server: twin: join refused") == 1
    assert "ERROR" not in log_text
    port = int(dead_address().rsplit(":", 1)[1])
    loner = Server(procs, tmp_path, 3, "loner", options=(
        "--port", str(port), "--connect", f"127.0.0.1:{port}"))
    wait_for(lambda: "is this server itself" in loner.log.read_text(), DEADLINE,
             "the loner to notice")
    wait_for(lambda: "no candidate left" in loner.log.read_text(), DEADLINE,
             "the loner to stop trying")
    assert loner.log.read_text().count("joining the mesh through") == 1
