"""Keep freed memory in the process so that every batch's large arrays do not page-fault afresh.

A training step allocates and frees the same few multi-megabyte arrays (conv output, ReLU output,
pooling gradients: 3.2 MB each for a (64, 28, 28, 16) float32 batch). With glibc's default
settings each such array is either mmap-ed on allocation and unmapped on free, or carved from the
heap top and trimmed back to the kernel on free; either way its pages are touched for the first
time again on every step, ~780 minor page faults per 3.2 MB array, which makes ReLU and the
pooling backward several times slower inside a network than on a reused array. Serving arrays
of up to 32 MB from the heap and keeping up to 64 MB of freed heap avoids that; the benchmark's
training epoch (`python -m bench.compare`, epoch section) runs with it, as model.train does.

The setting is process-wide and only grows the process by at most the trim threshold; it is a
no-op where glibc's mallopt is not available (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h> parameter numbers
MMAP_THRESHOLD = 32 << 20  # arrays up to this size come from the heap, not a fresh mmap
TRIM_THRESHOLD = 64 << 20  # freed heap up to this size stays in the process

_applied = False


def keep_freed_memory() -> bool:
    """Tune glibc malloc (once per process) to reuse freed pages; True if glibc took the setting."""
    global _applied
    if _applied:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _applied
