"""Command line of ``TestManager.py``: which scenario files to run, and how.

``python TestManager.py [PREFIX ...] [--list] [--processes]``: PREFIX keeps
the files of ``TestCases/`` whose name starts with it (all files without
one); they run one after another. The exit status is 1 when any scenario
failed, 2 when no file matched.

It picks the files and hands them to ``ui``; it plays and judges nothing
itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console

from .runner import ROOT
from .ui import list_scenarios, run_all, show_no_match

SUFFIXES = (".cfg", ".json")


def find_scenarios(directory: Path, prefixes: Sequence[str] = ()) -> list[Path]:
    """Scenario files in ``directory`` whose names start with one of ``prefixes``."""
    try:
        files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    except OSError as exc:
        raise SystemExit(f"TestManager.py: cannot list {directory}: {exc.strerror or exc}")
    if prefixes:
        files = [p for p in files if any(p.name.startswith(prefix) for prefix in prefixes)]
    return files


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="TestManager.py",
                                description="Run CRC scenario files (TestCases/) and check "
                                            "the final state of every machine.")
    p.add_argument("prefixes", nargs="*", metavar="PREFIX",
                   help="run only files whose name starts with PREFIX (default: all)")
    p.add_argument("--list", action="store_true", help="list the selected files and exit")
    p.add_argument("--processes", action="store_true",
                   help="run servers as mesh_server.py processes (state read by query)")
    p.add_argument("--dir", type=Path, default=None,
                   help="directory of scenario files (default: TestCases/ here, else the "
                   "project's)")
    return p


def project_root() -> Path:
    """Where TestCases/ and Logs/ are: this directory if it has TestCases/
    (an installed ``crc-testmanager`` run in a project), else the project's."""
    here = Path.cwd()
    return here if (here / "TestCases").is_dir() else ROOT


def main(argv: Sequence[str] | None = None, root: Path | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = root or project_root()
    if args.dir is not None and not str(args.dir).strip():
        parser.error("--dir needs a directory, got an empty name")
    args.dir = args.dir or root / "TestCases"
    if not args.dir.is_dir():
        parser.error(f"--dir {args.dir}: " + ("no such directory" if not args.dir.exists()
                                              else "not a directory"))
    console = Console()
    paths = find_scenarios(args.dir, args.prefixes)
    if not paths:
        show_no_match(console, args.dir, args.prefixes)
        return 2
    if args.list:
        list_scenarios(console, paths)
        return 0
    results = run_all(paths, processes=args.processes, root=root, console=console)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
