"""One meshcc invocation, from command line to object file.

1. ``args.plan`` decides: anything but one C/C++ source compiled into one
   object runs here, exactly as the real compiler (we ``exec`` it, holding a
   local slot). So does everything when ``CRC_MESH`` is not set.
2. The source is preprocessed here (``source``), with the dependency file
   written as the local compile would write it.
3. The preprocessed text goes to the mesh as a job naming the compiler by
   its content (``crc.jobs.compilers``): only a server with the same
   compiler takes it; the object comes back and is moved into place.
4. A compile that printed anything there (warnings, errors) is compiled
   again here, so what the user reads is the local compiler's own text
   (caret lines and notes need the original files); a clean compile's
   object is the mesh's. A failure of the mesh itself (unreachable,
   refused, no such compiler, a server lost, a timeout) compiles here with
   one line on standard error saying why — or, with ``MESHCC_FALLBACK=0``,
   fails with that line.

Environment: ``CRC_MESH`` (HOST:PORT[,HOST:PORT...]), ``CRC_MESH_SECRET_FILE``,
``CRC_MESH_TLS_CA`` / ``_CERT`` / ``_KEY`` (as ``chat_client.py``'s flags),
``MESHCC_FALLBACK``, ``MESHCC_VERBOSE``, ``MESHCC_TIMEOUT`` (seconds a
remote compile may take, default 600), ``MESHCC_CONNECT_TIMEOUT`` (default 5).

Client side: talks to the mesh through ``crc.client``; prints only the
compiler's output and its own one-line notes on standard error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .args import Local, Remote, plan
from .compiler import MeshFailure, UsageError, invocation, local_slot
from .source import remote_name, strip_builtins

PROG = "meshcc"
#: What the remote compile writes its object to, in the job's directory.
REMOTE_OUTPUT = "meshcc-out.o"


class Verbose:
    """``MESHCC_VERBOSE=1``: where each compile ran, and each step's time."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.start = time.monotonic()
        self.steps: list[str] = []

    def step(self, what: str) -> None:
        if self.on:
            self.steps.append(f"{what} {1000 * (time.monotonic() - self.start):.1f} ms")

    def say(self, text: str) -> None:
        if self.on:
            steps = f" ({', '.join(self.steps)})" if self.steps else ""
            print(f"{PROG}: {text}{steps}", file=sys.stderr, flush=True)


def note(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "no", "false", "off")


def seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"${name}: {text!r} is not a number of seconds") from None
    if not value > 0:
        raise UsageError(f"${name}: {text!r} is not a positive number of seconds")
    return value


def run_locally(real: str, args: list[str], verbose: Verbose, why: str) -> int:
    """Become the real compiler (its output, its exit status), in a local slot."""
    local_slot()
    verbose.say(f"compiling here: {why}")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(real, [real, *args])
    except OSError as exc:
        note(f"cannot run {real}: {exc.strerror or exc}")
        return 127


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    verbose = Verbose(flag("MESHCC_VERBOSE", False))
    try:
        me = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
        name, real, args = invocation(argv, me)
        connect_timeout = seconds("MESHCC_CONNECT_TIMEOUT", 5.0)
        timeout = seconds("MESHCC_TIMEOUT", 600.0)
    except UsageError as exc:
        note(str(exc))
        return 2
    mesh = os.environ.get("CRC_MESH", "").strip()
    what = plan([name, *args])
    if isinstance(what, Local):
        return run_locally(real, args, verbose, what.reason)
    if not mesh:
        return run_locally(real, args, verbose, "CRC_MESH is not set")
    fallback = flag("MESHCC_FALLBACK", True)
    try:
        return compile_on_mesh(what, real, args, mesh, verbose, connect_timeout, timeout)
    except MeshFailure as exc:
        if not fallback:
            note(f"{what.source}: the mesh could not compile it: {exc} "
                 "(MESHCC_FALLBACK=0: not compiling here)")
            return 1
        note(f"{what.source}: compiling here: {exc}")
        return run_locally(real, args, verbose, str(exc))


def compile_on_mesh(what: Remote, real: str, args: list[str], mesh: str, verbose: Verbose,
                    connect_timeout: float, timeout: float) -> int:
    from ..jobs.compilers import CompilerError, identity
    try:
        compiler = identity(real)["id"]
    except CompilerError as exc:
        raise MeshFailure(f"cannot identify the compiler: {exc}") from None
    verbose.step("identified")
    out_dir = os.path.dirname(what.output) or "."
    work = Path(tempfile.mkdtemp(prefix=".meshcc-", dir=out_dir if os.path.isdir(out_dir)
                                 else None))
    try:
        slot = local_slot()
        pre = subprocess.run([real, *what.preprocess], capture_output=True)
        if slot is not None:
            os.close(slot)
        verbose.step("preprocessed")
        if pre.returncode != 0 or pre.stderr:
            # An error or a warning while preprocessing: the local compile
            # says it exactly as it would have (and fails if it must).
            return run_locally(real, args, verbose, "the preprocessor had something to say")
        name = remote_name(what.source)
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(strip_builtins(pre.stdout))
        argv = [what.compiler, *what.compile, name, "-o", REMOTE_OUTPUT]
        result = submit(mesh, argv, name, work, compiler,
                        os.getcwd() if what.debug else None, connect_timeout, timeout)
        verbose.step("compiled")
        if result["exit"] != 0 or result["stderr"] or result["stdout"]:
            return run_locally(real, args, verbose,
                               f"the compile on {result['server']} printed diagnostics")
        produced = work / REMOTE_OUTPUT
        if not produced.is_file():
            raise MeshFailure(f"{result['server']} returned no object file")
        os.replace(produced, what.output)
        verbose.say(f"{what.source} compiled on {result['server']}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def submit(mesh: str, argv: list[str], source: str, work: Path, compiler: str,
           debug_dir: str | None, connect_timeout: float, timeout: float) -> dict[str, Any]:
    """Run ``argv`` on the mesh with ``source`` from ``work``; its exit,
    output and server, produced files written into ``work``."""
    from .session import MeshSession
    return MeshSession(mesh, connect_timeout).compile(argv, source, work, compiler,
                                                      debug_dir, timeout)
