"""A job's working directory: filled with exactly its files, diffed afterwards.

``JobDir.create`` makes a fresh directory and puts the required blobs in,
hard-linked when the caller allows it (no other live job has that blob
linked), copied otherwise. A link costs a directory entry; a copy costs a
new file, which on some file systems takes a millisecond of CPU (ext4 on
the development VM: 0.8-1.0 ms per file against 30 µs per link), and a
dozen per compile. A job may edit a linked file in place, which edits the
stored blob too; ``produced()`` notices (size, mtime or ctime changed: a
write always moves ctime, and no job can set it back) and lists it in
``tainted``, and the caller drops that blob from the store. A copy taken
while another job has the blob linked is checked against the fingerprint
the blob had when it was linked, so an edit in place never reaches a second
job. ``produced()`` lists the files the job created or changed, refusing
symlinks that point outside the directory. ``release()`` unlinks the names
that share an inode with the store (linked inputs, produced files the store
took), so that removing the directory later never moves the ctime of a
blob another job has linked meanwhile; ``remove()`` deletes it all (a
finished job's directory goes to a ``crc.jobs.files.Sweeper`` instead).

Server side only: the client never runs a job in a directory of its own.
It runs nothing and knows no loop or frame: the executor starts the job in
it.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from ...jobs.files import FileRef
from ...jobs.rakefile import bad_relative_path


class JobDirError(Exception):
    pass


Fingerprint = tuple[int, int, int]


def fingerprint(st: os.stat_result) -> Fingerprint:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _copy(source: Path, dest: Path, mode: int, expect: Fingerprint | None) -> Fingerprint:
    """Copy ``source`` into ``dest`` with exactly ``mode``; the copy's fingerprint.
    ``expect``: the fingerprint ``source`` must still have.

    A job places a dozen files or more, on file systems where every path
    lookup and metadata change can cost a millisecond under load: each name is
    looked up once, and the new file is filled, given its mode and measured
    through its descriptor."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if expect is not None and fingerprint(os.fstat(src)) != expect:
            raise JobDirError(f"stored file {source.name[:12]} was changed in place by a job "
                              "that has it linked; not used")
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        try:
            left = os.fstat(src).st_size
            while left > 0:
                sent = os.sendfile(out, src, None, left)
                if not sent:
                    raise JobDirError(f"{source.name} shrank while being copied")
                left -= sent
            os.fchmod(out, mode)
            return fingerprint(os.fstat(out))
        finally:
            os.close(out)
    finally:
        os.close(src)


class JobDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._before: dict[str, Fingerprint] = {}
        #: name -> sha of the files placed as hard links to store blobs.
        self.linked: dict[str, str] = {}
        #: shas of linked blobs the job changed (filled by ``produced``).
        self.tainted: list[str] = []
        self._produced: list[Path] = []

    @classmethod
    def create(cls, parent: Path, label: str) -> "JobDir":
        parent.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:40]
        return cls(Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=parent)))

    def place(self, ref: FileRef, blob: Path, may_link: bool = False,
              expect: Fingerprint | None = None) -> Fingerprint:
        """Put ``blob`` in as ``ref.name``: a hard link when ``may_link`` (falling
        back to a copy where links fail), else a copy, refused if the blob's
        fingerprint is no longer ``expect``. Returns the placed file's fingerprint."""
        why = bad_relative_path(ref.name)
        if why:
            raise JobDirError(why)
        dest = self.path / ref.name
        if "/" in ref.name:
            # Only a name with directories could lead out (through a symlink);
            # the job directory itself is fresh and holds only what we put in.
            if not dest.resolve().is_relative_to(self.path.resolve()):
                raise JobDirError(f"file name {ref.name!r} leaves the job directory")
            dest.parent.mkdir(parents=True, exist_ok=True)
        if may_link:
            try:
                os.link(blob, dest)
            except OSError:
                pass            # another file system, or links refused: copy
            else:
                os.chmod(dest, ref.mode & 0o777)
                self.linked[ref.name] = ref.sha
                self._before[ref.name] = fingerprint(dest.stat())
                return self._before[ref.name]
        self._before[ref.name] = _copy(blob, dest, ref.mode & 0o777, expect)
        return self._before[ref.name]

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
                if self._before.get(rel) == fingerprint(st):
                    continue
                if rel in self.linked:
                    self.tainted.append(self.linked[rel])
                out.append((rel, full, stat.S_IMODE(st.st_mode)))
        out.sort()
        self._produced = [full for _, full, _ in out]
        return out, warnings

    def release(self) -> None:
        """Unlink the linked inputs and the produced files (which the store may
        have taken by linking): the directory's later removal must not touch an
        inode the store shares with another job."""
        for path in [self.path / name for name in self.linked] + self._produced:
            try:
                # A file only this directory holds is left to the sweeper:
                # deleting an inode costs more than dropping a name.
                if path.lstat().st_nlink > 1:
                    path.unlink()
            except OSError:
                pass

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
