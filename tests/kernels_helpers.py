"""Shared pieces of the kernels tests: backend lists, tolerances, hypothesis strategies, runners.

Imported by tests/test_kernels_*.py (pytest puts tests/ on sys.path; there is no package).
"""

from __future__ import annotations

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


def run_conv(backend: str, x, w, b, stride, padding, dy, need_dx=True):
    """Forward then backward on one backend -> (y, dx, dw, db)."""
    be = get_backend(backend)
    y, ctx = be.conv2d_forward(x, w, b, stride=stride, padding=padding)
    dx, dw, db = be.conv2d_backward(dy, ctx, need_dx=need_dx)
    return y, dx, dw, db


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
