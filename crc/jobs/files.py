"""Files of jobs, as both sides of the wire see them: ``FileRef`` (a
file's name in a job, its SHA-256, size and mode), ``bad_relative_path``
(which names a job's file may have) and ``Sweeper`` (removing directories
off the event loop).

``Sweeper`` takes directories off a loop's hands: removing one costs
milliseconds on some file systems (``rmdir`` on ext4 mounted with online
discard takes about 3 ms), too long to spend in an event loop once per job.
``discard`` only renames the directory into a trash folder; an ``rm -rf``
child process, run by the loop like a job, empties the trash shortly after.

Shared by the server's job service and the client's job engine; imports
neither.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..net import EventLoop
from .process import ChildProcess


#: Names up to this long have their check remembered (``bad_relative_path``).
REMEMBERED_NAME = 1024


def bad_relative_path(name: str) -> str | None:
    """Why ``name`` may not be a job file name, or None if it may. Remembered
    for short names (a build's jobs name the same headers again and again,
    each checked by the client and by every server on its way); a long one,
    which only a peer bent on filling our memory would send by the
    thousand, is checked each time."""
    if len(name) <= REMEMBERED_NAME:
        return _remembered(name)
    return _bad_relative_path(name)


@functools.lru_cache(maxsize=1 << 14)
def _remembered(name: str) -> str | None:
    return _bad_relative_path(name)


def _bad_relative_path(name: str) -> str | None:
    if not name:
        return "empty file name"
    if "\0" in name:
        return f"file name {name!r} contains a NUL byte"
    # (string tests, not PurePosixPath: this runs for every file of every
    # job, on the client and on each server it passes)
    if name.startswith("/"):
        return f"file name {name!r} is absolute; required files must be relative"
    if ".." in name.split("/"):
        return f"file name {name!r} leaves the job directory ('..')"
    if os.path.normpath(name) == "." or name.endswith("/"):
        return f"file name {name!r} names a directory, not a file"
    return None


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


class Removable(Protocol):
    """A directory object that knows where it is and how to go (a job's)."""

    path: Path

    def remove(self) -> None: ...


class Sweeper:
    """Removes discarded directories in the background (see the module notes).

    Discarded directories are renamed into ``trash``; a sweep renames the
    whole trash folder aside (so new discards never wait on the directory
    lock the removal holds) and runs ``rm -rf`` on it.
    """

    DELAY = 0.2           # seconds between a discard and the sweep that removes it

    def __init__(self, loop: EventLoop, trash: Path) -> None:
        self.loop = loop
        self.trash = trash
        self._rounds = 0
        self._scheduled = False
        self._child: ChildProcess | None = None

    def __repr__(self) -> str:
        return f"<Sweeper {self.trash} {'sweeping' if self._child else 'idle'}>"

    def discard(self, jobdir: Removable | Path) -> None:
        """Take ``jobdir`` (or any file or directory on the trash's file system,
        with a name unique there) away at once; it is deleted soon after."""
        path = jobdir if isinstance(jobdir, Path) else jobdir.path
        target = self.trash / path.name
        try:
            try:
                os.rename(path, target)
            except FileNotFoundError:          # no trash folder yet (or it is being swept)
                if not os.path.lexists(path):
                    return
                self.trash.mkdir(exist_ok=True)
                os.rename(path, target)
        except OSError:
            if isinstance(jobdir, Path):
                if jobdir.is_dir() and not jobdir.is_symlink():
                    shutil.rmtree(jobdir, ignore_errors=True)
                else:
                    jobdir.unlink(missing_ok=True)
            else:
                jobdir.remove()
            return
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self._child is None and not self.loop.stopping:
            self._scheduled = True
            self.loop.call_later(self.DELAY, self._sweep)

    def _sweep(self) -> None:
        self._scheduled = False
        if self.loop.stopping:
            return
        self._rounds += 1
        batch = self.trash.with_name(f"{self.trash.name}.{os.getpid()}.{self._rounds}")
        try:
            os.rename(self.trash, batch)
        except OSError:
            return
        try:
            self._child = ChildProcess(self.loop, ["rm", "-rf", "--", str(batch)],
                                       str(batch.parent), on_output=lambda stream, data: None,
                                       on_exit=self._swept)
        except OSError:
            shutil.rmtree(batch, ignore_errors=True)

    def _swept(self, code: int) -> None:
        self._child = None
        if self.trash.exists():          # discarded while this sweep ran
            self._schedule()

    def close(self) -> None:
        """Stop sweeping and delete the trash now."""
        if self._child is not None:
            self._child.kill()
        for path in [self.trash, *self.trash.parent.glob(f"{self.trash.name}.*")]:
            shutil.rmtree(path, ignore_errors=True)
