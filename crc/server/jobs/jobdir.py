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

Compiles shipped as source place their files in a tree of twenty or so
directories, and making a directory is the dearest thing a job does on
some file systems (ext4 on the development VM: 0.7 ms of CPU per ``mkdir``,
against 17 µs per link and 6 µs per unlink — most of a shipped compile's
cost to its server). ``DirPool`` keeps such directories when their job is
done: every file is unlinked (``empty``), the directories stay, and the
next shipped compile places its files in them. An empty directory more
than a compile asked for changes nothing it can see: the compiler skips a
directory where it looks for a header, and ``__has_include`` says no to
one (compiles that warn about missing include directories are not shipped).

Other jobs' directories are pooled too, but come back with nothing a job
did not ask for (``recycle``): produced files, links and directories go;
only the private copies of inputs stay, unchanged since placed, and the
next job that requires the same file under the same name gets that copy
(its content checked against the digest first, never trusted from its
times) instead of a new one — a Rakefile's compiles all require the same
headers, and each live job but one gets copies of them.

Server side only: the client never runs a job in a directory of its own.
It runs nothing and knows no loop or frame: the executor starts the job in
it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from ...jobs.files import FileRef, bad_relative_path


class JobDirError(Exception):
    pass


Fingerprint = tuple[int, int, int]


def fingerprint(st: os.stat_result) -> Fingerprint:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _copy(source: Path | str, dest: Path | str, mode: int,
          expect: Fingerprint | None) -> Fingerprint:
    """Copy ``source`` into ``dest`` with exactly ``mode``; the copy's fingerprint.
    ``expect``: the fingerprint ``source`` must still have.

    A job places a dozen files or more, on file systems where every path
    lookup and metadata change can cost a millisecond under load: each name is
    looked up once, and the new file is filled, given its mode and measured
    through its descriptor."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if expect is not None and fingerprint(os.fstat(src)) != expect:
            raise JobDirError(f"stored file {os.path.basename(source)[:12]} was changed in "
                              "place by a job that has it linked; not used")
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        try:
            left = os.fstat(src).st_size
            while left > 0:
                sent = os.sendfile(out, src, None, left)
                if not sent:
                    raise JobDirError(f"{os.path.basename(source)} shrank while being copied")
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
        self._root = str(path)
        self._folders: set[str] = set()
        self._checked: set[str] = set()     # folders found inside, this job
        self._real: str | None = None
        #: Inputs may be hard links another live job has too (a compile
        #: shipped as source): a change is told by size and mtime alone, as
        #: links made and dropped by other jobs move the ctime.
        self.shared_links = False
        self._before: dict[str, Fingerprint] = {}
        #: name -> sha of the files placed as hard links to store blobs.
        self.linked: dict[str, str] = {}
        #: shas of linked blobs the job changed (filled by ``produced``).
        self.tainted: list[str] = []
        self._produced: list[Path] = []
        #: name -> (sha, mode) of the private copies placed (``recycle`` keeps
        #: the unchanged ones), and of those kept from the last job.
        self._copies: dict[str, tuple[str, int]] = {}
        self.kept: dict[str, tuple[str, int]] = {}
        self.reused = 0                 # copies taken over from the last job

    @classmethod
    def create(cls, parent: Path, label: str) -> "JobDir":
        parent.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:40]
        return cls(Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=parent)))

    def place(self, ref: FileRef, blob: Path | str, may_link: bool = False,
              expect: Fingerprint | None = None) -> Fingerprint:
        """Put ``blob`` in as ``ref.name``: a hard link when ``may_link`` (falling
        back to a copy where links fail), else a copy, refused if the blob's
        fingerprint is no longer ``expect``. Returns the placed file's fingerprint.

        A compile shipped as source places dozens of headers in a tree of
        directories: names are joined as strings and each directory is made
        once, checked once to stay inside the job directory (a name is
        relative without ``..``; a symbolic link in the way is refused)."""
        why = bad_relative_path(ref.name)
        if why:
            raise JobDirError(why)
        dest = f"{self._root}/{ref.name}"
        slash = ref.name.rfind("/")
        if slash > 0:
            folder = ref.name[:slash]
            if folder not in self._folders:
                # Once per directory and job (not per file; a directory kept
                # from an earlier job is checked again): it must stay inside.
                if not self._inside(folder):
                    raise JobDirError(f"file name {ref.name!r} leaves the job directory")
                try:
                    os.makedirs(f"{self._root}/{folder}", exist_ok=True)
                except (FileExistsError, NotADirectoryError):
                    raise JobDirError(f"file name {ref.name!r} runs through a file") from None
                self._folders.add(folder)
        if ref.name in self.kept:
            if self.kept.pop(ref.name) == (ref.sha, ref.mode & 0o777) and \
                    _holds(dest, ref.sha):
                self.reused += 1
                self._copies[ref.name] = (ref.sha, ref.mode & 0o777)
                self._before[ref.name] = fingerprint(os.lstat(dest))
                return self._before[ref.name]
            os.unlink(dest)
        elif os.path.isdir(dest) and not os.path.islink(dest):
            try:
                os.rmdir(dest)          # (an empty directory an earlier job left)
            except OSError:
                raise JobDirError(f"file name {ref.name!r} is a directory") from None
        if may_link:
            try:
                os.link(blob, dest)
            except OSError:
                pass            # another file system, or links refused: copy
            else:
                st = os.stat(dest)
                if self.shared_links and expect is not None:
                    # Linked by another job too: it must be as that one found it,
                    # and no chmod may move the time the other one checks.
                    if fingerprint(st)[:2] != expect[:2]:
                        os.unlink(dest)
                        raise JobDirError(f"stored file {ref.sha[:12]} was changed in place "
                                          "by a job that has it linked; not used")
                    if stat.S_IMODE(st.st_mode) != ref.mode & 0o777:
                        os.unlink(dest)
                        self._before[ref.name] = _copy(blob, dest, ref.mode & 0o777,
                                                       None)
                        return self._before[ref.name]
                elif stat.S_IMODE(st.st_mode) != ref.mode & 0o777:
                    os.chmod(dest, ref.mode & 0o777)
                    st = os.stat(dest)
                self.linked[ref.name] = ref.sha
                self._before[ref.name] = fingerprint(st)
                return self._before[ref.name]
        self._before[ref.name] = _copy(blob, dest, ref.mode & 0o777, expect)
        self._copies[ref.name] = (ref.sha, ref.mode & 0o777)
        return self._before[ref.name]

    def _inside(self, folder: str) -> bool:
        """Whether ``folder`` (relative) resolves to a place inside the tree:
        each of its parents checked once per job, then one ``lstat`` (not a
        path resolution per folder: a shipped compile has twenty of them)."""
        if folder in self._checked:
            return True
        parent = folder.rpartition("/")[0]
        if parent and not self._inside(parent):
            return False
        try:
            st = os.lstat(f"{self._root}/{folder}")
        except OSError:
            return True                 # (nothing there: made by us, inside)
        if stat.S_ISLNK(st.st_mode):
            self._real = self._real or os.path.realpath(self._root)
            if not (os.path.realpath(f"{self._root}/{folder}") + "/").startswith(
                    self._real + "/"):
                return False
        self._checked.add(folder)
        return True

    def drop_unused(self, needed: set[str]) -> None:
        """Before a job's files are placed: the copies kept from the last job
        that this one does not ask for (by name) go, and the directories they
        leave empty."""
        for name in [n for n in self.kept if n not in needed]:
            del self.kept[name]
            path = f"{self._root}/{name}"
            if "/" in name and not self._inside(name[:name.rfind("/")]):
                continue                # (never: nothing of the last job lives on)
            os.unlink(path)
            folder = os.path.dirname(path)
            while folder != self._root:
                try:
                    os.rmdir(folder)
                except OSError:
                    break
                self._folders.discard(folder[len(self._root) + 1:])
                self._checked.discard(folder[len(self._root) + 1:])
                folder = os.path.dirname(folder)

    def produced(self) -> tuple[list[tuple[str, Path, int]], list[str]]:
        """(name, path, mode) of every new or changed file, and warnings."""
        out: list[tuple[str, Path, int]] = []
        warnings: list[str] = []
        root: str | None = None
        pending = [("", self._root)]
        while pending:
            prefix, folder = pending.pop()
            with os.scandir(folder) as entries:
                for entry in entries:
                    rel = prefix + entry.name
                    if entry.is_dir(follow_symlinks=False):
                        pending.append((rel + "/", entry.path))
                        continue
                    if entry.is_symlink():
                        root = root or os.path.realpath(self._root)
                        target = os.path.realpath(entry.path)
                        if not (target + "/").startswith(root + "/"):
                            warnings.append(f"{rel} is a symlink pointing outside the job "
                                            "directory; not returned")
                            continue
                    try:
                        st = os.stat(entry.path)
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    before = self._before.get(rel)
                    if before == fingerprint(st):
                        continue
                    if self.shared_links and rel in self.linked and before is not None \
                            and before[:2] == fingerprint(st)[:2]:
                        continue        # (another job's link moved its ctime, not a write)
                    if rel in self.linked:
                        self.tainted.append(self.linked[rel])
                    out.append((rel, Path(entry.path), stat.S_IMODE(st.st_mode)))
        out.sort()
        self._produced = [full for _, full, _ in out]
        return out, warnings

    def release(self) -> None:
        """Unlink the linked inputs and the produced files (which the store may
        have taken by linking): the directory's later removal must not touch an
        inode the store shares with another job."""
        for path in [f"{self._root}/{name}" for name in self.linked] + self._produced:
            try:
                # A file only this directory holds is left to the sweeper:
                # deleting an inode costs more than dropping a name.
                if os.lstat(path).st_nlink > 1:
                    os.unlink(path)
            except OSError:
                pass

    def empty(self) -> bool:
        """Unlink every file in the tree and keep its directories (a shipped
        compile's tree, for the next one); the state of the last job is
        forgotten. False: the directory is not to be used again."""
        return self._clear(copies=False)

    def recycle(self) -> bool:
        """After a (released) job: everything goes but the private copies of
        its inputs still as placed (``KEEP_MAX`` bytes of them at most), kept
        for the next job; directories go unless they hold one. False: the
        directory is not to be used again."""
        return self._clear(copies=True)

    def _clear(self, copies: bool, limit: int = 4096) -> bool:
        """``empty`` (``copies`` False: every file goes, every directory
        stays) or ``recycle``. False on an error, over ``limit`` entries, or
        with a directory that stays in a mode a job changed. Symbolic links
        are unlinked, never followed."""
        keep: dict[str, tuple[str, int]] = {}
        folders: list[tuple[str, int]] = []
        pending = [("", self._root)]
        seen = kept_bytes = 0
        try:
            if stat.S_IMODE(os.lstat(self._root).st_mode) != ROOT_MODE:
                return False
            while pending:
                prefix, folder = pending.pop()
                with os.scandir(folder) as entries:
                    for entry in entries:
                        seen += 1
                        if seen > limit:
                            return False
                        rel = prefix + entry.name
                        if entry.is_dir(follow_symlinks=False):
                            mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
                            folders.append((entry.path, mode))
                            pending.append((rel + "/", entry.path))
                            continue
                        copy = self._copies.get(rel) if copies else None
                        if copy is not None and not entry.is_symlink():
                            st = entry.stat(follow_symlinks=False)
                            if fingerprint(st) == self._before.get(rel) and \
                                    kept_bytes + st.st_size <= KEEP_MAX:
                                kept_bytes += st.st_size
                                keep[rel] = copy
                                continue
                        os.unlink(entry.path)
            # Deepest first; a directory holding a kept copy stays (as do all
            # of a shipped compile's), and must be as it was made.
            for path, mode in sorted(folders, key=lambda f: -f[0].count("/")):
                if copies:
                    try:
                        os.rmdir(path)
                        continue
                    except OSError:
                        pass
                if mode != FOLDER_MODE:
                    return False
        except OSError:
            return False
        self._folders, self._checked = set(), set()
        self._before, self.linked, self.tainted, self._produced = {}, {}, [], []
        self._copies, self.kept = {}, keep
        return True

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


#: Bytes of copies kept for the next job, at most, per directory (hashing a
#: file to check it costs as much as copying it, past some size; and kept
#: copies are outside the store's budget).
KEEP_MAX = 1 << 20


def _umask() -> int:
    """This process's umask, read without changing it (Linux 4.7 and later);
    else set and put back (at import, before any thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()
#: The modes of what ``tempfile.mkdtemp`` and ``os.makedirs`` make here: a
#: pooled directory with others (a job's chmod) is not used again.
ROOT_MODE = 0o700
FOLDER_MODE = 0o777 & ~_UMASK


def _holds(path: str, sha: str) -> bool:
    """Whether ``path`` is a regular file (not followed, never waited on)
    with exactly the content ``sha``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        data = os.read(fd, KEEP_MAX + 1)
    except OSError:
        return False
    finally:
        os.close(fd)
    return len(data) <= KEEP_MAX and hashlib.sha256(data).hexdigest() == sha


class DirPool:
    """Emptied job directories kept for the next compile shipped as source
    (see the module notes): at most ``keep`` of them wait."""

    def __init__(self, parent: Path, keep: int, copies: bool = False) -> None:
        self.parent = parent
        self.keep = keep
        #: Directories of any job (``recycle``: only unchanged input copies
        #: stay), not of shipped compiles (``empty``: directories stay).
        self.copies = copies
        self.idle: list[JobDir] = []
        self.reused = 0                 # directories taken from the pool (tests, metrics)

    def __repr__(self) -> str:
        return f"<DirPool {self.parent} idle={len(self.idle)} reused={self.reused}>"

    def take(self, label: str) -> JobDir:
        """An emptied directory of an earlier job, or a new one."""
        if self.idle:
            self.reused += 1
            return self.idle.pop()
        return JobDir.create(self.parent, label)

    def give(self, jobdir: JobDir) -> bool:
        """Keep ``jobdir`` (released by its job) for another; False when the
        caller is to discard it instead (the pool is full, or it cannot be
        emptied)."""
        if len(self.idle) >= self.keep or \
                not (jobdir.recycle() if self.copies else jobdir.empty()):
            return False
        self.idle.append(jobdir)
        return True

    def close(self) -> None:
        for jobdir in self.idle:
            jobdir.remove()
        self.idle.clear()
