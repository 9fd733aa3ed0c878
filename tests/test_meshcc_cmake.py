"""meshcc end to end with CMake: the unchanged example project in
examples/cproject, configured with meshcc as CMAKE_C_COMPILER_LAUNCHER and built
through a 3-server mesh. Every source of the project compiles on the mesh,
CMake's own compiler probes stay here, and the program runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .meshkit import Mesh
from .test_meshcc import ROOT, cold_build_placed, env_for, three, where_compiled

EXAMPLE = ROOT / "examples" / "cproject"
#: A CMake list: the launcher is "python meshcc.py", then the compiler CMake found.
LAUNCHER = f"{sys.executable};{ROOT / 'meshcc.py'}"
#: What a CMake probe compile looks like (compiler identification, try_compile).
PROBE = re.compile(r"CMakeC(XX)?CompilerId|CMakeFiles/(CMakeScratch|CMakeTmp)/|"
                   r"CMakeFiles/[0-9.]+/CompilerId")

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("cmake", "make", "gcc")),
    reason="needs cmake, make and gcc")


def run(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_cmake_project_builds_through_the_mesh_and_its_probes_stay_here(
        mesh: Mesh, tmp_path: Path) -> None:
    three(mesh)
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project)
    build = project / "build"
    env = env_for(mesh, MESHCC_VERBOSE="1", CC="gcc")
    env.pop("CMAKE_GENERATOR", None)

    configured = run(["cmake", "-S", str(project), "-B", str(build), "-G", "Unix Makefiles",
                      f"-DCMAKE_C_COMPILER_LAUNCHER={LAUNCHER}"], env, timeout=300)
    assert configured.returncode == 0, configured.stdout + configured.stderr
    built = run(["cmake", "--build", str(build), "-j4"], env, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr

    where = where_compiled(configured.stderr + built.stderr)
    # CMake names each source by its absolute path: match on the file name.
    probes = [source for source in where if PROBE.search(source)]
    assert probes == [], f"CMake probe compiles went to the mesh: {probes}"
    sources = sorted(p.name for p in project.glob("*.c"))
    assert len(sources) >= 4
    # (every compile on the mesh but those run here while the agent started)
    cold_build_placed(built.stderr, sources, lambda source: Path(source).name)
    assert set(where.values()) <= {"s1", "s2", "s3"}, where

    program = run([str(build / "program"), "12"], env, timeout=30)
    assert program.returncode == 0, program.stderr
    assert program.stdout.split() == ["square", "144", "cube", "1728", "sum_to", "78"]
