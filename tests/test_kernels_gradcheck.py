"""Finite-difference gradient checks in float64, on every backend: conv dx, dw, db and both pools.

Loss: L = sum(y * R) for a fixed random R, so dL/dy = R and the analytic gradient is backward(R).
Each entry of the input is nudged by +-eps and the central difference compared with backward's entry.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernels_helpers import BACKENDS, assert_conv_gradients, numeric_grad, takes_groups

from kernels import get_backend

EPS = 1e-6
# central differences in float64 are accurate to ~eps^2 * |L'''| + rounding / eps ~ 1e-9 here
TOL = 1e-6

CONV_CONFIGS = [  # x shape, (KH, KW, C_out), stride, padding
    ((2, 5, 6, 3), (3, 3, 2), 1, 0),
    ((2, 5, 6, 3), (3, 2, 2), (2, 1), (1, 2)),
    ((1, 7, 7, 2), (3, 3, 3), 2, 1),
    ((2, 4, 4, 1), (2, 2, 4), 3, 2),
    # 1x1 (im2col: x beside a ones column when C_in < C_out, else x as it is and db apart)
    ((2, 4, 5, 2), (1, 1, 5), 1, 0),
    ((2, 4, 5, 5), (1, 1, 2), 1, 0),
]
# numba's register tiles (kernels/numba_tiles.py): dX by the forward kernel (stride 1, C_in
# >= 16), by dx_cols (stride 2, C_in 8) and by dx_phases (strides 2 and 3, C_in >= 16; with a
# 2-row kernel at stride 3 one row phase has no taps), with ragged output-channel and pixel
# tiles; and the tiled forward with the plane kernels' backward (one input channel)
TILED_CONV_CONFIGS = [
    ((1, 6, 7, 16), (3, 3, 17), 1, 1),
    ((1, 9, 11, 8), (3, 2, 18), (2, 1), (1, 0)),
    ((1, 12, 13, 16), (3, 3, 16), 2, 1),
    ((1, 10, 17, 17), (2, 3, 18), (3, 2), (1, 0)),
    ((2, 6, 7, 1), (3, 3, 16), 1, 1),
]
# x shape, (KH, KW, C_out), stride, padding, dilation, groups: each new parameter on its own,
# then together (numba: depthwise kernels for groups == C_in, kernels/decompose.py otherwise)
GENERAL_CONV_CONFIGS = [
    ((2, 6, 7, 4), (3, 3, 6), 1, 1, 1, 2),
    ((2, 6, 7, 3), (3, 2, 2), 1, 1, (2, 3), 1),
    ((2, 6, 7, 3), (3, 2, 2), 2, ((0, 1), (2, 0)), 1, 1),
    ((2, 7, 6, 2), (2, 2, 4), 2, "same", 1, 1),
    ((1, 8, 8, 3), (3, 3, 3), (2, 1), 1, (2, 1), 3),
    ((2, 7, 6, 2), (2, 3, 4), 2, "same", 2, 2),
    ((1, 7, 8, 4), (3, 3, 4), (1, 2), ((1, 0), (0, 2)), 2, 2),
    ((1, 9, 8, 3), (3, 3, 3), 1, ((2, 0), (1, 2)), (2, 1), 3),  # numba's 3x3 depthwise, dX too
]
POOL_CONFIGS = [  # x shape, size, stride
    ((2, 6, 6, 2), 2, None),
    ((1, 7, 5, 3), (3, 2), (2, 1)),
    ((2, 5, 5, 1), 3, 1),  # overlapping windows: one input can be the max of several
]


@pytest.mark.parametrize(
    "backend, x_shape, kernel, stride, padding",
    [(backend, *config) for backend in BACKENDS for config in CONV_CONFIGS]
    + [("numba", *config) for config in TILED_CONV_CONFIGS if "numba" in BACKENDS],
)
def test_conv_gradients_match_finite_differences(backend, x_shape, kernel, stride, padding):
    be = get_backend(backend)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(kernel[:2] + (x_shape[3], kernel[2]))
    b = rng.standard_normal(kernel[2])
    assert_conv_gradients(be, x, w, b, dict(stride=stride, padding=padding), rng, TOL, backend)


@pytest.mark.parametrize(
    "backend, x_shape, kernel, stride, padding, dilation, groups",
    [(backend, *config) for backend in BACKENDS for config in GENERAL_CONV_CONFIGS],
)
def test_general_conv_gradients_match_finite_differences(
    backend, x_shape, kernel, stride, padding, dilation, groups
):
    if not takes_groups(backend):
        pytest.skip(f"{backend}.conv2d_forward takes no dilation/groups yet")
    be = get_backend(backend)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(kernel[:2] + (x_shape[3] // groups, kernel[2]))
    b = rng.standard_normal(kernel[2])
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    assert_conv_gradients(be, x, w, b, args, rng, TOL, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("x_shape, size, stride", POOL_CONFIGS)
def test_pool_gradients_match_finite_differences(backend, kind, x_shape, size, stride):
    be = get_backend(backend)
    forward, backward = getattr(be, f"{kind}pool2d_forward"), getattr(be, f"{kind}pool2d_backward")
    rng = np.random.default_rng(2)
    # distinct values at least 0.01 apart: a +-EPS nudge never changes which element is the max
    x = (rng.permutation(int(np.prod(x_shape))) * 0.01).reshape(x_shape)
    y, ctx = forward(x, size, stride)
    projection = rng.standard_normal(y.shape)
    dx = backward(projection, ctx)

    def loss():
        return float(np.sum(forward(x, size, stride)[0] * projection))

    np.testing.assert_allclose(
        dx, numeric_grad(loss, x), rtol=TOL, atol=TOL, err_msg=f"{backend} {kind}pool dx"
    )
