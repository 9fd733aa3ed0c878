"""Fixtures shared by the in-process tests (``tests/meshkit.py`` has the machinery)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from .meshkit import Mesh
from .test_blackbox import Processes


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    """An empty in-process mesh; everything in it is stopped afterwards."""
    m = Mesh(tmp_path / "servers")
    yield m
    m.close()


@pytest.fixture(autouse=True)
def meshcc_agents(request: pytest.FixtureRequest,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Path | None]:
    """meshcc tests: agents live in a directory of the test's own (meshcc and
    its agents find it through ``XDG_RUNTIME_DIR``) and are stopped after it."""
    if not request.module.__name__.rsplit(".", 1)[-1].startswith("test_meshcc"):
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="mcc-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    monkeypatch.setenv("MESHCC_CACHE_DIR", str(folder / "cache"))
    # A runtime directory too long for a socket's name puts the agent's
    # folder in /tmp instead (crc.cc.paths.agent_dir): those the test made
    # go with it too.
    elsewhere = f"crc-meshcc-{os.getuid()}-"
    before = {p.name for p in Path("/tmp").iterdir() if p.name.startswith(elsewhere)}
    try:
        yield folder
    finally:
        made = [p for p in Path("/tmp").iterdir()
                if p.name.startswith(elsewhere) and p.name not in before]
        for place in [folder, *made]:
            for pid_file in place.rglob("*.pid"):
                try:
                    pid = int(pid_file.read_text())
                    if b"crc.cc.agent" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, signal.SIGKILL)    # (a test may name another)
                except (OSError, ValueError):
                    pass
            shutil.rmtree(place, ignore_errors=True)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Child processes a test starts (real servers and clients); whatever is
    still running at the end is stopped."""
    registry = Processes(tmp_path / "tmp")
    try:
        yield registry
    finally:
        registry.cleanup()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The client's working directory (its files go out from and come back to here)."""
    d = tmp_path / "work"
    d.mkdir()
    return d
