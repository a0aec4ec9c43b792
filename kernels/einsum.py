"""einsum backend: a strided window view of the input (no copy), contracted by BLAS.

Forward:  windows (N, OH, OW, KH, KW, C_in)  .  w (KH, KW, C_in, C_out)     -> y (N, OH, OW, C_out)
dW:       dy (N, OH, OW, C_out)  .  windows  over (N, OH, OW)              -> dw (KH, KW, C_in, C_out)
dX:       a full correlation: windows of dy (dilated by the stride, zero-padded by KH-1 / KW-1)
          contracted with the flipped kernel (a gather, no scatter-add); when C_out >> C_in or the
          stride is > 1, dcols = dy . w^T scattered back with col2im (kernels/windows.py) is cheaper.
Pooling:  max/mean over the window axes of the same view; avg-pool dX is the same full correlation
          with a constant kernel, max-pool dX scatters each window's gradient to its argmax (col2im).

The contractions are written with np.tensordot, i.e. einsum's BLAS path taken explicitly:
np.einsum(..., optimize=True) on these 6-D views often picks its own C loop instead of BLAS,
several times slower on the `big` benchmark case. Each tensordot copies the view once into a GEMM operand;
the window axes are ordered (KH, KW, C) so that copy reads contiguous channel runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .contract import ConvCtx, MaxPoolCtx, PoolCtx, check_ctx
from .geometry import (
    ConvGeometry,
    IntPair,
    Padding,
    PoolPadding,
    argmax_dtype,
    argmax_inside,
    check_grad,
    conv_geometry,
    crop_conv_input,
    flipped_kernel,
    pad_conv_input,
    pool_geometry,
    pool_padded,
    pool_scales,
    pool_unpadded,
)
from .windows import col2im


@dataclass(frozen=True, eq=False)
class EinsumConvCtx(ConvCtx):
    """conv2d's ctx: the window view of the padded input (dW reads it) and the weights (dX)."""

    windows: np.ndarray  # (N, OH, OW, KH, KW, C_in), a view of the padded x
    w: np.ndarray  # (KH, KW, C_in // groups, C_out)


def _windows(
    a: np.ndarray,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    out_h: int,
    out_w: int,
    dh: int = 1,
    dw: int = 1,
) -> np.ndarray:
    """a: (N, H, W, C) -> view (N, OH, OW, KH, KW, C) of the windows every (sh, sw), their taps
    (dh, dw) apart (the dilation); no copy."""
    view = sliding_window_view(a, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    view = view[:, : sh * (out_h - 1) + 1 : sh, : sw * (out_w - 1) + 1 : sw, :, ::dh, ::dw]
    return view.transpose(0, 1, 2, 4, 5, 3)


def _grouped_windows(windows: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """windows (N, OH, OW, KH, KW, C_in) -> (groups, N*OH*OW, KH*KW*C_in/groups), a copy: each
    group's receptive fields as one GEMM operand (groups > 1)."""
    split = windows.reshape(*windows.shape[:5], g.groups, g.c_in_group)  # a view
    return split.transpose(5, 0, 1, 2, 3, 4, 6).reshape(g.groups, -1, g.kh * g.kw * g.c_in_group)


def _grouped_weights(w: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """w (KH, KW, C_in/groups, C_out) -> (groups, KH*KW*C_in/groups, C_out/groups)."""
    split = w.reshape(g.kh * g.kw * g.c_in_group, g.groups, g.c_out_group)
    return split.transpose(1, 0, 2)


def _grouped_dy(dy: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """dy (N, OH, OW, C_out) -> (groups, N*OH*OW, C_out/groups), a view."""
    return dy.reshape(-1, g.groups, g.c_out_group).transpose(1, 0, 2)


def _full_windows(
    dy: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, h: int, w: int
) -> np.ndarray:
    """dy: (N, OH, OW, C) -> view (N, H, W, KH, KW, C) such that, for the unpadded input position
    (r, c), window[n, r, c, i, j, :] is the dy entry that tap (KH-1-i, KW-1-j) sent there, or 0.

    dy is dilated by the stride and zero-padded by KH-1 / KW-1 (plus whatever rows/columns of the
    padded input no window reached), then cropped to the rows/columns the unpadded input needs.
    """
    n, out_h, out_w, c = dy.shape
    # padded-input rows r_p in [ph, ph+h) read dy_full rows r_p .. r_p+kh-1
    dy_full = np.zeros((n, h + kh - 1, w + kw - 1, c), dtype=dy.dtype)
    # output row p sits at dy_full row kh-1 + p*sh - ph; keep only rows inside the crop
    rows = np.arange(out_h) * sh + kh - 1 - ph
    cols = np.arange(out_w) * sw + kw - 1 - pw
    keep_r = (rows >= 0) & (rows < dy_full.shape[1])
    keep_c = (cols >= 0) & (cols < dy_full.shape[2])
    if keep_r.any() and keep_c.any():
        r0, c0 = rows[keep_r][0], cols[keep_c][0]
        dy_full[:, r0 : rows[keep_r][-1] + 1 : sh, c0 : cols[keep_c][-1] + 1 : sw] = dy[:, keep_r][
            :, :, keep_c
        ]
    return sliding_window_view(dy_full, (kh, kw), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)


def conv2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> tuple[np.ndarray, EinsumConvCtx]:
    """x: (N, H, W, C_in), w: (KH, KW, C_in // groups, C_out), b: (C_out,) or None
    -> y: (N, OH, OW, C_out) (kernels/contract.py states stride, padding, dilation, groups).

    Same dtype as x (float32 or float64). ctx keeps the window view (no copy) and w. Dilation is
    the window view's step between taps; groups > 1 is one batched GEMM over the groups.
    """
    g = conv_geometry(x, w, b, stride, padding, dilation, groups)
    x_padded = pad_conv_input(x, g)
    windows = _windows(x_padded, g.kh, g.kw, g.sh, g.sw, g.out_h, g.out_w, g.dil_h, g.dil_w)
    if g.groups == 1:
        y = np.tensordot(windows, w, axes=3)  # "nhwijc,ijco->nhwo"
    else:
        y_groups = _grouped_windows(windows, g) @ _grouped_weights(w, g)  # (G, M, C_out/G)
        y = y_groups.transpose(1, 0, 2).reshape(g.y_shape)
    if b is not None:
        y += b
    return y, EinsumConvCtx(g, windows, w)


def conv2d_backward(
    dy: np.ndarray, ctx: EinsumConvCtx, need_dx: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """dy: (N, OH, OW, C_out) -> (dx (N, H, W, C_in) or None, dw like w, db (C_out,) or None)."""
    check_ctx(ctx, EinsumConvCtx, "einsum")
    g, windows, w = ctx.geometry, ctx.windows, ctx.w
    check_grad(dy, g.y_shape, g.dtype)
    db = dy.sum(axis=(0, 1, 2)) if g.has_bias else None
    if g.groups > 1:
        return _grouped_backward(dy, g, windows, w, need_dx, db)
    # "nhwo,nhwijc->oijc": dy first, so the view is copied in its own (cheap) order
    dw = np.tensordot(dy, windows, axes=([0, 1, 2], [0, 1, 2])).transpose(1, 2, 3, 0)
    if not need_dx:
        return None, dw, db
    # The full correlation copies KH*KW*C_out values per input pixel, the scatter KH*KW*C_in per
    # output pixel: the gather wins for stride 1 unless C_out is much larger than C_in (it wins
    # on the `mid` and `big` benchmark cases, the scatter on `small_conv`, 1 -> 16).
    if g.plain and g.sh == g.sw == 1 and g.c_out <= 2 * g.c_in:
        dy_windows = _full_windows(dy, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.height, g.width)
        w_flipped = flipped_kernel(w)  # (KH, KW, C_out, C_in)
        return np.tensordot(dy_windows, w_flipped, axes=3), dw, db  # "nhwijo,ijoc->nhwc"
    dcols = np.tensordot(dy, w, axes=([3], [3]))  # "nhwo,ijco->nhwijc"
    return _col2im_cropped(dcols, g), dw, db


def _col2im_cropped(dcols: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """dcols (N, OH, OW, KH, KW, C_in) -> dx (N, H, W, C_in): scattered back, padding cropped."""
    dx_padded = col2im(dcols, g.padded_shape, g.sh, g.sw, g.dil_h, g.dil_w)
    return crop_conv_input(dx_padded, g)


def _grouped_backward(
    dy: np.ndarray,
    g: ConvGeometry,
    windows: np.ndarray,
    w: np.ndarray,
    need_dx: bool,
    db: np.ndarray | None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """conv2d_backward for groups > 1: dW and dcols as one batched GEMM over the groups each."""
    dy_groups = _grouped_dy(dy, g)  # (G, M, C_out/G)
    dw_groups = _grouped_windows(windows, g).transpose(0, 2, 1) @ dy_groups  # (G, K, C_out/G)
    dw = dw_groups.transpose(1, 0, 2).reshape(g.w_shape)
    if not need_dx:
        return None, dw, db
    dcols_groups = dy_groups @ _grouped_weights(w, g).transpose(0, 2, 1)  # (G, M, K)
    dcols = dcols_groups.reshape(g.groups, g.n, g.out_h, g.out_w, g.kh, g.kw, g.c_in_group)
    dcols = dcols.transpose(1, 2, 3, 4, 5, 0, 6).reshape(*g.y_shape[:3], g.kh, g.kw, g.c_in)
    return _col2im_cropped(dcols, g), dw, db


def maxpool2d_forward(
    x: np.ndarray,
    size: IntPair = 2,
    stride: IntPair | None = None,
    padding: PoolPadding = 0,
    ceil_mode: bool = False,
) -> tuple[np.ndarray, MaxPoolCtx]:
    """x: (N, H, W, C) -> y: (N, OH, OW, C). Ties go to the first maximum in row-major order.

    Padded windows read x padded with -inf (geometry.pool_padded); padding never wins.
    """
    g = pool_geometry(x, size, stride, padding, ceil_mode)
    source = x if g.plain else pool_padded(x, g, -np.inf)
    windows = _windows(source, g.kh, g.kw, g.sh, g.sw, g.out_h, g.out_w)
    flat = windows.reshape(g.n, g.out_h, g.out_w, g.kh * g.kw, g.c)  # taps in row-major order
    argmax = flat.argmax(axis=3)  # first maximum (and first NaN, so NaN propagates)
    y = np.take_along_axis(flat, argmax[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    if not g.plain:
        argmax = argmax_inside(g, argmax)
    return y, MaxPoolCtx(g, argmax.astype(argmax_dtype(g.kh, g.kw)))


def maxpool2d_backward(dy: np.ndarray, ctx: MaxPoolCtx) -> np.ndarray:
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C); each window's gradient goes to its argmax."""
    check_ctx(ctx, MaxPoolCtx, "einsum")
    g, argmax = ctx.geometry, ctx.argmax
    check_grad(dy, g.y_shape, g.dtype)
    # one-hot over the window taps, laid out (N, OH, OW, KH, KW, C) as col2im expects
    taps = np.arange(g.kh * g.kw).reshape(g.kh, g.kw, 1)
    dcols = np.where(
        argmax[:, :, :, None, None, :] == taps, dy[:, :, :, None, None, :], g.dtype.type(0)
    )
    if g.plain:
        return col2im(dcols, g.x_shape, g.sh, g.sw)
    return pool_unpadded(col2im(dcols, g.padded_shape, g.sh, g.sw), g)


def avgpool2d_forward(
    x: np.ndarray,
    size: IntPair = 2,
    stride: IntPair | None = None,
    padding: PoolPadding = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> tuple[np.ndarray, PoolCtx]:
    """x: (N, H, W, C) -> y: (N, OH, OW, C), the mean of each window (padded windows: the sum
    over x padded with zeros, times geometry.pool_scales)."""
    g = pool_geometry(x, size, stride, padding, ceil_mode, count_include_pad)
    if g.plain:
        windows = _windows(x, g.kh, g.kw, g.sh, g.sw, g.out_h, g.out_w)
        return windows.mean(axis=(3, 4)), PoolCtx(g)
    windows = _windows(pool_padded(x, g, 0.0), g.kh, g.kw, g.sh, g.sw, g.out_h, g.out_w)
    return windows.sum(axis=(3, 4)) * pool_scales(g)[:, :, None], PoolCtx(g)


def avgpool2d_backward(dy: np.ndarray, ctx: PoolCtx) -> np.ndarray:
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C): a full correlation of dy with a constant kernel
    (padded windows: each window's dy times its scale, spread by col2im)."""
    check_ctx(ctx, PoolCtx, "einsum")
    g = ctx.geometry
    check_grad(dy, g.y_shape, g.dtype)
    if g.plain:
        dy_windows = _full_windows(dy, g.kh, g.kw, g.sh, g.sw, 0, 0, g.height, g.width)
        return np.einsum("nhwijc->nhwc", dy_windows) * g.dtype.type(1.0 / (g.kh * g.kw))
    share = (dy * pool_scales(g)[:, :, None])[:, :, :, None, None, :]
    dcols = np.broadcast_to(share, (g.n, g.out_h, g.out_w, g.kh, g.kw, g.c))
    return pool_unpadded(col2im(dcols, g.padded_shape, g.sh, g.sw), g)
