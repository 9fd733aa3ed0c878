"""Leftovers of killed processes: a directory's owner is told alive by its
pid and start time (read from /proc, the way psutil reads it)."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from crc.jobs.leftovers import OWNER, _owner_alive, mark_owner, started, sweep_stale


def test_start_times_agree_with_psutil_and_a_gone_process_has_none() -> None:
    for pid in (os.getpid(), os.getppid(), 1):
        assert started(pid) == psutil.Process(pid).create_time()
    gone = max(psutil.pids()) + 100_000
    assert started(gone) is None


def test_a_directory_is_its_owners_while_that_very_process_lives(tmp_path: Path) -> None:
    mine, reused, dead = (tmp_path / n for n in ("crc-x-mine", "crc-x-reused", "crc-x-dead"))
    for d in (mine, reused, dead):
        d.mkdir()
    mark_owner(mine)
    assert _owner_alive(mine)
    # The same pid with another start time: the pid was reused, the owner is gone.
    pid, when = (mine / OWNER).read_text().split()
    (reused / OWNER).write_text(f"{pid} {float(when) - 5:.3f}\n")
    (dead / OWNER).write_text(f"{max(psutil.pids()) + 100_000} 1.0\n")
    assert not _owner_alive(reused) and not _owner_alive(dead)
    swept: list[Path] = []
    assert sweep_stale("crc-x-", swept.append, tmp_path) == 2
    assert sorted(swept) == sorted([reused, dead])
