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


#: The largest ``view`` a report may carry (bytes of JSON): what a monitor
#: shows of a server; one over it is not passed on.
VIEW_MAX = 16 * 1024
#: Jobs a view lists (running first, then queued).
VIEW_JOBS = 8
#: Seconds between the reports that carry our view: the ones a job's start
#: or end sends (several a second on a busy server, each crossing every
#: link) carry the numbers the entries place jobs by, and only these the
#: view (a monitor's picture, which receivers keep until the next).
VIEW_EVERY = 1.0


def load_frame(report: LoadReport, view: dict | None = None,
               leaving: bool = False) -> Extension:
    """A server's report as a LOAD frame: the compilers it runs, what a
    monitor shows of it (``view``), and whether it is stopping (``leaving``),
    in the header."""
    header: dict = {"compilers": list(report.compilers)} if report.compilers else {}
    if view:
        header["view"] = view
    if leaving:
        header["leaving"] = True
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
        self._view_sent_at = -VIEW_EVERY
        self._view_soon: Timer | None = None
        self._cpu = (0.0, 0.0, 0.0, os.cpu_count() or 1)
        #: What each server's latest report says for monitors (its links,
        #: clients, counters, jobs): ``chat_client.py monitor``.
        self.views: dict[int, dict] = {}

    def report(self) -> LoadReport:
        cpu, mem, load1, ncpu = self._cpu
        executor = self.jobs.executor
        return LoadReport(self.me, self.server.name, cpu, mem, load1, ncpu,
                          self.jobs.config.slots, executor.running, len(executor.queue),
                          dict(executor.origins), self._seq, self.jobs.compiler_ids)

    def view(self) -> dict:
        """What a monitor shows of this server: its links (peer, TLS,
        authenticated, seconds since heard), clients, counters, jobs. It
        rides in the LOAD reports that flood anyway (at least every
        ``--load-interval``): watchers cost the mesh nothing more."""
        server, now = self.server, self.loop.time()
        links, clients = [], 0
        for peer_id, conn in sorted(server.links.items()):
            role = getattr(conn.peer.role, "value", "")
            if role == "server":
                links.append([peer_id, conn.tls is not None, bool(conn.peer.authenticated),
                              round(now - conn.last_received, 1)])
            elif role == "client":
                clients += 1
        stats, executor, transfers = server.stats, self.jobs.executor, self.jobs.transfers
        jobs = []
        for run in sorted(executor.runs.values(), key=lambda r: (r.state != "running", r.id)):
            if len(jobs) >= VIEW_JOBS:
                break
            since = now - run.started if run.state == "running" else 0.0
            jobs.append([run.label[:80], run.client, run.state, round(since, 1)])
        return {"links": links, "clients": clients, "chats": stats.chats_relayed,
                "bulk": transfers.bytes_served + transfers.bytes_fetched,
                "started": executor.started, "failed": executor.failed, "jobs": jobs,
                "refused": stats.refused, "fallbacks": self.jobs.entry.compile_refusals}

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
        new = self._new_report(now)
        if should_send(self._last_sent, new, now - self._last_sent_at,
                       self.jobs.config.load_interval):
            self._send(new, now)

    def _new_report(self, now: float) -> LoadReport:
        self._seq += 1
        new = self.report()
        self.table.update(new, now)
        return new

    def _send(self, new: LoadReport, now: float) -> None:
        """Flood ``new``, with our view if the last one went ``VIEW_EVERY``
        ago; else that view follows then (``_send_view``)."""
        self._last_sent, self._last_sent_at = new, now
        view = None
        if now - self._view_sent_at >= VIEW_EVERY:
            view = self.views[self.me] = self.view()
            self._view_sent_at = now
        elif self._view_soon is None:
            self._view_soon = self.loop.call_later(
                self._view_sent_at + VIEW_EVERY - now, self._send_view)
        self.server.flood_extension(load_frame(new, view))

    def _send_view(self) -> None:
        self._view_soon = None
        if not self.loop.stopping:
            now = time.monotonic()
            self._send(self._new_report(now), now)

    def leaving(self) -> None:
        """We are stopping on purpose: tell every server, before the results
        of the jobs we end say so, to place nothing more here. A build's
        action stopped under us is sent again at once; its entry must not
        pick us in the moment before our links close (that run would be
        reported lost, and counted against the action's one retry)."""
        self._seq += 1
        self.server.flood_extension(load_frame(self.report(), leaving=True))

    def on_link_up(self, conn: Connection) -> None:
        """A new mesh server link: tell it every fresh report we hold, ours first."""
        if conn.peer.role is not Role.SERVER:
            return
        self.jobs.entry.view_changed()      # what lies beyond it is arriving
        self.maybe_report()
        for entry in sorted(self.table.fresh(), key=lambda e: e.report.server != self.me):
            report = entry.report
            conn.send(load_frame(report, self.views.get(report.server)))

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
        exclude = conn.peer.peer_id if conn is not None else None
        if header.get("leaving") is True:
            self.jobs.entry.leaving.add(report.server)
            if report.server in self.table.entries:
                self.forget(report.server)
                self.server.flood_extension(msg, exclude=exclude)
            return
        self.jobs.entry.leaving.discard(report.server)     # (it stayed after all)
        if self.table.update(report):
            view = header.get("view")
            if isinstance(view, dict) and len(msg.payload) <= VIEW_MAX + 4096:
                self.views[report.server] = view
            self.server.flood_extension(msg, exclude=exclude)

    def on_load_query(self, conn: Connection | None, msg: Extension) -> None:
        now = time.monotonic()
        rows = []
        for entry in sorted(self.table.entries.values(), key=lambda e: e.report.name):
            data = {k: v for k, v in vars(entry.report).items() if k != "origins"}
            data["compilers"] = list(entry.report.compilers)
            data["age"] = round(entry.age(now), 2)
            data["stale"] = entry.age(now) > self.table.stale_after
            if entry.report.server == self.me:
                self.views[self.me] = self.view()        # ours: as of now
            if entry.report.server in self.views:
                data["view"] = self.views[entry.report.server]
            rows.append(data)
        self.jobs.to_client(msg.source, Kind.LOAD_TABLE, {"servers": rows})

    def forget(self, host_id: int) -> None:
        self.table.forget(host_id)
        self.views.pop(host_id, None)
