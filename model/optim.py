"""Optimizers (SGD, momentum, Adam), L2 weight decay, gradient clipping, learning-rate schedules.

An optimizer updates parameters in place from a list of `(key, param, grad, decay)` tuples, where
`key` names the parameter (its state, e.g. momentum, is kept per key) and `decay` says whether L2
weight decay applies (not to biases or BatchNorm's scale and shift). Its state round-trips through
`state_dict()` / `load_state_dict()` so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .checks import nonnegative_float, positive_float

# The learning rate each optimizer uses when none is given: by make_optimizer / the classes
# (lr=None), by `python -m model.train` without --lr, and by the benchmark's training epoch.
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "adam": 1e-3}
# The step schedule's default: multiply the learning rate by STEP_FACTOR every STEP_EPOCHS epochs.
STEP_EPOCHS, STEP_FACTOR = 10, 0.5
# Steps over which the learning rate ramps up linearly to its scheduled value (see warmup_factor).
WARMUP_STEPS = 20


def global_norm(grads) -> float:
    """sqrt of the sum of squares of every gradient array (accumulated in float64)."""
    return math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads))


def clip_by_value(grads, max_value: float) -> None:
    """Clamp every gradient element in place to [-max_value, max_value]."""
    for g in grads:
        np.clip(g, -max_value, max_value, out=g)


def clip_by_global_norm(grads, max_norm: float) -> float:
    """Scale every gradient in place by max_norm / norm when the global norm exceeds max_norm,
    so the update keeps its direction. Returns the norm before clipping."""
    norm = global_norm(grads)
    if norm > max_norm:
        for g in grads:
            g *= g.dtype.type(max_norm / norm)
    return norm


class Optimizer:
    """Base: weight decay and clipping are applied here; subclasses define `_update`.

    lr None = DEFAULT_LR[name]. clip_value clamps each gradient element to [-clip_value,
    clip_value]; clip_norm then scales all gradients together so their global L2 norm is at most
    clip_norm. Both None = no clipping.
    """

    name = ""

    def __init__(self, lr=None, weight_decay=0.0, clip_norm=None, clip_value=None):
        self.lr = positive_float(DEFAULT_LR[self.name] if lr is None else lr, "lr")
        self.weight_decay = nonnegative_float(weight_decay, "weight_decay")
        self.clip_norm = None if clip_norm is None else positive_float(clip_norm, "clip_norm")
        self.clip_value = None if clip_value is None else positive_float(clip_value, "clip_value")
        self.t = 0  # number of steps taken
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.last_grad_norm = None

    def step(self, params: Iterable[tuple[str, np.ndarray, np.ndarray, bool]]) -> None:
        """params: iterable of (key, param, grad, decay); updates each param in place."""
        params = list(params)
        grads = [g for _, _, g, _ in params]
        if self.clip_value is not None:
            clip_by_value(grads, self.clip_value)
        if self.clip_norm is not None:
            self.last_grad_norm = clip_by_global_norm(grads, self.clip_norm)
        self.t += 1
        for key, p, g, decay in params:
            if decay and self.weight_decay:
                g = g + p.dtype.type(self.weight_decay) * p  # L2: d/dp of wd/2 * ||p||^2
            self._update(key, p, g)

    def _slot(self, key, slot, like):
        slots = self.state.setdefault(key, {})
        if slot not in slots:
            slots[slot] = np.zeros_like(like)
        return slots[slot]

    def _update(self, key, p, g):
        raise NotImplementedError

    def config(self) -> dict:
        return {
            "name": self.name,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "clip_norm": self.clip_norm,
            "clip_value": self.clip_value,
        }

    def state_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(scalars as JSON-able dict, arrays by 'key/slot')."""
        arrays = {
            f"{key}/{slot}": a for key, slots in self.state.items() for slot, a in slots.items()
        }
        return {**self.config(), "t": self.t}, arrays

    def load_state_dict(self, scalars: dict, arrays: dict[str, np.ndarray]):
        self.t = int(scalars.get("t", 0))
        self.state = {}
        for name, a in arrays.items():
            key, slot = name.rsplit("/", 1)
            self.state.setdefault(key, {})[slot] = np.array(a)


def _compiled(*arrays: np.ndarray):
    """kernels.updates when every array is C-contiguous with the first's dtype (then the fused
    update applies to their flat views), else None: NumPy does the update."""
    first = arrays[0]
    if not all(a.flags.c_contiguous and a.dtype == first.dtype for a in arrays):
        return None
    from kernels import updates  # numba: imported on the first update, not with model.optim

    return updates


class SGD(Optimizer):
    """p -= lr * g"""

    name = "sgd"

    def _update(self, key, p, g):
        p -= p.dtype.type(self.lr) * g


class Momentum(Optimizer):
    """Heavy-ball momentum: v = momentum * v + g;  p -= lr * v  (PyTorch's convention)."""

    name = "momentum"

    def __init__(self, lr=None, momentum=0.9, weight_decay=0.0, clip_norm=None, clip_value=None):
        super().__init__(lr, weight_decay, clip_norm, clip_value)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = momentum

    def _update(self, key, p, g):
        v = self._slot(key, "velocity", p)
        fused = _compiled(p, g, v)
        if fused is not None:  # the same arithmetic in one pass (kernels/updates.py)
            f = p.dtype.type
            fused.momentum(
                p.reshape(-1), g.reshape(-1), v.reshape(-1), f(self.momentum), f(self.lr)
            )
            return
        v *= p.dtype.type(self.momentum)
        v += g
        p -= p.dtype.type(self.lr) * v

    def config(self):
        return {**super().config(), "momentum": self.momentum}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as torch.optim.Adam computes it:
    p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)."""

    name = "adam"

    def __init__(
        self,
        lr=None,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        clip_norm=None,
        clip_value=None,
    ):
        super().__init__(lr, weight_decay, clip_norm, clip_value)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def _update(self, key, p, g):
        m, v = self._slot(key, "m", p), self._slot(key, "v", p)
        f = p.dtype.type
        step = self.lr / (1 - self.beta1**self.t)
        inv_sqrt_bc2 = 1 / math.sqrt(1 - self.beta2**self.t)
        fused = _compiled(p, g, m, v)
        if fused is not None:  # the same arithmetic in one pass (kernels/updates.py)
            flat = (a.reshape(-1) for a in (p, g, m, v))
            fused.adam(
                *flat,
                f(self.beta1),
                f(1 - self.beta1),
                f(self.beta2),
                f(1 - self.beta2),
                f(step),
                f(inv_sqrt_bc2),
                f(self.eps),
            )
            return
        m *= f(self.beta1)
        m += f(1 - self.beta1) * g
        v *= f(self.beta2)
        v += f(1 - self.beta2) * (g * g)
        # PyTorch's form: eps is added to the bias-corrected sqrt(v). Folding the correction
        # into the step size instead (the paper's "eps hat") would scale eps by
        # 1 / sqrt(1 - beta2**t), 32x on the first step.
        denom = np.sqrt(v)
        denom *= f(inv_sqrt_bc2)
        denom += f(self.eps)
        p -= f(step) * m / denom

    def config(self):
        return {**super().config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


OPTIMIZERS = {cls.name: cls for cls in (SGD, Momentum, Adam)}


def make_optimizer(
    name: str, lr=None, weight_decay=0.0, clip_norm=None, clip_value=None
) -> Optimizer:
    """Optimizer by name ('sgd', 'momentum', 'adam'); lr None = DEFAULT_LR[name]."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](
        lr=lr, weight_decay=weight_decay, clip_norm=clip_norm, clip_value=clip_value
    )


SCHEDULES = ("none", "step", "cosine")


def lr_at(
    schedule: str,
    base_lr: float,
    epoch: int,
    total_epochs: int,
    step_epochs: int = STEP_EPOCHS,
    step_factor: float = STEP_FACTOR,
    min_lr: float = 0.0,
) -> float:
    """Learning rate for 0-based `epoch`.

    none: base_lr. step: base_lr * step_factor ** (epoch // step_epochs).
    cosine: min_lr + (base_lr - min_lr) * (1 + cos(pi * epoch / total_epochs)) / 2.
    """
    if schedule == "none":
        return base_lr
    if schedule == "step":
        return base_lr * step_factor ** (epoch // step_epochs)
    if schedule == "cosine":
        return (
            min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * epoch / max(total_epochs, 1))) / 2
        )
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def warmup_factor(step: int, warmup_steps: int = WARMUP_STEPS) -> float:
    """The fraction of the scheduled learning rate that 0-based `step` uses: (step + 1) /
    warmup_steps during the first warmup_steps steps, then 1 (warmup_steps 0 = no warmup).

    A network's first gradients are its largest: with inputs standardised to unit variance the
    small network's first steps have about 5x the gradient norm of [0, 1] inputs, and at the full
    default momentum rate they push every hidden ReLU negative, after which nothing trains. A short
    ramp lets the first steps shrink those gradients at a rate they survive.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps
