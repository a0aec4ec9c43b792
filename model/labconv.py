"""The lab's NCHW convolution, conv2d(inputs, kernels), and the small example `fitconv demo` shows.

    >>> import numpy as np
    >>> from model.labconv import conv2d
    >>> y = conv2d(np.ones((3, 5, 5)), np.ones((2, 3, 3, 3)))   # (C, H, W), (K, C, kh, kw)
    >>> y.shape, float(y.min()), float(y.max())                  # (K, H-kh+1, W-kw+1)
    ((2, 3, 3), 27.0, 27.0)

Valid (no padding), stride-1 cross-correlation, as in the lab's targets. The kernels package works
in NHWC / HWIO; conv2d converts to and from that layout around one backend's conv2d_forward.
"""

from __future__ import annotations

import numpy as np

from kernels import get_backend
from kernels.geometry import FLOAT_DTYPES

INPUTS_LAYOUT = "(N, C, H, W) or (C, H, W)"
KERNELS_LAYOUT = "(K, C, kh, kw)"


def _real_array(a, name: str, layout: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"conv2d: {name} must hold real numbers {layout}, got dtype {a.dtype}")
    return a


def conv2d(inputs, kernels, backend: str = "im2col") -> np.ndarray:
    """Valid, stride-1 cross-correlation in the lab's NCHW layout.

    inputs: (N, C, H, W) or one image (C, H, W); kernels: (K, C, kh, kw) with kh <= H, kw <= W.
    Returns (N, K, H-kh+1, W-kw+1), or (K, H-kh+1, W-kw+1) for one image:
    out[n, k, i, j] = sum over c, a, b of inputs[n, c, i+a, j+b] * kernels[k, c, a, b].
    The result is float32 when both arguments are float32 (or one is and the other holds
    integers), else float64. backend: any name kernels.get_backend accepts.
    Raises ValueError naming the argument whose shape is wrong, TypeError for non-numbers.
    """
    inputs = _real_array(inputs, "inputs", INPUTS_LAYOUT)
    kernels = _real_array(kernels, "kernels", KERNELS_LAYOUT)
    if inputs.ndim not in (3, 4):
        raise ValueError(f"conv2d: inputs must be {INPUTS_LAYOUT}, got shape {inputs.shape}")
    if kernels.ndim != 4:
        raise ValueError(f"conv2d: kernels must be {KERNELS_LAYOUT}, got shape {kernels.shape}")
    batch = inputs if inputs.ndim == 4 else inputs[np.newaxis]
    _, c, h, w = batch.shape
    if min(inputs.shape) < 1 or min(kernels.shape) < 1:
        raise ValueError(f"conv2d: empty axis in inputs {inputs.shape} or kernels {kernels.shape}")
    if kernels.shape[1] != c:
        raise ValueError(
            f"conv2d: kernels {kernels.shape} have {kernels.shape[1]} channels but inputs "
            f"{inputs.shape} have {c}; axis 1 of kernels must equal the inputs' channels"
        )
    kh, kw = kernels.shape[2:]
    if kh > h or kw > w:
        raise ValueError(
            f"conv2d: kernels {kh}x{kw} are larger than the {h}x{w} inputs (valid convolution)"
        )
    dtype = np.result_type(inputs, kernels)
    if dtype not in FLOAT_DTYPES:  # ints, bools and float16 are computed in float64
        dtype = np.dtype(np.float64)
    x = np.ascontiguousarray(batch.transpose(0, 2, 3, 1), dtype=dtype)
    w_hwio = np.ascontiguousarray(kernels.transpose(2, 3, 1, 0), dtype=dtype)
    y, _ = get_backend(backend).conv2d_forward(x, w_hwio, None, 1, 0)
    y = np.ascontiguousarray(y.transpose(0, 3, 1, 2))
    return y if inputs.ndim == 4 else y[0]


def demo_example() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The demo's deterministic example: a (3, 5, 5) float64 input and two (3, 3, 3) kernels.

    The input's channel 0 steps from 0 to 1 between columns 1 and 2 (a vertical edge), channel 1
    ramps down the rows, channel 2 is a checkerboard. "vertical edge" is [-1, 0, 1] along each
    row of every channel, so it answers only to channel 0's edge (the ramp is constant along a
    row and the checkerboard cancels over two columns); "blur" is the mean of the 3x3x3 window.
    """
    rows, cols = np.indices((5, 5))
    inputs = np.stack([(cols >= 2) * 1.0, rows * 1.0, (rows + cols) % 2 * 1.0])
    edge = np.broadcast_to(np.array([-1.0, 0.0, 1.0]), (3, 3, 3)).copy()
    blur = np.full((3, 3, 3), 1.0 / 27.0)
    return inputs, {"vertical edge": edge, "blur (1/27 each)": blur}
