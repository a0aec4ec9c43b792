"""Training plots: a grid of test predictions and the loss/accuracy history, saved as PNG.

    >>> import numpy as np
    >>> from model.plots import plot_history, plot_predictions
    >>> images = np.zeros((4, 28, 28), np.float32)      # (N, 28, 28) or (N, 28, 28, 1)
    >>> plot_predictions(images, [1, 2, 3, 4], [1, 2, 3, 5], "predictions.png").name
    'predictions.png'
    >>> history = {"epoch": [1, 2], "train_loss": [0.5, 0.3], "train_acc": [0.9, 0.95],
    ...            "test_loss": [0.4, 0.35], "test_acc": [0.91, 0.93]}
    >>> plot_history(history, "history.png").name
    'history.png'

Without a display (Linux with neither DISPLAY nor WAYLAND_DISPLAY) plots are only saved, never
shown, and the non-interactive Agg backend is selected at import so nothing tries to open a window.
Figures that are not going to be shown are plain `matplotlib.figure.Figure`s, not pyplot figures:
pyplot keeps every figure alive until closed, which leaks memory in a long training run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib
import numpy as np

from .atomic import write_atomically


def display_available() -> bool:
    """True when a window can be opened: macOS/Windows, or Linux with an X11/Wayland display."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# A user's MPLBACKEND (e.g. Jupyter's inline backend) or an already imported pyplot wins: switching
# backends under pyplot closes every open figure.
if (
    not display_available()
    and not os.environ.get("MPLBACKEND")
    and "matplotlib.pyplot" not in sys.modules
):
    matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402  (after the backend choice)
from matplotlib.ticker import MaxNLocator  # noqa: E402

GRID_ROWS, GRID_COLS = 2, 5
RIGHT_COLOUR, WRONG_COLOUR = "green", "red"
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")


# ---- display -------------------------------------------------------------------------------------


def _wants_window(show: bool) -> bool:
    return bool(show) and display_available()


def _new_figure(show: bool, **kwargs) -> Figure:
    """A pyplot figure when it will be shown (pyplot owns the windows), else a detached Figure."""
    if _wants_window(show):
        import matplotlib.pyplot as plt

        return plt.figure(**kwargs)
    return Figure(**kwargs)


def maybe_show(show: bool, paths=()) -> bool:
    """Show the open pyplot figures (blocking) if `show` and a display exists; returns whether it did.

    Otherwise prints one line saying where the plots were saved (`paths`: the saved files).
    """
    if _wants_window(show):
        import matplotlib.pyplot as plt

        plt.show()
        plt.close("all")
        return True
    where = ", ".join(str(p) for p in paths) or "their output files"
    reason = " (no display available)" if show else ""
    print(f"plots saved to {where}{reason}")
    return False


def save_figure(fig: Figure, path) -> Path:
    """Write `fig` to `path` (format from the suffix, PNG if none), creating parent directories.

    Written to a temp file in the same directory, then os.replace'd: a reader never sees half a PNG.
    """
    fmt = Path(path).suffix[1:].lower() or "png"
    return write_atomically(path, lambda f: fig.savefig(f, format=fmt, dpi=100))


def _finish(fig: Figure, path, show: bool) -> Path:
    path = save_figure(fig, path)
    if show:
        maybe_show(show, [path])
    return path


# ---- predictions grid ----------------------------------------------------------------------------


def _check_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[0] == 0:
        raise ValueError(
            f"images must be (N, H, W) or (N, H, W, 1) with N >= 1, got shape {images.shape}"
        )
    return images


def _check_length(values, name: str, n: int) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim == 0 or len(values) != n:
        got = "a scalar" if values.ndim == 0 else f"{len(values)} entries"
        raise ValueError(f"{name} must have one entry per image ({n}), got {got}")
    return values


def _image_range(images: np.ndarray) -> tuple:
    """Fixed grey scale for the usual encodings so faint digits stay faint; else autoscale."""
    if images.dtype == np.uint8:
        return 0, 255
    if images.size and np.nanmin(images) >= 0 and np.nanmax(images) <= 1:
        return 0.0, 1.0
    return None, None


def pick_examples(true_labels, pred_labels, count: int = GRID_ROWS * GRID_COLS, seed: int = 0):
    """Indices of up to `count` examples for the predictions grid: mistakes first (up to half of
    the grid, more when there are too few right ones), then right ones, each drawn at random
    (seeded). A grid of ten random digits of a 98% model rarely shows the 2% it gets wrong.

    true_labels, pred_labels: (N,) ints. Returns (min(count, N),) int indices."""
    true_labels, pred_labels = np.asarray(true_labels), np.asarray(pred_labels)
    rng = np.random.default_rng(seed)
    wrong = rng.permutation(np.flatnonzero(true_labels != pred_labels))
    right = rng.permutation(np.flatnonzero(true_labels == pred_labels))
    count = min(count, len(true_labels))
    n_wrong = min(len(wrong), max(count // 2, count - len(right)))
    return np.concatenate([wrong[:n_wrong], right[: count - n_wrong]]).astype(int)


def predictions_figure(
    images, true_labels, pred_labels, probs=None, show: bool = False, title: str | None = None
) -> Figure:
    """The 2x5 grid of the first (up to) 10 images, each titled "true T / pred P" [+ "p=0.98"].

    images: (N, H, W) or (N, H, W, 1), uint8 or float; true_labels, pred_labels: (N,) ints;
    probs: None, (N,) probability of each prediction, or (N, classes) probabilities (the predicted
    class's is shown). A title is green when pred == true, red otherwise. Axes without an image
    (N < 10) are hidden; `title` goes above the grid. Raises ValueError naming the argument whose
    length does not match images.
    """
    images = _check_images(images)
    n = images.shape[0]
    true_labels = _check_length(true_labels, "true_labels", n)
    pred_labels = _check_length(pred_labels, "pred_labels", n)
    if probs is not None:
        probs = _check_length(probs, "probs", n)
        if probs.ndim == 2:
            probs = probs[np.arange(n), pred_labels.astype(int)]
        elif probs.ndim != 1:
            raise ValueError(f"probs must be (N,) or (N, classes), got shape {probs.shape}")

    vmin, vmax = _image_range(images)
    fig = _new_figure(show, figsize=(GRID_COLS * 1.9, GRID_ROWS * 2.2), layout="constrained")
    axes = fig.subplots(GRID_ROWS, GRID_COLS, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        true, pred = int(true_labels[i]), int(pred_labels[i])
        label = f"true {true} / pred {pred}"
        ax.set_title(
            label + (f"\np={float(probs[i]):.2f}" if probs is not None else ""),
            color=RIGHT_COLOUR if true == pred else WRONG_COLOUR,
            fontsize=10,
        )
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_predictions(
    images, true_labels, pred_labels, path, probs=None, show: bool = False, title=None
) -> Path:
    """Save the predictions grid (see `predictions_figure`) to `path`; returns the path written.

    With `show` and a display the figure is also shown (blocking until closed).
    """
    fig = predictions_figure(images, true_labels, pred_labels, probs=probs, show=show, title=title)
    return _finish(fig, path, show)


# ---- history -------------------------------------------------------------------------------------


def _series(history: dict, key: str, n: int, required: bool) -> np.ndarray | None:
    """history[key] as float (n,) with None -> NaN (a gap), or None when absent/empty/all None."""
    values = history.get(key)
    if values is None or len(values) == 0:
        if required:
            raise ValueError(f"history[{key!r}] is missing or empty; it needs one value per epoch")
        return None
    if len(values) != n:
        raise ValueError(f"history[{key!r}] has {len(values)} values but history['epoch'] has {n}")
    series = np.array([np.nan if v is None else float(v) for v in values])
    if np.isnan(series).all():
        if required:
            raise ValueError(f"history[{key!r}] holds no values (all None)")
        return None
    return series


def history_figure(history: dict, show: bool = False) -> Figure:
    """Loss (left axis) and accuracy (right axis, twinx) per epoch, train solid, test dashed.

    history: {"epoch": [...], "train_loss", "train_acc": one value per epoch, "test_loss",
    "test_acc": the same, or empty/None-filled/absent when there is no test set}. Values may be
    None (drawn as a gap). Accuracy is plotted as given (fraction or percent). Raises ValueError
    naming the key that is missing or whose length differs from history["epoch"].
    """
    if not isinstance(history, dict):
        raise ValueError(f"history must be a dict of lists, got {type(history).__name__}")
    epochs = _series(history, "epoch", len(history.get("epoch") or ()), required=True)
    n = len(epochs)
    lines = {
        key: _series(history, key, n, required=key.startswith("train")) for key in HISTORY_KEYS[1:]
    }

    fig = _new_figure(show, figsize=(7, 4.2), layout="constrained")
    ax_loss = fig.subplots()
    ax_acc = ax_loss.twinx()
    # Markers make a single epoch (one point, no line segment) visible.
    style = {"train": dict(linestyle="-", marker="o"), "test": dict(linestyle="--", marker="s")}
    for ax, metric, colour in ((ax_loss, "loss", "tab:blue"), (ax_acc, "acc", "tab:orange")):
        for split in ("train", "test"):
            series = lines[f"{split}_{metric}"]
            if series is not None:
                name = "loss" if metric == "loss" else "accuracy"
                ax.plot(
                    epochs,
                    series,
                    color=colour,
                    label=f"{split} {name}",
                    markersize=4,
                    **style[split],
                )
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss", color="tab:blue")
    ax_acc.set_ylabel("accuracy", color="tab:orange")
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if n == 1:
        ax_loss.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
    ax_loss.grid(True, alpha=0.3)
    handles_loss, labels_loss = ax_loss.get_legend_handles_labels()
    handles_acc, labels_acc = ax_acc.get_legend_handles_labels()
    # One legend for both axes, below the plot where it cannot hide a line.
    fig.legend(
        handles_loss + handles_acc,
        labels_loss + labels_acc,
        loc="outside lower center",
        ncols=len(labels_loss + labels_acc),
        frameon=False,
    )
    ax_loss.set_title("training history")
    return fig


def plot_history(history: dict, path, show: bool = False) -> Path:
    """Save the history plot (see `history_figure`) to `path`; returns the path written.

    With `show` and a display the figure is also shown (blocking until closed).
    """
    return _finish(history_figure(history, show=show), path, show)


def compare_figure(histories: dict[str, dict], show: bool = False) -> Figure:
    """Several runs on one figure: {label: history} -> test accuracy, train loss and seconds
    per epoch side by side, one colour per run (train accuracy dotted beside test). When every
    run has one epoch, bars labelled with their values (compare_bars): one point per run would
    be a dot, and runs that agree would hide each other's."""
    if not histories:
        raise ValueError("compare needs at least one run's history")
    if all(len(h.get("epoch") or ()) == 1 for h in histories.values()):
        return compare_bars(histories, show)
    fig = _new_figure(show, figsize=(13, 4), layout="constrained")
    ax_acc, ax_loss, ax_time = fig.subplots(1, 3)
    for i, (name, history) in enumerate(histories.items()):
        epochs = _series(history, "epoch", len(history.get("epoch") or ()), required=True)
        n, colour = len(epochs), f"C{i}"
        test_acc = _series(history, "test_acc", n, required=False)
        if test_acc is not None:
            ax_acc.plot(epochs, test_acc, color=colour, marker="o", label=f"{name} test")
        ax_acc.plot(
            epochs,
            _series(history, "train_acc", n, True),
            color=colour,
            ls=":",
            label=f"{name} train",
        )
        ax_loss.plot(
            epochs, _series(history, "train_loss", n, True), color=colour, marker="o", label=name
        )
        ax_time.plot(
            epochs, _series(history, "seconds", n, True), color=colour, marker="o", label=name
        )
    for ax, title in (
        (ax_acc, "accuracy (test solid, train dotted)"),
        (ax_loss, "train loss"),
        (ax_time, "seconds per epoch (training pass)"),
    ):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(True, alpha=0.3)
    ax_time.set_ylim(bottom=0)
    ax_acc.legend(fontsize=7)
    ax_time.legend(fontsize=7)
    return fig


def compare_bars(histories: dict[str, dict], show: bool = False) -> Figure:
    """One-epoch runs side by side: {label: history} -> bars of test accuracy (train beside it,
    hatched), train loss and seconds, one colour per run, each bar labelled with its value."""
    fig = _new_figure(show, figsize=(13, 4.2), layout="constrained")
    ax_acc, ax_loss, ax_time = fig.subplots(1, 3)
    names = list(histories)
    at = np.arange(len(names))
    colours = [f"C{i}" for i in range(len(names))]

    def last(history, key):
        value = (history.get(key) or [None])[-1]
        return np.nan if value is None else float(value)

    def bars(ax, x, key, fmt, width=0.8, **style):
        values = [last(histories[name], key) for name in names]
        drawn = ax.bar(x, values, width=width, color=colours, **style)
        ax.bar_label(drawn, labels=["" if np.isnan(v) else fmt.format(v) for v in values])

    bars(ax_acc, at - 0.2, "test_acc", "{:.4f}", width=0.4)
    bars(ax_acc, at + 0.2, "train_acc", "{:.4f}", width=0.4, hatch="//", alpha=0.5)
    bars(ax_loss, at, "train_loss", "{:.4f}")
    bars(ax_time, at, "seconds", "{:.2f}")
    for ax, title in (
        (ax_acc, "accuracy (test plain, train hatched)"),
        (ax_loss, "train loss"),
        (ax_time, "seconds (training pass)"),
    ):
        ax.set_title(f"{title}, one epoch")
        ax.set_xticks(at, names, rotation=15, ha="right", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        ax.margins(y=0.15)  # room for the labels above the bars
    return fig


def run_label(run_dir: Path, history: dict) -> str:
    """A run's name on the compare figure: its directory and what trained it."""
    framework = history.get("framework", "numpy")
    return f"{run_dir.name} ({framework})"


def main(argv=None) -> int:
    """python -m model.plots compare RUN_A RUN_B ... [--out compare.png] [--show]"""
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m model.plots",
        description="Plots of training runs. compare: several runs' histories on one figure "
        "(e.g. the same --arch trained with --framework numpy, torch and keras).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    compare = sub.add_parser("compare", help="draw several runs' history.json on one figure")
    compare.add_argument("runs", nargs="+", help="run directories (each with a history.json)")
    compare.add_argument(
        "--out", default="compare.png", help="the PNG to write (default: %(default)s)"
    )
    compare.add_argument("--show", action="store_true", help="also open the figure in a window")
    args = parser.parse_args(argv)
    histories = {}
    try:
        for run in map(Path, args.runs):
            path = run / "history.json" if run.is_dir() else run
            if not path.is_file():
                raise ValueError(f"{run} has no history.json (give a model.train --out directory)")
            history = json.loads(path.read_text())
            histories[run_label(path.parent, history)] = history
        path = _finish(compare_figure(histories, show=args.show), args.out, args.show)
    except (OSError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
