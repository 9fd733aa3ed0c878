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


def test_in_place_a_new_file_is_written_as_it_is_and_nothing_is_written_through(
        tmp_path: Path) -> None:
    """``in_place`` (a job's fresh scratch directory): a new file is written
    under its own name, with its mode; a name that is there already — a
    link to elsewhere, say — is replaced as ever, never written through."""
    import os
    files = LocalFiles(BlobStore(tmp_path / "store"))
    work = tmp_path / "work"
    work.mkdir()
    data = b"object bytes"
    sha = hashlib.sha256(data).hexdigest()
    files.write_back(FileRef("out.o", sha, len(data), 0o640), work, data, in_place=True)
    assert (work / "out.o").read_bytes() == data
    assert (work / "out.o").stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(work)) == ["out.o"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"not to be touched")
    (work / "dep.d").symlink_to(elsewhere)
    files.write_back(FileRef("dep.d", sha, len(data), 0o644), work, data, in_place=True)
    assert elsewhere.read_bytes() == b"not to be touched"
    assert not (work / "dep.d").is_symlink() and (work / "dep.d").read_bytes() == data
