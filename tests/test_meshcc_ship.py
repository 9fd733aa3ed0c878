"""meshcc shipping sources (``crc.cc.ship``): compiles whose source and
headers travel as they are, compiled from source over there, come back as a
local compile would have made them — the object byte for byte (with ``-g``
too: paths in the debug information are this machine's), the dependency
file character for character — and compiles it cannot ship are
preprocessed here instead, still right."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .meshkit import Mesh
from .test_meshcc import GCC, MESHCC, env_for, three

GXX = shutil.which("g++")
pytestmark = pytest.mark.skipif(GCC is None, reason="needs gcc (.ci/run installs it)")


def project(root: Path) -> Path:
    """A small tree: sources under src/, headers in three kinds of directory."""
    (root / "proj" / "src").mkdir(parents=True)
    (root / "proj" / "include").mkdir()
    (root / "proj" / "quoted").mkdir()
    (root / "proj" / "first").mkdir()
    (root / "proj" / "second").mkdir()
    (root / "proj" / "build").mkdir()
    (root / "proj" / "include" / "util.h").write_text(
        "#ifndef UTIL_H\n#define UTIL_H\n#include <stdio.h>\n#include <stdlib.h>\n"
        '#include "detail/more.h"\n#define WHERE __FILE__\n'
        "static inline int twice(int x) { return 2 * x; }\n#endif\n")
    (root / "proj" / "include" / "detail").mkdir()
    (root / "proj" / "include" / "detail" / "more.h").write_text("#define MORE 3\n")
    (root / "proj" / "quoted" / "q.h").write_text("#define Q 5\n")
    (root / "proj" / "first" / "layer.h").write_text(
        "#define FIRST 1\n#include_next <layer.h>\n")
    (root / "proj" / "second" / "layer.h").write_text("#define SECOND 2\n")
    (root / "proj" / "pre.h").write_text("#define PRE 7\n")
    (root / "proj" / "src" / "a.c").write_text(
        '#include "util.h"\n#include "q.h"\n#include <layer.h>\n#include <assert.h>\n'
        '#if __has_include("optional.h")\n#include "optional.h"\n#else\n#define OPT 0\n#endif\n'
        "int main(int argc, char **argv) {\n"
        '    assert(argc > 0);\n'
        '    printf("%s %s %d\\n", WHERE, __FILE__, twice(argc) + MORE + Q + FIRST + SECOND'
        " + PRE + OPT);\n    return 0;\n}\n")
    (root / "proj" / "src" / "optional.h").write_text("#define OPT 11\n")
    return root / "proj"


def both_ways(cwd: Path, mesh: Mesh, compiler: str, words: list[str], output: Path,
              depfile: Path | None, **env: str) -> str:
    """Compile here, then through meshcc; the objects and dependency files
    must be the same. meshcc's MESHCC_VERBOSE text."""
    here = subprocess.run([compiler, *words], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert here.returncode == 0, here.stderr
    expected = output.read_bytes()
    expected_deps = depfile.read_text() if depfile is not None else None
    output.unlink()
    if depfile is not None:
        depfile.unlink()
    there = subprocess.run([*MESHCC, compiler, *words], cwd=cwd,
                           env=env_for(mesh, MESHCC_VERBOSE="1", MESHCC_CACHE="0", **env),
                           capture_output=True, text=True, timeout=120)
    assert there.returncode == 0, there.stderr
    assert " compiled on " in there.stderr, there.stderr
    assert output.read_bytes() == expected
    if depfile is not None:
        assert depfile.read_text() == expected_deps
    return there.stderr


@pytest.mark.parametrize("options", [
    ["-O2", "-MD", "-MP"],
    ["-O2", "-g", "-MMD"],
    ["-g", "-O0", "-MD", "-MT", "custom target", "-MQ", "$weird"],
], ids=["deps-phony", "debug-mmd", "debug-targets"])
def test_a_shipped_compile_makes_what_a_local_one_makes(mesh: Mesh, tmp_path: Path,
                                                        options: list[str]) -> None:
    three(mesh)
    proj = project(tmp_path)
    # Every way of naming a header directory, an absolute source, a relative
    # -I that climbs out of the working directory, -include: all shipped.
    build = proj / "build"
    words = [*options, "-I../include", f"-I{proj / 'first'}", "-isystem", str(proj / "second"),
             "-iquote", "../quoted", "-include", str(proj / "pre.h"),
             "-c", str(proj / "src" / "a.c"), "-o", "objs/a.o"]
    (build / "objs").mkdir()
    verbose = both_ways(build, mesh, "gcc", words, build / "objs" / "a.o",
                        build / "objs" / "a.d")
    assert "preprocessing here" not in verbose and "shipping" in verbose, verbose


def test_the_program_built_from_shipped_objects_runs_as_the_local_one(mesh: Mesh,
                                                                       tmp_path: Path) -> None:
    three(mesh)
    proj = project(tmp_path)
    words = ["-O2", "-Iinclude", "-Ifirst", "-Isecond", "-iquote", "quoted", "-include",
             "pre.h", "-c", "src/a.c", "-o", "a.o"]
    verbose = both_ways(proj, mesh, "gcc", words, proj / "a.o", None)
    assert "preprocessing here" not in verbose, verbose
    linked = subprocess.run([GCC, "a.o", "-o", "a"], cwd=proj, capture_output=True, timeout=60)
    assert linked.returncode == 0
    ran = subprocess.run([str(proj / "a")], capture_output=True, text=True, timeout=30)
    # __FILE__ names the path given here; __has_include saw optional.h (OPT 11).
    assert ran.stdout == "src/a.c src/a.c 31\n"


@pytest.mark.skipif(GXX is None, reason="needs g++")
def test_a_shipped_cxx_compile_with_the_standard_library_matches_too(mesh: Mesh,
                                                                      tmp_path: Path) -> None:
    three(mesh)
    (tmp_path / "v.cc").write_text(
        "#include <iostream>\n#include <vector>\n#include <string>\n"
        "int main() { std::vector<std::string> v{\"a\", \"b\"};\n"
        "  for (auto &s : v) std::cout << s << __FILE__ << '\\n'; }\n")
    words = ["-O1", "-g", "-MD", "-c", "v.cc", "-o", "v.o"]
    verbose = both_ways(tmp_path, mesh, "g++", words, tmp_path / "v.o", tmp_path / "v.d")
    assert "preprocessing here" not in verbose, verbose


def test_a_computed_include_is_preprocessed_here_and_still_right(mesh: Mesh,
                                                                  tmp_path: Path) -> None:
    three(mesh)
    (tmp_path / "conf.h").write_text("#define VALUE 9\n")
    (tmp_path / "c.c").write_text('#define CONF "conf.h"\n#include CONF\n'
                                  "int value(void) { return VALUE; }\n")
    words = ["-O2", "-MD", "-c", "c.c", "-o", "c.o"]
    verbose = both_ways(tmp_path, mesh, "gcc", words, tmp_path / "c.o", tmp_path / "c.d")
    assert "preprocessing here: c.c: #include CONF" in verbose, verbose


def test_meshcc_ship_0_preprocesses_every_compile_here(mesh: Mesh, tmp_path: Path) -> None:
    three(mesh)
    proj = project(tmp_path)
    words = ["-O2", "-MD", "-Iinclude", "-Ifirst", "-Isecond", "-iquote", "quoted",
             "-include", "pre.h", "-c", "src/a.c", "-o", "a.o"]
    verbose = both_ways(proj, mesh, "gcc", words, proj / "a.o", proj / "a.d",
                        MESHCC_SHIP="0")
    assert "shipping" not in verbose and "preprocessed" in verbose, verbose


def test_a_changed_header_is_shipped_again(mesh: Mesh, tmp_path: Path) -> None:
    """The agent remembers what it read of each file, by its stat: a header
    rewritten between two compiles (same size, same second) is read again."""
    three(mesh)
    (tmp_path / "k.h").write_text("#define K 41\n")
    (tmp_path / "k.c").write_text('#include "k.h"\nint k(void) { return K; }\n')
    words = ["-O2", "-c", "k.c", "-o", "k.o"]
    both_ways(tmp_path, mesh, "gcc", words, tmp_path / "k.o", None)
    (tmp_path / "k.h").write_text("#define K 42\n")
    both_ways(tmp_path, mesh, "gcc", words, tmp_path / "k.o", None)


def test_preprocessed_here_a_g_compile_of_a_source_elsewhere_is_still_right(
        mesh: Mesh, tmp_path: Path) -> None:
    """The earlier way (MESHCC_SHIP=0) cannot give the job directory the
    source's own path, which -g records: such a compile is done here."""
    three(mesh)
    proj = project(tmp_path)
    words = ["-O2", "-g", f"-I{proj / 'include'}", f"-I{proj / 'first'}", f"-I{proj / 'second'}",
             "-iquote", str(proj / "quoted"), "-include", str(proj / "pre.h"),
             "-c", str(proj / "src" / "a.c"), "-o", "a.o"]
    here = subprocess.run([GCC, *words], cwd=proj / "build", capture_output=True, timeout=120)
    assert here.returncode == 0
    expected = (proj / "build" / "a.o").read_bytes()
    (proj / "build" / "a.o").unlink()
    there = subprocess.run([*MESHCC, "gcc", *words], cwd=proj / "build",
                           env=env_for(mesh, MESHCC_VERBOSE="1", MESHCC_CACHE="0",
                                       MESHCC_SHIP="0"),
                           capture_output=True, text=True, timeout=120)
    assert there.returncode == 0, there.stderr
    assert "-g with the source outside the working directory" in there.stderr
    assert (proj / "build" / "a.o").read_bytes() == expected
