"""The relay benchmark's quick mode runs to the end and every message arrives.

``bench/relay.py --quick`` starts real server and forwarder processes and
measures them; this only checks that it completes and that its correctness
figures are clean (nothing lost, reordered or duplicated, convergence
reached). Its speed figures depend on the machine and are never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(150)
def test_quick_benchmark_completes_with_every_message_delivered_once(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "relay.py"), "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["errors"] == []

    assert [row["length"] for row in report["chains"]] == list(report["params"]["chains"])
    for row in report["chains"]:
        for path in ("mesh", "ceiling"):
            flow = row[path]["flow"]
            assert flow["received"] == flow["messages"] > 0, (row["length"], path)
            assert (flow["lost"], flow["reordered"], flow["duplicated"], flow["corrupt"]) \
                == (0, 0, 0, 0), (row["length"], path)
            assert row[path]["latency"]["rounds"] > 0

    conv = report["convergence"]
    assert conv["converged"] and conv["fewest_known"] == conv["clients"] - 1

    idle = report["idle"]
    assert idle["rss_many"] > 0 and idle["many_clients"] > 0
