"""The same run in PyTorch or Keras (model/frameworks/, `model.train --framework`): translated
networks compute our logits from our weights, framework runs write the histories and checkpoints
a NumPy run writes, and `python -m model.plots compare` draws them together."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from model_helpers import separable_data, write_mnist_dir

from model import frameworks
from model import plots as plots_cli
from model import train as train_cli
from model.network import build_network, load_network
from model.optim import make_optimizer

REPO = Path(__file__).resolve().parents[1]
SPECS = [
    "small",
    "deep",
    "conv(6,3,pad=same,bias=false),bn,relu,avgpool(2),conv(8,3,stride=2),maxpool(2,stride=1),"
    "relu,flatten,dense(20),bn,relu,dropout(0.25),dense(10)",
]
INSTALLED = {
    "torch": importlib.util.find_spec("torch") is not None,
    "keras": importlib.util.find_spec("tensorflow") is not None,
}


def needs(framework):
    return pytest.mark.skipif(
        not INSTALLED[framework], reason=f"{framework} is an optional peer (the peers extra)"
    )


def framework_logits(framework, model, x):
    if framework == "torch":
        import torch

        from model.frameworks.torch_net import _nchw

        model.model.eval()
        with torch.no_grad():
            return model.model(_nchw(x)).numpy()
    return model.model(x, training=False).numpy()


@pytest.mark.parametrize("framework", [pytest.param(f, marks=needs(f)) for f in ("torch", "keras")])
@pytest.mark.parametrize("spec", SPECS, ids=["small", "deep", "every-layer"])
def test_the_translation_computes_our_logits(framework, spec):
    x, _ = separable_data(16, seed=1)
    net = build_network(spec, seed=0)
    model = frameworks.framework_model(framework, net, make_optimizer("adam"), seed=0)
    np.testing.assert_allclose(framework_logits(framework, model, x), net.forward(x), atol=1e-5)
    # and the weights come back unchanged
    before = {k: v.copy() for k, v in net.state_arrays().items()}
    model.copy_back(net)
    for key, value in net.state_arrays().items():
        np.testing.assert_allclose(value, before[key], rtol=1e-6, err_msg=key)


@pytest.mark.parametrize("framework", [pytest.param(f, marks=needs(f)) for f in ("torch", "keras")])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_a_changing_learning_rate_updates_as_ours_does(framework, optimizer):
    """Warmup and the schedules change the rate every step: Keras's SGD folds the rate into its
    velocity, ours and PyTorch's apply it at the step, so only the same rule gives the same run."""
    x, y = separable_data(64, seed=2, dtype=np.float64)
    ours = build_network("small", seed=0, dtype="float64")
    theirs_net = build_network("small", seed=0, dtype="float64")
    ours_opt = make_optimizer(optimizer, lr=0.01)
    model = frameworks.framework_model(framework, theirs_net, make_optimizer(optimizer), seed=0)
    for step, lr in enumerate([0.002, 0.01, 0.05, 0.05, 0.02, 0.004]):
        xb, yb = x[16 * (step % 4) : 16 * (step % 4 + 1)], y[16 * (step % 4) : 16 * (step % 4 + 1)]
        ours_opt.lr = lr
        ours.train_step(xb, yb, ours_opt)
        model.step(xb, yb, lr)
    model.copy_back(theirs_net)
    # Adam moves a weight whose gradient is near eps (1e-8) by lr * g / (|g| + eps): there
    # TensorFlow's other summation order, a relative 1e-3 in a gradient that nearly cancels,
    # shows as 1e-5 in the weight (the gradients themselves agree to 1e-8)
    tolerance = 1e-4 if (framework, optimizer) == ("keras", "adam") else 1e-9
    for key, value in ours.state_arrays().items():
        moved = np.abs(value - build_network("small", seed=0, dtype="float64").state_arrays()[key])
        assert moved.max() > 0, key  # the comparison is of weights that changed
        np.testing.assert_allclose(
            theirs_net.state_arrays()[key], value, atol=tolerance, err_msg=key
        )


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    return write_mnist_dir(tmp_path_factory.mktemp("mnist"))


def run(capsys, mnist_dir, out, framework):
    code = train_cli.main(
        ["--framework", framework, "--arch", "deep", "--optimizer", "adam", "--epochs", "2"]
        + ["--data-dir", str(mnist_dir), "--no-progress", "--out", str(out), "--augment"]
    )
    return code, capsys.readouterr()


@pytest.mark.parametrize("framework", [pytest.param(f, marks=needs(f)) for f in ("torch", "keras")])
def test_a_framework_run_writes_what_a_numpy_run_writes(capsys, tmp_path, mnist_dir, framework):
    code, _ = run(capsys, mnist_dir, tmp_path / "numpy", "numpy")
    assert code == 0
    code, printed = run(capsys, mnist_dir, tmp_path / framework, framework)
    assert code == 0, printed.err
    label = {"torch": "PyTorch", "keras": "Keras"}[framework]
    assert f"Model: deep on {label}, float32" in printed.out
    assert sum(line.startswith("Epoch ") for line in printed.out.splitlines()) == 2
    ours = json.loads((tmp_path / "numpy" / "history.json").read_text())
    theirs = json.loads((tmp_path / framework / "history.json").read_text())
    assert set(theirs) == set(ours) | {"framework"} and theirs["framework"] == framework
    assert theirs["lr"] == ours["lr"] and theirs["epoch"] == [1, 2]
    assert theirs["test_acc"][-1] > 0.5  # it learned (the tiny data is separable)
    net = load_network(tmp_path / framework / "last.npz")
    assert net.evaluate(*_test_set(mnist_dir))[1] == pytest.approx(theirs["test_acc"][-1], abs=0.02)
    out = tmp_path / "compare.png"
    code = plots_cli.main(
        ["compare", str(tmp_path / "numpy"), str(tmp_path / framework), "--out", str(out)]
    )
    assert code == 0 and matplotlib.image.imread(out).shape[0] > 100


def _test_set(mnist_dir):
    from model.batches import scale
    from model.mnist import load_mnist

    data = load_mnist(mnist_dir, progress=False)
    return scale(data.x_test), data.y_test.astype(np.intp)


def test_a_missing_framework_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    with pytest.raises(
        RuntimeError, match=r'--framework torch needs torch.*pip install -e "\.\[peers\]"'
    ):
        frameworks.framework_model("torch", build_network("small"), make_optimizer("sgd"), 0)


def test_flags_a_framework_run_cannot_honour_are_refused(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--framework", "torch", "--clip-norm", "1", "--early-stop"])
    assert "--framework torch does not support --clip-norm, --early-stop" in capsys.readouterr().err


def test_compare_needs_run_directories(capsys, tmp_path):
    assert plots_cli.main(["compare", str(tmp_path)]) == 2
    assert "has no history.json" in capsys.readouterr().err


@needs("keras")
def test_tensorflow_is_imported_without_its_start_up_lines():
    code = "from model.tensorflow_import import import_tensorflow; import_tensorflow()"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
        timeout=300,
    )
    assert done.returncode == 0 and done.stderr == "" and done.stdout == ""
