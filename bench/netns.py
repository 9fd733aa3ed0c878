"""Hosts and clients for fault experiments: network namespaces joined by veth
links, a server in each, and chat clients driven through their standard input.

Used by ``bench/faults.py`` and by the tests that start the programs (tests/test_netns.py,
tests/test_delivery_restart.py). Namespaces need root and iproute2.
"""

from __future__ import annotations

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
