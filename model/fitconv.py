"""The conv lab: learn convolution kernels so that conv2d(input) ~= target, from two .npy files.

    >>> from model.fitconv import fit_kernels, generate_data
    >>> data = generate_data(samples=100, channels=3, size=28, kernels=2, kernel_size=2, seed=0)
    >>> kernels, losses = fit_kernels(data["input"], data["target"], num_kernels=2, kernel_size=2,
    ...                               lr=0.1, epochs=10, backend="im2col")

    python -m model.fitconv generate --samples 100 --channels 3 --size 28 --kernels 2 \
        --kernel-size 2 --out data/ [--seed 0] [--from-kernels]
    python -m model.fitconv train --input data/input_data.npy --target data/target_output.npy \
        --kernels 2 --kernel-size 2 --lr 0.1 --epochs 10 --backend im2col [--out kernels.npy]

Layouts. Files and the public functions use the lab's NCHW layout: inputs (S, C, H, W), targets
(S, K, OH, OW), kernels (K, C, KH, KW). Inside, the kernels package's NHWC / HWIO layout is used;
the arrays are converted once per fit, never per sample.

The model is a valid (no padding), stride-1 cross-correlation with K output channels and an
optional bias: OH = H - KH + 1, OW = W - KW + 1.

Loss. For a batch of B samples, loss = mean((y - t)**2) over all B*K*OH*OW target elements, so its
gradient is dL/dy = 2*(y - t) / (B*K*OH*OW). An epoch's "avg loss" is the mean over samples of
each sample's loss, measured at the forward pass of the step that used it (before that step's
update), i.e. the running average the lab printed; it does not depend on how samples are batched.

Optimiser: plain SGD (w -= lr * dL/dw), batch size 1 by default, as in the lab. The lab's source
we were given does not show whether it shuffled; here each epoch visits the samples in a fresh
order drawn from the seeded generator (shuffle=False keeps file order).

Initial kernels: normal with standard deviation 1/sqrt(C*KH*KW) (fan-in scaling, so the first
outputs have about the inputs' scale), drawn in the (K, C, KH, KW) layout from
numpy.random.default_rng(seed) before any shuffle, so every backend starts from the same kernels.
The bias starts at zero.

For uniform [0, 1) inputs and targets that are independent of them (the lab's random data) the
best bias-free linear fit predicts a constant; with d = C*KH*KW inputs per output the lowest
reachable loss is 1/3 - 3d/(4(1+3d)), which is 10/111 = 0.0901 for the lab's d = 12 (its ~0.09).
With a bias the floor is the targets' variance, 1/12 = 0.0833.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels import available_backends, get_backend
from kernels.geometry import FLOAT_DTYPES, as_pair

INPUT_FILE = "input_data.npy"
TARGET_FILE = "target_output.npy"
TRUE_KERNELS_FILE = "true_kernels.npy"


# ---- data ----------------------------------------------------------------------------------------


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def generate_data(
    samples: int = 100,
    channels: int = 3,
    size: int = 28,
    kernels: int = 2,
    kernel_size: int = 2,
    seed: int | None = 0,
    from_kernels: bool = False,
) -> dict:
    """Lab-style data, float64, NCHW.

    Returns {"input": (S, C, size, size), "target": (S, K, OH, OW)} with OH = OW = size - k + 1,
    inputs uniform in [0, 1) as in the lab. Targets are uniform in [0, 1) and unrelated to the
    inputs (the lab's data), or with `from_kernels` the exact valid convolution of the inputs with
    random kernels (normal, std 1/sqrt(C*k*k)), returned as "kernels": (K, C, k, k), so a fit
    can be checked against them.
    """
    samples = _check_positive_int(samples, "samples")
    channels = _check_positive_int(channels, "channels")
    size = _check_positive_int(size, "size")
    kernels = _check_positive_int(kernels, "kernels")
    kernel_size = _check_positive_int(kernel_size, "kernel_size")
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


def check_problem(inputs, targets, num_kernels: int, kernel_size) -> tuple[int, int]:
    """Validate NCHW inputs (S, C, H, W) against targets (S, K, OH, OW); return (kh, kw).

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
    num_kernels = _check_positive_int(num_kernels, "num_kernels")
    kh, kw = as_pair(kernel_size, "kernel_size")
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
    s, _, h, w = inputs.shape
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
    return kh, kw


def fit_conv(
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
    shuffle: bool = True,
    initial_kernels=None,
) -> ConvFit:
    """Fit K kernels (and optionally a bias) by SGD on the MSE loss; see the module docstring.

    inputs_nchw: (S, C, H, W), targets_nchw: (S, K, H-KH+1, W-KW+1), any real dtype.
    dtype: float32 or float64 to train in; None keeps a float32/float64 input's dtype, else float64.
    callback(epoch, avg_loss, seconds) is called after each epoch (epoch counts from 1).
    initial_kernels: (K, C, KH, KW) to start from instead of the seeded random init.
    Raises ValueError/TypeError on inconsistent shapes or non-positive lr/epochs/batch_size, and
    FloatingPointError if the loss stops being finite (lr too large).
    """
    kh, kw = check_problem(inputs_nchw, targets_nchw, num_kernels, kernel_size)
    lr = float(lr)
    if not (lr > 0 and np.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    epochs = _check_positive_int(epochs, "epochs")
    batch_size = _check_positive_int(batch_size, "batch_size")
    be = get_backend(backend)
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
    # The one layout conversion of the fit: NCHW -> NHWC data, (K, C, KH, KW) -> HWIO kernels.
    x_all = np.ascontiguousarray(inputs_nchw.transpose(0, 2, 3, 1), dtype=dtype)
    t_all = np.ascontiguousarray(targets_nchw.transpose(0, 2, 3, 1), dtype=dtype)
    # A copy, always: w is updated in place and must never alias the caller's initial_kernels
    # (ascontiguousarray would return a view when the transpose happens to be contiguous).
    w = np.array(kernels0.transpose(2, 3, 1, 0), dtype=dtype, order="C", copy=True)
    b = np.zeros(num_kernels, dtype=dtype) if bias else None

    # Per-epoch buffers: samples are gathered into visiting order once per epoch, so every step
    # works on contiguous slice views; the gradient buffer is reused by every step.
    x_epoch, t_epoch = np.empty_like(x_all), np.empty_like(t_all)
    dy_buf = np.empty((min(batch_size, s),) + t_all.shape[1:], dtype=dtype)
    per_sample = t_all[0].size
    lr_t = dtype.type(lr)  # a NumPy scalar of the training dtype keeps float32 updates float32
    losses, epoch_seconds = [], []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(s) if shuffle else np.arange(s)
        np.take(x_all, order, axis=0, out=x_epoch)
        np.take(t_all, order, axis=0, out=t_epoch)
        loss_sum = 0.0
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported below instead
            for lo in range(0, s, batch_size):
                hi = min(lo + batch_size, s)
                size = (hi - lo) * per_sample
                y, ctx = be.conv2d_forward(x_epoch[lo:hi], w, b, 1, 0)
                dy = np.subtract(y, t_epoch[lo:hi], out=dy_buf[: hi - lo])
                batch_loss = float(np.vdot(dy, dy)) / size
                loss_sum += batch_loss * (hi - lo)
                dy *= dtype.type(2.0 / size)
                _, dw, db = be.conv2d_backward(dy, ctx, need_dx=False)
                dw *= lr_t
                w -= dw
                if b is not None:
                    b -= lr_t * db
        avg = loss_sum / s
        seconds = time.perf_counter() - start
        losses.append(avg)
        epoch_seconds.append(seconds)
        if not np.isfinite(avg):
            raise FloatingPointError(
                f"training diverged in epoch {epoch} (avg loss {avg}); "
                f"use a smaller learning rate than {lr}"
            )
        if callback is not None:
            callback(epoch, avg, seconds)
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


# ---- files ---------------------------------------------------------------------------------------


def load_npy(path, what: str) -> np.ndarray:
    """Read one array from a .npy file (no pickles); errors name the file and what went wrong."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"{what} must be a .npy file, got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {str(path)!r}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read {what} file {str(path)!r} as a .npy array: {exc}") from None


def save_npy(path, array: np.ndarray) -> None:
    """Write `array` to `path` atomically: a temp file in the same directory, then os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def bias_path(kernels_path) -> Path:
    """Where `train --bias` saves the bias: next to the kernels, `<stem>_bias.npy`."""
    p = Path(kernels_path)
    return p.with_name(p.stem + "_bias.npy")


# ---- CLI -----------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, like every other error of this CLI (argparse would print the usage first).
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m model.fitconv",
        description=(
            "The conv lab: learn convolution kernels so that conv2d(input) ~= target, from .npy files "
            "in NCHW layout (input (S,C,H,W), target (S,K,OH,OW), kernels (K,C,k,k)). Valid "
            "convolution, stride 1, MSE loss = mean((y-t)^2) over a batch's target elements, SGD."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,train}")

    gen = sub.add_parser(
        "generate",
        help="write lab-style random data",
        description="Write input_data.npy (uniform [0,1) inputs, float64) and "
        "target_output.npy (uniform [0,1) targets, or with "
        "--from-kernels the convolution with random kernels, also "
        "saved as true_kernels.npy) into --out.",
    )
    gen.add_argument(
        "--samples", type=_positive(int), default=100, help="number of samples (default 100)"
    )
    gen.add_argument(
        "--channels", type=_positive(int), default=3, help="input channels (default 3)"
    )
    gen.add_argument(
        "--size", type=_positive(int), default=28, help="image height = width (default 28)"
    )
    gen.add_argument(
        "--kernels",
        type=_positive(int),
        default=2,
        help="number of kernels = target channels (default 2)",
    )
    gen.add_argument(
        "--kernel-size",
        type=_positive(int),
        default=2,
        help="kernel height = width; targets are size-k+1 square (default 2)",
    )
    gen.add_argument(
        "--out", required=True, help="directory to write to (created if missing; required)"
    )
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument(
        "--from-kernels",
        action="store_true",
        help="make targets by convolving with random known kernels, saved as "
        "true_kernels.npy, instead of uniform random targets (default: off)",
    )

    tr = sub.add_parser(
        "train",
        help="fit kernels to input/target .npy files",
        description="Fit kernels by SGD on the MSE loss, print one line per epoch, "
        "save the kernels (K,C,k,k) atomically.",
    )
    tr.add_argument(
        "--input", required=True, help="input .npy, (samples, channels, H, W) (required)"
    )
    tr.add_argument(
        "--target", required=True, help="target .npy, (samples, kernels, H-k+1, W-k+1) (required)"
    )
    tr.add_argument(
        "--kernels",
        type=_positive(int),
        default=None,
        help="number of kernels; must equal the target's channels (default: taken from the target)",
    )
    tr.add_argument(
        "--kernel-size",
        type=_positive(int),
        default=None,
        help="kernel height = width (default: H - OH + 1 from the two files' shapes)",
    )
    tr.add_argument(
        "--lr", type=_positive(float), default=0.1, help="SGD learning rate (default 0.1)"
    )
    tr.add_argument(
        "--epochs", type=_positive(int), default=10, help="passes over the data (default 10)"
    )
    tr.add_argument(
        "--backend",
        default="im2col",
        help=f"conv backend, one of {', '.join(available_backends())} (default im2col)",
    )
    tr.add_argument(
        "--batch-size",
        type=_positive(int),
        default=1,
        help="samples per SGD step; 1 is the lab's per-sample SGD (default 1)",
    )
    tr.add_argument(
        "--bias",
        action="store_true",
        help="also learn one bias per kernel, saved as <out stem>_bias.npy (default: off)",
    )
    tr.add_argument(
        "--no-shuffle",
        action="store_true",
        help="visit samples in file order instead of a seeded random order per epoch "
        "(default: shuffle)",
    )
    tr.add_argument(
        "--out", default="kernels.npy", help="where to save the kernels (default kernels.npy)"
    )
    tr.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initial kernels and the shuffling (default 0)",
    )
    tr.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=None,
        help="training and saved dtype (default: the input file's dtype if it is "
        "float32 or float64, else float64)",
    )
    return parser


def _generate(args) -> None:
    data = generate_data(
        samples=args.samples,
        channels=args.channels,
        size=args.size,
        kernels=args.kernels,
        kernel_size=args.kernel_size,
        seed=args.seed,
        from_kernels=args.from_kernels,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, key in (
        (INPUT_FILE, "input"),
        (TARGET_FILE, "target"),
        (TRUE_KERNELS_FILE, "kernels"),
    ):
        if key in data:
            save_npy(out / name, data[key])
            print(f"wrote {out / name} {data[key].shape} {data[key].dtype}")


def _train(args) -> None:
    inputs = load_npy(args.input, "--input")
    targets = load_npy(args.target, "--target")
    for option, path, a in (("--input", args.input, inputs), ("--target", args.target, targets)):
        if a.ndim != 4:
            raise ValueError(f"{option} {path!r} must hold a 4-D NCHW array, got shape {a.shape}")
    num_kernels = targets.shape[1] if args.kernels is None else args.kernels
    kernel_size = (
        inputs.shape[2] - targets.shape[2] + 1 if args.kernel_size is None else args.kernel_size
    )
    if kernel_size < 1:
        raise ValueError(f"target {targets.shape} is spatially larger than input {inputs.shape}")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out directory does not exist: {str(out.parent)!r}")
    if out.suffix != ".npy":
        raise ValueError(f"--out must end in .npy, got {str(out)!r}")

    def report(epoch, loss, seconds):
        print(
            f"Epoch {epoch}: avg loss {loss:.6f}, lr {args.lr:g}, time {seconds:.3f}s", flush=True
        )

    fit = fit_conv(
        inputs,
        targets,
        num_kernels,
        kernel_size,
        args.lr,
        args.epochs,
        backend=args.backend,
        batch_size=args.batch_size,
        seed=args.seed,
        bias=args.bias,
        dtype=args.dtype,
        callback=report,
        shuffle=not args.no_shuffle,
    )
    save_npy(out, fit.kernels)
    print(f"saved kernels {fit.kernels.shape} {fit.kernels.dtype} to {out}")
    if fit.bias is not None:
        save_npy(bias_path(out), fit.bias)
        print(f"saved bias {fit.bias.shape} {fit.bias.dtype} to {bias_path(out)}")


def main(argv=None) -> int:
    """CLI entry point; returns 0, or exits with status 2 and one error line on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        (_generate if args.command == "generate" else _train)(args)
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError) as exc:
        parser.exit(2, f"{parser.prog} {args.command}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
