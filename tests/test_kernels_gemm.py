"""kernels/gemm.py (products split over threads) and kernels/threads.py (numba's quiet workers)."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import gemm


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 300),
    k=st.integers(1, 200),
    n=st.integers(1, 300),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_matmul_equals_numpy_on_any_shape(m, k, n, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gemm, "MIN_SPLIT_MACS", 0)  # split even the small ones
        out = gemm.matmul(a, b)
    assert out.dtype == dtype and out.shape == (m, n)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, a @ b, rtol=tol, atol=tol * np.sqrt(k))


@pytest.mark.parametrize("shape", [(64, 3136, 128), (3136, 64, 128), (700, 50, 3)])
def test_matmul_splits_transposed_views_and_writes_out(shape):
    """A Dense layer's products: transposed (non-contiguous) operands and a given out."""
    m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m)).astype(np.float32).T
    b = rng.standard_normal((n, k)).astype(np.float32).T
    out = np.full((m, n), np.nan, np.float32)
    assert gemm.matmul(a, b, out=out) is out
    np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-3)


def test_matmul_pair_returns_both_products_in_order():
    rng = np.random.default_rng(1)
    x, dy, w = (
        rng.standard_normal(s).astype(np.float32) for s in ((64, 3136), (64, 128), (3136, 128))
    )
    dw, dx = gemm.matmul_pair((x.T, dy), (dy, w.T))
    np.testing.assert_allclose(dw, x.T @ dy, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dx, dy @ w.T, rtol=1e-4, atol=1e-3)


def test_batched_matmul_takes_strided_views():
    """Winograd's tile GEMMs: out[t] = a[t] @ b[t] with a transposed a and a strided out."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((36, 32, 100)).astype(np.float32).transpose(0, 2, 1)
    b = rng.standard_normal((36, 32, 64)).astype(np.float32)
    out = np.empty((100, 36, 64), np.float32).transpose(1, 0, 2)
    gemm.batched_matmul(a, b, out)
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-4, atol=1e-4)


def test_thread_count_follows_numba():
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert gemm.threads() == 1
    finally:
        numba.set_num_threads(threads)
    assert gemm.threads() == threads


def _child_output(code: str, env_extra: dict[str, str]) -> str:
    """What `code` prints in a child Python whose environment has no OpenMP wait settings but
    env_extra's."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, **env_extra},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


def _spin_setting_in_child(env_extra: dict[str, str]) -> str:
    """What libgomp's GOMP_SPINCOUNT reads as in a child that launched numba's threads, and
    whether the variable is left in the environment afterwards."""
    code = (
        "import os, kernels.threads as t; t.launch(); import numba; "
        "print(numba.threading_layer(), os.environ.get('GOMP_SPINCOUNT'))"
    )
    return _child_output(code, env_extra)


def _spin_count_libgomp_read(env_extra: dict[str, str]) -> str:
    """GOMP_SPINCOUNT as it stood when numba's OpenMP layer loaded in a child (the moment
    libgomp reads it)."""
    code = (
        "import os\n"
        "from numba.np.ufunc import parallel\n"
        "seen, load = [], parallel._launch_threads\n"
        "def spy():\n"
        "    seen.append(os.environ.get('GOMP_SPINCOUNT'))\n"
        "    load()\n"
        "parallel._launch_threads = spy\n"
        "import kernels.threads as t\n"
        "t.launch()\n"
        "print(seen[0])\n"
    )
    return _child_output(code, env_extra)


def test_launch_gives_libgomp_the_short_spin_unless_the_user_set_one():
    from kernels import threads

    assert _spin_count_libgomp_read({}) == str(threads.SPIN_COUNT) != "0"
    assert _spin_count_libgomp_read({"GOMP_SPINCOUNT": "1000"}) == "1000"
    assert _spin_count_libgomp_read({"OMP_WAIT_POLICY": "passive"}) == "None"


def test_launch_leaves_the_environment_as_it_found_it():
    layer, spin = _spin_setting_in_child({}).split()
    assert spin == "None"  # set only while numba's OpenMP layer loaded, then removed
    assert _spin_setting_in_child({"GOMP_SPINCOUNT": "1000"}).split()[1] == "1000"


@pytest.mark.parametrize("n_threads", [1, 2])
def test_batched_pair_computes_both_stacks(n_threads):
    rng = np.random.default_rng(3)
    v = rng.standard_normal((36, 50, 8)).astype(np.float32)
    dm = rng.standard_normal((36, 50, 16)).astype(np.float32)
    u = rng.standard_normal((36, 8, 16)).astype(np.float32)
    du, dv = np.empty_like(u), np.empty_like(v)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
        gemm.batched_pair((v.transpose(0, 2, 1), dm, du), (dm, u.transpose(0, 2, 1), dv))
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_allclose(du, np.matmul(v.transpose(0, 2, 1), dm), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dv, np.matmul(dm, u.transpose(0, 2, 1)), rtol=1e-4, atol=1e-4)


def test_the_blas_thread_count_is_numpys_own(monkeypatch):
    """scipy ships an OpenBLAS of its own; holding numpy's to one thread (as model.train does)
    must read as one, or product() would run one-threaded BLAS calls instead of splitting."""
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS where it has its own)
    from threadpoolctl import ThreadpoolController

    monkeypatch.setattr(gemm, "_blas", None)  # found again, with scipy's library loaded

    every = ThreadpoolController().select(user_api="blas")
    numpy_blas = gemm._numpy_blas()
    if len(numpy_blas.lib_controllers) == len(every.lib_controllers):
        pytest.skip("numpy and scipy share one BLAS library here")
    with (
        numpy_blas.limit(limits=1),
        every.select(
            filepath=[
                lib.filepath
                for lib in every.lib_controllers
                if lib.filepath not in {n.filepath for n in numpy_blas.lib_controllers}
            ]
        ).limit(limits=2),
    ):
        assert gemm._blas_threads() == 1
        a = np.ones((256, 64), np.float32)
        np.testing.assert_array_equal(gemm.product(a, a.T), a @ a.T)
