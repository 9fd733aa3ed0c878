"""What travels for a compile: the source preprocessed here, directives only.

The client runs the real compiler with ``-E -fdirectives-only``: includes
are followed and conditionals decided on this machine (so the headers never
need to exist there), but macros are kept as definitions and expanded by the
compiler on the executing server, so columns, ``__FILE__``/``__LINE__`` and
the debug information come out as a compile of the original source would
make them. The compiler's own predefined macros (the ``<built-in>`` block)
are removed: the same compiler, there, defines them itself; definitions
from the command line (``-D``/``-U``) stay in the text.

Pure text in, text out; no processes, no sockets.
"""

from __future__ import annotations

_BUILT_IN = b"<built-in>"


def marker_file(line: bytes) -> bytes | None:
    """The file a line marker (``# 12 "name" flags``) names, or None."""
    if not line.startswith(b"# "):
        return None
    number, _, rest = line[2:].partition(b" ")
    if not number.isdigit() or not rest.startswith(b'"'):
        return None
    end = rest.rfind(b'"')
    return rest[1:end] if end > 0 else None


def strip_builtins(text: bytes) -> bytes:
    """``text`` (``-E -fdirectives-only`` output) without the ``#define``
    and ``#undef`` lines of the ``<built-in>`` block."""
    out = []
    current = b""
    for line in text.splitlines(keepends=True):
        if line.startswith(b"# "):
            name = marker_file(line)
            if name is not None:
                current = name
        elif current == _BUILT_IN and line.startswith((b"#define ", b"#undef ")):
            continue
        out.append(line)
    return b"".join(out)


def remote_name(source: str) -> str:
    """The name the preprocessed source has in the job's directory: the same
    as here when it is relative and stays inside (the object records it),
    else its base name."""
    parts = source.split("/")
    if source.startswith("/") or ".." in parts or any(p in ("", ".") for p in parts[:-1]):
        return parts[-1]
    return source
