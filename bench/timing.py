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


def pooled(samples, rounds) -> dict:
    """A figure measured several times, as results.json keeps it: {"median", "iqr", "noisy",
    "samples" (as given), "rounds" (the round each sample came from)}; `samples` and `rounds`
    of one length >= 1."""
    if len(samples) == 0 or len(samples) != len(rounds):
        raise ValueError(
            f"samples and rounds must be non-empty and of one length, got {len(samples)} "
            f"and {len(rounds)}"
        )
    t = summarize(samples)
    return {
        "median": t.median,
        "iqr": t.iqr,
        "noisy": t.noisy,
        "samples": t.samples,
        "rounds": [int(r) for r in rounds],
    }


# Untimed work before a measurement's samples. Cores that idled (another implementation's turn,
# a cooldown) run a short pass several times slower for the first tens of milliseconds: the
# numba backend's fwd_bwd on `bench.conv --set mobilenetv2 --layers block0/project` reached its
# steady time only after about 0.1 s of work, and the layer section's `mid` forward read with
# an interquartile range half its median without it.
WARM_SECONDS = 0.15


def measure(
    fn,
    repeat: int = 5,
    warmup: int = 1,
    min_sample: float = 0.02,
    max_number: int = 1000,
    warm_seconds: float = 0.0,
) -> Timing:
    """Call `fn()` untimed `warmup` times and for at least `warm_seconds`, then time `repeat`
    samples of `number` calls each.

    `number` is chosen from the last warm-up call so one sample lasts about `min_sample` seconds.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    elapsed = 0.0
    warm_until = time.perf_counter() + warm_seconds
    calls = 0
    while calls < max(warmup, 1) or time.perf_counter() < warm_until:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        calls += 1
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


def in_rounds(names: list, n_rounds: int, measure_one, bar=None, label: str = "") -> dict:
    """Measure every name once per round, in an order rotated from round to round (`rotated`):
    {name: [(round, measure_one(name, round)), ...], or the first exception it raised}. A name
    that raised is not measured again; `bar` (tqdm-like) advances one step per name and round
    either way."""
    got: dict = {name: [] for name in names}
    for rnd in range(n_rounds):
        for name in rotated(list(names), rnd):
            if bar is not None:
                bar.set_description(f"{label} {name} (round {rnd + 1}/{n_rounds})".strip())
            if not isinstance(got[name], BaseException):
                try:
                    got[name].append((rnd, measure_one(name, rnd)))
                except Exception as exc:  # one broken backend must not stop the run
                    got[name] = exc
            if bar is not None:
                bar.update(1)
    return got
