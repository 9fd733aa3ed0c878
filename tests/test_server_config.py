"""``mesh_server.py --config FILE`` (TOML) and ``--print-config``: the file
holds any flag, the command line overrides it, the printed settings load
back to the same, and a bad file is refused — naming the file, line and key —
before anything listens."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import free_port, state_query

from .meshkit import wait_for

ROOT = Path(__file__).resolve().parent.parent
SERVER = [sys.executable, str(ROOT / "mesh_server.py")]



def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SERVER, *args], capture_output=True, text=True, timeout=60)


def settings(text: str) -> dict[str, str]:
    """``key = value`` lines of a printed configuration."""
    return dict(line.split(" = ", 1) for line in text.splitlines()
                if line and not line.startswith("#"))


def test_the_file_sets_flags_and_the_command_line_overrides_it(tmp_path: Path) -> None:
    config = tmp_path / "mesh.toml"
    config.write_text('# three settings and a list\nport = 7123\nname = "alpha"\n'
                      'connect = ["127.0.0.1:7000", "127.0.0.1:7001"]\n'
                      "max_connections = 100\nkeepalive = 2.5\ninsecure-remote-jobs = true\n")
    shown = run("--config", str(config), "--print-config")
    assert shown.returncode == 0, shown.stderr
    got = settings(shown.stdout)
    assert got["port"] == "7123" and got["name"] == '"alpha"'
    assert got["connect"] == '["127.0.0.1:7000", "127.0.0.1:7001"]'
    assert got["max-connections"] == "100" and got["keepalive"] == "2.5"
    assert got["insecure-remote-jobs"] == "true"
    assert got["slots"]                                   # defaults are shown too
    over = settings(run("--config", str(config), "--name", "beta", "--connect",
                        "127.0.0.1:7999", "--print-config").stdout)
    assert over["name"] == '"beta"' and over["connect"] == '["127.0.0.1:7999"]'
    assert over["port"] == "7123"


def test_printed_settings_load_back_to_the_same(tmp_path: Path) -> None:
    first = run("--port", "7300", "--name", "x y", "--keepalive", "1.5", "--dead-after", "9",
                "--compilers", "gcc,g++", "--plain-clients", "deny", "--metrics", "9101",
                "--print-config")
    assert first.returncode == 0, first.stderr
    (tmp_path / "printed.toml").write_text(first.stdout)
    again = run("--config", str(tmp_path / "printed.toml"), "--print-config")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    assert 'metrics = "127.0.0.1:9101"' in first.stdout


@pytest.mark.parametrize("text,message", [
    ("port = 7000\nprot = 7\n", ":2: prot: unknown setting"),
    ("port = 7000\n\nslots = -3\n", ":3: slots: -3 is not positive"),
    ("port = 7000\nno-rejoin = \"yes\"\n", ":2: no-rejoin: is a switch"),
    ("port = 7000\nname = true\n", ":2: name: takes a value"),
    ("port = 7000\n[jobs]\nslots = 2\n", ":2: jobs: a table"),
    ("port = 7000\nlog-level = \"LOUD\"\n", ":2: log-level: 'LOUD' is not one of"),
    ("port = 7000\nslots = = 3\n", ": not valid TOML"),
], ids=["unknown", "bad value", "switch", "not a switch", "table", "choice", "syntax"])
def test_a_bad_file_is_refused_naming_where_before_anything_listens(
        tmp_path: Path, text: str, message: str) -> None:
    port = free_port()
    config = tmp_path / "bad.toml"
    config.write_text(text.replace("7000", str(port)))
    done = run("--config", str(config))
    assert done.returncode == 2
    assert f"mesh_server.py: {config}{message}" in done.stderr, done.stderr
    with socket.socket() as s:                      # nothing listened on the port
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    done = run("--config", str(tmp_path / "nowhere.toml"))
    assert done.returncode == 2 and "nowhere.toml: No such file" in done.stderr


def test_a_server_runs_with_the_settings_of_its_file(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "mesh.toml"
    config.write_text(f'port = {port}\nname = "from-file"\nkeepalive = 1\n')
    proc = subprocess.Popen([*SERVER, "--config", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        state = wait_for(lambda: state_query(port, timeout=1), 30, "the server to answer")
        assert state["name"] == "from-file"
    finally:
        proc.terminate()
        proc.wait(30)
