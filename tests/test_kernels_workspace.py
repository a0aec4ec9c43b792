"""kernels/workspace.py (per-shape buffers) and the backends' use of it: results never alias a
workspace buffer the caller does not hold or an earlier call's results still held, and a ctx
keeps its columns from the next call."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kernels import get_backend, im2col, naive, workspace

DTYPES = [np.float64, np.float32]


@pytest.fixture(autouse=True)
def fresh_workspace():
    workspace.clear()
    yield
    workspace.clear()


def test_take_reuses_a_buffer_only_once_nobody_holds_it():
    a = workspace.take("t", (3, 5), np.float32)
    b = workspace.take("t", (3, 5), np.float32)  # a is held: another buffer
    assert not np.shares_memory(a, b)
    view = a.T[1:]  # a view keeps its array's buffer taken
    address = a.ctypes.data
    del a
    c = workspace.take("t", (3, 5), np.float32)
    assert not np.shares_memory(c, view) and not np.shares_memory(c, b)
    del view, c
    assert workspace.take("t", (3, 5), np.float32).ctypes.data == address
    assert address % 64 == 0  # page-aligned: whole cache lines and AVX-512 vectors


def test_take_keeps_names_shapes_and_dtypes_apart():
    a = workspace.take("t", (4, 4), np.float32)
    others = [
        workspace.take("u", (4, 4), np.float32),
        workspace.take("t", (2, 8), np.float32),
        workspace.take("t", (4, 4), np.float64),
    ]
    assert all(not np.shares_memory(a, o) for o in others)
    assert [o.dtype for o in others] == [np.float32, np.float32, np.float64]
    assert others[1].shape == (2, 8) and others[1].flags.c_contiguous


def test_workspace_is_bounded():
    for i in range(workspace.MAX_SHAPES + 3):
        workspace.take(f"shape{i}", (8,), np.float64)
    assert workspace.pooled_bytes() == workspace.MAX_SHAPES * 64
    held = [workspace.take("many", (8,), np.float64) for _ in range(workspace.MAX_PER_SHAPE + 2)]
    assert len({h.ctypes.data for h in held}) == len(held)  # beyond the cap: plain arrays
    previous = workspace.set_limit(0)
    try:
        assert workspace.pooled_bytes() == 0
        workspace.take("off", (8,), np.float64)
        assert workspace.pooled_bytes() == 0
    finally:
        workspace.set_limit(previous)


def test_threads_never_share_a_buffer():
    got: list[np.ndarray] = []
    barrier = threading.Barrier(4)

    def worker():
        barrier.wait()
        for _ in range(50):
            a = workspace.take("threads", (64,), np.float64)
            a[:] = threading.get_ident()
            assert (a == threading.get_ident()).all()
        got.append(workspace.take("threads", (64,), np.float64))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({a.ctypes.data for a in got}) == 4


# x shape, (KH, KW, C_out), stride, padding, groups: im2col's paths that use the workspace
# (1x1 with x beside a ones column, 1x1 with x as it is, padded, one input channel, grouped)
CASES = [
    ((2, 5, 6, 3), (1, 1, 7), 1, 0, 1),
    ((2, 5, 6, 7), (1, 1, 3), 1, 0, 1),
    ((2, 6, 5, 3), (3, 3, 4), 1, 1, 1),
    ((2, 6, 6, 1), (3, 3, 4), 2, 1, 1),
    ((2, 6, 6, 4), (3, 3, 6), 1, 1, 2),
]


def _problem(case, dtype, seed):
    x_shape, (kh, kw, c_out), stride, padding, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((kh, kw, x_shape[3] // groups, c_out)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    return x, w, b, dict(stride=stride, padding=padding, groups=groups)


def _call(x, w, b, kw, dy_seed):
    y, ctx = im2col.conv2d_forward(x, w, b, **kw)
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape).astype(y.dtype)
    return (y, *im2col.conv2d_backward(dy, ctx)), dy


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
def test_a_second_call_returns_arrays_of_its_own(case, dtype):
    """y, dx, dw, db of a call alias neither the workspace nor a later call's results."""
    x, w, b, kw = _problem(case, dtype, 0)
    first, _ = _call(x, w, b, kw, 1)
    kept = [a.copy() for a in first]
    x2, w2, b2, _ = _problem(case, dtype, 2)
    second, _ = _call(x2, w2, b2, kw, 3)
    for a, before in zip(first, kept):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, before)  # the second call wrote nothing into it
        assert all(not np.shares_memory(a, c) for c in second)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
def test_two_layers_of_one_shape_keep_their_columns(case, dtype):
    """A network's forward runs both layers before either backward: the second forward must not
    overwrite the columns the first layer's ctx keeps (each backward against naive's)."""
    problems = [_problem(case, dtype, seed) for seed in (0, 1)]
    ctxs = [im2col.conv2d_forward(x, w, b, **kw)[1] for x, w, b, kw in problems]
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    for (x, w, b, kw), ctx in reversed(list(zip(problems, ctxs))):
        y, naive_ctx = naive.conv2d_forward(x, w, b, **kw)
        dy = np.random.default_rng(5).standard_normal(y.shape).astype(dtype)
        for got, want in zip(im2col.conv2d_backward(dy, ctx), naive.conv2d_backward(dy, naive_ctx)):
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 10)


def test_steady_state_calls_take_no_new_memory():
    """After the first call, a call of the same shape reuses the workspace's buffers."""
    x, w, b, kw = _problem(CASES[2], np.float32, 0)
    _call(x, w, b, kw, 1)
    pooled = workspace.pooled_bytes()
    assert pooled > 0
    for seed in range(3):
        _call(x, w, b, kw, seed)
    assert workspace.pooled_bytes() == pooled


# numba's and winograd's paths whose y and dx come from the workspace: the register tiles (dX
# by the forward's kernel at stride 1, by phases at stride 2), depthwise, the plane kernels (one
# input channel), winograd's fused F(2x2) (under 64 input channels) and batched F(4x4)
BACKEND_CASES = [
    ("numba", ((2, 9, 9, 16), (3, 3, 16), 1, 1, 1)),
    ("numba", ((2, 16, 16, 16), (3, 3, 16), 2, 1, 1)),
    ("numba", ((2, 8, 8, 8), (3, 3, 8), 1, 1, 8)),
    ("numba", ((2, 8, 8, 1), (3, 3, 4), 1, 1, 1)),
    ("winograd", ((2, 8, 8, 16), (3, 3, 16), 1, 1, 1)),
    ("winograd", ((2, 8, 8, 64), (3, 3, 16), 1, 1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name, case", BACKEND_CASES)
def test_results_taken_from_the_workspace_stay_the_callers(name, case, dtype):
    """A later call of the same shape never writes into y, dx, dw or db the caller still holds,
    and each call's results are right (against naive's)."""
    be = get_backend(name)
    calls = []
    for seed in (0, 2):
        x, w, b, kw = _problem(case, dtype, seed)
        y, ctx = be.conv2d_forward(x, w, b, **kw)
        dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype)
        got = (y, *be.conv2d_backward(dy, ctx))
        y_ref, ref_ctx = naive.conv2d_forward(x, w, b, **kw)
        calls.append((got, [a.copy() for a in got], (y_ref, *naive.conv2d_backward(dy, ref_ctx))))
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    (first, kept, _), (second, _, _) = calls
    for a, before in zip(first, kept):
        np.testing.assert_array_equal(a, before)  # the second call wrote nothing into it
        assert all(not np.shares_memory(a, c) for c in second)
    for got, _, want in calls:
        for g_, w_ in zip(got, want):
            np.testing.assert_allclose(g_, w_, rtol=rtol, atol=rtol * 10)


def test_pool_results_stay_the_callers():
    be = get_backend("numba")
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((2, 2, 8, 8, 4)).astype(np.float32)
    y1, ctx1 = be.maxpool2d_forward(x1)
    dx1 = be.maxpool2d_backward(np.ones_like(y1), ctx1)
    kept = y1.copy(), dx1.copy()
    y2, ctx2 = be.maxpool2d_forward(x2)
    dx2 = be.maxpool2d_backward(2 * np.ones_like(y2), ctx2)
    np.testing.assert_array_equal(y1, kept[0])
    np.testing.assert_array_equal(dx1, kept[1])
    assert not np.shares_memory(y1, y2) and not np.shares_memory(dx1, dx2)
    np.testing.assert_array_equal(y2, naive.maxpool2d_forward(x2)[0])
