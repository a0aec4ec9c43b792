"""kernels/batchnorm.py against the batch-norm formulas written with NumPy (float64), on random
shapes, dtypes and offsets; model.layers.BatchNorm's finite-difference checks are in
tests/test_model_layers.py."""

import threading

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
    y, x_hat, mean, var, inv_std, count = batchnorm.forward_train(x, gamma, beta, EPS)
    assert count == rows
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


def test_a_cross_process_sum_sees_the_whole_batch():
    """Two halves of a batch on two threads, each `reduce` summing its statistics with the
    other's (as an MPI Allreduce does), normalise and backpropagate as the whole batch does."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 5)) + 2
    dy = rng.standard_normal((40, 5))
    gamma, beta = rng.uniform(0.5, 2, 5), rng.standard_normal(5)
    whole = batchnorm.forward_train(x, gamma, beta, EPS)
    whole_back = batchnorm.backward(dy, whole[1], whole[4], gamma)
    halves, shift = (slice(0, 15), slice(15, 40)), np.full(5, 1.5)
    barrier, posted, results = threading.Barrier(2), {}, {}

    def allreduce(rank):
        def reduce(local):
            posted[rank] = local
            barrier.wait()
            total = posted[0] + posted[1]
            barrier.wait()  # both have read before either posts again
            return total

        return reduce

    def run(rank):
        reduce, part = allreduce(rank), halves[rank]
        fwd = batchnorm.forward_train(x[part], gamma, beta, EPS, shift=shift, reduce=reduce)
        back = batchnorm.backward(dy[part], fwd[1], fwd[4], gamma, count=fwd[5], reduce=reduce)
        results[rank] = fwd, back

    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for rank, part in enumerate(halves):
        fwd, back = results[rank]
        assert fwd[5] == 40
        np.testing.assert_allclose(fwd[0], whole[0][part], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(fwd[2], whole[2], rtol=1e-12)
        np.testing.assert_allclose(back[0], whole_back[0][part], rtol=1e-10, atol=1e-12)
    # the parameters' gradients are each half's share, summed once by the data-parallel step
    for i in (1, 2):
        np.testing.assert_allclose(results[0][1][i] + results[1][1][i], whole_back[i], rtol=1e-10)
