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


def _transform_numpy(x, shifts, degrees):
    """The NumPy formulation kernels/resample.py compiles, gathered through index arrays: the
    oracle for its bits."""
    n, h, w, _ = x.shape
    shifts = np.asarray(shifts, dtype=np.float64)
    theta = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    cy, cx = (h - 1) / 2, (w - 1) / 2
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out_y = rows - cy - shifts[:, 0, None, None]
    out_x = cols - cx - shifts[:, 1, None, None]
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    src_y = cos * out_y + sin * out_x + cy
    src_x = -sin * out_y + cos * out_x + cx
    y0, x0 = np.floor(src_y), np.floor(src_x)
    wy, wx = src_y - y0, src_x - x0
    y0, x0 = y0.astype(np.intp), x0.astype(np.intp)
    batch = np.arange(n)[:, None, None]
    out = np.zeros_like(x)
    for dy, weight_y in ((0, 1 - wy), (1, wy)):
        for dx, weight_x in ((0, 1 - wx), (1, wx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            weight = (weight_y * weight_x * inside).astype(x.dtype)
            out += weight[..., None] * x[batch, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(16, 28, 28, 1), (5, 9, 13, 3)])
def test_compiled_transform_matches_numpy_bit_for_bit(dtype, shape):
    rng = np.random.default_rng(3)
    x = rng.random(shape).astype(dtype)
    shifts = rng.integers(-3, 4, size=(shape[0], 2)).astype(np.float64)
    shifts[0] = (0.5, -1.25)  # fractional shifts too
    degrees = rng.uniform(-40, 40, shape[0])
    got = transform_batch(x, shifts, degrees)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, _transform_numpy(x, shifts, degrees))


def test_the_batch_split_over_threads_changes_no_bits():
    """rotate_shift_batch hands blocks of images to the thread pool; each image is computed
    alone, so the blocks give the serial kernel's bits (float32 and float64, 1 and 3 channels)."""
    from kernels.resample import MIN_SPLIT_IMAGES, rotate_shift, rotate_shift_batch

    rng = np.random.default_rng(3)
    n = 4 * MIN_SPLIT_IMAGES + 3
    for dtype, chans in ((np.float32, 1), (np.float64, 3)):
        x = rng.random((n, 28, 28, chans)).astype(dtype)
        theta = rng.uniform(-0.3, 0.3, n)
        shifts = rng.integers(-2, 3, (n, 2)).astype(np.float64)
        serial, split = np.empty_like(x), np.empty_like(x)
        rotate_shift(x, np.cos(theta), np.sin(theta), shifts, serial)
        rotate_shift_batch(x, np.cos(theta), np.sin(theta), shifts, split)
        assert np.array_equal(serial, split)
