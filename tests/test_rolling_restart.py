"""Upgrading a running mesh one server at a time (docs/deploy.md): every
server of a three-server mesh is stopped (SIGTERM) and started again with the
same settings, in turn, while two clients chat across it and a build runs
through it. Nothing is lost: every chat accepted is shown once, in order, and
the build succeeds with every file it produces."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from bench.common import free_port, state_query
from bench.netns import SENT, LineClient, chat_pattern

from .meshkit import wait_for

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 60.0



class Mesh:
    """Three servers, each restartable with the settings it was started with."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen | None] = [None, None, None]
        self.children: list[subprocess.Popen] = []

    def args(self, i: int, first_start: bool) -> list[str]:
        others = [f"127.0.0.1:{p}" for j, p in enumerate(self.ports) if j != i]
        args = [sys.executable, str(ROOT / "mesh_server.py"), "--port", str(self.ports[i]),
                "--id", str(i + 1), "--name", f"s{i + 1}", "--keepalive", "1",
                "--dead-after", "3", "--state-dir", str(self.tmp / f"state{i + 1}"),
                "--log-file", str(self.tmp / f"s{i + 1}.log")]
        if i > 0 or not first_start:          # s1 founds the mesh; later, all rejoin it
            args += ["--connect", ",".join(others)]
        return args

    def start(self, i: int, first_start: bool = False) -> None:
        proc = subprocess.Popen(self.args(i, first_start), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=ROOT)
        self.procs[i] = proc
        self.children.append(proc)
        wait_for(lambda: self.answers(i), DEADLINE, f"s{i + 1} to answer")

    def answers(self, i: int) -> bool:
        return state_query(self.ports[i], timeout=1) is not None

    def whole(self) -> bool:
        """Every server knows the other two."""
        for i, port in enumerate(self.ports):
            state = state_query(port, timeout=1)
            if state is None:
                return False
            names = {h["name"] for h in state["hosts"].values()}
            if not {f"s{j + 1}" for j in range(3) if j != i} <= names:
                return False
        return True

    def restart(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
        self.start(i)
        wait_for(self.whole, DEADLINE, f"the mesh to be whole again after s{i + 1}")

    def address(self, *which: int) -> str:
        return ",".join(f"127.0.0.1:{self.ports[i]}" for i in which)

    def stop(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.children:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


RAKEFILE = """compile:
{actions}
"""


def test_restarting_every_server_in_turn_loses_no_chat_and_no_build_result(
        tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    alice = bob = build = None
    try:
        mesh.start(0, first_start=True)
        mesh.start(1)
        mesh.start(2)
        wait_for(mesh.whole, DEADLINE, "the mesh to form")
        # Clients that know more than one server, and keep their state.
        alice = LineClient(mesh.address(0, 1), "alice", 8101, "--state-dir",
                           str(tmp_path / "alice"))
        bob = LineClient(mesh.address(2, 1), "bob", 8102, "--state-dir", str(tmp_path / "bob"))
        wait_for(lambda: any("bob" in line for line in alice.lines) or
                 mesh_knows(mesh, "bob"), DEADLINE, "bob to be known")
        project = tmp_path / "project"
        project.mkdir()
        actions = "\n".join(f"\tremote-sh -c 'sleep 0.8; echo part {k} > out{k}.txt'"
                            for k in range(12))
        (project / "Rakefile").write_text(RAKEFILE.format(actions=actions))
        build = subprocess.Popen(
            [sys.executable, str(ROOT / "chat_client.py"), "--server", mesh.address(1, 0, 2),
             "rake", "-j", "2"],
            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        running = []
        for round_, i in enumerate((0, 1, 2)):
            first = round_ * 100
            alice.write("".join(f"/msg 8102 m{k}\n" for k in range(first, first + 100)))
            bob.write("".join(f"/msg 8101 m{k}\n" for k in range(first, first + 100)))
            running.append(build.poll() is None)
            mesh.restart(i)
        # (twelve 0.8 s actions two at a time: the build's own server, s2,
        # restarted under it)
        assert running[:2] == [True, True]
        out, err = build.communicate(timeout=180)
        assert build.returncode == 0, out[-2000:] + err[-2000:]
        for k in range(12):
            assert (project / f"out{k}.txt").read_text() == f"part {k}\n"
        readers = ((bob, "alice", 8101), (alice, "bob", 8102))

        def shown() -> list[list[int]]:
            return [r.numbers(chat_pattern(w, wid)) for r, w, wid in readers]
        wait_for(lambda: all(len(got) >= 300 for got in shown()), DEADLINE,
                 "each side to show the other's 300 chats")
        assert alice.finish() == 0, alice.errors
        assert bob.finish() == 0, bob.errors
        for got in shown():
            assert got == list(range(300))                  # once each, in order
        assert len(alice.numbers(SENT)) == len(bob.numbers(SENT)) == 300
    finally:
        for client in (alice, bob):
            if client is not None and client.proc.poll() is None:
                client.kill()
        if build is not None and build.poll() is None:
            build.kill()
        mesh.stop()


def mesh_knows(mesh: Mesh, name: str) -> bool:
    state = state_query(mesh.ports[0], timeout=1)
    if state is None:
        return False
    return name in {h["name"] for h in state["hosts"].values()}
