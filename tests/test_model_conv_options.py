"""Real networks' layers from the model: grouped, depthwise and dilated convolutions, TensorFlow's
uneven "same" padding, padded and ceil_mode pools. The spec language writes them, every backend
runs them to the reference's numbers, checkpoints and model.predict keep them, and
--framework torch / keras translate them to the same function."""

import importlib.util

import numpy as np
import pytest
from kernels_helpers import BACKENDS
from model_helpers import separable_data, write_mnist_dir

from model import predict as predict_cli
from model import train as train_cli
from model.network import build_network, load_network
from model.optim import SGD
from model.spec import check_shapes, parse_spec

# A depthwise-separable block (MobileNet), a channel multiplier, a grouped 1x1, a dilated conv
# padded "same", TensorFlow's uneven "same" (even kernel, stride 2), ResNet's stem pool
# (3x3, stride 2, padding 1) and a ceil_mode average that does not count its padding.
EVERY_OPTION = (
    "conv(8,3,pad=1,bias=false),bn,relu,conv(16,3,pad=1,groups=8),relu,conv(16,1,groups=4),"
    "maxpool(3,stride=2,pad=1),conv(8,3,dilation=2,pad=same),relu,"
    "avgpool(3,stride=2,pad=1,ceil=true,count_pad=false),conv(8,2,stride=2,pad=same),relu,"
    "flatten,dense(10)"
)


def test_the_spec_language_writes_every_option_and_reads_it_back():
    specs = parse_spec(EVERY_OPTION)
    assert specs[3].args["groups"] == 8 and specs[7].args["dilation"] == (2, 2)
    assert specs[9].args["ceil"] is True and specs[9].args["count_pad"] is False
    net = build_network(EVERY_OPTION, backend="naive", seed=0)
    # pad=same on a stride-1 odd span is even on both sides and written as numbers; the even
    # kernel with stride 2 keeps "same" (TensorFlow's extra row and column at the bottom/right)
    assert "conv(8,3,pad=2,dilation=2)" in net.spec and "conv(8,2,stride=2,pad=same)" in net.spec
    assert build_network(net.spec, backend="naive", seed=0).spec == net.spec
    shapes = check_shapes(specs)
    # 28 -> stem pool 14 -> ceil_mode avg pool (14 + 2 - 3 + 1) // 2 + 1 = 8 -> same s2: 4
    assert [shapes[i] for i in (6, 9, 10)] == [(14, 14, 16), (8, 8, 8), (4, 4, 8)]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("conv(8,3,groups=3),flatten,dense(10)", "groups=3 must divide its filters=8"),
        ("conv(4,3),conv(6,3,groups=3),flatten,dense(10)", "layer 2 (conv(6,3,groups=3))"),
        ("conv(8,3,dilation=0),flatten,dense(10)", "conv dilation must be a positive integer"),
        ("conv(8,3),maxpool(2,pad=2),flatten,dense(10)", "at most half the pool size"),
        ("conv(8,3),avgpool(2,ceil=2),flatten,dense(10)", "avgpool ceil must be true or false"),
    ],
)
def test_a_bad_option_names_the_layer_and_what_was_expected(spec, message):
    with pytest.raises(ValueError, match=".*" + __import__("re").escape(message)):
        parse_spec(spec)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "naive"])
def test_every_backend_runs_the_network_as_the_reference_does(backend):
    x, y = separable_data(6, seed=3)
    x = x.astype(np.float64)
    reference = build_network(EVERY_OPTION, backend="naive", dtype=np.float64, seed=1)
    other = build_network(EVERY_OPTION, backend=backend, dtype=np.float64, seed=1)
    np.testing.assert_allclose(other.forward(x), reference.forward(x), rtol=1e-9, atol=1e-12)
    optimizer_a, optimizer_b = SGD(lr=0.05), SGD(lr=0.05)
    reference.train_step(x, y, optimizer_a)
    other.train_step(x, y, optimizer_b)
    for la, lb in zip(reference.layers, other.layers):
        for key in la.params:
            np.testing.assert_allclose(lb.params[key], la.params[key], rtol=1e-9, atol=1e-12)


def test_such_a_network_trains_saves_reloads_and_predicts(tmp_path, capsys):
    (tmp_path / "mnist").mkdir()
    data = write_mnist_dir(tmp_path / "mnist")
    out = tmp_path / "run"
    code = train_cli.main(
        ["--arch", EVERY_OPTION, "--data-dir", str(data), "--epochs", "1", "--no-progress"]
        + ["--out", str(out), "--backend", "im2col"]
    )
    assert code == 0
    net = load_network(out / "last.npz")
    assert net.spec == build_network(EVERY_OPTION, backend="naive").spec
    image = tmp_path / "digit.npy"
    np.save(image, np.zeros((28, 28), np.float32))
    capsys.readouterr()
    assert predict_cli.main(["--checkpoint", str(out / "last.npz"), str(image)]) == 0
    assert "digit.npy: " in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs the peers extra")
def test_torch_translates_every_option_to_the_same_function():
    from model.frameworks import torch_net

    net = build_network(EVERY_OPTION, backend="naive", dtype=np.float64, seed=5)
    x = np.random.default_rng(1).random((3, 28, 28, 1))
    model = torch_net.translate(net).eval()
    theirs = model(torch_net._nchw(x)).detach().numpy()
    np.testing.assert_allclose(theirs, net.forward(x), rtol=1e-10, atol=1e-12)


KERAS_SPEC = EVERY_OPTION.replace("ceil=true,count_pad=false", "ceil=false")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs the peers extra")
def test_keras_translates_every_option_it_has_to_the_same_function():
    from model.frameworks import keras_net

    net = build_network(KERAS_SPEC, backend="naive", dtype=np.float64, seed=5)
    x = np.random.default_rng(1).random((3, 28, 28, 1))
    model, _ = keras_net.translate(net)
    np.testing.assert_allclose(model(x, training=False).numpy(), net.forward(x), rtol=1e-10)
    # what Keras's pools cannot express is one clear error, not a different network
    with pytest.raises(ValueError, match="ceil_mode has no Keras equivalent"):
        keras_net.translate(build_network(EVERY_OPTION, backend="naive", dtype=np.float64))
