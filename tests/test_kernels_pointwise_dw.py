"""kernels.pointwise_dw: a 1x1 layer's dW from packed panels equals einsum's, over chunks,
strides and channel counts the tiles do not divide."""

import numpy as np
import pytest
from kernels_helpers import record_tile_kernels

from kernels import einsum, numba_jit, numba_tiles, pointwise_dw


def _reference(x, dy, stride):
    """dW (1, 1, C_in, C_out) and db of a 1x1 convolution, by einsum's backend in float64."""
    w = np.zeros((1, 1, x.shape[3], dy.shape[3]))
    _, ctx = einsum.conv2d_forward(x.astype(np.float64), w, np.zeros(dy.shape[3]), stride, 0)
    _, dw, db = einsum.conv2d_backward(dy.astype(np.float64), ctx, need_dx=False)
    return dw, db


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "c_in, c_out, stride, chunk",
    [
        (pointwise_dw.DW_TILE * 2, pointwise_dw.LANES * 2, (1, 1), 16),  # whole tiles
        (pointwise_dw.DW_TILE + 5, pointwise_dw.LANES + 7, (2, 2), 16),  # moved-back tiles
        (70, 65, (2, 1), 37),  # a last chunk shorter than the others
        (13, 17, (1, 2), 1000),  # one chunk for every pixel
    ],
)
def test_dw_packed_matches_einsum(dtype, c_in, c_out, stride, chunk):
    rng = np.random.default_rng(c_in + c_out)
    x = rng.standard_normal((3, 9, 8, c_in)).astype(dtype)
    out_h, out_w = -(-9 // stride[0]), -(-8 // stride[1])
    dy = rng.standard_normal((3, out_h, out_w, c_out)).astype(dtype)
    dw = np.zeros((1, c_in, c_out), dtype)
    db = np.zeros(c_out, dtype)
    with numba_tiles.slp_vectorize():
        pointwise_dw.dw_packed(x, dy, dw, db, *stride, chunk)
    dw_ref, db_ref = _reference(x, dy, stride)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dw.reshape(dw_ref.shape), dw_ref, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(db, db_ref, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride", [1, 2])
def test_the_backend_runs_it_on_wide_1x1_layers(dtype, stride, monkeypatch):
    """numba's backward on a 1x1 layer wide enough (MIN_MACS_PER_VALUE) takes its dW from
    dw_packed, and one narrower or padded from dw_tiles, both equal to einsum's."""
    ran = record_tile_kernels(monkeypatch)
    rng = np.random.default_rng(stride)
    assert pointwise_dw.MIN_MACS_PER_VALUE == 40  # the cases below straddle it
    for c_in, c_out, padding, packed in (
        (128, 67, 0, True),  # 44 multiply-adds per packed value
        (64, 64, 0, False),  # 32
        (128, 128, 1, False),  # padded
    ):
        x = rng.standard_normal((2, 17, 16, c_in)).astype(dtype)  # 8+ output columns
        w = rng.standard_normal((1, 1, c_in, c_out)).astype(dtype)
        b = rng.standard_normal(c_out).astype(dtype)
        y, ctx = numba_jit.conv2d_forward(x, w, b, stride, padding)
        dy = rng.standard_normal(y.shape).astype(dtype)
        ran.clear()
        _, dw, db = numba_jit.conv2d_backward(dy, ctx, need_dx=False)
        assert (pointwise_dw.dw_packed in ran) == packed, (c_in, c_out, padding)
        f64 = [a.astype(np.float64) for a in (x, w, b)]
        _, ctx_ref = einsum.conv2d_forward(*f64, stride, padding)
        _, dw_ref, db_ref = einsum.conv2d_backward(dy.astype(np.float64), ctx_ref, need_dx=False)
        tol = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(dw, dw_ref, rtol=tol, atol=tol * np.abs(dw_ref).max())
        np.testing.assert_allclose(db, db_ref, rtol=tol, atol=tol * np.abs(db_ref).max())


@pytest.mark.parametrize("c_in, c_out", [(64, 64), (2048, 512), (4096, 4096)])
@pytest.mark.parametrize("itemsize", [4, 8])
def test_a_chunk_fits_its_caches(c_in, c_out, itemsize):
    chunk = pointwise_dw.chunk_pixels(c_in, c_out, itemsize)
    pair = (pointwise_dw.DW_TILE + pointwise_dw.LANES) * itemsize
    assert chunk == 16 or chunk * pair <= pointwise_dw.L1_PANEL_BYTES
    panels = (c_in + pointwise_dw.DW_TILE + c_out + pointwise_dw.LANES) * itemsize * chunk
    assert chunk == 16 or panels <= pointwise_dw.L2_BYTES // 2 + chunk * pair
