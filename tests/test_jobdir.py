"""Job directories: placing required files, and removing finished directories
in the background (``Sweeper``) without losing track of any."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from crc.jobs.files import FileRef, Sweeper
from crc.server.jobs.jobdir import DirPool, JobDir, JobDirError, fingerprint
from crc.net import EventLoop


def blob(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def run_until(loop: EventLoop, done, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        loop.run_once(max_wait=0.05)


def test_place_copies_flat_and_nested_names_with_their_mode(tmp_path: Path) -> None:
    source, sha = blob(tmp_path, b"int x;\n")
    jobdir = JobDir.create(tmp_path / "jobs", "job 1")
    jobdir.place(FileRef("a.h", sha, 7, 0o644), source)
    jobdir.place(FileRef("src/deep/run.sh", sha, 7, 0o755), source)
    assert (jobdir.path / "a.h").read_bytes() == b"int x;\n"
    assert (jobdir.path / "src" / "deep" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert jobdir.produced() == ([], [])


def test_place_refuses_a_name_that_leads_out_through_a_symlink(tmp_path: Path) -> None:
    source, sha = blob(tmp_path, b"x")
    jobdir = JobDir.create(tmp_path / "jobs", "job")
    (jobdir.path / "out").symlink_to(tmp_path)
    with pytest.raises(JobDirError, match="leaves the job directory"):
        jobdir.place(FileRef("out/stolen", sha, 1), source)
    assert not (tmp_path / "stolen").exists()


def test_discarded_directories_disappear_at_once_and_are_deleted_soon(tmp_path: Path) -> None:
    loop = EventLoop()
    jobs, trash = tmp_path / "jobs", tmp_path / "jobs-trash"
    sweeper = Sweeper(loop, trash)
    try:
        dirs = [JobDir.create(jobs, f"job{i}") for i in range(5)]
        for d in dirs:
            (d.path / "out.o").write_bytes(b"\0" * 100)
            (d.path / "sub").mkdir()
            sweeper.discard(d)
            assert not d.path.exists()
        assert list(jobs.iterdir()) == []
        run_until(loop, lambda: not any(tmp_path.glob("jobs-trash*")))
        # A discard during or after a sweep is swept too.
        late = JobDir.create(jobs, "late")
        sweeper.discard(late)
        run_until(loop, lambda: not any(tmp_path.glob("jobs-trash*")))
    finally:
        sweeper.close()
        loop.close()


def test_close_deletes_whatever_is_left(tmp_path: Path) -> None:
    loop = EventLoop()
    sweeper = Sweeper(loop, tmp_path / "jobs-trash")
    d = JobDir.create(tmp_path / "jobs", "job")
    (d.path / "f").write_text("x")
    sweeper.discard(d)
    sweeper.close()
    loop.close()
    assert not any(tmp_path.glob("jobs-trash*"))


def test_a_blob_is_linked_when_allowed_and_copied_otherwise(tmp_path: Path) -> None:
    source, sha = blob(tmp_path, b"#define N 3\n")
    jobdir = JobDir.create(tmp_path / "jobs", "job")
    jobdir.place(FileRef("linked.h", sha, 12), source, may_link=True)
    jobdir.place(FileRef("copied.h", sha, 12), source, may_link=False)
    assert (jobdir.path / "linked.h").stat().st_ino == source.stat().st_ino
    assert (jobdir.path / "copied.h").stat().st_ino != source.stat().st_ino
    assert (jobdir.path / "copied.h").read_bytes() == b"#define N 3\n"
    assert jobdir.linked == {"linked.h": sha}
    assert jobdir.produced() == ([], []) and jobdir.tainted == []


def test_a_copy_of_a_blob_changed_since_it_was_linked_is_refused(tmp_path: Path) -> None:
    source, sha = blob(tmp_path, b"int x;\n")
    first = JobDir.create(tmp_path / "jobs", "first")
    when_linked = first.place(FileRef("x.c", sha, 7), source, may_link=True)
    second = JobDir.create(tmp_path / "jobs", "second")
    second.place(FileRef("x.c", sha, 7), source, expect=when_linked)      # unchanged: fine
    with open(first.path / "x.c", "ab") as f:                            # the first job edits it
        f.write(b"int y;\n")
    third = JobDir.create(tmp_path / "jobs", "third")
    with pytest.raises(JobDirError, match="changed in place"):
        third.place(FileRef("x.c", sha, 7), source, expect=when_linked)
    assert (second.path / "x.c").read_bytes() == b"int x;\n"


def test_release_drops_every_name_the_store_shares_and_keeps_the_rest(tmp_path: Path) -> None:
    source, sha = blob(tmp_path, b"shared")
    jobdir = JobDir.create(tmp_path / "jobs", "job")
    jobdir.place(FileRef("in.txt", sha, 6), source, may_link=True)
    (jobdir.path / "out.o").write_bytes(b"object")
    (jobdir.path / "log.txt").write_bytes(b"only here")
    stored = tmp_path / "stored.o"
    produced, _ = jobdir.produced()
    assert [name for name, _, _ in produced] == ["log.txt", "out.o"]
    os.link(jobdir.path / "out.o", stored)          # what the store does with a produced file
    before = fingerprint(source.stat())
    jobdir.release()
    assert source.stat().st_nlink == 1 and stored.stat().st_nlink == 1
    assert sorted(p.name for p in jobdir.path.iterdir()) == ["log.txt"]
    assert source.read_bytes() == b"shared" and before[:2] == fingerprint(source.stat())[:2]


def test_a_linked_file_changed_in_place_is_returned_and_its_blob_tainted(tmp_path: Path) -> None:
    big, sha = blob(tmp_path, os.urandom(1 << 20))
    jobdir = JobDir.create(tmp_path / "jobs", "job")
    jobdir.place(FileRef("big.bin", sha, 1 << 20), big, may_link=True)
    st = big.stat()
    with open(jobdir.path / "big.bin", "r+b") as f:
        f.write(b"changed")
    # Even with its size and mtime put back, the change shows (ctime moved).
    os.utime(jobdir.path / "big.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    produced, _ = jobdir.produced()
    assert [name for name, _, _ in produced] == ["big.bin"]
    assert jobdir.tainted == [sha]


def test_a_copied_file_gets_its_exact_mode_whatever_the_umask(tmp_path: Path) -> None:
    source, sha = blob(tmp_path, os.urandom(70_000))        # more than one sendfile chunk may take
    jobdir = JobDir.create(tmp_path / "jobs", "job")
    old = os.umask(0o077)
    try:
        jobdir.place(FileRef("tool", sha, 70_000, 0o755), source)
        jobdir.place(FileRef("shared.txt", sha, 70_000, 0o666), source)
    finally:
        os.umask(old)
    assert (jobdir.path / "tool").stat().st_mode & 0o777 == 0o755
    assert (jobdir.path / "shared.txt").stat().st_mode & 0o777 == 0o666
    assert (jobdir.path / "tool").read_bytes() == source.read_bytes()
    assert source.stat().st_mode & 0o777 != 0o755          # the blob itself is untouched


def test_a_copied_file_changed_in_place_is_returned_and_no_blob_tainted(tmp_path: Path) -> None:
    source, sha = blob(tmp_path, b"int x;\n")
    jobdir = JobDir.create(tmp_path / "jobs", "job")
    jobdir.place(FileRef("a.c", sha, 7), source)
    jobdir.place(FileRef("b.c", sha, 7), source)
    st = (jobdir.path / "a.c").stat()
    with open(jobdir.path / "a.c", "r+b") as f:
        f.write(b"long")
    os.utime(jobdir.path / "a.c", ns=(st.st_atime_ns, st.st_mtime_ns))
    produced, _ = jobdir.produced()
    assert [name for name, _, _ in produced] == ["a.c"]
    assert jobdir.tainted == [] and source.read_bytes() == b"int x;\n"


def test_shared_links_are_not_mistaken_for_edits_but_an_edit_is_seen(tmp_path: Path) -> None:
    """Compiles shipped as source link the same headers into several live job
    directories: another job's link and unlink move the blob's ctime, which
    is not a change; a write is, and its blob is reported tainted."""
    source, sha = blob(tmp_path, b"#define K 1\n")
    source.chmod(0o644)
    first = JobDir.create(tmp_path / "jobs", "one")
    second = JobDir.create(tmp_path / "jobs", "two")
    for d in (first, second):
        d.shared_links = True
    placed = first.place(FileRef(".meshcc-root/usr/include/k.h", sha, 12, 0o644), source,
                         may_link=True)
    second.place(FileRef(".meshcc-root/usr/include/k.h", sha, 12, 0o644), source,
                 may_link=True, expect=placed)
    second.release()                                      # moves the inode's ctime
    assert first.produced() == ([], [])
    assert first.linked == {".meshcc-root/usr/include/k.h": sha}
    with open(first.path / ".meshcc-root/usr/include/k.h", "ab") as f:
        f.write(b"/* edited */\n")
    produced, _ = first.produced()
    assert [name for name, _, _ in produced] == [".meshcc-root/usr/include/k.h"]
    assert first.tainted == [sha]
    # A third job finds the blob changed since it was linked: refused.
    third = JobDir.create(tmp_path / "jobs", "three")
    third.shared_links = True
    with pytest.raises(JobDirError, match="changed in place"):
        third.place(FileRef("k.h", sha, 12, 0o644), source, may_link=True, expect=placed)


def test_a_name_through_a_file_is_refused(tmp_path: Path) -> None:
    source, sha = blob(tmp_path, b"x")
    jobdir = JobDir.create(tmp_path / "jobs", "job")
    jobdir.place(FileRef("a", sha, 1), source)
    with pytest.raises(JobDirError, match="runs through a file"):
        jobdir.place(FileRef("a/b", sha, 1), source)


def test_a_pooled_directory_comes_back_empty_of_files_with_its_folders(tmp_path: Path) -> None:
    """Shipped compiles reuse finished job directories: every file goes,
    whatever the job left (files, symbolic links, a folder swapped for a link
    out of the tree), the real folders stay and are not made again."""
    source, sha = blob(tmp_path, b"#define K 1\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not the job's")
    pool = DirPool(tmp_path / "jobs", keep=1)
    first = pool.take("one")
    first.shared_links = True
    first.place(FileRef(".meshcc-root/usr/include/k.h", sha, 12, 0o644), source, may_link=True)
    first.place(FileRef(".meshcc-root/src/lib/a.h", sha, 12, 0o644), source, may_link=True)
    root = first.path / ".meshcc-root"
    (root / "src" / "lib" / "made.o").write_bytes(b"x")
    (root / "src" / "link").symlink_to(outside)
    (root / "src" / "new").mkdir()
    (root / "src" / "new" / "deep").write_text("y")
    first.release()
    assert pool.give(first)
    again = pool.take("two")
    assert again is first and pool.reused == 1
    files = [p for p in again.path.rglob("*") if not p.is_dir() or p.is_symlink()]
    assert files == []
    assert (outside / "keep").read_text() == "not the job's"      # (a link is not followed)
    assert source.read_bytes() == b"#define K 1\n"
    assert again.linked == {} and again.produced() == ([], [])
    inodes = {p: os.stat(again.path / p).st_ino
              for p in (".meshcc-root/usr/include", ".meshcc-root/src/new")}
    again.place(FileRef(".meshcc-root/usr/include/k.h", sha, 12, 0o644), source, may_link=True)
    again.place(FileRef(".meshcc-root/src/new/b.h", sha, 12, 0o644), source, may_link=True)
    assert inodes == {p: os.stat(again.path / p).st_ino for p in inodes}   # (kept, not made)
    assert (again.path / ".meshcc-root/src/new/b.h").read_bytes() == b"#define K 1\n"
    # A folder swapped for a symbolic link out of the tree: the link goes,
    # and the folder is made again, inside.
    again.release()
    (again.path / ".meshcc-root/usr/include/k.h").unlink(missing_ok=True)
    os.rmdir(again.path / ".meshcc-root/usr/include")
    (again.path / ".meshcc-root/usr/include").symlink_to(outside)
    assert pool.give(again)
    third = pool.take("three")
    third.place(FileRef(".meshcc-root/usr/include/k.h", sha, 12, 0o644), source)
    assert not (third.path / ".meshcc-root/usr/include").is_symlink()
    assert (third.path / ".meshcc-root/usr/include/k.h").read_bytes() == b"#define K 1\n"
    assert sorted(p.name for p in outside.iterdir()) == ["keep"]


def test_the_pool_keeps_only_so_many_and_close_removes_them(tmp_path: Path) -> None:
    pool = DirPool(tmp_path / "jobs", keep=1)
    one, two = pool.take("one"), pool.take("two")
    assert pool.give(one) and not pool.give(two)
    pool.close()
    assert not one.path.exists() and pool.idle == []


def test_a_recycled_directory_keeps_only_unchanged_copies_for_the_next_job(
        tmp_path: Path) -> None:
    """Any job's directory goes back to its pool with nothing but the private
    copies of its inputs still as placed; the next job requiring the same file
    under the same name takes the copy over (its content checked), and finds
    nothing it did not ask for."""
    header, hsha = blob(tmp_path, b"#define K 1\n")
    (tmp_path / "a").write_bytes(b"int a;\n")
    asha = hashlib.sha256(b"int a;\n").hexdigest()
    (tmp_path / "b").write_bytes(b"int b;\n")
    bsha = hashlib.sha256(b"int b;\n").hexdigest()
    pool = DirPool(tmp_path / "jobs", keep=1, copies=True)
    first = pool.take("one")
    first.place(FileRef("inc/k.h", hsha, 12, 0o644), header)
    first.place(FileRef("a.c", asha, 7, 0o644), tmp_path / "a")
    first.place(FileRef("edited.c", asha, 7, 0o644), tmp_path / "a")
    (first.path / "out.o").write_bytes(b"obj")
    (first.path / "tmp" / "x").mkdir(parents=True)
    (first.path / "tmp" / "x" / "junk").write_text("j")
    (first.path / "escape").symlink_to(tmp_path)
    with open(first.path / "edited.c", "ab") as f:
        f.write(b"/* changed by the job */\n")
    produced, _ = first.produced()
    assert [n for n, _, _ in produced] == ["edited.c", "out.o", "tmp/x/junk"]
    first.release()
    assert pool.give(first)
    assert sorted(str(p.relative_to(first.path)) for p in first.path.rglob("*")) == \
        ["a.c", "inc", "inc/k.h"]
    second = pool.take("two")
    assert second is first
    inode = os.stat(second.path / "inc" / "k.h").st_ino
    needed = {"inc/k.h", "b.c"}
    second.drop_unused(needed)
    second.place(FileRef("inc/k.h", hsha, 12, 0o644), header)
    second.place(FileRef("b.c", bsha, 7, 0o644), tmp_path / "b")
    assert second.reused == 1 and os.stat(second.path / "inc" / "k.h").st_ino == inode
    assert sorted(str(p.relative_to(second.path)) for p in second.path.rglob("*")) == \
        ["b.c", "inc", "inc/k.h"]
    assert second.produced() == ([], [])
    assert header.read_bytes() == b"#define K 1\n"


def test_a_kept_copy_is_checked_by_content_not_trusted_by_its_times(tmp_path: Path) -> None:
    """An edit the file's times do not show (within one tick of the clock)
    is still caught: the copy is placed afresh. A kept copy in the way of a
    directory the next job needs goes."""
    header, hsha = blob(tmp_path, b"#define K 1\n")
    pool = DirPool(tmp_path / "jobs", keep=1, copies=True)
    first = pool.take("one")
    first.place(FileRef("k.h", hsha, 12, 0o644), header)
    first.place(FileRef("d", hsha, 12, 0o644), header)
    path = first.path / "k.h"
    st = os.stat(path)
    path.write_bytes(b"#define K 9\n")                # same size
    first._before["k.h"] = fingerprint(os.stat(path))  # as if its times had not moved
    first.release()
    assert pool.give(first) and set(first.kept) == {"k.h", "d"}
    second = pool.take("two")
    second.drop_unused({"k.h", "d/inner.h"})
    second.place(FileRef("k.h", hsha, 12, 0o644), header)
    assert second.reused == 0 and path.read_bytes() == b"#define K 1\n"
    assert st.st_size == os.stat(path).st_size
    second.place(FileRef("d/inner.h", hsha, 12, 0o644), header)   # ("d" was a kept file)
    assert (second.path / "d" / "inner.h").read_bytes() == b"#define K 1\n"


def test_a_pooled_directory_a_job_changed_the_mode_of_is_not_used_again(
        tmp_path: Path) -> None:
    source, sha = blob(tmp_path, b"x")
    for copies in (False, True):
        pool = DirPool(tmp_path / f"jobs{copies}", keep=2, copies=copies)
        jobdir = pool.take("one")
        jobdir.place(FileRef("sub/a", sha, 1, 0o644), source)
        os.chmod(jobdir.path / "sub", 0o555)
        jobdir.release()
        assert not pool.give(jobdir)
        os.chmod(jobdir.path / "sub", 0o755)
        jobdir.remove()


def test_a_folder_swapped_for_a_link_out_is_caught_again_in_the_next_job(
        tmp_path: Path) -> None:
    """Kept folders are checked for every job, as a new directory's are: one
    replaced by a symbolic link after it was emptied is refused, nothing is
    written outside."""
    source, sha = blob(tmp_path, b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    pool = DirPool(tmp_path / "jobs", keep=1, copies=True)
    jobdir = pool.take("one")
    jobdir.place(FileRef("sub/a", sha, 1, 0o644), source)
    jobdir.release()
    assert pool.give(jobdir) and jobdir.kept == {"sub/a": (sha, 0o644)}
    (jobdir.path / "sub" / "a").unlink()
    (jobdir.path / "sub").rmdir()
    (jobdir.path / "sub").symlink_to(outside)          # (something left running did this)
    again = pool.take("two")
    again.drop_unused({"sub/b"})
    with pytest.raises(JobDirError, match="leaves the job directory"):
        again.place(FileRef("sub/b", sha, 1, 0o644), source)
    assert list(outside.iterdir()) == []


def test_a_fifo_where_a_kept_copy_was_is_not_waited_on(tmp_path: Path) -> None:
    """The content check of a kept copy never blocks the loop on a FIFO (or
    follows a link): the file is placed afresh."""
    source, sha = blob(tmp_path, b"#define K 1\n")
    pool = DirPool(tmp_path / "jobs", keep=1, copies=True)
    first = pool.take("one")
    first.place(FileRef("k.h", sha, 12, 0o644), source)
    first.release()
    assert pool.give(first) and "k.h" in first.kept
    (first.path / "k.h").unlink()
    os.mkfifo(first.path / "k.h")
    second = pool.take("two")
    second.drop_unused({"k.h"})
    second.place(FileRef("k.h", sha, 12, 0o644), source)
    assert second.reused == 0 and (second.path / "k.h").read_bytes() == b"#define K 1\n"


def test_kept_copies_are_bounded_per_directory(tmp_path: Path) -> None:
    from crc.server.jobs.jobdir import KEEP_MAX
    data = b"x" * (KEEP_MAX // 2 + 1)
    (tmp_path / "big").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    pool = DirPool(tmp_path / "jobs", keep=1, copies=True)
    jobdir = pool.take("one")
    jobdir.place(FileRef("a", sha, len(data), 0o644), tmp_path / "big")
    jobdir.place(FileRef("b", sha, len(data), 0o644), tmp_path / "big")
    jobdir.release()
    assert pool.give(jobdir) and len(jobdir.kept) == 1
