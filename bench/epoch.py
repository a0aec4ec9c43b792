"""Application-level workloads: a training epoch of the `seed` model, and the .npy conv-kernel fit.

epoch_seconds(backend, x, y)     -> (seconds for all of x, extrapolated?)
fitconv_epoch_seconds(backend, inputs, targets) -> seconds per epoch (median)
load_training_data(data_dir, n)  -> x (n, 28, 28, 1) float32, y (n, 10) one-hot, source text
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from kernels import get_backend

# naive runs ~0.15 s per batch of 64 here: a full epoch would take minutes, so it is timed on a
# few batches and extrapolated (and marked so in the report).
EXTRAPOLATE_BACKENDS = {"naive": 8}
FITCONV_SHAPE = (100, 3, 28, 28)  # seed 003: samples, channels, height, width (NCHW)
FITCONV_KERNELS, FITCONV_KSIZE, FITCONV_LR = 2, 2, 0.1


def default_data_dir() -> str | None:
    return os.environ.get("MNIST_DIR")


def load_training_data(data_dir, n_samples: int, seed: int = 0):
    """Real MNIST training images when `data_dir` has them, else random data of the same shape.

    Returns x: (n, 28, 28, 1) float32 in [0, 1], y: (n, 10) float32 one-hot, and a description
    of the source for the report.
    """
    if data_dir and Path(data_dir).is_dir():
        try:
            from model.data import load_mnist, to_nhwc

            data = load_mnist(data_dir)
            x = to_nhwc(data.x_train[:n_samples])
            x = (
                x.astype(np.float32) / np.float32(255)
                if x.dtype == np.uint8
                else x.astype(np.float32)
            )
            y = np.eye(10, dtype=np.float32)[np.asarray(data.y_train[:n_samples], dtype=np.intp)]
            return x, y, f"real MNIST from {data_dir} ({len(x)} training images)"
        except Exception as exc:  # model.data missing or files unreadable: fall back, but say why
            reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = "no --data-dir / $MNIST_DIR"
    rng = np.random.default_rng(seed)
    x = rng.random((n_samples, 28, 28, 1), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n_samples)]
    return x, y, f"random data of MNIST's shape ({n_samples} images; {reason})"


def epoch_seconds(backend: str, x, y_onehot, batch_size: int = 64, seed: int = 0):
    """Seconds for one epoch over x: (N, 28, 28, 1) of the seed model on `backend`, float32.

    Returns (seconds, extrapolated, batches_timed). Slow backends time a few batches and scale up.
    """
    from model.network import build_network
    from model.optim import Momentum
    from model.training import TRAIN_BLAS_THREADS

    module = get_backend(backend)
    if hasattr(module, "warmup"):
        module.warmup()
    net = build_network("seed", backend=backend, dtype=np.float32, seed=seed)
    opt = Momentum(lr=0.01, momentum=0.9)
    order = np.random.default_rng(seed).permutation(len(x))
    starts = list(range(0, len(x), batch_size))
    limit = EXTRAPOLATE_BACKENDS.get(backend)
    timed = starts if limit is None or limit >= len(starts) else starts[:limit]
    with threadpool_limits(limits=TRAIN_BLAS_THREADS, user_api="blas"):  # as model.train runs
        net.train_step(x[order[:batch_size]], y_onehot[order[:batch_size]], opt)  # warm-up
        start = time.perf_counter()
        for i in timed:
            idx = order[i : i + batch_size]
            net.train_step(x[idx], y_onehot[idx], opt)
        seconds = time.perf_counter() - start
    if len(timed) < len(starts):
        return seconds * len(starts) / len(timed), True, len(timed)
    return seconds, False, len(timed)


def make_fitconv_data(seed: int = 0):
    """The lab's workload: inputs (100, 3, 28, 28) float32 and targets (100, 2, 27, 27) made by a
    hidden 2x2 valid conv, so the fit has something to find."""
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal(FITCONV_SHAPE).astype(np.float32)
    true_w = rng.standard_normal(
        (FITCONV_KSIZE, FITCONV_KSIZE, FITCONV_SHAPE[1], FITCONV_KERNELS)
    ).astype(np.float32)
    y, _ = get_backend("im2col").conv2d_forward(inputs.transpose(0, 2, 3, 1), true_w)
    return inputs, np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def fitconv_epoch_seconds(
    backend: str, inputs, targets, repeat: int = 3, samples: int | None = None
) -> tuple[float, bool]:
    """Median seconds of one epoch of `model.fitconv.fit_kernels` (per-sample SGD) on `backend`.

    With `samples` < len(inputs) the epoch is timed on the first `samples` and scaled up; returns
    (seconds per full epoch, extrapolated).
    """
    full = len(inputs)
    if samples is not None and samples < full:
        inputs, targets = inputs[:samples], targets[:samples]
    from model.fitconv import fit_kernels

    module = get_backend(backend)
    if hasattr(module, "warmup"):
        module.warmup()

    def one_epoch():
        fit_kernels(
            inputs,
            targets,
            num_kernels=FITCONV_KERNELS,
            kernel_size=FITCONV_KSIZE,
            lr=FITCONV_LR,
            epochs=1,
            backend=backend,
            batch_size=1,
            seed=0,
        )

    one_epoch()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        one_epoch()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * full / len(inputs), len(inputs) < full
