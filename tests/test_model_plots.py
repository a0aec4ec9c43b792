"""model.plots: the predictions grid and the training history, saved as PNG without a display."""

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import to_rgba

from model import plots
from model.plots import (
    history_figure,
    maybe_show,
    plot_history,
    plot_predictions,
    predictions_figure,
)


@pytest.fixture(autouse=True)
def no_display(monkeypatch):
    """Every test runs as on a headless machine: nothing may open a window."""
    monkeypatch.setattr(plots, "display_available", lambda: False)


def history3():
    return {
        "epoch": [1, 2, 3],
        "train_loss": [0.9, 0.4, 0.3],
        "train_acc": [0.70, 0.88, 0.92],
        "test_loss": [0.5, 0.35, 0.3],
        "test_acc": [0.85, 0.90, 0.91],
    }


def random_batch(n=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, 28, 28)).astype(np.float32)
    true = rng.integers(0, 10, n)
    pred = true.copy()
    pred[::3] = (pred[::3] + 1) % 10  # every third prediction wrong
    return images, true, pred


def read_png(path):
    """The decoded PNG (H, W, 3 or 4); also checks the signature so a non-PNG cannot pass."""
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels.shape[0] >= 200 and pixels.shape[1] >= 300
    assert pixels.std() > 0  # something was drawn
    return pixels


def titled_axes(fig):
    return [ax for ax in fig.axes if ax.get_title()]


# ---- predictions -----------------------------------------------------------------------------


def test_plot_predictions_writes_png_and_creates_parent(tmp_path):
    images, true, pred = random_batch()
    path = tmp_path / "new" / "dir" / "predictions.png"
    assert plot_predictions(images, true, pred, path) == path
    pixels = read_png(path)
    assert pixels.shape[1] > pixels.shape[0]  # 2 rows x 5 columns: wider than tall
    assert [p.name for p in path.parent.iterdir()] == ["predictions.png"]  # no temp file left


@pytest.mark.parametrize("layout", ["nhw_float", "nhw1_float", "nhw_uint8"])
def test_plot_predictions_accepts_image_layouts(tmp_path, layout):
    images, true, pred = random_batch()
    if layout == "nhw1_float":
        images = images[..., None]
    elif layout == "nhw_uint8":
        images = (images * 255).astype(np.uint8)
    read_png(plot_predictions(images, true, pred, tmp_path / "p.png"))


def test_prediction_titles_and_colours():
    images, true, pred = random_batch()
    fig = predictions_figure(images, true, pred)
    axes = titled_axes(fig)
    assert len(axes) == 10
    for ax, t, p in zip(axes, true, pred):
        assert ax.get_title() == f"true {t} / pred {p}"
        expected = "green" if t == p else "red"
        assert to_rgba(ax.title.get_color()) == to_rgba(expected)
    assert sum(to_rgba(ax.title.get_color()) == to_rgba("red") for ax in axes) == 4


def test_prediction_titles_show_probability_of_the_prediction():
    images, true, pred = random_batch()
    probs_full = np.full((10, 10), 0.01)
    probs_full[np.arange(10), pred] = 0.91
    for probs in (probs_full, probs_full[np.arange(10), pred]):
        titles = [
            ax.get_title() for ax in titled_axes(predictions_figure(images, true, pred, probs))
        ]
        assert all(t.endswith("p=0.91") for t in titles)


def test_predictions_grid_with_fewer_or_more_than_ten_images():
    images, true, pred = random_batch(n=3)
    fig = predictions_figure(images, true, pred)
    assert len(fig.axes) == 10 and len(titled_axes(fig)) == 3
    images, true, pred = random_batch(n=25)
    assert len(titled_axes(predictions_figure(images, true, pred))) == 10


@pytest.mark.parametrize(
    "bad, name",
    [
        (dict(true_labels=np.zeros(9, int)), "true_labels"),
        (dict(pred_labels=np.zeros(11, int)), "pred_labels"),
        (dict(probs=np.ones(4)), "probs"),
        (dict(images=np.zeros((10, 28))), "images"),
        (dict(images=np.zeros((0, 28, 28))), "images"),
    ],
)
def test_plot_predictions_bad_input_names_the_argument(tmp_path, bad, name):
    images, true, pred = random_batch()
    kwargs = dict(images=images, true_labels=true, pred_labels=pred, path=tmp_path / "p.png")
    kwargs.update(bad)
    with pytest.raises(ValueError, match=name):
        plot_predictions(**kwargs)
    assert not (tmp_path / "p.png").exists()


# ---- history ---------------------------------------------------------------------------------


def line_labels(fig):
    return sorted(line.get_label() for ax in fig.axes for line in ax.get_lines())


def test_plot_history_three_epochs(tmp_path):
    path = plot_history(history3(), tmp_path / "history.png")
    read_png(path)
    fig = history_figure(history3())
    ax_loss, ax_acc = fig.axes
    assert ax_loss.get_xlabel() == "epoch"
    assert ax_loss.get_ylabel() == "loss" and ax_acc.get_ylabel() == "accuracy"
    assert [line.get_label() for line in ax_loss.get_lines()] == ["train loss", "test loss"]
    assert [line.get_label() for line in ax_acc.get_lines()] == ["train accuracy", "test accuracy"]
    # One legend listing the lines of both axes.
    (legend,) = fig.legends
    assert sorted(t.get_text() for t in legend.get_texts()) == line_labels(fig)
    fig.canvas.draw()
    ticks = [t for t in ax_loss.get_xticks() if ax_loss.get_xlim()[0] <= t <= ax_loss.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_plot_history_single_epoch(tmp_path):
    history = {key: values[:1] for key, values in history3().items()}
    read_png(plot_history(history, tmp_path / "h.png"))
    ax_loss = history_figure(history).axes[0]
    assert all(line.get_marker() not in (None, "None", "") for line in ax_loss.get_lines())
    assert list(
        ax_loss.get_xticks()[(ax_loss.get_xticks() >= 0.5) & (ax_loss.get_xticks() <= 1.5)]
    ) == [1]


@pytest.mark.parametrize(
    "no_test",
    [
        {"test_loss": [], "test_acc": []},
        {"test_loss": [None] * 3, "test_acc": [None] * 3},
        {},
    ],
)
def test_plot_history_without_test_data(tmp_path, no_test):
    history = {k: v for k, v in history3().items() if not k.startswith("test")}
    history.update(no_test)
    read_png(plot_history(history, tmp_path / "h.png"))
    assert line_labels(history_figure(history)) == ["train accuracy", "train loss"]


def test_plot_history_gap_for_a_missing_test_value():
    history = history3()
    history["test_acc"] = [None, 0.9, 0.91]
    fig = history_figure(history)
    (test_acc,) = [line for line in fig.axes[1].get_lines() if line.get_label() == "test accuracy"]
    assert np.isnan(test_acc.get_ydata()[0])


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(train_loss=[0.9, 0.4]), "train_loss"),
        (dict(test_acc=[0.1, 0.2, 0.3, 0.4]), "test_acc"),
        (dict(train_acc=[]), "train_acc"),
        (dict(epoch=[]), "epoch"),
    ],
)
def test_plot_history_bad_lengths_name_the_key(tmp_path, change, name):
    history = history3()
    history.update(change)
    with pytest.raises(ValueError, match=name):
        plot_history(history, tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()


# ---- showing ---------------------------------------------------------------------------------


def test_show_without_display_saves_and_says_so(tmp_path, capsys):
    path = plot_history(history3(), tmp_path / "h.png", show=True)
    read_png(path)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and str(path) in out and "no display" in out


def test_maybe_show_without_display_prints_one_line(capsys):
    assert maybe_show(True, ["a.png", "b.png"]) is False
    assert capsys.readouterr().out == "plots saved to a.png, b.png (no display available)\n"


# ---- what the grid shows -----------------------------------------------------------------------
def test_pick_examples_shows_mistakes_first():
    true = np.arange(100) % 10
    pred = true.copy()
    pred[[7, 30, 55]] = (pred[[7, 30, 55]] + 1) % 10
    pick = plots.pick_examples(true, pred)
    assert len(pick) == 10 and len(set(pick)) == 10
    assert sorted(pick[:3]) == [7, 30, 55] and (true[pick[3:]] == pred[pick[3:]]).all()
    # many mistakes: half the grid, the rest right ones for comparison
    pred[:80] = (true[:80] + 1) % 10
    pick = plots.pick_examples(true, pred)
    assert (true[pick] != pred[pick]).sum() == 5
    # too few right ones: the grid fills with mistakes; fewer images than the grid: all of them
    pick = plots.pick_examples(true[:12], pred[:12])
    assert len(pick) == 10 and (true[pick] != pred[pick]).all()
    assert sorted(plots.pick_examples(true[:4], true[:4])) == [0, 1, 2, 3]


def test_predictions_grid_title():
    images, true, pred = random_batch()
    fig = predictions_figure(images, true, pred, title="4 of 10 test images misclassified")
    assert fig._suptitle.get_text() == "4 of 10 test images misclassified"


def one_epoch(acc, loss, seconds):
    return {
        "epoch": [1],
        "train_loss": [loss],
        "train_acc": [acc - 0.1],
        "test_loss": [loss],
        "test_acc": [acc],
        "seconds": [seconds],
    }


def test_compare_of_one_epoch_runs_draws_labelled_bars(tmp_path):
    runs = {"a (numpy)": one_epoch(0.85, 1.16, 1.8), "b (torch)": one_epoch(0.85, 1.16, 5.5)}
    fig = plots.compare_figure(runs)
    acc, loss, seconds = fig.axes[:3]
    assert len(acc.patches) == 4 and len(loss.patches) == 2 and len(seconds.patches) == 2
    labels = [t.get_text() for t in seconds.texts]
    assert labels == ["1.80", "5.50"]
    assert [t.get_text() for t in loss.get_xticklabels()] == list(runs)
    plots.save_figure(fig, tmp_path / "compare.png")
    read_png(tmp_path / "compare.png")
    # with more epochs somewhere, lines as before
    longer = {**runs, "c (keras)": history3() | {"seconds": [1.0, 1.0, 1.0]}}
    assert not plots.compare_figure(longer).axes[0].patches
