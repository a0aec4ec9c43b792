"""kernels/batchnorm_pool.py: batch norm and a 2x2 max-pool of stride 2 in one pass each way,
against batchnorm.py followed by each backend's pool (the same bits where the threads split the
rows alike), on random shapes and both dtypes, NaN included, and by finite differences (float64).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernels_helpers import BACKENDS

from kernels import batchnorm, batchnorm_pool, get_backend

EPS = 1e-5


def _inputs(shape, dtype, seed, nan=False):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    if nan:
        x[0, 1, 0, 0] = np.nan
    chans = shape[3]
    gamma = rng.uniform(-2, 2, chans).astype(dtype)  # negative scales flip which pixel wins
    beta = rng.standard_normal(chans).astype(dtype)
    return x, gamma, beta, rng


def _two_layers(x, gamma, beta, backend="numba"):
    """batchnorm.forward_train then the backend's 2x2 max-pool: (y, pool ctx, x_hat, inv_std,
    count, the pool backend)."""
    be = get_backend(backend)
    c = x.shape[3]
    y, x_hat, _, _, inv_std, count = batchnorm.forward_train(x.reshape(-1, c), gamma, beta, EPS)
    pooled, ctx = be.maxpool2d_forward(y.reshape(x.shape), 2, 2)
    return pooled, ctx, x_hat, inv_std, count, be


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "naive"])
@pytest.mark.parametrize("nan", [False, True], ids=["finite", "nan"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_the_deep_networks_first_block_equals_the_two_layers_to_the_bit(backend, dtype, nan):
    x, gamma, beta, rng = _inputs((8, 28, 28, 32), dtype, 0, nan)
    pooled, ctx, x_hat, inv_std, count, be = _two_layers(x, gamma, beta, backend)
    y, argmax, mean, var, inv_std_fused, count_fused = batchnorm_pool.forward_train_maxpool2(
        x, gamma, beta, EPS
    )
    np.testing.assert_array_equal(y, pooled)
    np.testing.assert_array_equal(argmax, ctx.argmax)
    np.testing.assert_array_equal(inv_std_fused, inv_std)
    assert count_fused == count and y.dtype == dtype
    dy = rng.standard_normal(y.shape).astype(dtype)
    d_norm = be.maxpool2d_backward(dy, ctx).reshape(-1, x.shape[3])
    want = batchnorm.backward(d_norm, x_hat, inv_std, gamma, count=count)
    got = batchnorm_pool.backward_maxpool2(dy, argmax, x, mean, inv_std_fused, gamma, count_fused)
    np.testing.assert_array_equal(got[0], want[0].reshape(x.shape))
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])


@settings(deadline=None, max_examples=25)
@given(
    n=st.integers(1, 5),
    half_h=st.integers(1, 6),
    half_w=st.integers(1, 6),
    chans=st.integers(1, 20),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_any_even_shape_agrees_with_the_two_layers(n, half_h, half_w, chans, dtype, seed):
    x, gamma, beta, rng = _inputs((n, 2 * half_h, 2 * half_w, chans), dtype, seed)
    pooled, ctx, x_hat, inv_std, count, be = _two_layers(x, gamma, beta)
    y, argmax, mean, _, inv_std_fused, _ = batchnorm_pool.forward_train_maxpool2(
        x, gamma, beta, EPS
    )
    np.testing.assert_array_equal(y, pooled)
    np.testing.assert_array_equal(argmax, ctx.argmax)
    dy = rng.standard_normal(y.shape).astype(dtype)
    d_norm = be.maxpool2d_backward(dy, ctx).reshape(-1, chans)
    want = batchnorm.backward(d_norm, x_hat, inv_std, gamma, count=count)
    got = batchnorm_pool.backward_maxpool2(dy, argmax, x, mean, inv_std_fused, gamma, count)
    # the threads may split the float64 sums at another row: float32 rounding apart at most
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[0], want[0].reshape(x.shape), **tol)
    np.testing.assert_allclose(got[1], want[1], **tol)
    np.testing.assert_allclose(got[2], want[2], **tol)


def test_finite_differences_float64():
    x, gamma, beta, rng = _inputs((2, 4, 6, 3), np.float64, 7)
    r = rng.standard_normal((2, 2, 3, 3))  # loss = sum(r * pooled output)

    def loss(x, gamma, beta):
        y = batchnorm_pool.forward_train_maxpool2(x, gamma, beta, EPS)[0]
        return float((r * y).sum())

    _, argmax, mean, _, inv_std, count = batchnorm_pool.forward_train_maxpool2(x, gamma, beta, EPS)
    dx, dgamma, dbeta = batchnorm_pool.backward_maxpool2(r, argmax, x, mean, inv_std, gamma, count)
    h = 1e-6
    for arr, grad in ((x, dx), (gamma, dgamma), (beta, dbeta)):
        numeric = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            keep = arr[i]
            arr[i] = keep + h
            up = loss(x, gamma, beta)
            arr[i] = keep - h
            down = loss(x, gamma, beta)
            arr[i] = keep
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "shape, applies",
    [((2, 4, 6, 3), True), ((2, 5, 6, 3), False), ((2, 4, 7, 3), False), ((4, 3), False)],
)
def test_applies_to_even_images_only(shape, applies):
    assert batchnorm_pool.applies(shape) is applies
