"""numba backend: compiled loops, parallel (prange) over samples, vectorised along image planes.

Convolution, two ways:
  register tiles (kernels/numba_tiles.py), an implicit GEMM over NHWC holding 5 output pixels x
           16 output channels in registers: the forward whenever there are 16 output channels,
           the backward too from 8 input channels. Serial kernels, run one per core on blocks of
           samples (kernels/gemm.py's pool), each block with its own partial dW/db.
  channel planes (kernels/numba_conv.py) for everything else: each sample is copied into
           zero-padded planes (C, Hp*Wp), where every kernel tap is a constant shift of the
           flattened plane, so forward, dW and dX are long contiguous loops LLVM vectorises.
           Forward, dW+db and dX each take one prange over blocks of samples; a block owns its
           scratch planes and its partial dW/db (summed afterwards), so no two threads ever
           write the same accumulator.
Pooling:   forward prange over (n, output row); backward prange over samples (windows of one sample
           may overlap, different samples never do).
Depthwise (groups == C_in, kernels/depthwise.py): per-channel stencils vectorised over the
           contiguous channel axis, padding, stride and dilation native; prange over rows.
Other groups, dilation, asymmetric padding (kernels/decompose.py): exact rewrites into plain
           convolutions run on the paths above; the ctx's `path` says which ran.
Conv + 2x2 max-pool, fused (model.layers.Conv2D.forward_maxpool / backward_maxpool):
           forward on the register tiles, a tile being one pooling window; backward on the
           plane kernels, the pool's gradient spread into them a sample at a time.

Accumulators have the input's dtype (float32 stays float32 throughout). Arguments are checked by
kernels.geometry in Python before any jitted code runs; the jitted code sees C-contiguous arrays.
Compiled code is cached on disk (cache=True); call :func:`warmup` to compile everything up front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from . import (
    decompose,
    depthwise,
    depthwise_strided,
    isa,
    jitcache,
    numba_conv,
    numba_tiles,
    pointwise_dw,
    threads,
    workspace,
)
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
    flipped_kernel,
    pool_geometry,
    pool_scales,
    pooled_conv_geometry,
)

_POOL_JIT: dict[str, Any] = dict(cache=True, parallel=True)

# Below this many multiply-adds (conv) or elements (pooling) a kernel runs on the calling thread
# alone: a parallel region is only as fast as its slowest thread, and for a tiny kernel the
# hand-off costs more than the second core saves. Above it, both cores help, provided the other
# core is free: OpenBLAS workers spin for a while after every GEMM, so the trainer runs with one
# BLAS thread (model.training.TRAIN_BLAS_THREADS). 2**20 is the threshold at which the `small`
# network's training step (the benchmark's epoch section, batch 64) is fastest on 2 cores.
PARALLEL_MIN_WORK = 1 << 20


def _threads_for(work: int) -> int:
    """How many numba threads a kernel with `work` multiply-adds/elements runs on."""
    return threads.count() if work >= PARALLEL_MIN_WORK else 1


def _launch(kernel: Any, work: int, *args: Any) -> None:
    """Call a prange kernel on _threads_for(work) threads."""
    available = threads.count()
    if work >= PARALLEL_MIN_WORK or available == 1:
        kernel(*args)
        return
    numba.set_num_threads(1)  # thread-local, and costs about a microsecond
    try:
        kernel(*args)
    finally:
        numba.set_num_threads(available)


@njit(**_POOL_JIT)
def _maxpool_forward(x, kh, kw, sh, sw, y, argmax):
    """y, argmax (N, OH, OW, C) = each window's maximum in x (N, H, W, C) and its index i*kw + j.

    The running maximum and its index live in two per-row scratch vectors and every update is a
    select, never a branch or a read back from y, so the channel loop vectorises (the `small_pool`
    benchmark case).
    """
    n, c_all = x.shape[0], x.shape[3]
    out_h, out_w = y.shape[1], y.shape[2]
    for t in prange(n * out_h):
        ni, oh = t // out_h, t % out_h
        best = np.empty(c_all, dtype=x.dtype)
        which = np.empty(c_all, dtype=np.int32)  # one width with k: mixed widths do not vectorise
        for ow in range(out_w):
            r0, c0 = oh * sh, ow * sw
            for ch in range(c_all):
                best[ch] = x[ni, r0, c0, ch]
                which[ch] = 0
            for k in range(1, kh * kw):
                r, c = r0 + k // kw, c0 + k % kw
                k32 = np.int32(k)
                for ch in range(c_all):
                    v, b = x[ni, r, c, ch], best[ch]
                    # np.argmax semantics: strictly greater wins (the first maximum is kept), and
                    # the first NaN wins and is then kept (NaN > anything is False)
                    take = (v > b) | ((v != v) & (b == b))
                    best[ch] = v if take else b
                    which[ch] = k32 if take else which[ch]
            for ch in range(c_all):
                y[ni, oh, ow, ch] = best[ch]
                argmax[ni, oh, ow, ch] = which[ch]


@njit(**_POOL_JIT)
def _maxpool2x2_forward(x, sh, sw, y, argmax):
    """_maxpool_forward for 2x2 windows, written out: one pass over the channels per window,
    the four taps compared in registers (no scratch vectors), several times faster than the
    general loop on the `small_pool` benchmark case, whose 16 channels make each general pass two
    vectors long."""
    n, c_all = x.shape[0], x.shape[3]
    out_h, out_w = y.shape[1], y.shape[2]
    for t in prange(n * out_h):
        ni, oh = t // out_h, t % out_h
        r0 = oh * sh
        for ow in range(out_w):
            c0 = ow * sw
            for ch in range(c_all):
                best = x[ni, r0, c0, ch]
                which = np.int32(0)
                for k in range(1, 4):  # constant trip count: unrolled
                    v = x[ni, r0 + k // 2, c0 + k % 2, ch]
                    take = (v > best) | ((v != v) & (best == best))  # as _maxpool_forward
                    best = v if take else best
                    which = np.int32(k) if take else which
                y[ni, oh, ow, ch] = best
                argmax[ni, oh, ow, ch] = which


@njit(**_POOL_JIT)
def _maxpool_backward(dy, argmax, kh, kw, sh, sw, dx):
    """dx (N, H, W, C), zeroed, += dy (N, OH, OW, C) at each window's argmax (N, OH, OW, C)."""
    n, out_h, out_w, c_all = dy.shape
    for ni in prange(n):
        for oh in range(out_h):
            for ow in range(out_w):
                # each offset tests all channels for "am I the argmax": a compare LLVM vectorises
                # over the contiguous channel axis, cheaper than scattering to k // kw, k % kw
                for i in range(kh):
                    for j in range(kw):
                        for ch in range(c_all):
                            if argmax[ni, oh, ow, ch] == i * kw + j:
                                dx[ni, oh * sh + i, ow * sw + j, ch] += dy[ni, oh, ow, ch]


@njit(**_POOL_JIT)
def _maxpool_backward_tiled(dy, argmax, kh, kw, dx):
    """_maxpool_backward for windows that tile x exactly (stride = size, H = OH*kh, W = OW*kw):
    every element of dx belongs to one window, so each is written once, dy or 0, by a select,
    with no zero-fill beforehand and no read-modify-write. One pass over the channels per window
    position (i, j), each reading the window's dy and argmax from cache."""
    n, out_h, out_w, c_all = dy.shape
    zero = dx.dtype.type(0)
    for t in prange(n * out_h):
        ni, oh = t // out_h, t % out_h
        for i in range(kh):
            for ow in range(out_w):
                for j in range(kw):
                    k = i * kw + j
                    for ch in range(c_all):
                        g = dy[ni, oh, ow, ch]
                        dx[ni, oh * kh + i, ow * kw + j, ch] = (
                            g if argmax[ni, oh, ow, ch] == k else zero
                        )


@njit(**_POOL_JIT)
def _maxpool2x2_backward_tiled(dy, argmax, dx):
    """_maxpool_backward_tiled for 2x2 windows, written out as _maxpool2x2_forward is: one pass
    over the channels per window writes all four of its dx elements."""
    n, out_h, out_w, c_all = dy.shape
    zero = dx.dtype.type(0)
    for t in prange(n * out_h):
        ni, oh = t // out_h, t % out_h
        r0 = 2 * oh
        for ow in range(out_w):
            c0 = 2 * ow
            for ch in range(c_all):
                g, k = dy[ni, oh, ow, ch], argmax[ni, oh, ow, ch]
                dx[ni, r0, c0, ch] = g if k == 0 else zero
                dx[ni, r0, c0 + 1, ch] = g if k == 1 else zero
                dx[ni, r0 + 1, c0, ch] = g if k == 2 else zero
                dx[ni, r0 + 1, c0 + 1, ch] = g if k == 3 else zero


@njit(**_POOL_JIT)
def _avgpool_forward(x, kh, kw, sh, sw, scale, y):
    """y (N, OH, OW, C) = scale * the sum of each kh x kw window of x (N, H, W, C)."""
    n, c_all = x.shape[0], x.shape[3]
    out_h, out_w = y.shape[1], y.shape[2]
    for t in prange(n * out_h):
        ni, oh = t // out_h, t % out_h
        for ow in range(out_w):
            for ch in range(c_all):
                y[ni, oh, ow, ch] = 0
            for i in range(kh):
                for j in range(kw):
                    for ch in range(c_all):
                        y[ni, oh, ow, ch] += x[ni, oh * sh + i, ow * sw + j, ch]
            for ch in range(c_all):
                y[ni, oh, ow, ch] *= scale


@njit(**_POOL_JIT)
def _avgpool_backward(dy, kh, kw, sh, sw, scale, dx):
    """dx (N, H, W, C), zeroed, += scale * dy (N, OH, OW, C) at every element of each window."""
    n, out_h, out_w, c_all = dy.shape
    for ni in prange(n):
        for oh in range(out_h):
            for ow in range(out_w):
                for i in range(kh):
                    for j in range(kw):
                        for ch in range(c_all):
                            dx[ni, oh * sh + i, ow * sw + j, ch] += dy[ni, oh, ow, ch] * scale


# Padded windows (padding, or a ceil_mode window past the input) run on kernels of their own
# that clip each window to x (_inside) rather than read a padded copy of x. The unpadded kernels
# above, tuned on the `small_pool` benchmark case, are left exactly as they are.


@njit(cache=True)
def _inside(start, k, size):
    """(first, end): the taps t in [first, end) of a k-tap window starting at `start` (negative
    in the top/left padding) that fall inside an axis of `size` elements."""
    return max(0, -start), min(k, size - start)


@njit(**_POOL_JIT)
def _maxpool_forward_padded(x, kh, kw, sh, sw, pad_top, pad_left, y, argmax):
    """_maxpool_forward over windows starting at (oh*sh - pad_top, ow*sw - pad_left): each
    window's maximum over its taps inside x (padding never wins; PyTorch's pad <= k // 2 leaves
    every window one), its argmax the flat index i*kw + j in the whole window."""
    n, height, width, c_all = x.shape
    out_h, out_w = y.shape[1], y.shape[2]
    for t in prange(n * out_h):
        ni, oh = t // out_h, t % out_h
        best = np.empty(c_all, dtype=x.dtype)
        which = np.empty(c_all, dtype=np.int32)
        r0 = oh * sh - pad_top
        i0, i1 = _inside(r0, kh, height)
        for ow in range(out_w):
            c0 = ow * sw - pad_left
            j0, j1 = _inside(c0, kw, width)
            for ch in range(c_all):
                best[ch] = x[ni, r0 + i0, c0 + j0, ch]
                which[ch] = np.int32(i0 * kw + j0)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    k32 = np.int32(i * kw + j)
                    for ch in range(c_all):
                        v, b = x[ni, r0 + i, c0 + j, ch], best[ch]
                        take = (v > b) | ((v != v) & (b == b))  # as _maxpool_forward
                        best[ch] = v if take else b
                        which[ch] = k32 if take else which[ch]
            for ch in range(c_all):
                y[ni, oh, ow, ch] = best[ch]
                argmax[ni, oh, ow, ch] = which[ch]


@njit(**_POOL_JIT)
def _maxpool_backward_padded(dy, argmax, kh, kw, sh, sw, pad_top, pad_left, dx):
    """_maxpool_backward for _maxpool_forward_padded's windows (argmax is always inside x)."""
    n, out_h, out_w, c_all = dy.shape
    height, width = dx.shape[1], dx.shape[2]
    for ni in prange(n):
        for oh in range(out_h):
            r0 = oh * sh - pad_top
            i0, i1 = _inside(r0, kh, height)
            for ow in range(out_w):
                c0 = ow * sw - pad_left
                j0, j1 = _inside(c0, kw, width)
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        for ch in range(c_all):
                            if argmax[ni, oh, ow, ch] == i * kw + j:
                                dx[ni, r0 + i, c0 + j, ch] += dy[ni, oh, ow, ch]


@njit(**_POOL_JIT)
def _avgpool_forward_padded(x, kh, kw, sh, sw, pad_top, pad_left, scales, y):
    """y (N, OH, OW, C) = scales[oh, ow] * the sum of each window's taps inside x (padding
    adds 0; the divisor rule is in scales, geometry.pool_scales)."""
    n, height, width, c_all = x.shape
    out_h, out_w = y.shape[1], y.shape[2]
    for t in prange(n * out_h):
        ni, oh = t // out_h, t % out_h
        r0 = oh * sh - pad_top
        i0, i1 = _inside(r0, kh, height)
        for ow in range(out_w):
            c0 = ow * sw - pad_left
            j0, j1 = _inside(c0, kw, width)
            for ch in range(c_all):
                y[ni, oh, ow, ch] = 0
            for i in range(i0, i1):
                for j in range(j0, j1):
                    for ch in range(c_all):
                        y[ni, oh, ow, ch] += x[ni, r0 + i, c0 + j, ch]
            scale = scales[oh, ow]
            for ch in range(c_all):
                y[ni, oh, ow, ch] *= scale


@njit(**_POOL_JIT)
def _avgpool_backward_padded(dy, kh, kw, sh, sw, pad_top, pad_left, scales, dx):
    """dx (N, H, W, C), zeroed, += scales[oh, ow] * dy at each window's taps inside x."""
    n, out_h, out_w, c_all = dy.shape
    height, width = dx.shape[1], dx.shape[2]
    for ni in prange(n):
        for oh in range(out_h):
            r0 = oh * sh - pad_top
            i0, i1 = _inside(r0, kh, height)
            for ow in range(out_w):
                c0 = ow * sw - pad_left
                j0, j1 = _inside(c0, kw, width)
                scale = scales[oh, ow]
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        for ch in range(c_all):
                            dx[ni, r0 + i, c0 + j, ch] += dy[ni, oh, ow, ch] * scale


@dataclass(frozen=True, eq=False)
class NumbaConvCtx(ConvCtx):
    """conv2d's ctx: x and w as the kernels read them, the plane layout and the forward taps."""

    x: np.ndarray  # (N, H, W, C_in), C-contiguous
    w: np.ndarray  # (KH, KW, C_in, C_out), C-contiguous (dX's taps are built from it)
    layout: numba_conv.Layout
    offsets: np.ndarray  # (T,) the forward taps' offsets, which dW reuses (see numba_conv)


@dataclass(frozen=True, eq=False)
class TiledConvCtx(ConvCtx):
    """conv2d's ctx after the tiled forward (kernels/numba_tiles.py): x and w; the backward
    runs tiled too when numba_tiles.backward_applies, else on the plane kernels."""

    x: np.ndarray  # (N, H, W, C_in), C-contiguous
    w: np.ndarray  # (KH, KW, C_in, C_out), C-contiguous


# the conv ctx types: the plane kernels', the many-channel tiles', the depthwise kernels' and a
# decomposed call's (groups, dilation, asymmetric padding)
NumbaCtx = NumbaConvCtx | TiledConvCtx | depthwise.DepthwiseCtx | decompose.DecomposedCtx
_CTX_TYPES = (NumbaConvCtx, TiledConvCtx, depthwise.DepthwiseCtx, decompose.DecomposedCtx)


def _launch_tiles(
    kernel: Any, g: ConvGeometry, blocked: tuple[np.ndarray, ...], *args: Any
) -> None:
    """numba_tiles.run_blocks on _parts(g) blocks of the samples."""
    numba_tiles.run_blocks(kernel, _parts(g), blocked, *args)


def _tiled_forward(g: ConvGeometry, x: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """conv2d_forward by register tiles (numba_tiles.forward_applies(g))."""
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    bias = np.zeros(g.c_out, dtype=g.dtype) if b is None else np.ascontiguousarray(b)
    y = workspace.take("numba.y", g.y_shape, g.dtype)
    w2 = w.reshape(g.kh, g.kw * g.c_in, g.c_out)
    kernel = numba_tiles.forward_for(g.c_out)
    packed = numba_tiles.pack_columns(w2, numba_tiles.forward_lanes(g.c_out))
    _launch_tiles(kernel, g, (x, y), packed, bias, g.sh, g.sw, g.ph, g.pw)
    return y, TiledConvCtx(g, x, w)


def _tiled_dw(dy: np.ndarray, ctx: TiledConvCtx) -> tuple[np.ndarray, np.ndarray | None]:
    """dW (KH, KW, C_in, C_out) and db by numba_tiles.dw_tiles (numba_tiles.backward_applies),
    or pointwise_dw.dw_packed for an unpadded 1x1 kernel."""
    g = ctx.geometry
    if pointwise_dw.applies(g):
        chunk = pointwise_dw.chunk_pixels(g.c_in, g.c_out, np.dtype(g.dtype).itemsize)
        kernel: Any = pointwise_dw.dw_packed
        args: tuple[int, ...] = (g.sh, g.sw, chunk)
    else:
        kernel, args = numba_tiles.dw_tiles, (g.sh, g.sw, g.ph, g.pw)
    sums = ((g.kh, g.kw * g.c_in, g.c_out), (g.c_out,))  # dw_packed's (1, C_in, C_out) for 1x1
    dw, db_sum = numba_tiles.run_blocks(
        kernel, _parts(g), (ctx.x, dy), *args, sums=sums, dtype=g.dtype
    )
    return dw.reshape(g.w_shape), (db_sum if g.has_bias else None)


def _tiled_dx(dy: np.ndarray, ctx: TiledConvCtx) -> np.ndarray:
    """dX (N, H, W, C_in) by forward() (stride 1), dx_phases (stride > 1, 16+ input channels)
    or dx_cols (numba_tiles.backward_applies)."""
    g, w = ctx.geometry, ctx.w
    dx = workspace.take("numba.dx", g.x_shape, g.dtype)
    if numba_tiles.dx_by_forward(g):
        # the full correlation: dy padded by KH-1-ph rows (KW-1-pw columns) on each side, the
        # kernel flipped in both axes with C_in and C_out swapped
        w_flipped = flipped_kernel(w).reshape(g.kh, g.kw * g.c_out, g.c_in)
        packed = numba_tiles.pack_columns(w_flipped, numba_tiles.forward_lanes(g.c_in))
        no_bias = np.zeros(g.c_in, dtype=g.dtype)
        pad_h, pad_w = g.kh - 1 - g.ph, g.kw - 1 - g.pw
        kernel = numba_tiles.forward_for(g.c_in)
        _launch_tiles(kernel, g, (dy, dx), packed, no_bias, 1, 1, pad_h, pad_w)
        return dx
    if numba_tiles.phases_apply(g):
        wp = numba_tiles.phase_kernels(w, g.sh, g.sw)
        args = (wp, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw)
        _launch_tiles(numba_tiles.dx_phases, g, (dy, dx), *args)
        return dx
    wt = np.ascontiguousarray(w.reshape(-1, g.c_out).T)  # (C_out, KH*KW*C_in)
    _launch_tiles(numba_tiles.dx_cols, g, (dy, dx), wt, g.kh, g.sh, g.sw, g.ph, g.pw)
    return dx


def _parts(g: ConvGeometry) -> int:
    """How many sample blocks (threads) a conv call on geometry g is split into."""
    return max(1, min(_threads_for(g.flops // 2), g.n))


def conv2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> tuple[np.ndarray, NumbaCtx]:
    """x: (N, H, W, C_in), w: (KH, KW, C_in // groups, C_out), b: (C_out,) or None
    -> y: (N, OH, OW, C_out) (kernels/contract.py states stride, padding, dilation, groups).

    Same dtype as x (float32 or float64). ctx keeps x, w (C-contiguous), the layout and the tap
    offsets for the backward pass. Depthwise calls run on kernels/depthwise.py, other groups,
    dilation or asymmetric padding by kernels/decompose.py.
    """
    g = conv_geometry(x, w, b, stride, padding, dilation, groups)
    if depthwise.applies(g):
        return _depthwise_forward(g, x, w, b)
    if not g.plain:
        return decompose.forward(conv2d_forward, g, x, w, b, "numba")
    if numba_tiles.forward_applies(g):
        return _tiled_forward(g, x, w, b)
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    lay = numba_conv.plane_layout(g)
    offsets, weights = numba_conv.forward_taps(g, lay, w)
    bias = np.zeros(g.c_out, dtype=g.dtype) if b is None else np.ascontiguousarray(b)
    y = workspace.take("numba.y", g.y_shape, g.dtype)
    _launch(
        numba_conv.forward_kernel,
        g.flops // 2,
        x,
        offsets,
        weights,
        bias,
        lay,
        _parts(g),
        numba_conv.PAIR_LIKE[g.dtype],
        y,
    )
    return y, NumbaConvCtx(g, x, w, lay, offsets)


def _depthwise_forward(
    g: ConvGeometry, x: np.ndarray, w: np.ndarray, b: np.ndarray | None
) -> tuple[np.ndarray, depthwise.DepthwiseCtx]:
    """conv2d_forward by kernels/depthwise.py (groups == C_in): the 3x3 kernel where
    depthwise.fused3x3_applies, whole rows where depthwise.rows_apply, else a pixel at a time."""
    ctx = depthwise.make_ctx(g, x, w)
    multiplier = g.c_out // g.c_in
    bias = np.zeros(g.c_out, dtype=g.dtype) if b is None else b
    if depthwise.fused3x3_applies(g):
        y = workspace.take("numba.y", g.y_shape, g.dtype)
        fused_args = (*depthwise.geometry_args(g), y[:, :, :, None, :])  # (N, OH, OW, 1, C)
        kernel = depthwise.forward3x3_for(g.out_w, g.sw)
        _launch(kernel, g.flops // 2, ctx.x, ctx.wt, bias[None], *fused_args)
        return y, ctx
    if depthwise.rows_apply(g):
        block = depthwise.block_pixels(g.c_in)
        y = workspace.take("numba.y", g.y_shape, g.dtype)
        w_tiled = depthwise.tiled_weights(ctx.wt, block)
        rows_args = (g.sh, g.ph, g.pw, g.dil_h, g.dil_w, y)
        bias_tiled = np.tile(bias, block)
        _launch(depthwise.forward_rows_kernel, g.flops // 2, ctx.x, w_tiled, bias_tiled, *rows_args)
        return y, ctx
    out = np.empty(g.y_shape[:3] + (multiplier, g.c_in), dtype=g.dtype)
    _launch(
        depthwise.forward_kernel,
        g.flops // 2,
        ctx.x,
        ctx.wt,
        depthwise.to_m_major(bias, g.c_in),
        *depthwise.geometry_args(g),
        out,
    )
    y = out.reshape(g.y_shape) if multiplier == 1 else depthwise.from_m_major(out)
    return y, ctx


def _depthwise_backward(
    dy: np.ndarray, ctx: depthwise.DepthwiseCtx, need_dx: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """conv2d_backward by kernels/depthwise.py: dW and db in one pass; dX at stride 1 as the
    full correlation (a forward with the kernel turned) on the 3x3 or row kernel where they
    apply, else by dx_kernel (stride 1), depthwise_strided's 3x3 kernel (where it applies) or
    dx_strided_kernel."""
    g = ctx.geometry
    n_parts, work = _parts(g), g.flops // 2
    dy_m = depthwise.to_m_major(dy, g.c_in)  # (N, OH, OW, M, C_in); a view for M = 1
    dw_parts = np.zeros((n_parts,) + ctx.wt.shape, dtype=g.dtype)
    db_parts = np.zeros((n_parts,) + ctx.wt.shape[2:], dtype=g.dtype)
    dw_args = (*depthwise.geometry_args(g), dw_parts, db_parts)
    dx = workspace.take("numba.dx", g.x_shape, g.dtype)  # not filled (nor returned) without need_dx
    fused = need_dx and depthwise.fused3x3_applies(g) and (g.sh, g.sw) == (1, 1)
    if fused:  # dW and dX in one parallel region (depthwise.backward3x3_kernel)
        w_turned = np.ascontiguousarray(ctx.wt[::-1, ::-1])
        no_bias = np.zeros((1, g.c_in), dtype=g.dtype)
        vec = depthwise.forward3x3_for(g.width, 1) is depthwise.forward3x3_vec_kernel
        fused_pads = (2 * g.dil_h - g.ph, 2 * g.dil_w - g.pw, g.dil_h, g.dil_w, vec)
        args = (
            ctx.x,
            dy,
            dy_m,
            w_turned,
            no_bias,
            *fused_pads,
            dw_parts,
            db_parts,
            dx[..., None, :],
        )
        _launch(depthwise.backward3x3_kernel, work, *args)
    else:
        dw_kernel = depthwise.dw3x3_kernel if depthwise.fused3x3_applies(g) else depthwise.dw_kernel
        _launch(dw_kernel, work, ctx.x, dy_m, *dw_args)
    dw = depthwise.from_m_major(dw_parts.sum(axis=0)).reshape(g.w_shape)
    db = depthwise.from_m_major(db_parts.sum(axis=0)) if g.has_bias else None
    if not need_dx:
        return None, dw, db
    if fused:
        return dx, dw, db
    if depthwise.fused3x3_applies(g) and (g.sh, g.sw) == (1, 1):
        # the full correlation: dy padded by 2*dilation - padding, the kernel turned
        w_turned = np.ascontiguousarray(ctx.wt[::-1, ::-1])
        no_bias = np.zeros((1, g.c_in), dtype=g.dtype)
        pads = (2 * g.dil_h - g.ph, 2 * g.dil_w - g.pw)
        fused_args = (1, 1, *pads, g.dil_h, g.dil_w, dx[:, :, :, None, :])
        kernel = depthwise.forward3x3_for(g.width, 1)
        _launch(kernel, work, dy, w_turned, no_bias, *fused_args)
        return dx, dw, db
    if depthwise.rows_apply(g) and g.sh == 1:
        block = depthwise.block_pixels(g.c_in)
        w_turned = depthwise.tiled_weights(ctx.wt, block, flip=True)
        no_bias = np.zeros(block * g.c_in, dtype=g.dtype)
        row_pads = (g.kh_span - 1 - g.ph, g.kw_span - 1 - g.pw)
        rows_args = (1, *row_pads, g.dil_h, g.dil_w, dx)
        _launch(depthwise.forward_rows_kernel, work, dy, w_turned, no_bias, *rows_args)
        return dx, dw, db
    if depthwise_strided.applies(g):
        dx_kernel = depthwise_strided.dx3x3_strided_kernel
    elif (g.sh, g.sw) == (1, 1):
        dx_kernel = depthwise.dx_kernel
    else:
        dx_kernel = depthwise.dx_strided_kernel
    _launch(dx_kernel, work, dy_m, ctx.wt, *depthwise.geometry_args(g), dx)
    return dx, dw, db


def conv2d_backward_ctx(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> NumbaCtx | None:
    """conv2d_backward's ctx from the inputs alone (x and w; no forward run): what auto passes
    when another backend ran the forward. The backward takes it for every geometry (the plane
    kernels' layout and taps are rebuilt from it, see _plane_ctx)."""
    g = conv_geometry(x, w, b, stride, padding, dilation, groups)
    if depthwise.applies(g):
        return depthwise.make_ctx(g, x, w)
    if not g.plain:
        return decompose.backward_ctx(conv2d_backward_ctx, g, x, w, b, "numba")
    return TiledConvCtx(g, np.ascontiguousarray(x), np.ascontiguousarray(w))


def conv2d_backward(
    dy: np.ndarray, ctx: NumbaCtx, need_dx: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """dy: (N, OH, OW, C_out) -> (dx (N, H, W, C_in) or None, dw like w, db (C_out,) or None).

    need_dx=False skips the dX half of the kernel (first layer of a network).
    """
    check_ctx(ctx, _CTX_TYPES, "numba")
    check_grad(dy, ctx.geometry.y_shape, ctx.geometry.dtype)
    if isinstance(ctx, decompose.DecomposedCtx):
        return decompose.backward(conv2d_backward, dy, ctx, need_dx)
    dy = np.ascontiguousarray(dy)
    if isinstance(ctx, depthwise.DepthwiseCtx):
        return _depthwise_backward(dy, ctx, need_dx)
    if isinstance(ctx, TiledConvCtx):
        if numba_tiles.backward_applies(ctx.geometry):
            dw, db = _tiled_dw(dy, ctx)
            return (_tiled_dx(dy, ctx) if need_dx else None), dw, db
        ctx = _plane_ctx(ctx)  # few input channels: the plane kernels' backward
    return _plane_backward(dy, ctx, need_dx)


def _plane_ctx(ctx: TiledConvCtx) -> NumbaConvCtx:
    """The plane kernels' ctx for a tiled forward's: the layout and taps the plane forward
    would have kept."""
    g = ctx.geometry
    lay = numba_conv.plane_layout(g)
    offsets, _ = numba_conv.forward_taps(g, lay, ctx.w)
    return NumbaConvCtx(g, ctx.x, ctx.w, lay, offsets)


# backward_kernel's argmax when dy is the convolution's own gradient (no pool to undo)
_NO_ARGMAX = np.zeros((0, 0, 0, 0), dtype=argmax_dtype(2, 2))


def _plane_backward(
    dy: np.ndarray, ctx: NumbaConvCtx, need_dx: bool, argmax: np.ndarray = _NO_ARGMAX
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """conv2d_backward on the plane kernels (kernels/numba_conv.py). With a 2x2 max-pool's
    argmax, dy is that pool's output gradient (see conv2d_maxpool2d_backward)."""
    g, x, w, lay, offsets = ctx.geometry, ctx.x, ctx.w, ctx.layout, ctx.offsets
    if need_dx:
        dx_offsets, dx_weights = numba_conv.dx_taps(g, lay, w)
    else:  # the kernel never reads them (first layer)
        dx_offsets = np.zeros(0, dtype=np.int64)
        dx_offsets.flags.writeable = False  # as the cached taps are: one compiled signature
        dx_weights = np.zeros((0, g.c_in * g.sh * g.sw), dtype=g.dtype)
    n_parts = _parts(g)
    # one partial dW/db per sample block, summed afterwards: threads never share an accumulator
    dw_parts = np.zeros((n_parts, len(offsets), g.c_out), dtype=g.dtype)
    db_parts = np.zeros((n_parts, g.c_out), dtype=g.dtype)
    # without dX the kernel still takes an array of dx's type, an empty one it never touches
    dx = workspace.take("numba.dx", g.x_shape if need_dx else (0,) + g.x_shape[1:], g.dtype)
    _launch(
        numba_conv.backward_kernel,
        g.flops // 2 * (2 if need_dx else 1),
        x,
        dy,
        argmax,
        g.out_h,
        g.out_w,
        offsets,
        dx_offsets,
        dx_weights,
        lay,
        n_parts,
        numba_conv.PAIR_LIKE[g.dtype],
        need_dx,
        dw_parts,
        db_parts,
        dx,
    )
    # rows of dw: taps ordered (c_in, i, j), then the blocking's padding; w is (i, j, c_in, c_out)
    dw = dw_parts.sum(axis=0)[: g.c_in * g.kh * g.kw].reshape(g.c_in, g.kh, g.kw, g.c_out)
    db = db_parts.sum(axis=0) if g.has_bias else None
    return (dx if need_dx else None), np.ascontiguousarray(dw.transpose(1, 2, 0, 3)), db


def maxpool2d_forward(
    x: np.ndarray,
    size: IntPair = 2,
    stride: IntPair | None = None,
    padding: PoolPadding = 0,
    ceil_mode: bool = False,
) -> tuple[np.ndarray, MaxPoolCtx]:
    """x: (N, H, W, C) -> y: (N, OH, OW, C). Ties go to the first maximum in row-major order;
    padding never wins a window."""
    g = pool_geometry(x, size, stride, padding, ceil_mode)
    y = workspace.take("numba.pool_y", g.y_shape, g.dtype)
    # flat index i*KW + j; the ctx holds it until the backward
    argmax = workspace.take("numba.argmax", g.y_shape, argmax_dtype(g.kh, g.kw))
    x = np.ascontiguousarray(x)
    if not g.plain:
        args = (g.kh, g.kw, g.sh, g.sw, g.pad_top, g.pad_left, y, argmax)
        _launch(_maxpool_forward_padded, x.size, x, *args)
    elif (g.kh, g.kw) == (2, 2):
        _launch(_maxpool2x2_forward, x.size, x, g.sh, g.sw, y, argmax)
    else:
        _launch(_maxpool_forward, x.size, x, g.kh, g.kw, g.sh, g.sw, y, argmax)
    return y, MaxPoolCtx(g, argmax)


def fuses_maxpool(g: ConvGeometry, pg: PoolGeometry) -> bool:
    """True when conv2d_maxpool2d_forward runs conv geometry g followed by pool geometry pg: a
    2x2 pool of stride 2, unpadded, after a plain convolution the register tiles run."""
    two_by_two = (pg.kh, pg.kw, pg.sh, pg.sw) == (2, 2, 2, 2) and pg.plain
    return g.plain and numba_tiles.forward_applies(g) and two_by_two


def conv2d_maxpool2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    size: IntPair = 2,
    pool_stride: IntPair | None = None,
    dilation: IntPair = 1,
    groups: int = 1,
) -> tuple[np.ndarray, TiledConvCtx, MaxPoolCtx] | None:
    """maxpool2d_forward(conv2d_forward(x, w, b, stride, padding, dilation, groups), size,
    pool_stride) in one pass, without writing the convolution's output: (y (N, OH//2, OW//2,
    C_out), the conv's ctx, the pool's ctx), each what the separate call returns: the argmax,
    and y to the bit in float32 (in float64 within ulps: the two kernels are compiled apart and
    FMA contraction may differ; tests/test_kernels_conv_maxpool.py) (numba_tiles.forward_maxpool2).
    None where it does not apply, and the caller runs the two: a pool other than 2x2 of stride
    2, a convolution the register tiles do not run (numba_tiles.forward_applies), or one with
    groups, dilation or asymmetric padding. Faster than the two calls on the `small` network's
    Conv2D + MaxPool2D forward (bench.compare's breakdown section, "0 Conv2D + 1 MaxPool2D
    forward")."""
    g = conv_geometry(x, w, b, stride, padding, dilation, groups)
    pg = pooled_conv_geometry(g, size, pool_stride)
    if not fuses_maxpool(g, pg):
        return None
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    bias = np.zeros(g.c_out, dtype=g.dtype) if b is None else np.ascontiguousarray(b)
    y = np.empty(pg.y_shape, dtype=g.dtype)
    argmax = np.empty(pg.y_shape, dtype=argmax_dtype(2, 2))
    w2 = w.reshape(g.kh, g.kw * g.c_in, g.c_out)
    _launch_tiles(numba_tiles.forward_maxpool2, g, (x, y, argmax), w2, bias, g.sh, g.sw, g.ph, g.pw)
    return y, TiledConvCtx(g, x, w), MaxPoolCtx(pg, argmax)


def conv2d_maxpool2d_backward(
    dy: np.ndarray, conv_ctx: NumbaCtx, pool_ctx: MaxPoolCtx, need_dx: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None] | None:
    """conv2d_backward(maxpool2d_backward(dy, pool_ctx), conv_ctx, need_dx) in one call: dy
    (N, OH//2, OW//2, C_out), the 2x2 stride-2 pool's output gradient -> (dx or None, dw, db or
    None), to the bit what the two calls give. Where the convolution's backward runs on the
    plane kernels (few input channels, as the `small` network's first layer), the pool's
    backward is done a sample at a time on the way into the planes, so its (N, OH, OW, C_out)
    gradient is never written. None (nothing run) otherwise: another pool, or a convolution
    whose backward runs on the register tiles or is not plain (depthwise, decomposed); the
    caller then runs the two calls."""
    check_ctx(conv_ctx, _CTX_TYPES, "numba")
    if not isinstance(conv_ctx, (NumbaConvCtx, TiledConvCtx)):
        return None
    pg, g = pool_ctx.geometry, conv_ctx.geometry
    if pg.x_shape != g.y_shape:
        raise ValueError(
            f"pool_ctx: the pool of a {pg.x_shape} input, expected the pool of this "
            f"convolution's output {g.y_shape}"
        )
    if (pg.kh, pg.kw, pg.sh, pg.sw) != (2, 2, 2, 2) or not pg.plain:
        return None  # the plane kernels undo only an unpadded 2x2 pool of stride 2
    if pool_ctx.argmax.dtype != _NO_ARGMAX.dtype:
        return None
    if isinstance(conv_ctx, TiledConvCtx):
        if numba_tiles.backward_applies(g):
            return None
        conv_ctx = _plane_ctx(conv_ctx)
    check_grad(dy, pg.y_shape, pg.dtype)
    argmax = np.ascontiguousarray(pool_ctx.argmax)
    return _plane_backward(np.ascontiguousarray(dy), conv_ctx, need_dx, argmax)


def maxpool2d_backward(dy: np.ndarray, ctx: MaxPoolCtx) -> np.ndarray:
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C); each window's gradient goes to its argmax."""
    check_ctx(ctx, MaxPoolCtx, "numba")
    g, argmax = ctx.geometry, ctx.argmax
    check_grad(dy, g.y_shape, g.dtype)
    dy = np.ascontiguousarray(dy)
    n, height, width, _ = g.x_shape
    if not g.plain:
        dx = np.zeros(g.x_shape, dtype=g.dtype)
        args = (g.kh, g.kw, g.sh, g.sw, g.pad_top, g.pad_left, dx)
        _launch(_maxpool_backward_padded, dx.size, dy, argmax, *args)
        return dx
    if (g.sh, g.sw) == (g.kh, g.kw) and (height, width) == (g.out_h * g.kh, g.out_w * g.kw):
        dx = workspace.take("numba.pool_dx", g.x_shape, g.dtype)
        if (g.kh, g.kw) == (2, 2):
            _launch(_maxpool2x2_backward_tiled, dx.size, dy, argmax, dx)
        else:
            _launch(_maxpool_backward_tiled, dx.size, dy, argmax, g.kh, g.kw, dx)
        return dx
    dx = np.zeros(g.x_shape, dtype=g.dtype)
    _launch(_maxpool_backward, dx.size, dy, argmax, g.kh, g.kw, g.sh, g.sw, dx)
    return dx


def avgpool2d_forward(
    x: np.ndarray,
    size: IntPair = 2,
    stride: IntPair | None = None,
    padding: PoolPadding = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> tuple[np.ndarray, PoolCtx]:
    """x: (N, H, W, C) -> y: (N, OH, OW, C), the mean of each window (padded windows: divided
    as geometry.pool_counts says)."""
    g = pool_geometry(x, size, stride, padding, ceil_mode, count_include_pad)
    y = np.empty(g.y_shape, dtype=g.dtype)
    x = np.ascontiguousarray(x)
    if not g.plain:
        args = (g.kh, g.kw, g.sh, g.sw, g.pad_top, g.pad_left, pool_scales(g), y)
        _launch(_avgpool_forward_padded, x.size, x, *args)
        return y, PoolCtx(g)
    scale = g.dtype.type(1.0 / (g.kh * g.kw))
    _launch(_avgpool_forward, x.size, x, g.kh, g.kw, g.sh, g.sw, scale, y)
    return y, PoolCtx(g)


def avgpool2d_backward(dy: np.ndarray, ctx: PoolCtx) -> np.ndarray:
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C); each window shares its gradient equally."""
    check_ctx(ctx, PoolCtx, "numba")
    g = ctx.geometry
    check_grad(dy, g.y_shape, g.dtype)
    dx = np.zeros(g.x_shape, dtype=g.dtype)
    dy = np.ascontiguousarray(dy)
    if not g.plain:
        args = (g.kh, g.kw, g.sh, g.sw, g.pad_top, g.pad_left, pool_scales(g), dx)
        _launch(_avgpool_backward_padded, dx.size, dy, *args)
        return dx
    scale = g.dtype.type(1.0 / (g.kh * g.kw))
    _launch(_avgpool_backward, dx.size, dy, g.kh, g.kw, g.sh, g.sw, scale, dx)
    return dx


WARMUP_OPS = ("conv2d", "maxpool2d", "avgpool2d")


def warmup(dtypes=None, ops=None) -> None:
    """Compile (or load from the on-disk cache) the jitted kernels of `ops` (default: all of
    WARMUP_OPS) for `dtypes` (default: float32 and float64).

    A cold compile costs seconds per kernel and dtype (the `numba compile` benchmark section
    measures it), so a training run asks only for what it uses. Only a max-pool over windows
    of more than 255 elements (an intp argmax, see geometry.argmax_dtype) still compiles on
    first use.
    """
    dtypes, ops = _warmup_args(dtypes, ops)
    for dtype in dtypes:
        x = np.ones((1, 3, 3, 1), dtype=dtype)
        if "conv2d" in ops:
            w = np.ones((2, 2, 1, 1), dtype=dtype)
            y, conv_ctx = conv2d_forward(x, w, np.ones(1, dtype=dtype), padding=1)
            conv2d_backward(np.ones_like(y), conv_ctx)
            # the many-channel path (numba_tiles): forward's tiles of LANES and of WIDE_LANES
            # channels, dX by forward (stride 1) and by dx_phases (stride 2), and by dx_cols
            # (stride 2 with fewer input channels than LANES)
            size = 2 * numba_tiles.FORWARD_TILE + 2
            for lanes in sorted({numba_tiles.LANES, numba_tiles.WIDE_LANES}):
                w = np.ones((3, 3, lanes, lanes), dtype=dtype)
                for stride in (1, 2):
                    many = np.ones((1, size, size, lanes), dtype=dtype)
                    y, conv_ctx = conv2d_forward(many, w, None, stride, 1)
                    conv2d_backward(np.ones_like(y), conv_ctx)
            few = np.ones((1, size, size, numba_tiles.MIN_C_IN), dtype=dtype)
            w = np.ones((3, 3, numba_tiles.MIN_C_IN, numba_tiles.LANES), dtype=dtype)
            y, conv_ctx = conv2d_forward(few, w, None, 2, 1)
            conv2d_backward(np.ones_like(y), conv_ctx)
            # a wide 1x1 layer's dW from packed panels (kernels/pointwise_dw.py)
            wide = 2 * pointwise_dw.MIN_MACS_PER_VALUE
            many = np.ones((1, size, size, wide), dtype=dtype)
            y, conv_ctx = conv2d_forward(many, np.ones((1, 1, wide, wide), dtype=dtype))
            conv2d_backward(np.ones_like(y), conv_ctx)
            w = np.ones((3, 3, numba_tiles.LANES, numba_tiles.LANES), dtype=dtype)
            many = np.ones((1, size, size, numba_tiles.LANES), dtype=dtype)
            if "maxpool2d" in ops:  # the fused conv + 2x2 max-pool forward
                conv2d_maxpool2d_forward(many, w, None, 1, 1, 2, 2)
            # the depthwise kernels (kernels/depthwise.py): 3x3 (multiplier 1), by rows (2x2,
            # multiplier 1), a pixel at a time (multiplier 2), dX at stride 2
            channels = np.ones((1, 4, 4, 2), dtype=dtype)
            for k, c_out, stride in ((3, 2, 1), (2, 2, 1), (3, 4, 1), (3, 4, 2)):
                w_depthwise = np.ones((k, k, 1, c_out), dtype)
                y, conv_ctx = conv2d_forward(channels, w_depthwise, None, stride, 1, 1, 2)
                conv2d_backward(np.ones_like(y), conv_ctx)
            # ... and the strided 3x3 dX of whole channel vectors (kernels/depthwise_strided.py)
            lanes = isa.lanes(dtype)
            vectors = np.ones((1, 4, 4, lanes), dtype=dtype)
            w_depthwise = np.ones((3, 3, 1, lanes), dtype)
            y, conv_ctx = conv2d_forward(vectors, w_depthwise, None, 2, 1, 1, lanes)
            conv2d_backward(np.ones_like(y), conv_ctx)
        if "maxpool2d" in ops:
            tiled = np.ones((1, 4, 4, 1), dtype=dtype)
            for window_input, size, stride in ((x, 2, 1), (tiled, 2, 2), (x, 3, 3), (x, 3, 1)):
                # overlapping windows, 2x2 and 3x3 windows that tile x (backward kernels of their
                # own), and a size other than 2x2 (the general forward kernel)
                y, max_ctx = maxpool2d_forward(window_input, size, stride)
                maxpool2d_backward(np.ones_like(y), max_ctx)
            # padded windows (their own kernels): ResNet's stem pool, 3x3 stride 2 padding 1
            y, max_ctx = maxpool2d_forward(x, 3, 2, 1)
            maxpool2d_backward(np.ones_like(y), max_ctx)
        if "avgpool2d" in ops:
            for padding in (0, 1):  # unpadded and padded windows
                y, avg_ctx = avgpool2d_forward(x, 2, 1, padding)
                avgpool2d_backward(np.ones_like(y), avg_ctx)
    jitcache.mark_cached(_maxpool_forward, _SOURCES, dtypes, ops)


# the files whose kernels warmup() compiles (numba's cache is keyed on them)
_SOURCES = (
    __file__,
    numba_conv.__file__,
    numba_tiles.__file__,
    pointwise_dw.__file__,
    depthwise.__file__,
    depthwise_strided.__file__,
)


def _warmup_args(dtypes, ops) -> tuple[tuple, tuple[str, ...]]:
    """warmup()'s arguments with their defaults filled in; unknown ops are an error."""
    ops = WARMUP_OPS if ops is None else tuple(ops)
    unknown = set(ops) - set(WARMUP_OPS)
    if unknown:
        raise ValueError(f"warmup ops must be among {WARMUP_OPS}, got {sorted(unknown)}")
    return ((np.float32, np.float64) if dtypes is None else tuple(dtypes)), ops


def warmup_cached(dtypes=None, ops=None) -> bool:
    """True when warmup(dtypes, ops) will load from numba's disk cache (well under a second)
    rather than compile (tens of seconds); see kernels/jitcache.py."""
    return jitcache.is_cached(_maxpool_forward, _SOURCES, *_warmup_args(dtypes, ops))
