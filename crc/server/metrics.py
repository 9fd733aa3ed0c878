"""``mesh_server.py --metrics HOST:PORT``: ``GET /metrics`` in Prometheus'
text format, served from the server's own event loop.

``Stats`` holds the counters the server keeps as it works (messages by
type, chats relayed, bytes of closed connections, connections closed by
reason); ``render`` reads them with the live state (links, hosts, jobs,
transfers, the compile cache, the reliable relay, the process's CPU and
memory) into the exposition format: ``_total`` for counters, base units
(bytes, seconds), labels for kinds.

``MetricsServer`` is a tiny HTTP/1.0 responder on a listening socket of the
same ``selectors`` loop — no thread, nothing blocking: at most
``MAX_CLIENTS`` connections at once (more are closed at once), a request of
at most ``MAX_REQUEST`` bytes read within ``DEADLINE`` seconds, one answer,
then the connection is closed. Only ``GET /metrics`` (and ``/``) are
answered; anything else gets 404, 405 or 400. Loopback unless told
otherwise; nothing is ever read but the request line and headers.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import resource
import socket
from typing import TYPE_CHECKING, Any

from ..net.loop import EVENT_READ, EVENT_WRITE, EventLoop, accept_pending

if TYPE_CHECKING:
    from .server import MeshServer

log = logging.getLogger(__name__)

MAX_CLIENTS = 16
MAX_REQUEST = 8192
DEADLINE = 5.0
#: Distinct close reasons kept as labels; the rest count as "other".
MAX_REASONS = 40


class Stats:
    """Counters a server keeps as it works (read by ``render``)."""

    def __init__(self) -> None:
        self.messages: collections.Counter[Any] = collections.Counter()    # by MsgType
        self.extensions: collections.Counter[int] = collections.Counter()  # by frame kind
        self.chats_relayed = 0
        self.chat_bytes_relayed = 0
        self.closed: collections.Counter[str] = collections.Counter()
        self.closed_bytes_in = 0
        self.closed_bytes_out = 0
        self.refused = 0                  # peers refused (authentication, policy)

    def connection_closed(self, reason: str, bytes_in: int, bytes_out: int) -> None:
        self.closed_bytes_in += bytes_in
        self.closed_bytes_out += bytes_out
        label = reason_label(reason)
        if label not in self.closed and len(self.closed) >= MAX_REASONS:
            label = "other"
        self.closed[label] += 1


def reason_label(reason: str) -> str:
    """A close reason as a bounded label: its first words, before any detail
    (``protocol error: ...`` -> ``protocol_error``)."""
    head = re.split(r"[:(\[]", reason, maxsplit=1)[0].lower()
    words = re.findall(r"[a-z]+", head)[:4]
    return "_".join(words) or "unknown"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[dict[str, str], float]] = []

    def add(self, value: float, **labels: str) -> "_Family":
        self.samples.append((labels, value))
        return self

    def text(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples:
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            number = repr(float(value)) if isinstance(value, float) else str(int(value))
            lines.append(f"{self.name}{{{inner}}} {number}" if inner else f"{self.name} {number}")
        return "\n".join(lines)


def render(server: "MeshServer", jobs: Any = None) -> str:
    """Every metric of ``server`` (and its job service), in the text
    exposition format (0.0.4)."""
    stats: Stats = server.stats
    fams: list[_Family] = []

    def family(name: str, kind: str, help_text: str) -> _Family:
        fams.append(_Family(name, kind, help_text))
        return fams[-1]

    roles = collections.Counter(getattr(c.peer, "role", None) for c in server.links.values())
    links = family("crc_links", "gauge", "Links to adjacent servers and clients, by kind.")
    for role in ("server", "client"):
        links.add(sum(n for r, n in roles.items() if getattr(r, "value", "") == role), kind=role)
    tls = family("crc_links_tls", "gauge", "Links carried over TLS.")
    tls.add(sum(1 for c in server.links.values() if c.tls is not None))
    family("crc_connections", "gauge", "Open connections of every kind.").add(
        len(server.connections))
    family("crc_hosts", "gauge", "Servers and clients this server knows of.").add(
        len(server.routes))
    received = family("crc_messages_received_total", "counter",
                      "Messages received, by type.")
    for kind, n in sorted((getattr(k, "name", str(k)).lower(), n)
                          for k, n in stats.messages.items()):
        received.add(n, type=kind)
    ext = family("crc_extension_frames_received_total", "counter",
                 "Mesh extension frames received, by kind.")
    for kind, n in sorted(stats.extensions.items()):
        ext.add(n, kind=str(kind))
    family("crc_chats_relayed_total", "counter", "Chats passed on towards others.").add(
        stats.chats_relayed)
    family("crc_chat_relayed_bytes_total", "counter", "Bytes of the chats passed on.").add(
        stats.chat_bytes_relayed)
    open_in = sum(c.bytes_in for c in server.connections)
    open_out = sum(c.bytes_out for c in server.connections)
    family("crc_received_bytes_total", "counter", "Bytes received on every connection.").add(
        stats.closed_bytes_in + open_in)
    family("crc_sent_bytes_total", "counter", "Bytes sent on every connection.").add(
        stats.closed_bytes_out + open_out)
    closed = family("crc_connections_closed_total", "counter",
                    "Connections closed, by reason (limits triggered among them).")
    for reason, n in sorted(stats.closed.items()):
        closed.add(n, reason=reason)
    reliable = getattr(server, "reliable", None)
    family("crc_connections_refused_total", "counter",
           "Peers refused: wrong or missing secret, plain clients where not allowed.").add(
        stats.refused)
    family("crc_reliable_held_bytes", "gauge",
           "Bytes of reliable chats held for links that are down.").add(
        getattr(reliable, "held_total", 0))
    if jobs is not None:
        _job_metrics(jobs, family)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    family("process_cpu_seconds_total", "counter", "CPU time of this process.").add(
        float(round(usage.ru_utime + usage.ru_stime, 6)))
    family("process_resident_memory_bytes", "gauge", "Resident memory of this process.").add(
        _rss())
    try:
        family("process_open_fds", "gauge", "Open file descriptors.").add(
            len(os.listdir("/proc/self/fd")))
    except OSError:
        pass
    return "\n".join(f.text() for f in fams) + "\n"


def _job_metrics(jobs: Any, family: Any) -> None:
    executor = jobs.executor
    states = collections.Counter(run.state for run in executor.runs.values())
    by_state = family("crc_jobs", "gauge", "Runs on this server, by state.")
    for state in ("fetching", "ready", "running"):
        by_state.add(states.get(state, 0), state=state)
    family("crc_job_queue_depth", "gauge", "Runs waiting for a slot or their files.").add(
        len(executor.queue))
    family("crc_job_slots", "gauge", "Runs this server takes at once.").add(
        jobs.config.slots)
    transfers = jobs.transfers
    moved = family("crc_transfer_bytes_total", "counter", "File bytes moved, by direction.")
    moved.add(transfers.bytes_served, direction="served")
    moved.add(transfers.bytes_fetched, direction="fetched")
    family("crc_transfers_in_progress", "gauge", "Files being fetched.").add(
        len(transfers.fetches))
    cache = jobs.cache
    family("crc_compile_cache_hits_total", "counter", "Compiles answered from the cache.").add(
        cache.hits)
    family("crc_compile_cache_misses_total", "counter", "Compile cache lookups that missed.").add(
        cache.misses)
    family("crc_store_bytes", "gauge", "Bytes in the file store.").add(jobs.store.total)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Client:
    """One HTTP request: read it (bounded, with a deadline), answer, close."""

    def __init__(self, owner: "MetricsServer", sock: socket.socket) -> None:
        self.owner = owner
        self.sock = sock
        self.data = bytearray()
        self.out = b""
        sock.setblocking(False)
        owner.loop.register(sock, EVENT_READ, self)
        self.timer = owner.loop.call_later(DEADLINE, self.close)

    def handle_event(self, mask: int) -> None:
        if mask & EVENT_READ and not self.out:
            try:
                chunk = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            if not chunk:
                self.close()
                return
            self.data += chunk
            if b"\r\n\r\n" in self.data or b"\n\n" in self.data:
                self._answer()
            elif len(self.data) > MAX_REQUEST:
                self._reply(431, "Request Header Fields Too Large", "request too large\n")
            return
        if mask & EVENT_WRITE:
            self._send()

    def _answer(self) -> None:
        line = bytes(self.data).split(b"\n", 1)[0].strip()
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self._reply(400, "Bad Request", "not an HTTP request\n")
        elif parts[0] not in (b"GET", b"HEAD"):
            self._reply(405, "Method Not Allowed", "only GET\n")
        elif parts[1].split(b"?", 1)[0] not in (b"/metrics", b"/"):
            self._reply(404, "Not Found", "try /metrics\n")
        else:
            try:
                body = render(self.owner.server, self.owner.jobs)
            except Exception:                                      # noqa: BLE001
                log.exception("metrics: rendering failed")
                self._reply(500, "Internal Server Error", "could not render the metrics\n")
                return
            self._reply(200, "OK", body, head=parts[0] == b"HEAD",
                        kind="text/plain; version=0.0.4; charset=utf-8")

    def _reply(self, code: int, phrase: str, body: str, head: bool = False,
               kind: str = "text/plain; charset=utf-8") -> None:
        payload = body.encode()
        self.out = (f"HTTP/1.0 {code} {phrase}\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() \
            + (b"" if head else payload)
        self.owner.loop.modify(self.sock, EVENT_WRITE, self)
        self._send()

    def _send(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.out = self.out[sent:]
        if not self.out:
            self.close()

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        self.timer.cancel()
        try:
            self.owner.loop.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        self.owner.clients.discard(self)


class MetricsServer:
    """The listening socket of ``--metrics``, in the server's loop."""

    def __init__(self, server: "MeshServer", host: str, port: int, jobs: Any = None) -> None:
        self.server = server
        self.jobs = jobs
        self.loop: EventLoop = server.loop
        self.clients: set[_Client] = set()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(MAX_CLIENTS)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.loop.register(self.sock, EVENT_READ, self)
        server.close_listeners.append(self.close)

    def handle_event(self, mask: int) -> None:
        for conn in accept_pending(self.sock, self.loop, self):
            if len(self.clients) >= MAX_CLIENTS:
                conn.close()                    # bounded like everything else
                continue
            self.clients.add(_Client(self, conn))

    def close(self) -> None:
        for client in list(self.clients):
            client.close()
        try:
            self.loop.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
