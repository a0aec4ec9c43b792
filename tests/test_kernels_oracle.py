"""Outside oracles: every backend's forward and backward against PyTorch and TensorFlow (float64).

PyTorch wants NCHW / OIHW, so arrays are transposed on the way in and out; TensorFlow takes our
NHWC / HWIO layout as is. Gradients come from each framework's autograd with the same upstream dy.
Pooling inputs have distinct values, since the frameworks do not promise our tie rule.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernels_helpers import BACKENDS, assert_close, takes_groups

from kernels import get_backend

CONV_CONFIGS = [  # x shape, (KH, KW, C_out), stride, padding (ph, pw)
    ((2, 7, 7, 3), (3, 3, 4), (1, 1), (0, 0)),
    ((2, 8, 9, 3), (3, 3, 4), (2, 2), (1, 1)),
    ((1, 9, 7, 2), (5, 3, 3), (2, 1), (2, 1)),
    ((3, 6, 6, 1), (2, 2, 5), (3, 2), (0, 1)),
    # numba's register tiles (kernels/numba_tiles.py): dX by forward, by dx_cols, then by
    # dx_phases; the tiled forward with the plane kernels' backward
    ((2, 8, 9, 16), (3, 3, 20), (1, 1), (1, 1)),
    ((2, 12, 11, 10), (3, 3, 16), (2, 2), (1, 1)),
    ((2, 12, 13, 16), (3, 3, 16), (2, 2), (1, 1)),
    ((2, 9, 10, 1), (3, 3, 16), (1, 1), (1, 1)),
]
POOL_CONFIGS = [  # x shape, size, stride
    ((2, 8, 8, 3), (2, 2), (2, 2)),
    ((2, 7, 9, 2), (3, 3), (2, 2)),
    ((1, 6, 7, 4), (2, 3), (1, 2)),
]


def _conv_data(x_shape, kernel):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(kernel[:2] + (x_shape[3], kernel[2]))
    b = rng.standard_normal(kernel[2])
    return rng, x, w, b


def _ours_conv(backend, x, w, b, stride, padding, dy):
    be = get_backend(backend)
    y, ctx = be.conv2d_forward(x, w, b, stride, padding)
    return (y,) + be.conv2d_backward(dy, ctx)


def _pool_input(x_shape):
    rng = np.random.default_rng(4)
    return rng, rng.permutation(int(np.prod(x_shape))).reshape(x_shape) / 10.0


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install '.[peers]')")
    return torch


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip(
        "tensorflow", reason="TensorFlow not installed (pip install '.[peers]')"
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_shape, kernel, stride, padding", CONV_CONFIGS)
def test_conv_against_torch(torch, backend, x_shape, kernel, stride, padding):
    import torch.nn.functional as F

    rng, x, w, b = _conv_data(x_shape, kernel)
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)  # NCHW
    tw = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)  # OIHW
    tb = torch.tensor(b, requires_grad=True)
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=padding)
    dy = rng.standard_normal(ty.shape).transpose(0, 2, 3, 1).copy()  # NHWC
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    expected = (
        ty.detach().numpy().transpose(0, 2, 3, 1),
        tx.grad.numpy().transpose(0, 2, 3, 1),
        tw.grad.numpy().transpose(2, 3, 1, 0),
        tb.grad.numpy(),
    )
    for name, got, want in zip(
        ("y", "dx", "dw", "db"), _ours_conv(backend, x, w, b, stride, padding, dy), expected
    ):
        assert_close(got, np.ascontiguousarray(want), f"{backend} {name} vs torch")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("x_shape, size, stride", POOL_CONFIGS)
def test_pool_against_torch(torch, backend, kind, x_shape, size, stride):
    import torch.nn.functional as F

    rng, x = _pool_input(x_shape)
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    ty = getattr(F, f"{kind}_pool2d")(tx, size, stride)
    dy = rng.standard_normal(ty.shape).transpose(0, 2, 3, 1).copy()
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    be = get_backend(backend)
    y, ctx = getattr(be, f"{kind}pool2d_forward")(x, size, stride)
    dx = getattr(be, f"{kind}pool2d_backward")(dy, ctx)
    assert_close(y, np.ascontiguousarray(ty.detach().numpy().transpose(0, 2, 3, 1)), f"{backend} y")
    assert_close(dx, np.ascontiguousarray(tx.grad.numpy().transpose(0, 2, 3, 1)), f"{backend} dx")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_shape, kernel, stride, padding", CONV_CONFIGS)
def test_conv_against_tensorflow(tf, backend, x_shape, kernel, stride, padding):
    rng, x, w, b = _conv_data(x_shape, kernel)
    tx, tw, tb = tf.Variable(x), tf.Variable(w), tf.Variable(b)
    (ph, pw) = padding
    with tf.GradientTape() as tape:
        ty = (
            tf.nn.conv2d(
                tx, tw, strides=(1,) + stride + (1,), padding=[[0, 0], [ph, ph], [pw, pw], [0, 0]]
            )
            + tb
        )
        dy = rng.standard_normal(ty.shape)
        loss = tf.reduce_sum(ty * dy)
    gx, gw, gb = tape.gradient(loss, [tx, tw, tb])
    expected = (ty.numpy(), gx.numpy(), gw.numpy(), gb.numpy())
    for name, got, want in zip(
        ("y", "dx", "dw", "db"), _ours_conv(backend, x, w, b, stride, padding, dy), expected
    ):
        assert_close(got, want, f"{backend} {name} vs tensorflow")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("x_shape, size, stride", POOL_CONFIGS)
def test_pool_against_tensorflow(tf, backend, kind, x_shape, size, stride):
    rng, x = _pool_input(x_shape)
    tx = tf.Variable(x)
    with tf.GradientTape() as tape:
        ty = getattr(tf.nn, f"{kind}_pool2d")(tx, size, stride, padding="VALID")
        dy = rng.standard_normal(ty.shape)
        loss = tf.reduce_sum(ty * dy)
    be = get_backend(backend)
    y, ctx = getattr(be, f"{kind}pool2d_forward")(x, size, stride)
    dx = getattr(be, f"{kind}pool2d_backward")(dy, ctx)
    assert_close(y, ty.numpy(), f"{backend} y vs tensorflow")
    assert_close(dx, tape.gradient(loss, tx).numpy(), f"{backend} dx vs tensorflow")


# x shape, (KH, KW, C_out), stride, padding, dilation, groups: PyTorch's grouping and dilation,
# depthwise with a channel multiplier, and padding of both forms PyTorch's F.pad spells out
TORCH_GENERAL_CONFIGS = [
    ((2, 9, 8, 6), (3, 3, 4), 1, 1, 1, 2),
    ((2, 9, 8, 4), (3, 3, 8), 2, 1, 1, 4),
    ((1, 10, 9, 3), (3, 2, 3), (1, 2), ((2, 0), (1, 1)), (2, 3), 1),
    ((2, 11, 10, 16), (3, 3, 16), 2, 1, 1, 16),
    ((2, 8, 8, 6), (2, 3, 6), 1, ((0, 1), (2, 1)), 2, 3),
]


def _general_data(x_shape, kernel, groups):
    rng = np.random.default_rng(8)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(kernel[:2] + (x_shape[3] // groups, kernel[2]))
    return rng, x, w, rng.standard_normal(kernel[2])


def _ours_general(backend, x, w, b, dy, **args):
    be = get_backend(backend)
    if not takes_groups(backend):
        pytest.skip(f"{backend}.conv2d_forward takes no dilation/groups yet")
    y, ctx = be.conv2d_forward(x, w, b, **args)
    return (y,) + be.conv2d_backward(dy, ctx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "x_shape, kernel, stride, padding, dilation, groups", TORCH_GENERAL_CONFIGS
)
def test_general_conv_against_torch(
    torch, backend, x_shape, kernel, stride, padding, dilation, groups
):
    import torch.nn.functional as F

    rng, x, w, b = _general_data(x_shape, kernel, groups)
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)  # NCHW
    tw = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)  # (C_out, C_in/groups, KH, KW)
    tb = torch.tensor(b, requires_grad=True)
    if isinstance(padding, int):
        (top, bottom), (left, right) = (padding, padding), (padding, padding)
    else:
        (top, bottom), (left, right) = padding
    padded = F.pad(tx, (left, right, top, bottom))  # F.pad's order: last axis first
    ty = F.conv2d(padded, tw, tb, stride=stride, dilation=dilation, groups=groups)
    dy = rng.standard_normal(ty.shape).transpose(0, 2, 3, 1).copy()  # NHWC
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    expected = (
        ty.detach().numpy().transpose(0, 2, 3, 1),
        tx.grad.numpy().transpose(0, 2, 3, 1),
        tw.grad.numpy().transpose(2, 3, 1, 0),
        tb.grad.numpy(),
    )
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    for name, got, want in zip(
        ("y", "dx", "dw", "db"), _ours_general(backend, x, w, b, dy, **args), expected
    ):
        assert_close(got, np.ascontiguousarray(want), f"{backend} {name} vs torch")


# x shape, (KH, KW, C_out or multiplier), stride, dilation, depthwise: TensorFlow's "SAME" where
# it pads one more row/column at the bottom/right (even kernel or stride 2 on an odd input)
TF_SAME_CONFIGS = [
    ((2, 9, 8, 3), (2, 2, 4), 2, 1, False),
    ((2, 8, 9, 3), (4, 3, 2), (2, 1), 1, False),
    ((1, 9, 9, 2), (2, 3, 3), 1, (2, 1), False),
    ((2, 9, 8, 4), (2, 2, 2), 2, 1, True),
    ((2, 7, 8, 3), (3, 3, 1), 2, 1, True),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_shape, kernel, stride, dilation, depthwise", TF_SAME_CONFIGS)
def test_same_padding_against_tensorflow(tf, backend, x_shape, kernel, stride, dilation, depthwise):
    c_in = x_shape[3]
    c_out = c_in * kernel[2] if depthwise else kernel[2]
    groups = c_in if depthwise else 1
    rng, x, w, b = _general_data(x_shape, kernel[:2] + (c_out,), groups)
    strides = (stride, stride) if isinstance(stride, int) else stride
    dilations = (dilation, dilation) if isinstance(dilation, int) else dilation
    # TF's depthwise filter is (KH, KW, C_in, M), output channel c*M + m: ours reshaped
    tw_value = w.reshape(kernel[:2] + (c_in, kernel[2])) if depthwise else w
    tx, tw, tb = tf.Variable(x), tf.Variable(tw_value), tf.Variable(b)
    with tf.GradientTape() as tape:
        if depthwise:
            conv = tf.nn.depthwise_conv2d(
                tx, tw, (1,) + strides + (1,), "SAME", dilations=dilations
            )
        else:
            # tf.nn.convolution: dilation by space-to-batch (conv2d has no CPU dilated gradient)
            conv = tf.nn.convolution(tx, tw, strides, "SAME", dilations=dilations)
        ty = conv + tb
        dy = rng.standard_normal(ty.shape)
        loss = tf.reduce_sum(ty * dy)
    gx, gw, gb = tape.gradient(loss, [tx, tw, tb])
    expected = (ty.numpy(), gx.numpy(), gw.numpy().reshape(w.shape), gb.numpy())
    args = dict(stride=stride, padding="same", dilation=dilation, groups=groups)
    for name, got, want in zip(
        ("y", "dx", "dw", "db"), _ours_general(backend, x, w, b, dy, **args), expected
    ):
        assert_close(got, want, f"{backend} {name} vs tensorflow")
