"""What a killed process left on disk, found and removed at the next start.

A server's or client's temporary directory (``crc-server-ID-*``,
``crc-client-*`` in the temporary folder) is removed when the process ends
normally; ``kill -9`` leaves it behind, job directories and stored files
included (hundreds of megabytes after a build). Each such directory carries
an ``owner`` file naming the process that made it (pid and start time, so a
reused pid is not mistaken for its owner). At start, a server or client
hands every directory of its kind whose owner is gone to its sweeper.

Pure file-system bookkeeping: no sockets; a process's start time (from
``/proc``, as psutil computes it, without importing psutil on every
client's start) answers "is that process still the one that made it".
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

OWNER = "owner"


_boot_time: float | None = None


def started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, as psutil's
    ``create_time``: boot time plus the start in clock ticks); None if there
    is no such process."""
    global _boot_time
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        if _boot_time is None:
            with open("/proc/stat", "rb") as f:
                _boot_time = next(float(line.split()[1]) for line in f
                                  if line.startswith(b"btime "))
    except (OSError, IndexError, StopIteration, ValueError):
        return None
    return _boot_time + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def mark_owner(directory: Path) -> None:
    """Record this process as ``directory``'s owner."""
    pid = os.getpid()
    (directory / OWNER).write_text(f"{pid} {started(pid) or time.time():.3f}\n")


def _owner_alive(directory: Path) -> bool:
    try:
        pid_text, created_text = (directory / OWNER).read_text().split()
        pid, created = int(pid_text), float(created_text)
    except (OSError, ValueError):
        # No owner file (being made this instant, or not ours): leave it, unless
        # it is old enough that no start can still be under way.
        try:
            return directory.stat().st_mtime > time.time() - 3600
        except OSError:
            return True
    when = started(pid)
    return when is not None and abs(when - created) < 0.01


def sweep_stale(prefix: str, discard: Callable[[Path], None],
                parent: Path | None = None) -> int:
    """Hand every ``prefix*`` directory in ``parent`` (default: the temporary
    folder) whose owner is gone to ``discard``; how many there were."""
    parent = Path(parent or tempfile.gettempdir())
    found = 0
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if _owner_alive(path):
            continue
        found += 1
        log.info("removing %s, left by a process that is gone", path)
        discard(path)
    return found
