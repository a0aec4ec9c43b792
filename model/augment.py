"""Augmentation of training batches: random shifts and rotations, resampled bilinearly.

>>> import numpy as np
>>> from model.augment import augment_batch
>>> xb = np.zeros((8, 28, 28, 1), np.float32)
>>> out = augment_batch(xb, np.random.default_rng(0))   # a new array, same shape and dtype
>>> out.shape, out.dtype, out is xb
((8, 28, 28, 1), dtype('float32'), False)
"""

from __future__ import annotations

import numpy as np

from .checks import nonnegative_float, nonnegative_int


def _check_images(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x must be (N, H, W, C) floating, got {x.dtype} {x.shape}")
    return x


def transform_batch(x: np.ndarray, shifts, degrees) -> np.ndarray:
    """Rotate each image about its centre by degrees[i], then shift it by shifts[i] = (dy, dx) px.

    x: (N, H, W, C) float; shifts: (N, 2) (positive dy moves content down, dx right); degrees: (N,).
    Returns (N, H, W, C) of x's dtype. Each output pixel is sampled bilinearly from the input at
    the inverse-mapped position (compiled: kernels/resample.py); positions outside the image read
    zero. Integer shifts without rotation move pixels exactly.
    """
    x = _check_images(x)
    n, h, w, _ = x.shape
    shifts = np.asarray(shifts, dtype=np.float64)
    theta = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    if shifts.shape != (n, 2):
        raise ValueError(f"shifts must be ({n}, 2), got {shifts.shape}")
    if theta.shape != (n,):
        raise ValueError(f"degrees must be ({n},), got {theta.shape}")

    from kernels.resample import rotate_shift_batch  # numba: imported on first use

    out = np.empty(x.shape, x.dtype)
    rotate_shift_batch(np.ascontiguousarray(x), np.cos(theta), np.sin(theta), shifts, out)
    return out


def augment_batch(
    x: np.ndarray, rng: np.random.Generator, max_shift: int = 2, max_degrees: float = 10.0
) -> np.ndarray:
    """Random shift and rotation per image, for training batches only.

    x: (N, H, W, C) float -> (N, H, W, C) same dtype, a new array. Per image: integer shifts dy, dx
    uniform in [-max_shift, max_shift] and a rotation uniform in [-max_degrees, max_degrees]
    degrees (drawn from rng in that order, so the same seed gives the same batch); zero fill
    where the image moved away. See transform_batch.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    max_shift = nonnegative_int(max_shift, "max_shift")
    max_degrees = nonnegative_float(max_degrees, "max_degrees")
    # Checked before drawing, so a bad call leaves rng's stream untouched.
    n = len(_check_images(x))
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    degrees = rng.uniform(-max_degrees, max_degrees, size=n)
    return transform_batch(x, shifts, degrees)
