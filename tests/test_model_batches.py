"""model.batches: float NHWC arrays from uint8 images, standardisation, subsets, mini-batches."""

import numpy as np
import pytest

from model.batches import (
    iterate_batches,
    num_batches,
    scale,
    standardize,
    standardize_stats,
    subset,
    to_nhwc,
)


def test_to_nhwc_and_scale():
    x = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)  # (1, 2, 2)
    nhwc = to_nhwc(x)
    assert nhwc.shape == (1, 2, 2, 1) and np.shares_memory(nhwc, x)
    scaled = scale(x)
    assert scaled.shape == (1, 2, 2, 1) and scaled.dtype == np.float32
    np.testing.assert_array_equal(scaled[..., 0], np.float32([[[0, 1], [0.2, 0.4]]]))
    assert scale(nhwc, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="x_uint8 must be uint8"):
        scale(scaled)
    with pytest.raises(ValueError, match=r"x must be \(N, H, W\)"):
        to_nhwc(nhwc)


def test_standardize():
    x = scale(np.random.default_rng(0).integers(0, 256, (50, 4, 4), dtype=np.uint8))
    mean, std = standardize_stats(x)
    assert isinstance(mean, float) and isinstance(std, float)
    z = standardize(x, mean, std)
    assert z.dtype == np.float32 and z.shape == x.shape
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1) < 1e-5
    with pytest.raises(ValueError, match="x must be floating"):
        standardize(np.zeros(3, np.uint8), 0.0, 1.0)
    with pytest.raises(ValueError, match="standard deviation"):
        standardize_stats(np.ones((2, 2), np.float32))


def test_subset():
    x, y = np.arange(10), np.arange(10) * 2
    assert subset(x, y, None, "--train-limit")[0] is x
    xs, ys = subset(x, y, 3, "--train-limit")
    np.testing.assert_array_equal(xs, [0, 1, 2])
    np.testing.assert_array_equal(ys, [0, 2, 4])
    assert len(subset(x, y, 100, "--train-limit")[0]) == 10
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="--train-limit must be a positive integer"):
            subset(x, y, bad, "--train-limit")


def test_iterate_batches_shuffled():
    x = np.arange(10)[:, None] * np.ones((1, 3))
    y = np.arange(10)
    batches = list(iterate_batches(x, y, 4, rng=np.random.default_rng(5)))
    assert [len(yb) for _, yb in batches] == [4, 4, 2] and num_batches(10, 4) == 3
    seen = np.concatenate([yb for _, yb in batches])
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0], yb)  # images stay with their labels
    again = np.concatenate([yb for _, yb in iterate_batches(x, y, 4, np.random.default_rng(5))])
    np.testing.assert_array_equal(again, seen)
    other = np.concatenate([yb for _, yb in iterate_batches(x, y, 4, np.random.default_rng(6))])
    assert list(other) != list(seen)


def test_iterate_batches_in_order_and_errors():
    x, y = np.arange(7), np.arange(7)
    assert [list(yb) for _, yb in iterate_batches(x, y, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [len(yb) for _, yb in iterate_batches(x, y, 7)] == [7]
    assert list(iterate_batches(x[:0], y[:0], 3)) == []
    assert num_batches(0, 3) == 0 and num_batches(7, 7) == 1 and num_batches(8, 7) == 2
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        iterate_batches(x, y, 0)  # raised at the call, not at the first next()
    with pytest.raises(ValueError, match="batch_size"):
        num_batches(5, 0)
    with pytest.raises(ValueError, match="differ in length"):
        iterate_batches(x, y[:3], 2)
    with pytest.raises(TypeError, match="Generator"):
        iterate_batches(x, y, 2, rng=0)
