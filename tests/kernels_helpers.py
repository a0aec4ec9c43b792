"""Shared pieces of the kernels tests: backend lists, tolerances, hypothesis strategies, runners.

Imported by tests/test_kernels_*.py (pytest puts tests/ on sys.path; there is no package).
"""

from __future__ import annotations

import inspect

import numpy as np
from hypothesis import strategies as st

from kernels import available_backends, get_backend

BACKENDS = available_backends()
OTHER_BACKENDS = [name for name in BACKENDS if name != "naive"]
DTYPES = [np.float64, np.float32]
# float64 must agree to ~machine precision; float32 sums of up to a few hundred products drift by
# ~1e-6 relative, so 1e-4 catches any wrong index while tolerating summation order.
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


def assert_close(actual, expected, what: str) -> None:
    """Same shape and dtype, and equal up to the dtype's RTOL relative to expected's magnitude.

    The absolute tolerance scales with max|expected| so entries that cancel to ~0 are judged
    against the size of the terms that produced them, not against themselves.
    """
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    rtol = RTOL[expected.dtype]
    scale = float(np.nanmax(np.abs(expected), initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def run_conv(backend: str, x, w, b, stride, padding, dy, need_dx=True, dilation=1, groups=1):
    """Forward then backward on one backend -> (y, dx, dw, db). dilation and groups are passed
    only when not 1, so a backend without them still runs the plain calls."""
    be = get_backend(backend)
    extra = {} if (dilation, groups) == (1, 1) else dict(dilation=dilation, groups=groups)
    y, ctx = be.conv2d_forward(x, w, b, stride=stride, padding=padding, **extra)
    dx, dw, db = be.conv2d_backward(dy, ctx, need_dx=need_dx)
    return y, dx, dw, db


def takes_groups(backend: str) -> bool:
    """Whether the backend's conv2d_forward takes dilation and groups (auto gains them when
    its pass-through lands)."""
    params = inspect.signature(get_backend(backend).conv2d_forward).parameters
    return {"dilation", "groups"} <= params.keys()


def tf_same(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding along one axis, (before, after), written out independently of
    kernels.geometry: out = ceil(size / stride), the odd one after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def run_pool(backend: str, kind: str, x, size, stride, dy):
    """kind "max" or "avg": forward then backward on one backend -> (y, dx)."""
    be = get_backend(backend)
    y, ctx = getattr(be, f"{kind}pool2d_forward")(x, size, stride)
    return y, getattr(be, f"{kind}pool2d_backward")(dy, ctx)


@st.composite
def conv_cases(draw, channels=(1, 4), sizes=(1, 12)):
    """A random conv2d call: shapes, stride (int or pair), padding (int, pair, "valid", "same");
    C_in and C_out drawn from `channels`, H and W from `sizes` (inclusive ranges)."""
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(*sizes)), draw(st.integers(*sizes))
    c_in, c_out = draw(st.integers(*channels)), draw(st.integers(*channels))
    mode = draw(st.sampled_from(["explicit"] * 4 + ["valid", "same"]))
    if mode == "same":
        sh = sw = 1
        kh, kw = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 3, 5]))
        ph, pw, padding = (kh - 1) // 2, (kw - 1) // 2, "same"
    else:
        sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        ph, pw = (0, 0) if mode == "valid" else (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        kh = draw(st.integers(1, min(5, h + 2 * ph)))
        kw = draw(st.integers(1, min(5, w + 2 * pw)))
        if mode == "valid":
            padding = "valid"
        else:
            padding = ph if ph == pw and draw(st.booleans()) else (ph, pw)
    stride = sh if sh == sw and draw(st.booleans()) else (sh, sw)
    out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    return dict(
        x_shape=(n, h, w, c_in),
        w_shape=(kh, kw, c_in, c_out),
        y_shape=(n, out_h, out_w, c_out),
        stride=stride,
        padding=padding,
        bias=draw(st.booleans()),
        need_dx=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@st.composite
def general_conv_cases(draw):
    """A random conv2d call with every parameter: groups (depthwise with channel multiplier 1-2
    included), dilation 1-3, stride 1-3, padding as n, (ph, pw), ((top, bottom), (left, right)),
    "valid" or "same" (TensorFlow's, any stride and kernel)."""
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 10)), draw(st.integers(1, 10))
    depthwise = draw(st.booleans())
    if depthwise:
        c_in = groups = draw(st.integers(2, 5))
        c_out = c_in * draw(st.integers(1, 2))
    else:
        groups = draw(st.integers(1, 3))
        c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    mode = draw(st.sampled_from(["int", "pair", "sides", "valid", "same"]))
    if mode == "same":
        kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        (top, bottom), (left, right) = tf_same(h, kh, sh, dh), tf_same(w, kw, sw, dw)
        padding = "same"
    else:
        if mode == "valid":
            top = bottom = left = right = 0
            padding = "valid"
        elif mode == "int":
            top = bottom = left = right = draw(st.integers(0, 2))
            padding = top
        elif mode == "pair":
            top = bottom = draw(st.integers(0, 2))
            left = right = draw(st.integers(0, 2))
            padding = (top, left)
        else:
            top, bottom, left, right = (draw(st.integers(0, 2)) for _ in range(4))
            padding = ((top, bottom), (left, right))
        # the dilated kernel must fit the padded input: (k - 1) * d + 1 <= size + padding
        kh = draw(st.integers(1, min(4, (h + top + bottom - 1) // dh + 1)))
        kw = draw(st.integers(1, min(4, (w + left + right - 1) // dw + 1)))
    fits_3x3 = 2 * dh < h + top + bottom and 2 * dw < w + left + right
    if depthwise and fits_3x3 and draw(st.booleans()):
        kh = kw = 3  # numba's 3x3 depthwise kernel (MobileNet's layers), a path of its own
        if mode == "same":
            (top, bottom), (left, right) = tf_same(h, kh, sh, dh), tf_same(w, kw, sw, dw)
    out_h = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (w + left + right - (kw - 1) * dw - 1) // sw + 1
    pick = draw(st.booleans())
    return dict(
        x_shape=(n, h, w, c_in),
        w_shape=(kh, kw, c_in // groups, c_out),
        y_shape=(n, out_h, out_w, c_out),
        stride=sh if sh == sw and pick else (sh, sw),
        padding=padding,
        dilation=dh if dh == dw and pick else (dh, dw),
        groups=groups,
        bias=draw(st.booleans()),
        need_dx=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@st.composite
def pool_cases(draw):
    """A random pooling call: shapes, size (int or pair) up to 4, stride None or 1-3."""
    n, h, w, c = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 12)),
        draw(st.integers(1, 12)),
        draw(st.integers(1, 4)),
    )
    kh, kw = draw(st.integers(1, min(4, h))), draw(st.integers(1, min(4, w)))
    size = kh if kh == kw and draw(st.booleans()) else (kh, kw)
    stride = draw(
        st.one_of(st.none(), st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
    )
    sh, sw = (
        (kh, kw) if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    )
    out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
    return dict(
        x_shape=(n, h, w, c),
        size=size,
        stride=stride,
        y_shape=(n, out_h, out_w, c),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def numeric_grad(loss, a, eps=1e-6):
    """Central-difference gradient of the scalar function loss() w.r.t. every entry of a (in place)."""
    grad = np.empty_like(a)
    for idx in np.ndindex(a.shape):
        original = a[idx]
        a[idx] = original + eps
        plus = loss()
        a[idx] = original - eps
        minus = loss()
        a[idx] = original
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


def assert_conv_gradients(be, x, w, b, conv_args, rng, tol, label=""):
    """be's conv2d_backward (dx, dw, db) against float64 central differences of
    L = sum(conv2d_forward(x, w, b, **conv_args) * R), R a random projection from rng."""
    y, ctx = be.conv2d_forward(x, w, b, **conv_args)
    projection = rng.standard_normal(y.shape)
    dx, dw, db = be.conv2d_backward(projection, ctx)

    def loss():
        return float(np.sum(be.conv2d_forward(x, w, b, **conv_args)[0] * projection))

    for name, analytic, param in (("dx", dx, x), ("dw", dw, w), ("db", db, b)):
        np.testing.assert_allclose(
            analytic, numeric_grad(loss, param), rtol=tol, atol=tol, err_msg=f"{label} {name}"
        )


def record_tile_kernels(monkeypatch) -> list:
    """The kernels numba_tiles.run_blocks runs from now on (the numba backend's tile kernels and
    kernels/pointwise_dw.py's), appended to the returned list as they run."""
    from kernels import numba_tiles

    ran: list = []
    run_blocks = numba_tiles.run_blocks

    def recording(kernel, *args, **kwargs):
        ran.append(kernel)
        return run_blocks(kernel, *args, **kwargs)

    monkeypatch.setattr(numba_tiles, "run_blocks", recording)
    return ran
