"""kernels.numba_tiles' blocking for the cache: dW over bands of output rows gives the same
sums as one pass over the plane."""

import numpy as np
import pytest
from kernels_helpers import record_tile_kernels

from kernels import einsum, naive, numba_jit, numba_tiles


def test_dw_over_several_bands_matches_einsum():
    # a plane so wide that one padded input row fills half the L2: every band is one row
    c = 16
    width = numba_tiles.L2_BYTES // (c * 8)
    x = np.random.default_rng(0).standard_normal((1, 5, width, c))
    w = np.random.default_rng(1).standard_normal((3, 3, c, 16))
    assert numba_tiles.dw_band_rows((width + 2) * c * 8, 1, width * 16 * 8, False) < 5
    y, ctx = numba_jit.conv2d_forward(x, w, None, 1, 1)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    _, dw, _ = numba_jit.conv2d_backward(dy, ctx, need_dx=False)
    _, ctx_ref = einsum.conv2d_forward(x, w, None, 1, 1)
    _, dw_ref, _ = einsum.conv2d_backward(dy, ctx_ref, need_dx=False)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10 * np.abs(dw_ref).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride", [1, 2])
def test_a_1x1_layers_dw_over_bands_of_the_l1_budget_matches_einsum(dtype, stride):
    # a 1x1 kernel's band is POINTWISE_BAND_BYTES: these rows are split into many bands
    c, width = 24, 40
    assert numba_tiles.dw_band_rows(width * c * 8, stride, width * 16 * 8, True) < 12
    rng = np.random.default_rng(stride)
    x = rng.standard_normal((3, 24, width, c)).astype(dtype)
    w = rng.standard_normal((1, 1, c, 40)).astype(dtype)
    y, ctx = numba_jit.conv2d_forward(x, w, None, stride, 0)
    assert numba_tiles.backward_applies(ctx.geometry)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, _ = numba_jit.conv2d_backward(dy, ctx)
    _, ctx_ref = einsum.conv2d_forward(x, w, None, stride, 0)
    dx_ref, dw_ref, _ = einsum.conv2d_backward(dy, ctx_ref)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(dw, dw_ref, rtol=rtol, atol=rtol * np.abs(dw_ref).max())
    np.testing.assert_allclose(dx, dx_ref, rtol=rtol, atol=rtol * np.abs(dx_ref).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c_in, c_out", [(16, 16), (16, 35), (35, 16), (40, 67)])
def test_forward_tiles_of_both_widths_match_naive(dtype, c_in, c_out):
    """forward() in LANES- and WIDE_LANES-channel tiles (the wide one where C_out, or C_in for
    dX at stride 1, fills it), on planes and channel counts the tiles do not divide: the last
    tile moved back over pixels and channels already computed."""
    rng = np.random.default_rng(c_in * 100 + c_out)
    side = numba_tiles.FORWARD_TILE + 3
    x = rng.standard_normal((2, side, side, c_in)).astype(dtype)
    w = rng.standard_normal((3, 3, c_in, c_out)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    assert numba_tiles.forward_applies(numba_jit.conv_geometry(x, w, b, 1, 1))
    y, ctx = numba_jit.conv2d_forward(x, w, b, 1, 1)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = numba_jit.conv2d_backward(dy, ctx)
    y_ref, ctx_ref = naive.conv2d_forward(x, w, b, 1, 1)
    dx_ref, dw_ref, db_ref = naive.conv2d_backward(dy, ctx_ref)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for got, ref in ((y, y_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_forward_kernel_by_channels():
    assert numba_tiles.forward_for(numba_tiles.LANES) is (
        numba_tiles.forward_wide
        if numba_tiles.WIDE_LANES == numba_tiles.LANES
        else numba_tiles.forward
    )
    assert numba_tiles.forward_for(numba_tiles.WIDE_LANES) is numba_tiles.forward_wide


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_in_weight_groups_matches_einsum(dtype, monkeypatch):
    """A layer whose weights exceed WEIGHT_GROUP_BYTES runs forward() (and dX by forward())
    in groups of output channels, the last one shorter: the same numbers as one pass."""
    lanes = numba_tiles.WIDE_LANES
    item = np.dtype(dtype).itemsize
    # enough input channels that one tile's weight columns (9 * C_in values each) fill a group
    c_in = -(-numba_tiles.WEIGHT_GROUP_BYTES // (9 * item * lanes))
    c_out = 2 * lanes + 5
    assert numba_tiles.weight_group(9 * c_in * item, lanes, c_out) < c_out
    rng = np.random.default_rng(7)
    side = numba_tiles.FORWARD_TILE + 2
    x = rng.standard_normal((1, side, side, c_in)).astype(dtype)
    w = (rng.standard_normal((3, 3, c_in, c_out)) / np.sqrt(9 * c_in)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    ran = record_tile_kernels(monkeypatch)
    y, ctx = numba_jit.conv2d_forward(x, w, b, 1, 1)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, _, _ = numba_jit.conv2d_backward(dy, ctx)
    assert numba_tiles.forward_for(c_out) in ran
    f64 = [a.astype(np.float64) for a in (x, w, b)]
    y_ref, ctx_ref = einsum.conv2d_forward(*f64, 1, 1)
    dx_ref, _, _ = einsum.conv2d_backward(dy.astype(np.float64), ctx_ref)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for got, ref in ((y, y_ref), (dx, dx_ref)):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dx_phases_in_weight_groups_matches_einsum(dtype, monkeypatch):
    """A strided layer whose phase weights exceed WEIGHT_GROUP_BYTES runs dx_phases in groups
    of input channels, the last one shorter: the same dX as one pass."""
    lanes = numba_tiles.LANES
    item = np.dtype(dtype).itemsize
    # a 3x3 kernel at stride 2: phase weights of 2 x 2 taps per input channel
    c_out = -(-numba_tiles.WEIGHT_GROUP_BYTES // (4 * item * lanes))
    c_in = 2 * lanes + 5
    assert numba_tiles.weight_group(4 * c_out * item, lanes, c_in) < c_in
    rng = np.random.default_rng(8)
    side = 2 * numba_tiles.FORWARD_TILE + 2  # the tiled forward's and the phases' widths
    x = rng.standard_normal((1, side, side, c_in)).astype(dtype)
    w = (rng.standard_normal((3, 3, c_in, c_out)) / np.sqrt(9 * c_in)).astype(dtype)
    ran = record_tile_kernels(monkeypatch)
    y, ctx = numba_jit.conv2d_forward(x, w, None, 2, 1)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, _, _ = numba_jit.conv2d_backward(dy, ctx)
    assert numba_tiles.dx_phases in ran
    _, ctx_ref = einsum.conv2d_forward(x.astype(np.float64), w.astype(np.float64), None, 2, 1)
    dx_ref, _, _ = einsum.conv2d_backward(dy.astype(np.float64), ctx_ref)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol * np.abs(dx_ref).max())
