"""The reference backend: explicit Python loops over output positions and kernel offsets.

Slow by design and meant to be read: every other backend must return these numbers.
Vectorised only over the batch and channel axes (each step is a small (N, C_in) @ (C_in, C_out)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .contract import ConvCtx, MaxPoolCtx, PoolCtx, check_ctx
from .geometry import (
    ConvGeometry,
    IntPair,
    Padding,
    PoolGeometry,
    PoolPadding,
    argmax_dtype,
    check_grad,
    conv_geometry,
    crop_conv_input,
    pad_conv_input,
    pool_counts,
    pool_geometry,
)


@dataclass(frozen=True, eq=False)
class NaiveConvCtx(ConvCtx):
    """conv2d's ctx: the padded input (dW reads it) and the weights (dX reads them)."""

    x_padded: np.ndarray  # (N, H + top + bottom, W + left + right, C_in)
    w: np.ndarray  # (KH, KW, C_in // groups, C_out)


def _groups(g: ConvGeometry) -> list[tuple[slice, slice]]:
    """(input channels, output channels) of each group: group k is a slice of both."""
    cg, og = g.c_in_group, g.c_out_group
    return [(slice(k * cg, (k + 1) * cg), slice(k * og, (k + 1) * og)) for k in range(g.groups)]


def conv2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> tuple[np.ndarray, NaiveConvCtx]:
    """Cross-correlation. x: (N, H, W, C_in), w: (KH, KW, C_in // groups, C_out), b: (C_out,)
    or None (kernels/contract.py states stride, padding, dilation and groups).

    Returns y: (N, OH, OW, C_out) in x's dtype, and ctx for :func:`conv2d_backward`.
    """
    g = conv_geometry(x, w, b, stride, padding, dilation, groups)
    x_padded = pad_conv_input(x, g)
    y = np.zeros(g.y_shape, dtype=g.dtype)
    for i in range(g.out_h):
        for j in range(g.out_w):
            for di in range(g.kh):
                for dj in range(g.kw):
                    # dilation: the taps of a window are dil_h rows / dil_w columns apart
                    r, c = i * g.sh + di * g.dil_h, j * g.sw + dj * g.dil_w
                    for ins, outs in _groups(g):
                        # (N, C_in/groups) @ (C_in/groups, C_out/groups): one tap, one group
                        y[:, i, j, outs] += x_padded[:, r, c, ins] @ w[di, dj, :, outs]
    if b is not None:
        y += b
    return y, NaiveConvCtx(g, x_padded, w)


def conv2d_backward(
    dy: np.ndarray, ctx: NaiveConvCtx, need_dx: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """dy: (N, OH, OW, C_out) -> (dx (N, H, W, C_in) or None, dw like w, db (C_out,) or None)."""
    check_ctx(ctx, NaiveConvCtx, "naive")
    g, x_padded, w = ctx.geometry, ctx.x_padded, ctx.w
    check_grad(dy, g.y_shape, g.dtype)
    dw = np.zeros(g.w_shape, dtype=g.dtype)
    dx_padded = np.zeros(g.padded_shape, dtype=g.dtype) if need_dx else None
    for i in range(g.out_h):
        for j in range(g.out_w):
            for di in range(g.kh):
                for dj in range(g.kw):
                    r, c = i * g.sh + di * g.dil_h, j * g.sw + dj * g.dil_w
                    for ins, outs in _groups(g):
                        dy_ij = dy[:, i, j, outs]  # (N, C_out/groups)
                        dw[di, dj, :, outs] += x_padded[:, r, c, ins].T @ dy_ij
                        if dx_padded is not None:
                            dx_padded[:, r, c, ins] += dy_ij @ w[di, dj, :, outs].T
    db = dy.sum(axis=(0, 1, 2)) if g.has_bias else None
    dx = None if dx_padded is None else crop_conv_input(dx_padded, g)
    return dx, dw, db


def _window_rows(g: PoolGeometry, i: int, j: int) -> tuple[int, int, int, int, int, int]:
    """Window (i, j) clipped to x: (row_start, r0, r1, col_start, c0, c1), where the window
    starts at (row_start, col_start) in x's coordinates (negative inside the top/left padding)
    and x[:, r0:r1, c0:c1] is the part of it inside x."""
    row_start, col_start = i * g.sh - g.pad_top, j * g.sw - g.pad_left
    r0, r1 = max(row_start, 0), min(row_start + g.kh, g.height)
    c0, c1 = max(col_start, 0), min(col_start + g.kw, g.width)
    return row_start, r0, r1, col_start, c0, c1


def maxpool2d_forward(
    x: np.ndarray,
    size: IntPair = 2,
    stride: IntPair | None = None,
    padding: PoolPadding = 0,
    ceil_mode: bool = False,
) -> tuple[np.ndarray, MaxPoolCtx]:
    """x: (N, H, W, C) -> y: (N, OH, OW, C). Ties go to the first maximum in row-major order.

    Padding never wins a window: each window's maximum is taken over its part inside x.
    """
    g = pool_geometry(x, size, stride, padding, ceil_mode)
    y = np.empty(g.y_shape, dtype=g.dtype)
    argmax = np.empty(g.y_shape, dtype=argmax_dtype(g.kh, g.kw))  # flat index i*KW + j
    for i in range(g.out_h):
        for j in range(g.out_w):
            row_start, r0, r1, col_start, c0, c1 = _window_rows(g, i, j)
            inside = x[:, r0:r1, c0:c1, :].reshape(g.n, -1, g.c)
            # np.argmax returns the first maximum (and the first NaN, so NaN propagates)
            k = inside.argmax(axis=1)
            y[:, i, j, :] = np.take_along_axis(inside, k[:, None, :], axis=1)[:, 0, :]
            di, dj = np.divmod(k, c1 - c0)  # within the clipped window, then the whole one
            argmax[:, i, j, :] = (di + r0 - row_start) * g.kw + dj + c0 - col_start
    return y, MaxPoolCtx(g, argmax)


def maxpool2d_backward(dy: np.ndarray, ctx: MaxPoolCtx) -> np.ndarray:
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C); each window's gradient goes to its argmax."""
    check_ctx(ctx, MaxPoolCtx, "naive")
    g, argmax = ctx.geometry, ctx.argmax
    check_grad(dy, g.y_shape, g.dtype)
    dx = np.zeros(g.x_shape, dtype=g.dtype)
    n_idx, c_idx = np.meshgrid(np.arange(g.n), np.arange(g.c), indexing="ij")
    for i in range(g.out_h):
        for j in range(g.out_w):
            # as intp: uint8 row and column offsets would wrap past row 255
            di, dj = np.divmod(argmax[:, i, j, :].astype(np.intp), g.kw)
            row_start, _, _, col_start, _, _ = _window_rows(g, i, j)
            # one target per (n, c) within a window, so fancy-index += has no duplicates
            dx[n_idx, row_start + di, col_start + dj, c_idx] += dy[:, i, j, :]
    return dx


def avgpool2d_forward(
    x: np.ndarray,
    size: IntPair = 2,
    stride: IntPair | None = None,
    padding: PoolPadding = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> tuple[np.ndarray, PoolCtx]:
    """x: (N, H, W, C) -> y: (N, OH, OW, C), each window's sum over its part inside x divided
    by its count (geometry.pool_counts: padding counts or not by count_include_pad)."""
    g = pool_geometry(x, size, stride, padding, ceil_mode, count_include_pad)
    rows, cols = pool_counts(g)
    y = np.empty(g.y_shape, dtype=g.dtype)
    for i in range(g.out_h):
        for j in range(g.out_w):
            _, r0, r1, _, c0, c1 = _window_rows(g, i, j)
            y[:, i, j, :] = x[:, r0:r1, c0:c1, :].sum(axis=(1, 2)) / g.dtype.type(rows[i] * cols[j])
    return y, PoolCtx(g)


def avgpool2d_backward(dy: np.ndarray, ctx: PoolCtx) -> np.ndarray:
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C); each window shares its gradient equally among
    its count of positions (those in the padding take their share nowhere)."""
    check_ctx(ctx, PoolCtx, "naive")
    g = ctx.geometry
    check_grad(dy, g.y_shape, g.dtype)
    rows, cols = pool_counts(g)
    dx = np.zeros(g.x_shape, dtype=g.dtype)
    for i in range(g.out_h):
        for j in range(g.out_w):
            _, r0, r1, _, c0, c1 = _window_rows(g, i, j)
            scale = g.dtype.type(1.0 / (rows[i] * cols[j]))
            dx[:, r0:r1, c0:c1, :] += dy[:, i, j, None, None, :] * scale
    return dx
