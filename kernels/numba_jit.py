"""numba backend: compiled loops, parallel (prange) over outputs that no other iteration writes.

Forward:   prange over (n, output row); each output pixel sums KH*KW*C_in taps into its C_out
           vector (inner loop over the contiguous C_out axis, vectorised by LLVM).
dW, db:    prange over P blocks of (n, output row); block p accumulates into its own partials
           dw_parts[p], db_parts[p], summed afterwards, so threads never share an accumulator.
dX:        a gather: prange over (n, input row); each input pixel collects the taps that reached it.
Pooling:   forward prange over (n, output row); backward prange over samples (windows of one sample
           may overlap, different samples never do).
Padding is never materialised: the column range each tap can reach is computed once per tap
(_valid_columns), so the hot loops carry no per-pixel bounds test.

Accumulators have the input's dtype (float32 stays float32 throughout). Arguments are checked by
kernels._common in Python before any jitted code runs; the jitted code sees C-contiguous arrays.
Compiled code is cached on disk (cache=True); call :func:`warmup` to compile everything up front.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ._common import check_grad, conv_geometry, pool_geometry
from ._memory import keep_freed_memory

keep_freed_memory()   # reuse freed pages: a step's big arrays would page-fault afresh

# reassoc lets LLVM vectorise the dX dot product over C_out; nnan/ninf are deliberately not enabled,
# so NaN and inf keep their IEEE meaning (NaN inputs propagate).
_CONV_JIT = dict(cache=True, parallel=True, fastmath={"reassoc", "contract"})
_POOL_JIT = dict(cache=True, parallel=True)

# Below this many multiply-adds (conv) or elements (pooling) a kernel runs on the calling thread
# alone: a parallel region is only as fast as its slowest thread, and for a tiny kernel the
# hand-off costs more than the second core saves. Above it, both cores help, provided the other
# core is free: OpenBLAS workers spin for ~0.1 s after every GEMM, so the trainer runs with one
# BLAS thread (model.training.TRAIN_BLAS_THREADS). Measured on 2 vCPUs, one `seed`
# training step (batch 64, 1 BLAS thread): 6.45 ms with its kernels serial (threshold 2**24),
# 4.80 ms parallel (2**20); with 2 spinning BLAS threads, parallel took 8.0 ms.
PARALLEL_MIN_WORK = 1 << 20


def _threads_for(work):
    """How many numba threads a kernel with `work` multiply-adds/elements runs on."""
    return numba.get_num_threads() if work >= PARALLEL_MIN_WORK else 1


def _launch(kernel, work, *args):
    """Call a prange kernel on _threads_for(work) threads."""
    threads = numba.get_num_threads()
    if _threads_for(work) == threads:
        return kernel(*args)
    numba.set_num_threads(1)       # thread-local, costs ~1 us
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(threads)


@njit(cache=True)
def _valid_columns(j, pw, sw, wd, out_w):
    """Output columns ow whose tap j lands inside the unpadded input: 0 <= ow*sw - pw + j < wd.

    Returns the range [lo, hi) so the hot loops need no per-pixel bounds test.
    """
    lo = max(0, -((j - pw) // sw))                # ceil((pw - j) / sw), clipped at 0
    hi = min(out_w, (wd - 1 + pw - j) // sw + 1)
    return lo, hi


@njit(**_CONV_JIT)
def _conv_forward(x, w, b, sh, sw, ph, pw, y):
    n, h, wd, c_in = x.shape
    kh, kw, _, c_out = w.shape
    out_h, out_w = y.shape[1], y.shape[2]
    for t in prange(n * out_h):
        ni, oh = t // out_h, t % out_h
        acc = y[ni, oh]                           # (OW, C_out) row of y, owned by this iteration
        for ow in range(out_w):
            for co in range(c_out):
                acc[ow, co] = b[co]
        for i in range(kh):
            r = oh * sh - ph + i
            if r < 0 or r >= h:
                continue
            for j in range(kw):
                lo, hi = _valid_columns(j, pw, sw, wd, out_w)
                # Four output columns per pass over C_out: with few channels (C_out=16 is two AVX
                # vectors) the loop's fixed cost dominates, and blocking cut the forward by ~1.35x.
                ow = lo
                while ow + 4 <= hi:
                    c = ow * sw - pw + j
                    for ci in range(c_in):
                        v0, v1 = x[ni, r, c, ci], x[ni, r, c + sw, ci]
                        v2, v3 = x[ni, r, c + 2 * sw, ci], x[ni, r, c + 3 * sw, ci]
                        for co in range(c_out):
                            wv = w[i, j, ci, co]
                            acc[ow, co] += v0 * wv
                            acc[ow + 1, co] += v1 * wv
                            acc[ow + 2, co] += v2 * wv
                            acc[ow + 3, co] += v3 * wv
                    ow += 4
                for ow in range(ow, hi):
                    c = ow * sw - pw + j
                    for ci in range(c_in):
                        v = x[ni, r, c, ci]
                        for co in range(c_out):
                            acc[ow, co] += v * w[i, j, ci, co]


@njit(**_CONV_JIT)
def _conv_dw_db(x, dy, sh, sw, ph, pw, dw_parts, db_parts):
    n, h, wd, c_in = x.shape
    _, out_h, out_w, c_out = dy.shape
    n_parts, kh, kw = dw_parts.shape[0], dw_parts.shape[1], dw_parts.shape[2]
    rows = n * out_h
    for p in prange(n_parts):
        dw_part, db_part = dw_parts[p], db_parts[p]   # this block's own accumulators: no race
        for t in range(p * rows // n_parts, (p + 1) * rows // n_parts):
            ni, oh = t // out_h, t % out_h
            for ow in range(out_w):
                for co in range(c_out):
                    db_part[co] += dy[ni, oh, ow, co]
            for i in range(kh):
                r = oh * sh - ph + i
                if r < 0 or r >= h:
                    continue
                for j in range(kw):
                    lo, hi = _valid_columns(j, pw, sw, wd, out_w)
                    for ci in range(c_in):
                        ow = lo
                        while ow + 4 <= hi:               # four columns per pass, as in forward
                            c = ow * sw - pw + j
                            v0, v1 = x[ni, r, c, ci], x[ni, r, c + sw, ci]
                            v2, v3 = x[ni, r, c + 2 * sw, ci], x[ni, r, c + 3 * sw, ci]
                            for co in range(c_out):
                                dw_part[i, j, ci, co] += (v0 * dy[ni, oh, ow, co]
                                                          + v1 * dy[ni, oh, ow + 1, co]
                                                          + v2 * dy[ni, oh, ow + 2, co]
                                                          + v3 * dy[ni, oh, ow + 3, co])
                            ow += 4
                        for ow in range(ow, hi):
                            v = x[ni, r, ow * sw - pw + j, ci]
                            for co in range(c_out):
                                dw_part[i, j, ci, co] += v * dy[ni, oh, ow, co]


@njit(**_CONV_JIT)
def _conv_dx(dy, w, sh, sw, ph, pw, dx):
    n, h, wd, c_in = dx.shape
    kh, kw, _, c_out = w.shape
    out_h, out_w = dy.shape[1], dy.shape[2]
    for t in prange(n * h):
        ni, r = t // h, t % h
        # only taps i with r + ph - i a multiple of sh came from an output row (oh = that / sh)
        for i in range((r + ph) % sh, kh, sh):
            oh = (r + ph - i) // sh
            if oh < 0 or oh >= out_h:
                continue
            for j in range(kw):
                lo, hi = _valid_columns(j, pw, sw, wd, out_w)
                ow = lo
                while ow + 4 <= hi:                       # four columns per pass, as in forward
                    c = ow * sw - pw + j
                    for ci in range(c_in):
                        # accumulators start as dx's (zero) entries, so they have dx's dtype
                        a0, a1 = dx[ni, r, c, ci], dx[ni, r, c + sw, ci]
                        a2, a3 = dx[ni, r, c + 2 * sw, ci], dx[ni, r, c + 3 * sw, ci]
                        for co in range(c_out):
                            wv = w[i, j, ci, co]
                            a0 += dy[ni, oh, ow, co] * wv
                            a1 += dy[ni, oh, ow + 1, co] * wv
                            a2 += dy[ni, oh, ow + 2, co] * wv
                            a3 += dy[ni, oh, ow + 3, co] * wv
                        dx[ni, r, c, ci], dx[ni, r, c + sw, ci] = a0, a1
                        dx[ni, r, c + 2 * sw, ci], dx[ni, r, c + 3 * sw, ci] = a2, a3
                    ow += 4
                for ow in range(ow, hi):
                    c = ow * sw - pw + j
                    for ci in range(c_in):
                        acc = dx[ni, r, c, ci]
                        for co in range(c_out):
                            acc += dy[ni, oh, ow, co] * w[i, j, ci, co]
                        dx[ni, r, c, ci] = acc


@njit(**_POOL_JIT)
def _maxpool_forward(x, kh, kw, sh, sw, y, argmax):
    n, c_all = x.shape[0], x.shape[3]
    out_h, out_w = y.shape[1], y.shape[2]
    for t in prange(n * out_h):
        ni, oh = t // out_h, t % out_h
        for ow in range(out_w):
            r0, c0 = oh * sh, ow * sw
            for ch in range(c_all):
                y[ni, oh, ow, ch] = x[ni, r0, c0, ch]
                argmax[ni, oh, ow, ch] = 0
            for k in range(1, kh * kw):
                r, c = r0 + k // kw, c0 + k % kw
                for ch in range(c_all):
                    v, best = x[ni, r, c, ch], y[ni, oh, ow, ch]
                    # np.argmax semantics: strictly greater wins (first maximum kept), and the
                    # first NaN wins and is then kept (NaN > anything is False), so NaN propagates.
                    if v > best or (np.isnan(v) and not np.isnan(best)):
                        y[ni, oh, ow, ch] = v
                        argmax[ni, oh, ow, ch] = k


@njit(**_POOL_JIT)
def _maxpool_backward(dy, argmax, kh, kw, sh, sw, dx):
    n, out_h, out_w, c_all = dy.shape
    for ni in prange(n):
        for oh in range(out_h):
            for ow in range(out_w):
                # each offset tests all channels for "am I the argmax": a compare LLVM vectorises
                # over the contiguous channel axis, 3.5x faster than scattering to k // kw, k % kw
                for i in range(kh):
                    for j in range(kw):
                        for ch in range(c_all):
                            if argmax[ni, oh, ow, ch] == i * kw + j:
                                dx[ni, oh * sh + i, ow * sw + j, ch] += dy[ni, oh, ow, ch]


@njit(**_POOL_JIT)
def _avgpool_forward(x, kh, kw, sh, sw, scale, y):
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
    n, out_h, out_w, c_all = dy.shape
    for ni in prange(n):
        for oh in range(out_h):
            for ow in range(out_w):
                for i in range(kh):
                    for j in range(kw):
                        for ch in range(c_all):
                            dx[ni, oh * sh + i, ow * sw + j, ch] += dy[ni, oh, ow, ch] * scale


def conv2d_forward(x, w, b=None, stride=1, padding=0):
    """x: (N, H, W, C_in), w: (KH, KW, C_in, C_out), b: (C_out,) or None -> y: (N, OH, OW, C_out).

    Same dtype as x (float32 or float64). ctx keeps x and w (C-contiguous) for the backward pass.
    """
    g = conv_geometry(x, w, b, stride, padding)
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    bias = np.zeros(g.c_out, dtype=g.dtype) if b is None else np.ascontiguousarray(b)
    y = np.empty(g.y_shape, dtype=g.dtype)
    _launch(_conv_forward, g.flops // 2, x, w, bias, g.sh, g.sw, g.ph, g.pw, y)
    return y, {"geometry": g, "x": x, "w": w}


def conv2d_backward(dy, ctx, need_dx=True):
    """dy: (N, OH, OW, C_out) -> (dx (N, H, W, C_in) or None, dw like w, db (C_out,) or None).

    need_dx=False skips the dX kernel entirely (first layer of a network).
    """
    g, x, w = ctx["geometry"], ctx["x"], ctx["w"]
    check_grad(dy, g.y_shape, g.dtype)
    dy = np.ascontiguousarray(dy)
    # one partial dW per thread (at most one per (n, output row) so none is left empty)
    n_parts = max(1, min(_threads_for(g.flops // 2), g.n * g.out_h))
    dw_parts = np.zeros((n_parts,) + g.w_shape, dtype=g.dtype)
    db_parts = np.zeros((n_parts, g.c_out), dtype=g.dtype)   # fused: dy is read once, not twice
    _launch(_conv_dw_db, g.flops // 2, x, dy, g.sh, g.sw, g.ph, g.pw, dw_parts, db_parts)
    dw = dw_parts.sum(axis=0)
    db = db_parts.sum(axis=0) if g.has_bias else None
    if not need_dx:
        return None, dw, db
    dx = np.zeros(g.x_shape, dtype=g.dtype)
    _launch(_conv_dx, g.flops // 2, dy, w, g.sh, g.sw, g.ph, g.pw, dx)
    return dx, dw, db


def maxpool2d_forward(x, size=2, stride=None):
    """x: (N, H, W, C) -> y: (N, OH, OW, C). Ties go to the first maximum in row-major order."""
    g = pool_geometry(x, size, stride)
    y = np.empty(g.y_shape, dtype=g.dtype)
    argmax = np.empty(g.y_shape, dtype=np.intp)   # flat index kh*KW + kw inside each window
    _launch(_maxpool_forward, x.size, np.ascontiguousarray(x), g.kh, g.kw, g.sh, g.sw, y, argmax)
    return y, {"geometry": g, "argmax": argmax}


def maxpool2d_backward(dy, ctx):
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C); each window's gradient goes to its argmax."""
    g, argmax = ctx["geometry"], ctx["argmax"]
    check_grad(dy, g.y_shape, g.dtype)
    dx = np.zeros(g.x_shape, dtype=g.dtype)
    _launch(_maxpool_backward, dx.size, np.ascontiguousarray(dy), argmax, g.kh, g.kw, g.sh, g.sw,
            dx)
    return dx


def avgpool2d_forward(x, size=2, stride=None):
    """x: (N, H, W, C) -> y: (N, OH, OW, C), the mean of each window."""
    g = pool_geometry(x, size, stride)
    y = np.empty(g.y_shape, dtype=g.dtype)
    scale = g.dtype.type(1.0 / (g.kh * g.kw))
    _launch(_avgpool_forward, x.size, np.ascontiguousarray(x), g.kh, g.kw, g.sh, g.sw, scale, y)
    return y, {"geometry": g}


def avgpool2d_backward(dy, ctx):
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C); each window shares its gradient equally."""
    g = ctx["geometry"]
    check_grad(dy, g.y_shape, g.dtype)
    dx = np.zeros(g.x_shape, dtype=g.dtype)
    scale = g.dtype.type(1.0 / (g.kh * g.kw))
    _launch(_avgpool_backward, dx.size, np.ascontiguousarray(dy), g.kh, g.kw, g.sh, g.sw, scale,
            dx)
    return dx


def warmup() -> None:
    """Compile (or load from the on-disk cache) every jitted kernel for float32 and float64."""
    for dtype in (np.float32, np.float64):
        x = np.ones((1, 3, 3, 1), dtype=dtype)
        w = np.ones((2, 2, 1, 1), dtype=dtype)
        y, ctx = conv2d_forward(x, w, np.ones(1, dtype=dtype), padding=1)
        conv2d_backward(np.ones_like(y), ctx)
        for forward, backward in ((maxpool2d_forward, maxpool2d_backward),
                                  (avgpool2d_forward, avgpool2d_backward)):
            y, ctx = forward(x, 2, 1)
            backward(np.ones_like(y), ctx)
