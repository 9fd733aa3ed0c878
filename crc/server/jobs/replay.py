"""Durable results, executor side: a client that lost its connection asks
again (FETCH, through its entry) and gets the output it lacks — replayed from
the result store in order, paced by the link towards it — then the final
frame; a RESULT_ACK deletes a result, and results nobody claims expire after
``result_ttl`` seconds. Runs nothing and picks nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...jobs.wire import Kind, unpack
from ...net import Connection
from ...protocol import Extension, ProtocolError
from ..links import Role
from .results import STREAMS, Record

if TYPE_CHECKING:
    from .service import JobService

log = logging.getLogger("crc.jobs.service")     # the job service's log: one name for its parts

#: Output is sent again (FETCH) in frames of this size, at most
#: ``REPLAY_BUDGET`` bytes per turn of the loop, pausing while the link
#: towards the client holds ``REPLAY_BACKLOG`` unsent bytes.
REPLAY_CHUNK = 64 * 1024
REPLAY_BUDGET = 1 << 20
REPLAY_BACKLOG = 4 << 20


@dataclass
class Replay:
    """A FETCH being answered: where each stream stands (index 1 and 2)."""

    record: Record
    client: int
    offsets: list[int]


class Replays:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.server = jobs.server
        self.loop = jobs.loop
        self.me = jobs.me
        self.results = jobs.results
        self.fetches_served = 0              # FETCHes answered here as the executor

    def on_fetch(self, conn: Connection | None, msg: Extension, run_id: str,
                 header: dict, offsets: list[int]) -> None:
        """A FETCH from an entry server (perhaps us), on behalf of its client."""
        if conn is not None and conn.peer.role is not Role.SERVER:
            raise ProtocolError("FETCH for a job from something other than a server")
        client = header.get("client")
        if not isinstance(client, int):
            raise ProtocolError("FETCH without a client")
        run = self.jobs.executor.runs.get(run_id)
        record = run.record if run is not None else self.results.finished.get(run_id)
        if record is None or record.client != client:
            self.jobs.to_client(client, Kind.FAILED, {
                "id": run_id, "lost": True, "error": f"unknown job (not on server "
                                                     f"{self.server.name}, or expired)"})
            return
        self.fetches_served += 1
        log.info("%s: client %d fetches job %s from offsets %s", self.server.name, client,
                 run_id, offsets)
        if run is not None and run.state == "running" and run.process is not None:
            self.jobs.to_client(client, Kind.STARTED, {"id": run.id, "server": self.me,
                                                       "name": self.server.name,
                                                       "pid": run.process.pid})
        self._replay(Replay(record, client, [0, *(min(o, record.sizes[s])
                                                  for o, s in zip(offsets, STREAMS))]))

    def _replay(self, replay: Replay) -> None:
        """Send the output a client lacks, then (once over) the final frame.
        Live output of the run waits in the file meanwhile, so the client sees
        every stream in order."""
        record = replay.record
        record.replay = replay
        self._replay_step(replay)

    def _replay_step(self, replay: Replay) -> None:
        record = replay.record
        if record.replay is not replay or self.loop.stopping:
            return                     # superseded by another FETCH, or removed
        first = self.server.routes.first_link(replay.client)
        conn = self.server.links.get(first) if first is not None else None
        if conn is None:
            record.replay = None       # gone again: it will ask once more
            return
        budget = REPLAY_BUDGET
        while budget > 0:
            if conn.buffered > REPLAY_BACKLOG:
                self.loop.call_later(0.01, self._replay_step, replay)
                return
            sent = 0
            for stream in STREAMS:
                offset = replay.offsets[stream]
                if offset >= record.sizes[stream]:
                    continue
                data = self.results.read(record, stream, offset, REPLAY_CHUNK)
                if not data:           # not on disk (a write failed): skip the gap
                    replay.offsets[stream] = record.sizes[stream]
                    continue
                self.jobs.to_client(replay.client, Kind.OUTPUT,
                                    {"id": record.id, "stream": stream, "offset": offset}, data)
                replay.offsets[stream] = offset + len(data)
                sent += len(data)
            if not sent:
                break
            budget -= sent
        else:
            self.loop.call_soon(self._replay_step, replay)
            return
        record.replay = None           # caught up: live output flows again
        if record.outcome is not None:
            kind, header = record.outcome
            self.jobs.to_client(replay.client, Kind(kind), header)

    def on_result_ack(self, conn: Connection | None, msg: Extension) -> None:
        header, _ = unpack(msg.payload)
        run_id = header.get("id")
        record = self.results.finished.get(run_id) if isinstance(run_id, str) else None
        if record is None or record.client != msg.source:
            return
        log.debug("%s: client %d has the result of job %s; deleted", self.server.name,
                  msg.source, run_id)
        self.results.remove(record)

    def expire(self, now: float, ttl: float) -> None:
        """Delete results nobody fetched within ``ttl`` seconds, and the
        files they produced that nothing else needs."""
        expired = self.results.expired(now, ttl)
        if not expired:
            return
        produced: set[str] = set()
        for record in expired:
            log.info("%s: the result of job %s (client %d) expired unclaimed after %g s "
                     "(--result-ttl); deleted", self.server.name, record.id, record.client,
                     now - record.finished)
            produced |= _produced(record)
            self.results.remove(record)
        needed = self.results.referenced() | self.jobs.executor.needed()
        for sha in produced - needed:
            self.jobs.store.forget(sha)


def _produced(record: Record) -> set[str]:
    files = record.outcome[1].get("files") if record.outcome else None
    return {f["sha"] for f in files or () if isinstance(f, dict) and isinstance(f.get("sha"), str)}


def expiry_period(ttl: float) -> float:
    """How often results are checked for expiry."""
    return max(0.05, min(60.0, ttl / 4))


