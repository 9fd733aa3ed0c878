"""The data plane on shaped links (bench/netns.py's ``Network``: four
namespaces A-B-C-D joined by veth links shaped to 50 Mbit/s with ``tc``'s
token bucket). A file crosses the three links byte for byte while chats
cross the same links in both directions, every one arriving once and in
order. Speeds and latencies are the benchmark's (bench/dataplane.py); these
tests assert outcomes only.

Needs root, ``ip`` and ``tc`` (CI runs as root and installs iproute2)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.netns import PORT, SENT, LineClient, Network, available, chain, chat_pattern

from .meshkit import wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not available() or shutil.which("tc") is None,
                                reason="shaped links need root, ip and tc")


@pytest.fixture
def slow_chain(tmp_path: Path):
    net = chain(f"{os.getpid() % 1000}t", "slow")
    try:
        net.create()
        net.start_servers(tmp_path, lambda condition, what: wait_for(condition, 30, what),
                          "--insecure-remote-jobs")
        yield net
    finally:
        net.destroy()


def test_a_file_crosses_slow_links_intact_while_chats_pass_it_in_order(
        slow_chain: Network, tmp_path: Path) -> None:
    net = slow_chain
    data = os.urandom(3 * 1024 * 1024 + 12345)        # about half a second at 50 Mbit/s
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "big.bin").write_bytes(data)
    server = f"127.0.0.1:{PORT}"
    alice = LineClient(server, "alice", 9101, prefix=net.prefix("A"))
    dave = LineClient(server, "dave", 9104, prefix=net.prefix("D"))
    try:
        wait_for(lambda: {"alice", "dave"} <= net.names_known("A"), 30, "both clients")
        job = subprocess.Popen(
            [*net.prefix("A"), sys.executable, str(ROOT / "chat_client.py"), "--server", server,
             "run", "--on", "D", "--file", "big.bin", "--", "sha256sum", "big.bin"],
            cwd=tmp_path / "work", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Chats both ways while the file is on the links.
        alice.write("".join(f"/msg 9104 m{i}\n" for i in range(200)))
        dave.write("".join(f"/msg 9101 m{i}\n" for i in range(200)))
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
        assert hashlib.sha256(data).hexdigest() in out       # the bytes D ran on
        readers = ((dave, "alice", 9101), (alice, "dave", 9104))

        def shown() -> list[list[int]]:
            return [reader.numbers(chat_pattern(writer, wid)) for reader, writer, wid in readers]
        wait_for(lambda: all(len(got) >= 200 for got in shown()), 60,
                 "each side to show the other's 200 chats")
        assert alice.finish() == 0, alice.errors
        assert dave.finish() == 0, dave.errors
    finally:
        for client in (alice, dave):
            if client.proc.poll() is None:
                client.kill()
    for got in shown():
        assert got == list(range(200))                      # once each, in order
    assert len(alice.numbers(SENT)) == len(dave.numbers(SENT)) == 200


def test_the_shaped_network_routes_and_limits_as_configured(slow_chain: Network) -> None:
    """The test network itself: every link carries its token bucket, and
    the kernel routes from A to D through B and C once asked to."""
    net = slow_chain
    for host in ("A", "B"):
        shown = subprocess.run([*net.prefix(host), "tc", "qdisc", "show"], capture_output=True,
                               text=True, check=True).stdout
        assert "tbf" in shown and "rate 50Mbit" in shown
    net.route_all()
    route = subprocess.run([*net.prefix("A"), "ip", "route", "get", net.home("D")],
                           capture_output=True, text=True, check=True).stdout
    assert f"via {net.address('B', 'A')}" in route
