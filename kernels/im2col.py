"""im2col backend: unfold every receptive field into a row of a matrix, then one GEMM.

Forward:   cols (N*OH*OW, KH*KW*C_in) @ w (KH*KW*C_in, C_out)          -> y
Backward:  dw = cols.T @ dy,   dcols = dy @ w.T,   dx = col2im(dcols)
Pooling reuses the same unfolding: max/mean over the KH*KW axis, col2im for the gradient.
"""
from __future__ import annotations

import numpy as np

from ._common import check_grad, conv_geometry, pad_hw, pool_geometry, unpad_hw


def im2col(x_padded, kh, kw, sh, sw, out_h, out_w):
    """x_padded: (N, Hp, Wp, C) -> cols: (N, OH, OW, KH, KW, C), a contiguous copy.

    Filled one kernel offset at a time: KH*KW strided slice copies, each as large as the output,
    which is far cheaper than transposing a sliding-window view element by element.
    """
    n, _, _, c = x_padded.shape
    cols = np.empty((n, out_h, out_w, kh, kw, c), dtype=x_padded.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = x_padded[:, i:i + sh * out_h:sh, j:j + sw * out_w:sw, :]
    return cols


def col2im(dcols, padded_shape, sh, sw):
    """dcols: (N, OH, OW, KH, KW, C) -> dx_padded: padded_shape, summing overlapping windows.

    Accumulates per kernel offset (`+=` on a strided slice): within one offset no two output
    positions touch the same input element, so there is no need for a slow np.add.at.
    """
    _, out_h, out_w, kh, kw, _ = dcols.shape
    dx_padded = np.zeros(padded_shape, dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx_padded[:, i:i + sh * out_h:sh, j:j + sw * out_w:sw, :] += dcols[:, :, :, i, j, :]
    return dx_padded


def conv2d_forward(x, w, b=None, stride=1, padding=0):
    """x: (N, H, W, C_in), w: (KH, KW, C_in, C_out), b: (C_out,) or None -> y: (N, OH, OW, C_out)."""
    g = conv_geometry(x, w, b, stride, padding)
    cols = im2col(pad_hw(x, g.ph, g.pw), g.kh, g.kw, g.sh, g.sw, g.out_h, g.out_w)
    cols = cols.reshape(-1, g.kh * g.kw * g.c_in)
    w_mat = w.reshape(-1, g.c_out)
    y = cols @ w_mat
    if b is not None:
        y += b
    return y.reshape(g.y_shape), {"geometry": g, "cols": cols, "w_mat": w_mat}


def conv2d_backward(dy, ctx, need_dx=True):
    """dy: (N, OH, OW, C_out) -> (dx (N, H, W, C_in) or None, dw like w, db (C_out,) or None)."""
    g, cols, w_mat = ctx["geometry"], ctx["cols"], ctx["w_mat"]
    check_grad(dy, g.y_shape, g.dtype)
    dy_mat = dy.reshape(-1, g.c_out)
    dw = (cols.T @ dy_mat).reshape(g.w_shape)
    db = dy_mat.sum(axis=0) if g.has_bias else None
    if not need_dx:
        return None, dw, db
    dcols = (dy_mat @ w_mat.T).reshape(g.n, g.out_h, g.out_w, g.kh, g.kw, g.c_in)
    dx_padded = col2im(dcols, g.padded_shape, g.sh, g.sw)
    return unpad_hw(dx_padded, g.ph, g.pw), dw, db


def _pool_cols(x, g):
    """x: (N, H, W, C) -> (N, OH, OW, KH*KW, C): each window's values along axis 3."""
    cols = im2col(x, g.kh, g.kw, g.sh, g.sw, g.out_h, g.out_w)
    return cols.reshape(g.n, g.out_h, g.out_w, g.kh * g.kw, g.c)


def maxpool2d_forward(x, size=2, stride=None):
    """x: (N, H, W, C) -> y: (N, OH, OW, C). Ties go to the first maximum in row-major order."""
    g = pool_geometry(x, size, stride)
    cols = _pool_cols(x, g)
    argmax = cols.argmax(axis=3)[:, :, :, None, :]            # first maximum, as in naive
    y = np.take_along_axis(cols, argmax, axis=3)[:, :, :, 0, :]
    return y, {"geometry": g, "argmax": argmax}


def maxpool2d_backward(dy, ctx):
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C)."""
    g, argmax = ctx["geometry"], ctx["argmax"]
    check_grad(dy, g.y_shape, g.dtype)
    dcols = np.zeros((g.n, g.out_h, g.out_w, g.kh * g.kw, g.c), dtype=g.dtype)
    np.put_along_axis(dcols, argmax, dy[:, :, :, None, :], axis=3)
    return col2im(dcols.reshape(g.n, g.out_h, g.out_w, g.kh, g.kw, g.c), g.x_shape, g.sh, g.sw)


def avgpool2d_forward(x, size=2, stride=None):
    """x: (N, H, W, C) -> y: (N, OH, OW, C), the mean of each window."""
    g = pool_geometry(x, size, stride)
    return _pool_cols(x, g).mean(axis=3), {"geometry": g}


def avgpool2d_backward(dy, ctx):
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C)."""
    g = ctx["geometry"]
    check_grad(dy, g.y_shape, g.dtype)
    share = (dy * g.dtype.type(1.0 / (g.kh * g.kw)))[:, :, :, None, None, :]
    # a broadcast view: col2im reads it per offset, so the KH*KW copies are never materialised
    dcols = np.broadcast_to(share, (g.n, g.out_h, g.out_w, g.kh, g.kw, g.c))
    return col2im(dcols, g.x_shape, g.sh, g.sw)
