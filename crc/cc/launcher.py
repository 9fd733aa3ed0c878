"""``meshcc --launcher``: build (once) and name meshcc's native front.

make starts one compiler per compile; through ``meshcc`` that is one Python
interpreter each (about 7 ms of CPU before any work, more than the rest of
meshcc's own work per compile). The native front (``launcher.c``) starts in
well under a millisecond and leaves the work to the agent (``crc.cc.front``);
whenever no agent answers it becomes ``meshcc`` itself, so it does all that
``meshcc`` does::

    make -j8 CC="$(meshcc --launcher) gcc"
    cmake -DCMAKE_C_COMPILER_LAUNCHER="$(meshcc --launcher)" ..

It is compiled from this package's ``launcher.c`` with the machine's C
compiler (``$MESHCC_LAUNCHER_CC``, else ``cc``, else ``gcc``) into
``$XDG_CACHE_HOME/crc-mesh/launcher/TAG/meshcc`` (``~/.cache`` without it;
not in ``$MESHCC_CACHE_DIR``, whose compiles may come and go), where TAG
names the source, the interpreter and the package's place: a change of any
builds a new one. Its name is ``meshcc``, so
masquerade links to it are skipped on PATH like meshcc itself.
"""

from __future__ import annotations

import os
import sys

from .direct import sha256

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.c")
#: What the native front runs for ``python``: meshcc itself, by this
#: interpreter, from this package (the front passes its argv after these);
#: the package's root takes the place ``-c`` gives the working directory,
#: so that nothing is imported from the build's directories.
PYTHON_FRONT = ("import sys; sys.path[0] = sys.argv.pop(1); "
                "from crc.cc.wrapper import main; sys.exit(main(sys.argv[1:]))")
USAGE = "usage: meshcc --launcher   (prints the native front's path, building it first if needed)"


def python_front() -> list[str]:
    """What the native front runs as meshcc: this interpreter, without
    site-packages, this package's root first on its path."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [sys.executable, "-S", "-c", PYTHON_FRONT, root]


class LauncherError(Exception):
    """The native front cannot be built here: why."""


def c_string(text: str) -> str:
    """``text`` as a C string literal (octal escapes for all but plain ASCII)."""
    out = []
    for byte in os.fsencode(text):
        char = chr(byte)
        if char in '"\\?' or not 32 <= byte < 127:
            out.append(f"\\{byte:03o}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def program_text() -> str:
    python, _s, _c, front, root = python_front()
    with open(SOURCE, encoding="utf-8") as f:
        body = f.read()
    return (f"#define MESHCC_PYTHON {c_string(python)}\n"
            f"#define MESHCC_FRONT {c_string(front)}\n"
            f"#define MESHCC_ROOT {c_string(root)}\n" + body)


def compiler() -> str:
    import shutil
    for name in (os.environ.get("MESHCC_LAUNCHER_CC", "").strip(), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    raise LauncherError("no C compiler to build it with (set MESHCC_LAUNCHER_CC)")


def launcher() -> str:
    """The native front's path, built if it is not there yet."""
    text = program_text()
    tag = sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "crc-mesh", "launcher", tag)
    path = os.path.join(folder, "meshcc")
    if os.access(path, os.X_OK):
        return path
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise LauncherError(f"cannot make {folder}: {exc.strerror or exc}") from None
    import subprocess
    source = os.path.join(folder, f"launcher-{os.getpid()}.c")
    built = os.path.join(folder, f".meshcc-{os.getpid()}")
    try:
        with open(source, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        done = subprocess.run([compiler(), "-O2", "-o", built, source], capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise LauncherError(f"compiling {SOURCE} failed:\n{done.stderr.strip()}")
        os.replace(built, path)                  # (another meshcc may have built it too)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LauncherError(f"cannot build it: {exc}") from None
    finally:
        for leftover in (source, built):
            try:
                os.unlink(leftover)
            except OSError:
                pass
    return path


def command(args: list[str]) -> int:
    if args:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        print(launcher(), flush=True)
    except LauncherError as exc:
        print(f"meshcc --launcher: {exc}", file=sys.stderr)
        return 1
    return 0
