"""Load sensing: what one server reports about itself, and the table of reports.

``LoadSampler`` measures this machine with psutil (CPU busy fraction from
``cpu_times`` deltas it keeps itself — no module-global state — memory,
load average). ``LoadReport`` is what a server floods across mesh links;
``LoadTable`` keeps every server's latest report with the time it arrived,
so a stale entry can be told apart and not trusted.

``should_send`` decides when a new report is worth flooding: on a meaningful
change, and at least every ``interval`` seconds regardless.

Measures and compares only: no sockets, no timers. Flooding the reports is
``crc.server.jobs.reports``'s, choosing a server ``scheduler``'s.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, fields

import psutil


@dataclass(frozen=True)
class LoadReport:
    server: int
    name: str
    cpu: float           # percent busy, all cores, 0-100
    mem: float           # percent of memory in use
    load1: float         # 1-minute load average
    ncpu: int
    slots: int           # jobs this server runs at once
    running: int
    queued: int
    #: Jobs received so far from each dispatching server (id -> count), so a
    #: dispatcher can tell which of its own jobs this report already shows.
    origins: dict[int, int] = field(default_factory=dict)
    seq: int = 0
    #: Ids of the compilers this server runs (``crc.jobs.compilers``). They
    #: travel in the LOAD frame's header, not in this body, which servers
    #: of earlier versions read field by field.
    compilers: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        # (Field by field, in their order: ``dataclasses.asdict`` copied each
        # value recursively, 4 % of a busy server's time in its reports.)
        data = {name: getattr(self, name) for name in _WIRE_FIELDS}
        data["origins"] = {str(k): v for k, v in self.origins.items()}
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, compilers: tuple[str, ...] = ()) -> "LoadReport":
        data = json.loads(raw)
        data["origins"] = {int(k): int(v) for k, v in data.get("origins", {}).items()}
        known = {f for f in cls.__dataclass_fields__ if f != "compilers"}
        return cls(**{k: v for k, v in data.items() if k in known}, compilers=compilers)


#: What a report's body holds, in order (all but ``compilers``).
_WIRE_FIELDS = tuple(f.name for f in fields(LoadReport) if f.name != "compilers")


class LoadSampler:
    """Samples this machine; each instance keeps its own CPU baseline."""

    def __init__(self) -> None:
        self._last = psutil.cpu_times()

    def sample(self) -> tuple[float, float, float, int]:
        """(cpu percent since last sample, memory percent, load1, cpu count)."""
        now = psutil.cpu_times()
        busy = _busy(now) - _busy(self._last)
        total = sum(now) - sum(self._last)
        self._last = now
        cpu = 100.0 * busy / total if total > 0 else 0.0
        return (round(cpu, 1), psutil.virtual_memory().percent,
                round(os.getloadavg()[0], 2), os.cpu_count() or 1)


def _busy(t: "psutil._common.scputimes") -> float:
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle


def should_send(last: LoadReport | None, new: LoadReport, since_last: float,
                interval: float) -> bool:
    """Flood ``new``? On a job-count change, a CPU or memory swing of 10
    points, or when ``interval`` seconds have passed since the last report."""
    if last is None or since_last >= interval:
        return True
    return (new.running != last.running or new.queued != last.queued
            or new.slots != last.slots or abs(new.cpu - last.cpu) >= 10
            or abs(new.mem - last.mem) >= 10)


@dataclass
class LoadEntry:
    report: LoadReport
    received: float

    def age(self, now: float) -> float:
        return now - self.received


class LoadTable:
    """Latest report of every server, with its age."""

    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after
        self.entries: dict[int, LoadEntry] = {}

    def update(self, report: LoadReport, now: float | None = None) -> bool:
        """Record ``report``; False if it is older than the one we hold."""
        old = self.entries.get(report.server)
        if old is not None and report.seq and report.seq < old.report.seq:
            return False
        self.entries[report.server] = LoadEntry(report, time.monotonic() if now is None else now)
        return True

    def forget(self, server: int) -> None:
        self.entries.pop(server, None)

    def fresh(self, now: float | None = None) -> list[LoadEntry]:
        now = time.monotonic() if now is None else now
        return [e for e in self.entries.values() if e.age(now) <= self.stale_after]
