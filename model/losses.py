"""Losses: each returns (mean loss over the batch, gradient with respect to its input).

softmax(logits)                         logits: (N, K) -> probabilities (N, K)
softmax_cross_entropy(logits, y)        y: (N, K) one-hot or (N,) integer labels
mse(pred, target)                       any matching shapes
"""

from __future__ import annotations

import numpy as np

from .data import one_hot


def _shift(logits):
    """logits - row max, kept finite: a gap wider than the dtype's range (e.g. -3e38 - 3e38 in
    float32) would be -inf, and 0 * -inf in the loss would be NaN."""
    with np.errstate(over="ignore"):
        shifted = logits - logits.max(axis=1, keepdims=True)
    return np.maximum(shifted, np.finfo(logits.dtype).min)


def log_softmax(logits):
    """logits: (N, K) -> log probabilities (N, K). Subtracting the row maximum first keeps exp()
    from overflowing for huge logits (log-sum-exp trick)."""
    shifted = _shift(logits)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits):
    """logits: (N, K) -> probabilities (N, K), rows summing to 1; stable for any finite logits."""
    exp = np.exp(_shift(logits))
    return exp / exp.sum(axis=1, keepdims=True)


def as_one_hot(y, num_classes: int, dtype):
    """y: (N,) integer labels or (N, K) one-hot/soft targets -> (N, K) of `dtype`."""
    y = np.asarray(y)
    if y.ndim == 1:
        return one_hot(y, num_classes, dtype)
    if y.ndim != 2 or y.shape[1] != num_classes:
        raise ValueError(
            f"targets y must be (N,) labels or (N, {num_classes}) one-hot, got shape {y.shape}"
        )
    return y.astype(dtype, copy=False)


def softmax_cross_entropy(logits, y):
    """Mean cross-entropy of softmax(logits) against y, and d loss / d logits = (p - y) / N.

    logits: (N, K); y: (N, K) one-hot or (N,) labels.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, classes), got shape {logits.shape}")
    target = as_one_hot(y, logits.shape[1], logits.dtype)
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"y has {target.shape[0]} rows but logits has {logits.shape[0]}")
    log_p = log_softmax(logits)
    n = logits.shape[0]
    loss = -(target * log_p).sum() / n
    return float(loss), (np.exp(log_p) - target) / logits.dtype.type(n)


def mse(pred, target):
    """Mean squared error over every element, and its gradient 2 (pred - target) / size."""
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {pred.shape} but target has shape {target.shape}")
    diff = pred - target.astype(pred.dtype, copy=False)
    return float((diff * diff).mean()), diff * pred.dtype.type(2 / diff.size)


LOSSES = {"cross_entropy": softmax_cross_entropy, "mse": mse}
