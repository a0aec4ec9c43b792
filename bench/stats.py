"""The statistics every figure and every comparison uses: a median with its interval, a ratio of
two sets of samples with its interval, a rank test for "changed", and the noise mark.

    median_interval([1.0, 1.1, 0.9])          -> (low, high): the median's 95% bootstrap interval
    ratio_interval(new, old)                   -> (low, high) of median(new) / median(old)
    slower_than(new, old, factor=1.1)          -> p of "new > factor * old" (Mann-Whitney U)
    differ(new, old)                           -> two-sided p of the same test

Intervals are percentile bootstraps (BOOTSTRAP resamples, a fixed seed, so a report reads the
same each time it is rendered). The significance level is ALPHA, two-sided for "changed" and one-
sided for the regression gate; with 3 + 3 samples no difference can reach it (the smallest
two-sided p is 0.1), so runs meant to be compared keep at least 5 samples per figure.
"""

from __future__ import annotations

import numpy as np

# torch.utils.benchmark marks a Measurement whose IQR is at least 10% of its median ("could
# indicate system fluctuation"); the report marks the same figures.
NOISY_IQR_FRACTION = 0.10
ALPHA = 0.01
BOOTSTRAP = 2000
CONFIDENCE = 0.95


def is_noisy(median: float, iqr: float) -> bool:
    """torch.utils.benchmark's rule: IQR >= NOISY_IQR_FRACTION of the median."""
    return median > 0 and iqr >= NOISY_IQR_FRACTION * median


def _quantiles(values: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _resampled_medians(samples, rng) -> np.ndarray:
    """(BOOTSTRAP,) medians of `samples` drawn with replacement."""
    arr = np.asarray(samples, dtype=float)
    idx = rng.integers(0, len(arr), size=(BOOTSTRAP, len(arr)))
    return np.median(arr[idx], axis=1)


def median_interval(samples) -> tuple[float, float]:
    """The CONFIDENCE percentile-bootstrap interval of the median of `samples` (1-D, >= 1)."""
    if len(samples) == 0:
        raise ValueError("median_interval needs at least one sample")
    return _quantiles(_resampled_medians(samples, np.random.default_rng(0)))


def ratio_interval(new, old) -> tuple[float, float]:
    """The CONFIDENCE percentile-bootstrap interval of median(new) / median(old), the two sets
    resampled independently (two runs' samples of one figure)."""
    if len(new) == 0 or len(old) == 0:
        raise ValueError("ratio_interval needs samples on both sides")
    rng = np.random.default_rng(0)
    return _quantiles(_resampled_medians(new, rng) / _resampled_medians(old, rng))


def differ(new, old) -> float:
    """Two-sided Mann-Whitney U p-value that `new` and `old` come from one distribution."""
    from scipy.stats import mannwhitneyu

    if len(new) < 2 or len(old) < 2:
        return 1.0
    if np.ptp(np.concatenate([new, old])) == 0:
        return 1.0  # all equal: scipy would warn; nothing differs
    return float(mannwhitneyu(new, old, alternative="two-sided").pvalue)


def slower_than(new, old, factor: float = 1.0) -> float:
    """One-sided Mann-Whitney U p-value that `new` is larger than `factor` * `old` (small: new
    is significantly slower than `factor` times old)."""
    from scipy.stats import mannwhitneyu

    scaled = factor * np.asarray(old, dtype=float)
    if len(new) < 2 or len(old) < 2:
        return 1.0
    if np.ptp(np.concatenate([new, scaled])) == 0:
        return 1.0
    return float(mannwhitneyu(new, scaled, alternative="greater").pvalue)


def geometric_mean(ratios) -> float | None:
    """exp(mean(log r)) over the positive ratios, None when there are none."""
    logs = [np.log(r) for r in ratios if r and r > 0]
    return float(np.exp(np.mean(logs))) if logs else None
