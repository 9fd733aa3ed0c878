"""The C heap's thresholds for a process that moves file chunks of a megabyte.

By default glibc gives an allocation of a megabyte its own fresh mapping
once it has returned the last one to the system, and trims the top of the
heap as soon as a few megabytes there are free: every file chunk a relay or
a holder handles then lands in memory the kernel has to fault in and zero
again (the relays spent as much CPU on that as on moving the bytes).
``keep_chunk_buffers`` raises both thresholds once, so chunk-sized buffers
come from the heap and freed ones are reused; the process keeps at most
``TRIM_THRESHOLD`` of free heap instead of handing it back at once.

Anything other than glibc (or no C library to ask): nothing changes.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Allocations below this come from the heap (a 1 MiB chunk and its frame).
MMAP_THRESHOLD = 2 * 1024 * 1024
#: Free memory at the heap's top is returned to the system beyond this.
TRIM_THRESHOLD = 8 * 1024 * 1024

_applied: bool | None = None


def keep_chunk_buffers() -> bool:
    """Set the thresholds (once per process); whether the C library took them."""
    global _applied
    if _applied is None:
        _applied = _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) \
            and _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        log.debug("heap thresholds for chunk buffers %s", "set" if _applied else "not available")
    return _applied


def _mallopt(param: int, value: int) -> bool:
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(param, value) == 1
