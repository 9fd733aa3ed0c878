"""``bench/faults.py --quick`` runs its loopback faults to the end and its
counts are clean: nothing lost, doubled or reordered (it exits non-zero
otherwise). Heal times depend on the machine and are not asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^(.+?)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)$")


@pytest.mark.timeout(200)
def test_quick_fault_run_loses_and_doubles_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "faults.py"), "--quick",
         "--only", "middle,own,sender,receiver"],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [m.groups() for line in proc.stdout.splitlines() if (m := ROW.match(line))]
    assert len(rows) == 4, proc.stdout
    for fault, sent, delivered, duplicated, lost, reordered, _heal in rows:
        assert int(sent) > 100 and int(delivered) >= int(sent), fault
        assert (int(duplicated), int(lost), int(reordered)) == (0, 0, 0), fault
