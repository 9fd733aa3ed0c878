"""meshcc end to end: an unchanged Makefile built through a 3-server mesh
(where each compile ran, byte-identical objects and dependency files, the
program runs), diagnostics exactly as the local compiler's, fallback and
MESHCC_FALLBACK=0, a server with another compiler never chosen, masquerade."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from crc.jobs.compilers import identity

from .meshkit import Mesh, wait_for

ROOT = Path(__file__).resolve().parent.parent
MESHCC = [sys.executable, str(ROOT / "meshcc.py")]
EXAMPLE = ROOT / "examples" / "cproject"
GCC = shutil.which("gcc")

pytestmark = pytest.mark.skipif(GCC is None or shutil.which("make") is None,
                                reason="needs gcc and make (.ci/run installs them)")


def env_for(mesh: Mesh | None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CRC_MESH", None)
    if mesh is not None:
        env["CRC_MESH"] = ",".join(f"127.0.0.1:{n.server.port}" for n in mesh.nodes[:1])
    env.update(extra)
    return env


def where_compiled(stderr: str) -> dict[str, str]:
    """``{source: server}`` from MESHCC_VERBOSE lines."""
    return dict(re.findall(r"meshcc: (\S+) compiled on (\S+)", stderr))


#: What meshcc says (MESHCC_VERBOSE) of a compile it ran here at once, a
#: local slot being free, while the agent another meshcc started was starting.
STARTING = "meshcc: compiling here: the meshcc agent is starting"


def cold_build_placed(stderr: str, sources: list[str],
                      name: Callable[[str], str] = str) -> dict[str, str]:
    """Where a build that started the agent compiled: every source on the
    mesh but those compiled here while the agent started (the compile that
    started it waited for it: at least one on the mesh). ``{source: server}``,
    each source as ``name`` gives it."""
    where = {name(source): server for source, server in where_compiled(stderr).items()}
    assert where and set(where) <= set(sources), stderr
    assert len(where) + stderr.count(STARTING) == len(sources), stderr
    return where


def make(project: Path, cc: str, env: dict[str, str], *targets: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-j4", f"CC={cc}", *targets], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


def copy_example(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project)
    return project


def three(mesh: Mesh, **options) -> None:
    a = mesh.add("s1", **options)
    b = mesh.add("s2", a, **options)
    mesh.add("s3", b, **options)
    mesh.wait_converged()


def test_a_makefile_builds_through_the_mesh_with_objects_as_a_local_build_makes_them(
        mesh: Mesh, tmp_path: Path) -> None:
    three(mesh)
    project = copy_example(tmp_path)
    cc = " ".join(MESHCC) + " gcc"
    built = make(project, cc, env_for(mesh, MESHCC_VERBOSE="1"))
    assert built.returncode == 0, built.stderr
    sources = sorted(p.name for p in project.glob("*.c"))
    where = cold_build_placed(built.stderr, sources)     # every compile ran on the mesh
    assert set(where.values()) <= {"s1", "s2", "s3"}
    assert "compiling here: not a compile (-c)" in built.stderr   # ... and the link here
    built_as_here(project)


def built_as_here(project: Path) -> dict[str, bytes]:
    """The example's program, as built, runs right, and its build folder holds
    what a local build (``make clean``, then ``CC=gcc``) puts there, byte for
    byte — objects (with -g) and dependency files alike: those files."""
    run = subprocess.run([str(project / "program"), "12"], capture_output=True, text=True,
                         timeout=30)
    assert run.stdout.split() == ["square", "144", "cube", "1728", "sum_to", "78"]
    mesh_objects = {p.name: p.read_bytes() for p in (project / "build").iterdir()}
    subprocess.run(["make", "clean"], cwd=project, check=True, capture_output=True)
    local = make(project, "gcc", env_for(None))
    assert local.returncode == 0, local.stderr
    local_objects = {p.name: p.read_bytes() for p in (project / "build").iterdir()}
    assert mesh_objects.keys() == local_objects.keys()
    for name in local_objects:
        assert mesh_objects[name] == local_objects[name], name
    return local_objects


WARNS = """#include <stdio.h>
#define TWICE(x) ((x) + (x))
int f(int a) { int unused; return TWICE(a); }
int main(void) { printf("%d\\n", f(2), 3); return 0; }
"""
FAILS = """#include "missing_nothing.h"
int main(void) { return undefined_name; }
"""
FAILS_HERE = """int main(void) { return undefined_name; }
"""


@pytest.mark.parametrize("text,status", [(WARNS, 0), (FAILS_HERE, 1), (FAILS, 1)],
                         ids=["warnings", "error", "missing header"])
def test_diagnostics_and_status_are_the_local_compilers(mesh: Mesh, tmp_path: Path,
                                                        text: str, status: int) -> None:
    three(mesh)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.c").write_text(text)
    words = ["-Wall", "-O2", "-c", "src/w.c", "-o", "w.o"]
    here = subprocess.run([GCC, *words], cwd=tmp_path, capture_output=True, text=True)
    local_object = (tmp_path / "w.o").read_bytes() if here.returncode == 0 else None
    (tmp_path / "w.o").unlink(missing_ok=True)
    there = subprocess.run([*MESHCC, "gcc", *words], cwd=tmp_path, env=env_for(mesh),
                           capture_output=True, text=True, timeout=120)
    assert here.returncode == status
    assert (there.returncode, there.stdout, there.stderr) == (here.returncode, here.stdout,
                                                              here.stderr)
    if local_object is not None:
        assert (tmp_path / "w.o").read_bytes() == local_object


def test_with_the_mesh_down_it_compiles_here_and_says_why_once(tmp_path: Path) -> None:
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    env = env_for(None, CRC_MESH="127.0.0.1:9", MESHCC_CONNECT_TIMEOUT="3")
    done = subprocess.run([*MESHCC, "gcc", "-c", "a.c"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("meshcc: a.c: compiling here:")
    assert "refused" in lines[0].lower()
    assert (tmp_path / "a.o").is_file()


def test_meshcc_fallback_0_fails_instead_and_leaves_no_object(tmp_path: Path) -> None:
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    env = env_for(None, CRC_MESH="127.0.0.1:9", MESHCC_FALLBACK="0",
                  MESHCC_CONNECT_TIMEOUT="3")
    done = subprocess.run([*MESHCC, "gcc", "-c", "a.c"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "MESHCC_FALLBACK=0" in done.stderr and "a.c" in done.stderr
    assert not (tmp_path / "a.o").exists()


def fake_gcc(folder: Path) -> Path:
    """A ``gcc`` that answers like gcc but is another program (another digest)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gcc"
    path.write_text(f"#!/bin/sh\n# not the same compiler\nexec {GCC} \"$@\"\n")
    path.chmod(0o755)
    return path


def test_only_a_server_with_the_same_compiler_is_chosen(mesh: Mesh, tmp_path: Path) -> None:
    other = fake_gcc(tmp_path / "other-bin")
    other_id = identity(str(other))["id"]
    real = identity(GCC)
    assert other_id != real["id"]
    a = mesh.add("s1", compilers={other_id: str(other)})
    b = mesh.add("s2", a, compilers={})
    mesh.add("s3", b, compilers={real["id"]: os.path.realpath(GCC)})
    mesh.wait_converged()
    project = tmp_path / "p"
    project.mkdir()
    for i in range(6):
        (project / f"f{i}.c").write_text(f"int f{i}(void) {{ return {i}; }}\n")
    for i in range(6):
        done = subprocess.run([*MESHCC, "gcc", "-O2", "-c", f"f{i}.c"], cwd=project,
                              env=env_for(mesh, MESHCC_VERBOSE="1"), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert where_compiled(done.stderr) == {f"f{i}.c": "s3"}


def test_no_server_with_the_compiler_means_here_with_a_note(mesh: Mesh, tmp_path: Path) -> None:
    mesh.add("s1", compilers={})
    mesh.wait_converged()
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    done = subprocess.run([*MESHCC, "gcc", "-c", "a.c"], cwd=tmp_path, env=env_for(mesh),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "no server has this compiler" in done.stderr
    assert (tmp_path / "a.o").is_file()


def test_masquerading_as_gcc_finds_the_real_one_further_on_path(mesh: Mesh,
                                                                tmp_path: Path) -> None:
    three(mesh)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "meshcc"             # what pip's console script would be
    launcher.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                        "from crc.cc.wrapper import main\nsys.exit(main())\n")
    launcher.chmod(0o755)
    (bin_dir / "gcc").symlink_to("meshcc")
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    env = env_for(mesh, MESHCC_VERBOSE="1", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["gcc", "-O2", "-c", "a.c"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert where_compiled(done.stderr).get("a.c") in {"s1", "s2", "s3"}
    linked = subprocess.run(["gcc", "a.o", "-shared", "-o", "liba.so"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert linked.returncode == 0 and (tmp_path / "liba.so").is_file()


def compile_verbose(cwd: Path, mesh: Mesh, *words: str, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*MESHCC, "gcc", *words], cwd=cwd,
                          env=env_for(mesh, MESHCC_VERBOSE="1", **env), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def local_object(cwd: Path, *words: str) -> bytes:
    out = cwd / "local-check.o"
    subprocess.run([GCC, *words, "-o", str(out)], cwd=cwd, check=True, timeout=120)
    data = out.read_bytes()
    out.unlink()
    return data


def test_the_compile_cache_answers_a_repeat_anywhere_and_never_serves_a_stale_object(
        mesh: Mesh, tmp_path: Path) -> None:
    three(mesh)
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "k.h").write_text("#define K 41\n")
    (tmp_path / "a.c").write_text('#include "k.h"\nint a(void) { return K + 1; }\n')
    words = ["-O2", "-g", "-Iinc", "-MMD", "-c", "a.c", "-o", "a.o"]
    first = compile_verbose(tmp_path, mesh, *words)
    assert " compiled on " in first.stderr and "compile cache" not in first.stderr
    expected = local_object(tmp_path, *words[:-2])
    assert (tmp_path / "a.o").read_bytes() == expected
    deps = (tmp_path / "a.d").read_text()
    for name in ("a.o", "a.d"):
        (tmp_path / name).unlink()
    # Here again: nothing is preprocessed or sent; object and dependencies as before.
    again = compile_verbose(tmp_path, mesh, *words)
    assert "a.c from the local compile cache" in again.stderr, again.stderr
    assert (tmp_path / "a.o").read_bytes() == expected
    assert (tmp_path / "a.d").read_text() == deps
    # Another client (its own local cache): the mesh's cache answers.
    elsewhere = compile_verbose(tmp_path, mesh, *words,
                                MESHCC_CACHE_DIR=str(tmp_path / "other-cache"))
    assert re.search(r"a\.c from the compile cache on s[123]", elsewhere.stderr), elsewhere.stderr
    assert (tmp_path / "a.o").read_bytes() == expected
    # A header changes: neither cache has it.
    (tmp_path / "inc" / "k.h").write_text("#define K 42\n")
    changed = compile_verbose(tmp_path, mesh, *words)
    assert " compiled on " in changed.stderr and "compile cache" not in changed.stderr
    assert (tmp_path / "a.o").read_bytes() == local_object(tmp_path, *words[:-2])
    # Another option, another key.
    other = compile_verbose(tmp_path, mesh, "-O1", *words[1:])
    assert " compiled on " in other.stderr
    # Without the caches, it compiles.
    off = compile_verbose(tmp_path, mesh, *words, MESHCC_CACHE="0")
    assert " compiled on " in off.stderr and "compile cache" not in off.stderr


def test_a_header_changed_behind_its_timestamps_back_is_still_noticed(mesh: Mesh,
                                                                      tmp_path: Path) -> None:
    three(mesh)
    header = tmp_path / "k.h"
    header.write_text("#define K 1\n")
    (tmp_path / "a.c").write_text('#include "k.h"\nint a(void) { return K; }\n')
    compile_verbose(tmp_path, mesh, "-O2", "-c", "a.c")
    before = os.stat(header)
    header.write_text("#define K 2\n")             # same size, same second
    os.utime(header, ns=(before.st_atime_ns, before.st_mtime_ns))
    done = compile_verbose(tmp_path, mesh, "-O2", "-c", "a.c")
    assert "local compile cache" not in done.stderr
    assert (tmp_path / "a.o").read_bytes() == local_object(tmp_path, "-O2", "-c", "a.c")


def test_sources_using_the_time_of_the_compile_are_never_cached(mesh: Mesh,
                                                                 tmp_path: Path) -> None:
    three(mesh)
    (tmp_path / "t.h").write_text("static const char *when = __DATE__ \" \" __TIME__;\n")
    (tmp_path / "t.c").write_text('#include "t.h"\nconst char *stamp(void) { return when; }\n')
    for _ in range(2):
        done = compile_verbose(tmp_path, mesh, "-O2", "-c", "t.c")
        assert " compiled on " in done.stderr and "not cached: uses __DATE__" in done.stderr


def test_job_connections_are_never_announced_to_chat_participants(mesh: Mesh,
                                                                   tmp_path: Path) -> None:
    three(mesh)
    watcher = mesh.chat_client(mesh.nodes[2], "watcher")
    heard: list[tuple[str, dict]] = []
    watcher.listener = lambda kind, data: heard.append((kind, data))
    talker = mesh.chat_client(mesh.nodes[0], "talker")      # a chat user is announced...
    wait_for(lambda: any(k == "join" and d.get("name") == "talker" for k, d in heard), 10,
             "the watcher to see a chat user join")
    project = tmp_path / "p"
    project.mkdir()
    for i in range(12):
        (project / f"f{i}.c").write_text(f"int f{i}(void) {{ return {i}; }}\n")
    env = env_for(mesh, MESHCC_CACHE="0")
    for i in range(12):                               # ... a build's connections are not
        done = subprocess.run([*MESHCC, "gcc", "-c", f"f{i}.c"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and (project / f"f{i}.o").is_file(), done.stderr
        if i % 4 == 3:                                # a new agent: a new connection
            stop_agents()
    for _ in range(3):
        ran = subprocess.run([sys.executable, str(ROOT / "chat_client.py"), "--server",
                              env["CRC_MESH"], "run", "--", "true"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
    talker.finish("bye")
    wait_for(lambda: any(k == "quit" for k, d in heard), 10, "the watcher to see talker quit")
    joins_and_quits = [(k, d.get("name") or d.get("id")) for k, d in heard
                       if k in ("join", "quit")]
    assert joins_and_quits == [("join", "talker"), ("quit", "talker")]
    assert all(u.name in ("watcher", "talker") for u in watcher.users.values())


def stop_agents() -> None:
    """Kill this test's meshcc agents and wait until their sockets are gone."""
    folder = Path(os.environ["XDG_RUNTIME_DIR"])
    for pid_file in folder.rglob("*.pid"):
        try:
            os.kill(int(pid_file.read_text()), 9)
        except (OSError, ValueError):
            pass
    wait_for(lambda: not list(folder.rglob("*.pid")) or all(
        not Path(f"/proc/{p.read_text().strip()}").exists() for p in folder.rglob("*.pid")),
        10, "the agents to go")


def slow_gcc(folder: Path, started: Path) -> Path:
    """A compiler that, while the file named by ``$SLOW_GATE`` exists, says it
    started and waits (the servers of a test see the variable, meshcc not)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "slowgcc"
    path.write_text(f"#!/bin/sh\ncase \" $* \" in *\" -c \"*)\n"
                    f"  if [ -n \"$SLOW_GATE\" ] && [ -e \"$SLOW_GATE\" ]; then touch {started}; "
                    f"while [ -e \"$SLOW_GATE\" ]; do sleep 0.05; done; fi;;\nesac\n"
                    f"exec {GCC} \"$@\"\n")
    path.chmod(0o755)
    return path


def test_a_server_lost_mid_compile_means_here_with_a_note(
        mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, started = tmp_path / "gate", tmp_path / "started"
    slow = slow_gcc(tmp_path / "bin", started)
    slow_id = identity(str(slow))["id"]
    monkeypatch.setenv("SLOW_GATE", str(gate))
    a = mesh.add("s1", compilers={})
    mesh.add("s2", a, compilers={slow_id: str(slow)})
    mesh.wait_converged()
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    gate.touch()
    env = env_for(mesh, MESHCC_CACHE="0")
    env.pop("SLOW_GATE")
    proc = subprocess.Popen([*MESHCC, str(slow), "-O2", "-c", "a.c"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(started.exists, 60, "the compile to start on s2")
        mesh.nodes[1].kill()
        out, err = proc.communicate(timeout=120)
    finally:
        gate.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err.startswith("meshcc: a.c: compiling here:") and len(err.splitlines()) == 1, err
    assert "s2" in err
    assert (tmp_path / "a.o").read_bytes() == local_object(tmp_path, "-O2", "-c", "a.c")


def test_a_compile_past_meshcc_timeout_means_here_with_a_note(
        mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, started = tmp_path / "gate", tmp_path / "started"
    slow = slow_gcc(tmp_path / "bin", started)
    monkeypatch.setenv("SLOW_GATE", str(gate))
    mesh.add("s1", compilers={identity(str(slow))["id"]: str(slow)})
    mesh.wait_converged()
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    gate.touch()
    env = env_for(mesh, MESHCC_TIMEOUT="1", MESHCC_CACHE="0")
    env.pop("SLOW_GATE")
    try:
        done = subprocess.run([*MESHCC, str(slow), "-c", "a.c"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        gate.unlink(missing_ok=True)
    assert started.exists()                         # it was running there
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("meshcc: a.c: compiling here:") and \
        "MESHCC_TIMEOUT" in done.stderr, done.stderr
    assert (tmp_path / "a.o").is_file()


def test_with_a_mesh_secret_only_a_client_that_proves_it_compiles_there(
        mesh: Mesh, tmp_path: Path) -> None:
    secret = b"meshcc test secret, long enough to count" * 2
    three(mesh, server_options={"secret": secret})
    good = tmp_path / "secret"
    good.write_bytes(secret)
    good.chmod(0o600)
    bad = tmp_path / "wrong"
    bad.write_bytes(b"x" * len(secret))
    bad.chmod(0o600)
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    proven = compile_verbose(tmp_path, mesh, "-c", "a.c", CRC_MESH_SECRET_FILE=str(good),
                             MESHCC_CACHE="0")
    assert re.search(r"a\.c compiled on s[123]", proven.stderr), proven.stderr
    for extra in ({}, {"CRC_MESH_SECRET_FILE": str(bad)}):
        (tmp_path / "a.o").unlink()
        done = subprocess.run([*MESHCC, "gcc", "-c", "a.c"], cwd=tmp_path,
                              env=env_for(mesh, MESHCC_CACHE="0", **extra),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and (tmp_path / "a.o").is_file()
        assert done.stderr.startswith("meshcc: a.c: compiling here:"), done.stderr


def test_work_done_here_takes_at_most_one_slot_per_cpu(tmp_path: Path) -> None:
    """make -j with many more jobs than CPUs: meshcc runs at most CPU-count
    compilers here at once (links, fallbacks, preprocessing alike)."""
    assert most_at_once_here(MESHCC, tmp_path, env_for(None)) == (os.cpu_count() or 1)


def most_at_once_here(front: list[str], tmp_path: Path, env: dict[str, str]) -> int:
    """Run three times as many links as CPUs (and two) through ``front`` at
    once, each a compiler that runs a second; how many ran here at once at
    most (each one started also ended, and each exited 0)."""
    log = tmp_path / "log"
    busy = tmp_path / "busycc"
    busy.write_text(f"#!/bin/sh\necho start $$ >> {log}\nsleep 1\necho end $$ >> {log}\n"
                    "exit 0\n")
    busy.chmod(0o755)
    jobs = [subprocess.Popen([*front, str(busy), "-o", f"prog{i}", f"x{i}.o"], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(3 * (os.cpu_count() or 1) + 2)]
    for job in jobs:
        job.communicate(timeout=120)
        assert job.returncode == 0
    running = peak = 0
    for line in log.read_text().split("\n"):
        if line.startswith("start"):
            running += 1
            peak = max(peak, running)
        elif line.startswith("end"):
            running -= 1
    assert running == 0
    return peak


def test_a_response_file_is_followed_and_the_compile_goes_to_the_mesh(mesh: Mesh,
                                                                       tmp_path: Path) -> None:
    three(mesh)
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "k.h").write_text("#define K 5\n")
    (tmp_path / "src").mkdir()          # (a source in a directory keeps its path there)
    (tmp_path / "src" / "a.c").write_text('#include "k.h"\nint a(void) { return K; }\n')
    (tmp_path / "flags.rsp").write_text("-O2 -g '-Iinc'\n-c src/a.c -o a.o\n")
    done = compile_verbose(tmp_path, mesh, "@flags.rsp")
    assert re.search(r"a\.c compiled on s[123]", done.stderr), done.stderr
    assert (tmp_path / "a.o").read_bytes() == local_object(tmp_path, "-O2", "-g", "-Iinc", "-c",
                                                          "src/a.c")


@pytest.mark.parametrize("env,named", [
    ({"CRC_MESH_SECRET_FILE": "/nonexistent/secret"}, "CRC_MESH_SECRET_FILE"),
    ({"CRC_MESH": "127.0.0.1:notaport"}, "CRC_MESH"),
], ids=["secret file", "mesh address"])
def test_an_unusable_setting_is_named_in_the_note_at_once(tmp_path: Path, env: dict,
                                                           named: str) -> None:
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    settings = {"CRC_MESH": "127.0.0.1:9", "MESHCC_CONNECT_TIMEOUT": "30", **env}
    done = subprocess.run([*MESHCC, "gcc", "-c", "a.c"], cwd=tmp_path,
                          env=env_for(None, **settings), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and (tmp_path / "a.o").is_file()
    assert done.stderr.startswith("meshcc: a.c: compiling here:") and named in done.stderr, \
        done.stderr
    assert "did not start" not in done.stderr


def test_meshcc_processes_starting_at_once_start_one_agent(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """``make -j`` starts many meshcc at once with no agent running: the
    first takes the agent's lock and hands it to the agent it starts; the
    others see it taken and wait for that agent instead of starting their own
    (each extra one cost a whole interpreter and its imports)."""
    from crc.cc.paths import pid_file, socket_path
    from crc.cc.wrapper import start_agent
    path = socket_path({"CRC_MESH": "127.0.0.1:9"})
    forked: list[int] = []
    real_fork = os.fork

    def counting_fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counting_fork)
    for _ in range(5):
        start_agent(path)
    assert len(forked) == 1
    pid = wait_for(lambda: os.path.exists(pid_file(path)) and
                   int(Path(pid_file(path)).read_text()), 30, "the agent to start")
    assert os.path.exists(path)
    os.kill(pid, 9)
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or
             "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], 10, "the agent to go")
    forked.clear()
    start_agent(path)                      # its lock went with it: a new one is started
    assert len(forked) == 1
    wait_for(lambda: os.path.exists(pid_file(path)) and
             int(Path(pid_file(path)).read_text() or 0) not in (0, pid), 30,
             "a second agent to start")     # (the killed one's file went first)


def test_an_agent_started_by_a_meshcc_without_stdin_stdout_stderr_holds_its_lock(
        tmp_path: Path) -> None:
    """With descriptors 0-2 closed, the lock would get one of them, which the
    agent's start points at /dev/null: it is moved above them first."""
    import fcntl
    from crc.cc.paths import pid_file, socket_path
    path = socket_path({"CRC_MESH": "127.0.0.1:8"})
    code = ("import os, sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from crc.cc.wrapper import start_agent\n"
            "for fd in (0, 1, 2):\n    os.close(fd)\n"
            f"start_agent({path!r})\n")
    done = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert done.returncode == 0
    pid = wait_for(lambda: os.path.exists(pid_file(path)) and
                   int(Path(pid_file(path)).read_text() or 0), 30, "the agent to start")
    try:
        fd = os.open(path + ".lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # the agent has it
        finally:
            os.close(fd)
    finally:
        os.kill(pid, 9)
