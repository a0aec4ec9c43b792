"""Bad input gets the intended error type and a message naming the argument, on every backend;
NaN propagates without crashing; float32 and float64 are preserved end to end."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from kernels_helpers import BACKENDS, run_conv, run_pool

from kernels import get_backend

X = np.ones((2, 5, 5, 3))
W = np.ones((3, 3, 3, 4))
B = np.ones(4)

CONV_BAD = [  # id, kwargs for conv2d_forward, error type, regex the message must match
    ("x 3-D", dict(x=np.ones((5, 5, 3))), ValueError, r"^x must be 4-D .*got shape \(5, 5, 3\)"),
    ("x not array", dict(x=[[1.0]]), TypeError, r"^x must be a numpy array"),
    ("w 2-D", dict(w=np.ones((3, 3))), ValueError, r"^w must be 4-D .*got shape \(3, 3\)"),
    ("C_in mismatch", dict(w=np.ones((3, 3, 2, 4))), ValueError, r"w has C_in=2 .* x has C=3"),
    ("b wrong length", dict(b=np.ones(3)), ValueError, r"^b must have shape \(4,\).*got \(3,\)"),
    ("b 2-D", dict(b=np.ones((4, 1))), ValueError, r"^b must be 1-D"),
    (
        "x int",
        dict(x=np.ones((2, 5, 5, 3), dtype=np.int64)),
        TypeError,
        r"^x must have dtype float32 or float64, got int64",
    ),
    (
        "w float16",
        dict(w=np.ones((3, 3, 3, 4), dtype=np.float16)),
        TypeError,
        r"^w must have dtype float32 or float64, got float16",
    ),
    (
        "w float32 vs x float64",
        dict(w=W.astype(np.float32)),
        TypeError,
        r"^w has dtype float32 but x has dtype float64",
    ),
    (
        "b float32 vs x float64",
        dict(b=B.astype(np.float32)),
        TypeError,
        r"^b has dtype float32 but x has dtype float64",
    ),
    (
        "kernel too large",
        dict(w=np.ones((8, 3, 3, 4)), padding=1),
        ValueError,
        r"^kernel \(8, 3\) is larger than the padded input \(7, 7\)",
    ),
    ("stride 0", dict(stride=0), ValueError, r"^stride must be >= 1, got \(0, 0\)"),
    (
        "stride pair negative",
        dict(stride=(1, -2)),
        ValueError,
        r"^stride must be >= 1, got \(1, -2\)",
    ),
    ("stride float", dict(stride=1.5), TypeError, r"^stride must be an int or a pair"),
    (
        "padding negative",
        dict(padding=-1),
        ValueError,
        r"^padding must be >= 0, got \(\(top, bottom\), \(left, right\)\) = \(\(-1, -1\), \(-1, -1\)\)",
    ),
    (
        "padding negative bottom",
        dict(padding=((0, -1), (1, 1))),
        ValueError,
        r"^padding must be >= 0, got .* = \(\(0, -1\), \(1, 1\)\)",
    ),
    (
        "padding unknown string",
        dict(padding="full"),
        ValueError,
        r'^padding must be an int, \(ph, pw\), \(\(top, bottom\), \(left, right\)\), "valid" or '
        r'"same", got \'full\'',
    ),
    (
        "padding float",
        dict(padding=1.5),
        TypeError,
        r"^padding must be an int, \(ph, pw\), \(\(top, bottom\), \(left, right\)\)",
    ),
    ("dilation 0", dict(dilation=0), ValueError, r"^dilation must be >= 1, got \(0, 0\)"),
    ("dilation float", dict(dilation=(1, 2.0)), TypeError, r"^dilation must be an int or a pair"),
    (
        "dilated kernel too large",
        dict(dilation=(1, 3), padding=0),
        ValueError,
        r"^kernel \(3, 3\) with dilation \(1, 3\) spans \(3, 7\) and is larger than the padded "
        r"input \(5, 5\)",
    ),
    ("groups 0", dict(groups=0), ValueError, r"^groups must be >= 1, got 0"),
    ("groups float", dict(groups=1.0), TypeError, r"^groups must be an int, got 1.0"),
    (
        "groups not dividing C_in",
        dict(groups=2, w=np.ones((3, 3, 1, 4))),
        ValueError,
        r"^groups=2 must divide both C_in=3 \(x.shape=\(2, 5, 5, 3\)\) and C_out=4",
    ),
    (
        "groups not dividing C_out",
        dict(groups=3, w=np.ones((3, 3, 1, 4))),
        ValueError,
        r"^groups=3 must divide both C_in=3 .* and C_out=4 \(w.shape=\(3, 3, 1, 4\)\)",
    ),
    (
        "w C_in per group mismatch",
        dict(groups=3, w=np.ones((3, 3, 3, 6))),
        ValueError,
        r"^w has C_in=3 per group of 3 .* x has C=3 .*w must be \(KH, KW, 1, C_out\)",
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "bad, error, pattern", [c[1:] for c in CONV_BAD], ids=[c[0] for c in CONV_BAD]
)
def test_conv_forward_rejects_bad_input(backend, bad, error, pattern):
    args = dict(x=X, w=W, b=B, stride=1, padding=0) | bad
    skip_without_new_conv_args(backend, args)
    with pytest.raises(error, match=pattern):
        get_backend(backend).conv2d_forward(**args)


def skip_without_new_conv_args(backend: str, args: dict) -> None:
    """Skip a case passing dilation/groups to a backend whose conv2d_forward does not take them
    yet (auto passes them through once its split lands): the case is about the new arguments."""
    params = inspect.signature(get_backend(backend).conv2d_forward).parameters
    missing = {"dilation", "groups"} & args.keys() - params.keys()
    if missing:
        pytest.skip(f"{backend}.conv2d_forward takes no {sorted(missing)} yet")


POOL_BAD = [
    ("x 3-D", dict(x=np.ones((5, 5, 3))), ValueError, r"^x must be 4-D"),
    (
        "x int",
        dict(x=np.ones((1, 4, 4, 1), dtype=np.int32)),
        TypeError,
        r"^x must have dtype float32",
    ),
    (
        "size larger than input",
        dict(size=6),
        ValueError,
        r"^pool size \(6, 6\) is larger than the input \(5, 5\)",
    ),
    ("size pair too tall", dict(size=(6, 1)), ValueError, r"^pool size \(6, 1\) is larger"),
    ("size 0", dict(size=0), ValueError, r"^size must be >= 1, got \(0, 0\)"),
    ("stride 0", dict(stride=0), ValueError, r"^stride must be >= 1, got \(0, 0\)"),
    (  # as conv2d_forward: an empty batch is refused, not pooled into an empty output
        "N=0",
        dict(x=np.ones((0, 5, 5, 3))),
        ValueError,
        r"^x must have no empty axis, got x.shape=\(0, 5, 5, 3\)",
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(
    "bad, error, pattern", [c[1:] for c in POOL_BAD], ids=[c[0] for c in POOL_BAD]
)
def test_pool_forward_rejects_bad_input(backend, kind, bad, error, pattern):
    args = dict(x=X, size=2, stride=None) | bad
    with pytest.raises(error, match=pattern):
        getattr(get_backend(backend), f"{kind}pool2d_forward")(**args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_rejects_wrong_dy(backend):
    be = get_backend(backend)
    y, ctx = be.conv2d_forward(X, W, B)  # y: (2, 3, 3, 4)
    with pytest.raises(
        ValueError,
        match=r"^dy must have the forward output's shape \(2, 3, 3, 4\), "
        r"got \(2, 3, 3, 5\)",
    ):
        be.conv2d_backward(np.ones((2, 3, 3, 5)), ctx)
    with pytest.raises(
        TypeError, match=r"^dy must have the forward input's dtype float64, got float32"
    ):
        be.conv2d_backward(y.astype(np.float32), ctx)
    with pytest.raises(TypeError, match=r"^dy must be a numpy array"):
        be.conv2d_backward(y.tolist(), ctx)
    for kind in ("max", "avg"):
        y, ctx = getattr(be, f"{kind}pool2d_forward")(X, 2)  # y: (2, 2, 2, 3)
        with pytest.raises(
            ValueError, match=r"^dy must have the forward output's shape \(2, 2, 2, 3\)"
        ):
            getattr(be, f"{kind}pool2d_backward")(np.ones((2, 2, 3, 3)), ctx)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_backward_rejects_a_foreign_ctx(backend):
    """ctx=None, or another backend's ctx, is one clear TypeError naming what was passed and
    where it came from, not an AttributeError on one of its fields."""
    be = get_backend(backend)
    y, _ = be.conv2d_forward(X, W, B)
    dy = np.ones_like(y)
    with pytest.raises(TypeError, match=rf"^{backend}: ctx must be the ctx {backend}'s .*got None"):
        be.conv2d_backward(dy, None)
    other = "einsum" if backend != "einsum" else "naive"
    _, foreign = get_backend(other).conv2d_forward(X, W, B)
    pattern = rf"^{backend}: ctx must be .*got {type(foreign).__name__} \(from {other}\)"
    with pytest.raises(TypeError, match=pattern):
        be.conv2d_backward(dy, foreign)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_backward_rejects_a_missing_ctx(backend, kind):
    """A pool backward given ctx=None (or no ctx at all) is one clear TypeError naming the
    backend whose ctx it wanted; winograd's pooling runs on its fallback, which names itself."""
    be = get_backend(backend)
    y, _ = getattr(be, f"{kind}pool2d_forward")(X, 2)
    with pytest.raises(TypeError, match=r"^\w+: ctx must be the ctx \w+'s forward returned .*got "):
        getattr(be, f"{kind}pool2d_backward")(np.ones_like(y), None)
    with pytest.raises(TypeError, match=r"got object \(from builtins\)"):
        getattr(be, f"{kind}pool2d_backward")(np.ones_like(y), object())


def test_unknown_backend_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'; available backends: naive, "):
        get_backend("cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_input_propagates_like_naive(backend):
    """A NaN in x poisons exactly the outputs (and gradients) whose windows contain it."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 6, 2))
    x[0, 1, 3, 1] = np.nan  # in pool window (0, 1) only
    w, b = rng.standard_normal((3, 3, 2, 3)), rng.standard_normal(3)
    dy = rng.standard_normal((2, 3, 3, 3))
    got, want = run_conv(backend, x, w, b, 2, 1, dy), run_conv("naive", x, w, b, 2, 1, dy)
    for name, got_a, want_a, poisoned in zip(("y", "dx", "dw", "db"), got, want, (1, 0, 1, 0)):
        # dx = dy (x) w and db = sum(dy) never read x, so they stay finite
        assert np.isnan(got_a).any() == bool(poisoned), name
        np.testing.assert_array_equal(np.isnan(got_a), np.isnan(want_a), err_msg=name)
    for kind in ("max", "avg"):
        y, dx = run_pool(backend, kind, x, 3, 2, np.ones((2, 2, 2, 2)))
        assert np.isnan(y[0, 0, 1, 1]) and np.isnan(y).sum() == 1, f"{kind}pool y"
        assert np.isfinite(dx).all()  # dy is finite, so routing it stays finite


@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_nan_wins_its_window_and_gets_the_gradient(backend):
    """np.argmax semantics: a NaN counts as the maximum (the first NaN if several)."""
    x = np.array([1.0, np.nan, 5.0, np.nan]).reshape(1, 2, 2, 1)
    y, dx = run_pool(backend, "max", x, 2, None, np.full((1, 1, 1, 1), 7.0))
    assert np.isnan(y).all()
    np.testing.assert_array_equal(dx.ravel(), [0, 7, 0, 0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(backend, dtype):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 6, 6, 3)).astype(dtype)
    w = rng.standard_normal((3, 3, 3, 2)).astype(dtype)
    b = rng.standard_normal(2).astype(dtype)
    for stride, padding in ((1, "same"), (2, 0)):  # both of einsum's dX strategies
        be = get_backend(backend)
        y, ctx = be.conv2d_forward(x, w, b, stride, padding)
        outputs = (y,) + be.conv2d_backward(np.ones_like(y), ctx)
        assert [a.dtype for a in outputs] == [np.dtype(dtype)] * 4
    for kind in ("max", "avg"):
        y, dx = run_pool(backend, kind, x, 2, None, np.ones((2, 3, 3, 3), dtype=dtype))
        assert (y.dtype, dx.dtype) == (np.dtype(dtype), np.dtype(dtype)), f"{kind}pool"
