"""Timing with warm-up and repeats: median and inter-quartile range of per-call seconds.

The machine is shared, so single timings are noise: every figure the harness reports is a median
over `repeat` samples, and each sample loops the call enough times to last `min_sample` seconds
(as timeit does) so that perf_counter's resolution and call overhead do not dominate fast kernels.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Timing:
    """Seconds per call: the median, IQR (q75 - q25), and the raw per-call samples."""

    median: float
    iqr: float
    samples: list[float]
    number: int  # calls per sample

    @property
    def noisy(self) -> bool:
        """IQR above a quarter of the median: the machine was busy; treat the figure with care."""
        return self.iqr > NOISY_IQR_FRACTION * self.median

    def to_dict(self) -> dict:
        return {**asdict(self), "noisy": self.noisy}


NOISY_IQR_FRACTION = 0.25


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
