"""In-process meshes for tests: servers and clients in their own loop threads.

Everything a test waits for goes through ``wait_for(condition, deadline)``,
which waits on ``CHANGES``: every loop started here announces each pass
that did something, and the waiting test looks at its condition again at
once. Calls into a running loop go through ``call(loop, fn)``, which runs
``fn`` in the loop's thread and returns its result, so tests never touch
loop state from the wrong thread.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

from crc.client import ChatClient, ClientConfig
from crc.client.jobs.engine import JobClient
from crc.server.jobs.service import JobConfig, JobService
from crc.net import EventLoop
from crc.server import MeshServer, ServerConfig

#: How long a waiting test goes without looking at its condition when no loop
#: of ours has moved: what it waits for may be driven from elsewhere (a child
#: process, a file), which announces nothing.
RECHECK = 0.05


class Changes:
    """A count of loop passes, and a way to wait for the next one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.count = 0

    def announce(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_past(self, seen: int, timeout: float) -> None:
        """Until the count has moved past ``seen``, or ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self.count != seen, timeout)


CHANGES = Changes()
#: Loops whose current pass only ran a test's ``call``: announcing it would
#: wake the test that made the call to look again at once, and again, and so on.
_quiet: set[int] = set()


def run_loop(loop: EventLoop) -> None:
    """``loop.run()``, announcing on ``CHANGES`` every pass that did more than
    answer a test's ``call``."""
    while not loop.stopping:
        loop.run_once()
        if id(loop) in _quiet:
            _quiet.discard(id(loop))
        else:
            CHANGES.announce()


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Return ``condition()`` as soon as it is true; fail after ``timeout``.

    The condition is looked at again whenever one of our loops has moved
    (and at least every ``RECHECK`` seconds, for what they do not drive)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = CHANGES.count
        value = condition()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        CHANGES.wait_past(seen, min(left, RECHECK))


def call(loop: EventLoop, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Run ``fn`` in ``loop``'s thread; return its result (or raise its error)."""
    box: queue.Queue = queue.Queue()

    def run() -> None:
        _quiet.add(id(loop))
        try:
            box.put((True, fn()))
        except BaseException as exc:  # handed back to the test thread
            box.put((False, exc))

    loop.call_soon_threadsafe(run)
    ok, value = box.get(timeout=timeout)
    if not ok:
        raise value
    return value


class Node:
    def __init__(self, server: MeshServer, jobs: JobService | None) -> None:
        self.server = server
        self.jobs = jobs
        self.thread = threading.Thread(target=self._run, name=server.name, daemon=True)

    def _run(self) -> None:
        try:
            run_loop(self.server.loop)
        finally:
            self.server.close()

    @property
    def name(self) -> str:
        return self.server.name

    def kill(self) -> None:
        """Stop at once, as a crash would: sockets close, peers see the link
        drop, nothing more is sent."""
        self.server.kill()
        self.thread.join(10)


class Mesh:
    """A chain (or tree) of servers, each with a job service."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.nodes: list[Node] = []
        self.clients: list[tuple[ChatClient, threading.Thread]] = []

    def add(self, name: str, parent: Node | None = None, slots: int = 2,
            server_options: dict[str, Any] | None = None, **job_options: Any) -> Node:
        connect = ("127.0.0.1", parent.server.port) if parent else None
        server = MeshServer(ServerConfig(port=0, name=name, connect=connect,
                                         **(server_options or {})))
        jobs = JobService(server, JobConfig(slots=slots, work_dir=self.tmp / name,
                                            **{"load_interval": 0.5, **job_options}))
        server.start()
        node = Node(server, jobs)
        node.thread.start()
        self.nodes.append(node)
        return node

    def chain(self, n: int, **options: Any) -> list[Node]:
        prev = None
        for i in range(n):
            prev = self.add(f"s{i + 1}", prev, **options)
        self.wait_converged()
        return self.nodes

    def wait_converged(self, timeout: float = 10.0) -> None:
        """Every server knows every other and holds a fresh load report of each."""
        ids = {n.server.id for n in self.nodes}

        def done() -> bool:
            for n in self.nodes:
                known = call(n.server.loop, lambda n=n: set(n.server.routes.hosts) | {n.server.id})
                fresh = call(n.server.loop, lambda n=n: {r.server for r in n.jobs.eligible()})
                if not ids <= known or not ids <= fresh:
                    return False
            return True
        try:
            wait_for(done, timeout, "the mesh to converge")
        except AssertionError:
            for n in self.nodes:
                view = call(n.server.loop, lambda n=n: (sorted(n.server.routes.hosts),
                            {e.report.server: round(time.monotonic() - e.received, 2)
                             for e in n.jobs.table.entries.values()}, n.server.ext_servers()))
                print(f"{n.name} id={n.server.id} hosts/load ages/ext links: {view}")
            raise

    def start_client(self, config: ClientConfig,
                     base_dir: Path | None = None) -> tuple[ChatClient, JobClient | None]:
        """Start a client in its own loop thread (with a ``JobClient`` working
        in ``base_dir``, if given); it is stopped by ``close``. Waits for nothing."""
        client = ChatClient(config)
        jobs = JobClient(client, base_dir) if base_dir is not None else None
        client.start()
        thread = threading.Thread(target=run_loop, args=(client.loop,), name=config.name,
                                  daemon=True)
        thread.start()
        self.clients.append((client, thread))
        return client, jobs

    def client(self, node: Node, name: str, base_dir: Path,
               **options: Any) -> tuple[ChatClient, JobClient]:
        """A job client (``options``: more ClientConfig fields), once its
        extension handshake is done."""
        client, jobs = self.start_client(
            ClientConfig(("127.0.0.1", node.server.port), name, **options), base_dir)
        wait_for(lambda: client.ext, 10, f"{name} to complete the extension handshake")
        return client, jobs

    def chat_client(self, node: Node, name: str, wait: bool = True,
                    **options: Any) -> ChatClient:
        """A reliable, reconnecting chat client (``options``: more ClientConfig fields)."""
        options.setdefault("reliable", True)
        options.setdefault("reconnect", True)
        client, _ = self.start_client(ClientConfig(("127.0.0.1", node.server.port), name,
                                                   **options))
        if wait:
            wait_for(lambda: client.negotiated, 10, f"{name} to settle its extensions")
        return client

    def close(self) -> None:
        for client, thread in self.clients:
            client.loop.stop()
            thread.join(10)
            client.close()
        for node in self.nodes:
            if node.thread.is_alive():
                node.kill()
