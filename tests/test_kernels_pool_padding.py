"""Padded and ceil_mode pooling (kernels/contract.py, "Pooling"): every backend against naive,
finite differences, PyTorch as the oracle, the errors, and the fused paths declining.

Backends whose pooling takes no `padding` argument are skipped by name with a reason
(test_backend_takes_pool_padding), so a backend that gains it is checked from then on.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kernels_helpers import BACKENDS, DTYPES, assert_close, numeric_grad

from kernels import get_backend
from kernels.geometry import pool_geometry

EXAMPLES = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _takes_padding(name: str) -> bool:
    be = get_backend(name)
    return all(
        "padding" in inspect.signature(getattr(be, f"{kind}pool2d_forward")).parameters
        for kind in ("max", "avg")
    )


PADDED = [name for name in BACKENDS if _takes_padding(name)]
OTHERS = [name for name in PADDED if name != "naive"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_takes_pool_padding(backend):
    if not _takes_padding(backend):
        pytest.skip(f"{backend}'s pooling takes no padding argument: not checked by this file")
    be = get_backend(backend)
    y, ctx = be.avgpool2d_forward(np.ones((1, 3, 3, 1)), 3, 2, 1, True, False)
    assert y.shape == (1, 2, 2, 1) and ctx.geometry.padding == ((1, 1), (1, 1))


@pytest.fixture(params=["threads-by-size", "threads-always"])
def parallel_threshold(request, monkeypatch):
    """As tests/test_kernels_equality.py: every test twice, the second time with each backend's
    PARALLEL_MIN_WORK forced to 0 so its threaded split runs on every shape drawn."""
    if request.param == "threads-always":
        for name in BACKENDS:
            module = get_backend(name)
            if hasattr(module, "PARALLEL_MIN_WORK"):
                monkeypatch.setattr(module, "PARALLEL_MIN_WORK", 0)
    return request.param


@st.composite
def padded_pool_cases(draw):
    """A pooling call with padding in one of its three forms (each side at most half the
    window), stride None / int / pair, ceil_mode and count_include_pad."""
    n, h, w, c = [draw(st.integers(1, top)) for top in (3, 10, 10, 4)]
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    form = draw(st.sampled_from(["int", "pair", "pairs"]))
    if form == "int":
        padding = draw(st.integers(0, min(kh, kw) // 2))
    elif form == "pair":
        padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    else:
        rows = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kh // 2)))
        padding = (rows, (draw(st.integers(0, kw // 2)), draw(st.integers(0, kw // 2))))
    top, bottom, left, right = pool_padding_sides(padding)
    assume(kh <= h + top + bottom and kw <= w + left + right)
    stride = draw(
        st.one_of(st.none(), st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
    )
    return dict(
        x_shape=(n, h, w, c),
        size=kh if kh == kw and draw(st.booleans()) else (kh, kw),
        stride=stride,
        padding=padding,
        ceil_mode=draw(st.booleans()),
        count_include_pad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def pool_padding_sides(padding) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of any padding form, written out independently of geometry."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if isinstance(padding[0], int):
        return padding[0], padding[0], padding[1], padding[1]
    return padding[0][0], padding[0][1], padding[1][0], padding[1][1]


def _expected_size(size: int, lo: int, hi: int, k: int, s: int, ceil_mode: bool) -> int:
    # PyTorch's pooling_output_shape, written out here rather than imported from geometry
    out = -(-(size + lo + hi - k) // s) + 1 if ceil_mode else (size + lo + hi - k) // s + 1
    if ceil_mode and (out - 1) * s >= size + lo:
        out -= 1
    return out


def _forward(backend, kind, x, case):
    """One case's forward -> (y, ctx)."""
    be = get_backend(backend)
    args = (x, case["size"], case["stride"], case["padding"], case["ceil_mode"])
    if kind == "avg":
        return be.avgpool2d_forward(*args, case["count_include_pad"])
    return be.maxpool2d_forward(*args)


def _backward(backend, kind, dy, ctx):
    return getattr(get_backend(backend), f"{kind}pool2d_backward")(dy, ctx)


@pytest.mark.usefixtures("parallel_threshold")
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["max", "avg"])
@EXAMPLES
@given(case=padded_pool_cases())
def test_padded_pool_matches_naive(case, kind, dtype):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["x_shape"]).astype(dtype)
    y, ctx = _forward("naive", kind, x, case)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = _backward("naive", kind, dy, ctx)
    top, bottom, left, right = pool_padding_sides(case["padding"])
    g = ctx.geometry
    n, h, w, c = case["x_shape"]
    out_h = _expected_size(h, top, bottom, g.kh, g.sh, case["ceil_mode"])
    out_w = _expected_size(w, left, right, g.kw, g.sw, case["ceil_mode"])
    assert y.shape == (n, out_h, out_w, c)
    for backend in OTHERS:
        y_be, ctx_be = _forward(backend, kind, x, case)
        if kind == "max":
            np.testing.assert_array_equal(y_be, y, err_msg=f"{backend} y")  # a selection: exact
            np.testing.assert_array_equal(ctx_be.argmax, ctx.argmax, err_msg=f"{backend} argmax")
            assert ctx_be.argmax.dtype == ctx.argmax.dtype
        else:
            assert_close(y_be, y, f"{backend} y")
        assert_close(_backward(backend, kind, dy, ctx_be), dx, f"{backend} dx")


@pytest.mark.usefixtures("parallel_threshold")
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@EXAMPLES
@given(case=padded_pool_cases())
def test_padded_maxpool_ties_agree_exactly(case, dtype):
    """ReLU'd, rounded input (ties everywhere, many all-zero windows next to the padding) with
    distinct integer dy: a gradient routed to the wrong tie, or into the padding, shows."""
    rng = np.random.default_rng(case["seed"])
    x = np.maximum(np.round(rng.standard_normal(case["x_shape"])), 0).astype(dtype)

    y, ctx = _forward("naive", "max", x, case)
    dy = (rng.permutation(y.size) + 1).reshape(y.shape).astype(dtype)
    dx = _backward("naive", "max", dy, ctx)
    for backend in OTHERS:
        y_be, ctx_be = _forward(backend, "max", x, case)
        np.testing.assert_array_equal(y_be, y, err_msg=f"{backend} y")
        np.testing.assert_array_equal(_backward(backend, "max", dy, ctx_be), dx, err_msg=backend)


@pytest.mark.parametrize("backend", PADDED)
def test_padding_never_wins_a_max_window(backend):
    """A window whose elements inside x are all -inf ties with its -inf padding: the element
    inside x wins (the first such), and takes the gradient."""
    x = np.full((1, 3, 3, 2), -np.inf)
    x[0, 2, 2, 1] = 1.0
    be = get_backend(backend)
    y, ctx = be.maxpool2d_forward(x, 3, 2, 1, True)
    # windows start at rows/columns -1 and 1, so their first elements inside x are (0, 0),
    # (0, 1), (1, 0) and (1, 1): window indices 4, 3, 1 and 0; in channel 1, the last window
    # holds the 1.0 at (2, 2), its index 4
    np.testing.assert_array_equal(ctx.argmax[0, :, :, 0], [[4, 3], [1, 0]], err_msg=backend)
    np.testing.assert_array_equal(ctx.argmax[0, :, :, 1], [[4, 3], [1, 4]], err_msg=backend)
    dx = be.maxpool2d_backward(np.ones_like(y), ctx)
    expected = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(dx[0, :, :, 0], expected, err_msg=backend)
    expected[1, 1], expected[2, 2] = 0, 1
    np.testing.assert_array_equal(dx[0, :, :, 1], expected, err_msg=backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_padded_maxpool_nan_wins_as_in_naive(dtype):
    """NaNs next to the padding and in clipped ceil_mode windows: the first NaN wins its window
    in every backend (y, argmax and dx as naive's)."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 7, 6, 3)).astype(dtype)
    x[0, 0, 0, 0] = x[0, 6, 5, 1] = x[1, 3, 2, 2] = x[1, 3, 3, 2] = np.nan
    case = dict(size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True)
    y, ctx = _forward("naive", "max", x, case)
    dy = (rng.permutation(y.size) + 1).reshape(y.shape).astype(dtype)
    dx = _backward("naive", "max", dy, ctx)
    # windows start at rows and columns -1, 1, 3, 5: (0, 0) lies in one window, (6, 5) in two
    # (the last, clipped column window among them), (3, 2) and (3, 3) together in four
    assert np.isnan(y).sum() == 1 + 2 + 4
    for backend in OTHERS:
        y_be, ctx_be = _forward(backend, "max", x, case)
        np.testing.assert_array_equal(y_be, y, err_msg=f"{backend} y")
        np.testing.assert_array_equal(ctx_be.argmax, ctx.argmax, err_msg=f"{backend} argmax")
        np.testing.assert_array_equal(_backward(backend, "max", dy, ctx_be), dx, err_msg=backend)


GRAD_CONFIGS = [  # x shape, size, stride, padding, ceil_mode, count_include_pad
    ((2, 5, 6, 2), 3, 2, 1, False, True),  # ResNet's stem pool
    ((1, 5, 5, 3), 2, 2, 1, True, False),
    ((1, 6, 7, 2), (3, 2), (2, 1), ((1, 0), (0, 1)), True, True),
    ((2, 4, 5, 1), (4, 3), 3, (2, 1), True, False),
    ((1, 7, 6, 2), 3, 1, ((0, 1), (1, 1)), False, False),
    ((1, 6, 6, 2), 3, 2, 1, True, True),  # the last window runs past the padded input
]


@pytest.mark.parametrize("backend", PADDED)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("x_shape, size, stride, padding, ceil_mode, include", GRAD_CONFIGS)
def test_padded_pool_gradients_match_finite_differences(
    backend, kind, x_shape, size, stride, padding, ceil_mode, include
):
    case = dict(
        size=size, stride=stride, padding=padding, ceil_mode=ceil_mode, count_include_pad=include
    )
    rng = np.random.default_rng(5)
    # distinct values 0.01 apart: a +-1e-6 nudge never changes which element is the max
    x = (rng.permutation(int(np.prod(x_shape))) * 0.01).reshape(x_shape)
    y, ctx = _forward(backend, kind, x, case)
    projection = rng.standard_normal(y.shape)
    dx = _backward(backend, kind, projection, ctx)

    def loss():
        return float(np.sum(_forward(backend, kind, x, case)[0] * projection))

    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-6, err_msg=backend)


ORACLE_CONFIGS = [  # x shape, size, stride, padding (symmetric: (ph, pw)), ceil_mode
    ((2, 9, 10, 3), 3, 2, 1, False),  # ResNet's stem pool
    ((2, 9, 10, 3), 3, 2, 1, True),
    ((1, 7, 8, 2), 2, 2, 1, True),
    ((1, 5, 7, 2), (3, 2), (2, 3), (1, 0), True),
    ((2, 6, 6, 1), 4, 3, 2, True),
    ((1, 6, 5, 2), 2, 1, 0, True),
    ((1, 8, 5, 2), (5, 3), (2, 2), (2, 1), False),
    # the last window starts in x and runs past the bottom/right padding: clipped, and with
    # count_include_pad divided by its positions inside x and the padding only
    ((1, 6, 6, 2), 3, 2, 1, True),
]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="PyTorch not installed (pip install '.[peers]')")


def _nchw(a):
    return a.transpose(0, 3, 1, 2)


def _nhwc(t):
    return np.ascontiguousarray(t.detach().numpy().transpose(0, 2, 3, 1))


def _torch_flat_index(ctx):
    """Our argmax (window index) -> PyTorch's return_indices (row * W + column of x), NCHW."""
    g = ctx.geometry
    k = ctx.argmax.astype(np.intp)
    rows = np.arange(g.out_h)[None, :, None, None] * g.sh - g.pad_top + k // g.kw
    cols = np.arange(g.out_w)[None, None, :, None] * g.sw - g.pad_left + k % g.kw
    return _nchw(rows * g.width + cols)


@pytest.mark.parametrize("backend", PADDED)
@pytest.mark.parametrize("x_shape, size, stride, padding, ceil_mode", ORACLE_CONFIGS)
def test_padded_maxpool_against_torch(torch, backend, x_shape, size, stride, padding, ceil_mode):
    import torch.nn.functional as F

    rng = np.random.default_rng(6)
    x = rng.permutation(int(np.prod(x_shape))).reshape(x_shape) / 10.0  # no ties
    tx = torch.tensor(_nchw(x), requires_grad=True)
    ty, indices = F.max_pool2d(tx, size, stride, padding, ceil_mode=ceil_mode, return_indices=True)
    dy = np.ascontiguousarray(rng.standard_normal(ty.shape).transpose(0, 2, 3, 1))
    ty.backward(torch.tensor(_nchw(dy)))
    be = get_backend(backend)
    y, ctx = be.maxpool2d_forward(x, size, stride, padding, ceil_mode)
    assert_close(y, _nhwc(ty), f"{backend} y")
    np.testing.assert_array_equal(_torch_flat_index(ctx), indices.numpy(), err_msg=backend)
    assert_close(be.maxpool2d_backward(dy, ctx), _nhwc(tx.grad), f"{backend} dx")


@pytest.mark.parametrize("backend", PADDED)
@pytest.mark.parametrize("include", [True, False], ids=["include_pad", "exclude_pad"])
@pytest.mark.parametrize("x_shape, size, stride, padding, ceil_mode", ORACLE_CONFIGS)
def test_padded_avgpool_against_torch(
    torch, backend, include, x_shape, size, stride, padding, ceil_mode
):
    import torch.nn.functional as F

    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape)
    tx = torch.tensor(_nchw(x), requires_grad=True)
    ty = F.avg_pool2d(tx, size, stride, padding, ceil_mode=ceil_mode, count_include_pad=include)
    dy = np.ascontiguousarray(rng.standard_normal(ty.shape).transpose(0, 2, 3, 1))
    ty.backward(torch.tensor(_nchw(dy)))
    be = get_backend(backend)
    y, ctx = be.avgpool2d_forward(x, size, stride, padding, ceil_mode, include)
    assert_close(y, _nhwc(ty), f"{backend} y")
    assert_close(be.avgpool2d_backward(dy, ctx), _nhwc(tx.grad), f"{backend} dx")


ASYMMETRIC_CONFIGS = [  # x shape, size, stride, ((top, bottom), (left, right))
    ((2, 7, 8, 2), 3, 2, ((1, 0), (0, 1))),
    ((1, 6, 5, 3), (2, 4), (1, 3), ((0, 1), (2, 1))),
]


@pytest.mark.parametrize("backend", PADDED)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("x_shape, size, stride, padding", ASYMMETRIC_CONFIGS)
def test_asymmetric_padding_against_torch(torch, backend, kind, x_shape, size, stride, padding):
    """PyTorch pads symmetrically only: its oracle for ((top, bottom), (left, right)) is F.pad
    (-inf for max, 0 for avg with count_include_pad) and an unpadded pool, without ceil_mode
    (whose last-window rule counts only the top/left padding)."""
    import torch.nn.functional as F

    rng = np.random.default_rng(8)
    x = rng.permutation(int(np.prod(x_shape))).reshape(x_shape) / 10.0
    tx = torch.tensor(_nchw(x), requires_grad=True)
    (top, bottom), (left, right) = padding
    fill = -np.inf if kind == "max" else 0.0
    padded = F.pad(tx, (left, right, top, bottom), value=fill)
    ty = getattr(F, f"{kind}_pool2d")(padded, size, stride)
    dy = np.ascontiguousarray(rng.standard_normal(ty.shape).transpose(0, 2, 3, 1))
    ty.backward(torch.tensor(_nchw(dy)))
    be = get_backend(backend)
    y, ctx = getattr(be, f"{kind}pool2d_forward")(x, size, stride, padding)
    assert_close(y, _nhwc(ty), f"{backend} y")
    dx = getattr(be, f"{kind}pool2d_backward")(dy, ctx)
    assert_close(dx, _nhwc(tx.grad), f"{backend} dx")


X = np.ones((2, 5, 5, 3))
PADDING_BAD = [  # id, kwargs for the forward, error type, regex the message must match
    ("padding -1", dict(padding=-1), ValueError, r"^padding must be >= 0, got -1$"),
    (
        "padding pair negative",
        dict(padding=((0, 1), (-1, 0))),
        ValueError,
        r"^padding must be >= 0, got \(\(0, 1\), \(-1, 0\)\)",
    ),
    (
        "padding over half",
        dict(size=3, padding=2),
        ValueError,
        r"^padding \(\(2, 2\), \(2, 2\)\) must be at most half the pool size \(3, 3\): "
        r"at most \(1, 1\)",
    ),
    (
        "padding over half on one side",
        dict(size=(2, 4), padding=((1, 0), (0, 3))),
        ValueError,
        r"^padding \(\(1, 0\), \(0, 3\)\) must be at most half the pool size \(2, 4\)",
    ),
    (
        "padding a string",
        dict(padding="same"),
        TypeError,
        r"^padding must be an int, a pair of ints \(ph, pw\) or a pair of pairs",
    ),
    (
        "padding three ints",
        dict(padding=(1, 1, 1)),
        TypeError,
        r"^padding must be an int, a pair of ints",
    ),
    ("ceil_mode not a bool", dict(ceil_mode=1), TypeError, r"^ceil_mode must be True or False"),
    (
        "size over the padded input",
        dict(x=np.ones((1, 1, 2, 1)), size=3, padding=((0, 1), (1, 1))),
        ValueError,
        r"^pool size \(3, 3\) is larger than the input \(1, 2\) padded to \(2, 4\)",
    ),
    (
        "N=0 with padding",
        dict(x=np.ones((0, 5, 5, 3)), padding=1, size=3),
        ValueError,
        r"^x must have no empty axis, got x.shape=\(0, 5, 5, 3\)",
    ),
]


@pytest.mark.parametrize("backend", PADDED)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(
    "bad, error, pattern", [c[1:] for c in PADDING_BAD], ids=[c[0] for c in PADDING_BAD]
)
def test_pool_padding_rejects_bad_input(backend, kind, bad, error, pattern):
    args = dict(x=X, size=2, stride=None) | bad
    with pytest.raises(error, match=pattern):
        getattr(get_backend(backend), f"{kind}pool2d_forward")(**args)


@pytest.mark.parametrize("backend", PADDED)
def test_count_include_pad_must_be_a_bool(backend):
    with pytest.raises(TypeError, match=r"^count_include_pad must be True or False, got 'no'"):
        get_backend(backend).avgpool2d_forward(X, 3, 1, 1, False, "no")


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba is not installed")
def test_fused_conv_maxpool_declines_a_padded_pool():
    """The fused conv + 2x2 max-pool backward undoes only an unpadded pool: given a padded or
    ceil_mode pool's ctx it runs nothing (None), and the two calls give the gradient."""
    be = get_backend("numba")
    rng = np.random.default_rng(9)
    # one input channel, sixteen out: the tiled forward, the plane kernels' backward (the path
    # that would otherwise undo the pool itself)
    x, w = rng.standard_normal((2, 5, 5, 1)), rng.standard_normal((3, 3, 1, 16))
    y, conv_ctx = be.conv2d_forward(x, w, None, 1, 1)
    for padding, ceil_mode in ((1, False), (0, True)):
        p, pool_ctx = be.maxpool2d_forward(y, 2, 2, padding, ceil_mode)
        assert not pool_ctx.geometry.plain
        dy = rng.standard_normal(p.shape)
        assert be.conv2d_maxpool2d_backward(dy, conv_ctx, pool_ctx) is None
    assert not be.fuses_maxpool(conv_ctx.geometry, pool_geometry(y, 2, 2, 1))
