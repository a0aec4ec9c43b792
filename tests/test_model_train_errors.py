"""What python -m model.train does when something goes wrong: an unwritable --out, a diverging
or NaN loss, a bad $CONVBENCH_AUTOTUNE, a --resume that cannot continue (docs/robustness.md)."""

import os
import warnings

import numpy as np
import pytest
from model_helpers import write_mnist_dir

from model import train as train_cli
from model.network import Sequential, build_network, load_network


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A generated MNIST-format directory: 200 training images = 4 batches of 64."""
    return write_mnist_dir(tmp_path_factory.mktemp("mnist"))


def run_cli(capsys, *argv):
    code = train_cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def quick(data_dir, out, *more):
    return ("--data-dir", data_dir, "--out", out, "--no-progress", *more)


# ---- --out is checked before any training ------------------------------------------------------
def test_out_that_is_a_file_fails_at_once(capsys, tmp_path, data_dir):
    blocker = tmp_path / "taken"
    blocker.write_text("")
    for out, message in (
        (blocker, "is a file, not a directory"),
        (blocker / "run", "cannot be created"),
    ):
        code, stdout, err = run_cli(capsys, *quick(data_dir, out))
        assert code == 2 and message in err and str(out) in err and err.count("\n") == 1
        assert "Loading MNIST" not in stdout and "Epoch" not in stdout


def test_out_without_write_permission_fails_at_once(capsys, tmp_path, data_dir, monkeypatch):
    out = tmp_path / "locked"
    out.mkdir()
    real_access = os.access

    def no_write_here(path, mode, *args, **kwargs):
        if os.fspath(path) == str(out) and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", no_write_here)
    code, stdout, err = run_cli(capsys, *quick(data_dir, out))
    assert code == 2 and "is not writable" in err and err.count("\n") == 1
    assert "Loading MNIST" not in stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory anyway")
def test_read_only_out_fails_at_once(capsys, tmp_path, data_dir):
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, stdout, err = run_cli(capsys, *quick(data_dir, out))
    finally:
        out.chmod(0o755)
    assert code == 2 and "is not writable" in err and "Loading MNIST" not in stdout


def test_outputs_follow_the_umask(capsys, tmp_path, data_dir):
    old = os.umask(0o022)
    try:
        code, _, _ = run_cli(capsys, *quick(data_dir, tmp_path / "run", "--epochs", 1))
    finally:
        os.umask(old)
    assert code == 0
    for name in ("last.npz", "history.json", "predictions.png"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name


# ---- divergence and NaN ------------------------------------------------------------------------
def test_exploding_loss_stops_naming_the_learning_rate(capsys, tmp_path, data_dir):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys, *quick(data_dir, out, "--lr", "1e6", "--epochs", 2, "--schedule", "none")
    )
    assert code == 1 and "Experiment completed" not in stdout
    assert "times the first step's" in err and "learning rate 1e+06" in err
    assert "No checkpoint was written yet" in err and not (out / "last.npz").exists()


def test_divergence_after_an_epoch_keeps_its_checkpoint(capsys, tmp_path, data_dir, monkeypatch):
    steps = []
    original = Sequential.train_step

    def explodes_in_epoch_two(self, xb, yb, optimizer):
        loss, correct = original(self, xb, yb, optimizer)
        steps.append(1)
        return (loss * 1e7 if len(steps) > 4 else loss), correct

    monkeypatch.setattr(Sequential, "train_step", explodes_in_epoch_two)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *quick(data_dir, out, "--epochs", 3))
    assert code == 1 and "at epoch 2, batch 1" in err
    assert f"The last good checkpoint is {out / 'last.npz'}" in err
    assert load_network(out / "last.npz").meta["epoch"] == 1


def test_nan_in_the_first_epoch_says_no_checkpoint_exists(capsys, tmp_path, data_dir):
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the overflow on the way is not reported twice
        code, _, err = run_cli(
            capsys, *quick(data_dir, out, "--optimizer", "sgd", "--lr", "1e30", "--epochs", 2)
        )
    assert code == 1 and "loss became nan" in err and err.count("\n") == 1
    assert "No checkpoint was written yet" in err and "last good" not in err
    assert not (out / "last.npz").exists()


# ---- $CONVBENCH_AUTOTUNE -----------------------------------------------------------------------
@pytest.fixture
def parsed_args(monkeypatch):
    """The args main() hands to run(), without running."""
    seen = []
    monkeypatch.setattr(train_cli, "run", lambda parser, args, comm: seen.append(args) or 0)
    return seen


@pytest.mark.parametrize("value", ["off", "cached", "fresh"])
def test_autotune_default_comes_from_the_environment(monkeypatch, parsed_args, value):
    monkeypatch.setenv("CONVBENCH_AUTOTUNE", value)
    assert train_cli.main([]) == 0 and parsed_args[-1].autotune == value
    assert train_cli.main(["--autotune", "cached"]) == 0 and parsed_args[-1].autotune == "cached"
    monkeypatch.delenv("CONVBENCH_AUTOTUNE")
    assert train_cli.main([]) == 0 and parsed_args[-1].autotune == "cached"


def test_bad_autotune_environment_is_an_error(capsys, monkeypatch, parsed_args):
    monkeypatch.setenv("CONVBENCH_AUTOTUNE", "bogus")
    with pytest.raises(SystemExit) as info:
        train_cli.main([])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "CONVBENCH_AUTOTUNE must be one of" in err
    assert "'bogus'" in err and not parsed_args


# ---- run names -----------------------------------------------------------------------------------
def test_framework_runs_are_named_for_the_framework():
    parse = train_cli.build_parser().parse_args
    assert train_cli.run_name(parse(["--framework", "torch"])).endswith("_small_torch")
    assert train_cli.run_name(parse(["--backend", "numba"])).endswith("_small_numba")
    assert train_cli.run_name(parse(["--arch", "conv(4,3),flatten,dense(10)"])).endswith(
        "_spec_im2col"
    )


# ---- --resume that cannot continue as asked -------------------------------------------------------
@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("one_epoch") / "run"
    assert train_cli.main([str(a) for a in quick(data_dir, out, "--epochs", 1)]) == 0
    return out


def test_resume_with_no_epochs_left_is_an_error(capsys, tmp_path, data_dir, one_epoch_run):
    for epochs in (0, 1):
        code, stdout, err = run_cli(
            capsys,
            *quick(data_dir, tmp_path / "more", "--epochs", epochs),
            *("--resume", one_epoch_run / "last.npz"),
        )
        assert code == 2 and "has 1 epoch done already" in err and "more than 1" in err
        assert "Epoch" not in stdout


def test_resume_from_an_interrupted_checkpoint_says_so(
    capsys, tmp_path, data_dir, one_epoch_run, monkeypatch
):
    net = load_network(one_epoch_run / "last.npz")
    meta = dict(net.meta)
    meta.update(interrupted=True)
    net.meta = meta
    net.save(tmp_path / "interrupted.npz", history=meta["history"], args=meta["args"])
    code, stdout, _ = run_cli(
        capsys,
        *quick(data_dir, tmp_path / "more", "--epochs", 2),
        *("--resume", tmp_path / "interrupted.npz"),
    )
    assert code == 0 and "saved mid-epoch 2" in stdout and "will not match" in stdout
    code, stdout, _ = run_cli(
        capsys,
        *quick(data_dir, tmp_path / "exact", "--epochs", 2),
        *("--resume", one_epoch_run / "last.npz"),
    )
    assert code == 0 and "mid-epoch" not in stdout


def test_resume_from_non_finite_weights_is_an_error(capsys, tmp_path, data_dir):
    net = build_network("small")
    net.layers[0].params["w"][0, 0, 0, 0] = np.nan
    net.save(tmp_path / "nan.npz", history={"epoch": []}, args={})
    code, stdout, err = run_cli(
        capsys, *quick(data_dir, tmp_path / "more"), "--resume", tmp_path / "nan.npz"
    )
    assert code == 2 and "NaN or infinite" in err and "Epoch" not in stdout
    assert err.count("\n") == 1


# ---- data and checkpoints that are not what they should be ---------------------------------------
def test_data_dir_that_is_a_file_or_empty(capsys, tmp_path):
    a_file = tmp_path / "mnist.npz"
    a_file.write_bytes(b"")
    code, _, err = run_cli(capsys, "--data-dir", a_file, "--out", tmp_path / "run")
    assert code == 2 and "(--data-dir) is a file, not a directory" in err
    assert "does not exist" not in err and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "--data-dir", empty, "--out", tmp_path / "run")
    assert code == 2 and "(--data-dir) lacks" in err and "(data_dir)" not in err
    assert err.count("t10k-labels-idx1-ubyte") == 1


def test_random_bytes_as_a_checkpoint_are_not_called_a_pickle(capsys, tmp_path, data_dir):
    bad = tmp_path / "random.npz"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    code, _, err = run_cli(capsys, *quick(data_dir, tmp_path / "run"), "--resume", bad)
    assert code == 2 and "not a valid .npz archive" in err and "pickle" not in err
