"""The C heap's thresholds for megabyte file chunks (``crc.net.heap``): set
once per process, on glibc; elsewhere nothing changes and nothing fails."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from crc.net import heap

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_thresholds_are_taken_by_glibc() -> None:
    # In a process of its own: the thresholds are the process's.
    out = subprocess.run([sys.executable, "-c", "from crc.net.heap import keep_chunk_buffers as k; "
                          "print(k(), k())"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.split() == ["True", "True"]


def test_they_are_set_once_and_a_missing_mallopt_changes_nothing(monkeypatch) -> None:
    calls: list = []
    monkeypatch.setattr(heap, "_applied", None)
    monkeypatch.setattr(heap, "_mallopt", lambda param, value: calls.append(param) or False)
    assert heap.keep_chunk_buffers() is False
    assert heap.keep_chunk_buffers() is False
    assert calls == [heap.M_MMAP_THRESHOLD]        # tried once; the second not after a refusal
