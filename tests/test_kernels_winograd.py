"""The winograd backend: both tile sizes and the fused F(2x2) path against naive, its fallback
path, and its float32 error.

The shared equality tests (test_kernels_equality.py) already compare winograd with naive on
every hypothesis shape, with the tile size its rule picks; here each tile size is forced on
every shape, and float32 is held to a per-tile-size tolerance measured on network-sized layers:

    relative error (max |winograd - float64 reference| / max |reference|), float32,
    He-initialised weights, N(0, 1) inputs and gradients, 14x14 to 32x32 images, C_in 1-64:
        F(2x2, 3x3): 1.6e-7 - 6.9e-7 (the direct float32 sum: 1.1e-7 - 1.3e-6)
        F(4x4, 3x3): 1.4e-6 - 5.8e-6 (its transforms scale inputs by up to 5 and outputs by 8)

so the tolerances below leave a 10x margin; float64 is held to 1e-10 like every backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import geometry, naive, winograd, winograd_tiles

F32_RTOL = {2: 1e-5, 4: 5e-5}
F64_RTOL = 1e-10


def _assert_close(actual, expected, rtol, what, scale=None):
    """actual within rtol of expected, relative to scale (default: expected's largest value)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if scale is None:
        scale = float(np.abs(expected).max(initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


@pytest.fixture(autouse=True)
def fused_everywhere(monkeypatch):
    """The fused F(2x2) path on every machine, so that its tests run on AVX-512 machines too
    (where winograd declines those layers to numba by default: FUSED_ON_THIS_MACHINE)."""
    monkeypatch.setattr(winograd, "FUSED_ON_THIS_MACHINE", True)


def test_without_the_fused_path_its_layers_are_declined_to_the_fallback(monkeypatch):
    """As on an AVX-512 machine: a layer the fused path takes runs on FALLBACK, says so in
    ctx.path, and matches naive; the batched path's layers (64+ input channels) still run it."""
    monkeypatch.setattr(winograd, "FUSED_ON_THIS_MACHINE", False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 8, 16))
    w = rng.standard_normal((3, 3, 16, 16))
    g = geometry.conv_geometry(x, w, None, 1, 1)
    assert winograd_tiles.applies(g) and winograd.declined(g).endswith(f"on {winograd.FALLBACK}")
    y, ctx = winograd.conv2d_forward(x, w, None, 1, 1)
    assert ctx.path == winograd.declined(g)
    y_ref, ctx_ref = naive.conv2d_forward(x, w, None, 1, 1)
    _assert_close(y, y_ref, F64_RTOL, "y")
    dy = rng.standard_normal(y.shape)
    for got, want, what in zip(
        winograd.conv2d_backward(dy, ctx), naive.conv2d_backward(dy, ctx_ref), ("dx", "dw", "db")
    ):
        if want is not None:
            _assert_close(got, want, F64_RTOL, what)
    wide = np.ones((1, 8, 8, winograd_tiles.MAX_C_IN))
    _, wide_ctx = winograd.conv2d_forward(
        wide, np.ones((3, 3, winograd_tiles.MAX_C_IN, 16)), None, 1, 1
    )
    assert wide_ctx.path.startswith("winograd F(")


@pytest.fixture
def force_tile(monkeypatch):
    """force(m): the batched F(m x m) path on every 3x3 stride-1 shape (not the fused one)."""

    def force(m):
        monkeypatch.setattr(winograd, "tile_size", lambda g: m)
        monkeypatch.setattr(winograd_tiles, "applies", lambda g: False)
        monkeypatch.setattr(winograd, "declined", lambda g: "")

    return force


@st.composite
def winograd_cases(draw, channels=(1, 5), max_padding=3):
    """3x3 stride-1 convolutions: sizes that leave partial tiles, padding 0..max_padding, C_in
    and C_out drawn from `channels`."""
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 11)), draw(st.integers(1, 11))
    ph, pw = draw(st.integers(0, max_padding)), draw(st.integers(0, max_padding))
    if h + 2 * ph < 3 or w + 2 * pw < 3:
        ph, pw = max(ph, 1), max(pw, 1)
    return dict(
        x_shape=(n, h, w, draw(st.integers(*channels))),
        c_out=draw(st.integers(*channels)),
        padding=(ph, pw),
        bias=draw(st.booleans()),
        need_dx=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def _check_against_naive(case, dtype, rtol, path):
    """Forward and every gradient of the case on winograd against naive; `path` the winograd
    path the case must take (None: not checked)."""
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["x_shape"]).astype(dtype)
    w = rng.standard_normal((3, 3, case["x_shape"][3], case["c_out"])).astype(dtype)
    b = rng.standard_normal(case["c_out"]).astype(dtype) if case["bias"] else None
    y, ctx = naive.conv2d_forward(x, w, b, 1, case["padding"])
    y_w, ctx_w = winograd.conv2d_forward(x, w, b, 1, case["padding"])
    assert path is None or ctx_w.path == path
    dy = rng.standard_normal(y.shape).astype(dtype)
    grads = naive.conv2d_backward(dy, ctx, need_dx=case["need_dx"])
    grads_w = winograd.conv2d_backward(dy, ctx_w, need_dx=case["need_dx"])
    _assert_close(y_w, y, rtol, "y")
    # db is a sum of dy's values, which may cancel: its rounding error scales with their sizes
    # (a 7-pixel float32 case had db 2.4e-3 from values near 1, off by 1.2e-7 in both backends)
    db_scale = float(np.abs(dy).sum(axis=(0, 1, 2)).max(initial=0.0))
    for name, ref, got in zip(("dx", "dw", "db"), grads, grads_w):
        if ref is None:
            assert got is None, f"{name} should be None"
        else:
            _assert_close(got, ref, rtol, name, db_scale if name == "db" else None)


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=winograd_cases())
def test_each_tile_size_matches_naive(case, dtype, m, force_tile):
    force_tile(m)
    rtol = F64_RTOL if dtype == np.float64 else F32_RTOL[m]
    _check_against_naive(case, dtype, rtol, f"winograd F({m}x{m},3x3)")


@pytest.mark.parametrize("m", [*winograd.TILE_SIZES, "fused"])
def test_float32_error_on_a_network_layer(m, force_tile):
    """The figures in the module docstring: a deep_conv2-shaped layer against float64, on each
    batched tile size and on the fused F(2x2) path (which this layer takes by default)."""
    if m != "fused":
        force_tile(m)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 14, 14, 32))
    w = rng.standard_normal((3, 3, 32, 64)) * np.sqrt(2 / (9 * 32))
    y, ctx = naive.conv2d_forward(x, w, None, 1, 1)
    dy = rng.standard_normal(y.shape)
    dx, dw, _ = naive.conv2d_backward(dy, ctx)
    y32, ctx32 = winograd.conv2d_forward(x.astype(np.float32), w.astype(np.float32), None, 1, 1)
    assert m != "fused" or ctx32.path == winograd.FUSED_PATH
    dx32, dw32, _ = winograd.conv2d_backward(dy.astype(np.float32), ctx32)
    for ref, got in ((y, y32), (dx, dx32), (dw, dw32)):
        error = np.abs(got - ref).max() / np.abs(ref).max()
        assert error < F32_RTOL[2 if m == "fused" else m] / 5


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@settings(max_examples=40, deadline=None)
@given(case=winograd_cases(channels=(16, 24), max_padding=2))
def test_fused_path_matches_naive(case, dtype):
    """16-24 channels in and out: the fused F(2x2) path's tiles, full and ragged (shapes too
    small for its tiles take the batched path)."""
    g = geometry.conv_geometry(
        np.empty(case["x_shape"]),
        np.empty((3, 3, case["x_shape"][3], case["c_out"])),
        None,
        1,
        case["padding"],
    )
    path = winograd.FUSED_PATH if winograd_tiles.applies(g) else None
    _check_against_naive(case, dtype, F64_RTOL if dtype == np.float64 else F32_RTOL[2], path)


@pytest.mark.parametrize(
    "kernel, stride", [((1, 1), 1), ((5, 5), 1), ((3, 3), 2), ((2, 3), 1)], ids=str
)
def test_other_shapes_run_on_the_stated_fallback(kernel, stride):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 9, 9, 3))
    w = rng.standard_normal((*kernel, 3, 4))
    y, ctx = winograd.conv2d_forward(x, w, None, stride, 1)
    assert ctx.path == f"fallback:{winograd.FALLBACK}"
    y_ref, ctx_ref = naive.conv2d_forward(x, w, None, stride, 1)
    _assert_close(y, y_ref, F64_RTOL, "y")
    dy = rng.standard_normal(y.shape)
    for ref, got in zip(naive.conv2d_backward(dy, ctx_ref), winograd.conv2d_backward(dy, ctx)):
        assert (ref is None) == (got is None)
        if ref is not None:
            _assert_close(got, ref, F64_RTOL, "grad")


@pytest.mark.parametrize("c_in, c_out", [(1, 16), (16, 8), (3, 64)])
def test_few_channels_are_declined_and_said_so(c_in, c_out):
    """3x3 stride-1 with fewer than MIN_CHANNELS in or out: the batched path would lose to the
    fallback's direct tiles, so winograd hands it over, and ctx.path says why."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 9, c_in))
    w = rng.standard_normal((3, 3, c_in, c_out))
    y, ctx = winograd.conv2d_forward(x, w, None, 1, 1)
    assert ctx.path.startswith("declined: fewer than") and ctx.path.endswith(winograd.FALLBACK)
    y_ref, ctx_ref = naive.conv2d_forward(x, w, None, 1, 1)
    _assert_close(y, y_ref, F64_RTOL, "y")
    dy = rng.standard_normal(y.shape)
    for ref, got in zip(naive.conv2d_backward(dy, ctx_ref), winograd.conv2d_backward(dy, ctx)):
        if ref is not None:
            _assert_close(got, ref, F64_RTOL, "grad")


def test_many_channels_leave_the_fused_path_for_the_batched_one(monkeypatch):
    """A filter transform U too large for the cache share (u_fits_cache) takes the batched
    path; with a larger cache the same shape runs fused."""
    g = geometry.conv_geometry(np.empty((1, 8, 8, 32)), np.empty((3, 3, 32, 32)), None, 1, 1)
    monkeypatch.setattr(winograd_tiles.isa, "l2_bytes", lambda: 16 * 32 * 32 * 8 * 8)
    assert winograd_tiles.applies(g) and not winograd.declined(g)
    monkeypatch.setattr(winograd_tiles.isa, "l2_bytes", lambda: 16 * 32 * 32 * 8 * 8 - 1)
    assert not winograd_tiles.applies(g) and not winograd.declined(g)
    x = np.random.default_rng(4).standard_normal((1, 8, 8, 32))
    _, ctx = winograd.conv2d_forward(x, np.ones((3, 3, 32, 32)), None, 1, 1)
    assert ctx.path == f"winograd F({winograd.tile_size(g)}x{winograd.tile_size(g)},3x3)"


def test_transform_matrices_compute_a_correlation():
    """In one dimension, A^T [(G g) * (B^T d)] is the m outputs of the 3-tap correlation."""
    rng = np.random.default_rng(2)
    for m in winograd.TILE_SIZES:
        bt, g, at = winograd.transforms(m, np.float64)
        d, taps = rng.standard_normal(m + 2), rng.standard_normal(3)
        direct = np.array([d[i : i + 3] @ taps for i in range(m)])
        np.testing.assert_allclose(at @ ((g @ taps) * (bt @ d)), direct, rtol=1e-12, atol=1e-12)


def test_tile_size_rule_avoids_wasted_tiles():
    def geometry_for(size):
        x = np.zeros((1, size, size, 1), np.float32)
        return geometry.conv_geometry(x, np.zeros((3, 3, 1, 1), np.float32), None, 1, 1)

    assert winograd.tile_size(geometry_for(28)) == 4  # 7 tiles of 4 cover 28 exactly
    assert winograd.tile_size(geometry_for(32)) == 4
    assert winograd.tile_size(geometry_for(14)) == 4  # 16x16 computed: 1.31x, still faster
    assert winograd.tile_size(geometry_for(6)) == 2  # 8x8 for 6x6 would be 1.78x


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_batched_path_ctx_survives_later_calls_of_the_same_shape(dtype, m, force_tile):
    """The batched path reuses per-thread scratch (U, M, dM, dV, dU) across calls: two forwards
    of one shape, then their backwards in reverse order (as a network runs them), each still
    matches naive, and no returned array shares memory with another call's."""
    rng = np.random.default_rng(7)
    shape, w_shape = (2, 10, 10, 40), (3, 3, 40, 48)
    force_tile(m)
    calls = []
    for _ in range(2):
        x = rng.standard_normal(shape).astype(dtype)
        w = (rng.standard_normal(w_shape) * 0.1).astype(dtype)
        dy = rng.standard_normal((2, 10, 10, 48)).astype(dtype)
        calls.append((x, w, dy, *winograd.conv2d_forward(x, w, None, 1, 1)))
    rtol = F64_RTOL if dtype == np.float64 else F32_RTOL[m]
    outputs = []
    for x, w, dy, y, ctx in reversed(calls):
        assert ctx.path == f"winograd F({m}x{m},3x3)"
        y_ref, ctx_ref = naive.conv2d_forward(x, w, None, 1, 1)
        _assert_close(y, y_ref, rtol, "y")
        grads = winograd.conv2d_backward(dy, ctx)
        for name, ref, got in zip(("dx", "dw"), naive.conv2d_backward(dy, ctx_ref), grads):
            _assert_close(got, ref, rtol, name)
        outputs += [y, *grads[:2]]
    for i, a in enumerate(outputs):
        assert not any(np.shares_memory(a, b) for b in outputs[i + 1 :])
