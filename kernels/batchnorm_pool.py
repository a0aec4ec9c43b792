"""Batch normalisation followed by a 2x2 max-pool of stride 2, compiled as one pass each way.

The `deep` network's blocks are conv -> BatchNorm -> MaxPool2D(2) -> ReLU. Run as two layers,
batch norm writes its (N, H, W, C) output and its x_hat, the pool reads the output back, and
backward the pool writes an (N, H, W, C) gradient that is zero at three pixels of every four for
batch norm to read twice. Here (kernels/batchnorm.py has the two-pass scheme this follows):

    forward (training)  pass 1: the batch statistics, as batchnorm.forward_train
                        pass 2: per window, the four normalised values y = gamma * x_hat + beta
                                (x_hat = (x - mean) * inv_std), their maximum and its argmax;
                                only the pooled (N, H/2, W/2, C) output and the argmax are written
    backward            pass 1: sum(dy) and sum(dy * x_hat), dy being the window's gradient at
                                its argmax pixel and 0 at the other three, x_hat recomputed from x
                        pass 2: dx = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat)) for
                                every pixel, dy as in pass 1

Every value is computed by the same expressions, in the same order, as batchnorm's and the numba
pool's kernels, so the pooled output and the argmax equal the two layers' to the bit, and so do
dx, dgamma and dbeta where each thread's share of the rows starts at an even image row (as on the
`deep` network's shapes; elsewhere the float64 sums may be grouped differently between the
threads, and agree to float32 rounding). x, not x_hat, is kept for the backward (the layer's input, alive
anyway), and x_hat is recomputed where it is needed. On the `deep` network's first block,
(64, 28, 28, 32) float32, both passes take less time than batch norm and the pool one after the
other (bench.compare's breakdown section times the pair). H and W must be even (the windows then
cover every pixel);
shapes are NHWC, C-contiguous.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from . import batchnorm
from .geometry import argmax_dtype

_JIT: dict[str, Any] = dict(cache=True, parallel=True, fastmath={"contract"})


@njit(**_JIT)
def _normalise_maxpool2(x, mean, inv_std, gamma, beta, y, argmax):
    """y, argmax (N, H/2, W/2, C) = the maximum of each 2x2 window of gamma * x_hat + beta,
    x (N, H, W, C), and its index 2*a + b (np.argmax's ties and NaN, as the pool kernels)."""
    n, pooled_h, pooled_w, chans = y.shape
    for t in prange(n * pooled_h):
        ni, pr = t // pooled_h, t % pooled_h
        r0 = 2 * pr
        for pq in range(pooled_w):
            c0 = 2 * pq
            for c in range(chans):
                best = gamma[c] * ((x[ni, r0, c0, c] - mean[c]) * inv_std[c]) + beta[c]
                which = np.int32(0)
                for k in range(1, 4):  # constant trip count: unrolled
                    h = (x[ni, r0 + k // 2, c0 + k % 2, c] - mean[c]) * inv_std[c]
                    v = gamma[c] * h + beta[c]
                    take = (v > best) | ((v != v) & (best == best))
                    best = v if take else best
                    which = np.int32(k) if take else which
                y[ni, pr, pq, c] = best
                argmax[ni, pr, pq, c] = which


@njit(**_JIT)
def _grad_sums_maxpool2(dy, argmax, x, mean, inv_std, bounds):
    """Per-part float64 sums of g and g * x_hat: (parts, 2, C), g the window's gradient dy
    (N, H/2, W/2, C) at its argmax pixel and 0 at the others; parts split the N * H/2 rows of
    windows by `bounds`. Pixel by pixel in row order, as batchnorm._grad_sums adds the rows of
    the pool's gradient, so the sums are the same to the bit (a gathered read of the argmax
    pixels alone does a quarter of the adds, but at a per-channel address the channel loop does
    not vectorise: twice as slow)."""
    parts = bounds.shape[0] - 1
    n, pooled_h, pooled_w, chans = dy.shape
    out = np.zeros((parts, 2, chans))
    zero = dy.dtype.type(0)
    for part in prange(parts):
        s = np.zeros(chans)
        sx = np.zeros(chans)
        for t in range(bounds[part], bounds[part + 1]):
            ni, pr = t // pooled_h, t % pooled_h
            for a in range(2):
                r = 2 * pr + a
                for pq in range(pooled_w):
                    for b in range(2):
                        col, k = 2 * pq + b, 2 * a + b
                        for c in range(chans):
                            grad = dy[ni, pr, pq, c] if argmax[ni, pr, pq, c] == k else zero
                            g = np.float64(grad)
                            s[c] += g
                            sx[c] += g * ((x[ni, r, col, c] - mean[c]) * inv_std[c])
        out[part, 0] = s
        out[part, 1] = sx
    return out


@njit(**_JIT)
def _input_grad_maxpool2(dy, argmax, x, mean, inv_std, scale, mean_dy, mean_dy_xhat, dx):
    """dx (N, H, W, C) = scale * (g - mean_dy - x_hat * mean_dy_xhat), g the window's gradient
    dy at its argmax pixel and 0 at the others. One loop over the channels per pixel."""
    n, pooled_h, pooled_w, chans = dy.shape
    zero = dx.dtype.type(0)
    for t in prange(n * pooled_h):
        ni, pr = t // pooled_h, t % pooled_h
        for a in range(2):
            r = 2 * pr + a
            for pq in range(pooled_w):
                for b in range(2):
                    col, k = 2 * pq + b, 2 * a + b
                    for c in range(chans):
                        grad = dy[ni, pr, pq, c] if argmax[ni, pr, pq, c] == k else zero
                        h = (x[ni, r, col, c] - mean[c]) * inv_std[c]
                        dx[ni, r, col, c] = scale[c] * (grad - mean_dy[c] - h * mean_dy_xhat[c])


def applies(x_shape) -> bool:
    """True when the fused pair runs an (N, H, W, C) input: 4-D with H and W even."""
    return len(x_shape) == 4 and x_shape[1] % 2 == 0 and x_shape[2] % 2 == 0


def forward_train_maxpool2(x, gamma, beta, eps):
    """x: (N, H, W, C) C-contiguous, H and W even -> (y (N, H/2, W/2, C), argmax (same shape),
    mean, biased var, inv_std (C,), count): MaxPool2D(2)(batchnorm.forward_train(x)), the
    statistics the same as forward_train's."""
    n, h, w, c = x.shape
    mean, var, inv_std, rows = batchnorm.statistics(x.reshape(-1, c), eps)
    y = np.empty((n, h // 2, w // 2, c), dtype=x.dtype)
    argmax = np.empty(y.shape, dtype=argmax_dtype(2, 2))
    _normalise_maxpool2(x, mean, inv_std, gamma, beta, y, argmax)
    return y, argmax, mean, var, inv_std, rows


def backward_maxpool2(dy, argmax, x, mean, inv_std, gamma, count):
    """dy: (N, H/2, W/2, C), the pool's output gradient; argmax and the statistics from
    forward_train_maxpool2 of x (N, H, W, C) -> (dx (N, H, W, C), dgamma (C,), dbeta (C,))."""
    dtype = dy.dtype
    bounds = batchnorm.row_bounds(dy.shape[0] * dy.shape[1])  # rows of windows per thread
    sums = _grad_sums_maxpool2(dy, argmax, x, mean, inv_std, bounds).sum(axis=0)
    scale, mean_dy, mean_dy_xhat = batchnorm.input_grad_terms(sums, inv_std, gamma, count, dtype)
    dx = np.empty_like(x)
    _input_grad_maxpool2(dy, argmax, x, mean, inv_std, scale, mean_dy, mean_dy_xhat, dx)
    return dx, sums[1].astype(dtype), sums[0].astype(dtype)
