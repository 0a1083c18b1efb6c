"""Keep freed CPU tensor memory in the process instead of returning it to the OS.

GL-AM allocates and frees many activation-sized buffers (gradients, texture cotangents,
key stacks). With glibc's default malloc, buffers above a dynamic threshold are ``mmap``-ed
and handed back to the kernel when freed (and the heap top is trimmed), so the next buffer
of that size page-faults its memory in again. Measured on paper-size RCAN (64x64, x4,
2 threads): about 280,000 minor page faults per GL-AM analysis (1.1 GB zero-filled by the
kernel) and 0.6 s of system time; with the thresholds below, about 10 faults and 0.01 s.
PyTorch's CPU tuning guide gives the same advice through jemalloc/tcmalloc; this module
does it for glibc in-process, so nothing has to be preloaded.

The setting is process-wide (it only changes when memory is given back, never results)
and applied once. Set ``GLAM_KEEP_FREED_MEMORY=0`` to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Largest mmap threshold glibc accepts on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): allocations
# up to 32 MiB come from the heap and are reused after being freed.
MMAP_THRESHOLD = 32 * 1024 * 1024
# Free memory at the top of the heap is kept up to this size (mallopt takes a C int).
TRIM_THRESHOLD = 2**31 - 1

_state: dict[str, bool | None] = {"applied": None}


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process (Linux only).

    Returns
    -------
    bool
        Whether the thresholds are in effect (``False`` off glibc, when disabled through
        ``GLAM_KEEP_FREED_MEMORY=0``, or when ``mallopt`` refuses).
    """
    if _state["applied"] is not None:
        return bool(_state["applied"])
    applied = False
    if sys.platform.startswith("linux") and os.environ.get("GLAM_KEEP_FREED_MEMORY", "1") != "0":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # musl and other libcs have no mallopt
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            )
    _state["applied"] = applied
    return applied
