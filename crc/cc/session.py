"""meshcc's one conversation with the mesh: connect, submit, collect, leave.

A ``ChatClient`` and a ``JobClient`` on their own event loop, run until the
compile's result (exit, output, the object written into the work directory)
is in, or until a deadline. Every way this can go wrong that is not the
compiler's raises ``MeshFailure`` with a reason fit for one line on standard
error. Credentials come from the environment (``CRC_MESH_SECRET_FILE``,
``CRC_MESH_TLS_CA``, ``_CERT``, ``_KEY``, ``_SERVER_NAME``).

Client side only; prints nothing itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..client.core import ChatClient, ClientConfig
from ..client.jobs.engine import JobClient
from ..client.jobs.state import Job, JobError, RunState
from ..net.loop import EventLoop
from ..options import OptionError, host_ports
from ..protocol import StatusCode
from .compiler import MeshFailure

#: Statuses before the handshake that mean we are not let in (authentication
#: refused; an id already taken).
REFUSALS = {int(StatusCode.AUTH_REFUSED), 2}
ENV_SECRET = "CRC_MESH_SECRET_FILE"
ENV_TLS = {"ca": "CRC_MESH_TLS_CA", "cert": "CRC_MESH_TLS_CERT", "key": "CRC_MESH_TLS_KEY",
           "server_name": "CRC_MESH_TLS_SERVER_NAME"}


def credentials() -> tuple[Any, bytes | None]:
    """TLS and the secret the environment names; ``MeshFailure`` if unusable."""
    from ..protocol.auth import SecretError, load_secret
    secret = None
    path = os.environ.get(ENV_SECRET, "").strip()
    if path:
        try:
            secret = load_secret(path)
        except SecretError as exc:
            raise MeshFailure(f"${ENV_SECRET}: {exc}") from None
    tls = None
    given = {k: os.environ.get(v, "").strip() or None for k, v in ENV_TLS.items()}
    if given["ca"]:
        from ..net.tls import TLSConfigError, client_tls
        try:
            tls = client_tls(given["ca"], given["cert"], given["key"],
                             server_name=given["server_name"])
        except TLSConfigError as exc:
            raise MeshFailure(f"TLS: {exc}") from None
    return tls, secret


class MeshSession:
    def __init__(self, mesh: str, connect_timeout: float) -> None:
        try:
            self.servers = host_ports(mesh)
        except OptionError as exc:
            raise MeshFailure(f"$CRC_MESH: {exc}") from None
        self.connect_timeout = connect_timeout
        self.failure: str | None = None
        self.result: dict[str, Any] | None = None

    def compile(self, argv: list[str], source: str, work: Path, compiler: str,
                debug_dir: str | None, timeout: float) -> dict[str, Any]:
        tls, secret = credentials()
        loop = EventLoop()
        client = ChatClient(ClientConfig(self.servers[0], "meshcc", 0, "", tls=tls,
                                         secret=secret, servers=tuple(self.servers[1:]),
                                         handshake_timeout=self.connect_timeout), loop,
                            listener=lambda kind, data: self._on_client(kind, data, loop))
        jobs = JobClient(client, work)
        output: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}

        def on_run(job: Job, run: RunState, event: str, data: Any) -> None:
            if event == "output":
                stream, body = data
                output.setdefault(stream, bytearray()).extend(body)
            elif event == "done":
                if run.error:
                    self._fail(f"{run.error}", loop)
                    return
                self.result = {"exit": run.exit, "stdout": bytes(output[1]),
                               "stderr": bytes(output[2]),
                               "server": run.name if run.name != "?" else str(run.server)}
                client.finish()
                loop.call_later(0.5, loop.stop)
            elif event == "failed":
                self._fail(run.error or "the job failed", loop)

        def begin() -> None:
            if secret is not None and not client.server_verified:
                self._fail("the server did not prove it knows the mesh secret", loop)
                return
            try:
                jobs.submit(argv=argv, files=[source], compiler=compiler, debug_dir=debug_dir,
                            timeout=timeout, listener=on_run)
            except JobError as exc:
                self._fail(str(exc), loop)

        self._begin = begin
        try:
            try:
                client.start()
            except OSError as exc:
                raise MeshFailure(f"cannot connect to {self.servers[0][0]}:"
                                  f"{self.servers[0][1]}: {exc.strerror or exc}") from None
            loop.call_later(self.connect_timeout + 1.0, self._handshake_deadline, loop)
            loop.call_later(self.connect_timeout + timeout + 5.0, self._fail,
                            f"no result within {timeout:g} s (MESHCC_TIMEOUT)", loop)
            loop.run()
        finally:
            jobs.close()
            client.close()
        if self.result is None:
            raise MeshFailure(self.failure or "the connection ended before the result")
        return self.result

    def _on_client(self, kind: str, data: dict, loop: EventLoop) -> None:
        if kind == "extensions" and not self._started:
            self._started = True
            self._begin()
        elif kind == "plain":
            self._fail("the server is a plain CRC v1 server; it cannot run jobs", loop)
        elif kind == "status" and not self._started and data.get("code") in REFUSALS:
            self._fail(f"the server refused us: {data.get('text')}", loop)
        elif kind == "disconnected" and self.result is None:
            self._fail(f"connection lost: {data.get('reason')}", loop)

    _started = False

    def _handshake_deadline(self, loop: EventLoop) -> None:
        if not self._started:
            self._fail(f"no server answered within {self.connect_timeout:g} s", loop)

    def _fail(self, why: str, loop: EventLoop) -> None:
        if self.result is None and self.failure is None:
            self.failure = why
        loop.stop()
