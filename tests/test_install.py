"""The project as a package: it installs with pip, its commands run, every
program also runs as ``python -m crc.<part>``, and a missing dependency is
one clear line, not a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the project installed (``pip install .``;
    the dependencies come from this interpreter's site-packages)."""
    home = tmp_path_factory.mktemp("venv")
    source = home / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "Logs", "__pycache__", ".pytest_cache", "*.egg-info", "build"))
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(home / "env")
    pip = run([str(home / "env" / "bin" / "python"), "-m", "pip", "install", "--quiet",
               "--no-build-isolation", "--no-deps", "--disable-pip-version-check", str(source)])
    assert pip.returncode == 0, pip.stderr
    return home / "env" / "bin"


@pytest.mark.parametrize("command, usage", [
    ("crc-mesh-server", "usage: mesh_server.py"),
    ("crc-chat", "usage: chat_client.py"),
    ("crc-testmanager", "usage: TestManager.py"),
])
def test_the_installed_commands_run(installed: Path, tmp_path: Path, command: str,
                                    usage: str) -> None:
    result = run([str(installed / command), "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage)


def test_the_installed_test_manager_runs_a_project_s_scenarios(installed: Path,
                                                             tmp_path: Path) -> None:
    (tmp_path / "TestCases").mkdir()
    shutil.copy(ROOT / "TestCases" / "04_chat_1_hop.cfg", tmp_path / "TestCases")
    result = run([str(installed / "crc-testmanager"), "--processes"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1/1 passed" in result.stdout


@pytest.mark.parametrize("module, usage", [
    ("crc.server", "usage: mesh_server.py"), ("crc.server.cli", "usage: mesh_server.py"),
    ("crc.client", "usage: chat_client.py"), ("crc.client.cli", "usage: chat_client.py"),
    ("crc.scenarios", "usage: TestManager.py"), ("crc.scenarios.cli", "usage: TestManager.py"),
])
def test_every_program_runs_as_a_module(module: str, usage: str) -> None:
    result = run([sys.executable, "-m", module, "--help"], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage)


def test_a_missing_dependency_is_named_with_the_install_command(tmp_path: Path) -> None:
    """``rich`` hidden behind a module that refuses to import."""
    blocker = tmp_path / "rich"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'rich'\", "
                                         "name='rich')\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    for script in ("chat_client.py", "TestManager.py"):
        result = run([sys.executable, str(ROOT / script), "--help"], env=env, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "the Python package 'rich' is not installed" in result.stderr
        assert "python -m pip install -r requirements.txt" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_dependency_missing_only_when_a_part_of_a_program_loads_it_is_named_too(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Programs load some of their parts when they first run (the chat's
    views, a build's output): a package missing there is named the same way."""
    import types

    from crc import entry

    def main() -> int:
        raise ModuleNotFoundError("No module named 'somepackage'", name="somepackage")

    monkeypatch.setattr(entry.importlib, "import_module",
                        lambda name: types.SimpleNamespace(main=main))
    with pytest.raises(SystemExit) as exit_:
        entry.chat()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "the Python package 'somepackage' is not installed" in err
    assert "python -m pip install -r requirements.txt" in err
