"""The scaling section: how time grows with batch size and with image size, per backend, with the
fitted exponent, on the case Options.scaling_case names (small_conv by default).

The exponent is the slope of log(time) against log(size): 1.0 means linear in the batch (or in
the side length, for image size 2.0 means linear in the pixel count).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from .cases import TOO_SLOW, Case, get_case
from .layers import layer_ops
from .status import OK, error_status
from .timing import measure

if TYPE_CHECKING:
    from .context import Context, Options

BATCH_SIZES = (8, 16, 32, 64, 128)
IMAGE_SIZES = (14, 28, 56, 112)
QUICK_BATCH_SIZES = (8, 32, 64)
QUICK_IMAGE_SIZES = (14, 28)


def loglog_exponent(sizes, seconds) -> float | None:
    """Slope of the least-squares line through (log size, log seconds); None with < 2 points."""
    if len(sizes) < 2:
        return None
    slope, _ = np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float)), 1)
    return float(slope)


def scaling_variants(base: Case, axis: str, sizes) -> list[tuple[int, Case]]:
    """[(size, case)] for axis "batch" (vary N) or "size" (vary H = W)."""
    if axis == "batch":
        return [(n, base.with_batch(n)) for n in sizes]
    if axis == "size":
        return [(s, base.with_size(s)) for s in sizes]
    raise ValueError(f"axis must be 'batch' or 'size', got {axis!r}")


def time_forward_backward(backend: str, case: Case, repeat: int) -> float:
    """Median seconds of one forward + backward of `case` on `backend`."""
    return measure(layer_ops(backend, case)["forward_backward"], repeat=repeat).median


def summarize_curve(points: list[tuple[int, float]]) -> dict:
    """[(size, seconds)] -> {"sizes", "seconds", "exponent"}."""
    sizes = [p[0] for p in points]
    seconds = [p[1] for p in points]
    return {"sizes": sizes, "seconds": seconds, "exponent": loglog_exponent(sizes, seconds)}


def steps(opts: Options, backends) -> int:
    return 2 * len(backends)  # one curve per axis and backend


def run(ctx: Context) -> dict:
    opts = ctx.opts
    base = get_case(opts.scaling_case)
    axes = {
        "batch": QUICK_BATCH_SIZES if opts.quick else BATCH_SIZES,
        "size": QUICK_IMAGE_SIZES if opts.quick else IMAGE_SIZES,
    }
    out = {"case": base.name, "shape": base.shape_text, "pass": "forward+backward"}
    for axis, sizes in axes.items():
        curves = {}
        for name in ctx.backends:
            points, skipped = [], []
            ctx.bar.set_description(f"scaling {axis} {name}")
            for size, case in scaling_variants(base, axis, sizes):
                if name in case.skip:
                    skipped.append(size)
                    tqdm.write(f"scaling {case.name}: {name} skipped: {case.skip[name]}")
                    continue
                try:
                    points.append((size, time_forward_backward(name, case, opts.repeat)))
                except Exception as exc:
                    curves[name] = {"status": error_status(exc)}
                    break
            else:
                curves[name] = {
                    "status": OK,
                    **summarize_curve(points),
                    "skipped_sizes": skipped,
                    "skip_reason": base.skip.get(name) or (TOO_SLOW if skipped else None),
                }
            ctx.bar.update(1)
        out[axis] = curves
    return out
