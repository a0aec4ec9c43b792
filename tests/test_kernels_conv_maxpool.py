"""The fused Conv2D + 2x2 MaxPool2D forward and backward (numba, and auto where it chose the
fused pass): the same pooled values (to the bit in float32, within ulps in float64: see
assert_same_sums) and argmax as the two calls, ctxs whose backward
passes give the two calls' gradients, and a fused backward that gives them too, to the bit;
None (nothing run) where they do not apply."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from kernels_helpers import BACKENDS

from kernels import get_backend

pytestmark = pytest.mark.skipif("numba" not in BACKENDS, reason="numba is not installed")

CONFIGS = [  # x shape, (KH, KW, C_out), stride, padding
    ((2, 28, 28, 1), (3, 3, 16), 1, 1),  # the `small` network's first block
    ((3, 9, 11, 3), (2, 2, 17), 1, 0),  # odd conv output: its last row and column are dropped
    ((2, 14, 14, 32), (3, 3, 64), 1, 1),
    ((2, 13, 12, 5), (3, 3, 33), 2, 2),  # a strided convolution, a ragged channel block
]


def _inputs(x_shape, kernel, dtype, nan=False):
    rng = np.random.default_rng(sum(x_shape) + sum(kernel))
    x = rng.standard_normal(x_shape).astype(dtype)
    if nan:  # a NaN reaches several windows of the convolution
        x[0, x_shape[1] // 2, x_shape[2] // 2, 0] = np.nan
    w = rng.standard_normal(kernel[:2] + (x_shape[3], kernel[2])).astype(dtype)
    return x, w, rng.standard_normal(kernel[2]).astype(dtype)


def assert_same_sums(got, want):
    """Equal to the bit in float32; in float64 within a few ulps. The fused and the separate
    forward are compiled apart, and with FMA contraction allowed (numba_tiles.JIT_OPTIONS) LLVM
    may contract a different set of float64 multiply-adds in each for the machine's vector
    width (AVX-512 does, on every CONFIGS case; AVX2 did not)."""
    if got.dtype == np.float32:
        np.testing.assert_array_equal(got, want)
    else:
        scale = np.nanmax(np.abs(want), initial=1.0)
        np.testing.assert_allclose(got, want, rtol=0, atol=16 * np.finfo(got.dtype).eps * scale)


@pytest.mark.parametrize("nan", [False, True], ids=["finite", "nan"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("x_shape, kernel, stride, padding", CONFIGS)
def test_fused_forward_equals_the_two_calls(x_shape, kernel, stride, padding, dtype, nan):
    be = get_backend("numba")
    x, w, b = _inputs(x_shape, kernel, dtype, nan)
    conv_y, conv_ctx = be.conv2d_forward(x, w, b, stride, padding)
    y, pool_ctx = be.maxpool2d_forward(conv_y, 2, 2)
    fused = be.conv2d_maxpool2d_forward(x, w, b, stride, padding, 2, None)
    assert fused is not None
    y_fused, conv_ctx_fused, pool_ctx_fused = fused
    assert_same_sums(y_fused, y)
    np.testing.assert_array_equal(pool_ctx_fused.argmax, pool_ctx.argmax)
    assert pool_ctx_fused.argmax.dtype == pool_ctx.argmax.dtype
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    d_conv = be.maxpool2d_backward(dy, pool_ctx)
    np.testing.assert_array_equal(be.maxpool2d_backward(dy, pool_ctx_fused), d_conv)
    for got, want in zip(
        be.conv2d_backward(d_conv, conv_ctx_fused), be.conv2d_backward(d_conv, conv_ctx)
    ):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "x_shape, kernel, size, pool_stride",
    [
        ((2, 12, 12, 3), (3, 3, 16), 3, None),  # not a 2x2 pool
        ((2, 12, 12, 3), (3, 3, 16), 2, 1),  # overlapping windows
        ((2, 12, 12, 3), (3, 3, 8), 2, None),  # too few output channels for the register tiles
    ],
)
def test_fused_forward_declines_what_it_does_not_do(x_shape, kernel, size, pool_stride):
    x, w, b = _inputs(x_shape, kernel, np.float32)
    assert get_backend("numba").conv2d_maxpool2d_forward(x, w, b, 1, 1, size, pool_stride) is None


def test_auto_fuses_where_both_choices_are_numba():
    # tests/conftest.py runs auto with autotuning off: its rule picks numba for this conv and
    # pool, and then the fused pass for the pair
    be = get_backend("auto")
    x, w, b = _inputs((2, 28, 28, 1), (3, 3, 16), np.float32)
    conv_y, conv_ctx = be.conv2d_forward(x, w, b, 1, 1)
    y, pool_ctx = be.maxpool2d_forward(conv_y, 2, None)
    assert (conv_ctx.backend, pool_ctx.backend) == ("numba", "numba")
    fused = be.conv2d_maxpool2d_forward(x, w, b, 1, 1, 2, None)
    assert fused is not None
    np.testing.assert_array_equal(fused[0], y)
    assert (fused[1].backend, fused[2].backend) == ("numba", "numba")
    dy = np.ones_like(y)
    np.testing.assert_array_equal(
        be.maxpool2d_backward(dy, fused[2]), be.maxpool2d_backward(dy, pool_ctx)
    )


def test_auto_declines_where_the_conv_runs_elsewhere():
    # with autotuning off (tests/conftest.py) the rule runs this conv on winograd: the two
    # layers then run separately
    from kernels import auto

    x, w, b = _inputs((2, 14, 14, 32), (3, 3, 64), np.float32)
    assert get_backend("auto").conv2d_maxpool2d_forward(x, w, b, 1, 1, 2, None) is None
    pair = [v for k, v in auto.choices().items() if k.startswith("conv2d+maxpool2d x=2x14x14x32")]
    assert pair == [{"backend": auto.SEPARATE, "source": "rule"}]


BACKWARD_CONFIGS = [  # x shape, (KH, KW, C_out), stride, padding: the plane kernels' backward
    ((2, 28, 28, 1), (3, 3, 16), 1, 1),  # the `small` network's first block
    ((3, 11, 9, 3), (3, 3, 17), 1, 1),  # odd conv output: a row and a column in no window
    ((2, 13, 12, 5), (3, 3, 33), 2, 2),  # strided, a ragged channel block
    ((2, 10, 10, 2), (3, 3, 4), 1, 1),  # few output channels: the plane forward's ctx
]


def _pooled(be, x, w, b, stride, padding):
    conv_y, conv_ctx = be.conv2d_forward(x, w, b, stride, padding)
    y, pool_ctx = be.maxpool2d_forward(conv_y, 2, None)
    return y, conv_ctx, pool_ctx


@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "no-dx"])
@pytest.mark.parametrize("bad", [None, "nan-x", "nan-dy", "inf-dy"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("x_shape, kernel, stride, padding", BACKWARD_CONFIGS)
def test_fused_backward_equals_the_two_calls(x_shape, kernel, stride, padding, dtype, bad, need_dx):
    be = get_backend("numba")
    x, w, b = _inputs(x_shape, kernel, dtype, nan=bad == "nan-x")
    y, conv_ctx, pool_ctx = _pooled(be, x, w, b, stride, padding)
    dy = np.random.default_rng(5).standard_normal(y.shape).astype(dtype)
    if bad in ("nan-dy", "inf-dy"):
        dy[0, 0, 0, 0] = np.nan if bad == "nan-dy" else np.inf
    want = be.conv2d_backward(be.maxpool2d_backward(dy, pool_ctx), conv_ctx, need_dx=need_dx)
    got = be.conv2d_maxpool2d_backward(dy, conv_ctx, pool_ctx, need_dx)
    assert got is not None
    for g, v in zip(got, want):
        if v is None:
            assert g is None
        else:
            assert g.dtype == v.dtype
            np.testing.assert_array_equal(g, v)


def test_fused_backward_after_the_fused_forward():
    be = get_backend("numba")
    x, w, b = _inputs((2, 28, 28, 1), (3, 3, 16), np.float32)
    y, conv_ctx, pool_ctx = _pooled(be, x, w, b, 1, 1)
    _, conv_ctx_fused, pool_ctx_fused = be.conv2d_maxpool2d_forward(x, w, b, 1, 1, 2, None)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    got = be.conv2d_maxpool2d_backward(dy, conv_ctx_fused, pool_ctx_fused, False)
    want = be.conv2d_backward(be.maxpool2d_backward(dy, pool_ctx), conv_ctx, need_dx=False)
    assert got[0] is None
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])


@pytest.mark.parametrize(
    "x_shape, kernel, size, pool_stride",
    [
        ((2, 12, 12, 3), (3, 3, 16), 3, None),  # not a 2x2 pool
        ((2, 12, 12, 3), (3, 3, 16), 2, 1),  # overlapping windows
        ((2, 14, 14, 32), (3, 3, 64), 2, None),  # many input channels: the tiles' backward
    ],
)
def test_fused_backward_declines_what_it_does_not_do(x_shape, kernel, size, pool_stride):
    be = get_backend("numba")
    x, w, b = _inputs(x_shape, kernel, np.float32)
    conv_y, conv_ctx = be.conv2d_forward(x, w, b, 1, 1)
    y, pool_ctx = be.maxpool2d_forward(conv_y, size, pool_stride)
    assert be.conv2d_maxpool2d_backward(np.ones_like(y), conv_ctx, pool_ctx) is None


def test_fused_backward_names_a_wrong_gradient_or_pool():
    be = get_backend("numba")
    x, w, b = _inputs((2, 12, 12, 1), (3, 3, 16), np.float32)
    y, conv_ctx, pool_ctx = _pooled(be, x, w, b, 1, 1)
    with pytest.raises(ValueError, match="dy"):
        be.conv2d_maxpool2d_backward(np.ones((2, 5, 6, 16), np.float32), conv_ctx, pool_ctx)
    other_y, other_ctx = be.maxpool2d_forward(np.ones((2, 10, 10, 16), np.float32), 2, None)
    with pytest.raises(ValueError, match="pool_ctx"):
        be.conv2d_maxpool2d_backward(np.ones_like(other_y), conv_ctx, other_ctx)


def test_auto_fused_backward_delegates_to_numba_or_declines():
    be = get_backend("auto")
    x, w, b = _inputs((2, 28, 28, 1), (3, 3, 16), np.float32)
    y, conv_ctx, pool_ctx = _pooled(be, x, w, b, 1, 1)
    assert (conv_ctx.backend, pool_ctx.backend) == ("numba", "numba")
    dy = np.random.default_rng(4).standard_normal(y.shape).astype(np.float32)
    got = be.conv2d_maxpool2d_backward(dy, conv_ctx, pool_ctx, True)
    want = be.conv2d_backward(be.maxpool2d_backward(dy, pool_ctx), conv_ctx)
    for g, v in zip(got, want):
        np.testing.assert_array_equal(g, v)
    # a conv that ran on another backend: nothing is fused (a ctx relabelled, since which
    # backend auto picks for a shape depends on what earlier tests timed in this process)
    elsewhere = dataclasses.replace(conv_ctx, backend="im2col")
    assert be.conv2d_maxpool2d_backward(dy, elsewhere, pool_ctx, True) is None


@pytest.mark.parametrize(
    "kernel, padding, dilation, groups",
    [
        ((3, 3, 16), 1, 1, 16),  # depthwise (kernels/depthwise.py)
        ((3, 3, 16), 1, 1, 2),  # groups (kernels/decompose.py)
        ((3, 3, 16), 2, 2, 1),  # dilation
        ((3, 3, 16), ((0, 2), (1, 1)), 1, 1),  # asymmetric padding
    ],
)
def test_fused_calls_decline_convolutions_that_are_not_plain(kernel, padding, dilation, groups):
    """groups, dilation and asymmetric padding run on paths the fused kernels do not have:
    both fused calls return None and the caller runs the two calls."""
    be = get_backend("numba")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 12, 12, 16))
    w = rng.standard_normal(kernel[:2] + (16 // groups, kernel[2]))
    args = dict(stride=1, padding=padding, dilation=dilation, groups=groups)
    assert be.conv2d_maxpool2d_forward(x, w, None, size=2, pool_stride=2, **args) is None
    y, conv_ctx = be.conv2d_forward(x, w, None, **args)
    pooled, pool_ctx = be.maxpool2d_forward(y, 2, 2)
    assert be.conv2d_maxpool2d_backward(np.ones_like(pooled), conv_ctx, pool_ctx) is None
