"""The conv lab's algorithm: learn convolution kernels so that conv2d(input) ~= target.

    >>> from model.convfit import fit_conv, generate_data
    >>> data = generate_data(samples=20, channels=3, size=8, kernels=2, kernel_size=2, seed=0)
    >>> data["input"].shape, data["target"].shape          # NCHW in, NKHW out (valid conv)
    ((20, 3, 8, 8), (20, 2, 7, 7))
    >>> fit = fit_conv(data["input"], data["target"], num_kernels=2, kernel_size=2,
    ...                lr=0.1, epochs=3, backend="im2col")
    >>> fit.kernels.shape, len(fit.losses), fit.losses[-1] < fit.losses[0]
    ((2, 3, 2, 2), 3, True)

`model.npyfiles` reads and writes the lab's .npy files; `python -m model.fitconv` is the CLI.

Layouts. The public functions use the lab's NCHW layout: inputs (S, C, H, W), targets
(S, K, OH, OW), kernels (K, C, KH, KW). Inside, the kernels package's NHWC / HWIO layout is used;
the arrays are converted once per fit, never per sample.

The model is a valid (no padding), stride-1 cross-correlation with K output channels and an
optional bias: OH = H - KH + 1, OW = W - KW + 1; with relu=True its output goes through a ReLU,
y = max(conv + b, 0), and the gradient flows only where conv + b > 0.

Loss. For a batch of B samples, loss = mean((y - t)**2) over all B*K*OH*OW target elements, so its
gradient is dL/dy = 2*(y - t) / (B*K*OH*OW). An epoch's "avg loss" is the mean over samples of
each sample's loss, measured at the forward pass of the step that used it (before that step's
update), i.e. a running average; it does not depend on how samples are batched.

Optimiser: plain SGD (w -= lr * dL/dw) by default, or optimizer="adam": model.optim.Adam
(PyTorch's form, betas 0.9 and 0.999, eps 1e-8); batch size 1 by default (per-sample). Each epoch
visits the samples in a fresh order drawn from the seeded generator (shuffle=False keeps file
order). A fit stops with FitDiverged at the first epoch whose average loss is not finite or has
grown DIVERGENCE_FACTOR-fold over the first step's loss: the learning rate is too large.

Initial kernels: normal with standard deviation 1/sqrt(C*KH*KW) (fan-in scaling, so the first
outputs have about the inputs' scale), drawn in the (K, C, KH, KW) layout from
numpy.random.default_rng(seed) before any shuffle, so every backend starts from the same kernels.
The bias starts at zero.

For uniform [0, 1) inputs and targets that are independent of them (generate_data's default) the
best bias-free linear fit predicts a constant; with d = C*KH*KW inputs per output the lowest
reachable loss is 1/3 - 3d/(4(1+3d)), which is 10/111 = 0.0901 for d = 12 (3 channels, 2x2).
With a bias the floor is the targets' variance, 1/12 = 0.0833.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from kernels import get_backend
from kernels.geometry import FLOAT_DTYPES, as_pair

from .checks import positive_float, positive_int
from .optim import Adam

# An epoch whose average loss exceeds this multiple of the first step's loss has diverged.
DIVERGENCE_FACTOR = 1e6
OPTIMIZERS = ("sgd", "adam")


class FitDiverged(FloatingPointError):
    """The average loss of `epoch` (1-based) is not finite or exploded; `lr` is the likely cause."""

    def __init__(self, epoch: int, loss: float, first_loss: float, lr: float):
        if math.isfinite(loss):
            what = f"{loss:.6g}, {loss / first_loss:.3g} times the first step's {first_loss:.6g}"
        else:
            what = f"{loss:.6g}"
        super().__init__(
            f"training diverged in epoch {epoch} (avg loss {what}): the learning rate {lr:g} "
            f"is probably too large; try a smaller one"
        )
        self.epoch, self.loss, self.first_loss, self.lr = epoch, loss, first_loss, lr


# ---- data ----------------------------------------------------------------------------------------


def generate_data(
    samples: int = 100,
    channels: int = 3,
    size: int = 28,
    kernels: int = 2,
    kernel_size: int = 2,
    seed: int | None = 0,
    from_kernels: bool = False,
) -> dict:
    """Random data for the lab, float64, NCHW.

    Returns {"input": (S, C, size, size), "target": (S, K, OH, OW)} with OH = OW = size - k + 1,
    inputs uniform in [0, 1). Targets are uniform in [0, 1) and unrelated to the inputs, or with `from_kernels` the exact valid convolution of the inputs with
    random kernels (normal, std 1/sqrt(C*k*k)), returned as "kernels": (K, C, k, k), so a fit
    can be checked against them.
    """
    samples = positive_int(samples, "samples")
    channels = positive_int(channels, "channels")
    size = positive_int(size, "size")
    kernels = positive_int(kernels, "kernels")
    kernel_size = positive_int(kernel_size, "kernel_size")
    if kernel_size > size:
        raise ValueError(f"kernel_size {kernel_size} is larger than the image size {size}")
    rng = np.random.default_rng(seed)
    inputs = rng.random((samples, channels, size, size))
    out = size - kernel_size + 1
    if not from_kernels:
        return {"input": inputs, "target": rng.random((samples, kernels, out, out))}
    true_kernels = rng.standard_normal((kernels, channels, kernel_size, kernel_size)) / np.sqrt(
        channels * kernel_size * kernel_size
    )
    y, _ = get_backend("im2col").conv2d_forward(
        inputs.transpose(0, 2, 3, 1), np.ascontiguousarray(true_kernels.transpose(2, 3, 1, 0))
    )
    return {
        "input": inputs,
        "target": np.ascontiguousarray(y.transpose(0, 3, 1, 2)),
        "kernels": true_kernels,
    }


# ---- fitting -------------------------------------------------------------------------------------


@dataclass
class ConvFit:
    """Result of :func:`fit_conv`.

    kernels: (K, C, KH, KW) and bias: (K,) or None, in the training dtype; losses: per-epoch
    average loss; epoch_seconds: wall time of each epoch.
    """

    kernels: np.ndarray
    bias: np.ndarray | None
    losses: list[float]
    epoch_seconds: list[float]


def _resolve_dtype(dtype, inputs: np.ndarray) -> np.dtype:
    if dtype is None:
        # Keep float32/float64 data as it is; anything else (ints, float16) trains in float64.
        return inputs.dtype if inputs.dtype in FLOAT_DTYPES else np.dtype(np.float64)
    resolved = np.dtype(dtype)
    if resolved not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {resolved}")
    return resolved


def check_problem(inputs, targets, num_kernels=None, kernel_size=None) -> tuple[int, int, int]:
    """Validate NCHW inputs (S, C, H, W) against targets (S, K, OH, OW); return (K, kh, kw).

    num_kernels None = the target's channels K; kernel_size None = (H - OH + 1, W - OW + 1).
    Errors name the offending shape and, for a size mismatch, the size that was expected.
    """
    for name, a, layout in (
        ("input", inputs, "(samples, channels, height, width)"),
        ("target", targets, "(samples, kernels, out_height, out_width)"),
    ):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array {layout}, got {type(a).__name__}")
        if a.ndim != 4:
            raise ValueError(f"{name} must be 4-D {layout}, got shape {a.shape}")
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
        if min(a.shape) < 1:
            raise ValueError(f"{name} has an empty axis: shape {a.shape}")
    s, _, h, w = inputs.shape
    if num_kernels is None:
        num_kernels = targets.shape[1]
    num_kernels = positive_int(num_kernels, "num_kernels")
    if kernel_size is None:
        kernel_size = (h - targets.shape[2] + 1, w - targets.shape[3] + 1)
        if min(kernel_size) < 1:
            raise ValueError(
                f"target {targets.shape} is spatially larger than input {inputs.shape}"
            )
    kh, kw = as_pair(kernel_size, "kernel_size")
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
    if targets.shape[0] != s:
        raise ValueError(
            f"input has {s} samples but target has {targets.shape[0]} "
            f"(input {inputs.shape}, target {targets.shape})"
        )
    if kh > h or kw > w:
        raise ValueError(f"kernel size ({kh}, {kw}) is larger than the input images ({h}, {w})")
    if targets.shape[1] != num_kernels:
        raise ValueError(
            f"target has {targets.shape[1]} channels (shape {targets.shape}) but "
            f"{num_kernels} kernels were asked for; they must match"
        )
    expected = (h - kh + 1, w - kw + 1)
    if targets.shape[2:] != expected:
        raise ValueError(
            f"target spatial size {targets.shape[2:]} does not match a valid "
            f"{kh}x{kw} convolution of {h}x{w} inputs: expected {expected} "
            f"(target shape {targets.shape})"
        )
    return num_kernels, kh, kw


@dataclass(frozen=True, eq=False)
class FitPlan:
    """A fit's checked arguments and its start, shared by fit_conv and the framework fits
    (model.convfit_frameworks) so that every framework starts from the same kernels and visits
    the samples in the same order.

    kernels0: (K, C, KH, KW) initial kernels, not yet cast to dtype; rng: the generator the epoch
    orders come from, already advanced past the initial kernels.
    """

    lr: float
    epochs: int
    batch_size: int
    dtype: np.dtype
    shuffle: bool
    optimizer: str
    relu: bool
    kernels0: np.ndarray
    rng: np.random.Generator
    samples: int

    def order(self) -> np.ndarray:
        """The next epoch's visiting order: (samples,) indices, shuffled unless shuffle=False."""
        return self.rng.permutation(self.samples) if self.shuffle else np.arange(self.samples)


def plan_fit(
    inputs_nchw,
    targets_nchw,
    num_kernels,
    kernel_size,
    lr,
    epochs,
    batch_size=1,
    seed=0,
    dtype=None,
    shuffle=True,
    initial_kernels=None,
    optimizer="sgd",
    relu=False,
) -> FitPlan:
    """Check a fit's arguments (as fit_conv documents them) and draw its initial kernels."""
    num_kernels, kh, kw = check_problem(inputs_nchw, targets_nchw, num_kernels, kernel_size)
    lr = positive_float(lr, "lr")
    epochs = positive_int(epochs, "epochs")
    batch_size = positive_int(batch_size, "batch_size")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    dtype = _resolve_dtype(dtype, inputs_nchw)
    if not (np.isfinite(inputs_nchw).all() and np.isfinite(targets_nchw).all()):
        raise ValueError("input or target contains NaN or infinity")
    s, c = inputs_nchw.shape[:2]
    rng = np.random.default_rng(seed)
    if initial_kernels is None:
        kernels0 = rng.standard_normal((num_kernels, c, kh, kw)) / np.sqrt(c * kh * kw)
    else:
        kernels0 = np.asarray(initial_kernels)
        if kernels0.shape != (num_kernels, c, kh, kw):
            raise ValueError(
                f"initial_kernels must have shape {(num_kernels, c, kh, kw)}, got {kernels0.shape}"
            )
    return FitPlan(
        lr, epochs, batch_size, dtype, bool(shuffle), optimizer, bool(relu), kernels0, rng, s
    )


def check_diverged(epoch: int, avg_loss: float, first_loss: float | None, lr: float) -> None:
    """Raise FitDiverged if epoch's average loss is not finite or exploded over the first step's
    loss (None: no step was taken, so only finiteness is checked)."""
    exploded = (
        first_loss is not None and first_loss > 0 and avg_loss > DIVERGENCE_FACTOR * first_loss
    )
    if not math.isfinite(avg_loss) or exploded:
        raise FitDiverged(epoch, avg_loss, first_loss or 0.0, lr)


def fit_conv(
    inputs_nchw,
    targets_nchw,
    num_kernels: int | None,
    kernel_size,
    lr: float,
    epochs: int,
    backend: str = "im2col",
    batch_size: int = 1,
    seed: int | None = 0,
    bias: bool = False,
    dtype=None,
    callback=None,
    shuffle: bool = True,
    initial_kernels=None,
    optimizer: str = "sgd",
    relu: bool = False,
) -> ConvFit:
    """Fit K kernels (and optionally a bias) by SGD or Adam on the MSE loss; see the module
    docstring.

    inputs_nchw: (S, C, H, W), targets_nchw: (S, K, H-KH+1, W-KW+1), any real dtype.
    num_kernels / kernel_size None: taken from the two shapes (see check_problem).
    dtype: float32 or float64 to train in; None keeps a float32/float64 input's dtype, else float64.
    callback(epoch, avg_loss, seconds) is called after each epoch (epoch counts from 1), also for
    the epoch that diverged.
    initial_kernels: (K, C, KH, KW) to start from instead of the seeded random init.
    optimizer: "sgd" or "adam"; relu: pass the convolution's output through a ReLU.
    Raises ValueError/TypeError on inconsistent shapes or non-positive lr/epochs/batch_size, and
    FitDiverged (a FloatingPointError) at the first epoch whose average loss is not finite or is
    more than DIVERGENCE_FACTOR times the first step's loss (lr too large).
    """
    plan = plan_fit(
        inputs_nchw,
        targets_nchw,
        num_kernels,
        kernel_size,
        lr,
        epochs,
        batch_size=batch_size,
        seed=seed,
        dtype=dtype,
        shuffle=shuffle,
        initial_kernels=initial_kernels,
        optimizer=optimizer,
        relu=relu,
    )
    be = get_backend(backend)
    lr, epochs, batch_size, dtype, s = (
        plan.lr,
        plan.epochs,
        plan.batch_size,
        plan.dtype,
        plan.samples,
    )
    # The one layout conversion of the fit: NCHW -> NHWC data, (K, C, KH, KW) -> HWIO kernels.
    x_all = np.ascontiguousarray(inputs_nchw.transpose(0, 2, 3, 1), dtype=dtype)
    t_all = np.ascontiguousarray(targets_nchw.transpose(0, 2, 3, 1), dtype=dtype)
    # A copy, always: w is updated in place and must never alias the caller's initial_kernels
    # (ascontiguousarray would return a view when the transpose happens to be contiguous).
    w = np.array(plan.kernels0.transpose(2, 3, 1, 0), dtype=dtype, order="C", copy=True)
    b = np.zeros(w.shape[3], dtype=dtype) if bias else None

    # Per-epoch buffers: samples are gathered into visiting order once per epoch, so every step
    # works on contiguous slice views; the gradient buffer is reused by every step.
    x_epoch, t_epoch = np.empty_like(x_all), np.empty_like(t_all)
    dy_buf = np.empty((min(batch_size, s),) + t_all.shape[1:], dtype=dtype)
    per_sample = t_all[0].size
    lr_t = dtype.type(lr)  # a NumPy scalar of the training dtype keeps float32 updates float32
    adam = Adam(lr=lr) if plan.optimizer == "adam" else None
    losses, epoch_seconds = [], []
    first_loss = None
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = plan.order()
        np.take(x_all, order, axis=0, out=x_epoch)
        np.take(t_all, order, axis=0, out=t_epoch)
        loss_sum = 0.0
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported below instead
            for lo in range(0, s, batch_size):
                hi = min(lo + batch_size, s)
                size = (hi - lo) * per_sample
                y, ctx = be.conv2d_forward(x_epoch[lo:hi], w, b, 1, 0)
                if plan.relu:
                    dy = np.maximum(y, 0, out=dy_buf[: hi - lo])
                    dy -= t_epoch[lo:hi]
                else:
                    dy = np.subtract(y, t_epoch[lo:hi], out=dy_buf[: hi - lo])
                batch_loss = float(np.vdot(dy, dy)) / size
                if first_loss is None:
                    first_loss = batch_loss
                loss_sum += batch_loss * (hi - lo)
                dy *= dtype.type(2.0 / size)
                if plan.relu:
                    dy[y <= 0] = 0  # the ReLU passes no gradient where it clipped
                _, dw, db = be.conv2d_backward(dy, ctx, need_dx=False)
                if adam is None:
                    dw *= lr_t
                    w -= dw
                    if b is not None:
                        b -= lr_t * db
                else:
                    params = [("w", w, dw, False)] + ([] if b is None else [("b", b, db, False)])
                    adam.step(params)
        avg = loss_sum / s
        seconds = time.perf_counter() - start
        losses.append(avg)
        epoch_seconds.append(seconds)
        if callback is not None:
            callback(epoch, avg, seconds)
        check_diverged(epoch, avg, first_loss, lr)
    return ConvFit(
        kernels=np.ascontiguousarray(w.transpose(3, 2, 0, 1)),
        bias=b,
        losses=losses,
        epoch_seconds=epoch_seconds,
    )


def fit_kernels(
    inputs_nchw,
    targets_nchw,
    num_kernels: int,
    kernel_size,
    lr: float,
    epochs: int,
    backend: str = "im2col",
    batch_size: int = 1,
    seed: int | None = 0,
    bias: bool = False,
    dtype=None,
    callback=None,
    **options,
):
    """:func:`fit_conv` returning (kernels (K, C, KH, KW) in the training dtype, per-epoch losses).

    With bias=True the bias is trained but not returned; use :func:`fit_conv` to get it.
    """
    fit = fit_conv(
        inputs_nchw,
        targets_nchw,
        num_kernels,
        kernel_size,
        lr,
        epochs,
        backend=backend,
        batch_size=batch_size,
        seed=seed,
        bias=bias,
        dtype=dtype,
        callback=callback,
        **options,
    )
    return fit.kernels, fit.losses
