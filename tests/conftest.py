"""Fixtures shared by the in-process tests (``tests/meshkit.py`` has the machinery)."""

from __future__ import annotations

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
