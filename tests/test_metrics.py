"""``mesh_server.py --metrics``: Prometheus text from the server's own event
loop, scraped with a real HTTP client and parsed with ``prometheus_client``'s
parser; what it shows follows what the mesh does (links, chats relayed, jobs,
compile cache, connections closed), it answers only ``GET /metrics``, and it
stays bounded (a slow or oversized request does not hold it)."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.common import free_port, state_query

from .meshkit import wait_for

parser = pytest.importorskip("prometheus_client.parser")

ROOT = Path(__file__).resolve().parent.parent
SERVER = [sys.executable, str(ROOT / "mesh_server.py")]
CLIENT = [sys.executable, str(ROOT / "chat_client.py")]



def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", \
            response.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def two_servers(tmp_path: Path):
    a, b, metrics = free_port(), free_port(), free_port()
    procs = [subprocess.Popen([*SERVER, "--port", str(a), "--name", "a", "--metrics",
                               str(metrics), "--work-dir", str(tmp_path / "a")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]

    wait_for(lambda: state_query(a, timeout=1), 30, "server a")
    procs.append(subprocess.Popen([*SERVER, "--port", str(b), "--name", "b", "--connect",
                                   f"127.0.0.1:{a}", "--work-dir", str(tmp_path / "b")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(lambda: state_query(b, timeout=1), 30, "server b")
    try:
        yield a, b, metrics
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def test_a_live_server_is_scraped_and_its_metrics_follow_the_mesh(two_servers,
                                                                  tmp_path: Path) -> None:
    a, b, metrics = two_servers
    wait_for(lambda: samples(scrape(metrics)[2]).get(("crc_links", (("kind", "server"),))) == 1,
             30, "the link to b to show")
    status, kind, text = scrape(metrics)
    assert status == 200 and kind.startswith("text/plain; version=0.0.4")
    before = samples(text)
    assert before[("crc_hosts", ())] >= 1                  # b
    assert before[("process_resident_memory_bytes", ())] > 1 << 20
    assert ("crc_compile_cache_hits_total", ()) in before
    assert before[("crc_job_slots", ())] >= 1
    # A job run from a client of a: jobs, transfers and messages move.
    (tmp_path / "in.txt").write_text("hello\n")
    ran = subprocess.run([*CLIENT, "--server", f"127.0.0.1:{a}", "run", "--file", "in.txt",
                          "--", "cat", "in.txt"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == 0, ran.stderr
    after = samples(scrape(metrics)[2])
    received = {k: v for k, v in after.items() if k[0] == "crc_messages_received_total"}
    assert sum(received.values()) > sum(v for k, v in before.items()
                                        if k[0] == "crc_messages_received_total")
    assert after[("crc_received_bytes_total", ())] > before[("crc_received_bytes_total", ())]
    closed = sum(v for k, v in after.items() if k[0] == "crc_connections_closed_total")
    assert closed >= 1                         # the client's connection, when it left
    assert after[("process_cpu_seconds_total", ())] >= before[("process_cpu_seconds_total", ())]


def test_only_get_metrics_is_answered_and_requests_are_bounded(two_servers) -> None:
    _, _, metrics = two_servers
    assert scrape(metrics, "/nothing")[0] == 404
    conn = http.client.HTTPConnection("127.0.0.1", metrics, timeout=10)
    conn.request("POST", "/metrics", body=b"x")
    assert conn.getresponse().status == 405
    conn.close()
    with socket.create_connection(("127.0.0.1", metrics), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 10000)       # never ends
        reply = s.recv(200)
        assert reply.startswith(b"HTTP/1.0 431")
    # A client that says nothing is dropped by the deadline, and many at once
    # do not stop the server answering the next one.
    idle = [socket.create_connection(("127.0.0.1", metrics), timeout=10) for _ in range(20)]
    try:
        deadline = time.monotonic() + 30
        while idle[0].recv(1) != b"":
            assert time.monotonic() < deadline
    finally:
        for s in idle:
            s.close()
    assert scrape(metrics)[0] == 200
