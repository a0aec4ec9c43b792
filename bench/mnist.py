"""The benchmark's training and test images: MNIST as `python -m model.train` finds it
(model.mnist.load_mnist: --data-dir, $MNIST_DIR, then the user cache), except that nothing is
downloaded; without MNIST, random data of the same shape, and the text saying so and why.

    load_training_data(data_dir, n)  -> x (n, 28, 28, 1) float32, y (n, 10) one-hot, source text
    data_source(data_dir, n)         -> the source text alone (checks a named directory early)
"""

from __future__ import annotations

import os

import numpy as np


def find_mnist(data_dir):
    """MNIST as `python -m model.train` finds it, without downloading: (MNIST, None), or
    (None, why not) when no directory was named and the user cache has none.

    A directory named by `data_dir` or $MNIST_DIR must hold MNIST, as for the trainer:
    FileNotFoundError or ValueError (a corrupt file) from load_mnist otherwise.
    """
    from model.mnist import default_cache_dir, load_mnist

    try:
        return load_mnist(data_dir, download=False, progress=False), None
    except FileNotFoundError:
        if data_dir is not None or os.environ.get("MNIST_DIR"):
            raise
        return None, (
            f"no --data-dir or $MNIST_DIR was given and the cache {default_cache_dir()} holds "
            "no MNIST (python -m model.train downloads it there)"
        )


def describe_source(data, why_not, n_samples: int, split: str = "train") -> str:
    """The data line of the console and the report: where the images came from, or why random."""
    if data is None:
        return f"random data of MNIST's shape ({n_samples} images) because {why_not}"
    n = min(n_samples, len(data.x_train if split == "train" else data.x_test))
    return f"real MNIST, {data.source} ({n} {'training' if split == 'train' else 'test'} images)"


def data_source(data_dir, n_samples: int) -> str:
    """describe_source of the data load_training_data would use; raises as find_mnist does."""
    return describe_source(*find_mnist(data_dir), n_samples)


def load_training_data(data_dir, n_samples: int, seed: int = 0, split: str = "train"):
    """The first `n_samples` MNIST images of `split` ("train" or "test"; find_mnist), else random
    data of that shape.

    Returns x: (n, 28, 28, 1) float32 in [0, 1], y: (n, 10) float32 one-hot, and describe_source's
    text.
    """
    from model.batches import scale
    from model.losses import one_hot

    data, why_not = find_mnist(data_dir)
    if data is None:
        rng = np.random.default_rng(seed + (split == "test"))
        x = rng.random((n_samples, 28, 28, 1), dtype=np.float32)
        y = one_hot(rng.integers(0, 10, n_samples))
    else:
        images, labels = (
            (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
        )
        x, y = scale(images[:n_samples]), one_hot(labels[:n_samples])
    return x, y, describe_source(data, why_not, n_samples, split)
