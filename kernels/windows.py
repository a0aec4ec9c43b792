"""Window arithmetic shared by the NumPy backends: the per-offset view of every window, and col2im.

A window of size (KH, KW) every (sh, sw) over an NHWC array is read one kernel offset at a time:
offset (i, j) of every window, over all output positions, is one strided (N, OH, OW, C) view
(:func:`offset_view`). Pooling reduces over those views, im2col copies them into columns, and
:func:`col2im` adds gradients back through them.
"""

from __future__ import annotations

import numpy as np


def offset_view(a: np.ndarray, i: int, j: int, sh: int, sw: int, out_h: int, out_w: int):
    """a: (N, H, W, C) -> the (N, OH, OW, C) view of the element at offset (i, j) of every window.

    Window (oh, ow) starts at (oh*sh, ow*sw); the view is a strided slice, never a copy, so
    writing into it writes into `a`.
    """
    return a[:, i : i + sh * out_h : sh, j : j + sw * out_w : sw, :]


def col2im(
    dcols: np.ndarray,
    padded_shape: tuple[int, ...],
    sh: int,
    sw: int,
    dh: int = 1,
    dw: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """dcols: (N, OH, OW, KH, KW, C) -> dx_padded: padded_shape, summing overlapping windows
    (into `out`, zeroed first, when given).

    Tap (i, j) of window (oh, ow) is element (oh*sh + i*dh, ow*sw + j*dw): (dh, dw) is the
    convolution's dilation.

    Accumulates per kernel offset (`+=` on a strided slice): within one offset no two output
    positions touch the same input element, so there is no need for a slow np.add.at.
    """
    _, out_h, out_w, kh, kw, _ = dcols.shape
    if out is None:
        dx_padded = np.zeros(padded_shape, dtype=dcols.dtype)
    else:
        dx_padded = out
        dx_padded.fill(0)
    for i in range(kh):
        for j in range(kw):
            dx_view = offset_view(dx_padded, i * dh, j * dw, sh, sw, out_h, out_w)
            dx_view += dcols[:, :, :, i, j, :]
    return dx_padded
