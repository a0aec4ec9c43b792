"""What the kernels' blocking depends on, read from the machine they run on: the float vector
width of the widest SIMD extension and the per-core L2 cache size.

    >>> vector_bits() in (128, 256, 512)     # 512 with AVX-512F, 256 with AVX2, else 128
    True
    >>> l2_bytes() > 0                       # per-core L2 (Linux sysfs), or DEFAULT_L2_BYTES
    True

Both are read once per process (Linux: /proc/cpuinfo and /sys/devices/system/cpu); elsewhere the
defaults describe a common AVX2 machine.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

DEFAULT_L2_BYTES = 1 << 20
_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty when it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def vector_bits() -> int:
    """The width in bits of the widest float vector the CPU has: 512, 256 or 128."""
    flags = cpu_flags()
    if "avx512f" in flags:
        return 512
    if "avx2" in flags or "avx" in flags:
        return 256
    return 128


def lanes(dtype) -> int:
    """Values of `dtype` in one vector of vector_bits() (16 float32 with AVX-512)."""
    return vector_bits() // (8 * np.dtype(dtype).itemsize)


@functools.cache
def l2_bytes() -> int:
    """The size of one core's L2 cache in bytes, from sysfs; DEFAULT_L2_BYTES if unknown."""
    try:
        for index in sorted(_CACHE_DIR.glob("index*")):
            if (index / "level").read_text().strip() == "2":
                text = (index / "size").read_text().strip()
                unit = _UNITS.get(text[-1:].upper(), 1)
                return int(text.rstrip("KMGkmg")) * unit
    except (OSError, ValueError):
        pass
    return DEFAULT_L2_BYTES
