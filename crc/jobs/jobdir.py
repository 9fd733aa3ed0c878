"""A job's working directory: filled with exactly its files, diffed afterwards.

``JobDir.create`` makes a fresh directory and copies the required blobs in
(copies, not links, so a job that edits a file in place cannot touch the
store). ``produced()`` lists the files the job created or changed, refusing
symlinks that point outside the directory. ``remove()`` deletes it all.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .rakefile import bad_relative_path


@dataclass(frozen=True)
class FileRef:
    name: str
    sha: str
    size: int
    mode: int = 0o644

    def to_json(self) -> dict:
        return {"name": self.name, "sha": self.sha, "size": self.size, "mode": self.mode}

    @classmethod
    def from_json(cls, data: dict) -> "FileRef":
        return cls(str(data["name"]), str(data["sha"]), int(data["size"]), int(data.get("mode", 0o644)))


class JobDirError(Exception):
    pass


class JobDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._before: dict[str, tuple[int, int]] = {}

    @classmethod
    def create(cls, parent: Path, label: str) -> "JobDir":
        parent.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:40]
        return cls(Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=parent)))

    def place(self, ref: FileRef, blob: Path) -> None:
        why = bad_relative_path(ref.name)
        if why:
            raise JobDirError(why)
        dest = self.path / ref.name
        if not dest.resolve().is_relative_to(self.path.resolve()):
            raise JobDirError(f"file name {ref.name!r} leaves the job directory")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(blob, dest)
        os.chmod(dest, ref.mode & 0o777)
        st = dest.stat()
        self._before[ref.name] = (st.st_size, st.st_mtime_ns)

    def produced(self) -> tuple[list[tuple[str, Path, int]], list[str]]:
        """(name, path, mode) of every new or changed file, and warnings."""
        out: list[tuple[str, Path, int]] = []
        warnings: list[str] = []
        root = self.path.resolve()
        for dirpath, dirnames, filenames in os.walk(self.path):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                full = Path(dirpath) / name
                rel = full.relative_to(self.path).as_posix()
                if full.is_symlink():
                    target = full.resolve()
                    if not target.is_relative_to(root):
                        warnings.append(f"{rel} is a symlink pointing outside the job directory; "
                                        "not returned")
                        continue
                    if not target.is_file():
                        continue
                st = full.stat()
                if not stat.S_ISREG(st.st_mode):
                    continue
                if self._before.get(rel) == (st.st_size, st.st_mtime_ns):
                    continue
                out.append((rel, full, stat.S_IMODE(st.st_mode)))
        out.sort()
        return out, warnings

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
