"""The job client's files on this machine (crc/client/jobs/local_files.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from crc.client.jobs.local_files import LocalFiles
from crc.jobs.files import FileRef
from crc.jobs.store import BlobStore


def test_a_produced_file_copied_from_an_earlier_copy_is_checked_first(tmp_path: Path) -> None:
    """Two produced files with the same bytes: the second is copied from where
    the first was put — unless that file changed since, when it is refused
    rather than written with other bytes."""
    files = LocalFiles(BlobStore(tmp_path / "store"))
    data = b"object bytes"
    sha = hashlib.sha256(data).hexdigest()
    files.write_back(FileRef("a.o", sha, len(data), 0o644), tmp_path, data)
    assert files.held[sha] == (tmp_path / "a.o", len(data))
    files.write_back(FileRef("b.o", sha, len(data), 0o644), tmp_path)     # copied from a.o
    assert (tmp_path / "b.o").read_bytes() == data
    (tmp_path / "b.o").write_bytes(b"edited by the user")
    with pytest.raises(FileNotFoundError, match="c.o: its content is gone"):
        files.write_back(FileRef("c.o", sha, len(data), 0o644), tmp_path)
    assert not (tmp_path / "c.o").exists()
