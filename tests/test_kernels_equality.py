"""Every backend returns naive's numbers: forward and every backward output, conv and both pools.

Hypothesis draws the configurations (N 1-3, H/W 1-12, C 1-4, kernel 1-5 fitting the padded input,
stride 1-3, padding 0-2 / "valid" / "same", pool size 1-4); each example runs naive once and
compares every other backend to it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from kernels_helpers import (
    DTYPES,
    OTHER_BACKENDS,
    assert_close,
    conv_cases,
    general_conv_cases,
    pool_cases,
    run_conv,
    run_pool,
    takes_groups,
)

from kernels import get_backend

# the number of examples comes from the hypothesis profile (tests/conftest.py: quick or ci)
EXAMPLES = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(autouse=True, params=["threads-by-size", "threads-always"])
def parallel_threshold(request, monkeypatch):
    """Run every property twice: with the backends' own size rule for going multi-threaded, and
    with the threshold forced to 0, so the threaded split (numba's sample blocks) is checked on
    every shape, stride and padding hypothesis draws, not only on the few large ones."""
    if request.param == "threads-always":
        import kernels

        for name in kernels.available_backends():
            module = kernels.get_backend(name)
            if hasattr(module, "PARALLEL_MIN_WORK"):
                monkeypatch.setattr(module, "PARALLEL_MIN_WORK", 0)
    return request.param


def _conv_inputs(case, dtype):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["x_shape"]).astype(dtype)
    w = rng.standard_normal(case["w_shape"]).astype(dtype)
    b = rng.standard_normal(case["w_shape"][3]).astype(dtype) if case["bias"] else None
    dy = rng.standard_normal(case["y_shape"]).astype(dtype)
    return x, w, b, dy


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@EXAMPLES
@given(case=conv_cases())
def test_conv_matches_naive(case, dtype):
    _check_conv_case(case, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@EXAMPLES
@given(case=conv_cases(channels=(1, 36), sizes=(4, 14)))
def test_many_channel_conv_matches_naive(case, dtype):
    """Channel counts around numba's register tiles (kernels/numba_tiles.py: MIN_C_IN 8,
    LANES 16, TILE 5): the tiled forward with the plane kernels' backward (few input
    channels) and with the tiled one, full and ragged channel blocks, ragged pixel tiles, and
    the plane kernels for shapes below the thresholds."""
    _check_conv_case(case, dtype)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@settings(EXAMPLES, max_examples=20)
@given(case=general_conv_cases())
def test_general_conv_matches_naive(case, dtype, backend):
    """groups (depthwise with channel multipliers included), dilation, stride and every padding
    form, TensorFlow's "same" at any stride and kernel size: numba's depthwise kernels and its
    decomposition (kernels/decompose.py), winograd's fallback, einsum's and im2col's native
    grouped and dilated paths."""
    if not takes_groups(backend):
        pytest.skip(f"{backend}.conv2d_forward takes no dilation/groups yet")
    _check_conv_case(case, dtype, [backend])


def _check_conv_case(case, dtype, backends=OTHER_BACKENDS):
    x, w, b, dy = _conv_inputs(case, dtype)
    args = (x, w, b, case["stride"], case["padding"], dy, case["need_dx"])
    extra = dict(dilation=case.get("dilation", 1), groups=case.get("groups", 1))
    y, dx, dw, db = run_conv("naive", *args, **extra)
    assert y.shape == case["y_shape"] and y.dtype == dtype
    for backend in backends:
        y_be, dx_be, dw_be, db_be = run_conv(backend, *args, **extra)
        assert_close(y_be, y, f"{backend} y")
        assert_close(dw_be, dw, f"{backend} dw")
        if case["need_dx"]:
            assert_close(dx_be, dx, f"{backend} dx")
        else:
            assert dx_be is None, f"{backend}: need_dx=False must return dx=None"
        if b is None:
            assert db_be is None, f"{backend}: db must be None without a bias"
        else:
            assert_close(db_be, db, f"{backend} db")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["max", "avg"])
@EXAMPLES
@given(case=pool_cases())
def test_pool_matches_naive(case, kind, dtype):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["x_shape"]).astype(dtype)
    dy = rng.standard_normal(case["y_shape"]).astype(dtype)
    y, dx = run_pool("naive", kind, x, case["size"], case["stride"], dy)
    for backend in OTHER_BACKENDS:
        y_be, dx_be = run_pool(backend, kind, x, case["size"], case["stride"], dy)
        if kind == "max":
            np.testing.assert_array_equal(y_be, y, err_msg=f"{backend} y")  # a selection: exact
            assert y_be.dtype == y.dtype
        else:
            assert_close(y_be, y, f"{backend} y")
        assert_close(dx_be, dx, f"{backend} dx")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@EXAMPLES
@given(case=pool_cases())
def test_maxpool_ties_after_relu_agree_exactly(case, dtype):
    """ReLU'd, rounded input: most windows are all zeros or have repeated maxima. The gradient must
    go to the first maximum in row-major window order in every backend, so dx agrees exactly.
    dy holds distinct small integers, so sums of overlapping windows are exact in any order and a
    gradient routed to the wrong tie shows up as a mismatch."""
    rng = np.random.default_rng(case["seed"])
    x = np.maximum(np.round(rng.standard_normal(case["x_shape"])), 0).astype(dtype)
    dy = (rng.permutation(int(np.prod(case["y_shape"]))) + 1).reshape(case["y_shape"]).astype(dtype)
    y, dx = run_pool("naive", "max", x, case["size"], case["stride"], dy)
    for backend in OTHER_BACKENDS:
        y_be, dx_be = run_pool(backend, "max", x, case["size"], case["stride"], dy)
        np.testing.assert_array_equal(y_be, y, err_msg=f"{backend} y")
        np.testing.assert_array_equal(dx_be, dx, err_msg=f"{backend} dx")


def test_maxpool_all_zero_window_sends_gradient_to_first_element():
    """The tie rule spelled out on one window, so a wrong rule in naive itself is caught too."""
    x = np.zeros((1, 2, 2, 1))
    for backend in ["naive"] + OTHER_BACKENDS:
        _, dx = run_pool(backend, "max", x, 2, None, np.ones((1, 1, 1, 1)))
        np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 0], [0, 0]], err_msg=backend)


def test_realistic_shape_all_backends_agree():
    """The first layer of the MNIST network: (64, 28, 28, 1) -> 16, 3x3, padding 1, float32."""
    rng = np.random.default_rng(0)
    x = rng.random((64, 28, 28, 1), dtype=np.float32)
    w = (rng.standard_normal((3, 3, 1, 16)) / 3).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    dy = rng.standard_normal((64, 28, 28, 16)).astype(np.float32)
    expected = run_conv("naive", x, w, b, 1, 1, dy)
    for backend in OTHER_BACKENDS:
        for name, got, want in zip(
            ("y", "dx", "dw", "db"), run_conv(backend, x, w, b, 1, 1, dy), expected
        ):
            assert_close(got, want, f"{backend} {name}")


def test_conv_stride_and_padding_edges_by_hand():
    """A case small enough to check on paper: 1x5 input, 1x2 kernel, stride 2, padding 1.

    Padded row: [0, 1, 2, 3, 4, 5, 0]; windows at columns 0, 2, 4 -> [0+1, 2+3, 4+5] with w = [1, 1];
    column 6 is dropped (floor). dx: every input is covered once, the trailing padding never.
    """
    x = np.arange(1.0, 6.0).reshape(1, 1, 5, 1)
    w = np.ones((1, 2, 1, 1))
    dy = np.array([1.0, 10.0, 100.0]).reshape(1, 1, 3, 1)
    for backend in ["naive"] + OTHER_BACKENDS:
        y, dx, dw, db = run_conv(backend, x, w, None, (1, 2), (0, 1), dy)
        np.testing.assert_allclose(y.ravel(), [1, 5, 9], err_msg=backend)
        np.testing.assert_allclose(dx.ravel(), [1, 10, 10, 100, 100], err_msg=backend)
        np.testing.assert_allclose(dw.ravel(), [0 + 20 + 400, 1 + 30 + 500], err_msg=backend)
        assert db is None


@pytest.mark.parametrize(
    "x_shape, stride, multiplier",
    [
        ((2, 12, 13, 32), 1, 1),  # depthwise rows: 8-pixel blocks, ragged last block
        ((2, 12, 13, 32), 2, 1),  # rows forward, per-pixel dX
        ((1, 7, 7, 144), 1, 1),  # more channels than a row block: per pixel
        ((1, 9, 8, 20), (1, 2), 2),  # channel multiplier 2, stride 2 along the width
    ],
)
def test_depthwise_layer_shapes_match_naive(x_shape, stride, multiplier):
    """MobileNet-like depthwise 3x3 layers (padding 1, float32) with enough channels to reach
    the numba depthwise kernels' row blocks and their per-pixel kernels."""
    rng = np.random.default_rng(11)
    c = x_shape[3]
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((3, 3, 1, c * multiplier)).astype(np.float32)
    b = rng.standard_normal(c * multiplier).astype(np.float32)
    y, _ = get_backend("einsum").conv2d_forward(x, w, b, stride, 1, groups=c)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    expected = run_conv("naive", x, w, b, stride, 1, dy, groups=c)
    for backend in OTHER_BACKENDS:
        if not takes_groups(backend):
            continue  # auto: tests/test_kernels_auto.py's business once it passes groups on
        got = run_conv(backend, x, w, b, stride, 1, dy, groups=c)
        for name, got_a, want in zip(("y", "dx", "dw", "db"), got, expected):
            assert_close(got_a, want, f"{backend} {name}")
