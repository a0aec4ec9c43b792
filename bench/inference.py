"""The inference section: images/s of `Sequential.predict` over the MNIST test images, for both
architectures and our backends, beside PyTorch's eval-mode inference of the same networks.

    images_per_second(backend, arch, x, repeat) -> (images/s, median seconds, each pass's seconds)
    run(ctx)                                    -> the section's results (bench.suite.Context)

Networks are freshly initialised: inference does the same work whatever the weights. Ours run as
`python -m model.predict` and `Sequential.predict` do (batches of 1000, NumPy's default BLAS
threads); PyTorch in eval mode under torch.no_grad(), batches of 1000, 2 threads, both layouts.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import threadpool_info

from . import peers
from .status import row_status

if TYPE_CHECKING:
    from .context import Context, Options

ARCHS = ("small", "deep")
BATCH_SIZE = 1000
FULL_IMAGES, QUICK_IMAGES = 10_000, 1000
FULL_REPEAT, QUICK_REPEAT = 3, 1
TORCH_CONFIGS = ("torch", "torch_cl")
# naive's Python-loop convolution would need minutes for 10 000 deep images
SKIPPED = {"naive": "skipped: too slow for 10 000 images (a reference, not a way to predict)"}


def images_per_second(backend: str, arch: str, x, repeat: int, seed: int = 0):
    """(images/s, median seconds, every pass's seconds) of net.predict(x) for x: (N, 28, 28, 1)
    float32, after one
    untimed batch (auto tunes, numba loads its kernels there)."""
    from model.network import build_network

    net = build_network(arch, backend=backend, dtype=np.float32, seed=seed)
    net.predict(x[:BATCH_SIZE], batch_size=BATCH_SIZE)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        net.predict(x, batch_size=BATCH_SIZE)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return len(x) / seconds, seconds, times


def blas_threads() -> int | None:
    """The BLAS thread count NumPy uses by default in this process."""
    counts = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else None


def steps(opts: Options, backends) -> int:
    return len(ARCHS) * (len(backends) + len(TORCH_CONFIGS))


def run(ctx: Context) -> dict:
    """Per architecture, one row per backend and PyTorch configuration: images/s."""
    from .mnist import load_training_data

    opts = ctx.opts
    n = QUICK_IMAGES if opts.quick else FULL_IMAGES
    repeat = QUICK_REPEAT if opts.quick else FULL_REPEAT
    x, _, source = load_training_data(opts.data_dir, n, split="test")
    archs = []
    for arch in ARCHS:
        rows = []
        for name in ctx.backends + list(TORCH_CONFIGS):
            ctx.bar.set_description(f"inference {arch} {name}")
            row = {"name": name, "peer": name in peers.PEERS}
            with row_status(row, rows, ctx.bar):
                if name in SKIPPED:
                    row["status"] = SKIPPED[name]
                elif name in peers.PEERS:
                    peers.require(ctx.peers, name)
                    times = peers.inference_seconds(name, arch, x, BATCH_SIZE, repeat)
                    seconds = float(np.median(times))
                    row.update(seconds=seconds, images_per_second=len(x) / seconds, samples=times)
                else:
                    rate, seconds, times = images_per_second(name, arch, x, repeat)
                    row.update(seconds=seconds, images_per_second=rate, samples=times)
        archs.append({"arch": arch, "rows": rows})
    return {
        "data": source,
        "images": len(x),
        "batch_size": BATCH_SIZE,
        "repeat": repeat,
        "blas_threads": blas_threads(),
        "torch_threads": peers.THREADS,
        "archs": archs,
    }
