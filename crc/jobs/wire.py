"""Job traffic on the wire: extension frame kinds and their payloads.

Every job message is an extension frame (type 0x40, docs/protocol.md) whose
payload is ``u32 header length | JSON header | binary body``. The JSON header
carries the small structured part (job id, exit status, file list); the body
carries bytes that must not be re-encoded (output, stdin, file contents).
Frames whose ``flags`` has ``BULK`` set travel in every link's low-priority
queue, behind chat and control traffic.

Packing and unpacking only, as in ``crc.protocol``: no sockets and no job
state.
"""

from __future__ import annotations

import json
import struct
import zlib
from enum import IntEnum
from typing import Any

from ..protocol import FLAG_BULK, Extension, ProtocolError

_LEN = struct.Struct(">I")

#: Standard input in flight per job: a client sends at most this many bytes
#: beyond what the executing server has acknowledged (INPUT_ACK), so a job
#: that reads slowly (or not yet) holds at most this much at its server.
STDIN_WINDOW = 1 << 20
#: ... and the server acknowledges at least every this many bytes taken.
STDIN_ACK_EVERY = STDIN_WINDOW // 8
#: Unfinished runs one client may have through its entry server, unless the
#: server says otherwise (``max_jobs`` in its hello reply).
DEFAULT_MAX_JOBS = 256


class Kind(IntEnum):
    LOAD = 1            # server -> every mesh server (flooded): LoadReport JSON
    LOAD_QUERY = 2      # client -> its server: send me the load table
    LOAD_TABLE = 3      # server -> client: [{report..., age}]
    SUBMIT = 10         # client -> its server (entry): run this
    RUN = 11            # entry -> executing server
    ACCEPTED = 12       # entry -> client: where the job (or each copy) runs
    STARTED = 13        # executing server -> client
    OUTPUT = 14         # executing server -> client: a piece of stdout/stderr
    INPUT = 15          # client -> executing server: a piece of stdin (or EOF)
    DONE = 16           # executing server -> client: exit status, produced files
    CANCEL = 17         # client -> entry -> executing server
    FAILED = 18         # anyone -> client: the job could not run or was lost
    WANT = 20           # requester -> holder: send bytes [offset, offset+length) of a blob
    DATA = 21           # holder -> requester: bytes of a blob
    MISSING = 22        # holder -> requester: no such blob
    FETCH = 23          # client -> its server -> executing server: send a run's results again
    RESULT_ACK = 24     # client -> executing server: I have everything; forget the result
    INPUT_ACK = 25      # executing server -> client: stdin bytes taken so far (flow control)


def pack(header: dict[str, Any], body: bytes | memoryview = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return b"".join((_LEN.pack(len(head)), head, body))


def unpack(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a payload into its JSON header and body; ``ProtocolError`` if malformed."""
    header, start = _header(payload)
    return header, payload[start:]


def unpack_view(payload: bytes) -> tuple[dict[str, Any], memoryview]:
    """Like ``unpack``, but the body is a view into ``payload``, not a copy (file data)."""
    header, start = _header(payload)
    return header, memoryview(payload)[start:]


def _header(payload: bytes) -> tuple[dict[str, Any], int]:
    """The JSON header of a payload and where its body starts."""
    if len(payload) < 4:
        raise ProtocolError("job frame shorter than its header length")
    (n,) = _LEN.unpack_from(payload)
    if 4 + n > len(payload):
        raise ProtocolError(f"job frame header length {n} exceeds the frame")
    try:
        header = json.loads(payload[4:4 + n])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"job frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("job frame header is not a JSON object")
    return header, 4 + n


#: Small files may ride inside a SUBMIT (and its RUN) or a DONE instead of
#: being fetched with WANT afterwards: a compile's source and object then
#: cost no round trip and no store on the relays. At most this many bytes of
#: (deflated) content per frame, so a frame never holds up chat for long.
INLINE_MAX = 64 << 10


def pack_inline(files: list[tuple[str, bytes]], budget: int = INLINE_MAX
                ) -> tuple[list[dict[str, Any]], bytes]:
    """``(entries, body)`` carrying as many of ``files`` (``(sha, data)``) as
    fit in ``budget`` bytes, each deflated when that makes it 10 % smaller."""
    entries: list[dict[str, Any]] = []
    parts: list[bytes] = []
    used = 0
    for sha, data in files:
        packed = zlib.compress(data, 1) if len(data) > 256 else data
        deflated = len(packed) < 0.9 * len(data)
        if not deflated:
            packed = data
        if used + len(packed) > budget:
            continue
        entry: dict[str, Any] = {"sha": sha, "n": len(packed)}
        if deflated:
            entry["z"] = len(data)
        entries.append(entry)
        parts.append(packed)
        used += len(packed)
    return entries, b"".join(parts)


def check_inline(entries: Any, body_size: int) -> None:
    """``ProtocolError`` unless ``entries`` is a well-formed list whose
    pieces fit a body of ``body_size`` bytes (what an entry server checks
    before passing a SUBMIT's files on, without inflating them)."""
    if not isinstance(entries, list):
        raise ProtocolError("job frame field 'inline' is not a list")
    at = 0
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("sha"), str) or \
                not isinstance(entry.get("n"), int) or entry["n"] < 0:
            raise ProtocolError("malformed inline file entry")
        size = entry.get("z", 0)
        if not isinstance(size, int) or not 0 <= size <= 16 * INLINE_MAX:
            raise ProtocolError("inline file with a bad inflated size")
        at += entry["n"]
    if at > body_size:
        raise ProtocolError("inline files exceed the frame")


def unpack_inline(entries: Any, body: bytes | memoryview) -> list[tuple[str, bytes]]:
    """The ``(sha, data)`` a frame carries inline (digests not checked here:
    the store checks them); ``ProtocolError`` if the list and body disagree."""
    check_inline(entries, len(body))
    out, at = [], 0
    for entry in entries:
        data = bytes(body[at:at + entry["n"]])
        at += entry["n"]
        if "z" in entry:
            size = entry["z"]
            try:
                inflater = zlib.decompressobj()
                data = inflater.decompress(data, size)
                if len(data) != size or inflater.unconsumed_tail:
                    raise zlib.error("size differs")
            except zlib.error as exc:
                raise ProtocolError(f"inline file does not inflate: {exc}") from None
        out.append((entry["sha"], data))
    return out


def frame(kind: Kind, source: int, dest: int, header: dict[str, Any],
          body: bytes | memoryview = b"", bulk: bool = False) -> Extension:
    return Extension(int(kind), source, dest, FLAG_BULK if bulk else 0, pack(header, body))


def field(header: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """``header[name]`` checked against ``kind``; ``ProtocolError`` naming it if not."""
    value = header.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ProtocolError(f"job frame field {name!r} is missing or not {_names(kind)}")
    return value


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)
