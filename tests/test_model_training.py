"""Optimizers, schedules, the training loop and the python -m model.train CLI."""

import json
import math

import numpy as np
import pytest
from model_helpers import separable_data

from model import train as train_cli
from model import training
from model.layers import Dense, Flatten
from model.network import Sequential, build_network, load_network
from model.optim import (
    DEFAULT_LR,
    SGD,
    Adam,
    Momentum,
    clip_by_global_norm,
    clip_by_value,
    lr_at,
    make_optimizer,
    warmup_factor,
)
from model.training import TrainingDiverged, fit


# ---- optimizers ------------------------------------------------------------------------------
def _one_param(opt, p, g, decay=True, steps=1):
    for _ in range(steps):
        opt.step([("p", p, g.copy(), decay)])
    return p


def test_sgd_momentum_adam_match_their_formulas():
    g = np.array([0.5, -2.0])
    assert np.allclose(_one_param(SGD(0.1), np.array([1.0, 1.0]), g), [0.95, 1.2])
    # momentum: v1 = g, v2 = 0.9 g + g
    p = _one_param(Momentum(0.1, momentum=0.9), np.array([1.0, 1.0]), g, steps=2)
    assert np.allclose(p, 1 - 0.1 * g - 0.1 * 1.9 * g)
    # Adam's first step moves every coordinate by lr (bias-corrected m / sqrt(v) = sign(g))
    p = _one_param(Adam(0.01), np.array([1.0, 1.0]), g)
    assert np.allclose(p, 1 - 0.01 * np.sign(g), atol=1e-7)


def test_one_default_learning_rate_table():
    assert DEFAULT_LR == {"sgd": 0.1, "momentum": 0.05, "adam": 1e-3}  # the README's defaults
    for name, cls in (("sgd", SGD), ("momentum", Momentum), ("adam", Adam)):
        assert make_optimizer(name).lr == cls().lr == DEFAULT_LR[name]
    assert train_cli.build_parser().parse_args([]).lr is None  # the CLI falls back on the table


def test_weight_decay_applies_only_where_asked():
    w = _one_param(SGD(0.1, weight_decay=0.5), np.array([2.0]), np.array([0.0]), decay=True)
    b = _one_param(SGD(0.1, weight_decay=0.5), np.array([2.0]), np.array([0.0]), decay=False)
    assert w[0] == pytest.approx(2 - 0.1 * 0.5 * 2) and b[0] == 2.0


def test_network_update_skips_decay_on_biases_and_batchnorm():
    net = build_network("deep", seed=0)
    decayed = {key for key, layer, name in net.parameters() if name not in layer.no_decay}
    assert decayed == {"0.w", "4.w", "9.w", "12.w"}


def test_warmup_ramps_linearly_then_stays_at_one():
    assert [warmup_factor(t, 4) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_clip_by_value_clamps_each_element_before_the_norm():
    grads = [np.array([3.0, -0.5]), np.array([-4.0])]
    clip_by_value(grads, 1.0)
    assert grads[0].tolist() == [1.0, -0.5] and grads[1].tolist() == [-1.0]
    opt = SGD(1.0, clip_value=0.5, clip_norm=0.5)
    p = _one_param(opt, np.zeros(2), np.array([3.0, -3.0]))  # clamped to +-0.5, then norm 0.5
    np.testing.assert_allclose(p, [-0.5 / np.sqrt(2), 0.5 / np.sqrt(2)])
    assert opt.config()["clip_value"] == 0.5


def test_clip_by_global_norm_keeps_direction():
    grads = [np.array([3.0]), np.array([4.0])]
    assert clip_by_global_norm(grads, 1.0) == pytest.approx(5.0)
    assert np.allclose([grads[0][0], grads[1][0]], [0.6, 0.8])
    small = [np.array([0.3])]
    clip_by_global_norm(small, 1.0)
    assert small[0][0] == 0.3


def test_schedules():
    assert [lr_at("none", 1.0, e, 6) for e in range(6)] == [1.0] * 6
    # step: x0.5 every 10 epochs by default
    assert [lr_at("step", 1.0, e, 30) for e in (0, 9, 10, 19, 20)] == [1, 1, 0.5, 0.5, 0.25]
    assert [lr_at("step", 1.0, e, 6, step_epochs=2, step_factor=0.1) for e in range(6)] == (
        pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    )
    cosine = [lr_at("cosine", 1.0, e, 4) for e in range(4)]
    assert cosine == pytest.approx(
        [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2]
    )
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        lr_at("linear", 1.0, 0, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="rmsprop"), "unknown optimizer 'rmsprop'"),
        (dict(name="sgd", lr=0), "lr must be a number > 0"),
        (dict(name="sgd", weight_decay=-1), "weight_decay must be a number >= 0"),
        (dict(name="adam", clip_norm=0), "clip_norm must be a number > 0"),
        (dict(name="momentum", clip_value=-1.0), "clip_value must be a number > 0"),
    ],
)
def test_optimizer_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer(**kwargs)


# ---- the training loop on generated data ------------------------------------------------------
def test_loss_falls_on_generated_data():
    x, y = separable_data()
    net = build_network("small", seed=0)
    history = fit(
        net,
        x,
        y,
        epochs=3,
        optimizer=Momentum(0.02),
        batch_size=32,
        x_test=x[:64],
        y_test=y[:64],
        progress=False,
        log=None,
    )
    assert history["train_loss"][2] < history["train_loss"][0] * 0.5
    assert history["test_acc"][-1] > 0.9
    assert history["epoch"] == [1, 2, 3] and len(history["seconds"]) == 3


def test_same_seed_same_history_and_backends_agree():
    x, y = separable_data(128)
    runs = {}
    for backend in ["im2col", "im2col", "einsum", "numba", "naive"]:
        net = build_network("deep", backend=backend, seed=1)
        history = fit(
            net,
            x,
            y,
            epochs=1,
            optimizer=Adam(1e-3),
            batch_size=32,
            x_test=x[:32],
            y_test=y[:32],
            augment=True,
            progress=False,
            log=None,
        )
        runs.setdefault(backend, []).append(history)
    first, again = runs["im2col"]
    assert first["train_loss"] == again["train_loss"] and first["test_loss"] == again["test_loss"]
    for backend in ["einsum", "numba", "naive"]:
        other = runs[backend][0]
        assert other["train_loss"] == pytest.approx(first["train_loss"], rel=1e-4), backend
        assert other["test_loss"] == pytest.approx(first["test_loss"], rel=1e-4), backend


def test_nan_loss_stops_before_touching_the_weights():
    x, y = separable_data(64)
    x[40] = np.nan  # a poisoned image in the first epoch
    net = build_network("small", seed=0)
    before = {k: a.copy() for k, a in net.state_arrays().items()}
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, batch \d+") as info:
        fit(net, x, y, epochs=2, optimizer=SGD(0.1), batch_size=64, progress=False, log=None)
    assert info.value.epoch == 1 and info.value.batch == 1
    for key, value in net.state_arrays().items():
        np.testing.assert_array_equal(value, before[key])


def test_early_stopping_restores_the_best_weights(monkeypatch):
    x, y = separable_data(64)
    net = build_network("small", seed=0)
    scripted = iter([(1.0, 0.5), (0.5, 0.8), (0.7, 0.7), (0.9, 0.6), (0.2, 0.9)])
    snapshots = []
    monkeypatch.setattr(
        net,
        "evaluate",
        lambda *_: (
            snapshots.append({k: a.copy() for k, a in net.state_arrays().items()}),
            next(scripted),
        )[1],
    )
    history = fit(
        net,
        x,
        y,
        epochs=5,
        optimizer=SGD(0.1),
        x_test=x,
        y_test=y,
        early_stop=2,
        progress=False,
        log=None,
    )
    assert history["epoch"] == [1, 2, 3, 4]  # best at 2, two worse epochs, stop
    for key, value in net.state_arrays().items():
        np.testing.assert_array_equal(value, snapshots[1][key])


def test_fit_bad_arguments():
    x, y = separable_data(8)
    net = build_network("small", seed=0)
    with pytest.raises(ValueError, match="epochs must be a non-negative integer"):
        fit(net, x, y, epochs=-1, optimizer=SGD(0.1))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        fit(net, x, y, epochs=1, optimizer=SGD(0.1), batch_size=0)
    with pytest.raises(ValueError, match="x has 8 samples but y has 7"):
        fit(net, x, y[:7], epochs=1, optimizer=SGD(0.1))


def test_last_partial_batch_is_trained():
    x, y = separable_data(70)
    net = Sequential([Flatten(), Dense(784, 10, rng=np.random.default_rng(0))])
    steps = []
    original = net.train_step
    net.train_step = lambda xb, yb, opt: steps.append(len(xb)) or original(xb, yb, opt)
    fit(net, x, y, epochs=1, optimizer=SGD(0.1), batch_size=32, progress=False, log=None)
    assert steps == [32, 32, 6]


# ---- checkpoints ------------------------------------------------------------------------------
def test_checkpoint_round_trip_keeps_weights_buffers_optimizer_and_rng(tmp_path):
    x, y = separable_data(64)
    net = build_network("deep", seed=2)
    opt = Adam(1e-3, weight_decay=1e-4)
    fit(net, x, y, epochs=1, optimizer=opt, progress=False, log=None)
    net.save(tmp_path / "c.npz", optimizer=opt, note="hello")
    loaded, opt2 = load_network(tmp_path / "c.npz", with_optimizer=True)
    for key, value in net.state_arrays().items():
        np.testing.assert_array_equal(loaded.state_arrays()[key], value)
    assert loaded.meta["note"] == "hello" and loaded.meta["arch"] == "deep"
    assert opt2.t == opt.t and opt2.weight_decay == 1e-4 and type(opt2) is Adam
    assert loaded.rng.random() == net.rng.random()
    np.testing.assert_array_equal(loaded.predict_proba(x), net.predict_proba(x))
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_checkpoint_of_the_legacy_seed_architecture_still_loads(tmp_path):
    """Checkpoints written before the rename say arch "seed": they load as "small"."""
    x, _ = separable_data(4)
    net = build_network("small", seed=3)
    net.save(tmp_path / "new.npz", args={"arch": "small", "epochs": 1})
    with np.load(tmp_path / "new.npz") as saved:
        arrays = dict(saved)
    meta = json.loads(str(arrays["meta"]))
    meta["arch"], meta["args"]["arch"] = "seed", "seed"
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "old.npz", **arrays)

    loaded = load_network(tmp_path / "old.npz")
    assert loaded.meta["arch"] == "small" and loaded.meta["args"]["arch"] == "small"
    np.testing.assert_array_equal(loaded.predict_proba(x), net.predict_proba(x))
    with pytest.raises(ValueError, match="unknown architecture 'seed'"):
        build_network("seed")  # the old name is for reading checkpoints only


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint", "not a readable convbench checkpoint"),
        (bytes(range(256)) * 8, "checkpoint: not a valid .npz archive"),
        (None, "does not exist"),
    ],
)
def test_unreadable_checkpoint_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
        load_network(path)
    assert "pickle" not in str(info.value)


# ---- the CLI ----------------------------------------------------------------------------------
def run_cli(capsys, *argv):
    code = train_cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_prints_the_run_and_writes_every_output(capsys, tmp_path, small_mnist_dir):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys,
        "--data-dir",
        small_mnist_dir,
        "--epochs",
        2,
        "--out",
        out,
        "--no-progress",
        "--batch-size",
        32,
    )
    assert code == 0
    lines = stdout.splitlines()
    order = [
        "Loading MNIST dataset...",
        "Dataset loaded successfully!",
        "Epoch 1/2: Train Loss:",
        "Epoch 2/2: Train Loss:",
        "Total time:",
        "Mean epoch time:",
        "Outputs written to",
        "Experiment completed!",
    ]
    positions = [next(i for i, line in enumerate(lines) if line.startswith(text)) for text in order]
    assert positions == sorted(positions)
    assert "Test Acc:" in lines[positions[2]] and "Time:" in lines[positions[2]]
    assert "LR: 0.05," in lines[positions[2]] and "LR: 0.025," in lines[positions[3]]  # cosine
    assert "2 epochs (training, test evaluation" in lines[positions[4]]
    assert "training pass alone" in lines[positions[5]]
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [1, 2]
    assert (out / "history.csv").read_text().splitlines()[0].startswith("epoch,lr,train_loss")
    for name in ("last.npz", "best.npz", "predictions.png", "history.png"):
        assert (out / name).stat().st_size > 0, name
    import matplotlib.image

    assert matplotlib.image.imread(out / "history.png").ndim == 3


def test_resume_matches_an_uninterrupted_run(capsys, tmp_path, small_mnist_dir):
    common = [
        "--data-dir",
        small_mnist_dir,
        "--no-progress",
        "--batch-size",
        32,
        "--optimizer",
        "adam",
        "--augment",
        "--arch",
        "deep",
        "--schedule",
        "cosine",
        "--standardize",
    ]
    assert run_cli(capsys, *common, "--epochs", 3, "--out", tmp_path / "straight")[0] == 0
    assert run_cli(capsys, *common, "--epochs", 1, "--out", tmp_path / "part")[0] == 0
    code, stdout, _ = run_cli(
        capsys,
        "--resume",
        tmp_path / "part" / "last.npz",
        "--epochs",
        3,
        "--out",
        tmp_path / "part",
        "--no-progress",
        "--data-dir",
        small_mnist_dir,
    )
    assert code == 0 and "Resuming" in stdout
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())
    resumed = json.loads((tmp_path / "part" / "history.json").read_text())
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-6), key
    a = load_network(tmp_path / "straight" / "last.npz").state_arrays()
    b = load_network(tmp_path / "part" / "last.npz").state_arrays()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-7)


def test_ctrl_c_saves_a_checkpoint_and_the_history(capsys, tmp_path, small_mnist_dir, monkeypatch):
    calls = []
    original = training._train_epoch

    def interrupted_in_epoch_two(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(training, "_train_epoch", interrupted_in_epoch_two)
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys, "--data-dir", small_mnist_dir, "--epochs", 3, "--out", out, "--no-progress"
    )
    assert code == 130 and "Interrupted" in stdout
    assert json.loads((out / "history.json").read_text())["epoch"] == [1]
    assert load_network(out / "interrupted.npz").meta["interrupted"] is True
    assert load_network(out / "last.npz").meta["epoch"] == 1


def test_nan_loss_in_the_cli_names_epoch_and_lr_and_says_no_checkpoint_yet(
    capsys, tmp_path, small_mnist_dir
):
    out = tmp_path / "run"
    code, _, stderr = run_cli(
        capsys,
        "--data-dir",
        small_mnist_dir,
        "--epochs",
        3,
        "--out",
        out,
        "--no-progress",
        "--optimizer",
        "sgd",
        "--lr",
        "1e30",
    )
    assert code == 1
    assert "at epoch 1" in stderr and "batch" in stderr and "learning rate 1e+30" in stderr
    assert "No checkpoint was written yet" in stderr and not (out / "last.npz").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "-1"], "argument --epochs: must be a non-negative integer, got -1"),
        (["--epochs", "two"], "argument --epochs: must be a non-negative integer, got 'two'"),
        (["--batch-size", "0"], "must be a positive integer"),
        (["--backend", "cuda"], "invalid choice: 'cuda'"),
        (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
        (["--lr", "-0.1"], "argument --lr: must be a number > 0, got -0.1"),
        (["--lr", "inf"], "argument --lr: must be a number > 0, got inf"),
        (["--early-stop", "0"], "argument --early-stop: must be a positive integer, got 0"),
    ],
)
def test_cli_rejects_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        train_cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and err.count("\n") == 1


def test_cli_step_schedule_knobs_and_the_lr_in_each_epoch_line(capsys, tmp_path, small_mnist_dir):
    common = ["--data-dir", small_mnist_dir, "--no-progress", "--epochs", 3, "--lr", 0.04]
    code, stdout, _ = run_cli(
        capsys,
        *common,
        *("--schedule", "step", "--step-epochs", 1, "--step-factor", 0.5),
        *("--out", tmp_path / "step"),
    )
    assert code == 0
    history = json.loads((tmp_path / "step" / "history.json").read_text())
    assert history["lr"] == pytest.approx([0.04, 0.02, 0.01])
    epoch_lines = [line for line in stdout.splitlines() if line.startswith("Epoch ")]
    assert [line.split("LR: ")[1].split(",")[0] for line in epoch_lines] == ["0.04", "0.02", "0.01"]
    # the default step schedule halves every 10 epochs: constant over 3
    run_cli(capsys, *common, "--schedule", "step", "--out", tmp_path / "default")
    history = json.loads((tmp_path / "default" / "history.json").read_text())
    assert history["lr"] == pytest.approx([0.04] * 3)
    # no schedule, no LR in the epoch lines
    code, stdout, _ = run_cli(capsys, *common, "--schedule", "none", "--out", tmp_path / "none")
    assert code == 0 and "Epoch 1/3:" in stdout and "LR:" not in stdout


def test_cli_passes_augmentation_amounts_clipping_and_warmup(
    capsys, tmp_path, small_mnist_dir, monkeypatch
):
    amounts, rates = set(), []
    original_augment = training.augment_batch
    original_step = Sequential.train_step

    def recording_augment(x, rng, max_shift, max_degrees):
        amounts.add((max_shift, max_degrees))
        return original_augment(x, rng, max_shift, max_degrees)

    def recording_step(self, xb, yb, optimizer):
        rates.append(optimizer.lr)
        return original_step(self, xb, yb, optimizer)

    monkeypatch.setattr(training, "augment_batch", recording_augment)
    monkeypatch.setattr(Sequential, "train_step", recording_step)
    out = tmp_path / "run"
    code, _, _ = run_cli(
        capsys,
        *("--data-dir", small_mnist_dir, "--no-progress", "--epochs", 1, "--out", out),
        *("--augment", "--max-shift", 3, "--max-degrees", 5, "--clip-value", 0.01),
        *("--warmup-steps", 2, "--lr", 0.04, "--schedule", "none"),
    )
    assert code == 0 and amounts == {(3, 5.0)}
    assert rates == pytest.approx([0.02, 0.04, 0.04, 0.04])  # 200 images = 4 batches of 64
    _, optimizer = load_network(out / "last.npz", with_optimizer=True)
    assert optimizer.clip_value == 0.01 and optimizer.clip_norm is None


def test_cli_early_stop_patience_defaults_to_five():
    parse = train_cli.build_parser().parse_args
    assert parse([]).early_stop is None
    assert parse(["--early-stop"]).early_stop == 5
    assert parse(["--early-stop", "2", "--epochs", "4"]).early_stop == 2


def test_cli_unreadable_checkpoint_and_missing_data(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("garbage")
    code, _, err = run_cli(capsys, "--resume", bad, "--data-dir", tmp_path)
    assert code == 2 and "not a readable convbench checkpoint" in err
    code, _, err = run_cli(capsys, "--data-dir", tmp_path / "nowhere")
    assert code == 2 and "nowhere" in err


@pytest.mark.slow
def test_real_mnist_2000_images_reach_90_percent_in_two_epochs(capsys, tmp_path, mnist_dir):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys,
        "--data-dir",
        mnist_dir,
        "--train-limit",
        2000,
        "--epochs",
        2,
        "--batch-size",
        32,
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0
    history = json.loads((out / "history.json").read_text())
    assert history["test_acc"][-1] >= 0.90, stdout


# Every documented training flag alone, on the defaults otherwise, must train: 2,000 real images,
# 2 epochs, batch 32, >= 85% test accuracy (the defaults reach about 92%).
FLAGS = [
    (),
    ("--standardize",),
    ("--augment",),
    ("--weight-decay", "5e-4"),
    ("--clip-norm", "1"),
    ("--clip-value", "0.01"),
    ("--schedule", "step"),
    ("--schedule", "none"),
    ("--early-stop",),
    ("--optimizer", "adam"),
    ("--optimizer", "sgd"),
    ("--optimizer", "momentum"),
    ("--dtype", "float64"),
]


@pytest.mark.slow
@pytest.mark.parametrize("flags", FLAGS, ids=[" ".join(f) or "defaults" for f in FLAGS])
def test_every_flag_alone_trains_on_real_mnist(capsys, tmp_path, mnist_dir, flags):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(
        capsys,
        *("--data-dir", mnist_dir, "--train-limit", 2000, "--epochs", 2, "--batch-size", 32),
        *("--backend", "im2col", "--out", out, "--no-progress"),
        *flags,
    )
    assert code == 0, stderr
    accuracy = json.loads((out / "history.json").read_text())["test_acc"][-1]
    print(f"{' '.join(flags) or 'defaults'}: test accuracy {accuracy:.4f}")
    assert accuracy >= 0.85, stdout


@pytest.mark.parametrize("autotune", ["off", "fresh"])
def test_cli_auto_backend_reports_and_records_its_choices(
    capsys, tmp_path, small_mnist_dir, autotune
):
    from kernels import auto

    auto.configure(cache_dir=tmp_path / "autotune")  # never the user's cache
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys,
        "--data-dir",
        small_mnist_dir,
        "--epochs",
        1,
        "--out",
        out,
        "--no-progress",
        "--backend",
        "auto",
        "--autotune",
        autotune,
        "--compile",
        "wait",  # auto chooses during this short run, not after a background compile
    )
    assert code == 0
    assert "auto backend choices" in stdout
    source = "rule" if autotune == "off" else "timed"
    assert f"({source})" in stdout
    recorded = json.loads((out / "history.json").read_text())["autotune"]
    assert any(key.startswith("conv2d") for key in recorded)
    assert all(r["source"] == source for r in recorded.values())
    auto.configure(mode="off")


def test_the_test_set_is_evaluated_at_the_training_batch_where_a_layer_runs_on_auto():
    """auto has timed the training batch's shapes: evaluating at that batch reuses them rather
    than timing every layer again at evaluate()'s default batch."""
    from types import SimpleNamespace

    from model import training

    def net(*backends):
        return SimpleNamespace(layers=[SimpleNamespace(backend_name=b) for b in backends])

    assert training._evaluation_batch(net("numba", None, "auto"), 64) == 64
    assert training._evaluation_batch(net("numba", None), 64) == training.EVALUATION_BATCH
