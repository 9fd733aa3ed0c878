"""``chat_client.py monitor`` (``crc-monitor``, ``python -m
crc.client.monitor``) and ``/tree``, run against a live three-server mesh:
what they show is the mesh's — its tree, its servers, their clients, a job
running on one of them — and rates follow what it does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.common import free_port, state_query
from crc.client.monitor import snapshot, tree
from crc.jobs.wire import Kind

from .meshkit import wait_for

ROOT = Path(__file__).resolve().parent.parent
SERVER = [sys.executable, str(ROOT / "mesh_server.py")]
CLIENT = [sys.executable, str(ROOT / "chat_client.py")]



@pytest.fixture
def chain(tmp_path: Path):
    """m1 - m2 - m3, as processes."""
    ports = [free_port() for _ in range(3)]
    procs = []
    try:
        for i, port in enumerate(ports):
            args = [*SERVER, "--port", str(port), "--name", f"m{i + 1}", "--load-interval", "1",
                    "--work-dir", str(tmp_path / f"m{i + 1}")]
            if i:
                args += ["--connect", f"127.0.0.1:{ports[i - 1]}"]
            procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            wait_for(lambda port=port: state_query(port, timeout=1), 30, f"m{i + 1}")
        yield ports
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def monitor_json(port: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "crc.client.monitor", "--server",
                           f"127.0.0.1:{port}", "--once", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_monitor_shows_the_tree_servers_clients_and_running_jobs(chain) -> None:
    m1, m2, m3 = chain
    job = subprocess.Popen([*CLIENT, "--server", f"127.0.0.1:{m1}", "run", "--on", "m3", "--",
                            "sleep", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def seen() -> dict | None:
            snap = monitor_json(m2)
            names = {s["name"]: s for s in snap["servers"].values()}
            running = [j for j in names.get("m3", {}).get("jobs", [])
                       if j["command"] == "sleep 20" and j["state"] == "running"]
            return snap if len(names) == 3 and running and names["m1"]["clients"] >= 1 \
                else None
        snap = wait_for(seen, 60, "the monitor to show three servers and the job on m3")
        root = snap["tree"]                           # from m2, the entry: m1 and m3 hang off it
        assert root["name"] == "m2"
        assert sorted(c["name"] for c in root["children"]) == ["m1", "m3"]
        assert all(not c["children"] for c in root["children"])
        m3_links = next(s for s in snap["servers"].values() if s["name"] == "m3")["links"]
        assert len(m3_links) == 1 and m3_links[0]["tls"] is False
        assert all(s["slots"] >= 1 for s in snap["servers"].values())
        # Plain text when not a terminal: the same tree, a line per server.
        done = subprocess.run([*CLIENT, "--server", f"127.0.0.1:{m1}", "monitor", "--once"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == "tree:" and lines[1].startswith("  m1 (id ")
        assert lines[2].startswith("    m2 (id ") and lines[3].startswith("      m3 (id ")
        assert any(line.startswith("  m3: ") and "running" in line for line in lines)
        # /tree in the interactive client (script mode).
        script = Path(done.args[0]).parent                  # (any directory will do)
        tree_run = subprocess.run([*CLIENT, "--server", f"127.0.0.1:{m3}", "--name", "viewer"],
                                  input="/tree\n/quit\n", capture_output=True, text=True,
                                  timeout=60, cwd=script)
        shown = [line for line in tree_run.stdout.splitlines() if "(id " in line]
        assert [line.split(" (")[0] for line in shown] == ["m3", "  m2", "    m1"]
    finally:
        job.kill()
        job.wait(30)


def test_the_live_view_shows_the_mesh_and_ctrl_c_leaves_it_quietly(tmp_path: Path) -> None:
    """The live view refreshes (each query is sent after the previous table
    was shown, so three queries received mean two tables shown) and Ctrl-C
    leaves it with status 0, the last view on the screen."""
    port, metrics = free_port(), free_port()
    server = subprocess.Popen([*SERVER, "--port", str(port), "--name", "solo", "--metrics",
                               str(metrics), "--work-dir", str(tmp_path / "w")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    live = None
    try:
        def queries() -> int:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics",
                                              timeout=2).read().decode()
            except OSError:
                return -1
            return int(sum(s.value for fam in text_string_to_metric_families(text)
                           if fam.name == "crc_extension_frames_received" for s in fam.samples
                           if s.labels.get("kind") == str(int(Kind.LOAD_QUERY))))
        wait_for(lambda: queries() >= 0, 30, "the server")
        before = queries()
        live = subprocess.Popen([*CLIENT, "--server", f"127.0.0.1:{port}", "monitor"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: queries() >= before + 3, 30, "three refreshes")
        live.send_signal(signal.SIGINT)
        out, err = live.communicate(timeout=30)
        assert live.returncode == 0, err
        assert "error" not in err
        assert "solo (id " in out and "servers" in out
    finally:
        if live is not None and live.poll() is None:
            live.kill()
        server.terminate()
        server.wait(30)


def test_rates_and_events_come_from_two_tables() -> None:
    """Rates are counters' differences over the time between two tables; a
    server that stops reporting, and a lost link, are events."""
    def row(sid, name, chats, peers, failed=0, clients=1, refused=0, fallbacks=0):
        return {"server": sid, "name": name, "cpu": 5.0, "slots": 2, "running": 0, "queued": 0,
                "age": 0.1, "view": {"links": [[p, False, False, 0.2] for p in peers],
                                     "clients": clients, "chats": chats, "bulk": 0,
                                     "started": 0, "failed": failed, "jobs": [],
                                     "refused": refused, "fallbacks": fallbacks}}
    first = snapshot([row(1, "a", 100, [2]), row(2, "b", 0, [1, 3]), row(3, "c", 0, [2])], 1)
    second = snapshot([row(1, "a", 150, [], clients=3, refused=2),
                       row(2, "b", 0, [3], failed=1, clients=0, fallbacks=4)], 1, first, 0.5)
    assert second["servers"]["1"]["rates"]["chats_per_s"] == 100.0
    assert "c left" in second["events"] and "b: 1 job(s) failed" in second["events"]
    assert "a: link to b lost" in second["events"]
    assert "a: 2 client(s) joined" in second["events"] and "b: 1 client(s) left" in second["events"]
    assert "a: 2 connection(s) refused" in second["events"]
    assert "b: 4 compile(s) sent back: no server has the compiler" in second["events"]
    assert tree({1: {"name": "a", "links": []}}, 1) == {"id": 1, "name": "a", "children": []}


def test_the_monitor_works_with_a_secret_and_counts_refused_peers(tmp_path: Path) -> None:
    secret, wrong = tmp_path / "mesh.secret", tmp_path / "wrong.secret"
    secret.write_text("a-mesh-secret-of-enough-length\n")
    wrong.write_text("another-secret-of-enough-length\n")
    secret.chmod(0o600)
    wrong.chmod(0o600)
    port = free_port()
    proc = subprocess.Popen([*SERVER, "--port", str(port), "--name", "sec", "--secret-file",
                             str(secret), "--work-dir", str(tmp_path / "w")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: state_query(port, timeout=1), 30, "the server")
        # A server with the wrong secret tries to join: refused (again and again).
        intruder = subprocess.Popen([*SERVER, "--port", str(free_port()), "--name", "intruder",
                                     "--connect", f"127.0.0.1:{port}", "--secret-file",
                                     str(wrong), "--work-dir", str(tmp_path / "i")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def seen() -> dict | None:
            done = subprocess.run([*CLIENT, "--server", f"127.0.0.1:{port}", "--secret-file",
                                   str(secret), "monitor", "--once", "--json"],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            servers = json.loads(done.stdout)["servers"]
            assert [s["name"] for s in servers.values()] == ["sec"]   # never admitted
            only = next(iter(servers.values()))
            return only if only["counters"]["refused"] >= 1 else None
        try:
            wait_for(seen, 60, "the refusal to show")
        finally:
            intruder.kill()
            intruder.wait(30)
    finally:
        proc.terminate()
        proc.wait(30)
