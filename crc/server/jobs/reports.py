"""Load reports: every server samples its machine and its jobs, floods a
report across mesh links when it changes meaningfully (and at least every
``load_interval`` seconds), and keeps the table of every server's latest
report, from which the entry picks where jobs run. Knows the executor only
through the service (its running and queued counts)."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from ...jobs.load import LoadReport, LoadSampler, LoadTable, should_send
from ...jobs.wire import Kind, frame, unpack
from ...net import Connection, Timer
from ...protocol import Extension, ProtocolError
from ..links import Role

if TYPE_CHECKING:
    from .service import JobService

log = logging.getLogger("crc.jobs.service")     # the job service's log: one name for its parts


def load_frame(report: LoadReport) -> Extension:
    """A server's report as a LOAD frame: the compilers it runs in the header."""
    header = {"compilers": list(report.compilers)} if report.compilers else {}
    return frame(Kind.LOAD, report.server, 0, header, report.to_bytes())


class LoadReports:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.server = jobs.server
        self.loop = jobs.loop
        self.me = jobs.me
        self.sampler = LoadSampler()
        self.table = LoadTable(jobs.config.stale_after)
        self._seq = 0
        self._last_sent: LoadReport | None = None
        self._last_sent_at = 0.0
        self._report_soon: Timer | None = None
        self._cpu = (0.0, 0.0, 0.0, os.cpu_count() or 1)

    def report(self) -> LoadReport:
        cpu, mem, load1, ncpu = self._cpu
        executor = self.jobs.executor
        return LoadReport(self.me, self.server.name, cpu, mem, load1, ncpu,
                          self.jobs.config.slots, executor.running, len(executor.queue),
                          dict(executor.origins), self._seq, self.jobs.compiler_ids)

    def eligible(self) -> list[LoadReport]:
        """The servers whose report is fresh: those a job may go to."""
        return [e.report for e in self.table.fresh()]

    def tick(self) -> None:
        """Periodic: sample the machine, maybe flood a report."""
        if self.loop.stopping:
            return
        self._cpu = self.sampler.sample()
        self.maybe_report()
        self.jobs.trim_store()          # (received and relayed files count too)
        self.loop.call_later(min(1.0, self.jobs.config.load_interval / 2), self.tick)

    def changed(self) -> None:
        """Jobs started or ended: report soon (coalesced)."""
        if self._report_soon is None:
            self._report_soon = self.loop.call_later(0.02, self._flush_report)

    def _flush_report(self) -> None:
        self._report_soon = None
        self.maybe_report()

    def maybe_report(self) -> None:
        now = time.monotonic()
        self._seq += 1
        new = self.report()
        self.table.update(new, now)
        if should_send(self._last_sent, new, now - self._last_sent_at,
                       self.jobs.config.load_interval):
            self._last_sent, self._last_sent_at = new, now
            self.server.flood_extension(load_frame(new))

    def on_link_up(self, conn: Connection) -> None:
        """A new mesh server link: tell it every fresh report we hold, ours first."""
        if conn.peer.role is not Role.SERVER:
            return
        self.jobs.entry.view_changed()      # what lies beyond it is arriving
        self.maybe_report()
        for entry in sorted(self.table.fresh(), key=lambda e: e.report.server != self.me):
            report = entry.report
            conn.send(load_frame(report))

    def on_load(self, conn: Connection | None, msg: Extension) -> None:
        header, body = unpack(msg.payload)
        compilers = header.get("compilers", [])
        if not isinstance(compilers, list) or not all(isinstance(c, str) for c in compilers):
            raise ProtocolError("load report's 'compilers' is not a list of ids")
        try:
            report = LoadReport.from_bytes(body, tuple(compilers))
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"bad load report: {exc}") from None
        if report.server != msg.source or report.server == self.me:
            return
        if self.table.update(report):
            exclude = conn.peer.peer_id if conn is not None else None
            self.server.flood_extension(msg, exclude=exclude)

    def on_load_query(self, conn: Connection | None, msg: Extension) -> None:
        now = time.monotonic()
        rows = []
        for entry in sorted(self.table.entries.values(), key=lambda e: e.report.name):
            data = {k: v for k, v in vars(entry.report).items() if k != "origins"}
            data["compilers"] = list(entry.report.compilers)
            data["age"] = round(entry.age(now), 2)
            data["stale"] = entry.age(now) > self.table.stale_after
            rows.append(data)
        self.jobs.to_client(msg.source, Kind.LOAD_TABLE, {"servers": rows})

    def forget(self, host_id: int) -> None:
        self.table.forget(host_id)
