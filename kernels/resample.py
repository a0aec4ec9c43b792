"""Bilinear resampling of an image batch, one rotation and shift per image (model/augment.py).

For every output pixel (r, c) of image i the source position is

    y = cos_i (r - cy - dy_i) + sin_i (c - cx - dx_i) + cy
    x = -sin_i (r - cy - dy_i) + cos_i (c - cx - dx_i) + cx

and the output is the bilinear blend of the four input pixels around (y, x), those outside the
image reading zero. The arithmetic is model/augment.py's NumPy formulation, operation for
operation (float64 positions and weights, each weight rounded to the image dtype, the four terms
added in the order (0, 0), (0, 1), (1, 0), (1, 1)), so both give the same bits; the tests keep the
NumPy form as the reference. Compiled, a batch of 64 MNIST images takes a fraction of the
NumPy form's time, which gathers through (N, H, W) index arrays four times (bench.compare's
breakdown section, "augmentation").

rotate_shift_batch splits the images over kernels/gemm.py's thread pool (the kernel releases the
GIL) rather than compiling a parallel (prange) version, which takes more than twice as long to
compile on a cold cache's first augmented batch. The images are independent, so the split
changes no bits.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import gemm

# images below which the batch runs in the calling thread: handing half of it to the pool costs
# tens of microseconds, an MNIST image about 20
MIN_SPLIT_IMAGES = 8


def rotate_shift_batch(x, cos, sin, shifts, out) -> None:
    """rotate_shift on blocks of images at once, one per thread (see the module docstring)."""
    n = x.shape[0]
    parts = min(gemm.threads(), n // MIN_SPLIT_IMAGES) if n >= 2 * MIN_SPLIT_IMAGES else 1
    if parts <= 1:
        rotate_shift(x, cos, sin, shifts, out)
        return
    bounds = gemm.split_bounds(n, parts)
    gemm.run_pieces(
        rotate_shift,
        [(x[lo:hi], cos[lo:hi], sin[lo:hi], shifts[lo:hi], out[lo:hi]) for lo, hi in bounds],
    )


@njit(cache=True, nogil=True)
def rotate_shift(x, cos, sin, shifts, out):
    """x (N, H, W, C) float -> out (N, H, W, C), x's dtype; cos, sin (N,) float64 of each
    image's angle; shifts (N, 2) float64 (dy, dx)."""
    n, h, w, chans = x.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    for i in range(n):
        for r in range(h):
            for c in range(w):
                out_y = r - cy - shifts[i, 0]
                out_x = c - cx - shifts[i, 1]
                src_y = cos[i] * out_y + sin[i] * out_x + cy
                src_x = -sin[i] * out_y + cos[i] * out_x + cx
                y0, x0 = math.floor(src_y), math.floor(src_x)
                wy, wx = src_y - y0, src_x - x0
                for ch in range(chans):
                    out[i, r, c, ch] = 0
                for dy in range(2):
                    weight_y = wy if dy else 1 - wy
                    yy = int(y0) + dy
                    for dx in range(2):
                        weight_x = wx if dx else 1 - wx
                        xx = int(x0) + dx
                        inside = 0 <= yy < h and 0 <= xx < w
                        weight = x.dtype.type(weight_y * weight_x * (1.0 if inside else 0.0))
                        sy, sx = min(max(yy, 0), h - 1), min(max(xx, 0), w - 1)
                        for ch in range(chans):
                            out[i, r, c, ch] += weight * x[i, sy, sx, ch]


def warmup(dtypes=(np.float32, np.float64)) -> None:
    """Compile (or load from numba's disk cache) rotate_shift for `dtypes`."""
    for dtype in dtypes:
        x = np.zeros((1, 2, 2, 1), dtype)
        rotate_shift(x, np.ones(1), np.zeros(1), np.zeros((1, 2)), np.empty_like(x))
