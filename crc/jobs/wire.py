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
