"""The jobs benchmark's quick mode runs to the end and its mesh build works.

``bench/jobs.py --quick`` starts real servers and measures jobs, a file
transfer, chat under load and a small C build on the mesh; this only checks
that it completes and that the program the mesh built runs and prints what
the locally built one prints. Its speed figures depend on the machine and are
never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(150)
def test_quick_jobs_benchmark_completes_and_builds_a_working_program(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "jobs.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "jobs.py"), "--quick", "--keep", str(work),
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    report = json.loads(out.read_text())
    names = [f["name"] for f in report["figures"]]
    assert any("1 hop" in n for n in names) and any("wall time" in n for n in names)
    assert all(f["value"] > 0 for f in report["figures"])

    outputs = []
    for build in ("mesh", "local"):
        program = work / "build" / build / "program"
        assert program.is_file() and os.access(program, os.X_OK), program
        run = subprocess.run([str(program), "12"], capture_output=True, text=True, timeout=10)
        assert run.returncode == 0, run.stderr
        outputs.append(run.stdout)
    assert outputs[0] == outputs[1] and outputs[0].startswith("checksum ")
