"""The epoch section: one training epoch of the `small` model per backend and peer, batch 64.

    load_training_data(data_dir, n)  -> x (n, 28, 28, 1) float32, y (n, 10) one-hot, source text
    epoch_seconds(backend, x, y)     -> (seconds for all of x, extrapolated?, batches timed)
    run(ctx)                         -> the section's results (bench.suite.Context)

The data is found the way `python -m model.train` finds it (model.mnist.load_mnist: --data-dir,
$MNIST_DIR, then the user cache), except that nothing is downloaded; without MNIST the epoch runs
on random data of the same shape, and the report and the console say so and why.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import threadpool_limits

from kernels import get_backend

from . import peers
from .status import OK, error_status

if TYPE_CHECKING:
    from .suite import Context, Options

ARCH = "small"
BATCH_SIZE = 64
FULL_EPOCH = 60_000
QUICK_EPOCH = 2048
OPTIMIZER = "momentum"
MOMENTUM = 0.9
# A full naive epoch would take minutes (its convolution is Python loops), so naive is timed on
# this many batches and extrapolated (and marked so in the report).
EXTRAPOLATE_BACKENDS = {"naive": 8}


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


def describe_source(data, why_not, n_samples: int) -> str:
    """The data line of the console and the report: where the images came from, or why random."""
    if data is None:
        return f"random data of MNIST's shape ({n_samples} images) because {why_not}"
    n = min(n_samples, len(data.x_train))
    return f"real MNIST, {data.source} ({n} training images)"


def data_source(data_dir, n_samples: int) -> str:
    """describe_source of the data load_training_data would use; raises as find_mnist does."""
    return describe_source(*find_mnist(data_dir), n_samples)


def load_training_data(data_dir, n_samples: int, seed: int = 0):
    """The first `n_samples` MNIST training images (find_mnist), else random data of that shape.

    Returns x: (n, 28, 28, 1) float32 in [0, 1], y: (n, 10) float32 one-hot, and describe_source's
    text.
    """
    from model.batches import scale
    from model.losses import one_hot

    data, why_not = find_mnist(data_dir)
    if data is None:
        rng = np.random.default_rng(seed)
        x = rng.random((n_samples, 28, 28, 1), dtype=np.float32)
        y = one_hot(rng.integers(0, 10, n_samples))
    else:
        x, y = scale(data.x_train[:n_samples]), one_hot(data.y_train[:n_samples])
    return x, y, describe_source(data, why_not, n_samples)


def epoch_seconds(backend: str, x, y_onehot, lr: float, batch_size: int = BATCH_SIZE, seed=0):
    """Seconds for one epoch over x: (N, 28, 28, 1) float32 of the small model on `backend`.

    Returns (seconds, extrapolated, batches_timed). Slow backends time a few batches and scale up.
    """
    from model.network import build_network
    from model.optim import Momentum
    from model.training import TRAIN_BLAS_THREADS

    module = get_backend(backend)
    if hasattr(module, "warmup"):
        module.warmup()
    net = build_network(ARCH, backend=backend, dtype=np.float32, seed=seed)
    opt = Momentum(lr=lr, momentum=MOMENTUM)
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


def steps(opts: Options, backends) -> int:
    return len(backends) + len(peers.PEERS)


def run(ctx: Context) -> dict:
    """One row per backend and peer: seconds per epoch, scaled to 60 000 images when fewer ran."""
    from model.optim import DEFAULT_LR
    from model.training import TRAIN_BLAS_THREADS

    opts, bar = ctx.opts, ctx.bar
    lr = DEFAULT_LR[OPTIMIZER]
    x, y, source = load_training_data(opts.data_dir, opts.epoch_samples)
    scale = FULL_EPOCH / len(x)
    rows = []
    for name in ctx.backends + list(peers.PEERS):
        bar.set_description(f"epoch {name}")
        row = {"name": name, "peer": name in peers.PEERS, "samples": len(x)}
        try:
            if name in peers.PEERS:
                if ctx.peers[name] != OK:
                    raise peers.PeerUnavailable(ctx.peers[name])
                seconds, extrapolated, batches = peers.epoch_seconds(name, x, y, lr), False, None
            else:
                seconds, extrapolated, batches = epoch_seconds(name, x, y, lr)
            row.update(
                status=OK,
                seconds=seconds,
                seconds_per_60k=seconds * scale,
                extrapolated=extrapolated or scale != 1.0,
                batches_timed=batches,
            )
        except peers.PeerUnavailable as exc:
            row["status"] = str(exc)
        except Exception as exc:
            row["status"] = error_status(exc)
        rows.append(row)
        bar.update(1)
    return {
        "arch": ARCH,
        "data": source,
        "samples": len(x),
        "batch_size": BATCH_SIZE,
        "dtype": "float32",
        "optimizer": f"{OPTIMIZER} {MOMENTUM}, lr {lr:g}",
        "blas_threads": TRAIN_BLAS_THREADS,
        "rows": rows,
    }
