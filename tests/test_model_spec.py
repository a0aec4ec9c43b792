"""The layer-spec language (model/spec.py): parsing, canonical text, clear errors, and networks of
every layer type that train, save, reload and predict identically, through the library and the
trainer CLI."""

import numpy as np
import pytest
from model_helpers import separable_data, write_mnist_dir

from model import layers as L
from model import predict as predict_cli
from model import train as train_cli
from model.network import ARCHITECTURES, Sequential, build_network, load_network
from model.optim import SGD
from model.spec import LayerSpec, check_shapes, parse_spec, spec_of

EVERY_LAYER = (
    "conv(6,3,pad=same,bias=false),bn,relu,avgpool(2),conv(8,3,stride=2,init=he),"
    "maxpool(2,stride=1),relu,flatten,dense(20,init=he),bn,relu,dropout(0.25),dense(10)"
)


def test_each_kind_parses_with_its_defaults():
    conv, maxpool, avgpool, bn, relu, flat, drop, dense = parse_spec(
        "conv(4), maxpool, avgpool(3,1), batchnorm, relu, flatten, dropout, dense(10)"
    )
    assert conv == LayerSpec(
        "conv",
        {
            "filters": 4,
            "kernel": (3, 3),
            "stride": (1, 1),
            "pad": (0, 0),
            "dilation": (1, 1),
            "groups": 1,
            "bias": True,
            "init": "uniform",
        },
    )
    assert maxpool.args == {"size": (2, 2), "stride": (2, 2), "pad": (0, 0), "ceil": False}
    assert avgpool.args == {
        "size": (3, 3),
        "stride": (1, 1),
        "pad": (0, 0),
        "ceil": False,
        "count_pad": True,
    }
    assert bn.kind == "bn" and bn.args == {"momentum": 0.9, "eps": 1e-5}
    assert relu.kind == "relu" and flat.kind == "flatten"
    assert drop.args == {"rate": 0.5} and dense.args == {"units": 10, "init": "uniform"}


def test_pairs_options_and_whitespace():
    (conv, *_) = parse_spec(" CONV ( 4 , 3x5 , stride=2x1, pad=1x2 ) ,flatten, dense(10)")
    assert conv.args["kernel"] == (3, 5) and conv.args["stride"] == (2, 1)
    assert conv.args["pad"] == (1, 2)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_named_architectures_are_their_specs_canonical_text(arch):
    net = build_network(arch)
    assert net.spec == ARCHITECTURES[arch]
    assert ",".join(s.text() for s in parse_spec(ARCHITECTURES[arch])) == ARCHITECTURES[arch]
    # the same spec builds the same weights
    again = build_network(ARCHITECTURES[arch])
    for name, array in net.state_arrays().items():
        np.testing.assert_array_equal(array, again.state_arrays()[name])


def test_canonical_text_round_trips_through_built_layers():
    net = build_network(EVERY_LAYER)
    assert net.spec.startswith("conv(6,3,pad=1,bias=false),bn,relu,avgpool(2),")  # same: 1
    assert spec_of(build_network(net.spec).layers) == net.spec
    assert net.layers[0].need_dx is False and net.layers[4].need_dx is True


def test_shapes_follow_the_layers():
    shapes = check_shapes(parse_spec("conv(4,5),maxpool(2),flatten,dense(10)"))
    assert shapes == [(24, 24, 4), (12, 12, 4), (576,), (10,)]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("conv(8,3),pool(2),flatten,dense(10)", "unknown layer 'pool' in 'pool(2)'"),
        ("conv(8,3,padding=1),flatten,dense(10)", "conv has no option 'padding'"),
        ("conv(),flatten,dense(10)", "conv needs filters"),
        ("conv(0,3),flatten,dense(10)", "conv filters must be a positive integer"),
        ("conv(8,3,1,2),flatten,dense(10)", "conv takes at most 2 positional"),
        ("conv(8,kernel=3,5),flatten,dense(10)", "a positional argument follows an option"),
        ("conv(8,3),relu,dense(10)", "layer 3 (dense(10)) needs features; put a flatten"),
        ("flatten,conv(8,3),dense(10)", "layer 2 (conv(8,3)) needs an image"),
        ("conv(8,29),flatten,dense(10)", "window 29x29 is larger than its 28x28 input"),
        ("conv(8,3),flatten,dense(12)", "the last layer must be dense(10)"),
        ("conv(8,3),flatten,dense(10),relu", "must be dense(10) (one logit per digit), got relu"),
        ("conv(8,3),,flatten,dense(10)", "empty layer at position 2"),
        ("conv(8,3,flatten,dense(10)", "unclosed '('"),
        ("dropout(1.5),flatten,dense(10)", "dropout rate must be in [0, 1)"),
        ("conv(8,3,init=xavier),flatten,dense(10)", "conv init must be one of uniform, he"),
        ("conv(8,3,pad=$),flatten,dense(10)", "cannot read the value '$'"),
        ("", "layer spec must be a non-empty string"),
    ],
)
def test_a_bad_spec_names_the_token_and_what_was_expected(spec, message):
    with pytest.raises(ValueError, match="^" + ".*" + __import__("re").escape(message)):
        parse_spec(spec)


def test_an_unknown_single_word_lists_the_named_architectures():
    with pytest.raises(
        ValueError, match="unknown architecture 'medium'; choose one of small, deep"
    ):
        build_network("medium")


def test_every_layer_type_trains_saves_reloads_and_predicts_identically(tmp_path):
    x, y = separable_data(96, seed=4)
    net = build_network(EVERY_LAYER, seed=2)
    before = net.forward(x[:32])
    optimizer = SGD(lr=0.05)
    for i in range(0, 96, 32):
        net.train_step(x[i : i + 32], y[i : i + 32], optimizer)
    assert not np.allclose(net.forward(x[:32]), before)  # it trained
    net.save(tmp_path / "every.npz", optimizer=optimizer)
    loaded, loaded_optimizer = load_network(tmp_path / "every.npz", with_optimizer=True)
    assert loaded.spec == net.spec and loaded_optimizer.t == optimizer.t
    np.testing.assert_array_equal(loaded.predict_proba(x), net.predict_proba(x))
    assert [type(a).__name__ for a in loaded.layers] == [type(b).__name__ for b in net.layers]


def test_a_network_built_by_hand_saves_and_reloads(tmp_path):
    rng = np.random.default_rng(0)
    net = Sequential(
        [
            L.Conv2D(1, 4, 5, stride=2, rng=rng),
            L.ReLU(),
            L.AvgPool2D(2),
            L.Flatten(),
            L.Dense(6 * 6 * 4, 10, rng=rng, init="he"),
        ]
    )
    assert net.spec == "conv(4,5,stride=2),relu,avgpool(2),flatten,dense(10,init=he)"
    net.save(tmp_path / "hand.npz")
    x, _ = separable_data(8, seed=1)
    np.testing.assert_array_equal(load_network(tmp_path / "hand.npz").forward(x), net.forward(x))


def test_the_trainer_and_predict_take_a_spec(capsys, tmp_path):
    (tmp_path / "mnist").mkdir()
    data = write_mnist_dir(tmp_path / "mnist")
    spec = "conv(4,3,pad=1),bn,relu,avgpool(2),flatten,dropout(0.1),dense(10)"
    out = tmp_path / "run"
    code = train_cli.main(
        ["--arch", spec, "--data-dir", str(data), "--epochs", "1", "--no-progress"]
        + ["--out", str(out)]
    )
    assert code == 0 and f"Model: {spec} on backend im2col" in capsys.readouterr().out
    assert load_network(out / "last.npz").spec == spec
    image = tmp_path / "digit.npy"
    np.save(image, np.zeros((28, 28), np.float32))
    assert predict_cli.main(["--checkpoint", str(out / "last.npz"), str(image)]) == 0
    assert "digit.npy: " in capsys.readouterr().out
    # and --resume rebuilds it
    code = train_cli.main(
        ["--resume", str(out / "last.npz"), "--data-dir", str(data), "--epochs", "2"]
        + ["--no-progress", "--out", str(out)]
    )
    assert code == 0 and load_network(out / "last.npz").spec == spec
