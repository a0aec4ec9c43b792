"""Batch normalisation over the last axis, compiled: two passes over the data each way.

Written with NumPy operations, a training step's batch norm makes about eight passes over its
input forward (mean, centre, square, mean, scale, shift, ...) and twelve backward, each reading
and writing an array of the activation's size, which on the `deep` network's first block, (64,
28, 28, 32) float32, is a large part of a training step (bench.compare's breakdown section
names batch norm's share). Here each direction is one pass that reduces
(per-channel sums) and one that writes the result, both split over the cores by rows:

    forward (training)  pass 1: sum(x), sum(x^2) per channel          -> mean, var, inv_std
                        pass 2: x_hat = (x - mean) * inv_std, y = gamma * x_hat + beta
    backward            pass 1: sum(dy), sum(dy * x_hat) per channel
                        pass 2: dx = gamma * inv_std / n * (n * dy - sum(dy) - x_hat * sum(dy * x_hat))

The sums accumulate in float64 whatever the data's dtype (a float32 running sum over 50,000
values per channel would lose digits that NumPy's pairwise summation keeps), and the variance's
sum of squares is taken around a per-channel shift (the first row) so that a large mean does not
cancel it away. model.layers.BatchNorm uses these functions; shapes are (R, C) with R = N*H*W.

With relu=True the forward and backward are those of batch norm followed by a ReLU, in the same
two passes each way (model.layers.BatchNorm.forward_relu): y = max(gamma * x_hat + beta, 0), and
the backward masks dy where that was <= 0, recomputing it from x_hat, gamma and beta (the same
expression, so the same values) instead of keeping y. A MobileNet-style network's every block
is conv, bn, relu; the separate ReLU read and wrote each activation once more each way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from . import threads

_JIT: dict[str, Any] = dict(cache=True, parallel=True, fastmath={"contract"})


def row_bounds(rows: int) -> np.ndarray:
    """Row ranges, one per numba thread (at least one row each)."""
    parts = max(1, min(threads.count(), rows))
    return np.linspace(0, rows, parts + 1).astype(np.int64)


@njit(**_JIT)
def _moments(x, shift, bounds):
    """x (R, C) -> per-part float64 sums of (x - shift) and (x - shift)^2: (parts, 2, C)."""
    parts = bounds.shape[0] - 1
    chans = x.shape[1]
    out = np.zeros((parts, 2, chans))
    for part in prange(parts):
        s = np.zeros(chans)
        ss = np.zeros(chans)
        for r in range(bounds[part], bounds[part + 1]):
            for c in range(chans):
                d = np.float64(x[r, c]) - shift[c]
                s[c] += d
                ss[c] += d * d
        out[part, 0] = s
        out[part, 1] = ss
    return out


@njit(**_JIT)
def _normalise(x, mean, inv_std, gamma, beta, bounds, x_hat, y, relu):
    """x_hat = (x - mean) * inv_std and y = gamma * x_hat + beta (relu: max(that, 0)), row by
    row; all (R, C) or (C,)."""
    parts = bounds.shape[0] - 1
    chans = x.shape[1]
    zero = y.dtype.type(0)
    for part in prange(parts):
        for r in range(bounds[part], bounds[part + 1]):
            for c in range(chans):
                h = (x[r, c] - mean[c]) * inv_std[c]
                x_hat[r, c] = h
                v = gamma[c] * h + beta[c]
                y[r, c] = zero if relu and v <= zero else v


@njit(**_JIT)
def _grad_sums(dy, x_hat, gamma, beta, bounds, relu):
    """Per-part float64 sums of g and g * x_hat, g = dy (relu: masked by ReLU's gradient):
    (parts, 2, C)."""
    parts = bounds.shape[0] - 1
    chans = dy.shape[1]
    out = np.zeros((parts, 2, chans))
    for part in prange(parts):
        s = np.zeros(chans)
        sx = np.zeros(chans)
        for r in range(bounds[part], bounds[part + 1]):
            for c in range(chans):
                h = x_hat[r, c]
                g = np.float64(dy[r, c])
                if relu and gamma[c] * h + beta[c] <= 0:  # the forward's y, recomputed
                    g = 0.0
                s[c] += g
                sx[c] += g * h
        out[part, 0] = s
        out[part, 1] = sx
    return out


@njit(**_JIT)
def _input_grad(dy, x_hat, scale, mean_dy, mean_dy_xhat, gamma, beta, bounds, dx, relu):
    """dx = scale * (g - mean_dy - x_hat * mean_dy_xhat), scale = gamma * inv_std, g = dy
    (relu: masked as in _grad_sums); (C,) each."""
    parts = bounds.shape[0] - 1
    chans = dy.shape[1]
    zero = dx.dtype.type(0)
    for part in prange(parts):
        for r in range(bounds[part], bounds[part + 1]):
            for c in range(chans):
                h = x_hat[r, c]
                g = zero if relu and gamma[c] * h + beta[c] <= 0 else dy[r, c]
                dx[r, c] = scale[c] * (g - mean_dy[c] - h * mean_dy_xhat[c])


def forward_train(x, gamma, beta, eps, shift=None, reduce=None, relu=False):
    """x: (R, C) C-contiguous -> (y, x_hat (R, C), mean (C,), biased var (C,), inv_std (C,),
    count), the arrays in x's dtype; count = the rows the statistics cover; relu: y is
    max(batch norm, 0).

    shift: (C,) the value the sums are taken around (default: x's first row); reduce: for
    batch norm across processes, a function summing a float64 array over all of them (then
    shift must be the same everywhere, e.g. the running mean), so that every process
    normalises by the statistics of the whole batch."""
    mean, var, inv_std, rows = statistics(x, eps, shift, reduce)
    x_hat, y = np.empty_like(x), np.empty_like(x)
    _normalise(x, mean, inv_std, gamma, beta, row_bounds(x.shape[0]), x_hat, y, relu)
    return y, x_hat, mean, var, inv_std, rows


def statistics(x, eps, shift=None, reduce=None):
    """x: (R, C) C-contiguous -> the batch's mean, biased var and inv_std (C,) in x's dtype, and
    the rows they cover (shift and reduce as forward_train's)."""
    dtype = x.dtype
    shift = (x[0] if shift is None else shift).astype(np.float64)
    sums = _moments(x, shift, row_bounds(x.shape[0])).sum(axis=0)
    rows = float(x.shape[0])
    if reduce is not None:
        packed = reduce(np.append(sums.ravel(), rows))
        sums, rows = packed[:-1].reshape(sums.shape), float(packed[-1])
    mean_shifted = sums[0] / rows
    var = np.maximum(sums[1] / rows - mean_shifted * mean_shifted, 0.0)
    mean = mean_shifted + shift
    inv_std = 1.0 / np.sqrt(var + eps)
    return mean.astype(dtype), var.astype(dtype), inv_std.astype(dtype), rows


def input_grad_terms(sums, inv_std, gamma, rows, dtype):
    """dx's per-channel terms from the float64 sums (2, C) of dy and dy * x_hat: scale =
    gamma * inv_std, mean_dy, mean_dy_xhat, each (C,) in `dtype`."""
    scale = (gamma * inv_std).astype(dtype)
    return scale, (sums[0] / rows).astype(dtype), (sums[1] / rows).astype(dtype)


def forward_eval(x, mean, var, gamma, beta, eps):
    """x: (R, C) C-contiguous, normalised by the given statistics -> y (R, C)."""
    inv_std = (1.0 / np.sqrt(var.astype(np.float64) + eps)).astype(x.dtype)
    y = np.empty_like(x)
    # evaluation keeps no x_hat: _normalise writes each element's x_hat, then y, to the same place
    _normalise(x, mean.astype(x.dtype), inv_std, gamma, beta, row_bounds(x.shape[0]), y, y, False)
    return y


def backward(dy, x_hat, inv_std, gamma, count=None, reduce=None, beta=None, relu=False):
    """dy, x_hat: (R, C) C-contiguous -> (dx (R, C), dgamma (C,), dbeta (C,)), dy's dtype.

    count and reduce as forward_train's: the forward's row count and the same cross-process
    sum. dx then follows the whole batch's statistics, while dgamma and dbeta stay this
    process's share (the data-parallel step sums every parameter's gradient once). relu: the
    backward of forward_train(..., relu=True), which needs beta."""
    dtype = dy.dtype
    bounds = row_bounds(dy.shape[0])
    if beta is None:
        if relu:
            raise ValueError("backward with relu=True needs beta (the forward's shift)")
        beta = np.zeros_like(gamma)  # not read without relu
    local = sums = _grad_sums(dy, x_hat, gamma, beta, bounds, relu).sum(axis=0)
    if reduce is not None:
        sums = reduce(local)
    rows = dy.shape[0] if count is None else count
    dx = np.empty_like(dy)
    scale, mean_dy, mean_dy_xhat = input_grad_terms(sums, inv_std, gamma, rows, dtype)
    _input_grad(dy, x_hat, scale, mean_dy, mean_dy_xhat, gamma, beta, bounds, dx, relu)
    return dx, local[1].astype(dtype), local[0].astype(dtype)
