"""Chat texts in scenarios: generated large texts and how long texts compare.

``sized_text(n)`` is the deterministic text ``MESSAGE_SIZE DEST N`` sends: the
decimal offsets of 8-byte blocks, ``"0000000 0000008 0000016 ..."``, cut to
exactly ``n`` bytes, so a lost, repeated or reordered slice changes it.

A text longer than ``LONG_TEXT`` bytes is compared and shown by its size and
SHA-256 (``digest_key``); a scenario file may expect it either literally or as
``{"size": N, "sha256": "hex"}``. Shorter texts are compared literally.

``sized_bytes(n, seed)`` is the content ``WRITEFILE --size N --seed S`` writes:
the first ``n`` bytes of SHAKE-256 of the text ``"crc-scenario:S"``, so any
tool can compute the SHA-256 a scenario expects of it.

Pure functions: no files, no machines.
"""

from __future__ import annotations

import hashlib
from typing import Any

LONG_TEXT = 256
_BLOCK = 8


def sized_text(size: int) -> str:
    """``size`` bytes of ASCII text that say where in the text they are."""
    if size < 0:
        raise ValueError(f"size {size} is negative")
    blocks = -(-size // _BLOCK)
    return "".join(f"{offset * _BLOCK:07d} " for offset in range(blocks))[:size]


def sized_bytes(size: int, seed: int = 0) -> bytes:
    """``size`` deterministic, incompressible bytes for ``seed``."""
    if size < 0:
        raise ValueError(f"size {size} is negative")
    return hashlib.shake_256(f"crc-scenario:{seed}".encode()).digest(size)


def digest_key(size: int, sha256: str) -> str:
    return f"<{size} bytes, sha256 {sha256.lower()}>"


def digest_of(text: str) -> dict[str, Any]:
    data = text.encode("utf-8")
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def comparable(entry: Any) -> Any:
    """The form in which a log entry (expected or actual) is compared and shown."""
    if isinstance(entry, dict) and set(entry) == {"size", "sha256"}:
        return digest_key(int(entry["size"]), str(entry["sha256"]))
    if isinstance(entry, str):
        data = entry.encode("utf-8")
        if len(data) > LONG_TEXT:
            return digest_key(len(data), hashlib.sha256(data).hexdigest())
    return entry


def check_expected_entry(entry: Any) -> str | None:
    """Why ``entry`` cannot be an expected list item, or None if it can."""
    if isinstance(entry, dict):
        if set(entry) != {"size", "sha256"}:
            return f"a text digest needs exactly the keys size and sha256, not {sorted(entry)}"
        if not isinstance(entry["size"], int) or entry["size"] <= LONG_TEXT:
            return (f"a text digest is only for texts over {LONG_TEXT} bytes; "
                    f"write shorter texts literally")
    return None
