"""Synthetic data for the model tests: a task a small CNN learns in one epoch, as arrays and as
an MNIST-format directory (so the CLIs can be run end to end without the real data)."""

import gzip
import struct
from pathlib import Path

import numpy as np


def separable_data(n=256, seed=0, dtype=np.float32):
    """x (n, 28, 28, 1) `dtype`, y (n,) int: ten classes, each a bright 4x4 square at its own
    place on a 28x28 canvas, plus noise in [0, 0.3)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.random((n, 28, 28, 1)).astype(dtype) * 0.3
    for i, label in enumerate(y):
        r, c = divmod(int(label), 5)
        x[i, 4 + 10 * r : 8 + 10 * r, 2 + 5 * c : 6 + 5 * c, 0] += 1
    return x, y


def write_mnist_dir(root, n_train=200, n_test=100) -> Path:
    """The four gzipped IDX files of separable_data (pixels clipped to [0, 1], as uint8) in root."""
    root = Path(root)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x, y = separable_data(n, seed=len(prefix))
        images = (np.clip(x[..., 0], 0, 1) * 255).astype(np.uint8)
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + y.astype(np.uint8).tobytes())
    return root
