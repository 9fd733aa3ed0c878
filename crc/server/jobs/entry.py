"""The entry: the server a client submitted to. It picks where each job runs
(``scheduler.pick``, a pinned name, or every server), tells the client, sends
the job on, and remembers where it went — so a job lost with a server that
left the mesh is reported, a CANCEL reaches every copy, a SUBMIT sent again
after a reconnect is answered instead of run twice, and a FETCH goes to the
server that ran the job. Never runs anything itself (the executor does, even
when that is this server)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from ...jobs.scheduler import Ledger, by_name, pick
from ...jobs.wire import INLINE_MAX, Kind, check_inline, frame, unpack
from ...net import Connection, Timer
from ...protocol import Extension, ProtocolError
from ...routing import Host
from ..links import Role
from .frames import parse_command, parse_files, utf8
from .cache import cache_key, home

if TYPE_CHECKING:
    from .service import JobService

log = logging.getLogger("crc.jobs.service")     # the job service's log: one name for its parts

#: Jobs an entry remembers for answering a SUBMIT sent again (at most, and
#: for at most ``result_ttl`` seconds).
SUBMITTED_MAX = 100_000
#: A FETCH for a server we do not know waits for our view of the mesh to
#: settle: this long (at least two load intervals) after our start or after
#: a server link came up, and at most ``FETCH_HOLD_MAX`` in all.
VIEW_SETTLE = 3.0
FETCH_HOLD_MAX = 30.0


class Entry:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.server = jobs.server
        self.loop = jobs.loop
        self.me = jobs.me
        self.ledger = Ledger()
        #: (client, job id) -> (the runs it was dispatched as, wall-clock time).
        self.submitted: OrderedDict[tuple[int, str], tuple[list[dict], float]] = OrderedDict()
        self.dispatched: dict[str, tuple[int, int]] = {}   # run id -> (client, server)
        #: Servers that said they are stopping on purpose (a LOAD marked
        #: ``leaving``): a run still out there when they go was not lost to
        #: anything it did (``on_departure``).
        self.leaving: set[int] = set()
        #: Compiles no server could take (no server has the compiler): the
        #: client compiles them itself (a monitor's "compile fallbacks").
        self.compile_refusals = 0
        #: FETCHes for servers not known yet (we just started or rejoined):
        #: (since, client, run id, server, offsets).
        self._unknown_fetches: list[tuple[float, int, str, int, list[int]]] = []
        self._fetch_timer: Timer | None = None
        self._view_changed = self.loop.time()

    # -- submit ------------------------------------------------------------------------

    def on_submit(self, conn: Connection | None, msg: Extension) -> None:
        if conn is None or conn.peer.role is not Role.CLIENT or conn.peer.peer_id != msg.source:
            raise ProtocolError("job submitted by something other than an adjacent client")
        header, body = unpack(msg.payload)
        client = msg.source
        job = header.get("job")
        if not isinstance(job, str) or not job:
            raise ProtocolError("SUBMIT without a job id")
        utf8(job, "the job id")
        to_client = self.jobs.to_client
        refused = self.server.gate.job_refusal(conn)
        if refused:
            log.warning("%s: refusing job %s from client %d at %s: %s", self.server.name,
                        job[:40], client, conn.peer_address, refused)
            to_client(client, Kind.FAILED, {"id": job, "error": refused})
            return
        known = self.submitted.get((client, job))
        if known is not None:
            # Sent again after a reconnect: it went out already; say where.
            log.info("%s: job %s from client %d was dispatched already; not again",
                     self.server.name, job[:40], client)
            to_client(client, Kind.ACCEPTED, {"job": job, "runs": known[0]})
            return
        try:
            parse_command(header)
            parse_files(header, self.jobs.config.max_file)
            if header.get("inline"):
                check_inline(header["inline"], len(body))   # here, so no relay meets it
                if len(body) > INLINE_MAX:
                    raise ProtocolError(f"inline files of {len(body)} bytes, over {INLINE_MAX}")
        except ProtocolError as exc:
            to_client(client, Kind.FAILED, {"id": job, "error": str(exc)})
            return
        targets = self._targets(client, job, header)
        if targets is None:
            return
        if not targets:
            to_client(client, Kind.FAILED, {"id": job, "error": "no server can run jobs"})
            return
        unfinished = sum(1 for c, _ in self.dispatched.values() if c == client)
        quota = self.jobs.config.max_jobs_per_client
        if unfinished + len(targets) > quota:
            log.warning("%s: client %d has %d unfinished jobs; refusing job %s "
                        "(--max-jobs-per-client %d)", self.server.name, client, unfinished,
                        job[:40], quota)
            to_client(client, Kind.FAILED, {
                "id": job, "quota": True,
                "error": f"job quota: {unfinished} unfinished job(s), at most "
                         f"{quota} per client on this server"})
            return
        runs = []
        for target in targets:
            # Ids, not names, keep the copies of a runall apart: two servers
            # may share a name.
            run_id = f"{job}@{target.server}" if header.get("all") else job
            self.ledger.record(target.server)
            self.dispatched[run_id] = (client, target.server)
            runs.append({"id": run_id, "server": target.server, "name": target.name})
        to_client(client, Kind.ACCEPTED, {"job": job, "runs": runs})
        self.submitted[(client, job)] = (runs, time.time())
        while len(self.submitted) > SUBMITTED_MAX:
            self.submitted.popitem(last=False)
        for run in runs:
            request = dict(header, id=run["id"], client=client, entry=self.me)
            self.jobs.send(frame(Kind.RUN, self.me, run["server"], request, body))

    def _targets(self, client: int, job: str, header: dict) -> list | None:
        """Where a job goes: every server, the one named, or the least
        loaded; None once the client has been told why nowhere."""
        candidates = self.jobs.reports.eligible()
        compiler = header.get("compiler")
        if compiler is not None:
            if not isinstance(compiler, str):
                raise ProtocolError("job frame field 'compiler' is not a compiler id")
            candidates = [r for r in candidates if compiler in r.compilers]
            if not candidates:
                self.compile_refusals += 1        # (its meshcc compiles it locally)
                self.jobs.to_client(client, Kind.FAILED, {
                    "id": job, "compiler": True,
                    "error": f"no server has this compiler (id {compiler[:20]})"})
                return None
        if header.get("all"):
            return sorted(candidates, key=lambda r: r.name)
        key = cache_key(header)
        if key is not None and not header.get("on"):
            # Every compile with this key goes to one server: its cache.
            chosen_id = home(key, [r.server for r in candidates])
            return [r for r in candidates if r.server == chosen_id]
        if isinstance(header.get("on"), str) and header["on"]:
            chosen = by_name(candidates, header["on"])
            if not chosen:
                known = ", ".join(sorted(r.name for r in candidates)) or "none"
                self.jobs.to_client(client, Kind.FAILED, {
                    "id": job, "error": f"no server named {header['on']!r} (known: {known})"})
                return None
            if len(chosen) > 1:
                ids = ", ".join(str(r.server) for r in sorted(chosen, key=lambda r: r.server))
                self.jobs.to_client(client, Kind.FAILED, {
                    "id": job, "error": f"{len(chosen)} servers are named {header['on']!r} "
                                        f"(ids {ids}); give --on one of the ids"})
                return None
            return chosen
        chosen = pick(candidates, self.ledger, self.me)
        return [chosen] if chosen else []

    def expire(self, now: float, ttl: float) -> None:
        """Forget jobs submitted more than ``ttl`` seconds ago."""
        while self.submitted:
            key, (_, when) = next(iter(self.submitted.items()))
            if now - when < ttl:
                break
            del self.submitted[key]

    # -- cancel, results passing, servers leaving -----------------------------------------

    def cancel(self, client: int, target: str) -> None:
        """Our client cancels a job: pass it on to wherever each run of it went."""
        for run_id, (owner, server) in list(self.dispatched.items()):
            if owner == client and (run_id == target or run_id.startswith(target + "@")):
                self.jobs.send(frame(Kind.CANCEL, self.me, server, {"id": run_id}))

    def tap_result(self, conn: Connection, msg: Extension) -> bool:
        """DONE / FAILED passing through on its way to our client."""
        try:
            header, _ = unpack(msg.payload)
        except ProtocolError:
            return False
        if isinstance(header.get("id"), str):
            self.dispatched.pop(header["id"], None)
        return False

    def on_departure(self, gone: list[Host]) -> None:
        """Servers left: their clients' jobs are forgotten, jobs that ran on
        them are reported lost to their clients."""
        ids = {h.id for h in gone}
        for run_id, (client, server) in list(self.dispatched.items()):
            if server in ids and client not in ids:
                name = next((h.name for h in gone if h.id == server), str(server))
                del self.dispatched[run_id]
                header = {"id": run_id, "lost": True,
                          "error": f"server {name} left the mesh while running the job"}
                if server in self.leaving:
                    # Stopped on purpose with the run on its way to it (or
                    # read too late to be ended with the rest): as its own
                    # ``stopped`` results say, nothing the job did.
                    header.update(stopped=True,
                                  error=f"server {name} stopped while running the job")
                self.jobs.to_client(client, Kind.FAILED, header)
            elif client in ids:
                del self.dispatched[run_id]
        self.leaving -= ids

    # -- fetch, on a client's behalf ------------------------------------------------------

    def fetch_for_client(self, conn: Connection | None, client: int, run_id: str,
                         server: object, offsets: list[int]) -> None:
        """Our client asks for a run's results again: pass it on to where the
        run is (and watch for that server leaving, as for a new job)."""
        if conn is None or conn.peer.role is not Role.CLIENT or conn.peer.peer_id != client:
            raise ProtocolError("FETCH from something other than an adjacent client")
        if not isinstance(server, int) or server <= 0:
            raise ProtocolError("FETCH without the executing server's id")
        refused = self.server.gate.job_refusal(conn)
        if refused:
            self.jobs.to_client(client, Kind.FAILED, {"id": run_id, "error": refused})
            return
        if server != self.me and not self.server.routes.known(server):
            if self.view_settling():
                # "Not known yet" is not "gone": we may have just started or
                # rejoined, and the registrations are still arriving.
                self._unknown_fetches.append((self.loop.time(), client, run_id, server, offsets))
                self._recheck_unknown_fetches()
                return
            self._lost(client, run_id, server)
            return
        self._fetch_from(client, run_id, server, offsets)

    def _fetch_from(self, client: int, run_id: str, server: int, offsets: list[int]) -> None:
        self.dispatched[run_id] = (client, server)
        self.jobs.send(frame(Kind.FETCH, self.me, server,
                             {"id": run_id, "client": client, "offsets": offsets}))

    def _lost(self, client: int, run_id: str, server: int) -> None:
        self.jobs.to_client(client, Kind.FAILED, {
            "id": run_id, "lost": True,
            "error": f"server {server} left the mesh while running the job"})

    def view_changed(self) -> None:
        """A server link came up: what lies beyond it is arriving."""
        self._view_changed = self.loop.time()

    def view_settling(self) -> bool:
        """Whether our view of the mesh may still be filling in: within
        ``settle`` seconds of our start or of a server link coming up, or while
        we are (re)joining through an uplink that has not taken us yet."""
        settle = max(VIEW_SETTLE, 2 * self.jobs.config.load_interval)
        if self.loop.time() < self._view_changed + settle:
            return True
        cfg = self.server.config
        joining = bool(cfg.connect) and cfg.rejoin and not self.server.ext_servers()
        return joining

    def _recheck_unknown_fetches(self) -> None:
        """FETCHes held for servers we did not know yet: on to the server once
        it is known, or a clear "lost" once our view has settled without it
        (or after ``FETCH_HOLD_MAX`` seconds in any case)."""
        if self._fetch_timer is not None:
            return
        held, self._unknown_fetches = self._unknown_fetches, []
        now = self.loop.time()
        for since, client, run_id, server, offsets in held:
            if self.server.routes.known(server):
                self._fetch_from(client, run_id, server, offsets)
            elif self.view_settling() and now - since < FETCH_HOLD_MAX:
                self._unknown_fetches.append((since, client, run_id, server, offsets))
            else:
                self._lost(client, run_id, server)
        if self._unknown_fetches:
            self._fetch_timer = self.loop.call_later(0.1, self._fetch_recheck_due)

    def _fetch_recheck_due(self) -> None:
        self._fetch_timer = None
        self._recheck_unknown_fetches()
