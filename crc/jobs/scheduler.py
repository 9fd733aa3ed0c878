"""Where a job runs: one pure function, ``pick``.

Theory of operation (after icecream's scheduler). Only servers with a fresh
load report are eligible (a stale one is not trusted), plus a pinned name if
the user asked for one. Each eligible server gets a score:

    score = (running + queued + unreported) / slots + busy

* ``unreported`` — jobs *this* dispatcher sent there that the server's last
  report does not show yet (the report counts jobs received per dispatcher,
  ``origins``), so a burst of N jobs over M idle servers spreads evenly
  instead of piling onto the one that looked idle a moment ago;
* ``busy`` — load on the machine that is not our jobs: the 1-minute load
  average minus our running jobs, per CPU, clipped to 0..1.

The lowest score wins; ties go to the server picked least recently (a
monotonic pick counter), then to the lowest id, so the choice is
deterministic and table-testable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .load import LoadReport


@dataclass
class Ledger:
    """What one dispatcher remembers about its own dispatches."""

    sent: dict[int, int] = field(default_factory=dict)         # server -> jobs sent
    last_pick: dict[int, int] = field(default_factory=dict)    # server -> pick number
    picks: int = 0

    def record(self, server: int) -> None:
        self.sent[server] = self.sent.get(server, 0) + 1
        self.picks += 1
        self.last_pick[server] = self.picks

    def unreported(self, report: LoadReport, me: int) -> int:
        return max(0, self.sent.get(report.server, 0) - report.origins.get(me, 0))


def score(report: LoadReport, unreported: int) -> float:
    jobs = (report.running + report.queued + unreported) / max(1, report.slots)
    busy = (report.load1 - report.running) / max(1, report.ncpu)
    return jobs + min(1.0, max(0.0, busy))


def pick(reports: Iterable[LoadReport], ledger: Ledger, me: int) -> LoadReport | None:
    """The report of the server that should run the next job, or None."""
    best: tuple | None = None
    chosen = None
    for report in reports:
        key = (round(score(report, ledger.unreported(report, me)), 6),
               ledger.last_pick.get(report.server, 0), report.server)
        if best is None or key < best:
            best, chosen = key, report
    return chosen


def by_name(reports: Iterable[LoadReport], name: str) -> list[LoadReport]:
    """The servers ``name`` denotes: the one whose id it is (a decimal id is
    never ambiguous), else every server of that name (more than one: the
    caller says it is ambiguous and lists their ids)."""
    reports = list(reports)
    by_id = [r for r in reports if str(r.server) == name]
    return by_id or [r for r in reports if r.name == name]


def spread(reports: list[LoadReport], ledger: Ledger, me: int, n: int) -> list[int]:
    """Pick ``n`` jobs in a row (recording each): the ids chosen, in order."""
    out = []
    for _ in range(n):
        choice = pick(reports, ledger, me)
        if choice is None:
            break
        ledger.record(choice.server)
        out.append(choice.server)
    return out


def unreported_map(reports: Iterable[LoadReport], ledger: Ledger, me: int) -> Mapping[int, int]:
    return {r.server: ledger.unreported(r, me) for r in reports}
