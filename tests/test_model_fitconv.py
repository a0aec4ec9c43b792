"""model.fitconv: the conv lab (fit kernels so that conv2d(input) ~= target) and its CLI."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kernels import available_backends
from model.convfit import FitDiverged, fit_conv, fit_kernels, generate_data
from model.fitconv import main
from model.npyfiles import bias_path

REPO = Path(__file__).resolve().parents[1]


def conv_nchw(x, w):
    """Oracle, independent of the kernels package: valid stride-1 cross-correlation.
    x: (S, C, H, W), w: (K, C, kh, kw) -> (S, K, H-kh+1, W-kw+1)."""
    s, _, h, wd = x.shape
    k, _, kh, kw = w.shape
    y = np.zeros((s, k, h - kh + 1, wd - kw + 1))
    for a in range(kh):
        for b in range(kw):
            y += np.einsum(
                "schw,kc->skhw", x[:, :, a : a + h - kh + 1, b : b + wd - kw + 1], w[:, :, a, b]
            )
    return y


def mse(x, w, t):
    return np.mean((conv_nchw(x, w) - t) ** 2)


# ---- generate_data -------------------------------------------------------------------------------


def test_generate_random_targets_shapes_and_range():
    d = generate_data(samples=5, channels=3, size=9, kernels=4, kernel_size=3, seed=7)
    assert set(d) == {"input", "target"}
    assert d["input"].shape == (5, 3, 9, 9) and d["target"].shape == (5, 4, 7, 7)
    for a in d.values():
        assert a.dtype == np.float64 and a.min() >= 0 and a.max() < 1
    again = generate_data(samples=5, channels=3, size=9, kernels=4, kernel_size=3, seed=7)
    np.testing.assert_array_equal(d["target"], again["target"])


def test_generate_from_kernels_matches_oracle_conv():
    d = generate_data(
        samples=4, channels=2, size=6, kernels=3, kernel_size=2, seed=3, from_kernels=True
    )
    assert d["kernels"].shape == (3, 2, 2, 2)
    np.testing.assert_allclose(
        d["target"], conv_nchw(d["input"], d["kernels"]), rtol=1e-12, atol=1e-12
    )


# ---- the fit -------------------------------------------------------------------------------------


def test_recovers_known_kernels():
    d = generate_data(
        samples=20, channels=2, size=8, kernels=2, kernel_size=2, seed=1, from_kernels=True
    )
    kernels, losses = fit_kernels(
        d["input"],
        d["target"],
        num_kernels=2,
        kernel_size=2,
        lr=0.3,
        epochs=40,
        backend="im2col",
        seed=2,
        dtype="float64",
    )
    assert kernels.shape == (2, 2, 2, 2) and kernels.dtype == np.float64
    assert losses[0] > 1e-3  # the random start is far from the answer
    assert losses[-1] < 1e-8
    np.testing.assert_allclose(kernels, d["kernels"], atol=1e-4, rtol=0)


def test_loss_and_update_follow_the_documented_mse():
    # loss = mean((y - t)^2) over the batch's elements, step = w - lr * d loss / d w
    d = generate_data(samples=3, channels=2, size=5, kernels=2, kernel_size=2, seed=4)
    x, t = d["input"], d["target"]
    w0 = np.random.default_rng(5).standard_normal((2, 2, 2, 2))
    lr = 0.05
    kernels, losses = fit_kernels(x, t, 2, 2, lr, 1, batch_size=3, initial_kernels=w0)
    assert losses[0] == pytest.approx(mse(x, w0, t), rel=1e-12)
    grad = np.zeros_like(w0)
    eps = 1e-6
    for idx in np.ndindex(w0.shape):
        step = np.zeros_like(w0)
        step[idx] = eps
        grad[idx] = (mse(x, w0 + step, t) - mse(x, w0 - step, t)) / (2 * eps)
    np.testing.assert_allclose(kernels, w0 - lr * grad, rtol=1e-7, atol=1e-9)


def test_relu_and_adam_follow_their_definitions():
    # relu: loss = mean((max(y, 0) - t)^2); adam's first step: w - lr * g / (|g| + eps)
    d = generate_data(samples=3, channels=2, size=5, kernels=2, kernel_size=2, seed=4)
    x, t = d["input"], d["target"]
    w0 = np.random.default_rng(5).standard_normal((2, 2, 2, 2))
    assert (conv_nchw(x, w0) < 0).any() and (conv_nchw(x, w0) > 0).any()  # both sides of 0

    def relu_mse(w):
        return np.mean((np.maximum(conv_nchw(x, w), 0) - t) ** 2)

    grad = np.zeros_like(w0)
    eps = 1e-6
    for idx in np.ndindex(w0.shape):
        step = np.zeros_like(w0)
        step[idx] = eps
        grad[idx] = (relu_mse(w0 + step) - relu_mse(w0 - step)) / (2 * eps)
    lr = 0.05
    options = dict(batch_size=3, initial_kernels=w0, relu=True)
    kernels, losses = fit_kernels(x, t, 2, 2, lr, 1, **options)
    assert losses[0] == pytest.approx(relu_mse(w0), rel=1e-12)
    np.testing.assert_allclose(kernels, w0 - lr * grad, rtol=1e-7, atol=1e-9)
    kernels, _ = fit_kernels(x, t, 2, 2, lr, 1, optimizer="adam", **options)
    np.testing.assert_allclose(kernels, w0 - lr * grad / (np.abs(grad) + 1e-8), atol=1e-7)
    with pytest.raises(ValueError, match="optimizer must be one of sgd, adam, got 'rmsprop'"):
        fit_kernels(x, t, 2, 2, lr, 1, optimizer="rmsprop")


def test_epoch_loss_is_the_mean_of_per_sample_losses_before_each_step():
    d = generate_data(samples=2, channels=1, size=4, kernels=1, kernel_size=2, seed=6)
    x, t = d["input"], d["target"]
    w0 = np.full((1, 1, 2, 2), 0.3)
    lr = 0.1
    _, losses = fit_kernels(x, t, 1, 2, lr, 1, initial_kernels=w0, shuffle=False)
    np.testing.assert_array_equal(w0, 0.3)  # the caller's start is not updated in place
    first = mse(x[:1], w0, t[:1])
    y0 = conv_nchw(x[:1], w0)
    grad = np.zeros_like(w0)  # d mean((y-t)^2)/dw for sample 0, by hand
    for a in range(2):
        for b in range(2):
            grad[0, 0, a, b] = np.mean(2 * (y0 - t[:1])[0, 0] * x[0, 0, a : a + 3, b : b + 3])
    second = mse(x[1:], w0 - lr * grad, t[1:])
    assert losses[0] == pytest.approx((first + second) / 2, rel=1e-12)


def test_random_targets_plateau_at_the_best_linear_fit():
    # Lab data: inputs and targets uniform [0, 1) and unrelated. Without a bias the best fit is
    # w = 3/37 everywhere, loss 1/3 - 9/37 = 10/111 ~ 0.0901 (the lab's "about 0.09").
    d = generate_data(samples=100, channels=3, size=28, kernels=2, kernel_size=2, seed=0)
    _, losses = fit_kernels(
        d["input"],
        d["target"],
        num_kernels=2,
        kernel_size=2,
        lr=0.1,
        epochs=6,
        backend="im2col",
        seed=0,
    )
    # The least-squares floor of this very sample, for comparison.
    patches = np.lib.stride_tricks.sliding_window_view(d["input"], (2, 2), axis=(2, 3))
    design = patches.transpose(0, 2, 3, 1, 4, 5).reshape(-1, 12)  # (S*OH*OW, C*kh*kw)
    targets = d["target"].transpose(0, 2, 3, 1).reshape(-1, 2)
    residual = np.linalg.lstsq(design, targets, rcond=None)[1]
    floor = residual.sum() / targets.size
    assert floor == pytest.approx(10 / 111, abs=0.002)
    assert losses[0] > losses[1] > losses[2] > losses[-1]
    assert 0.98 * floor < losses[-1] < 1.02 * floor
    assert abs(losses[-1] - losses[-2]) < 0.005 * losses[-1]


def test_bias_lowers_the_plateau_to_the_target_variance():
    d = generate_data(samples=30, channels=3, size=14, kernels=2, kernel_size=2, seed=0)
    fit = fit_conv(d["input"], d["target"], 2, 2, lr=0.1, epochs=15, bias=True, seed=0)
    no_bias = fit_conv(d["input"], d["target"], 2, 2, lr=0.1, epochs=15, bias=False, seed=0)
    assert fit.bias.shape == (2,) and no_bias.bias is None
    assert fit.losses[-1] < no_bias.losses[-1] - 0.003
    assert fit.losses[-1] == pytest.approx(1 / 12, abs=0.004)
    # the fitted outputs are centred on the targets' mean, 0.5
    predictions = conv_nchw(d["input"], fit.kernels) + fit.bias[:, None, None]
    assert predictions.mean() == pytest.approx(0.5, abs=0.01)


def test_same_seed_same_fit_and_shuffle_changes_the_order():
    d = generate_data(samples=8, channels=2, size=6, kernels=2, kernel_size=2, seed=0)
    args = (d["input"], d["target"], 2, 2, 0.1, 3)
    k1, l1 = fit_kernels(*args, seed=5)
    k2, l2 = fit_kernels(*args, seed=5)
    np.testing.assert_array_equal(k1, k2)
    assert l1 == l2
    _, l_fixed = fit_kernels(*args, seed=5, shuffle=False)
    assert l_fixed[1:] != l1[1:]  # same init, different visiting order


def test_float32_stays_float32():
    d = generate_data(samples=4, channels=2, size=6, kernels=2, kernel_size=2, seed=0)
    x32, t32 = d["input"].astype(np.float32), d["target"].astype(np.float32)
    kernels, _ = fit_kernels(x32, t32, 2, 2, 0.1, 2)
    assert kernels.dtype == np.float32
    kernels, _ = fit_kernels(x32, t32, 2, 2, 0.1, 2, dtype="float64")
    assert kernels.dtype == np.float64
    kernels, _ = fit_kernels((d["input"] * 10).astype(np.int64), t32, 2, 2, 0.001, 1)
    assert kernels.dtype == np.float64  # integer data trains in float64


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 2e-4)])
@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("backend", available_backends())
def test_loss_curve_is_the_same_on_every_backend(backend, dtype, rtol, batch_size):
    # 3x3 kernels, 3 output channels, a bias and a ragged last batch (6 = 4 + 2) exercise
    # every index of the contract; naive is the reference.
    d = generate_data(samples=6, channels=2, size=7, kernels=3, kernel_size=3, seed=9)
    ref, fit = (
        fit_conv(
            d["input"],
            d["target"],
            3,
            3,
            lr=0.05,
            epochs=3,
            backend=name,
            batch_size=batch_size,
            seed=1,
            bias=True,
            dtype=dtype,
        )
        for name in ("naive", backend)
    )
    assert fit.kernels.dtype == np.dtype(dtype) and fit.bias.dtype == np.dtype(dtype)
    assert ref.losses[-1] < ref.losses[0]
    np.testing.assert_allclose(fit.losses, ref.losses, rtol=rtol)
    np.testing.assert_allclose(fit.kernels, ref.kernels, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(fit.bias, ref.bias, rtol=rtol, atol=rtol)


# ---- CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    """Small lab-style files: input (6, 2, 6, 6), target (6, 2, 5, 5), plus odd variants."""
    d = generate_data(samples=6, channels=2, size=6, kernels=2, kernel_size=2, seed=0)
    paths = {
        "input": tmp_path / "input_data.npy",
        "target": tmp_path / "target_output.npy",
        "input3d": tmp_path / "input3d.npy",
        "target3d": tmp_path / "target3d.npy",
        "target5": tmp_path / "target5.npy",
        "text": tmp_path / "input.txt",
        "garbage": tmp_path / "garbage.npy",
        "objects": tmp_path / "objects.npy",
    }
    np.save(paths["input"], d["input"])
    np.save(paths["target"], d["target"])
    np.save(paths["input3d"], d["input"][0])
    np.save(paths["target3d"], d["target"][:, 0])
    np.save(paths["target5"], d["target"][:5])
    np.savetxt(paths["text"], d["input"].reshape(6, -1))
    paths["garbage"].write_bytes(b"this is not a numpy file at all")
    np.save(paths["objects"], np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return paths


def run_main(capsys, argv):
    """main(argv) -> (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def train_argv(files, **overrides):
    opts = {
        "--input": files["input"],
        "--target": files["target"],
        "--kernels": 2,
        "--kernel-size": 2,
        "--lr": 0.1,
        "--epochs": 1,
        "--backend": "im2col",
        "--out": files["input"].parent / "kernels.npy",
    }
    opts.update(overrides)
    argv = ["train"]
    for key, value in opts.items():
        argv += [key, value]
    return argv


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"--input": "missing"}, "--input file not found"),
        ({"--target": "text"}, "--target must be a .npy file"),
        ({"--input": "text"}, "--input must be a .npy file"),
        ({"--input": "garbage"}, "cannot read --input file"),
        ({"--target": "objects"}, "cannot read --target file"),
        ({"--input": "input3d"}, "must hold a 4-D NCHW array, got shape (2, 6, 6)"),
        ({"--target": "target3d"}, "must hold a 4-D NCHW array, got shape (6, 5, 5)"),
        ({"--target": "target5"}, "input has 6 samples but target has 5"),
        ({"--kernel-size": 3}, "expected (4, 4)"),
        ({"--kernels": 3}, "target has 2 channels"),
        ({"--lr": 0}, "argument --lr: must be a number > 0, got 0.0"),
        ({"--lr": -0.5}, "argument --lr: must be a number > 0, got -0.5"),
        ({"--lr": "fast"}, "argument --lr: must be a number > 0, got 'fast'"),
        ({"--epochs": 0}, "argument --epochs: must be a positive integer, got 0"),
        ({"--epochs": 1.5}, "argument --epochs: must be a positive integer, got '1.5'"),
        ({"--batch-size": 0}, "argument --batch-size: must be a positive integer"),
        ({"--backend": "cudnn"}, "unknown backend 'cudnn'"),
        ({"--optimizer": "rmsprop"}, "argument --optimizer: invalid choice: 'rmsprop'"),
        ({"--lr": 1e9, "--epochs": 3}, "training diverged"),
        ({"--out": "nodir/kernels.npy"}, "--out directory does not exist"),
    ],
)
def test_bad_input_gives_one_error_line(capsys, files, overrides, message):
    resolved = {}
    for key, value in overrides.items():
        if key in ("--input", "--target"):
            value = files.get(value, files["input"].parent / f"{value}.npy")
        elif key == "--out":
            value = files["input"].parent / value
        resolved[key] = value
    code, _, err = run_main(capsys, train_argv(files, **resolved))
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("python -m model.fitconv")
    assert not (files["input"].parent / "kernels.npy").exists()


def test_diverging_fit_stops_at_the_first_exploding_epoch_and_names_the_lr():
    d = generate_data(samples=100, channels=3, size=28, kernels=2, kernel_size=2, seed=0)
    seen = []
    with pytest.raises(FitDiverged, match=r"epoch 1 .*learning rate 10 is probably too large"):
        fit_conv(
            d["input"],
            d["target"],
            2,
            2,
            lr=10.0,
            epochs=10,
            callback=lambda *epoch: seen.append(epoch),
        )
    assert len(seen) == 1  # the diverging epoch is reported, and nothing after it runs


def test_cli_prints_a_diverging_fit_compactly(capsys, tmp_path):
    """--lr 10 on the lab's data: the first epoch's loss is ~1e250. It is printed as %.6g (not
    251 digits), the fit stops there with one error line naming the learning rate, and no
    kernels are saved."""
    data = tmp_path / "data"
    assert run_main(capsys, ["generate", "--out", data])[0] == 0
    code, out, err = run_main(
        capsys,
        [
            "train",
            "--input",
            data / "input_data.npy",
            "--target",
            data / "target_output.npy",
            "--lr",
            10,
            "--out",
            tmp_path / "k.npy",
        ],
    )
    assert code == 2
    epoch_lines = [line for line in out.splitlines() if line.startswith("Epoch ")]
    assert len(epoch_lines) == 1 and len(epoch_lines[0]) < 80, epoch_lines
    assert err.count("\n") == 1 and "training diverged in epoch 1" in err
    assert "learning rate 10 is probably too large" in err and len(err) < 250
    assert not (tmp_path / "k.npy").exists()


def test_cli_round_trip_recovers_kernels(capsys, tmp_path):
    data = tmp_path / "data"
    code, out, _ = run_main(
        capsys,
        [
            "generate",
            "--samples",
            20,
            "--channels",
            2,
            "--size",
            8,
            "--kernels",
            2,
            "--kernel-size",
            2,
            "--out",
            data,
            "--seed",
            1,
            "--from-kernels",
        ],
    )
    assert code == 0 and "true_kernels.npy" in out
    saved = tmp_path / "k.npy"
    code, out, _ = run_main(
        capsys,
        [
            "train",
            "--input",
            data / "input_data.npy",
            "--target",
            data / "target_output.npy",
            "--lr",
            0.3,
            "--epochs",
            40,
            "--out",
            saved,
            "--seed",
            2,
        ],
    )
    assert code == 0
    epoch_lines = [line for line in out.splitlines() if line.startswith("Epoch ")]
    assert len(epoch_lines) == 40
    assert epoch_lines[0].startswith("Epoch 1: avg loss ") and ", lr 0.3, time " in epoch_lines[0]
    assert epoch_lines[-1].endswith("s")
    kernels = np.load(saved)
    assert kernels.shape == (2, 2, 2, 2) and kernels.dtype == np.float64
    np.testing.assert_allclose(kernels, np.load(data / "true_kernels.npy"), atol=1e-4, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "k.npy"]  # no temp files left


def test_cli_dtype_and_bias(capsys, files, tmp_path):
    saved = tmp_path / "out32.npy"
    code, _, _ = run_main(
        capsys,
        train_argv(files, **{"--out": saved, "--epochs": 2})
        + ["--dtype", "float32", "--bias", "--batch-size", 4],
    )
    assert code == 0
    assert np.load(saved).dtype == np.float32 and np.load(saved).shape == (2, 2, 2, 2)
    assert np.load(bias_path(saved)).shape == (2,)
    # default dtype follows a float32 input file
    np.save(files["input"], np.load(files["input"]).astype(np.float32))
    code, _, _ = run_main(capsys, train_argv(files, **{"--out": saved}))
    assert code == 0 and np.load(saved).dtype == np.float32


def test_cli_infers_kernel_count_and_size(capsys, files, tmp_path):
    saved = tmp_path / "inferred.npy"
    code, _, _ = run_main(
        capsys,
        [
            "train",
            "--input",
            files["input"],
            "--target",
            files["target"],
            "--epochs",
            1,
            "--out",
            saved,
        ],
    )
    assert code == 0 and np.load(saved).shape == (2, 2, 2, 2)


def test_module_entry_point_help_and_error():
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "model.fitconv", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    helped = run("train", "--help")
    assert helped.returncode == 0
    for option in (
        "--input",
        "--target",
        "--kernels",
        "--kernel-size",
        "--lr",
        "--optimizer",
        "--relu",
        "--epochs",
        "--framework",
        "--backend",
        "--batch-size",
        "--bias",
        "--out",
        "--seed",
        "--dtype",
    ):
        assert option in helped.stdout
    # every option but the two required files states its default
    assert helped.stdout.count("default") >= 14 and helped.stdout.count("required") >= 2
    failed = run("train", "--input", "nowhere.npy", "--target", "nowhere.npy")
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr and failed.stderr.count("\n") == 1
    assert "--input file not found" in failed.stderr
