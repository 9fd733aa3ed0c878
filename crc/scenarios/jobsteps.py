"""Carrying out a scenario's job commands on its clients.

``JobSteps`` gives the runner a handler per job command (``handlers()``):

* ``WRITEFILE`` writes a file into the client's working directory;
* ``SUBMIT`` and ``RAKE`` first wait until the client's server holds a
  fresh load report of every running server of its tree (so where a job
  lands never depends on how fast reports spread), then submit or start the
  build under the line's label;
* ``CANCEL`` cancels every job of a label;
* ``WAITJOB`` waits, with a deadline, until a label has finished or (with
  ``--output``) printed a text; a missed deadline fails the scenario.

Every wait polls a condition until a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

from .commands import Command, CommandError
from .jobrequests import Cancel, Rake, Submit, WaitJob, WriteFile, request
from .jobs import ClientJobs, LabelError
from .machines import DEADLINE, LoopClient, Machine, MachineError, ServerMachine

#: Seconds to wait for a client's extension handshake and its server's load view.
READY_DEADLINE = 10.0
POLL = 0.01
T = TypeVar("T")


class JobSteps:
    def __init__(self, machines: dict[str, Machine],
                 running: Callable[[str], Machine | None]) -> None:
        self.machines = machines        # every machine launched (never rebound)
        self.running = running

    def handlers(self) -> dict[str, Callable[[Command], None]]:
        return {"WRITEFILE": self.write_file, "SUBMIT": self.submit, "RAKE": self.rake,
                "CANCEL": self.cancel, "WAITJOB": self.wait_job}

    # -- commands ----------------------------------------------------------------------------

    def write_file(self, cmd: Command) -> None:
        req = request(cmd)
        assert isinstance(req, WriteFile)
        data = req.content()
        self._jobs(req.client, lambda jobs: jobs.write_file(req.name, data, req.mode))

    def submit(self, cmd: Command) -> None:
        req = request(cmd)
        assert isinstance(req, Submit)
        self._await_ready(req.client)
        self._jobs(req.client, lambda jobs: jobs.submit(
            req.label, argv=list(req.argv) if req.argv is not None else None, shell=req.shell,
            files=list(req.files), on=req.on, runall=req.runall, timeout=req.timeout,
            count=req.count))

    def rake(self, cmd: Command) -> None:
        req = request(cmd)
        assert isinstance(req, Rake)
        self._await_ready(req.client)
        self._jobs(req.client, lambda jobs: jobs.rake(req.label, req.rakefile, req.on,
                                                      req.timeout))

    def cancel(self, cmd: Command) -> None:
        req = request(cmd)
        assert isinstance(req, Cancel)
        self._jobs(req.client, lambda jobs: jobs.cancel(req.label))

    def wait_job(self, cmd: Command) -> None:
        req = request(cmd)
        assert isinstance(req, WaitJob)
        text = req.output

        def reached() -> tuple[bool, str]:
            def look(jobs: ClientJobs) -> tuple[bool, str]:
                if text is None:
                    return jobs.finished(req.label), ""
                if text in jobs.output(req.label):
                    return True, ""
                if jobs.finished(req.label):
                    return True, f"{req.label} finished without printing {text!r} " \
                                 f"({jobs.summary(req.label)})"
                return False, ""
            return self._jobs(req.client, look)

        deadline = time.monotonic() + req.timeout
        while True:
            done, failure = reached()
            if failure:
                raise CommandError(failure)
            if done:
                return
            if time.monotonic() > deadline:
                what = f"print {text!r}" if text is not None else "finish"
                summary = self._jobs(req.client, lambda jobs: jobs.summary(req.label))
                raise CommandError(f"{req.label} did not {what} within {req.timeout:g} s "
                                   f"({summary})")
            time.sleep(POLL)

    # -- helpers -----------------------------------------------------------------------------

    def _client(self, name: str) -> LoopClient:
        machine = self.running(name)
        if machine is None:
            raise CommandError(f"no running client named {name!r}")
        if not isinstance(machine, LoopClient):
            raise CommandError(f"{name} is a plain CRC v1 client: it cannot run jobs")
        return machine

    def _jobs(self, name: str, fn: Callable[[ClientJobs], T]) -> T:
        try:
            return self._client(name).job_call(fn)
        except LabelError as exc:
            raise CommandError(f"{name}: {exc}") from None

    def _await_ready(self, name: str) -> None:
        """The client's extension handshake is done and its server's load view complete."""
        client = self._client(name)
        deadline = time.monotonic() + READY_DEADLINE
        while not client.call(lambda: client.client.negotiated):
            if time.monotonic() > deadline:
                raise MachineError(f"{name}: no answer to the extension handshake within "
                                   f"{READY_DEADLINE:g} s")
            time.sleep(POLL)
        if not client.call(lambda: client.client.ext):
            return          # a plain server: the submit itself says jobs cannot run there
        entry = self._server_of(client)
        if entry is None:
            return          # its server is gone: the submit fails on its own
        expected = self._tree_of(entry)
        while True:
            fresh = self._fresh_reports(client, max(0.1, deadline - time.monotonic()))
            if expected <= fresh:
                return
            if time.monotonic() > deadline:
                raise MachineError(
                    f"{name}: after {READY_DEADLINE:g} s its server {entry} still has no fresh "
                    f"load report of {', '.join(sorted(expected - fresh))}")
            time.sleep(POLL)

    def _fresh_reports(self, client: LoopClient, timeout: float) -> set[str]:
        """Names of the servers the client's server holds a fresh load report of."""
        answered = threading.Event()
        rows: list[dict] = []

        def got(table: list[dict]) -> None:
            rows.extend(table)
            answered.set()

        client.job_call(lambda jobs: jobs.query_load(got))
        if not answered.wait(min(timeout, DEADLINE)):
            return set()
        return {str(row.get("name")) for row in rows if not row.get("stale")}

    def _servers(self) -> dict[str, ServerMachine]:
        return {name: m for name, m in self.machines.items()
                if isinstance(m, ServerMachine) and self.running(name) is m}

    def _server_of(self, client: LoopClient) -> str | None:
        port = client.client.config.server[1]
        return next((name for name, m in self._servers().items()
                     if m.config.port == port), None)

    def _tree_of(self, entry: str) -> set[str]:
        """The running servers joined to ``entry`` through LAUNCHSERVER's --connect_to_port."""
        servers = self._servers()
        by_port = {m.config.port: name for name, m in servers.items()}
        links: dict[str, set[str]] = {name: set() for name in servers}
        for name, m in servers.items():
            connect = m.config.connect
            parent = by_port.get(connect[1]) if connect else None
            if parent is not None:
                links[name].add(parent)
                links[parent].add(name)
        seen, todo = {entry}, [entry]
        while todo:
            for other in links[todo.pop()] - seen:
                seen.add(other)
                todo.append(other)
        return seen
