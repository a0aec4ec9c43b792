"""`fitconv train --framework torch|keras`: the lab's fit in PyTorch and Keras follows ours."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.convfit import fit_conv, generate_data
from model.convfit_frameworks import fit_conv_framework
from model.fitconv import main
from model.npyfiles import INPUT_FILE, TARGET_FILE, TRUE_KERNELS_FILE, bias_path, save_npy

REPO = Path(__file__).resolve().parents[1]
PACKAGE = {"torch": "torch", "keras": "keras"}
EPOCH_LINE = re.compile(r"^Epoch (\d+): avg loss (\S+), lr (\S+), time \d+\.\d{3}s$")


def need(framework):
    if framework == "numpy":
        return
    pytest.importorskip(
        PACKAGE[framework], reason=f"{framework} not installed (pip install -e '.[peers]')"
    )


def run_main(capsys, argv):
    """main(argv) -> (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def write_lab_files(folder, from_kernels=True):
    """`fitconv generate` files in folder: input (12, 2, 6, 6), target (12, 2, 5, 5)."""
    data = generate_data(
        samples=12, channels=2, size=6, kernels=2, kernel_size=2, seed=1, from_kernels=from_kernels
    )
    for name, key in (
        (INPUT_FILE, "input"),
        (TARGET_FILE, "target"),
        (TRUE_KERNELS_FILE, "kernels"),
    ):
        if key in data:
            save_npy(folder / name, data[key])
    return data


@pytest.fixture
def lab_files(tmp_path):
    return tmp_path, write_lab_files(tmp_path)


# (train options, the same as fit_conv arguments, targets from known kernels?)
VARIANTS = {
    "sgd": ([], {}, True),
    "sgd-bias-batches": (
        ["--bias", "--batch-size", 5, "--no-shuffle", "--seed", 3],
        {"bias": True, "batch_size": 5, "shuffle": False, "seed": 3},
        True,
    ),
    # Uniform [0, 1) targets, which a ReLU can reach; seed 2 starts both kernels alive.
    "adam-relu-bias": (
        ["--optimizer", "adam", "--relu", "--bias", "--seed", 2],
        {"optimizer": "adam", "relu": True, "bias": True, "seed": 2},
        False,
    ),
}


@pytest.mark.parametrize("framework", ["numpy", "torch", "keras"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_framework_train_follows_ours(capsys, tmp_path, framework, variant):
    need(framework)
    options, kwargs, from_kernels = VARIANTS[variant]
    data = write_lab_files(tmp_path, from_kernels)
    lr = 0.1 if kwargs.get("optimizer") == "adam" else 0.3
    out = tmp_path / f"kernels_{framework}.npy"
    argv = ["train", "--input", tmp_path / INPUT_FILE, "--target", tmp_path / TARGET_FILE]
    argv += ["--lr", lr, "--epochs", 30, "--framework", framework, "--out", out, *options]
    code, stdout, err = run_main(capsys, argv)
    assert code == 0, err
    lines = stdout.splitlines()
    matches = [EPOCH_LINE.match(line) for line in lines[:30]]
    assert all(matches), lines[:3]
    assert all(m.group(1) == str(e) and m.group(3) == f"{lr:g}" for e, m in enumerate(matches, 1))
    losses = [float(m.group(2)) for m in matches]
    ours = fit_conv(data["input"], data["target"], None, None, lr=lr, epochs=30, **kwargs)

    # Same start, same order, same update: the same path up to rounding and the printed digits
    # (Keras's Adam adds eps before the bias correction, ours and PyTorch's after it).
    tol = 1e-4 if variant.startswith("adam") and framework == "keras" else 1e-6
    np.testing.assert_allclose(losses, ours.losses, rtol=max(tol, 2e-5))
    kernels = np.load(out)
    assert kernels.shape == (2, 2, 2, 2) and kernels.dtype == np.float64
    assert f"saved kernels (2, 2, 2, 2) float64 to {out}" in stdout
    np.testing.assert_allclose(kernels, ours.kernels, atol=tol)
    if kwargs.get("bias"):
        np.testing.assert_allclose(np.load(bias_path(out)), ours.bias, atol=tol)
        assert f"to {bias_path(out)}" in stdout
    else:
        assert not bias_path(out).exists()
    if variant == "sgd":  # per-sample SGD recovers the kernels that made the targets
        assert losses[-1] < 1e-5 * losses[0]
        np.testing.assert_allclose(kernels, data["kernels"], atol=1e-3)
    elif variant == "adam-relu-bias":  # down to about the targets' variance, 1/12
        assert losses[-1] < 0.09 < 0.15 < losses[0]
    else:  # batches of 5 take 5x fewer steps
        assert losses[-1] < 1e-2 * losses[0]


def test_torch_fit_keeps_float32_and_reports_divergence():
    need("torch")
    data = generate_data(samples=6, channels=2, size=6, kernels=2, kernel_size=2, seed=0)
    x32, t32 = data["input"].astype(np.float32), data["target"].astype(np.float32)
    fit = fit_conv_framework("torch", x32, t32, None, None, lr=0.1, epochs=2, bias=True)
    assert fit.kernels.dtype == np.float32 and fit.bias.dtype == np.float32
    ours = fit_conv(x32, t32, None, None, lr=0.1, epochs=2, bias=True)
    np.testing.assert_allclose(fit.losses, ours.losses, rtol=1e-4)
    with pytest.raises(FloatingPointError, match="training diverged in epoch 1"):
        fit_conv_framework("torch", x32, t32, None, None, lr=1e9, epochs=3)


@pytest.mark.parametrize("framework, module", [("torch", "torch"), ("keras", "keras")])
def test_missing_framework_is_one_line_naming_the_peers_extra(
    capsys, monkeypatch, lab_files, framework, module
):
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ImportError
    folder, _ = lab_files
    argv = ["train", "--input", folder / INPUT_FILE, "--target", folder / TARGET_FILE]
    code, _, err = run_main(capsys, [*argv, "--framework", framework, "--out", folder / "k.npy"])
    assert code == 2 and err.count("\n") == 1
    assert f"framework '{framework}' needs" in err and 'pip install -e ".[peers]"' in err
    assert not (folder / "k.npy").exists()


def test_backend_is_for_numpy_only_and_framework_names_are_checked(capsys, lab_files):
    folder, _ = lab_files
    argv = ["train", "--input", folder / INPUT_FILE, "--target", folder / TARGET_FILE]
    code, _, err = run_main(capsys, [*argv, "--framework", "torch", "--backend", "im2col"])
    assert code == 2 and "--backend applies only to --framework numpy, not torch" in err
    code, _, err = run_main(capsys, [*argv, "--framework", "jax"])
    assert code == 2 and "argument --framework: invalid choice: 'jax'" in err
    with pytest.raises(ValueError, match="framework must be one of torch, keras"):
        fit_conv_framework("numpy", np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 1, 1)), 1, 2, 0.1, 1)


def test_the_lab_never_imports_a_framework_it_does_not_use():
    code = (
        "import sys, model.fitconv, model.convfit_frameworks, model.labconv\n"
        "model.fitconv.main(['demo'])\n"
        "print(sorted({'torch', 'tensorflow', 'keras'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
