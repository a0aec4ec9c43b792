"""The memory section: peak bytes allocated by one conv forward + backward, per backend
(tracemalloc), on the case Options.memory_case names (deep_conv2 by default).

NumPy reports its array buffers to tracemalloc, so the numpy backends are measured in full.
Numba's jitted code allocates through its own runtime (NRT), which tracemalloc does not see:
for the numba backend the figure covers only what is allocated from Python/NumPy around the
jitted calls, and may understate its real peak.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import TYPE_CHECKING

import numpy as np

from .cases import Case, get_case
from .layers import layer_ops
from .status import row_status

if TYPE_CHECKING:
    from .context import Context, Options

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


def steps(opts: Options, backends) -> int:
    return len(backends)


def run(ctx: Context) -> dict:
    case = get_case(ctx.opts.memory_case)
    rows = []
    for name in ctx.backends:
        ctx.bar.set_description(f"memory {name}")
        row = {"backend": name}
        with row_status(row, rows, ctx.bar):
            row["peak_bytes"] = peak_bytes(name, case)
    return {"case": case.name, "shape": case.shape_text, "note": NUMBA_NOTE, "rows": rows}
