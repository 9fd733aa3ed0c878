"""meshcc's native front (``meshcc --launcher``): the protocol it speaks with
the agent (against a stand-in agent: the socket's name as crc.cc.paths
makes it, the request's fields, each kind of answer), and the same
behaviour as meshcc itself through a real 3-server mesh: a Makefile build
compiled there byte for byte as here, diagnostics and statuses as the local
compiler's, fallback and MESHCC_FALLBACK=0, masquerade, local slots."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from crc.cc.talk import THIN, decode_fields, encode_fields
from crc.jobs.compilers import identity

from .meshkit import Mesh, wait_for
from .test_meshcc import (FAILS_HERE, WARNS, built_as_here, cold_build_placed, copy_example,
                          env_for, local_object, make, most_at_once_here, slow_gcc, three,
                          where_compiled)

ROOT = Path(__file__).resolve().parent.parent
GCC = shutil.which("gcc")

pytestmark = pytest.mark.skipif(GCC is None or shutil.which("make") is None,
                                reason="needs gcc and make (.ci/run installs them)")


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> str:
    cache = tmp_path_factory.mktemp("launcher-cache")
    done = subprocess.run([sys.executable, str(ROOT / "meshcc.py"), "--launcher"],
                          env=dict(os.environ, XDG_CACHE_HOME=str(cache)),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    path = done.stdout.strip()
    assert os.access(path, os.X_OK) and os.path.basename(path) == "meshcc"
    again = subprocess.run([sys.executable, str(ROOT / "meshcc.py"), "--launcher"],
                           env=dict(os.environ, XDG_CACHE_HOME=str(cache),
                                    MESHCC_CACHE_DIR=str(cache / "elsewhere")),
                           capture_output=True, text=True, timeout=60)
    assert again.stdout.strip() == path        # built once (whatever the compile cache's place)
    assert path.startswith(str(cache / "crc-mesh" / "launcher"))
    return path


# -- against a stand-in agent -----------------------------------------------------------

class StandIn:
    """Listens where the agent for ``env`` would; answers one request with
    ``reply`` and keeps the request's fields."""

    def __init__(self, env: dict[str, str], reply: list[str] | None) -> None:
        from crc.cc.paths import socket_path
        self.path = socket_path(env)
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.sock.settimeout(60)
        self.reply = reply
        self.fields: list[str] | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        self.close()                      # one request: whoever comes next finds nobody
        if self.reply is None:            # hangs up unheard
            conn.close()
            return
        with conn:
            data = b""
            while True:
                fields, _ = decode_fields(data, THIN) if data.startswith(THIN) else (None, 0)
                if fields is not None:
                    break
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.fields = fields
            conn.sendall(encode_fields(self.reply))

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def through_stand_in(native: str, reply: list[str] | None, argv: list[str], cwd: Path,
                     env: dict[str, str]) -> tuple[subprocess.CompletedProcess, StandIn]:
    """Run the native front with ``argv`` while a stand-in agent for ``env``
    answers its request with ``reply``; what it did, and the stand-in."""
    agent = StandIn(env, reply)
    try:
        done = subprocess.run([native, *argv], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=120)
        agent.thread.join(30)
    finally:
        agent.close()
    return done, agent


@pytest.fixture
def stand_in_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return dict(os.environ, CRC_MESH=" 127.0.0.1:1 ", CRC_MESH_TLS_CA="/ca.pem",
                ODD="with\nnewline")


@pytest.mark.parametrize("runtime", ["", "r" * 90, "r" * 56 + "/"],
                         ids=["short path", "long path", "ending in a slash"])
def test_the_request_reaches_the_agents_socket_with_argv_cwd_and_environment(
        native: str, tmp_path: Path, stand_in_env: dict[str, str], runtime: str,
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    # Too long for a socket's name: the agent's other place. Ending in a
    # slash, at the longest the usual place may be: no second slash (with
    # one, the front would count one character more and go elsewhere).
    if runtime.endswith("/"):    # exactly as long as the usual place may be, with the slash
        from crc.cc.paths import MAX_SOCKET_PATH
        base = tempfile.mkdtemp(dir="/tmp")
        request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
        name = f"crc-meshcc-{os.getuid()}"
        runtime = "r" * (MAX_SOCKET_PATH - 30 - len(base) - 2 - len(name)) + "/"
        folder = f"{base}/{runtime}"
        assert len(os.path.join(folder, name)) == MAX_SOCKET_PATH - 30
        os.mkdir(folder)
    elif runtime:
        folder = str(tmp_path / runtime)
        os.mkdir(folder)
    if runtime:
        monkeypatch.setenv("XDG_RUNTIME_DIR", folder)
        stand_in_env["XDG_RUNTIME_DIR"] = folder
    done, agent = through_stand_in(native, ["exit", "7", "meshcc: said by the agent\n"],
                                   ["gcc", "-c", "a b.c"], tmp_path, stand_in_env)
    assert done.returncode == 7 and done.stderr == "meshcc: said by the agent\n"
    fields = agent.fields
    assert fields is not None
    assert fields[0] == str(tmp_path) and os.path.samefile(fields[1], native)
    assert fields[2] == "4" and fields[3:7] == [native, "gcc", "-c", "a b.c"]
    env = dict(f.split("=", 1) for f in fields[7:])
    assert env["ODD"] == "with\nnewline" and env["CRC_MESH"] == " 127.0.0.1:1 "


def test_exec_runs_the_named_program_in_a_local_slot_after_the_text(
        native: str, tmp_path: Path, stand_in_env: dict[str, str]) -> None:
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh\necho \"ran $0 $*\"\nls -l /proc/$$/fd | grep -c slot- >&2\n"
                      "exit 3\n")
    script.chmod(0o755)
    done, _ = through_stand_in(native, ["exec", "meshcc: here\n", str(script), "x", "y z"],
                               ["gcc", "a.o"], tmp_path, stand_in_env)
    assert done.returncode == 3
    assert done.stdout == f"ran {script} x y z\n"
    assert done.stderr == "meshcc: here\n1\n"              # one slot held by the program


@pytest.mark.parametrize("reply", [["python", ""], ["{marshal}", "not for the user\n"]],
                         ids=["python", "an answer of another version"])
def test_python_hands_the_invocation_to_meshcc_itself(
        native: str, tmp_path: Path, stand_in_env: dict[str, str], reply: list[str]) -> None:
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    # meshcc itself asks the agent again (the stand-in is gone by then: it
    # starts a real one, which cannot reach 127.0.0.1:1) and compiles here.
    done, agent = through_stand_in(native, reply, ["gcc", "-c", "a.c"], tmp_path,
                                   dict(stand_in_env, MESHCC_CONNECT_TIMEOUT="10"))
    assert agent.fields is not None
    assert done.returncode == 0 and (tmp_path / "a.o").is_file()
    assert done.stderr.startswith("meshcc: a.c: compiling here:"), done.stderr
    assert "not for the user" not in done.stderr


def test_an_agent_that_hangs_up_unheard_means_meshcc_itself_not_a_signal(
        native: str, tmp_path: Path, stand_in_env: dict[str, str]) -> None:
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    # A request large enough that the front is still sending when the
    # stand-in hangs up: SIGPIPE would kill it; it must go on as meshcc.
    env = dict(stand_in_env, MESHCC_CONNECT_TIMEOUT="10",
               **{f"PADDING{i}": "x" * 100_000 for i in range(6)})
    done, _ = through_stand_in(native, None, ["gcc", "-c", "a.c"], tmp_path, env)
    assert done.returncode == 0 and (tmp_path / "a.o").is_file(), done.stderr
    assert done.stderr.startswith("meshcc: a.c: compiling here:"), done.stderr


def test_with_no_agent_and_no_mesh_it_is_meshcc_itself(native: str, tmp_path: Path) -> None:
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    done = subprocess.run([native, "gcc", "-c", "a.c", "-o", "b.o"], cwd=tmp_path,
                          env=env_for(None, MESHCC_VERBOSE="1"), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and (tmp_path / "b.o").is_file()
    assert "compiling here: CRC_MESH is not set" in done.stderr


# -- through a real mesh ----------------------------------------------------------------
#
# Each test first has meshcc itself start the agent; after that every
# invocation runs with ``NO_PYTHON`` in its environment, where an interpreter
# cannot start: had the native front handed anything to meshcc itself, it
# would fail, so each success below was the native front's and the agent's.

NO_PYTHON = {"PYTHONHOME": "/nonexistent"}


def warm(cwd: Path, env: dict[str, str]) -> None:
    """Start the agent for ``env`` (meshcc itself does, as a build's first compile)."""
    (cwd / "warm-up.c").write_text("int warm_up(void) { return 0; }\n")
    done = subprocess.run([sys.executable, str(ROOT / "meshcc.py"), "gcc", "-c", "warm-up.c",
                           "-o", "warm-up.o"], cwd=cwd, env=dict(env, MESHCC_CACHE="0"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (cwd / "warm-up.c").unlink()
    (cwd / "warm-up.o").unlink()


def test_a_makefile_builds_through_the_mesh_through_the_native_front(
        native: str, mesh: Mesh, tmp_path: Path) -> None:
    three(mesh)
    project = copy_example(tmp_path)
    env = env_for(mesh, MESHCC_VERBOSE="1", MESHCC_CACHE_DIR=str(tmp_path / "cache"))
    warm(tmp_path, env)
    built = make(project, f"{native} gcc", dict(env, **NO_PYTHON))
    assert built.returncode == 0, built.stderr
    where = where_compiled(built.stderr)
    assert sorted(where) == sorted(p.name for p in project.glob("*.c")), built.stderr
    assert set(where.values()) <= {"s1", "s2", "s3"}
    local_objects = built_as_here(project)
    # A rebuild after make clean: every object from the local cache, by the agent.
    subprocess.run(["make", "clean"], cwd=project, check=True, capture_output=True)
    again = make(project, f"{native} gcc", dict(env, **NO_PYTHON))
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("from the local compile cache") == len(where), again.stderr
    assert {p.name: p.read_bytes() for p in (project / "build").iterdir()} == local_objects


@pytest.mark.parametrize("text,status", [(WARNS, 0), (FAILS_HERE, 1)], ids=["warnings", "error"])
def test_diagnostics_and_status_are_the_local_compilers(native: str, mesh: Mesh, tmp_path: Path,
                                                        text: str, status: int) -> None:
    three(mesh)
    env = env_for(mesh, MESHCC_CACHE_DIR=str(tmp_path / "cache"))
    warm(tmp_path, env)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.c").write_text(text)
    words = ["-Wall", "-O2", "-c", "src/w.c", "-o", "w.o"]
    here = subprocess.run([GCC, *words], cwd=tmp_path, capture_output=True, text=True)
    local = (tmp_path / "w.o").read_bytes() if here.returncode == 0 else None
    (tmp_path / "w.o").unlink(missing_ok=True)
    there = subprocess.run([native, "gcc", *words], cwd=tmp_path, env=dict(env, **NO_PYTHON),
                           capture_output=True, text=True, timeout=120)
    assert here.returncode == status
    assert (there.returncode, there.stdout, there.stderr) == (here.returncode, here.stdout,
                                                              here.stderr)
    if local is not None:
        assert (tmp_path / "w.o").read_bytes() == local


def test_mesh_down_compiles_here_with_a_note_and_fallback_0_fails(native: str,
                                                                  tmp_path: Path) -> None:
    env = env_for(None, CRC_MESH="127.0.0.1:9", MESHCC_CONNECT_TIMEOUT="5")
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    first = subprocess.run([native, "gcc", "-c", "a.c"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)   # (starts the agent)
    assert first.returncode == 0 and first.stderr.startswith("meshcc: a.c: compiling here:")
    (tmp_path / "a.o").unlink()
    done = subprocess.run([native, "gcc", "-c", "a.c"], cwd=tmp_path,
                          env=dict(env, **NO_PYTHON), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and (tmp_path / "a.o").is_file()
    assert done.stderr.startswith("meshcc: a.c: compiling here:") and \
        done.stderr.count("\n") == 1, done.stderr
    (tmp_path / "a.o").unlink()
    failed = subprocess.run([native, "gcc", "-c", "a.c"], cwd=tmp_path,
                            env=dict(env, MESHCC_FALLBACK="0", **NO_PYTHON),
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and not (tmp_path / "a.o").exists()
    assert "MESHCC_FALLBACK=0" in failed.stderr and "a.c" in failed.stderr


def test_masquerading_as_gcc_through_the_native_front(native: str, mesh: Mesh,
                                                      tmp_path: Path) -> None:
    three(mesh)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcc").symlink_to(native)
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    env = env_for(mesh, MESHCC_VERBOSE="1", MESHCC_CACHE="0",
                  PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    first = subprocess.run(["gcc", "-O2", "-c", "a.c"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)   # (starts the agent)
    assert first.returncode == 0, first.stderr
    (tmp_path / "a.o").unlink()
    done = subprocess.run(["gcc", "-O2", "-c", "a.c"], cwd=tmp_path, env=dict(env, **NO_PYTHON),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert where_compiled(done.stderr).get("a.c") in {"s1", "s2", "s3"}, done.stderr
    assert (tmp_path / "a.o").read_bytes() == local_object(tmp_path, "-O2", "-c", "a.c")
    linked = subprocess.run(["gcc", "a.o", "-shared", "-o", "liba.so"], cwd=tmp_path,
                            env=dict(env, **NO_PYTHON), capture_output=True, text=True,
                            timeout=60)
    assert linked.returncode == 0 and (tmp_path / "liba.so").is_file(), linked.stderr


def test_work_done_here_takes_at_most_one_slot_per_cpu(native: str, mesh: Mesh,
                                                        tmp_path: Path) -> None:
    three(mesh)
    env = env_for(mesh, MESHCC_CACHE="0", TMPDIR=str(tmp_path))
    warm(tmp_path, env)
    assert most_at_once_here([native], tmp_path, dict(env, **NO_PYTHON)) == (os.cpu_count() or 1)


def test_a_front_interrupted_mid_compile_gets_no_object_put_in_its_place(
        native: str, mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """make interrupted: the front is gone (and make may have removed the
    target on purpose); the compile's object, when it comes, is not written."""
    gate, started = tmp_path / "gate", tmp_path / "started"
    slow = slow_gcc(tmp_path / "bin", started)
    monkeypatch.setenv("SLOW_GATE", str(gate))
    mesh.add("s1", compilers={identity(str(slow))["id"]: str(slow)})
    mesh.wait_converged()
    env = env_for(mesh, MESHCC_CACHE="0")
    env.pop("SLOW_GATE")
    warm(tmp_path, env)
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    gate.touch()
    proc = subprocess.Popen([native, str(slow), "-c", "a.c"], cwd=tmp_path,
                            env=dict(env, **NO_PYTHON), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_for(started.exists, 60, "the compile to start on s1")
        proc.kill()
        proc.wait(30)
    finally:
        gate.unlink()
    # The compile goes on there and its answer comes back: the agent's work
    # directory beside a.o goes when it has been dealt with.
    wait_for(lambda: not list(tmp_path.glob(".meshcc-*")), 60, "the answer to be dealt with")
    assert not (tmp_path / "a.o").exists()
    # ... and the agent is still there for the next compile.
    done = subprocess.run([native, "gcc", "-c", "a.c"], cwd=tmp_path, env=dict(env, **NO_PYTHON),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and (tmp_path / "a.o").is_file(), done.stderr


def agents_for(path: str) -> list[int]:
    """Process ids of the agents serving the socket ``path``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                words = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"crc.cc.agent" in words and os.fsencode(path) in words:
                found.append(int(proc.name))
    return found


def test_a_cold_build_through_the_native_front_starts_one_agent(native: str, mesh: Mesh,
                                                                 tmp_path: Path) -> None:
    """No agent running: make -j starts many native fronts at once; they
    start one agent between them and every compile goes to the mesh, but
    those compiled here, a local slot being free, while it started."""
    from crc.cc.paths import socket_path
    three(mesh)
    project = copy_example(tmp_path)
    env = env_for(mesh, MESHCC_VERBOSE="1", MESHCC_CACHE_DIR=str(tmp_path / "cache"))
    path = socket_path(env)
    assert agents_for(path) == []
    built = make(project, f"{native} gcc", env)
    assert built.returncode == 0, built.stderr
    cold_build_placed(built.stderr, sorted(p.name for p in project.glob("*.c")))
    assert len(agents_for(path)) == 1



def test_an_agent_folder_open_to_others_is_not_trusted_by_either_front(
        native: str, tmp_path: Path, stand_in_env: dict[str, str]) -> None:
    """Whoever could put a socket where our agent's would be would get our
    environment, and could answer ``exec``: neither front talks to an agent
    whose folder is not ours alone."""
    from crc.cc.paths import socket_path
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    path = socket_path(stand_in_env)
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)                  # (connections wait there, never read)
    os.chmod(folder, 0o777)
    try:
        done = subprocess.run([native, "gcc", "-c", "a.c"], cwd=tmp_path,
                              env=dict(stand_in_env, MESHCC_CONNECT_TIMEOUT="3"),
                              capture_output=True, text=True, timeout=120)
        listener.setblocking(False)
        sent = []
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                break
            with conn:
                conn.setblocking(False)
                try:
                    sent.append(conn.recv(65536))
                except BlockingIOError:
                    sent.append(b"")
    finally:
        listener.close()
        os.unlink(path)
        os.chmod(folder, 0o700)
    assert len(sent) == 2 and sent == [b"", b""]     # both fronts came, neither sent a byte
    assert done.returncode == 0 and (tmp_path / "a.o").is_file(), done.stderr
    assert "is not this user's meshcc agent" in done.stderr, done.stderr


def test_meshcc_itself_imports_nothing_from_the_build_directory(
        native: str, tmp_path: Path, stand_in_env: dict[str, str]) -> None:
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    for module in ("zlib", "subprocess", "hashlib", "shutil"):
        (tmp_path / f"{module}.py").write_text("raise SystemExit('imported from the build')\n")
    done, _ = through_stand_in(native, ["python", ""], ["gcc", "-c", "a.c"], tmp_path,
                               dict(stand_in_env, MESHCC_CONNECT_TIMEOUT="10"))
    assert "imported from the build" not in done.stderr, done.stderr
    assert done.returncode == 0 and (tmp_path / "a.o").is_file(), done.stderr


# -- while another front's agent starts -------------------------------------------------

class Starting:
    """The agent for ``env`` as another front leaves it while it starts: its
    lock taken, nobody at its socket yet. ``busy()`` takes every local slot;
    ``bound()`` leaves the agent's process id file, as an agent that has
    bound its socket does."""

    def __init__(self, env: dict[str, str]) -> None:
        from crc.cc.paths import socket_path
        path = self.path = socket_path(env)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self.lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.slots: list[int] = []
        self.tmp = env["TMPDIR"]

    def busy(self) -> None:
        folder = os.path.join(self.tmp, f"crc-meshcc-{os.getuid()}")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        for i in range(os.cpu_count() or 1):
            fd = os.open(os.path.join(folder, f"slot-{i}"), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.slots.append(fd)

    def bound(self) -> None:
        from crc.cc.paths import pid_file
        Path(pid_file(self.path)).write_text(f"{os.getpid()}\n")

    def free(self) -> None:
        for fd in self.slots:
            os.close(fd)
        self.slots.clear()

    def close(self) -> None:
        self.free()
        os.close(self.lock)


def front_and_env(native: str, front: str, cwd: Path,
                  stand_in_env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command of ``front`` (the native one or meshcc itself) and its
    environment (verbose, a second to find an agent) for compiling ``a.c``,
    written in ``cwd``."""
    (cwd / "a.c").write_text("int a(int x) { return x * 3; }\n")
    command = [native] if front == "native" else [sys.executable, str(ROOT / "meshcc.py")]
    return command, dict(stand_in_env, MESHCC_VERBOSE="1", MESHCC_CONNECT_TIMEOUT="1",
                         MESHCC_CACHE_DIR=str(cwd / "cache"))


@pytest.mark.parametrize("front", ["native", "meshcc itself"])
def test_a_front_finding_the_agent_starting_compiles_here_if_a_slot_is_free(
        native: str, tmp_path: Path, stand_in_env: dict[str, str], front: str) -> None:
    """make -j starts a build's first compiles at once: the one that starts
    the agent waits for it; the others, while it starts, compile here in
    the local slots that are free (the CPUs would otherwise idle) — never
    with MESHCC_FALLBACK=0."""
    from .test_meshcc import STARTING
    command, env = front_and_env(native, front, tmp_path, stand_in_env)
    starting = Starting(env)
    try:
        done = subprocess.run([*command, "gcc", "-O2", "-c", "a.c"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stderr.startswith(STARTING) and done.stderr.count("\n") == 1, done.stderr
        assert (tmp_path / "a.o").read_bytes() == local_object(tmp_path, "-O2", "-c", "a.c")
        (tmp_path / "a.o").unlink()
        refused = subprocess.run([*command, "gcc", "-O2", "-c", "a.c"], cwd=tmp_path,
                                 env=dict(env, MESHCC_FALLBACK="0"), capture_output=True,
                                 text=True, timeout=120)
        assert refused.returncode == 1 and not (tmp_path / "a.o").exists()
        assert STARTING not in refused.stderr and "MESHCC_FALLBACK=0" in refused.stderr
    finally:
        starting.close()


@pytest.mark.parametrize("front", ["native", "meshcc itself"])
def test_an_agent_that_has_bound_its_socket_and_does_not_answer_is_not_starting(
        native: str, tmp_path: Path, stand_in_env: dict[str, str], front: str) -> None:
    """Its lock taken and its process id file there (its socket gone, or
    it is leaving): nothing compiles here as if it were starting; each
    compile waits MESHCC_CONNECT_TIMEOUT and says why it compiles here."""
    from .test_meshcc import STARTING
    command, env = front_and_env(native, front, tmp_path, stand_in_env)
    starting = Starting(env)
    try:
        starting.bound()
        done = subprocess.run([*command, "gcc", "-O2", "-c", "a.c"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        starting.close()
    assert done.returncode == 0 and (tmp_path / "a.o").is_file(), done.stderr
    assert STARTING not in done.stderr
    assert "compiling here: the meshcc agent did not start within 1 s" in done.stderr, \
        done.stderr


def test_with_no_local_slot_free_the_native_front_waits_for_the_agent(
        native: str, tmp_path: Path, stand_in_env: dict[str, str]) -> None:
    """While the agent starts and every local slot is taken, the native
    front neither compiles here nor waits for a slot: it waits for the
    agent (here none comes: after MESHCC_CONNECT_TIMEOUT meshcc itself takes
    over, and compiles here once a slot is free)."""
    from .test_meshcc import STARTING
    (tmp_path / "a.c").write_text("int a(int x) { return x * 3; }\n")
    env = dict(stand_in_env, MESHCC_VERBOSE="1", MESHCC_CONNECT_TIMEOUT="1")
    starting = Starting(env)
    try:
        starting.busy()
        front = subprocess.Popen([native, "gcc", "-O2", "-c", "a.c"], cwd=tmp_path, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def meshcc_itself() -> bool:     # the front has become meshcc itself
            try:
                words = Path(f"/proc/{front.pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                return False
            return os.fsencode(sys.executable) in words or b"-S" in words
        wait_for(meshcc_itself, 60, "the native front to hand over to meshcc itself")
        starting.free()
        _, err = front.communicate(timeout=120)
    finally:
        starting.close()
    # (meshcc itself then found a slot free, the agent still starting — or,
    # on a slow machine, gave up on the agent first and said so)
    assert front.returncode == 0, err
    assert err.startswith(STARTING) or "the meshcc agent did not start within 1 s" in err, err
    assert (tmp_path / "a.o").read_bytes() == local_object(tmp_path, "-O2", "-c", "a.c")


def test_a_thousand_compiles_put_no_join_or_quit_on_a_chat_screen(native: str, mesh: Mesh,
                                                                  tmp_path: Path) -> None:
    """A 1,000-file build through the native front, in four makes with a new
    agent (a new mesh connection) for each: a chat participant watching the
    mesh sees no join and no quit for any of it."""
    from .test_meshcc import stop_agents
    three(mesh)
    watcher = mesh.chat_client(mesh.nodes[2], "watcher")
    heard: list[tuple[str, dict]] = []
    watcher.listener = lambda kind, data: heard.append((kind, data))
    project = tmp_path / "p"
    project.mkdir()
    for i in range(1000):
        (project / f"f{i}.c").write_text(f"int f{i}(void) {{ return {i}; }}\n")
    batches = [" ".join(f"f{i}.o" for i in range(b, 1000, 4)) for b in range(4)]
    (project / "Makefile").write_text(
        "".join(f"b{b}: {objects}\n" for b, objects in enumerate(batches)) +
        "%.o: %.c\n\t$(CC) -c $< -o $@\n")
    env = env_for(mesh, MESHCC_CACHE="0", MESHCC_VERBOSE="1")
    on_mesh = 0
    for b in range(4):
        built = make(project, f"{native} gcc", env, f"b{b}")
        assert built.returncode == 0, built.stderr[-3000:]
        on_mesh += len(where_compiled(built.stderr))
        stop_agents()                                  # the next make: a new connection
    assert len(list(project.glob("f*.o"))) == 1000
    assert on_mesh >= 900, on_mesh       # (a few ran here while an agent started)
    mesh.chat_client(mesh.nodes[0], "talker")      # a chat user is announced
    wait_for(lambda: any(k == "join" and d.get("name") == "talker" for k, d in heard), 10,
             "the watcher to see a chat user join")
    assert [(k, d.get("name") or d.get("id")) for k, d in heard if k in ("join", "quit")] \
        == [("join", "talker")]
    seen = {u.name for u in watcher.users.values()}
    assert "talker" in seen and seen <= {"watcher", "talker"}, seen


@pytest.mark.parametrize("front", ["native", "meshcc itself"])
def test_a_killed_agents_process_id_file_goes_when_the_next_one_is_started(
        native: str, tmp_path: Path, stand_in_env: dict[str, str], front: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent killed outright leaves its process id file: the front that
    starts the next one removes it (holding the lock, it knows none lives),
    so that the other compiles take the new agent for one starting. (Here
    the new one cannot start at all — no interpreter — so nothing writes
    the file again.)"""
    from crc.cc.paths import pid_file, socket_path
    path = socket_path(stand_in_env)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    Path(pid_file(path)).write_text(f"{dead.pid}\n")
    if front == "native":
        subprocess.run([native, "gcc", "-c", "a.c"], cwd=tmp_path,
                       env=dict(stand_in_env, MESHCC_CONNECT_TIMEOUT="1", **NO_PYTHON),
                       capture_output=True, text=True, timeout=120)   # (fails: no Python)
    else:
        from crc.cc.wrapper import STARTED, start_agent
        monkeypatch.setenv("PYTHONHOME", "/nonexistent")              # (for the agent)
        assert start_agent(path) == STARTED
    assert not Path(pid_file(path)).exists()
