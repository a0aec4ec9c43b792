"""Losses, and the targets they compare against.

Each loss returns (mean loss over the batch, gradient with respect to its input).

softmax(logits)                         logits: (N, K) -> probabilities (N, K)
softmax_cross_entropy(logits, y)        y: (N, K) one-hot or (N,) integer labels
mse(pred, target)                       any matching shapes
one_hot(labels)                         (N,) integer labels -> (N, K) zeros and ones
class_indices(y)                        (N, K) one-hot or (N,) labels -> (N,) labels
NonFiniteLoss                           raised when a training step's loss is NaN or infinite
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 10  # MNIST's digits: one_hot's default


class NonFiniteLoss(FloatingPointError):
    """A training step's loss was NaN or infinite (`loss`); the step was not applied."""

    def __init__(self, loss: float):
        super().__init__(f"loss became {loss}")
        self.loss = loss


def one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES, dtype=np.float32) -> np.ndarray:
    """(N,) integer labels in [0, num_classes) -> (N, num_classes) `dtype` of zeros and ones."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"labels must lie in [0, {num_classes}): labels[{i}] = {labels[i]} "
            f"({int(bad.sum())} out of range)"
        )
    out = np.zeros((len(labels), num_classes), dtype=dtype)
    out[np.arange(len(labels)), labels] = 1
    return out


def class_indices(y) -> np.ndarray:
    """y: (N, K) one-hot (or scores) -> (N,) argmax; (N,) labels are returned as they are."""
    y = np.asarray(y)
    return y.argmax(axis=1) if y.ndim == 2 else y


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
