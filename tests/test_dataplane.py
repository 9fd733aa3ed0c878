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
import time
from pathlib import Path

import pytest

from bench.netns import PORT, SENT, LineClient, Network, available, chain, chat_pattern, star

from .meshkit import wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not available() or shutil.which("tc") is None,
                                reason="shaped links need root, ip and tc")


def started_chain(tmp_path: Path, profile: str, *args: str):
    net = chain(f"{os.getpid() % 1000}{profile[0]}", profile)
    try:
        net.create()
        net.start_servers(tmp_path, lambda condition, what: wait_for(condition, 30, what),
                          "--insecure-remote-jobs", *args)
        yield net
    finally:
        net.destroy()


@pytest.fixture
def slow_chain(tmp_path: Path):
    yield from started_chain(tmp_path, "slow")


@pytest.fixture
def lan_chain(tmp_path: Path):
    yield from started_chain(tmp_path, "lan")


def arrived(net: Network, host: str) -> int:
    """Bytes ``host``'s server has received on its open links."""
    return (net.state(host) or {}).get("bytes_in", 0)


def submit(net: Network, host: str, folder: Path, on: str, name: str,
           *command: str) -> subprocess.Popen:
    """``chat_client.py run --on ON --file NAME -- COMMAND`` from ``host``."""
    return subprocess.Popen(
        [*net.prefix(host), sys.executable, str(ROOT / "chat_client.py"), "--server",
         f"127.0.0.1:{PORT}", "run", "--on", on, "--file", name, "--", *command],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
        job = submit(net, "A", tmp_path / "work", "D", "big.bin", "sha256sum", "big.bin")
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


def test_a_small_file_is_not_held_behind_a_large_one(slow_chain: Network,
                                                     tmp_path: Path) -> None:
    """A 2 KiB header sent while a 12 MiB blob crosses the same links (two
    seconds at 50 Mbit/s) reaches its job first: small files ride inside the
    job's own frame, which overtakes bulk data, and the blob's fetch keeps
    little in the queues."""
    net = slow_chain
    work = tmp_path / "work"
    work.mkdir()
    (work / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    (work / "small.h").write_bytes(os.urandom(2048))
    big = submit(net, "A", work, "D", "big.bin", "sha256sum", "big.bin")
    try:
        wait_for(lambda: arrived(net, "D") > 1_000_000 or big.poll() is not None, 30,
                 "the large file to be on its way")
        small = submit(net, "A", work, "D", "small.h", "sha256sum", "small.h")
        out, err = small.communicate(timeout=60)
        assert small.returncode == 0, err
        assert hashlib.sha256((work / "small.h").read_bytes()).hexdigest() in out
        assert big.poll() is None                 # the blob is still crossing
        out, err = big.communicate(timeout=120)
        assert big.returncode == 0, err
        assert hashlib.sha256((work / "big.bin").read_bytes()).hexdigest() in out
    finally:
        if big.poll() is None:
            big.kill()


def test_a_link_cut_mid_transfer_runs_the_right_bytes_or_fails_clearly(
        slow_chain: Network, tmp_path: Path) -> None:
    """B-C goes down (silently) while a file crosses it and comes back two
    seconds later: the job runs on exactly the bytes sent, or fails saying
    why — never on anything else."""
    net = slow_chain
    work = tmp_path / "work"
    work.mkdir()
    data = os.urandom(8 * 1024 * 1024)
    (work / "big.bin").write_bytes(data)
    job = submit(net, "A", work, "D", "big.bin", "sha256sum", "big.bin")
    try:
        wait_for(lambda: arrived(net, "D") > 1_000_000 or job.poll() is not None, 30,
                 "the file to be on its way")
        net.set_link("B", "C", up=False)
        back_at = time.monotonic() + 2.0
        wait_for(lambda: time.monotonic() >= back_at or job.poll() is not None, 10,
                 "two seconds of cut link")
        net.set_link("B", "C", up=True)
        out, err = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
    if job.returncode == 0:
        assert hashlib.sha256(data).hexdigest() in out
    else:
        assert err.strip(), "a failed job says why"
        assert hashlib.sha256(data).hexdigest() not in out


def test_memory_at_each_relay_stays_bounded_during_a_large_transfer(
        lan_chain: Network, tmp_path: Path) -> None:
    """64 MiB from A to D at 1 Gbit/s: the relays B and C pass it through
    without holding it (sampled resident memory stays under a generous cap)."""
    psutil = pytest.importorskip("psutil")
    net = lan_chain
    relays = [psutil.Process(p.pid) for p in net.procs[1:3]]          # B and C
    work = tmp_path / "work"
    work.mkdir()
    (work / "big.bin").write_bytes(os.urandom(64 * 1024 * 1024))
    job = submit(net, "A", work, "D", "big.bin", "true")
    peak = 0
    try:
        while job.poll() is None:
            peak = max(peak, *(r.memory_info().rss for r in relays))
            try:
                job.wait(0.02)
            except subprocess.TimeoutExpired:
                pass
        assert job.returncode == 0, job.stderr.read()
    finally:
        if job.poll() is None:
            job.kill()
    assert 0 < peak < 96 * 1024 * 1024, f"a relay reached {peak / 2**20:.0f} MiB"


def test_a_relay_killed_mid_transfer_fails_the_job_clearly_and_a_rerun_gets_it_right(
        slow_chain: Network, tmp_path: Path) -> None:
    """B dies (SIGKILL) while a file crosses it: the job fails saying why
    (nothing runs on a part of the file); once B is back and the tree has
    healed, the same job runs on exactly the bytes sent."""
    net = slow_chain
    work = tmp_path / "work"
    work.mkdir()
    data = os.urandom(6 * 1024 * 1024)
    (work / "big.bin").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    job = submit(net, "A", work, "D", "big.bin", "sha256sum", "big.bin")
    try:
        wait_for(lambda: arrived(net, "D") > 1_000_000 or job.poll() is not None, 30,
                 "the file to be on its way")
        relay = net.procs[1]                                       # B's server
        relay.kill()
        relay.wait(10)
        out, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert digest not in out
    if job.returncode == 0:                    # (only if it had all arrived before the kill)
        pytest.fail(f"the job ran although its file's path was cut: {out!r}")
    assert err.strip(), "a failed job says why"
    net.server("B", "B2", tmp_path, "--connect", f"{net.address('A', 'B')}:{PORT}",
               "--insecure-remote-jobs")
    wait_for(lambda: {"B2", "C", "D"} <= net.names_known("A"), 60, "the tree to heal")
    again = submit(net, "A", work, "D", "big.bin", "sha256sum", "big.bin")
    out, err = again.communicate(timeout=180)
    assert again.returncode == 0, err
    assert digest in out


def test_two_clients_sharing_a_link_in_a_star_both_get_their_files_through(
        tmp_path: Path) -> None:
    """A star: S in the middle, A, B and C around it on 50 Mbit/s links. A
    client on A and one on B each send a file to a job on C at the same
    time; both cross S-C, and both arrive byte for byte."""
    net = star(f"{os.getpid() % 1000}s", "slow")
    try:
        net.create()
        net.start_servers(tmp_path, lambda condition, what: wait_for(condition, 30, what),
                          "--insecure-remote-jobs")
        jobs, digests = [], []
        for host in ("A", "B"):
            work = tmp_path / f"work-{host}"
            work.mkdir()
            data = os.urandom(2 * 1024 * 1024 + 1)
            (work / "part.bin").write_bytes(data)
            digests.append(hashlib.sha256(data).hexdigest())
            jobs.append(submit(net, host, work, "C", "part.bin", "sha256sum", "part.bin"))
        outcomes = [job.communicate(timeout=120) for job in jobs]
    finally:
        for job in locals().get("jobs", []):
            if job.poll() is None:
                job.kill()
        net.destroy()
    for (out, err), job, digest in zip(outcomes, jobs, digests):
        assert job.returncode == 0, err
        assert digest in out
