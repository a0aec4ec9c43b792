"""The real-network sets section: bench.conv's summary of each network set (bench/shapes/*.txt)
at batch 8 (training) and batch 1 (the inference latency case), per backend against PyTorch.

    run(ctx) -> {"batch_sizes": [8, 1], "rows": [{"set": "resnet50", "status": ..., "summary":
                 [{"mb": 8, "impl": "numba", "geomean_vs_torch": ..., "max_vs_torch": ...,
                   "network_seconds": ..., ...}, ...]}, ...]}

Each set's problems are timed and checked by bench.conv (one process per implementation, taking
turns per round); a wrong answer makes that set's row an error naming the implementation and the
layer. It runs with `--sections sets` (or `all`): a set takes minutes per batch size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .conv import compare_rows
from .status import row_status

if TYPE_CHECKING:
    from .context import Context, Options

SETS = ("resnet50", "vgg16", "mobilenetv2")
BATCH_SIZES = (8, 1)
# the backends bench.conv times by default, and auto against them (its choice per layer)
SET_BACKENDS = ("im2col", "numba", "winograd", "auto")


def steps(opts: Options, backends) -> int:
    return len(SETS)


def run(ctx: Context) -> dict:
    impls = tuple(b for b in SET_BACKENDS if b in ctx.backends)
    rows: list[dict] = []
    for name in SETS:
        ctx.bar.set_description(f"sets {name}")
        row: dict = {"set": name}
        with row_status(row, rows, ctx.bar):
            repeat = 1 if ctx.opts.quick else 3
            row["summary"] = compare_rows(name, BATCH_SIZES, backends=impls, repeat=repeat)
    return {"batch_sizes": list(BATCH_SIZES), "rows": rows}
