"""kernels.numba_tiles' blocking for the cache: dW over bands of output rows gives the same
sums as one pass over the plane."""

import numpy as np

from kernels import einsum, numba_jit, numba_tiles


def test_dw_over_several_bands_matches_einsum():
    # a plane so wide that one padded input row fills half the L2: every band is one row
    c = 16
    width = numba_tiles.L2_BYTES // (c * 8)
    x = np.random.default_rng(0).standard_normal((1, 5, width, c))
    w = np.random.default_rng(1).standard_normal((3, 3, c, 16))
    assert numba_tiles.dw_band_rows((width + 2) * c * 8, 1, width * 16 * 8) < 5
    y, ctx = numba_jit.conv2d_forward(x, w, None, 1, 1)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    _, dw, _ = numba_jit.conv2d_backward(dy, ctx, need_dx=False)
    _, ctx_ref = einsum.conv2d_forward(x, w, None, 1, 1)
    _, dw_ref, _ = einsum.conv2d_backward(dy, ctx_ref, need_dx=False)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10 * np.abs(dw_ref).max())
