"""The compiler-wrapper benchmark's quick mode runs to the end.

``bench/cc.py --quick`` builds a small generated project locally, with
distcc when it is installed, with meshcc over three real servers (cold, from
its local cache, from the mesh's cache) and as a Rakefile, and fails if any
build fails or the programs disagree. This checks that it completes and that
meshcc's builds went where they say; speed figures are never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_quick_cc_benchmark_completes_and_every_build_agrees(tmp_path: Path) -> None:
    out = tmp_path / "cc.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cc.py"), "--quick",
                           "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    files = report["files"]
    assert report["front"] == "native"                       # meshcc --launcher's
    for cold in ("meshcc_cold", "meshcc_cold_pre"):          # (the latter preprocessed here)
        # Every compile on the mesh, but those run here while the agent
        # started (a local slot free; the front that started it waited).
        row = report[cold]
        assert row["remote"] >= 1 and row["remote"] + row["while_starting"] == files, row
    # Every one from the local cache, but those compiled here in the cold
    # build (not recorded there): they go to the mesh this time.
    warm = report["meshcc_warm"]
    assert warm["local"] == report["meshcc_cold"]["remote"], warm
    assert warm["local"] + warm["remote"] == files, warm
    assert report["meshcc_warm_mesh"]["cached"] == files     # ... and from the mesh's
    checksums = {report[k]["checksum"] for k in ("make_j2", "meshcc_cold", "meshcc_cold_pre",
                                                 "meshcc_warm", "meshcc_warm_mesh", "rakefile",
                                                 "rakefile_remote_link", "py_gcc")}
    assert len(checksums) == 1 and checksums.pop().startswith("checksum ")
    # Each build's ratio is to make -j2 measured either side of it.
    for key in ("meshcc_cold", "meshcc_cold_pre", "meshcc_warm", "meshcc_warm_mesh", "rakefile",
                "py_gcc"):
        row = report[key]
        assert row["baseline_s"] > 0
        assert row["ratio"] == pytest.approx(row["seconds"] / row["baseline_s"], abs=0.002)
        assert row["idle_cpu"] >= 0
    # With distcc here, the Rakefile build and a cold meshcc build are also
    # set head to head against distcc builds either side of them (each build
    # checked like the others, every meshcc compile on the mesh).
    if report["distcc"]:
        pairs = report["head_to_head"]
        assert len(pairs["first_s"]) == 2
        for tool in ("rakefile", "meshcc_cold", "meshcc_cold_python"):
            row = pairs[tool]
            assert len(row["s"]) == 1 and len(row["idle_cpu"]) == 1
            assert row["ratios"][0] == pytest.approx(
                row["s"][0] / (sum(pairs["first_s"]) / 2), abs=0.002)
            assert row["printed"][0].startswith("checksum ")
