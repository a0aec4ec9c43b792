"""im2col backend: unfold every receptive field into a row of a matrix, then one GEMM.

Forward:   cols (N*OH*OW, KH*KW*C_in [+1]) @ [w; b] (KH*KW*C_in [+1], C_out)   -> y
Backward:  [dw; db] = cols.T @ dy,   dcols = dy @ w.T,   dx = col2im(dcols)
(the +1: a column of ones in cols carries the bias, see im2col)
Dilation: each kernel offset's view steps (dh, dw) taps apart (windows.offset_view). Groups > 1:
im2col per group (each group's channel slice unfolded on its own), one batched GEMM over the
groups, the bias added after it.
1x1, stride 1, unpadded: x is already the column matrix (copied beside a ones column only when
C_in < C_out, see conv2d_forward). The column matrix, dcols, the padded input, y and dx are
workspace buffers (kernels/workspace.py: reused per shape, never while a ctx or the caller still
holds them); the GEMMs run on both cores whatever numpy's BLAS thread setting (gemm.product).
Pooling walks the same kernel offsets without materialising columns (max/mean per offset),
and col2im's per-offset accumulation for the gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import gemm, workspace
from .contract import ConvCtx, MaxPoolCtx, PoolCtx, check_ctx
from .geometry import (
    ConvGeometry,
    IntPair,
    Padding,
    PoolGeometry,
    PoolPadding,
    argmax_dtype,
    argmax_inside,
    check_grad,
    conv_geometry,
    crop_conv_input,
    pool_geometry,
    pool_padded,
    pool_scales,
    pool_unpadded,
)
from .windows import col2im, offset_view


@dataclass(frozen=True, eq=False)
class Im2colConvCtx(ConvCtx):
    """conv2d's ctx: the column matrix (dW reads it) and the weights as a matrix (dX)."""

    # (N*OH*OW, KH*KW*C_in [+ 1]), see im2col; groups > 1: (groups, N*OH*OW, KH*KW*C_in/groups)
    cols: np.ndarray
    # (KH*KW*C_in, C_out); groups > 1: (groups, KH*KW*C_in/groups, C_out/groups)
    w_mat: np.ndarray


def im2col(
    x_padded: np.ndarray,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    out_h: int,
    out_w: int,
    ones: bool = False,
    dh: int = 1,
    dw: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """x_padded: (N, Hp, Wp, C) -> cols: (N*OH*OW, KH*KW*C), plus a last column of ones if `ones`.

    Written into `out` if given (that shape, any memory order), else into a fresh array.

    Tap (i, j) of window (oh, ow) reads x_padded[:, oh*sh + i*dh, ow*sw + j*dw]: (dh, dw) is the
    dilation.

    Row m is the receptive field of output pixel m, ordered (kh, kw, c) like w.reshape(-1, C_out);
    the ones column is the input that multiplies the bias, so one GEMM adds it (and dW's GEMM
    gives db), instead of two more passes over the output. Filled one kernel offset at a time:
    KH*KW strided slice copies, each as large as the output, far cheaper than transposing a
    sliding-window view element by element. The memory order depends on C:
    - C > 1: row-major, so each copy moves runs of C contiguous values.
    - C == 1: those runs would be single floats, stored KH*KW apart. The matrix is instead stored
      column-major (offset-major, Caffe's order) and returned as a transposed view: each copy is
      then a contiguous image block (the `small_conv` benchmark case), col2im's adds contiguous
      too, and BLAS takes the transposed matrix as it is.
    """
    n, _, _, c = x_padded.shape
    rows, width = n * out_h * out_w, kh * kw * c + (1 if ones else 0)
    cols = _column_matrix(rows, width, c, x_padded.dtype, np.empty) if out is None else out
    for i in range(kh):
        for j in range(kw):
            first = (i * kw + j) * c
            # splitting the row axis into (N, OH, OW) is always a view, so this writes into cols
            block = cols[:, first : first + c].reshape(n, out_h, out_w, c)
            block[...] = offset_view(x_padded, i * dh, j * dw, sh, sw, out_h, out_w)
    if ones:
        cols[:, -1] = 1
    return cols


def _column_matrix(
    rows: int, width: int, c: int, dtype: np.dtype, new: Callable[..., np.ndarray]
) -> np.ndarray:
    """A (rows, width) array from new(shape, dtype): row-major, or for c == 1 the transposed
    view of a (width, rows) one (im2col's memory order, see there)."""
    return new((width, rows), dtype).T if c == 1 else new((rows, width), dtype)


def _take(name: str) -> Callable[..., np.ndarray]:
    """new(shape, dtype) for _column_matrix: a workspace buffer of this backend named `name`."""
    return lambda shape, dtype: workspace.take(f"im2col.{name}", shape, dtype)


def _padded_input(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """x (N, H, W, C_in) -> g.padded_shape, zeros around: geometry.pad_conv_input's result in a
    workspace buffer, x copied in and only the border strips zeroed (no fresh padded array)."""
    if (g.ph, g.ph_end, g.pw, g.pw_end) == (0, 0, 0, 0):
        return x
    x_padded = workspace.take("im2col.x_padded", g.padded_shape, x.dtype)
    bottom, right = g.ph + g.height, g.pw + g.width
    x_padded[:, : g.ph] = 0
    x_padded[:, bottom:] = 0
    x_padded[:, g.ph : bottom, : g.pw] = 0
    x_padded[:, g.ph : bottom, right:] = 0
    crop_conv_input(x_padded, g)[...] = x
    return x_padded


def _pointwise(g: ConvGeometry) -> bool:
    """A 1x1 convolution of stride 1, unpadded and ungrouped: one matrix product as it stands."""
    unpadded = (g.ph, g.ph_end, g.pw, g.pw_end) == (0, 0, 0, 0)
    return (g.kh, g.kw, g.sh, g.sw, g.groups) == (1, 1, 1, 1, 1) and unpadded


def conv2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> tuple[np.ndarray, Im2colConvCtx]:
    """x: (N, H, W, C_in), w: (KH, KW, C_in // groups, C_out), b: (C_out,) or None
    -> y: (N, OH, OW, C_out) (kernels/contract.py states stride, padding, dilation, groups)."""
    g = conv_geometry(x, w, b, stride, padding, dilation, groups)
    # the column matrices and the padded input come from kernels/workspace.py, y never does
    x_padded = _padded_input(x, g)
    unfold = (g.kh, g.kw, g.sh, g.sw, g.out_h, g.out_w)
    rows = g.n * g.out_h * g.out_w
    if g.groups > 1:
        cg = g.c_in_group
        cols = workspace.take("im2col.group_cols", (g.groups, rows, g.kh * g.kw * cg), x.dtype)
        for k in range(g.groups):
            group_x = x_padded[..., k * cg : (k + 1) * cg]
            im2col(group_x, *unfold, dh=g.dil_h, dw=g.dil_w, out=cols[k])
        w_mat = w.reshape(-1, g.groups, g.c_out_group).transpose(1, 0, 2)
        y_groups = workspace.take("im2col.y_groups", (g.groups, rows, g.c_out_group), x.dtype)
        np.matmul(cols, w_mat, out=y_groups)
        y = workspace.take("im2col.y", g.y_shape, x.dtype)
        # (G, M, C_out/G) -> NHWC, written straight into the caller's y
        np.copyto(y.reshape(rows, g.groups, g.c_out_group).transpose(1, 0, 2), y_groups)
        if b is not None:
            y += b
        return y, Im2colConvCtx(g, cols, w_mat)
    w_mat = w.reshape(-1, g.c_out)
    if _pointwise(g):
        # x's pixels already are the column matrix's rows: nothing unfolded (the 1x1 layers of
        # ResNet-50's bottlenecks, `bench.conv --set resnet50 --layers branch2a`)
        x_mat = x.reshape(-1, g.c_in)
        if b is not None and g.c_in < g.c_out:
            # x copied beside a column of ones (im2col's bias column) is a smaller pass than
            # adding b to the wider y, and backward's one GEMM then gives db with dW
            # (`bench.conv --set resnet50 --layers branch2c`, 64 -> 256 channels)
            cols = workspace.take("im2col.cols", (len(x_mat), g.c_in + 1), x.dtype)
            cols[:, : g.c_in] = x_mat
            cols[:, g.c_in] = 1
            y = gemm.product(cols, np.vstack([w_mat, b]), _result_rows(g))
        else:  # C_in >= C_out: copying x costs more than the bias pass (`--layers branch2a`)
            cols = x_mat
            y = gemm.product(cols, w_mat, _result_rows(g))
            if b is not None:
                y += b
        return y.reshape(g.y_shape), Im2colConvCtx(g, cols, w_mat)
    width = g.kh * g.kw * g.c_in + (1 if g.has_bias else 0)
    cols = _column_matrix(rows, width, g.c_in, x.dtype, _take("cols"))
    im2col(x_padded, *unfold, ones=g.has_bias, dh=g.dil_h, dw=g.dil_w, out=cols)
    # with a bias, its row under w_mat meets the ones column of cols (see im2col)
    y = gemm.product(cols, w_mat if b is None else np.vstack([w_mat, b]), _result_rows(g))
    return y.reshape(g.y_shape), Im2colConvCtx(g, cols, w_mat)


def _result_rows(g: ConvGeometry) -> np.ndarray:
    """y as the forward GEMM's (N*OH*OW, C_out) output, from the workspace: the caller's own
    while held, its pages not faulted again on the next call (kernels/workspace.py)."""
    return workspace.take("im2col.y", (g.n * g.out_h * g.out_w, g.c_out), g.dtype)


def _dx_rows(g: ConvGeometry) -> np.ndarray:
    """A 1x1 layer's dx as the (N*H*W, C_in) output of dy @ w.T, from the workspace."""
    return workspace.take("im2col.dx", (g.n * g.height * g.width, g.c_in), g.dtype)


def conv2d_backward(
    dy: np.ndarray, ctx: Im2colConvCtx, need_dx: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """dy: (N, OH, OW, C_out) -> (dx (N, H, W, C_in) or None, dw like w, db (C_out,) or None)."""
    check_ctx(ctx, Im2colConvCtx, "im2col")
    g, cols, w_mat = ctx.geometry, ctx.cols, ctx.w_mat
    check_grad(dy, g.y_shape, g.dtype)
    if g.groups > 1:
        return _grouped_backward(dy, g, cols, w_mat, need_dx)
    dy_mat = dy.reshape(-1, g.c_out)
    if _pointwise(g) and cols.shape[1] == g.c_in:  # x as it is, no ones column: db apart
        dw = gemm.product(cols.T, dy_mat).reshape(g.w_shape)
        # a GEMV: BLAS sums dy's columns faster than numpy's axis-0 sum (`--layers branch2a`)
        db = np.ones(len(dy_mat), dy_mat.dtype) @ dy_mat if g.has_bias else None
        dx = gemm.product(dy_mat, w_mat.T, _dx_rows(g)).reshape(g.x_shape) if need_dx else None
        return dx, dw, db
    grads = gemm.product(cols.T, dy_mat)  # (KH*KW*C_in [+ 1], C_out): dw, then db's row
    dw = grads[: len(w_mat)].reshape(g.w_shape)
    db = grads[-1] if g.has_bias else None
    if not need_dx:
        return None, dw, db
    if _pointwise(g):  # dcols is dx itself (cols held x beside a ones column, see forward)
        return gemm.product(dy_mat, w_mat.T, _dx_rows(g)).reshape(g.x_shape), dw, db
    dcols = _column_matrix(len(dy_mat), len(w_mat), g.c_in, dy.dtype, _take("dcols"))
    if g.c_in == 1:
        # the same (M, K) matrix, computed transposed so it is offset-major like the columns
        # (see im2col): each of col2im's per-offset adds then reads one contiguous block; BLAS
        # writes only a row-major output, so the product is taken as (K, M) into dcols.T
        gemm.product(w_mat, dy_mat.T, out=dcols.T)
    else:
        gemm.product(dy_mat, w_mat.T, out=dcols)
    dcols = dcols.reshape(g.n, g.out_h, g.out_w, g.kh, g.kw, g.c_in)
    return _col2im_cropped(dcols, g), dw, db


def _col2im_cropped(dcols: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """dcols (N, OH, OW, KH, KW, C_in) -> dx (N, H, W, C_in): scattered back, padding cropped."""
    out = workspace.take("im2col.dx", g.padded_shape, dcols.dtype)  # see _result_rows
    dx_padded = col2im(dcols, g.padded_shape, g.sh, g.sw, g.dil_h, g.dil_w, out)
    return crop_conv_input(dx_padded, g)


def _grouped_backward(
    dy: np.ndarray, g: ConvGeometry, cols: np.ndarray, w_mat: np.ndarray, need_dx: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """conv2d_backward for groups > 1: cols (G, M, K), w_mat (G, K, C_out/G)."""
    dy_groups = dy.reshape(-1, g.groups, g.c_out_group).transpose(1, 0, 2)  # (G, M, C_out/G)
    dw = (cols.transpose(0, 2, 1) @ dy_groups).transpose(1, 0, 2).reshape(g.w_shape)
    db = dy.sum(axis=(0, 1, 2)) if g.has_bias else None
    if not need_dx:
        return None, dw, db
    taps = g.kh * g.kw * g.c_in_group
    dcols_groups = workspace.take("im2col.group_dcols", (g.groups, len(cols[0]), taps), dy.dtype)
    np.matmul(dy_groups, w_mat.transpose(0, 2, 1), out=dcols_groups)
    # (G, N, OH, OW, KH, KW, C_in/G) -> (N, OH, OW, KH, KW, G, C_in/G): col2im's layout
    dcols = workspace.take(
        "im2col.dcols", (*g.y_shape[:3], g.kh, g.kw, g.groups, g.c_in_group), dy.dtype
    )
    np.copyto(
        dcols,
        dcols_groups.reshape(g.groups, *g.y_shape[:3], g.kh, g.kw, g.c_in_group).transpose(
            1, 2, 3, 4, 5, 0, 6
        ),
    )
    dcols = dcols.reshape(*g.y_shape[:3], g.kh, g.kw, g.c_in)
    return _col2im_cropped(dcols, g), dw, db


def _offset(a: np.ndarray, g: PoolGeometry, k: int) -> np.ndarray:
    """The (N, OH, OW, C) view of `a` at flat offset k = i*KW + j of every pooling window."""
    i, j = divmod(k, g.kw)
    return offset_view(a, i, j, g.sh, g.sw, g.out_h, g.out_w)


def maxpool2d_forward(
    x: np.ndarray,
    size: IntPair = 2,
    stride: IntPair | None = None,
    padding: PoolPadding = 0,
    ceil_mode: bool = False,
) -> tuple[np.ndarray, MaxPoolCtx]:
    """x: (N, H, W, C) -> y: (N, OH, OW, C). Ties go to the first maximum in row-major order.

    The unfolding is done lazily, one kernel offset at a time: a running maximum over KH*KW
    strided views costs KH*KW output-sized passes, where materialising the columns and reducing
    along a strided axis costs several times more (the `small_pool` benchmark case). Padded
    windows read x padded with -inf (geometry.pool_padded); padding never wins.
    """
    g = pool_geometry(x, size, stride, padding, ceil_mode)
    source = x if g.plain else pool_padded(x, g, -np.inf)
    offsets = [_offset(source, g, k) for k in range(g.kh * g.kw)]
    y = offsets[0].copy()
    for candidate in offsets[1:]:
        np.maximum(y, candidate, out=y)  # propagates NaN, as np.argmax picks NaN
    # The argmax counts the offsets passed before the first one equal to the maximum (or NaN where
    # the maximum is NaN): a running "still searching" mask, added up as 0/1. Per offset that is
    # one compare, one AND and one add on small arrays, several times cheaper than np.where with
    # a scalar
    # (which broadcasts slowly) and far cheaper than boolean-mask writes.
    y_is_nan = np.isnan(y)
    y_is_nan = y_is_nan if y_is_nan.any() else None  # the common case skips the NaN passes
    argmax = np.zeros(g.y_shape, dtype=argmax_dtype(g.kh, g.kw))
    searching = np.ones(g.y_shape, dtype=bool)
    for candidate in offsets[:-1]:  # past the last offset nothing is left to find
        missed = candidate != y
        if y_is_nan is not None:
            missed &= ~(y_is_nan & np.isnan(candidate))
        searching &= missed
        argmax += searching
    if not g.plain:
        argmax = argmax_inside(g, argmax)
    return y, MaxPoolCtx(g, argmax)


def maxpool2d_backward(dy: np.ndarray, ctx: MaxPoolCtx) -> np.ndarray:
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C); each window's gradient goes to its argmax."""
    check_ctx(ctx, MaxPoolCtx, "im2col")
    g, argmax = ctx.geometry, ctx.argmax
    check_grad(dy, g.y_shape, g.dtype)
    dx = np.zeros(g.x_shape if g.plain else g.padded_shape, dtype=g.dtype)
    zero = g.dtype.type(0)
    # Windows that do not overlap own their pixels: mask * dy can be written straight into the
    # strided view (cheaper than np.where + +=), but only for finite dy (0 * inf is NaN).
    write_directly = g.sh >= g.kh and g.sw >= g.kw and bool(np.isfinite(dy).all())
    for k in range(g.kh * g.kw):
        dx_view = _offset(dx, g, k)
        if write_directly:
            np.multiply(argmax == k, dy, out=dx_view)
        else:
            # += so overlapping windows (stride < size) accumulate, exactly as col2im does
            dx_view += np.where(argmax == k, dy, zero)
    return dx if g.plain else pool_unpadded(dx, g)


def avgpool2d_forward(
    x: np.ndarray,
    size: IntPair = 2,
    stride: IntPair | None = None,
    padding: PoolPadding = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> tuple[np.ndarray, PoolCtx]:
    """x: (N, H, W, C) -> y: (N, OH, OW, C), the mean of each window (summed per offset; padded
    windows over x padded with zeros, times geometry.pool_scales)."""
    g = pool_geometry(x, size, stride, padding, ceil_mode, count_include_pad)
    source = x if g.plain else pool_padded(x, g, 0.0)
    y = _offset(source, g, 0).copy()
    for k in range(1, g.kh * g.kw):
        y += _offset(source, g, k)
    if g.plain:
        y *= g.dtype.type(1.0 / (g.kh * g.kw))
    else:
        y *= pool_scales(g)[:, :, None]
    return y, PoolCtx(g)


def avgpool2d_backward(dy: np.ndarray, ctx: PoolCtx) -> np.ndarray:
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C); each window shares its gradient equally."""
    check_ctx(ctx, PoolCtx, "im2col")
    g = ctx.geometry
    check_grad(dy, g.y_shape, g.dtype)
    scale = g.dtype.type(1.0 / (g.kh * g.kw)) if g.plain else pool_scales(g)[:, :, None]
    share = (dy * scale)[:, :, :, None, None, :]
    # a broadcast view: col2im reads it per offset, so the KH*KW copies are never materialised
    dcols = np.broadcast_to(share, (g.n, g.out_h, g.out_w, g.kh, g.kw, g.c))
    if g.plain:
        return col2im(dcols, g.x_shape, g.sh, g.sw)
    return pool_unpadded(col2im(dcols, g.padded_shape, g.sh, g.sw), g)
