"""Train a CNN on MNIST from the command line.

    python -m model.train --backend im2col                 # small architecture, full data, 3 epochs
    python -m model.train --arch deep --optimizer adam --augment --epochs 10
    python -m model.train --resume runs/<name>/last.npz --epochs 6

Writes into --out (checked before training): history.json and history.csv, last.npz (every
epoch) and best.npz (lowest test loss), predictions.png (10 test digits, misclassified ones first,
green right / red wrong) and history.png (loss and accuracy curves). Ctrl-C saves interrupted.npz
and the history, then exits with status 130; a diverging loss stops the run (status 1).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np

from kernels import BACKEND_NAMES
from kernels.memory import keep_freed_memory

from .atomic import writable_dir
from .batches import scale, standardize, standardize_stats, subset
from .cli import Parser, nonnegative_float, nonnegative_int, positive_float, positive_int
from .distributed import RankFailed, connect
from .frameworks import FRAMEWORKS, fit_in_framework
from .mnist import load_mnist
from .network import (
    ARCHITECTURES,
    DTYPES,
    build_network,
    input_standardization,
    load_network,
    read_checkpoint,
    spec_text,
)
from .optim import (
    DEFAULT_LR,
    OPTIMIZERS,
    SCHEDULES,
    STEP_EPOCHS,
    STEP_FACTOR,
    WARMUP_STEPS,
    make_optimizer,
)
from .training import (
    DEFAULT_MAX_DEGREES,
    DEFAULT_MAX_SHIFT,
    DEFAULT_PATIENCE,
    TRAIN_BLAS_THREADS,
    TrainingDiverged,
    fit,
    new_history,
    save_history,
)
from .warmup import COMPILE_MODES, STAND_IN, prepare_backend

DEFAULT_EPOCHS = 3


def count(n: int, noun: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def architecture(text: str) -> str:
    """--arch: a named architecture or a valid layer spec (argparse reports the ValueError)."""
    try:
        spec_text(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def run_name(args) -> str:
    """The default run directory's name: <date>_<time>_<arch>_<what trained it>, the arch being
    its name or "spec" for a spec, and the trainer the backend or the --framework."""
    arch = args.arch if args.arch in ARCHITECTURES else "spec"
    trainer = args.backend if args.framework == "numpy" else args.framework
    return f"{datetime.now():%Y-%m-%d_%H%M%S}_{arch}_{trainer}"


AUTOTUNE_MODES = ("off", "cached", "fresh")


def autotune_default(parser) -> str:
    """--autotune's default: $CONVBENCH_AUTOTUNE (as kernels.auto reads it), else "cached"; a
    value outside AUTOTUNE_MODES is a usage error rather than silently ignored."""
    value = os.environ.get("CONVBENCH_AUTOTUNE", "cached")
    if value not in AUTOTUNE_MODES:
        parser.error(
            f"CONVBENCH_AUTOTUNE must be one of {', '.join(AUTOTUNE_MODES)}, got {value!r}"
        )
    return value


def build_parser() -> Parser:
    p = Parser(prog="python -m model.train", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--backend",
        choices=BACKEND_NAMES,
        default="im2col",
        help="conv/pool implementation (naive is the slow reference; auto times the candidates "
        "once per layer shape and keeps the fastest, see --autotune)",
    )
    p.add_argument(
        "--autotune",
        choices=AUTOTUNE_MODES,
        default=None,
        help="with --backend auto: cached = reuse this machine's earlier choices and time only "
        "new layer shapes; fresh = time every layer again; off = a fixed rule, no timing "
        "(default: $CONVBENCH_AUTOTUNE, else cached)",
    )
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="background",
        help="for a backend that compiles its kernels (numba, winograd, auto) when numba's disk "
        "cache lacks them (the first run after an install or an edit of kernels/): background = "
        f"train at once on {STAND_IN} while a child process compiles, then move to the backend "
        "(the move's batch depends on the compile time, so such a first run matches a --compile "
        "wait run to float32 rounding, not bit for bit); wait = compile first, then train",
    )
    p.add_argument(
        "--arch",
        type=architecture,
        default="small",
        metavar="NAME|SPEC",
        help="small: one conv layer (16 channels), pool, dense 128; deep: two conv+BatchNorm "
        "blocks (32, 64 channels), dense 128, dropout; or any network as a layer spec, "
        'e.g. "conv(16,3,pad=1),maxpool(2),relu,flatten,dense(10)" (layers: conv, maxpool, '
        "avgpool, bn, relu, dropout, flatten, dense; see model/spec.py)",
    )
    p.add_argument(
        "--epochs",
        type=nonnegative_int,
        default=DEFAULT_EPOCHS,
        help="total epochs (with --resume: train until this many are done)",
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="mini-batch size")
    p.add_argument(
        "--optimizer",
        choices=tuple(OPTIMIZERS),
        default="momentum",
        help="update rule (momentum = SGD with momentum 0.9)",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="learning rate (default: the optimizer's, "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
        + ")",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="cosine",
        help="learning-rate schedule over the epochs (cosine: from --lr down towards 0; "
        "step: see --step-epochs and --step-factor)",
    )
    p.add_argument(
        "--step-epochs",
        type=positive_int,
        default=STEP_EPOCHS,
        metavar="N",
        help="with --schedule step: multiply the learning rate by --step-factor every N epochs",
    )
    p.add_argument(
        "--step-factor",
        type=positive_float,
        default=STEP_FACTOR,
        metavar="FACTOR",
        help="with --schedule step: the factor applied every --step-epochs epochs",
    )
    p.add_argument(
        "--warmup-steps",
        type=nonnegative_int,
        default=WARMUP_STEPS,
        metavar="N",
        help="ramp the learning rate up linearly over the first N steps (0 = off): "
        "the first steps have the largest gradients",
    )
    p.add_argument(
        "--weight-decay",
        type=nonnegative_float,
        default=0.0,
        help="L2 penalty on weights (not on biases or BatchNorm scale/shift)",
    )
    p.add_argument(
        "--clip-norm",
        type=positive_float,
        default=None,
        help="scale all gradients together so their global L2 norm is at most this "
        "(default: no clipping)",
    )
    p.add_argument(
        "--clip-value",
        type=positive_float,
        default=None,
        help="clamp every gradient element to [-this, this], before --clip-norm "
        "(default: no clipping)",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="randomly shift (--max-shift) and rotate (--max-degrees) each training image",
    )
    p.add_argument(
        "--max-shift",
        type=nonnegative_int,
        default=DEFAULT_MAX_SHIFT,
        metavar="PIXELS",
        help="with --augment: shift up to this many pixels in each direction",
    )
    p.add_argument(
        "--max-degrees",
        type=nonnegative_float,
        default=DEFAULT_MAX_DEGREES,
        metavar="DEGREES",
        help="with --augment: rotate by up to this many degrees either way",
    )
    p.add_argument(
        "--standardize",
        action="store_true",
        help="subtract the training-set mean and divide by its std after scaling to [0, 1]",
    )
    p.add_argument(
        "--early-stop",
        type=positive_int,
        nargs="?",
        const=DEFAULT_PATIENCE,
        default=None,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without a lower test loss and restore the best "
        f"weights; PATIENCE defaults to {DEFAULT_PATIENCE} (default: off)",
    )
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="float precision")
    p.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seeds initialisation, shuffling, augmentation and dropout",
    )
    p.add_argument(
        "--train-limit",
        type=positive_int,
        default=None,
        metavar="N",
        help="use only the first N training images (default: all 60,000)",
    )
    p.add_argument(
        "--test-limit",
        type=positive_int,
        default=None,
        metavar="N",
        help="use only the first N test images (default: all 10,000)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="directory with the four MNIST IDX files (or mnist.npz) (default: $MNIST_DIR, "
        "then the user cache, then a verified download)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output directory, checked before training starts (default: "
        "runs/<date>_<time>_<arch>_<backend or framework>)",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="CHECKPOINT",
        help="continue from a checkpoint (e.g. OUT/last.npz) with its optimizer state "
        "(default: start afresh)",
    )
    p.add_argument(
        "--blas-threads",
        type=positive_int,
        default=TRAIN_BLAS_THREADS,
        help="BLAS threads: the model's GEMMs are small, and idle OpenBLAS workers "
        "busy-wait on the core the rest of the step needs",
    )
    p.add_argument(
        "--framework",
        choices=FRAMEWORKS,
        default="numpy",
        help="numpy = our layers on --backend; torch / keras = the same network (any --arch), "
        "initial weights, batches, optimizer and learning-rate schedule trained by PyTorch or "
        "Keras, writing the same epoch lines, history and checkpoints (compare runs with "
        "`python -m model.plots compare RUN_A RUN_B`; needs the peers extra). Not with "
        "--clip-norm, --clip-value, --weight-decay, --early-stop or --distributed",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="synchronous data-parallel training under MPI: `mpiexec -n P python -m model.train "
        "--distributed ...` splits each --batch-size batch among P processes, with the same "
        "results as one process; rank 0 prints and writes the outputs (needs the mpi extra: "
        'pip install -e ".[mpi]")',
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--show", action="store_true", help="also open the plots in a window")
    return p


def prepare_data(args, mean_std=None):
    """Load, subset, scale (and standardise) MNIST. Returns x/y train/test and (mean, std)."""
    print("Loading MNIST dataset...")
    start = time.perf_counter()
    data = load_mnist(args.data_dir, progress=not args.no_progress, data_dir_name="--data-dir")
    print(f"Dataset loaded successfully! ({time.perf_counter() - start:.2f}s, {data.source})")
    print(f"  train: {data.x_train.shape}, test: {data.x_test.shape}")
    x_train, y_train = subset(data.x_train, data.y_train, args.train_limit, "--train-limit")
    x_test, y_test = subset(data.x_test, data.y_test, args.test_limit, "--test-limit")
    if args.train_limit or args.test_limit:
        print(
            f"  using train: {len(x_train)} of {len(data.x_train)}, "
            f"test: {len(x_test)} of {len(data.x_test)}"
        )
    dtype = DTYPES[args.dtype]
    x_train, x_test = scale(x_train, dtype), scale(x_test, dtype)
    if args.standardize:
        mean_std = mean_std or standardize_stats(x_train)
        x_train, x_test = standardize(x_train, *mean_std), standardize(x_test, *mean_std)
        print(f"  standardised with training mean {mean_std[0]:.4f}, std {mean_std[1]:.4f}")
    print(f"  x_train {x_train.shape} {x_train.dtype}, x_test {x_test.shape} {x_test.dtype}")
    return x_train, y_train.astype(np.intp), x_test, y_test.astype(np.intp), mean_std


def resume_state(args):
    """(net, optimizer, history) from --resume; the saved run's settings win except --epochs,
    --backend (any backend can continue any run), how it runs (--autotune, --compile,
    --blas-threads), --data-dir, --out and display options.

    ValueError (one line) when the checkpoint's weights are not finite, or when --epochs asks
    for no more epochs than it has done."""
    meta, arrays = read_checkpoint(args.resume)
    bad = [name for name, a in arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
    if bad:
        raise ValueError(
            f"checkpoint {args.resume} holds NaN or infinite values (in {', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}): resume from an earlier one"
        )
    net, optimizer = load_network(args.resume, backend=args.backend, with_optimizer=True)
    saved = meta.get("args", {})
    for key, value in saved.items():
        if key not in RUN_OPTIONS:
            setattr(args, key, value)
    history = meta.get("history") or new_history()
    done = len(history["epoch"])
    if args.epochs <= done:
        raise ValueError(
            f"--epochs {args.epochs}: {args.resume} has {count(done, 'epoch')} done already; "
            f"--epochs is the total, so pass more than {done} to train on"
        )
    print(f"Resuming {args.resume}: {count(done, 'epoch')} done, training to {args.epochs}")
    if meta.get("interrupted"):
        print(
            f"  note: it was saved mid-epoch {done + 1} (Ctrl-C); epoch {done + 1} starts again "
            "from these weights, so this run will not match an uninterrupted one (resuming from "
            "the run's last.npz would)"
        )
    return net, optimizer, history


# Options that say how a run runs, or where, not what it computes: --resume takes them from the
# command line, not from the checkpoint.
RUN_OPTIONS = (
    "epochs", "backend", "autotune", "compile", "blas_threads", "data_dir", "out", "resume",
    "show", "no_progress",
)  # fmt: skip


def best_weights(out):
    """The best epoch's arrays from OUT/best.npz, so early stopping after --resume can restore
    them; None when there is no such file."""
    path = Path(out) / "best.npz"
    if not path.is_file():
        return None
    _, arrays = read_checkpoint(path)
    return {k: v for k, v in arrays.items() if not k.startswith("optim/")}


def report_autotune(history) -> None:
    """Print and record (history["autotune"]) which backend auto chose for each layer shape."""
    from kernels import auto

    chosen = auto.choices()
    if not chosen or history.get("autotune") == chosen:
        return
    print("auto backend choices (layer shape: backend, how chosen):")
    for key, record in chosen.items():
        print(f"  {key}: {auto.describe(record)} ({record['source']})")
    history["autotune"] = chosen


FRAMEWORK_LABELS = {"torch": "PyTorch", "keras": "Keras"}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.autotune is None:
        args.autotune = autotune_default(parser)
    if args.framework != "numpy":
        unsupported = [
            flag
            for flag, given in (
                ("--clip-norm", args.clip_norm is not None),
                ("--clip-value", args.clip_value is not None),
                ("--weight-decay", bool(args.weight_decay)),
                ("--early-stop", args.early_stop is not None),
                ("--distributed", args.distributed),
            )
            if given
        ]
        if unsupported:
            parser.error(f"--framework {args.framework} does not support {', '.join(unsupported)}")
    keep_freed_memory()  # a step's multi-MB arrays are reused, not page-faulted afresh
    with warnings.catch_warnings():
        # A diverging step overflows in the GEMMs (also in kernels.gemm's worker threads, which
        # np.errstate would not reach) before its loss is found not finite or exploded: that is
        # reported once, as TrainingDiverged, not first as numpy's RuntimeWarnings.
        warnings.filterwarnings("ignore", "(overflow|invalid value) encountered", RuntimeWarning)
        return dispatch(parser, args)


def dispatch(parser, args) -> int:
    """run() in this process, or on every rank of an MPI job under --distributed."""
    if not args.distributed:
        return run(parser, args, None)
    try:
        comm = connect()
    except RuntimeError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    if comm.is_root:
        return run_distributed(parser, args, comm)
    args.no_progress, args.show = True, False
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        return run_distributed(parser, args, comm)


def run_distributed(parser, args, comm) -> int:
    """run() on every rank; a failure outside the coordinated training step (which every rank
    would otherwise wait on in its next collective) ends the whole job."""
    try:
        return run(parser, args, comm)
    except BaseException as exc:  # noqa: BLE001 - any escape would leave the other ranks hanging
        comm.abort(f"{type(exc).__name__}: {exc}")
        raise


def run(parser, args, comm) -> int:
    """The training run; comm: a model.distributed.Communicator under --distributed, else None."""
    root = comm is None or comm.is_root

    def error(message) -> int:
        """Every rank meets the same bad input and returns 2; rank 0 says why, once."""
        if root:
            print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2

    try:
        if args.resume:
            net, optimizer, history = resume_state(args)
            mean_std = input_standardization(net.meta)
        else:
            net, optimizer, history, mean_std = None, None, new_history(), None
    except (OSError, ValueError) as exc:
        return error(exc)
    out = Path(args.out or Path("runs") / run_name(args))
    problem = None
    if comm is not None:
        out = Path(comm.comm.bcast(str(out), root=0))  # the ranks' clocks may read another second
    if root:
        try:
            writable_dir(out, "--out")
        except OSError as exc:
            problem = str(exc)
    if comm is not None:
        problem = comm.comm.bcast(problem, root=0)
    if problem:  # now, not at the first checkpoint an epoch later
        return error(problem)
    try:
        x_train, y_train, x_test, y_test, mean_std = prepare_data(args, mean_std)
    except (OSError, ValueError) as exc:
        return error(exc)
    if net is None:
        net = build_network(args.arch, backend=args.backend, dtype=args.dtype, seed=args.seed)
        lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
        optimizer = make_optimizer(
            args.optimizer,
            lr=lr,
            weight_decay=args.weight_decay,
            clip_norm=args.clip_norm,
            clip_value=args.clip_value,
        )
        args.lr = lr
    if comm is not None:
        comm.attach(net)
    run_args = {k: v for k, v in vars(args).items() if k not in ("resume",)}
    print(
        f"Model: {args.arch} on "
        + (
            f"backend {args.backend}"
            if args.framework == "numpy"
            else FRAMEWORK_LABELS[args.framework]
        )
        + f", {args.dtype}, {args.optimizer} "
        f"lr {args.lr:g}, batch {args.batch_size}, {count(args.epochs, 'epoch')}"
    )
    if comm is not None:
        share = f"{args.batch_size / comm.size:.3g}"
        print(
            f"Distributed: {comm.size} ranks (MPI), each computing about {share} images of "
            f"every batch of {args.batch_size}"
        )
        history["ranks"] = comm.size
    if args.backend == "auto":
        from kernels import auto

        auto.configure(mode=args.autotune)
    if args.framework != "numpy":
        compiling = None
    elif comm is None:
        compiling = prepare_backend(net, args.backend, args.dtype, mode=args.compile, log=print)
    else:  # rank 0 compiles once into the disk cache, then the others load from it
        compiling = None
        if comm.is_root:
            prepare_backend(net, args.backend, args.dtype, mode="wait", log=print)
        comm.comm.Barrier()
        if not comm.is_root:
            prepare_backend(net, args.backend, args.dtype, mode="wait", log=print)

    def checkpoint(path, **extra):
        if not root:
            return
        net.save(
            path,
            optimizer=optimizer,
            history=history,
            args=run_args,
            standardize=list(mean_std) if mean_std else None,
            **extra,
        )

    def write_history():
        if root:
            save_history(history, out / "history.json", out / "history.csv")

    last_written = []  # whether this run has written last.npz, for the divergence message

    def on_epoch_end(net, history, is_best):
        if args.backend == "auto":
            report_autotune(history)
        checkpoint(out / "last.npz", epoch=len(history["epoch"]))
        last_written.append(True)
        if is_best:
            checkpoint(out / "best.npz", epoch=len(history["epoch"]))
        write_history()

    epochs_before = len(history["epoch"])
    start = time.perf_counter()
    try:
        # what both training loops take alike
        common = dict(
            batch_size=args.batch_size,
            x_test=x_test,
            y_test=y_test,
            schedule=args.schedule,
            base_lr=args.lr,
            step_epochs=args.step_epochs,
            step_factor=args.step_factor,
            warmup_steps=args.warmup_steps,
            history=history,
            progress=not args.no_progress,
            on_epoch_end=on_epoch_end,
        )
        if args.framework != "numpy":
            history["framework"] = args.framework
            augment = (args.max_shift, args.max_degrees) if args.augment else None
            fit_in_framework(
                args.framework, net, x_train, y_train, args.epochs, optimizer,
                augment=augment, seed=args.seed, **common,
            )  # fmt: skip
        else:
            # under MPI, Ctrl-C stops every rank after the same step (Communicator docstring)
            agreed = contextlib.nullcontext() if comm is None else comm.interrupts_at_a_step()
            with agreed:
                fit(
                    net, x_train, y_train, epochs=args.epochs, optimizer=optimizer,
                    augment=args.augment, max_shift=args.max_shift, max_degrees=args.max_degrees,
                    early_stop=args.early_stop,
                    best_state=best_weights(out) if args.resume and args.early_stop else None,
                    blas_threads=args.blas_threads, comm=comm, **common,
                )  # fmt: skip
        if compiling is not None and not compiling.moved:
            print(
                f"training ended before the {args.backend} kernels were ready; waiting for "
                "their compile, so that the next run starts on them"
            )
            compiling.finish(wait=True)
    except (TrainingDiverged, RankFailed) as exc:
        if root:
            if last_written:
                kept = f"The last good checkpoint is {out / 'last.npz'}."
            elif args.resume:  # resume_state refuses non-finite weights: this one is good
                kept = f"The last good checkpoint is {args.resume} (resumed from; none written)."
            else:
                kept = "No checkpoint was written yet: the run stopped in its first epoch."
            print(f"{parser.prog}: error: {exc}. {kept}", file=sys.stderr)
        write_history()
        return 1
    except KeyboardInterrupt:
        checkpoint(out / "interrupted.npz", epoch=len(history["epoch"]), interrupted=True)
        write_history()
        print(
            f"\nInterrupted: saved {out / 'interrupted.npz'} (weights mid-epoch) and the history; "
            f"resume exactly from the end of the last full epoch with --resume {out / 'last.npz'}"
        )
        return 130
    finally:
        if compiling is not None:
            compiling.stop()  # a failed or interrupted run leaves no compiling child behind
    total = time.perf_counter() - start
    epochs_run = history["seconds"][epochs_before:]
    if epochs_run:
        print(
            f"Total time: {total:.2f}s for {count(len(epochs_run), 'epoch')} "
            f"(training, test evaluation, checkpoints and history files)"
        )
        print(
            f"Mean epoch time: {np.mean(epochs_run):.2f}s "
            f"(the training pass alone, as in the epoch lines)"
        )
    if not root:
        return 0
    write_plots(net, history, x_test, y_test, out, args.show)
    if not history["epoch"]:
        checkpoint(out / "last.npz", epoch=0)
    written = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
    print(f"Outputs written to {out}/ ({', '.join(written)})")
    print("Experiment completed!")
    return 0


def write_plots(net, history, x_test, y_test, out, show):
    """predictions.png (mistakes first when there are some, plots.pick_examples) from the test
    set and history.png from the curves."""
    from .plots import pick_examples, plot_history, plot_predictions

    probs = net.predict_proba(x_test)
    predicted = probs.argmax(axis=1)
    wrong = int((predicted != y_test).sum())
    pick = pick_examples(y_test, predicted)
    shown = int((predicted[pick] != y_test[pick]).sum())
    plot_predictions(
        x_test[pick],
        y_test[pick],
        predicted[pick],
        out / "predictions.png",
        probs=probs[pick].max(axis=1),
        show=show,
        title=f"{wrong} of {len(y_test)} test images misclassified"
        + (f"; {shown} of them shown, in red" if shown else ""),
    )
    if history["epoch"]:
        plot_history(history, out / "history.png", show=show)


if __name__ == "__main__":
    sys.exit(main())
