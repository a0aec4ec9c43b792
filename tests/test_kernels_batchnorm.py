"""kernels/batchnorm.py against the batch-norm formulas written with NumPy (float64), on random
shapes, dtypes and offsets; model.layers.BatchNorm's finite-difference checks are in
tests/test_model_layers.py."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernels import batchnorm

EPS = 1e-5


def reference(x, gamma, beta, dy):
    """The textbook forward and backward in float64: (y, x_hat, mean, var, dx, dgamma, dbeta)."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    mean, var = x.mean(axis=0), x.var(axis=0)
    x_hat = (x - mean) / np.sqrt(var + EPS)
    y = gamma * x_hat + beta
    n = len(x)
    dx_hat = dy * gamma
    dx = (n * dx_hat - dx_hat.sum(0) - x_hat * (dx_hat * x_hat).sum(0)) / (n * np.sqrt(var + EPS))
    return y, x_hat, mean, var, dx, (dy * x_hat).sum(0), dy.sum(0)


@given(
    rows=st.integers(1, 300),
    chans=st.integers(1, 40),
    offset=st.sampled_from([0.0, 3.0, 1000.0]),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_forward_and_backward_match_the_formulas(rows, chans, offset, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, chans)) * rng.uniform(0.1, 3, chans) + offset).astype(dtype)
    dy = rng.standard_normal((rows, chans)).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, chans).astype(dtype), rng.standard_normal(chans).astype(dtype)
    y, x_hat, mean, var, inv_std = batchnorm.forward_train(x, gamma, beta, EPS)
    dx, dgamma, dbeta = batchnorm.backward(dy, x_hat, inv_std, gamma)
    want = reference(x, gamma, beta, dy)
    # float32: the inputs' own rounding (an offset of 1000 leaves ~1e-4 of a unit-scale value)
    rtol, atol = (1e-10, 1e-10) if dtype == np.float64 else (2e-3, 2e-3)
    for got, expected, name in zip(
        (y, x_hat, mean, var, dx, dgamma, dbeta),
        want,
        ("y", "x_hat", "mean", "var", "dx", "dgamma", "dbeta"),
    ):
        assert got.dtype == dtype, name
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol * scale, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_evaluation_uses_the_given_statistics(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 6)).astype(dtype)
    mean, var = rng.standard_normal(6).astype(dtype), rng.uniform(0.5, 2, 6).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, 6).astype(dtype), rng.standard_normal(6).astype(dtype)
    y = batchnorm.forward_eval(x, mean, var, gamma, beta, EPS)
    want = gamma * (x.astype(np.float64) - mean) / np.sqrt(var.astype(np.float64) + EPS) + beta
    assert y.dtype == dtype
    np.testing.assert_allclose(y, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
