"""Peak bytes allocated by one conv forward + backward, per backend (tracemalloc).

NumPy reports its array buffers to tracemalloc, so the numpy backends are measured in full.
Numba's jitted code allocates through its own runtime (NRT), which tracemalloc does not see:
for the numba backend the figure covers only what is allocated from Python/NumPy around the
jitted calls, and may understate its real peak.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np

from .cases import Case
from .layers import layer_ops

NUMBA_NOTE = (
    "numba allocations made inside jitted code (NRT) are invisible to tracemalloc; "
    "its figure may understate the real peak"
)


def peak_bytes(backend: str, case: Case, dtype=np.float32) -> int:
    """Peak traced bytes of case's forward + backward on `backend`, inputs excluded."""
    ops = layer_ops(backend, case, dtype)  # inputs (and one warm-up call) outside the trace
    ops["forward_backward"]()
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        ops["forward_backward"]()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return int(peak)
