"""model.augment: random shifts and rotations of training batches."""

import numpy as np
import pytest

from model.augment import augment_batch, transform_batch


def _images(n=5, size=12, channels=1, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).random((n, size, size, channels)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_augment_keeps_shape_and_dtype(dtype):
    x = _images(channels=2, dtype=dtype)
    out = augment_batch(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == dtype
    assert not np.shares_memory(out, x)
    assert np.all(out >= 0) and np.all(out <= 1 + 1e-6)  # bilinear mixes, never extrapolates


def test_augment_empty_batch():
    x = np.zeros((0, 28, 28, 1), np.float32)
    assert augment_batch(x, np.random.default_rng(0)).shape == x.shape


def test_augment_zero_is_identity():
    x = _images()
    np.testing.assert_array_equal(augment_batch(x, np.random.default_rng(0), 0, 0.0), x)


def test_transform_pure_shift_moves_pixels():
    x = _images(n=3)
    shifts = np.array([[1, -2], [0, 0], [-3, 3]])
    out = transform_batch(x, shifts, np.zeros(3))
    for i, (dy, dx) in enumerate(shifts):
        expected = np.zeros_like(x[i])
        h, w = x.shape[1:3]
        expected[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
            i, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
        ]
        np.testing.assert_array_equal(out[i], expected)


def test_augment_shift_only_moves_a_pixel_within_range():
    x = np.zeros((20, 9, 9, 1), np.float32)
    x[:, 4, 4] = 1.0
    out = augment_batch(x, np.random.default_rng(1), max_shift=2, max_degrees=0.0)
    for image in out[..., 0]:
        (r,), (c,) = np.nonzero(image)
        assert image[r, c] == 1.0 and abs(r - 4) <= 2 and abs(c - 4) <= 2
    moved = {tuple(np.argwhere(image[..., 0])[0]) for image in out}
    assert len(moved) > 1


def test_transform_rotation_by_90_degrees():
    x = _images(n=2, size=7)
    out = transform_batch(x, np.zeros((2, 2)), np.array([90.0, -90.0]))
    np.testing.assert_allclose(out[0], np.rot90(x[0], k=1), atol=1e-6)
    np.testing.assert_allclose(out[1], np.rot90(x[1], k=-1), atol=1e-6)


def test_augment_deterministic_for_seed():
    x = _images()
    a = augment_batch(x, np.random.default_rng(7))
    b = augment_batch(x, np.random.default_rng(7))
    c = augment_batch(x, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_augment_bad_arguments():
    x = _images()
    with pytest.raises(TypeError, match="rng"):
        augment_batch(x, 0)
    with pytest.raises(ValueError, match="max_shift"):
        augment_batch(x, np.random.default_rng(0), max_shift=-1)
    with pytest.raises(ValueError, match="max_degrees"):
        augment_batch(x, np.random.default_rng(0), max_degrees=-1.0)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\) floating"):
        augment_batch(x[..., 0], np.random.default_rng(0))
