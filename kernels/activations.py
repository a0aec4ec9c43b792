"""ReLU compiled: one pass over the data each way, split over the cores for large arrays.

NumPy's forms cost more than the memory they touch: np.maximum(x, 0) (a NaN-propagating
maximum) is not a plain vector max, and dy * (y > 0) makes two passes and a boolean temporary.
The compiled passes here beat both on the `small` network's pooled activation, (64, 14, 14, 16)
float32, with freed memory kept as in training (bench.compare's breakdown section, the ReLU parts).

    relu(x)              y = max(x, 0), any shape; NaN stays NaN (as np.maximum)
    relu_backward(y, dy) dx = dy where y > 0, else 0 (0 also where dy is inf or NaN and y <= 0,
                         as torch.nn.functional.relu's gradient, where dy * (y > 0) gives NaN)

Arrays of other dtypes than float32/float64 take NumPy's forms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from . import threads

# From this many elements on both cores take part. Waking numba's workers once they sleep
# (kernels/threads.py) costs tens of microseconds: a (64, 14, 14, 32) float32 activation's
# backward (the `deep` network's second block) is no faster on two threads than on one, a
# (64, 28, 28, 16) one's (`small`) is.
PARALLEL_MIN = 1 << 19

_JIT: dict[str, Any] = dict(cache=True, nogil=True)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# The loops run over range(size) of (sliced) flat arrays: an index numba knows to be
# non-negative, so the select vectorises. With range(lo, hi) it stayed a branch per element,
# mispredicted on random signs: many times slower on the `small` network's activation.
@njit(**_JIT)
def _relu(x, y):
    for i in range(x.size):
        v = x[i]
        y[i] = 0 if v <= 0 else v


@njit(**_JIT)
def _relu_grad(y, dy, dx):
    for i in range(y.size):
        dx[i] = dy[i] if y[i] > 0 else 0


@njit(cache=True, parallel=True)
def _relu_parallel(x, y, bounds):
    for part in prange(bounds.shape[0] - 1):
        lo, hi = bounds[part], bounds[part + 1]
        _relu(x[lo:hi], y[lo:hi])


@njit(cache=True, parallel=True)
def _relu_grad_parallel(y, dy, dx, bounds):
    for part in prange(bounds.shape[0] - 1):
        lo, hi = bounds[part], bounds[part + 1]
        _relu_grad(y[lo:hi], dy[lo:hi], dx[lo:hi])


def _bounds(size: int) -> np.ndarray | None:
    """Element ranges, one per numba thread, or None when one thread should do it all."""
    parts = threads.count()
    if size < PARALLEL_MIN or parts < 2:
        return None
    return np.linspace(0, size, parts + 1).astype(np.int64)


def relu(x: np.ndarray) -> np.ndarray:
    """y = max(x, 0), x of any shape; y is a new C-contiguous array of x's shape and dtype."""
    if x.dtype not in _FLOATS:
        return np.maximum(x, x.dtype.type(0))
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    flat_x, flat_y = x.reshape(-1), y.reshape(-1)
    bounds = _bounds(flat_x.size)
    if bounds is None:
        _relu(flat_x, flat_y)
    else:
        _relu_parallel(flat_x, flat_y, bounds)
    return y


def relu_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx = dy where y > 0, else 0. y: relu's output; dy: its gradient, same shape."""
    if dy.shape != y.shape:
        raise ValueError(
            f"ReLU backward: dy must have the output's shape {y.shape}, got {dy.shape}"
        )
    if y.dtype not in _FLOATS or dy.dtype != y.dtype:
        return np.where(y > 0, dy, dy.dtype.type(0))
    y, dy = np.ascontiguousarray(y), np.ascontiguousarray(dy)
    dx = np.empty_like(dy)
    flat_y, flat_dy, flat_dx = y.reshape(-1), dy.reshape(-1), dx.reshape(-1)
    bounds = _bounds(flat_y.size)
    if bounds is None:
        _relu_grad(flat_y, flat_dy, flat_dx)
    else:
        _relu_grad_parallel(flat_y, flat_dy, flat_dx, bounds)
    return dx
