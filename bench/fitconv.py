"""The fitconv section: the lab's `.npy` conv-kernel fit (`python -m model.fitconv`) per backend
and peer, seconds per epoch of per-sample SGD.

    make_fitconv_data()                             -> inputs (100, 3, 28, 28), targets (100, 2, 27, 27)
    fitconv_epoch_seconds(backend, inputs, targets) -> (seconds per epoch (median), extrapolated?,
                                                        every timed epoch's seconds, scaled alike)
    run(ctx)                                        -> the section's results (bench.suite.Context)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from kernels import get_backend

from . import peers
from .status import row_status

if TYPE_CHECKING:
    from .context import Context, Options

# The lab's configuration: samples, channels, side (NCHW inputs); kernels, kernel side; lr.
SAMPLES, CHANNELS, SIZE = 100, 3, 28
KERNELS, KSIZE, LR = 2, 2, 0.1
QUICK_SAMPLES = 20  # --quick times the fit on 20 of its 100 samples and scales up


def make_fitconv_data(seed: int = 0):
    """The lab's workload as float32: inputs (100, 3, 28, 28) and targets (100, 2, 27, 27) made by
    hidden 2x2 kernels (model.convfit.generate_data), so the fit has something to find."""
    from model.convfit import generate_data

    data = generate_data(SAMPLES, CHANNELS, SIZE, KERNELS, KSIZE, seed=seed, from_kernels=True)
    return data["input"].astype(np.float32), data["target"].astype(np.float32)


def fitconv_epoch_seconds(
    backend: str, inputs, targets, repeat: int = 3, samples: int | None = None
) -> tuple[float, bool, list[float]]:
    """Median seconds of one epoch of `model.convfit.fit_kernels` (per-sample SGD) on `backend`.

    With `samples` < len(inputs) the epoch is timed on the first `samples` and scaled up; returns
    (seconds per full epoch, extrapolated, each of the `repeat` epochs' seconds scaled alike).
    """
    from model.convfit import fit_kernels

    full = len(inputs)
    if samples is not None and samples < full:
        inputs, targets = inputs[:samples], targets[:samples]
    module = get_backend(backend)
    if hasattr(module, "warmup"):
        module.warmup()

    def one_epoch():
        fit_kernels(
            inputs,
            targets,
            num_kernels=KERNELS,
            kernel_size=KSIZE,
            lr=LR,
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
    scaled = [t * full / len(inputs) for t in times]
    return float(np.median(scaled)), len(inputs) < full, scaled


def steps(opts: Options, backends) -> int:
    return len(backends) + len(peers.PEERS)


def run(ctx: Context) -> dict:
    opts, bar = ctx.opts, ctx.bar
    inputs, targets = make_fitconv_data()
    rows = []
    for name in ctx.backends + list(peers.PEERS):
        bar.set_description(f"fitconv {name}")
        row = {"name": name, "peer": name in peers.PEERS}
        with row_status(row, rows, bar):
            if name in peers.PEERS:
                peers.require(ctx.peers, name)
                seconds = peers.fitconv_epoch_seconds(name, inputs, targets, KSIZE, LR)
                row.update(seconds=seconds)
            else:
                seconds, extrapolated, samples = fitconv_epoch_seconds(
                    name,
                    inputs,
                    targets,
                    repeat=1 if opts.quick else 3,
                    samples=QUICK_SAMPLES if opts.quick else None,
                )
                row.update(seconds=seconds, extrapolated=extrapolated, samples=samples)
    return {
        "inputs": list(inputs.shape),
        "targets": list(targets.shape),
        "lr": LR,
        "batch_size": 1,
        "loss": "mse",
        "rows": rows,
    }
