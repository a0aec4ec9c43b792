"""Timing with warm-up and repeats: median and inter-quartile range of per-call seconds.

The machine is shared, so single timings are noise: every figure the harness reports is a median
over `repeat` samples, and each sample loops the call enough times to last `min_sample` seconds
(as timeit does) so that perf_counter's resolution and call overhead do not dominate fast kernels.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .stats import is_noisy


@dataclass
class Timing:
    """Seconds per call: the median, IQR (q75 - q25), and the raw per-call samples."""

    median: float
    iqr: float
    samples: list[float]
    number: int  # calls per sample

    @property
    def noisy(self) -> bool:
        """torch.utils.benchmark's rule (bench.stats.is_noisy): IQR >= 10% of the median."""
        return is_noisy(self.median, self.iqr)

    def to_dict(self) -> dict:
        return {**asdict(self), "noisy": self.noisy}


def summarize(samples, number: int = 1) -> Timing:
    """Per-call seconds samples -> Timing (median, IQR)."""
    arr = np.asarray(samples, dtype=float)
    q25, q50, q75 = np.percentile(arr, [25, 50, 75])
    return Timing(float(q50), float(q75 - q25), [float(s) for s in arr], number)


def measure(
    fn, repeat: int = 5, warmup: int = 1, min_sample: float = 0.02, max_number: int = 1000
) -> Timing:
    """Call `fn()` `warmup` times untimed, then time `repeat` samples of `number` calls each.

    `number` is chosen from the last warm-up call so one sample lasts about `min_sample` seconds.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    elapsed = 0.0
    for _ in range(max(warmup, 1)):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
    number = int(min(max_number, max(1, np.ceil(min_sample / max(elapsed, 1e-9)))))
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return summarize(samples, number)


def rotated(seq: list, rnd: int) -> list:
    """seq starting at its (rnd mod len)-th element: each round times the backends in another
    order, so no backend always follows the same neighbour. A fixed order showed as auto and
    winograd (both running numba's code on small_pool and mid) reading 1.1-1.5x numba's time,
    the backend timed just before them, where the three are equal interleaved in one process."""
    if not seq:
        return seq
    k = rnd % len(seq)
    return seq[k:] + seq[:k]
