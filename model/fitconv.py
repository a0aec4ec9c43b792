"""The conv lab from the command line: learn convolution kernels so that conv2d(input) ~= target.

    python -m model.fitconv generate --samples 100 --channels 3 --size 28 --kernels 2 \
        --kernel-size 2 --out data/ [--seed 0] [--from-kernels]
    python -m model.fitconv train --input data/input_data.npy --target data/target_output.npy \
        --kernels 2 --kernel-size 2 --lr 0.1 --epochs 10 --backend im2col [--out kernels.npy]
    python -m model.fitconv train ... --framework torch|keras   # the same fit in PyTorch / Keras
    python -m model.fitconv demo      # a 3x5x5 input, two 3x3 kernels, their conv2d output

The algorithm (layouts, loss, optimiser, initialisation) is documented in model.convfit, its
PyTorch and Keras versions in model.convfit_frameworks, the NCHW conv2d in model.labconv; the
files are read and written by model.npyfiles.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from kernels import available_backends

from .cli import Parser, fail, nonnegative_int, positive_float, positive_int
from .convfit import OPTIMIZERS, fit_conv, generate_data
from .convfit_frameworks import FRAMEWORKS, PEERS_INSTALL, fit_conv_framework
from .labconv import conv2d, demo_example
from .npyfiles import INPUT_FILE, TARGET_FILE, TRUE_KERNELS_FILE, bias_path, load_npy, save_npy

DEFAULT_BACKEND = "im2col"


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m model.fitconv",
        description=(
            "The conv lab: learn convolution kernels so that conv2d(input) ~= target, from .npy "
            "files in NCHW layout (input (S,C,H,W), target (S,K,OH,OW), kernels (K,C,k,k)). Valid "
            "convolution, stride 1, optional ReLU, MSE loss = mean((y-t)^2) over a batch's target "
            "elements, SGD or Adam."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,train,demo}")

    gen = sub.add_parser(
        "generate",
        help="write random data for the lab",
        description=f"Write {INPUT_FILE} (uniform [0,1) inputs, float64) and {TARGET_FILE} "
        "(uniform [0,1) targets, or with --from-kernels the convolution with random kernels, "
        f"also saved as {TRUE_KERNELS_FILE}) into --out.",
    )
    gen.add_argument("--samples", type=positive_int, default=100, help="number of samples")
    gen.add_argument("--channels", type=positive_int, default=3, help="input channels")
    gen.add_argument("--size", type=positive_int, default=28, help="image height = width")
    gen.add_argument(
        "--kernels", type=positive_int, default=2, help="number of kernels = target channels"
    )
    gen.add_argument(
        "--kernel-size",
        type=positive_int,
        default=2,
        help="kernel height = width; targets are size-k+1 square",
    )
    gen.add_argument("--out", required=True, help="directory to write to (created if missing)")
    gen.add_argument("--seed", type=nonnegative_int, default=0, help="random seed")
    gen.add_argument(
        "--from-kernels",
        action="store_true",
        help=f"make targets by convolving with random known kernels, saved as "
        f"{TRUE_KERNELS_FILE}, instead of uniform random targets",
    )

    tr = sub.add_parser(
        "train",
        help="fit kernels to input/target .npy files",
        description="Fit kernels by SGD or Adam on the MSE loss, print one line per epoch, "
        "save the kernels (K,C,k,k) atomically. Stops at the first epoch whose loss is not "
        "finite or has exploded (the learning rate is too large).",
    )
    tr.add_argument("--input", required=True, help="input .npy, (samples, channels, H, W)")
    tr.add_argument("--target", required=True, help="target .npy, (samples, kernels, OH, OW)")
    tr.add_argument(
        "--kernels",
        type=positive_int,
        default=None,
        help="number of kernels; must equal the target's channels (default: the target's)",
    )
    tr.add_argument(
        "--kernel-size",
        type=positive_int,
        default=None,
        help="kernel height = width (default: H - OH + 1 from the two files' shapes)",
    )
    tr.add_argument("--lr", type=positive_float, default=0.1, help="learning rate")
    tr.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="sgd",
        help="plain SGD, or Adam (betas 0.9 and 0.999, eps 1e-8)",
    )
    tr.add_argument(
        "--relu",
        action="store_true",
        help="pass the convolution's output through a ReLU before the loss",
    )
    tr.add_argument("--epochs", type=positive_int, default=10, help="passes over the data")
    tr.add_argument(
        "--framework",
        choices=FRAMEWORKS,
        default="numpy",
        help="train with our kernels (numpy) or the same model, start, sample order and SGD in "
        f"PyTorch or Keras (those two need {PEERS_INSTALL})",
    )
    tr.add_argument(
        "--backend",
        default=None,
        help=f"conv backend of --framework numpy, one of {', '.join(available_backends())} "
        f"(default: {DEFAULT_BACKEND})",
    )
    tr.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        help="samples per SGD step; 1 is per-sample SGD",
    )
    tr.add_argument(
        "--bias",
        action="store_true",
        help="also learn one bias per kernel, saved as <out stem>_bias.npy",
    )
    tr.add_argument(
        "--no-shuffle",
        action="store_true",
        help="visit samples in file order instead of a seeded random order per epoch "
        "(default: shuffle)",
    )
    tr.add_argument("--out", default="kernels.npy", help="where to save the kernels")
    tr.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of the initial kernels and shuffling"
    )
    tr.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=None,
        help="training and saved dtype (default: the input file's dtype if it is "
        "float32 or float64, else float64)",
    )
    demo = sub.add_parser(
        "demo",
        help="print a small conv2d example",
        description="Print a 3x5x5 input, two 3x3 kernels (a vertical edge and a blur) and "
        "their 2x3x3 output, computed by model.labconv.conv2d (valid, stride 1).",
    )
    demo.set_defaults(run=_demo, parser=demo)
    gen.set_defaults(run=_generate, parser=gen)
    tr.set_defaults(run=_train, parser=tr)
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


def _grid_text(grid: np.ndarray) -> list[str]:
    """One 2-D array as right-aligned rows: integers as integers, anything else to 2 decimals."""
    integral = bool(np.all(grid == np.round(grid)))
    cells = [[f"{v:.0f}" if integral else f"{v:.2f}" for v in row] for row in grid]
    width = max(len(cell) for row in cells for cell in row)
    return [" ".join(cell.rjust(width) for cell in row) for row in cells]


def side_by_side(titles: list[str], grids) -> list[str]:
    """Lines showing 2-D arrays next to each other, each under its title, indented by two."""
    blocks = [[title, *_grid_text(np.asarray(grid))] for title, grid in zip(titles, grids)]
    widths = [max(len(line) for line in block) for block in blocks]
    height = max(len(block) for block in blocks)
    return [
        "  "
        + "    ".join(
            (block[i] if i < len(block) else "").ljust(width)
            for block, width in zip(blocks, widths)
        ).rstrip()
        for i in range(height)
    ]


def _demo(args) -> None:
    inputs, named_kernels = demo_example()
    kernels = np.stack(list(named_kernels.values()))
    output = conv2d(inputs, kernels)
    channels = [f"channel {c}" for c in range(inputs.shape[0])]
    print(f"input {inputs.shape} (channels, height, width):")
    print("\n".join(side_by_side(channels, inputs)))
    print(f"kernels {kernels.shape} (kernels, channels, height, width):")
    for k, (name, kernel) in enumerate(named_kernels.items()):
        print(f"  kernel {k}: {name}")
        print("\n".join("  " + line for line in side_by_side(channels, kernel)))
    print(f"output = conv2d(input, kernels) {output.shape} (kernels, height, width):")
    print("\n".join(side_by_side(list(named_kernels), output)))


def epoch_line(epoch: int, loss: float, lr: float, seconds: float) -> str:
    """The line train prints after each epoch, whichever framework trained."""
    return f"Epoch {epoch}: avg loss {loss:.6g}, lr {lr:g}, time {seconds:.3f}s"


def _train(args) -> None:
    inputs = load_npy(args.input, "--input", ndim=4)
    targets = load_npy(args.target, "--target", ndim=4)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out directory does not exist: {str(out.parent)!r}")
    if out.suffix != ".npy":
        raise ValueError(f"--out must end in .npy, got {str(out)!r}")

    if args.framework != "numpy" and args.backend is not None:
        raise ValueError(f"--backend applies only to --framework numpy, not {args.framework}")

    def report(epoch, loss, seconds):
        print(epoch_line(epoch, loss, args.lr, seconds), flush=True)

    options = dict(
        batch_size=args.batch_size,
        seed=args.seed,
        bias=args.bias,
        dtype=args.dtype,
        callback=report,
        shuffle=not args.no_shuffle,
        optimizer=args.optimizer,
        relu=args.relu,
    )
    problem = (inputs, targets, args.kernels, args.kernel_size, args.lr, args.epochs)
    if args.framework == "numpy":
        fit = fit_conv(*problem, backend=args.backend or DEFAULT_BACKEND, **options)
    else:
        fit = fit_conv_framework(args.framework, *problem, **options)
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
        args.run(args)
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError) as exc:
        fail(args.parser, exc)  # "python -m model.fitconv train: error: ..."
    return 0


if __name__ == "__main__":
    sys.exit(main())
