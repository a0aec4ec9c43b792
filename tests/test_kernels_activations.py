"""kernels/activations.py: the compiled ReLU equals NumPy's forms, on one thread and split over
the cores, for both float dtypes, with NaN, inf and signed zeros in the data."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import activations

SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30])


def _data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(dtype)
    flat = a.reshape(-1)
    flat[rng.integers(0, flat.size, len(SPECIALS))] = SPECIALS.astype(dtype)
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "size", [1, 1000, activations.PARALLEL_MIN + 17], ids=["one", "serial", "parallel"]
)
def test_relu_matches_numpy(size, dtype):
    x, dy = _data((size,), dtype, 0), _data((size,), dtype, 1)
    y = activations.relu(x)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, np.maximum(x, dtype(0)))
    dx = activations.relu_backward(y, dy)
    assert dx.dtype == dtype
    # NumPy's dy * (y > 0), except that the gradient where y <= 0 is 0 even for an inf/NaN dy
    np.testing.assert_array_equal(dx, np.where(y > 0, dy, dtype(0)))


def test_relu_takes_any_layout_and_shape():
    x = _data((6, 5, 4, 3), np.float32, 2)
    view = x.transpose(2, 0, 3, 1)[::2]  # not contiguous
    np.testing.assert_array_equal(activations.relu(view), np.maximum(view, np.float32(0)))
    y = activations.relu(view)
    np.testing.assert_array_equal(activations.relu_backward(y, view), np.where(y > 0, view, 0))


def test_relu_of_other_dtypes_uses_numpy():
    x = np.array([-2, 0, 3], dtype=np.int64)
    np.testing.assert_array_equal(activations.relu(x), [0, 0, 3])


def test_relu_backward_names_a_shape_mismatch():
    with pytest.raises(ValueError, match=r"dy must have the output's shape \(3, 4\)"):
        activations.relu_backward(np.zeros((3, 4), np.float32), np.zeros((4, 3), np.float32))
