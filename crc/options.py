"""Value types of the command lines: ports, ids, addresses, sizes, seconds,
names, paths. Each turns text into a value or raises ``OptionError`` (an
``argparse.ArgumentTypeError``) with one line saying what is wrong and what
would be right; argparse prefixes the flag. Both programs (and any later
configuration file) read their values through these, so a value means the
same everywhere.

Pure: no sockets, no files (but ``directory_problem``, which looks at and
makes the directory it is asked about).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from .protocol import MAX_ID, MAX_INFO, MAX_NAME, field_problem

#: The longest time any seconds option may name (about 115 days): beyond it
#: timers overflow the platform's clocks, and nobody means it.
MAX_SECONDS = 10_000_000.0


class OptionError(argparse.ArgumentTypeError):
    """A value that cannot be used; the message says why."""


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 address in brackets: ``[::1]:5``)."""
    text = text.strip()
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or not rest.startswith(":"):
            raise OptionError(f"expected [IPV6]:PORT, got {text!r}")
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise OptionError(f"expected HOST:PORT, got {text!r}")
        if ":" in host:
            raise OptionError(f"{text!r}: an IPv6 address goes in brackets: [{host}]:{port}")
    try:
        host.encode("idna")
    except UnicodeError:
        raise OptionError(f"{text!r}: {host!r} is not a host name or address") from None
    if not port.isascii() or not port.isdigit():
        raise OptionError(f"port {port!r} in {text!r} is not a number")
    number = int(port)
    if not 0 < number < 65536:
        raise OptionError(f"port {number} in {text!r} is out of range (1-65535)")
    return host, number


def host_ports(text: str) -> list[tuple[str, int]]:
    """Comma-separated ``HOST:PORT`` items (at least one)."""
    items = [part for part in text.split(",") if part.strip()]
    if not items:
        raise OptionError(f"expected HOST:PORT[,HOST:PORT...], got {text!r}")
    return [host_port(part) for part in items]


def port_number(text: str) -> int:
    if not text.strip().isascii() or not text.strip().isdigit():
        raise OptionError(f"port {text!r} is not a number")
    number = int(text)
    if not 0 <= number < 65536:
        raise OptionError(f"port {number} is out of range (0-65535)")
    return number


def host_id(text: str) -> int:
    """A 32-bit id, decimal (leading zeros allowed) or ``0x`` hexadecimal."""
    raw = text.strip()
    try:
        number = int(raw, 16) if raw.lower().startswith("0x") else int(raw, 10)
    except ValueError:
        raise OptionError(f"id {text!r} is not a number") from None
    if not 0 < number <= MAX_ID:
        raise OptionError(f"id {number} is not in 1..{MAX_ID}")
    return number


def listen_host(text: str) -> str:
    try:
        text.encode("idna")
    except UnicodeError:
        raise OptionError(f"{text!r} is not a host name or address") from None
    return text


def _wire_text(what: str, limit: int):
    def parse(text: str) -> str:
        problem = field_problem(what, text, limit)
        if problem:
            raise OptionError(problem)
        return text
    return parse


#: A registration's name and info: UTF-8 that fits its length field.
server_name = _wire_text("name", MAX_NAME)
info_text = _wire_text("info", MAX_INFO)


def user_name(text: str) -> str:
    if not text.strip():
        raise OptionError("the name must not be empty")
    return server_name(text)


def positive_int(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise OptionError(f"{text!r} is not a whole number") from None
    if number <= 0:
        raise OptionError(f"{number} is not positive")
    return number


def bounded_int(low: int, high: int):
    """A whole number from ``low`` to ``high``."""
    def parse(text: str) -> int:
        number = positive_int(text)
        if not low <= number <= high:
            raise OptionError(f"{number} is not in {low}..{high}")
        return number
    return parse


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def byte_size(text: str, minimum: int = 1) -> int:
    """A number of bytes: ``1048576``, ``512K``, ``100M``, ``1.5G`` (K, M, G,
    T are powers of 1024; ``KiB``, ``MB`` and ``k`` are read alike)."""
    raw = text.strip()
    number = raw.rstrip("BbIi") if raw[-1:] in "Bb" else raw
    unit = number[-1:].upper() if number[-1:].isalpha() else ""
    digits = number[:-1] if unit else number
    try:
        value = float(digits)
    except ValueError:
        value = math.nan
    if unit not in _UNITS or not math.isfinite(value):
        raise OptionError(f"{text!r} is not a size (like 4096, 512K, 100M, 2G)")
    size = int(value * _UNITS[unit])
    if size < minimum or size > 1 << 50:
        raise OptionError(f"{text!r} is out of range ({_show(minimum)} to 1P)")
    return size


def _show(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size >= _UNITS[unit] and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


def size_at_least(minimum: int):
    """``byte_size`` with a floor (a frame or buffer smaller than the protocol
    needs would refuse everything)."""
    def parse(text: str) -> int:
        return byte_size(text, minimum)
    return parse


def seconds(text: str) -> float:
    """A positive, finite number of seconds, at most ``MAX_SECONDS``."""
    try:
        value = float(text)
    except ValueError:
        raise OptionError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_SECONDS:
        raise OptionError(f"{text!r} is not a number of seconds from above 0 to "
                          f"{MAX_SECONDS:,.0f}")
    return value


def seconds_or_zero(text: str) -> float:
    """``seconds``, or 0 (which a flag documents as "no limit")."""
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass
    return seconds(text)


def file_name(flag: str):
    """A non-empty path (an empty one, as from an unset variable, must not
    quietly mean "none": for a secret or a certificate that fails open)."""
    def parse(text: str) -> str:
        if not text.strip():
            raise OptionError(f"{flag} needs a file name, got an empty one")
        return text
    return parse


def directory_problem(path: str) -> str | None:
    """Why ``path`` cannot be a directory we keep files in (made if missing),
    or None if it can."""
    target = Path(path)
    try:
        if target.exists() and not target.is_dir():
            return "exists and is not a directory"
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".crc-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"cannot be used: {exc.strerror or exc}"
    return None
