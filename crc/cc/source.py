"""What travels for a compile: the source preprocessed here, directives only.

The client runs the real compiler with ``-E -fdirectives-only``: includes
are followed and conditionals decided on this machine (so the headers never
need to exist there), but macros are kept as definitions and expanded by the
compiler on the executing server, so columns, ``__FILE__``/``__LINE__`` and
the debug information come out as a compile of the original source would
make them. For a compile as plain source there (``-g``), the compiler's own
predefined macros (the ``<built-in>`` block) are removed: the same compiler
defines them itself; definitions from the command line (``-D``/``-U``) stay
in the text. ``files_read`` lists what the preprocessor read, for the local
cache's manifest.

Pure text in, text out; no processes, no sockets.
"""

from __future__ import annotations

import os

_BUILT_IN = b"<built-in>"
_PSEUDO = (b"<built-in>", b"<command-line>")


def files_read(text: bytes) -> list[str]:
    """Every file the preprocessor read, from the line markers of its output,
    in order and once each (markers escape backslashes)."""
    seen: dict[bytes, None] = {}
    for _, _, name in markers(text):
        if name not in _PSEUDO and not name.endswith(b"//"):    # ("dir//": the cwd)
            seen[name] = None
    return [os.fsdecode(name.replace(b"\\\\", b"\\")) for name in seen]


def marker_file(line: bytes) -> bytes | None:
    """The file a line marker (``# 12 "name" flags``) names, or None."""
    if not line.startswith(b"# "):
        return None
    number, _, rest = line[2:].partition(b" ")
    if not number.isdigit() or not rest.startswith(b'"'):
        return None
    end = rest.rfind(b'"')
    return rest[1:end] if end > 0 else None


def markers(text: bytes) -> "Iterator[tuple[int, int, bytes]]":  # noqa: F821
    """``(start, end, file)`` of every line marker in ``text``: found with
    ``bytes.find`` rather than line by line (a source with its headers is
    hundreds of kilobytes, and this runs once per compile)."""
    pos = 0 if text.startswith(b"# ") else text.find(b"\n# ")
    while pos >= 0:
        start = pos + 1 if text[pos:pos + 1] == b"\n" else pos
        end = text.find(b"\n", start)
        end = len(text) if end < 0 else end + 1
        name = marker_file(text[start:end].rstrip(b"\n"))
        if name is not None:
            yield start, end, name
        pos = text.find(b"\n# ", end - 1)


def strip_builtins(text: bytes) -> bytes:
    """``text`` (``-E -fdirectives-only`` output) without the ``#define``
    and ``#undef`` lines of the ``<built-in>`` block(s)."""
    out = []
    kept = 0                       # text[:kept] is decided
    inside: int | None = None      # where the current built-in block's lines start
    for start, end, name in markers(text):
        if inside is not None:
            out.append(text[kept:inside])
            out.extend(line for line in text[inside:start].splitlines(keepends=True)
                       if not line.startswith((b"#define ", b"#undef ")))
            kept, inside = start, None
        if name == _BUILT_IN:
            inside = end
    if inside is not None:
        out.append(text[kept:inside])
        out.extend(line for line in text[inside:].splitlines(keepends=True)
                   if not line.startswith((b"#define ", b"#undef ")))
    else:
        out.append(text[kept:])
    return b"".join(out)


def remote_name(source: str) -> str:
    """The name the preprocessed source has in the job's directory: the same
    as here when it is relative and stays inside (the object records it),
    else its base name."""
    parts = source.split("/")
    if source.startswith("/") or ".." in parts or any(p in ("", ".") for p in parts[:-1]):
        return parts[-1]
    return source
