"""The programs as a user runs them: real ``mesh_server.py`` and ``chat_client.py`` processes.

Servers listen on port 0 and the test reads the chosen port from each one's
log, then polls a connection until it is accepted. Clients run scripts and
print events as lines, which the tests compare exactly. Every wait has a
deadline, generous enough for a busy machine; none is a fixed sleep.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from bench.netns import child_env

from .meshkit import wait_for

ROOT = Path(__file__).resolve().parent.parent
SERVER = str(ROOT / "mesh_server.py")
CLIENT = str(ROOT / "chat_client.py")

#: Upper bound for anything to happen (start, connect, deliver, exit).
DEADLINE = 30.0
LISTENING = re.compile(r"listening on [^ ]+:(\d+)")


class Processes:
    """Every child a test starts; whatever is still running at the end is killed.

    The children's temporary files (a server's work directory without
    ``--work-dir``, a client's file store) go to ``tmpdir``, so that a child a
    test kills outright leaves nothing behind outside the test's directory."""

    def __init__(self, tmpdir: Path) -> None:
        self.children: list[subprocess.Popen] = []
        self.tmpdir = tmpdir

    def env(self) -> dict[str, str]:
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        return dict(child_env(), TMPDIR=str(self.tmpdir))

    def start(self, args: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("cwd", ROOT)
        kwargs.setdefault("env", self.env())
        kwargs.setdefault("encoding", "utf-8")
        proc = subprocess.Popen([sys.executable, *args], **kwargs)
        self.children.append(proc)
        return proc

    def cleanup(self) -> None:
        """SIGTERM first (servers remove their temporary work directories), then SIGKILL."""
        for proc in self.children:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.children:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(DEADLINE)


class Server:
    def __init__(self, procs: Processes, tmp: Path, server_id: int, name: str,
                 connect: int | None = None, options: tuple[str, ...] = ()) -> None:
        self.log = tmp / f"{name}.log"
        args = [SERVER, "--port", "0", "--id", str(server_id), "--name", name,
                "--log-file", str(self.log), *options]
        if connect is not None:
            args += ["--connect", f"127.0.0.1:{connect}"]
        self.proc = procs.start(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.name = name
        self.port = int(wait_for(self._logged_port, DEADLINE, f"{name} to log its port"))
        wait_for(self._accepts, DEADLINE, f"{name} to accept connections")

    def _logged_port(self) -> str | None:
        assert self.proc.poll() is None, f"{self.name} exited with {self.proc.returncode}"
        text = self.log.read_text(encoding="utf-8") if self.log.exists() else ""
        match = LISTENING.search(text)
        return match.group(1) if match else None

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(DEADLINE)


def client_args(server: Server, name: str, client_id: int, *extra: str) -> list[str]:
    return [CLIENT, "--server", server.address, "--name", name, "--id", str(client_id), *extra]


def run_client(procs: Processes, server: Server, name: str, client_id: int, script: str,
               *extra: str) -> subprocess.CompletedProcess:
    """Run a client with ``script`` on its standard input until it exits."""
    proc = procs.start(client_args(server, name, client_id, *extra), stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(script, timeout=DEADLINE)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- a chat across a chain of three servers ---------------------------------------------

ALICE_TEXT = 'héllo «wörld» from "alice",  with   spaces'
BOB_TEXT = "it's bob: 'single' \"double\" ünïcödé ✓ [bold]not markup[/]"


def test_two_clients_chat_across_a_chain_of_three_servers(procs: Processes,
                                                          tmp_path: Path) -> None:
    first = Server(procs, tmp_path, 1, "first")
    middle = Server(procs, tmp_path, 2, "middle", connect=first.port)
    last = Server(procs, tmp_path, 3, "last", connect=middle.port)

    bob_script = tmp_path / "bob.txt"
    bob_script.write_text(f"# bob answers alice\n/wait alice 30\n/msg alice {BOB_TEXT}\n"
                          f"/waitmsg alice 30\n", encoding="utf-8")
    bob = procs.start(client_args(last, "bob", 102, "--script", str(bob_script)),
                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    alice = run_client(procs, first, "alice", 101,
                       f"/wait bob 30\n/who\n/msg bob {ALICE_TEXT}\n/waitmsg bob 30\n"
                       f"/quit bye from alice\n")
    bob_out, bob_err = bob.communicate(timeout=DEADLINE)

    alice_lines = alice.stdout.splitlines()
    bob_lines = bob_out.splitlines()
    assert alice.returncode == 0, alice.stderr
    assert bob.returncode == 0, bob_err
    assert alice_lines[0] == "[status] Welcome to the Clemson Relay Chat network alice"
    assert bob_lines[0] == "[status] Welcome to the Clemson Relay Chat network bob"
    assert "[join] bob(102)" in alice_lines
    assert "[join] alice(101)" in bob_lines
    assert f"[chat] bob(102): {BOB_TEXT}" in alice_lines
    assert f"[chat] alice(101): {ALICE_TEXT}" in bob_lines
    assert f"[sent] bob(102): {ALICE_TEXT}" in alice_lines
    # bob may leave before alice does, so alice asks /who before she writes to him.
    assert any("bob" in line and "102" in line for line in alice_lines if "│" in line), \
        "the /who table lists bob"

    for server in (first, middle, last):
        assert server.terminate() == 0, f"{server.name} did not exit cleanly"


# -- refusals and failures ---------------------------------------------------------------

@pytest.fixture
def server(procs: Processes, tmp_path: Path) -> Iterator[Server]:
    server = Server(procs, tmp_path, 7, "solo")
    yield server
    assert server.terminate() == 0


def test_a_duplicate_id_is_refused(procs: Processes, server: Server, tmp_path: Path) -> None:
    holder_out = tmp_path / "holder.out"
    with holder_out.open("w", encoding="utf-8") as out:
        holder = procs.start(client_args(server, "holder", 301), stdin=subprocess.PIPE,
                             stdout=out, stderr=subprocess.PIPE)
    wait_for(lambda: "[status] Welcome" in holder_out.read_text(encoding="utf-8"), DEADLINE,
             "the first client's welcome")

    dup = run_client(procs, server, "copycat", 301, "/msg holder never sent\n")
    assert dup.returncode != 0
    assert "[status] Someone has already registered with ID 301" in dup.stdout.splitlines()
    assert "never sent" not in dup.stdout
    assert server.address in dup.stderr
    assert "Someone has already registered with ID 301" in dup.stderr

    _, holder_err = holder.communicate("", timeout=DEADLINE)  # end of input: leave
    assert holder.returncode == 0, holder_err


def test_an_unknown_destination_gets_a_status(procs: Processes, server: Server) -> None:
    # The server handles our chats in order, so once the chat to ourselves is
    # back, the status about the first one has arrived before it.
    result = run_client(procs, server, "lonely", 401,
                        "/msg 999 anyone there?\n/msg lonely note to self\n/waitmsg lonely 30\n",
                        "--plain-chat")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert "[sent] 999: anyone there?" in lines
    assert lines.index("[status] Unknown ID 999") < lines.index(
        "[chat] lonely(401): note to self")


def test_a_reliable_chat_to_an_unknown_user_is_reported_not_lost(procs: Processes,
                                                                 server: Server) -> None:
    result = run_client(procs, server, "hopeful", 404, "/msg 999 anyone there?\n")
    assert result.returncode == 3, result.stderr        # the script's chat did not get through
    assert "[waiting] 1 chat(s) to 999: Unknown ID 999; will keep trying" in result.stdout
    assert "1 chat(s) to 999 undelivered (Unknown ID 999); not sent" in result.stderr


def test_a_wait_that_times_out_fails_the_script(procs: Processes, server: Server) -> None:
    result = run_client(procs, server, "patient", 403, "/wait nobody 0.2\n/msg 999 not sent\n")
    assert result.returncode == 3
    assert "line 1: /wait nobody: no such user joined within 0.2 s" in result.stderr
    assert "not sent" not in result.stdout


def test_script_errors_are_reported_with_their_line(procs: Processes, server: Server) -> None:
    result = run_client(procs, server, "typo", 402, "# fine\n/who\n/frobnicate\n/quit never\n")
    assert result.returncode == 3
    assert "line 3: unknown command /frobnicate" in result.stderr


def test_refused_connection_names_the_address(procs: Processes) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = procs.start([CLIENT, "--server", f"127.0.0.1:{port}", "--name", "x"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    assert f"cannot connect to 127.0.0.1:{port}" in err


def test_a_command_word_runs_batch_mode(procs: Processes, server: Server) -> None:
    proc = procs.start([CLIENT, "--server", server.address, "run", "--", sys.executable, "-c",
                        "import sys; print(sys.argv[1])", "from «batch»"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["from «batch»"]


@pytest.mark.parametrize("args, message", [
    (["--server", "localhost", "--name", "x"], "expected HOST:PORT"),
    (["--server", "localhost:http", "--name", "x"], "is not a number"),
    (["--server", "localhost:70000", "--name", "x"], "out of range"),
    (["--server", "localhost:1", "--name", "x", "--id", "0"], "id 0 is not in 1..4294967295"),
    (["--server", "localhost:1", "--name", "x", "--id", "4294967296"], "is not in 1..4294967295"),
    (["--server", "localhost:1", "--name", ""], "the name must not be empty"),
    (["--server", "localhost:1", "--name", "x", "--script", "/nonexistent/script"],
     "cannot read script /nonexistent/script"),
    (["--server", "localhost:1"], "required to chat: --name"),
    (["--server", "localhost:1", "--name", "x", "chat"], "unknown command 'chat'"),
])
def test_bad_command_lines(procs: Processes, args: list[str], message: str) -> None:
    proc = procs.start([CLIENT, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2
    assert message in err
