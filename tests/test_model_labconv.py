"""model.labconv: the lab's NCHW conv2d, against a direct loop and PyTorch; `fitconv demo`."""

import numpy as np
import pytest

from model.fitconv import main
from model.labconv import conv2d, demo_example


def conv_loop(x, w):
    """The definition, one output element at a time. x: (N, C, H, W), w: (K, C, kh, kw)."""
    n, c, h, wd = x.shape
    k, _, kh, kw = w.shape
    y = np.zeros((n, k, h - kh + 1, wd - kw + 1))
    for s in range(n):
        for o in range(k):
            for i in range(h - kh + 1):
                for j in range(wd - kw + 1):
                    y[s, o, i, j] = np.sum(x[s, :, i : i + kh, j : j + kw] * w[o])
    return y


@pytest.mark.parametrize("backend", ["naive", "einsum", "im2col"])
@pytest.mark.parametrize(
    "x_shape, w_shape",
    [((2, 3, 5, 5), (2, 3, 3, 3)), ((1, 1, 4, 7), (3, 1, 2, 4)), ((3, 2, 6, 5), (1, 2, 6, 1))],
)
def test_conv2d_matches_the_direct_loop(backend, x_shape, w_shape):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    y = conv2d(x, w, backend=backend)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, conv_loop(x, w), rtol=1e-12, atol=1e-12)


def test_conv2d_one_image_and_dtypes():
    rng = np.random.default_rng(1)
    x, w = rng.random((3, 5, 5)), rng.random((2, 3, 3, 3))
    y = conv2d(x, w)
    assert y.shape == (2, 3, 3)
    np.testing.assert_allclose(y, conv_loop(x[None], w)[0], rtol=1e-12)
    assert conv2d(x.astype(np.float32), w.astype(np.float32)).dtype == np.float32
    assert conv2d(x.astype(np.float32), w).dtype == np.float64
    ints = conv2d(np.arange(75).reshape(3, 5, 5), np.ones((1, 3, 2, 2), dtype=int))
    assert ints.dtype == np.float64 and ints[0, 0, 0] == (0 + 1 + 5 + 6) * 3 + 25 * 4 * 3
    assert conv2d(x.tolist(), w).shape == (2, 3, 3)  # nested lists are arrays too


def test_conv2d_matches_torch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install -e '.[peers]')")
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((4, 3, 9, 7)), rng.standard_normal((5, 3, 3, 2))
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(conv2d(x, w), expected, rtol=1e-10, atol=1e-12)
    y32 = conv2d(x.astype(np.float32), w.astype(np.float32))
    np.testing.assert_allclose(y32, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "x_shape, w_shape, message",
    [
        ((5, 5), (2, 3, 3, 3), "inputs must be (N, C, H, W) or (C, H, W), got shape (5, 5)"),
        ((1, 1, 3, 5, 5), (2, 3, 3, 3), "inputs must be"),
        ((3, 5, 5), (3, 3, 3), "kernels must be (K, C, kh, kw), got shape (3, 3, 3)"),
        ((3, 5, 5), (2, 2, 3, 3), "kernels (2, 2, 3, 3) have 2 channels but inputs (3, 5, 5)"),
        ((1, 3, 5, 5), (2, 3, 6, 3), "kernels 6x3 are larger than the 5x5 inputs"),
        ((0, 3, 5, 5), (2, 3, 3, 3), "empty axis"),
    ],
)
def test_conv2d_shape_errors_name_the_argument(x_shape, w_shape, message):
    with pytest.raises(ValueError) as info:
        conv2d(np.zeros(x_shape), np.zeros(w_shape))
    assert message in str(info.value) and str(info.value).startswith("conv2d: ")
    assert "\n" not in str(info.value)


def test_conv2d_rejects_non_numbers():
    with pytest.raises(TypeError, match="inputs must hold real numbers"):
        conv2d(np.array([["a"]]), np.zeros((1, 1, 1, 1)))


def test_demo_prints_input_kernels_and_their_output(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    inputs, named = demo_example()
    kernels = np.stack(list(named.values()))
    assert inputs.shape == (3, 5, 5) and kernels.shape == (2, 3, 3, 3)
    expected = conv_loop(inputs[None], kernels)[0]
    for header in ("input (3, 5, 5)", "kernels (2, 3, 3, 3)", "output = conv2d", "(2, 3, 3)"):
        assert header in out
    assert "kernel 0: vertical edge" in out and "kernel 1: blur" in out
    lines = out.splitlines()
    output_rows = lines[lines.index(next(x for x in lines if x.startswith("output"))) + 2 :]
    assert len(output_rows) == 3
    for row, edge, blur in zip(output_rows, expected[0], expected[1]):
        numbers = [float(v) for v in row.split()]
        np.testing.assert_allclose(numbers, np.concatenate([edge, blur]), atol=0.005)
    # the edge kernel answers only to channel 0's step: 3 left of it, 0 past it
    np.testing.assert_array_equal(expected[0], [[3, 3, 0]] * 3)
    assert "  0 0 1 1 1    0 0 0 0 0    0 1 0 1 0" in lines
