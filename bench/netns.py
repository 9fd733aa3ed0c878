"""Hosts and clients for experiments on real links: network namespaces joined
by veth links, a server in each, and chat clients driven through their
standard input.

``Hosts`` is the triangle of fault experiments (``bench/faults.py``,
tests/test_netns.py, tests/test_delivery_restart.py). ``Network`` builds any
tree of hosts — ``chain`` A-B-C-D, ``star`` — whose links are shaped like real
ones with ``tc``'s token bucket (``PROFILES``: ``lan`` 1 Gbit/s, ``slow``
50 Mbit/s, each with a queue of a few milliseconds; this kernel has no
``netem``, so no added delay or loss), and can route between any two hosts
through the kernel (``route_all``): the raw ceiling a relay is measured
against (``bench/dataplane.py``, tests/test_dataplane.py). Namespaces need
root and iproute2.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from bench.common import stop_processes

ROOT = Path(__file__).resolve().parent.parent
SERVER = str(ROOT / "mesh_server.py")
CLIENT = str(ROOT / "chat_client.py")

PORT = 7001
#: (namespace a, namespace b, subnet): one veth pair per entry.
LINKS = [("h1", "h2", "10.77.12"), ("h2", "h3", "10.77.23"), ("h1", "h3", "10.77.13")]


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        env.pop(name, None)
    return env


class Hosts:
    """Three namespaces h1, h2, h3, each linked to the other two."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.names = {h: f"crc{tag}{h}" for h in ("h1", "h2", "h3")}
        self.procs: list[subprocess.Popen] = []

    def ns(self, host: str) -> str:
        return self.names[host]

    def dev(self, here: str, there: str) -> str:
        return f"v{self.tag}{here[1]}{there[1]}"

    def address(self, host: str, peer: str) -> str:
        """``host``'s address on its link to ``peer``."""
        for a, b, subnet in LINKS:
            if {a, b} == {host, peer}:
                return f"{subnet}.{host[1]}"
        raise KeyError((host, peer))

    def create(self) -> None:
        for ns in self.names.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for a, b, subnet in LINKS:
            da, db = self.dev(a, b), self.dev(b, a)
            sh("ip", "link", "add", da, "netns", self.ns(a), "type", "veth",
               "peer", "name", db, "netns", self.ns(b))
            for host, dev in ((a, da), (b, db)):
                sh("ip", "-n", self.ns(host), "addr", "add", f"{subnet}.{host[1]}/24", "dev", dev)
                sh("ip", "-n", self.ns(host), "link", "set", dev, "up")

    def set_link(self, a: str, b: str, up: bool) -> None:
        sh("ip", "-n", self.ns(a), "link", "set", self.dev(a, b), "up" if up else "down")

    def prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]

    def server(self, host: str, name: str, tmp: Path, *args: str) -> subprocess.Popen:
        log = open(tmp / f"{name}.log", "wb")
        proc = subprocess.Popen(
            [*self.prefix(host), sys.executable, SERVER,
             "--host", "0.0.0.0", "--port", str(PORT), "--name", name,
             "--keepalive", "0.3", "--dead-after", "1.5", "--work-dir", str(tmp / name), *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def start_tree(self, tmp: Path, wait: Callable[[Callable[[], object], str], object]) -> None:
        """Server one on h1; three joins it; two joins it too, with three as
        its other candidate. ``wait(condition, what)`` waits on the caller's
        deadline."""
        self.server("h1", "one", tmp)
        wait(lambda: self.state("h1") is not None, "server one to answer")
        self.server("h3", "three", tmp, "--connect", f"{self.address('h1', 'h3')}:{PORT}")
        self.server("h2", "two", tmp, "--connect",
                    f"{self.address('h1', 'h2')}:{PORT},{self.address('h3', 'h2')}:{PORT}")
        wait(lambda: self.names_known("h1") == {"two", "three"}, "the tree to form")

    def state(self, host: str) -> dict | None:
        code = ("import json,sys; from crc.server.query import query_state; "
                f"print(json.dumps(query_state('127.0.0.1', {PORT}, timeout=2)))")
        out = subprocess.run([*self.prefix(host), sys.executable, "-c", code],
                             capture_output=True, timeout=20, cwd=ROOT, text=True)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def names_known(self, host: str) -> set[str]:
        state = self.state(host)
        return {h["name"] for h in state["hosts"].values()} if state else set()

    def destroy(self) -> None:
        stop_processes(self.procs)
        for ns in self.names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


class Profile:
    """A link's shape: its rate, and the token bucket's burst and queue."""

    def __init__(self, name: str, rate: str, bytes_per_s: float, burst: str,
                 latency: str) -> None:
        self.name = name
        self.rate = rate                  # as tc takes it
        self.bytes_per_s = bytes_per_s    # the same, in bytes per second
        self.burst = burst                # the bucket: at least one jiffy of the rate
        self.latency = latency            # how long a packet may wait in the queue


#: Link profiles: an office LAN and a link between sites. ``latency`` bounds
#: the queue as a real switch's or router's buffer would (a few ms of the rate).
PROFILES = {
    "lan": Profile("lan", "1gbit", 125e6, "256kb", "2ms"),
    "slow": Profile("slow", "50mbit", 6.25e6, "32kb", "5ms"),
}


class Network:
    """Hosts (one namespace each) joined by veth links into a tree, every
    link shaped by ``profile`` in both directions (None: unshaped)."""

    def __init__(self, tag: str, hosts: list[str], links: list[tuple[str, str]],
                 profile: str | None = None) -> None:
        self.tag = tag
        self.hosts = list(hosts)
        self.links = list(links)
        self.profile = PROFILES[profile] if profile else None
        self.procs: list[subprocess.Popen] = []
        self.created: list[str] = []

    def ns(self, host: str) -> str:
        return f"crd{self.tag}{host}"

    def _link(self, a: str, b: str) -> int:
        for i, (x, y) in enumerate(self.links):
            if {x, y} == {a, b}:
                return i
        raise KeyError((a, b))

    def dev(self, here: str, there: str) -> str:
        i = self._link(here, there)
        return f"d{self.tag}{i}{'a' if self.links[i][0] == here else 'b'}"

    def address(self, host: str, peer: str) -> str:
        """``host``'s address on its link to ``peer``."""
        i = self._link(host, peer)
        return f"10.78.{i}.{1 if self.links[i][0] == host else 2}"

    def home(self, host: str) -> str:
        """An address of ``host`` (on its first link)."""
        for a, b in self.links:
            if host in (a, b):
                return self.address(host, b if host == a else a)
        raise KeyError(host)

    def prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]

    def create(self) -> None:
        for host in self.hosts:
            sh("ip", "netns", "add", self.ns(host))
            self.created.append(self.ns(host))
            sh("ip", "-n", self.ns(host), "link", "set", "lo", "up")
        for i, (a, b) in enumerate(self.links):
            da, db = self.dev(a, b), self.dev(b, a)
            sh("ip", "link", "add", da, "netns", self.ns(a), "type", "veth",
               "peer", "name", db, "netns", self.ns(b))
            for host, dev in ((a, da), (b, db)):
                sh("ip", "-n", self.ns(host), "addr", "add",
                   f"{self.address(host, b if host == a else a)}/24", "dev", dev)
                sh("ip", "-n", self.ns(host), "link", "set", dev, "up")
                if self.profile is not None:
                    self.shape(host, dev)

    def shape(self, host: str, dev: str) -> None:
        p = self.profile
        assert p is not None
        sh("ip", "netns", "exec", self.ns(host), "tc", "qdisc", "replace", "dev", dev, "root",
           "tbf", "rate", p.rate, "burst", p.burst, "latency", p.latency)

    def next_hop(self, host: str, target: str) -> str:
        """The neighbour of ``host`` on the tree path to ``target``."""
        neighbours: dict[str, list[str]] = {h: [] for h in self.hosts}
        for a, b in self.links:
            neighbours[a].append(b)
            neighbours[b].append(a)
        parent = {target: target}
        queue = [target]
        while queue:
            here = queue.pop(0)
            for n in neighbours[here]:
                if n not in parent:
                    parent[n] = here
                    queue.append(n)
        return parent[host]

    def route_all(self) -> None:
        """Forward between every pair of hosts in the kernel, along the tree
        (the raw path a benchmark measures its relays against)."""
        for host in self.hosts:
            sh("ip", "netns", "exec", self.ns(host), "sysctl", "-q", "-w",
               "net.ipv4.ip_forward=1")
        for host in self.hosts:
            for i, (a, b) in enumerate(self.links):
                if host in (a, b):
                    continue                     # its own subnet: on the link
                toward = self.next_hop(host, a)  # a and b: the same side of host
                via = self.address(toward, host)
                sh("ip", "-n", self.ns(host), "route", "add", f"10.78.{i}.0/24", "via", via)

    def set_link(self, a: str, b: str, up: bool) -> None:
        sh("ip", "-n", self.ns(a), "link", "set", self.dev(a, b), "up" if up else "down")

    def server(self, host: str, name: str, tmp: Path, *args: str) -> subprocess.Popen:
        log = open(tmp / f"{name}.log", "wb")
        proc = subprocess.Popen(
            [*self.prefix(host), sys.executable, SERVER, "--host", "0.0.0.0",
             "--port", str(PORT), "--name", name, "--work-dir", str(tmp / name), *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def start_servers(self, tmp: Path, wait: Callable[[Callable[[], object], str], object],
                      *args: str) -> None:
        """A server on every host (named as the host), each joining its
        neighbour toward the first host; ``wait(condition, what)``."""
        first = self.hosts[0]
        self.server(first, first, tmp, *args)
        wait(lambda: self.state(first) is not None, f"server {first} to answer")
        for host in self.hosts[1:]:
            parent = self.next_hop(host, first)
            self.server(host, host, tmp, "--connect",
                        f"{self.address(parent, host)}:{PORT}", *args)
        others = set(self.hosts[1:])
        wait(lambda: self.names_known(first) >= others, "the tree to form")

    def state(self, host: str) -> dict | None:
        return Hosts.state(self, host)        # (the same query, by our prefix)

    def names_known(self, host: str) -> set[str]:
        return Hosts.names_known(self, host)

    def stop_servers(self) -> None:
        """Stop every server (and anything else started here); the network stays."""
        stop_processes(self.procs)
        self.procs.clear()

    def destroy(self) -> None:
        stop_processes(self.procs)
        for ns in self.created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.created.clear()


def chain(tag: str, profile: str | None = None) -> Network:
    """A-B-C-D: three links in a row."""
    return Network(tag, ["A", "B", "C", "D"], [("A", "B"), ("B", "C"), ("C", "D")], profile)


def star(tag: str, profile: str | None = None) -> Network:
    """S in the middle, A, B and C around it."""
    return Network(tag, ["S", "A", "B", "C"], [("S", "A"), ("S", "B"), ("S", "C")], profile)


class LineClient:
    """A ``chat_client.py`` reading commands from a pipe we write, its output
    lines collected as they come (``prefix``: e.g. ``ip netns exec NS``)."""

    def __init__(self, server: str, name: str, client_id: int, *args: str,
                 prefix: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, CLIENT, "--server", server, "--name", name,
             "--id", str(client_id), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=ROOT, env=env or child_env(), encoding="utf-8")
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._collect, args=(self.proc.stdout, self.lines),
                                          daemon=True),
                         threading.Thread(target=self._collect, args=(self.proc.stderr, self.errors),
                                          daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _collect(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def write(self, text: str) -> None:
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def numbers(self, pattern: re.Pattern) -> list[int]:
        """The first group of every output line matching ``pattern``, as ints."""
        return [int(m.group(1)) for line in list(self.lines) if (m := pattern.match(line))]

    def kill(self, timeout: float = 30.0) -> None:
        self.proc.kill()
        self._reap(timeout)

    def finish(self, timeout: float = 60.0) -> int:
        """Close standard input (the client leaves once its chats are
        acknowledged) and wait for it to exit."""
        self.proc.stdin.close()
        return self._reap(timeout)

    def _reap(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout)
        for t in self._threads:
            t.join(timeout)
        return code


def chat_pattern(sender: str, sender_id: int, tag: str = "m") -> re.Pattern:
    """Matches ``[chat] sender(id): <tag><number>`` lines; group 1 is the number."""
    return re.compile(rf"^\[chat\] {re.escape(sender)}\({sender_id}\): {tag}(\d+)$")


SENT = re.compile(r"^\[sent\] [^:]+: m(\d+)$")


_CONNECT_AND_PASS = """
import socket, sys
path, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
tcp = socket.create_connection((host, port), timeout=10)
unix = socket.socket(socket.AF_UNIX)
unix.connect(path)
socket.send_fds(unix, [b"fd"], [tcp.fileno()])
unix.recv(1)
"""


def connect_in(prefix: list[str], host: str, port: int, folder: Path,
               timeout: float = 20.0) -> "socket.socket":
    """A TCP connection to ``host:port`` made inside another network
    namespace (``prefix``: ``ip netns exec NS``), handed to this process over
    a Unix socket (path names cross namespaces; the connection stays in its
    own): one process can then hold clients of servers in different hosts."""
    import socket
    import tempfile
    path = tempfile.mktemp(prefix="fd-", suffix=".sock", dir=folder)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(timeout)
        helper = subprocess.Popen([*prefix, sys.executable, "-c", _CONNECT_AND_PASS, path, host,
                                   str(port)], stderr=subprocess.PIPE)
        try:
            conn, _ = listener.accept()
            with conn:
                _, fds, _, _ = socket.recv_fds(conn, 16, 1)
                conn.sendall(b"k")
            helper.wait(timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            helper.kill()
            raise OSError(f"could not connect to {host}:{port} in {prefix[-1]}: {exc}; "
                          f"{helper.stderr.read().decode(errors='replace')[-300:]}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return socket.socket(fileno=fds[0])
