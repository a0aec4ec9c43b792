"""The scaling section: how time grows with batch size and with image size, per backend, with the
fitted exponent, on the case Options.scaling_case names (small_conv by default).

The exponent is the slope of log(time) against log(size): 1.0 means linear in the batch (or in
the side length, for image size 2.0 means linear in the pixel count), fitted to each size's
median. Each of Options.rounds rounds times every backend's whole curve, the backends in an
order rotated from round to round; results.json keeps each size's samples and their rounds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from .cases import TOO_SLOW, Case, get_case
from .layers import layer_ops
from .status import OK, error_status
from .timing import in_rounds, measure, pooled

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


def time_forward_backward(backend: str, case: Case, repeat: int) -> list[float]:
    """`repeat` samples of the seconds of one forward + backward of `case` on `backend`."""
    return measure(layer_ops(backend, case)["forward_backward"], repeat=repeat).samples


def summarize_curve(points: list[tuple[int, list[float], list[int]]]) -> dict:
    """[(size, seconds samples, their rounds)] -> {"sizes", "seconds" (the medians), "exponent"
    (fitted to the medians), "samples", "rounds", "iqr", "noisy" (per size, bench.timing.pooled)}."""
    figures = [pooled(samples, rounds) for _, samples, rounds in points]
    sizes = [p[0] for p in points]
    seconds = [f["median"] for f in figures]
    return {
        "sizes": sizes,
        "seconds": seconds,
        "exponent": loglog_exponent(sizes, seconds),
        "samples": [f["samples"] for f in figures],
        "rounds": [f["rounds"] for f in figures],
        "iqr": [f["iqr"] for f in figures],
        "noisy": [f["noisy"] for f in figures],
    }


def steps(opts: Options, backends) -> int:
    return 2 * opts.rounds * len(backends)  # one curve per axis, round and backend


def run(ctx: Context) -> dict:
    """Per axis and backend, a curve over the axis's sizes: each round times every backend's
    whole curve (opts.repeat samples per size), the backends in an order rotated from round to
    round, and each size's figure is the median of all rounds' samples."""
    opts = ctx.opts
    base = get_case(opts.scaling_case)
    axes = {
        "batch": QUICK_BATCH_SIZES if opts.quick else BATCH_SIZES,
        "size": QUICK_IMAGE_SIZES if opts.quick else IMAGE_SIZES,
    }
    out = {
        "case": base.name,
        "shape": base.shape_text,
        "pass": "forward+backward",
        "rounds": opts.rounds,
    }
    for axis, sizes in axes.items():
        variants = scaling_variants(base, axis, sizes)
        skipped = {
            name: [size for size, case in variants if name in case.skip] for name in ctx.backends
        }
        for _, case in variants:
            for name in ctx.backends:
                if name in case.skip:
                    tqdm.write(f"scaling {case.name}: {name} skipped: {case.skip[name]}")

        def curve(name, _rnd, variants=variants):
            return [
                (size, time_forward_backward(name, case, opts.repeat))
                for size, case in variants
                if name not in case.skip
            ]

        got = in_rounds(ctx.backends, opts.rounds, curve, ctx.bar, f"scaling {axis}")
        curves = {}
        for name in ctx.backends:
            if isinstance(got[name], BaseException):
                curves[name] = {"status": error_status(got[name])}
                continue
            points = []
            for i, (size, _) in enumerate(got[name][0][1]):
                per_round = [(rnd, pts[i][1]) for rnd, pts in got[name]]
                samples = [t for _, ts in per_round for t in ts]
                rounds = [rnd for rnd, ts in per_round for _ in ts]
                points.append((size, samples, rounds))
            curves[name] = {
                "status": OK,
                **summarize_curve(points),
                "skipped_sizes": skipped[name],
                "skip_reason": base.skip.get(name) or (TOO_SLOW if skipped[name] else None),
            }
        out[axis] = curves
    return out
