"""Reading a running server's state over TCP (the documented state query).

The query is a connection whose first message is a status with code
``STATE_QUERY``, source and destination 0 and no text; the server answers
with one ``STATE_REPLY`` status whose text is the JSON of
``MeshServer.snapshot()``, then closes (docs/protocol.md, "State query").

Blocking sockets with deadlines: for tools (the scenario manager, benchmarks),
never for use inside an event loop.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Callable

from ..protocol import Decoder, ProtocolError, Status, StatusCode, encode


class StateQueryError(OSError):
    """The server did not answer the state query."""


def query_state(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the server at ``host:port`` for its state; ``StateQueryError`` if it does not say."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(encode(Status(0, 0, StatusCode.STATE_QUERY, "")))
            return _read_reply(sock, deadline)
    except (OSError, ProtocolError, ValueError) as exc:
        if isinstance(exc, StateQueryError):
            raise
        raise StateQueryError(f"state query to {host}:{port} failed: {exc}") from None


def _read_reply(sock: socket.socket, deadline: float) -> dict[str, Any]:
    decoder = Decoder()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StateQueryError("no state reply before the deadline")
        sock.settimeout(remaining)
        data = sock.recv(1 << 16)
        if not data:
            raise StateQueryError("connection closed before the state reply")
        for msg in decoder.feed(data):
            if isinstance(msg, Status) and msg.code == StatusCode.STATE_REPLY:
                state = json.loads(msg.text)
                if not isinstance(state, dict):
                    raise StateQueryError("state reply is not a JSON object")
                return state


def wait_answering(host: str, port: int, timeout: float,
                   alive: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Poll the state query until the server answers (its loop is running).

    ``alive`` is checked between attempts, so a server process that died does
    not make us wait out the whole deadline.
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            return query_state(host, port, timeout=max(0.1, deadline - time.monotonic()))
        except StateQueryError as exc:
            if alive is not None and not alive():
                raise StateQueryError(f"{host}:{port}: the server exited") from None
            if time.monotonic() + delay > deadline:
                raise StateQueryError(f"{host}:{port} did not answer within {timeout:g} s: "
                                      f"{exc}") from None
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
