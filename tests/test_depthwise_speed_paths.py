"""numba's 3x3 depthwise kernels on their vector paths (kernels/depthwise.py, and the strided
dX of kernels/depthwise_strided.py): naive's numbers.

The hypothesis properties in test_kernels_equality.py draw 1-5 channels, fewer than one SIMD
vector, so they reach only the per-value remainder loops of dw3x3_kernel and
forward3x3_vec_kernel.
Here the channels are whole vectors (depthwise.lanes of the dtype), whole vectors plus a
remainder, or fewer than one vector, with every stride, dilation and padding (asymmetric
included) and images narrow enough that no column, or no row, has all its taps inside.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernels_helpers import DTYPES, assert_close, assert_conv_gradients, run_conv

from kernels import isa

EXAMPLES = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def vector_lanes(dtype) -> int:
    """Values of dtype in one SIMD vector (what depthwise.lanes compiles to)."""
    return isa.lanes(dtype)


@pytest.fixture(autouse=True, params=["threads-by-size", "threads-always"])
def parallel_threshold(request, monkeypatch):
    """Both thread rules, as in test_kernels_equality.py: one part, and one part per thread."""
    if request.param == "threads-always":
        from kernels import numba_jit

        monkeypatch.setattr(numba_jit, "PARALLEL_MIN_WORK", 0)
    return request.param


@pytest.fixture(autouse=True, params=["vec-forward-by-width", "vec-forward-always"])
def vec_forward(request, monkeypatch):
    """The forward (and stride-1 dX) on the kernel depthwise.forward3x3_for picks for the width,
    and on forward3x3_vec_kernel for every width (the drawn images are narrower than
    depthwise.VEC_MIN_COLUMNS)."""
    if request.param == "vec-forward-always":
        from kernels import depthwise

        monkeypatch.setattr(depthwise, "VEC_MIN_COLUMNS", 0)
    return request.param


@st.composite
def depthwise3x3_cases(draw, dtype):
    """A 3x3 depthwise conv2d call (multiplier 1) whose channels reach the vector loops."""
    lanes = vector_lanes(dtype)
    c = draw(
        st.sampled_from(
            [lanes, 2 * lanes, 3 * lanes + 2, lanes + 3, 2 * lanes + 1, max(1, lanes - 1)]
        )
    )
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    top, bottom, left, right = (draw(st.integers(0, 2)) for _ in range(4))
    # the dilated 3x3 kernel must fit the padded input
    h = max(h, 2 * dh + 1 - top - bottom)
    w = max(w, 2 * dw + 1 - left - right)
    return dict(
        x_shape=(n, h, w, c),
        stride=(sh, sw),
        padding=((top, bottom), (left, right)),
        dilation=(dh, dw),
        bias=draw(st.booleans()),
        need_dx=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _inputs(case, dtype):
    rng = np.random.default_rng(case["seed"])
    c = case["x_shape"][3]
    x = rng.standard_normal(case["x_shape"]).astype(dtype)
    w = rng.standard_normal((3, 3, 1, c)).astype(dtype)
    b = rng.standard_normal(c).astype(dtype) if case["bias"] else None
    return x, w, b


def _check(case, dtype):
    x, w, b = _inputs(case, dtype)
    c = case["x_shape"][3]
    extra = dict(dilation=case["dilation"], groups=c)
    args = (case["stride"], case["padding"])
    from kernels import get_backend

    y, _ = get_backend("naive").conv2d_forward(x, w, b, *args, **extra)
    dy = np.random.default_rng(case["seed"] + 1).standard_normal(y.shape).astype(dtype)
    want = run_conv("naive", x, w, b, *args, dy, case["need_dx"], **extra)
    got = run_conv("numba", x, w, b, *args, dy, case["need_dx"], **extra)
    for name, got_a, want_a in zip(("y", "dx", "dw", "db"), got, want):
        if want_a is None:
            assert got_a is None, name
        else:
            assert_close(got_a, want_a, f"numba {name} {case}")


# float64's eight rule combinations run in the slow tier (`pytest -m slow`): each compiles its
# own kernels, which the fast tier's time cannot afford; float64 stays in the fast tier through
# test_layer_shapes_match_naive and the finite-difference test below
@pytest.mark.parametrize(
    "dtype",
    [
        pytest.param(np.float64, marks=pytest.mark.slow, id="float64"),
        pytest.param(np.float32, id="float32"),
    ],
)
def test_vector_paths_match_naive(dtype):
    """Hypothesis over depthwise3x3_cases: numba's y, dx, dw, db equal naive's."""

    @EXAMPLES
    @given(case=depthwise3x3_cases(dtype))
    def check(case):
        _check(case, dtype)

    check()


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize(
    "x_shape, stride",
    [
        ((2, 14, 14, 32), 1),  # MobileNetV2's block0 layout: two float32 vectors a pixel
        ((1, 12, 11, 48), 2),  # stride 2, odd width
        ((1, 7, 7, 40), 1),  # a remainder after whole vectors in both dtypes
        ((1, 5, 30, 48), 1),  # rows as wide as VEC_MIN_COLUMNS: forward3x3_vec_kernel
    ],
)
def test_layer_shapes_match_naive(x_shape, stride, dtype):
    """MobileNet-like layers (padding 1) with interior pixels in every row band."""
    case = dict(
        x_shape=x_shape,
        stride=stride,
        padding=1,
        dilation=1,
        bias=True,
        need_dx=True,
        seed=sum(x_shape) + stride,
    )
    _check(case, dtype)


@pytest.mark.parametrize(
    "x_shape, stride, padding, dilation",
    [
        ((1, 5, 6, 8), 1, 1, 1),  # whole float64 vectors (AVX-512), interior pixels
        ((1, 6, 7, 11), (2, 1), ((1, 0), (2, 1)), (1, 2)),  # a vector plus a remainder
        ((2, 7, 6, 8), 2, 1, 1),  # stride 2, whole vectors: depthwise_strided's dX
        ((1, 9, 8, 16), (3, 2), ((2, 0), (0, 1)), (2, 1)),  # the same at other strides
    ],
)
def test_vector_paths_gradients_match_finite_differences(x_shape, stride, padding, dilation):
    """float64 central differences of L = sum(y * R) against numba's dx, dw and db."""
    rng = np.random.default_rng(5)
    c = x_shape[3]
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((3, 3, 1, c))
    b = rng.standard_normal(c)
    from kernels import get_backend

    extra = dict(stride=stride, padding=padding, dilation=dilation, groups=c)
    assert_conv_gradients(get_backend("numba"), x, w, b, extra, rng, 1e-6, "numba depthwise")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize(
    "x_shape, stride, padding, dilation",
    [
        ((2, 12, 11, 48), 2, 1, 1),  # MobileNet's strided layers: whole vectors
        ((1, 13, 13, 20), 2, 1, 1),  # a remainder after a whole vector
        ((1, 15, 9, 35), (3, 2), ((2, 1), (0, 2)), (2, 1)),  # other strides, dilation, padding
        ((1, 4, 5, 3), (1, 2), 0, 1),  # fewer channels than a vector, stride along one axis
        ((1, 3, 3, 16), 2, 0, 1),  # one output pixel: most input pixels read by no tap
    ],
)
def test_strided_dx_kernel_matches_naive(x_shape, stride, padding, dilation, dtype):
    """depthwise_strided.dx3x3_strided_kernel called directly, remainder channels included
    (the backend sends it only whole vectors), against naive's dx."""
    from kernels import depthwise, depthwise_strided, get_backend
    from kernels.geometry import conv_geometry

    rng = np.random.default_rng(sum(x_shape))
    c = x_shape[3]
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((3, 3, 1, c)).astype(dtype)
    extra = dict(dilation=dilation, groups=c)
    y, ctx = get_backend("naive").conv2d_forward(x, w, None, stride, padding, **extra)
    dy = rng.standard_normal(y.shape).astype(dtype)
    want, _, _ = get_backend("naive").conv2d_backward(dy, ctx)
    g = conv_geometry(x, w, None, stride, padding, dilation, c)
    got = np.full_like(x, np.nan)  # every element must be written
    wt = np.ascontiguousarray(w.reshape(3, 3, 1, c))
    depthwise_strided.dx3x3_strided_kernel(dy[..., None, :], wt, *depthwise.geometry_args(g), got)
    assert_close(got, want, f"dx3x3_strided_kernel {x_shape} {stride}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_the_backend_sends_strided_whole_vector_dx_to_depthwise_strided(dtype, monkeypatch):
    """numba's backward on a strided 3x3 layer of whole vectors runs dx3x3_strided_kernel (so
    the equality tests above reach it through the backend), and with a remainder it does not."""
    from kernels import depthwise_strided, numba_jit

    ran = []
    launch = numba_jit._launch
    monkeypatch.setattr(
        numba_jit, "_launch", lambda kernel, *a: (ran.append(kernel), launch(kernel, *a))
    )
    lanes = vector_lanes(dtype)
    for c, expected in ((2 * lanes, True), (lanes + 3, False)):
        ran.clear()
        case = dict(
            x_shape=(1, 8, 8, c),
            stride=2,
            padding=1,
            dilation=1,
            bias=False,
            need_dx=True,
            seed=c,
        )
        _check(case, dtype)
        assert (depthwise_strided.dx3x3_strided_kernel in ran) == expected, c
