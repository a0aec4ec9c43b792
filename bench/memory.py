"""The memory section: peak bytes allocated by one conv forward + backward, per backend
(tracemalloc), on the case Options.memory_case names (deep_conv2 by default), measured in
REPEATS rounds whose backend order rotates; the figure is their median.

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
from .timing import in_rounds, pooled

if TYPE_CHECKING:
    from .context import Context, Options

# rounds per backend, in a rotated order. A traced forward + backward of deep_conv2 takes
# milliseconds (naive's tens), so five cost nothing and are the fewest with which
# bench.comparison's Mann-Whitney test can call a change significant (5 + 5: p >= 0.008)
REPEATS = 5
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
    return REPEATS * len(backends)


def run(ctx: Context) -> dict:
    """One row per backend: {"backend", "status", "peak_bytes" (the median of REPEATS rounds),
    "iqr", "noisy", "samples" (bytes), "rounds"} (bench.timing.pooled)."""
    case = get_case(ctx.opts.memory_case)
    got = in_rounds(
        ctx.backends, REPEATS, lambda name, _: peak_bytes(name, case), ctx.bar, "memory"
    )
    rows: list[dict] = []
    for name in ctx.backends:
        row: dict = {"backend": name}
        with row_status(row, rows):
            if isinstance(got[name], BaseException):
                raise got[name]
            figure = pooled([b for _, b in got[name]], [r for r, _ in got[name]])
            row.update(peak_bytes=figure.pop("median"), **figure)
    return {"case": case.name, "shape": case.shape_text, "note": NUMBA_NOTE, "rows": rows}
