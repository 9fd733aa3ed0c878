"""How meshcc and its agent talk over the agent's Unix socket: one request,
one answer, each a ``u32`` length and a ``marshal``-encoded dict of plain
values (strings, numbers, None, lists).

The native front (``crc.cc.launcher``) speaks a second form, one a C
program reads and writes easily: ``THIN``, then a ``u32`` length and
NUL-terminated fields (the invocation: working directory, the front's own
path, argc, argv, then the environment as ``NAME=value``); the answer is a
``u32`` length and NUL-terminated fields (``crc.cc.front`` says which).
Fields are bytes as the system has them (``os.fsencode``/``fsdecode``).

``marshal`` rather than JSON because meshcc pays for every import once per
compile (``json`` brings ``re``); it is safe here because only the socket's
owner can connect (its directory is mode 0700): neither side ever reads
anyone else's bytes. Uses the ``_socket`` extension directly for the same
reason (``socket`` brings ``enum``, ``selectors``...).
"""

from __future__ import annotations

import _socket
import marshal
import os
import time

#: Bytes a message may have (an argv and some paths; sources travel by file).
MAX_MESSAGE = 1 << 20
#: Seconds between attempts to start an agent while none answers.
RESTART = 0.5
#: Longest wait between attempts to connect while an agent starts: every
#: compile of a build's first wave waits for it, and an attempt costs
#: microseconds, so the wait stays short.
POLL = 0.005
#: Seconds between looks for a free local slot while no agent answers (a
#: compile of the first wave may run here instead: ``wrapper.here_while_starting``).
HERE_AGAIN = 0.02


class TalkError(Exception):
    """The agent cannot be reached or answered nonsense; says which."""


def encode(message: dict) -> bytes:
    body = marshal.dumps(message)
    return len(body).to_bytes(4, "big") + body


def decode(buffer: bytes | bytearray) -> tuple[dict | None, int]:
    """The first whole message in ``buffer`` and the bytes it took;
    ``(None, 0)`` while incomplete; ``TalkError`` if malformed."""
    if len(buffer) < 4:
        return None, 0
    size = int.from_bytes(buffer[:4], "big")
    if size > MAX_MESSAGE:
        raise TalkError(f"message of {size} bytes is over {MAX_MESSAGE}")
    if len(buffer) < 4 + size:
        return None, 0
    try:
        message = marshal.loads(bytes(buffer[4:4 + size]))
    except (ValueError, EOFError, TypeError) as exc:
        raise TalkError(f"unreadable message: {exc}") from None
    if not isinstance(message, dict):
        raise TalkError("message is not a dict")
    return message, 4 + size


#: The first bytes of a thin request (a marshal message's length starts with 0).
THIN = b"MCC1"


def encode_fields(fields: "list[str]", magic: bytes = b"") -> bytes:
    body = b"".join(os.fsencode(f) + b"\0" for f in fields)
    return magic + len(body).to_bytes(4, "big") + body


def decode_fields(buffer: "bytes | bytearray",
                  magic: bytes = b"") -> "tuple[list[str] | None, int]":
    """The fields of the first whole thin message in ``buffer`` (after
    ``magic``) and the bytes it took; ``(None, 0)`` while incomplete."""
    head = len(magic) + 4
    if len(buffer) < head:
        return None, 0
    size = int.from_bytes(buffer[len(magic):head], "big")
    if size > MAX_MESSAGE:
        raise TalkError(f"message of {size} bytes is over {MAX_MESSAGE}")
    if len(buffer) < head + size:
        return None, 0
    body = bytes(buffer[head:head + size])
    if body and not body.endswith(b"\0"):
        raise TalkError("unterminated field")
    return [os.fsdecode(f) for f in body.split(b"\0")[:-1]], head + size


def ours(sock: "_socket.socket", path: str) -> bool:
    """Whether the agent at ``path`` is this user's: its folder a directory
    of ours open to nobody else (as the agent makes it), and the process at
    the other end ours (``SO_PEERCRED``)."""
    try:
        st = os.lstat(os.path.dirname(path))
        cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    except OSError:
        return False
    uid = os.getuid()
    return (st.st_mode & 0o170000 == 0o040000 and st.st_uid == uid and not st.st_mode & 0o077
            and int.from_bytes(cred[4:8], "little") == uid)


def ask(path: str, request: dict, connect_timeout: float, answer_timeout: float,
        start: "Callable[[str], str]",  # noqa: F821 (not imported: startup cost)
        meanwhile: "Callable[[], None] | None" = None) -> dict:  # noqa: F821
    """Send ``request`` to the agent at ``path`` (calling ``start(path)`` if
    nobody listens there, and again every ``RESTART`` seconds while nobody
    does: an agent being started by another meshcc may die before it
    listens) and return its answer. While nobody listens and ``start``
    says another meshcc's agent is starting (``"elsewhere"``; never once it
    said ``"started"``: the agent we started is ours to wait for),
    ``meanwhile()`` is called every ``HERE_AGAIN`` seconds (it may raise,
    to do the work another way)."""
    from .compiler import MeshFailure
    deadline = time.monotonic() + connect_timeout
    start_again = here_again = 0.0
    elsewhere = mine = False
    delay = 0.002
    while True:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(path)
            if not ours(sock, path):
                sock.close()
                raise MeshFailure(f"{path} is not this user's meshcc agent")
            break
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
        except OSError as exc:
            sock.close()
            raise MeshFailure(f"cannot reach the meshcc agent at {path}: "
                              f"{exc.strerror or exc}") from None
        if time.monotonic() >= start_again:
            state = start(path)
            mine = mine or state == "started"
            elsewhere = state == "elsewhere" and not mine
            start_again = time.monotonic() + RESTART
        if elsewhere and meanwhile is not None and time.monotonic() >= here_again:
            meanwhile()
            here_again = time.monotonic() + HERE_AGAIN
        if time.monotonic() > deadline:
            raise MeshFailure(f"the meshcc agent did not start within {connect_timeout:g} s")
        time.sleep(delay)              # the agent we started is binding its socket
        delay = min(delay * 2, POLL)
    try:
        sock.settimeout(answer_timeout)
        sock.sendall(encode(request))
        buffer = bytearray()
        while True:
            answer, used = decode(buffer)
            if answer is not None:
                return answer
            chunk = sock.recv(65536)
            if not chunk:
                raise MeshFailure("the meshcc agent closed the connection without an answer")
            buffer += chunk
    except _socket.timeout:
        raise MeshFailure(f"no answer within {answer_timeout:g} s (MESHCC_TIMEOUT)") from None
    except TalkError as exc:
        raise MeshFailure(f"the meshcc agent: {exc}") from None
    except OSError as exc:
        raise MeshFailure(f"the meshcc agent: {exc.strerror or exc}") from None
    finally:
        sock.close()
