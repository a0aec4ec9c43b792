"""bench.conv's correctness gate (benchdnn's correctness mode): the inputs of a problem, its
float64 reference, and the tolerance each algorithm is held to.

Every process that times a problem draws the same inputs (seeded by the descriptor), so each
implementation is checked against one reference:

    >>> from bench.problems import parse
    >>> from kernels import get_backend
    >>> problem = parse("mb2ic4ih8oc6kh3ph1")
    >>> data = inputs(problem, np.float32)            # x, w, b, dy as float32 arrays
    >>> ref = reference(problem, data)                # y, dx, dw, db in float64
    >>> be = get_backend("im2col")
    >>> y, ctx = be.conv2d_forward(data["x"], data["w"], data["b"], stride=1, padding=1)
    >>> dx, dw, db = be.conv2d_backward(data["dy"], ctx)
    >>> err = relative_errors({"y": y, "dx": dx, "dw": dw, "db": db}, ref)
    >>> max(err.values()) <= tolerance(algorithm(ctx), np.float32)
    True

The error of an output is its largest absolute error over the reference's largest magnitude (one
number per output, comparable across layers whatever their scale).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from .problems import Problem

OUTPUTS = ("y", "dx", "dw", "db")

# float32 tolerances of max|err| / max|ref|. A direct sum of K products in float32 errs by about
# sqrt(K) * 6e-8 relative to its largest term; ResNet-50's deepest reduction (K = 3*3*512) stays
# under 1e-5, and 2e-5 leaves room. Winograd's transforms scale inputs by up to 5 (F(4x4)) and
# outputs by up to 8 before the float32 products, so its error grows by that factor: the
# tolerances of tests/test_kernels_winograd.py, scaled up by the same reduction depth.
TOLERANCE = {"direct": 2e-5, "winograd F(2x2)": 1e-4, "winograd F(4x4)": 5e-4}
FLOAT64_TOLERANCE = 1e-10


def inputs(problem: Problem, dtype) -> dict[str, np.ndarray]:
    """x (N, H, W, C_in) ~ N(0, 1), w (KH, KW, C_in/g, C_out) He-initialised, b (C_out,) and
    dy (N, OH, OW, C_out) ~ N(0, 1), in `dtype`; the same values in every process."""
    rng = np.random.default_rng(zlib.crc32(problem.descriptor(with_name=False).encode()))
    fan_in = problem.kh * problem.kw * problem.ic // problem.g
    return {
        "x": rng.standard_normal(problem.x_shape, dtype=np.float32).astype(dtype),
        "w": (rng.standard_normal(problem.w_shape, dtype=np.float32) * np.sqrt(2 / fan_in)).astype(
            dtype
        ),
        "b": (rng.standard_normal(problem.oc, dtype=np.float32) * 0.1).astype(dtype),
        "dy": rng.standard_normal(problem.y_shape, dtype=np.float32).astype(dtype),
    }


def _grouped(a: np.ndarray, groups: int) -> np.ndarray:
    """(P, groups * c) -> (groups, P, c): each group's columns as a separate matrix."""
    p, width = a.shape
    return a.reshape(p, groups, width // groups).transpose(1, 0, 2)


def _ungrouped(a: np.ndarray) -> np.ndarray:
    """(groups, P, c) -> (P, groups * c), the inverse of _grouped."""
    return a.transpose(1, 0, 2).reshape(a.shape[1], -1)


def reference(problem: Problem, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """y, dx, dw, db of the problem in float64, tap by tap: for every kernel offset (i, j) the
    strided window of the padded input times w[i, j], one batched matmul per tap and group."""
    p, g = problem, problem.g
    x, w, b, dy = (data[k].astype(np.float64) for k in ("x", "w", "b", "dy"))
    x_padded = np.pad(x, ((0, 0), (p.ph, p.ph), (p.pw, p.pw), (0, 0)))
    dx_padded = np.zeros_like(x_padded)
    rows = p.mb * p.oh * p.ow
    dy_groups = _grouped(dy.reshape(rows, p.oc), g)  # (g, P, oc/g)
    y = np.zeros((rows, p.oc))
    dw = np.zeros(p.w_shape)
    for i in range(p.kh):
        for j in range(p.kw):
            r0, c0 = i * (p.dh + 1), j * (p.dw + 1)
            window = (
                slice(None),
                slice(r0, r0 + p.sh * (p.oh - 1) + 1, p.sh),
                slice(c0, c0 + p.sw * (p.ow - 1) + 1, p.sw),
            )
            cols = _grouped(x_padded[window].reshape(rows, p.ic), g)  # (g, P, ic/g)
            taps = w[i, j].reshape(p.ic // g, g, p.oc // g).transpose(1, 0, 2)  # (g, ic/g, oc/g)
            y += _ungrouped(cols @ taps)
            dw[i, j] = (cols.transpose(0, 2, 1) @ dy_groups).transpose(1, 0, 2).reshape(-1, p.oc)
            dx_padded[window] += _ungrouped(dy_groups @ taps.transpose(0, 2, 1)).reshape(
                p.mb, p.oh, p.ow, p.ic
            )
    dx = dx_padded[:, p.ph : p.ph + p.ih, p.pw : p.pw + p.iw]
    return {
        "y": (y + b).reshape(p.y_shape),
        "dx": np.ascontiguousarray(dx),
        "dw": dw,
        "db": dy.sum(axis=(0, 1, 2)),
    }


def cached_reference(
    problem: Problem, data: dict[str, np.ndarray], cache_dir: Path | None
) -> dict[str, np.ndarray]:
    """reference(), computed once per problem and shared through `cache_dir` (.npz files) by the
    processes that time the implementations one after another; no cache when it is None."""
    if cache_dir is None:
        return reference(problem, data)
    name = f"{zlib.crc32(problem.descriptor(with_name=False).encode()):08x}.npz"
    path = cache_dir / name
    if path.is_file():
        with np.load(path) as stored:
            return {k: stored[k] for k in OUTPUTS}
    ref = reference(problem, data)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, **ref)
    partial.replace(path)
    return ref


def relative_errors(
    got: dict[str, np.ndarray | None], ref: dict[str, np.ndarray]
) -> dict[str, float]:
    """{output: max |got - ref| / max |ref|} for every output in `got` that is not None."""
    errors = {}
    for key, value in got.items():
        if value is None:
            continue
        expected = ref[key]
        if value.shape != expected.shape:
            raise ValueError(f"{key} has shape {value.shape}, the reference {expected.shape}")
        scale = float(np.abs(expected).max(initial=0.0)) or 1.0
        errors[key] = float(np.abs(value.astype(np.float64) - expected).max(initial=0.0) / scale)
    return errors


def algorithm(ctx: object) -> str:
    """The algorithm a backend's conv ctx says it ran: "winograd F(2x2)", "winograd F(4x4)" or
    "direct" (everything that sums the products as they are), following auto's and winograd's
    fallback ctxs (their `inner`) to the one that did the work."""
    seen = 0
    while ctx is not None and seen < 8:
        path = str(getattr(ctx, "path", ""))
        for m in (2, 4):
            if f"F({m}x{m}" in path:
                return f"winograd F({m}x{m})"
        ctx, seen = getattr(ctx, "inner", None), seen + 1
    return "direct"


def tolerance(algorithm_name: str, dtype) -> float:
    """The largest relative error an output of `algorithm_name` may have in `dtype`."""
    if np.dtype(dtype) == np.float64:
        return FLOAT64_TOLERANCE
    return TOLERANCE[algorithm_name]
