"""Layers, losses and the whole network against finite differences (float64); layer behaviour."""

import numpy as np
import pytest
from kernels_helpers import numeric_grad

from model import layers as L
from model.losses import mse, softmax, softmax_cross_entropy
from model.network import Sequential, build_network


def check_layer(layer, x, training=True, rtol=1e-6):
    """Compare a layer's dx and parameter gradients with finite differences of sum(y * r)."""
    rng = np.random.default_rng(1)
    r = rng.standard_normal(layer.forward(x.copy(), training).shape)

    def loss():
        if isinstance(layer, L.Dropout):  # the same mask for every evaluation
            return float((x * layer._mask * r).sum())
        return float((layer.forward(x, training) * r).sum())

    layer.forward(x, training)
    dx = layer.backward(r)
    if dx is not None:
        np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=rtol, atol=rtol)
    for name, p in layer.params.items():
        np.testing.assert_allclose(
            layer.grads[name],
            numeric_grad(loss, p),
            rtol=rtol,
            atol=rtol,
            err_msg=f"{type(layer).__name__}.{name}",
        )


RNG = np.random.default_rng(0)
F64 = np.float64


@pytest.mark.parametrize("backend", ["naive", "im2col", "einsum", "numba"])
def test_conv2d_layer_gradients(backend):
    layer = L.Conv2D(2, 3, 3, stride=2, padding=1, backend=backend, rng=RNG, dtype=F64)
    check_layer(layer, RNG.standard_normal((2, 5, 6, 2)))


@pytest.mark.parametrize("cls", [L.MaxPool2D, L.AvgPool2D])
def test_pool_layer_gradients(cls):
    check_layer(cls(2, backend="im2col"), RNG.standard_normal((2, 4, 6, 3)))


@pytest.mark.parametrize(
    "layer, shape",
    [
        (L.Dense(5, 4, rng=RNG, dtype=F64), (3, 5)),
        (L.ReLU(), (3, 7)),
        (L.Flatten(), (2, 3, 3, 2)),
        (L.BatchNorm(3, dtype=F64), (4, 3)),
        (L.BatchNorm(3, dtype=F64), (2, 3, 2, 3)),
        (L.Dropout(0.4, rng=np.random.default_rng(5)), (4, 6)),
    ],
    ids=["dense", "relu", "flatten", "batchnorm-dense", "batchnorm-conv", "dropout"],
)
def test_layer_gradients(layer, shape):
    check_layer(layer, RNG.standard_normal(shape) + 0.1)


def test_cross_entropy_gradient_is_p_minus_y_over_n():
    logits = RNG.standard_normal((5, 4))
    y = np.array([0, 3, 1, 1, 2])
    loss, grad = softmax_cross_entropy(logits, y)
    onehot = np.eye(4)[y]
    np.testing.assert_allclose(grad, (softmax(logits) - onehot) / 5)
    np.testing.assert_allclose(
        grad, numeric_grad(lambda: softmax_cross_entropy(logits, y)[0], logits), atol=1e-8
    )
    assert loss == pytest.approx(-np.log(softmax(logits)[np.arange(5), y]).mean())
    assert softmax_cross_entropy(logits, onehot)[0] == pytest.approx(loss)


def test_softmax_and_cross_entropy_are_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-3e38, 3e38, 0.0]], dtype=np.float32)
    p = softmax(logits)
    assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1)
    loss, grad = softmax_cross_entropy(logits, np.array([0, 1]))
    assert np.isfinite(loss) and loss == pytest.approx(0.0) and np.isfinite(grad).all()


def test_mse_and_its_gradient():
    pred, target = RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4))
    loss, grad = mse(pred, target)
    assert loss == pytest.approx(((pred - target) ** 2).mean())
    np.testing.assert_allclose(grad, numeric_grad(lambda: mse(pred, target)[0], pred), atol=1e-8)


@pytest.mark.parametrize("arch", ["small", "deep"])
def test_whole_network_gradient_matches_finite_differences(arch):
    """Every parameter of the full architecture, on a small batch in float64 (dropout off by
    replacing it with identity so the loss is a deterministic function of the weights)."""
    net = build_network(arch, backend="im2col", dtype="float64", seed=3)
    net.layers = [L.Dropout(0.0) if isinstance(layer, L.Dropout) else layer for layer in net.layers]
    x = np.random.default_rng(4).random((2, 28, 28, 1))
    y = np.array([3, 7])

    def loss():
        return softmax_cross_entropy(net.forward(x, training=True), y)[0]

    _, dlogits = softmax_cross_entropy(net.forward(x, training=True), y)
    net.backward(dlogits)
    pick = np.random.default_rng(5)
    for key, layer, name in net.parameters():
        p, g = layer.params[name], layer.grads[name]
        # a sample of entries per array keeps the test fast; the full check is per layer above
        for flat in pick.choice(p.size, size=min(p.size, 6), replace=False):
            i = np.unravel_index(flat, p.shape)
            old = p[i]
            p[i] = old + 1e-6
            plus = loss()
            p[i] = old - 1e-6
            minus = loss()
            p[i] = old
            assert g[i] == pytest.approx((plus - minus) / 2e-6, rel=1e-5, abs=1e-8), f"{key}{i}"


def test_first_conv_computes_no_input_gradient():
    net = build_network("small", seed=0)
    assert net.layers[0].need_dx is False
    logits = net.forward(np.zeros((2, 28, 28, 1), np.float32), training=True)
    assert net.backward(np.ones_like(logits)) is None
    assert "w" in net.layers[0].grads


def test_dropout_scales_in_training_and_passes_through_in_eval():
    drop = L.Dropout(0.5, rng=np.random.default_rng(0))
    x = np.ones((1000, 100), np.float32)
    y = drop.forward(x, training=True)
    assert set(np.unique(y)) <= {0.0, 2.0} and abs(y.mean() - 1) < 0.02 and y.dtype == np.float32
    assert drop.forward(x, training=False) is x


def test_batchnorm_normalises_in_training_and_uses_running_stats_in_eval():
    bn = L.BatchNorm(3, momentum=0.0, dtype=F64)
    x = RNG.standard_normal((50, 4, 4, 3)) * 3 + 5
    y = bn.forward(x, training=True)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-10)
    np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1, atol=1e-4)
    # momentum 0: the running statistics are exactly this batch's (variance unbiased)
    np.testing.assert_allclose(bn.buffers["running_mean"], x.mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(bn.buffers["running_var"], x.var(axis=(0, 1, 2), ddof=1))
    y_eval = bn.forward(x[:1], training=False)
    np.testing.assert_allclose(
        y_eval, (x[:1] - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2), ddof=1) + 1e-5)
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("arch", ["small", "deep"])
def test_networks_keep_their_dtype_and_shapes(arch, dtype):
    net = build_network(arch, dtype=dtype, seed=0)
    logits = net.forward(np.zeros((3, 28, 28, 1)), training=True)
    assert logits.shape == (3, 10) and logits.dtype == dtype
    assert all(layer.params[name].dtype == dtype for _, layer, name in net.parameters())
    probs = net.predict_proba(np.zeros((3, 28, 28, 1)))
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert net.predict(np.zeros((3, 28, 28, 1))).shape == (3,)


def test_initialisation_scale_and_seed():
    """small: He-normal weights; deep: PyTorch's default, U(+-1/sqrt(fan_in)) (more in
    tests/test_model_parity.py). One seed fixes every array."""
    a, b = build_network("small", seed=7), build_network("small", seed=7)
    w = a.layers[4].params["w"]  # Dense(3136 -> 128)
    assert w.std() == pytest.approx(np.sqrt(2 / 3136), rel=0.02)
    for (_, la, name), (_, lb, _) in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(la.params[name], lb.params[name])
    c = build_network("small", seed=8)
    assert not np.array_equal(c.layers[4].params["w"], w)
    deep = build_network("deep", seed=7).layers[9].params["w"]  # Dense(3136 -> 128)
    assert deep.std() == pytest.approx(1 / np.sqrt(3 * 3136), rel=0.02)
    assert np.abs(deep).max() <= 1 / np.sqrt(3136)


def test_he_initialisation_on_request():
    rng = np.random.default_rng(0)
    dense = L.Dense(3136, 128, rng=rng, init="he")
    assert dense.params["w"].std() == pytest.approx(np.sqrt(2 / 3136), rel=0.02)
    assert not dense.params["b"].any()
    conv = L.Conv2D(32, 64, 3, rng=rng, init="he")
    assert conv.params["w"].std() == pytest.approx(np.sqrt(2 / (9 * 32)), rel=0.02)
    with pytest.raises(ValueError, match="init must be one of uniform, he"):
        L.Dense(4, 2, init="glorot")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: build_network("resnet"), "unknown architecture 'resnet'"),
        (lambda: build_network("small", backend="cuda"), "unknown backend 'cuda'"),
        (lambda: build_network("small", dtype="float16"), "dtype must be one of"),
        (
            lambda: build_network("small").forward(np.zeros((2, 28, 28))),
            r"must be 4-D \(N, H, W, C\)",
        ),
        (lambda: build_network("small").forward(np.zeros((2, 28, 28, 3))), "has 3 channels"),
        (
            lambda: build_network("small").evaluate(np.zeros((2, 28, 28, 1)), np.zeros(3, int)),
            "x has 2 samples but y has 3",
        ),
        (lambda: L.Dropout(1.0), r"rate must be in \[0, 1\)"),
        (lambda: L.Conv2D(0, 3), "in_channels must be a positive integer"),
        (
            lambda: softmax_cross_entropy(np.zeros((2, 10)), np.array([0, 10])),
            r"must lie in \[0, 10\)",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_predict_takes_one_image_or_a_batch_and_answers_in_kind():
    net = build_network("small", seed=0)
    batch = np.random.default_rng(1).random((3, 28, 28, 1)).astype(np.float32)
    labels, probs = net.predict(batch), net.predict_proba(batch)
    assert labels.shape == (3,) and probs.shape == (3, 10)
    for image in (batch[1], batch[1, ..., 0]):  # (28, 28, 1) and (28, 28)
        label = net.predict(image)
        assert isinstance(label, int) and label == labels[1]
        np.testing.assert_allclose(net.predict_proba(image), probs[1], rtol=1e-5, atol=1e-7)
    assert net.predict(batch[:0]).shape == (0,)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((5, 28, 28), r"one \(H, W, C\) image with 28 channels, but the network takes 1"),
        ((28,), r"one image \(H, W\) or \(H, W, C\), or a batch \(N, H, W, C\); got shape"),
        ((1, 2, 28, 28, 1), r"got shape \(1, 2, 28, 28, 1\)"),
    ],
)
def test_predict_explains_a_shape_it_cannot_read(shape, message):
    net = build_network("small", seed=0)
    for predict in (net.predict, net.predict_proba):
        with pytest.raises(ValueError, match=message):
            predict(np.zeros(shape, np.float32))


def test_sequential_of_custom_layers():
    rng = np.random.default_rng(0)
    net = Sequential([L.Flatten(), L.Dense(4, 2, rng=rng)], dtype=np.float32, rng=rng)
    assert net.forward(np.ones((1, 2, 2, 1))).shape == (1, 2)


@pytest.mark.parametrize("backend", ["numba", "auto"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sequential_fuses_conv_and_maxpool_to_the_same_numbers(backend, dtype, monkeypatch):
    """Sequential runs Conv2D + MaxPool2D as one call each way where the backend can (numba;
    auto once it has chosen numba for both); logits and every gradient equal the two separate
    calls' (float32 to the bit, float64 within ulps)."""
    import model.network as network

    pytest.importorskip("numba")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 28, 28, 1)).astype(dtype)
    labels = rng.integers(0, 10, 6)
    fused_calls, fused_backward = [], []
    real, real_backward = L.Conv2D.forward_maxpool, L.Conv2D.backward_maxpool

    def spy(self, x, pool, training=False):
        y = real(self, x, pool, training)
        fused_calls.append(y is not None)
        return y

    def spy_backward(self, dy, pool):
        result = real_backward(self, dy, pool)
        fused_backward.append(result[0])
        return result

    monkeypatch.setattr(L.Conv2D, "forward_maxpool", spy)
    monkeypatch.setattr(L.Conv2D, "backward_maxpool", spy_backward)

    def run(fuse: bool):
        monkeypatch.setattr(network, "pair_kind", L.pair_kind if fuse else lambda a, b: None)
        net = build_network("small", backend=backend, dtype=dtype, seed=0)
        logits = np.concatenate([net.forward(x, training=True) for _ in range(2)])  # auto: 2nd
        _, dlogits = softmax_cross_entropy(logits[6:], labels)
        net.backward(dlogits)
        return logits[6:], [g.copy() for layer in net.layers for g in layer.grads.values()]

    logits_fused, grads_fused = run(True)
    assert fused_calls[-1], "the second forward should have taken the fused path"
    assert fused_backward == [True], "the backward should have taken the fused path"
    logits, grads = run(False)
    # float32: to the bit. float64: within ulps, as tests/test_kernels_conv_maxpool.py's
    # assert_same_sums explains (the two forwards are compiled apart, FMA contraction allowed).
    rtol = 0 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(logits_fused, logits, rtol=rtol, atol=0)
    assert len(grads_fused) == len(grads)
    for got, want in zip(grads_fused, grads):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


@pytest.mark.parametrize("backend", ["im2col", "numba"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sequential_fuses_batchnorm_and_maxpool_to_the_same_numbers(backend, dtype, monkeypatch):
    """The `deep` network's BatchNorm + MaxPool2D pairs run as one call each way in training
    (kernels/batchnorm_pool.py), on any backend; logits, every gradient and the running
    statistics equal the separate layers'. Evaluation runs the two layers."""
    import model.network as network

    if backend == "numba":
        pytest.importorskip("numba")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 28, 28, 1)).astype(dtype)
    labels = rng.integers(0, 10, 4)
    fused = []
    real = L.BatchNorm.backward_maxpool

    def spy(self, dy, pool):
        result = real(self, dy, pool)
        fused.append(result[0])
        return result

    monkeypatch.setattr(L.BatchNorm, "backward_maxpool", spy)

    def run(fuse: bool):
        monkeypatch.setattr(network, "pair_kind", L.pair_kind if fuse else lambda a, b: None)
        net = build_network("deep", backend=backend, dtype=dtype, seed=0)
        for layer in net.layers:
            if isinstance(layer, L.Dropout):
                layer.rate = 0.0  # the same numbers either way without drawing a mask
        logits = net.forward(x, training=True)
        _, dlogits = softmax_cross_entropy(logits, labels)
        net.backward(dlogits)
        grads = [g.copy() for layer in net.layers for g in layer.grads.values()]
        stats = [b.copy() for layer in net.layers for b in layer.buffers.values()]
        return logits, grads, stats, net.forward(x)

    logits_fused, grads_fused, stats_fused, eval_fused = run(True)
    assert fused == [True, True], "both BatchNorm + MaxPool2D pairs should have fused"
    logits, grads, stats, eval_logits = run(False)
    np.testing.assert_array_equal(logits_fused, logits)
    np.testing.assert_array_equal(eval_fused, eval_logits)
    for got, want in zip(grads_fused + stats_fused, grads + stats):
        np.testing.assert_array_equal(got, want)


def test_batchnorm_pool_fusion_declines_and_says_what_to_call():
    bn, pool = L.BatchNorm(3), L.MaxPool2D(2)
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)
    assert bn.forward_maxpool(x, pool, training=False) is None  # evaluation: the two layers
    assert bn.forward_maxpool(x[:, :3], pool, training=True) is None  # odd height
    assert bn.forward_maxpool(x, L.MaxPool2D(2, stride=1), training=True) is None
    bn.reduce = lambda a: a  # cross-process statistics: the two layers
    assert bn.forward_maxpool(x, pool, training=True) is None
    bn.reduce = None
    bn.forward(x, training=True)
    assert bn.backward_maxpool(np.ones((2, 2, 2, 3), np.float32), pool) == (False, None)
    y = bn.forward_maxpool(x, pool, training=True)
    assert y.shape == (2, 2, 2, 3)
    with pytest.raises(RuntimeError, match="backward_maxpool"):
        bn.backward(np.ones_like(x))
    with pytest.raises(ValueError, match="dy must have the pooled output's shape"):
        bn.backward_maxpool(np.ones_like(x), pool)
    fused, dx = bn.backward_maxpool(np.ones_like(y), pool)
    assert fused and dx.shape == x.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequential_fuses_batchnorm_and_relu_to_the_same_numbers(dtype, monkeypatch):
    """Sequential runs BatchNorm + ReLU as one call each way in training (BatchNorm.forward_relu,
    backward_relu): logits, every gradient and the running statistics equal the two separate
    calls', including activations exactly at 0 (a zero input channel with beta 0)."""
    import model.network as network

    spec = "conv(8,3,pad=1,bias=false),bn,relu,conv(8,1),bn,relu,flatten,dense(10)"
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 28, 28, 1)).astype(dtype)
    labels = rng.integers(0, 10, 3)
    calls = []
    real = L.BatchNorm.forward_relu

    def spy(self, x, relu, training=False):
        y = real(self, x, relu, training)
        calls.append(y is not None)
        return y

    monkeypatch.setattr(L.BatchNorm, "forward_relu", spy)

    def run(fuse: bool):
        monkeypatch.setattr(network, "pair_kind", L.pair_kind if fuse else lambda a, b: None)
        net = build_network(spec, backend="numba", dtype=dtype, seed=0)
        net.layers[1].params["beta"][0] = 0  # channel 0 of a zero map: y exactly 0
        net.layers[0].params["w"][..., 0] = 0
        logits = net.forward(x, training=True)
        _, dlogits = softmax_cross_entropy(logits, labels)
        net.backward(dlogits)
        grads = [g.copy() for layer in net.layers for g in layer.grads.values()]
        stats = [b.copy() for layer in net.layers for b in layer.buffers.values()]
        return logits, grads, stats, net.forward(x, training=False)

    fused = run(True)
    assert calls == [True, True, False, False]  # two pairs in training, none in evaluation
    separate = run(False)
    for got, want in zip(fused, separate):
        for a, b in zip(
            got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]
        ):
            np.testing.assert_allclose(a, b, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=0)


def test_batchnorm_backward_after_forward_relu_is_refused():
    bn, relu = L.BatchNorm(4), L.ReLU()
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 4)).astype(np.float32)
    y = bn.forward_relu(x, relu, training=True)
    assert y.shape == x.shape and (y >= 0).all()
    with pytest.raises(RuntimeError, match="backward_relu"):
        bn.backward(np.ones_like(y))
    with pytest.raises(ValueError, match="dy must have the output's shape"):
        bn.backward_relu(np.ones((2, 3, 3, 5), np.float32), relu)
    done, dx = bn.backward_relu(np.ones_like(y), relu)
    assert done and dx.shape == x.shape
    assert bn.forward_relu(x, relu, training=False) is None  # evaluation: the two layers
