"""Arrays for training: MNIST's uint8 images as float NHWC, standardisation, subsets, batches.

>>> import numpy as np
>>> from model.batches import iterate_batches, scale
>>> images = np.full((100, 28, 28), 255, np.uint8)   # MNIST's (N, 28, 28) uint8
>>> x = scale(images)                                # (N, 28, 28, 1) float32 in [0, 1]
>>> x.shape, x.dtype, float(x.max())
((100, 28, 28, 1), dtype('float32'), 1.0)
>>> labels = np.arange(100) % 10
>>> [len(xb) for xb, yb in iterate_batches(x, labels, 64, rng=np.random.default_rng(0))]
[64, 36]
"""

from __future__ import annotations

import numpy as np

from .checks import nonnegative_int, positive_int


def to_nhwc(x: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H, W, 1), a view of `x` (same dtype)."""
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must be (N, H, W) images, got shape {x.shape}")
    return x[..., np.newaxis]


def scale(x_uint8: np.ndarray, dtype=np.float32) -> np.ndarray:
    """(N, H, W) or (N, H, W, 1) uint8 -> (N, H, W, 1) `dtype` in [0, 1] (pixel / 255), a new array."""
    x_uint8 = np.asarray(x_uint8)
    if x_uint8.dtype != np.uint8:
        raise ValueError(f"x_uint8 must be uint8 pixels, got {x_uint8.dtype}")
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise ValueError(f"dtype must be a floating type, got {np.dtype(dtype)}")
    if x_uint8.ndim == 3:
        x_uint8 = to_nhwc(x_uint8)
    elif x_uint8.ndim != 4:
        raise ValueError(f"x_uint8 must be (N, H, W) or (N, H, W, C), got shape {x_uint8.shape}")
    out = x_uint8.astype(dtype)
    out /= out.dtype.type(255)  # division, not * (1/255): 255 maps to exactly 1.0
    return out


def standardize_stats(x_train: np.ndarray) -> tuple[float, float]:
    """(mean, std) over every element of `x_train` (any shape), as Python floats.

    Accumulates in float64 so 47 million float32 pixels do not drift. Apply the training set's
    statistics to the test set too.
    """
    x_train = np.asarray(x_train)
    if x_train.size == 0:
        raise ValueError("x_train is empty: no statistics to compute")
    mean = float(x_train.mean(dtype=np.float64))
    std = float(x_train.std(dtype=np.float64))
    if not std > 0:
        raise ValueError(f"x_train has standard deviation {std}: cannot standardize by it")
    return mean, std


def standardize(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(x - mean) / std for floating `x` of any shape; a new array of x's dtype."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x must be floating (use scale() first), got {x.dtype}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    kind = x.dtype.type
    return (x - kind(mean)) / kind(std)


def subset(x: np.ndarray, y: np.ndarray, limit: int | None, name: str = "limit"):
    """The first `limit` items of x (N, ...) and y (N, ...), as views; None (or limit >= N) = all.

    `name` is how the caller's user knows the limit (e.g. "--train-limit"), for the error.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if limit is None:
        return x, y
    limit = positive_int(limit, name)
    return x[:limit], y[:limit]


def num_batches(n: int, batch_size: int) -> int:
    """How many batches iterate_batches yields for n items: ceil(n / batch_size)."""
    batch_size = positive_int(batch_size, "batch_size")
    return -(-nonnegative_int(n, "n") // batch_size)


def iterate_batches(x: np.ndarray, y: np.ndarray, batch_size: int, rng=None):
    """Yield (xb, yb) batches covering x (N, ...) and y (N, ...) once, the last one partial.

    With rng (a numpy.random.Generator) the items come in the order of rng.permutation(N), one
    draw per call, so the same seed gives the same batches; batches are then copies. With
    rng=None the order is the stored one and batches are views. Arguments are checked at the
    call, not at the first next().
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    positive_int(batch_size, "batch_size")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    order = None if rng is None else rng.permutation(len(x))
    return _batches(x, y, batch_size, order)


def _batches(x, y, batch_size, order):
    for start in range(0, len(x), batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]
