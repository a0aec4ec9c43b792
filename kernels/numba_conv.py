"""The numba backend's convolution machinery: plane layout, tap tables and the jitted hot loops.

kernels/numba_jit.py (the backend) calls, per conv2d call:
    plane_layout(g)                  the Layout of the zero-padded (phase) planes for geometry g
    forward_taps / dx_taps           the tap tables (offsets into the planes, weights per tap)
    forward_kernel / backward_kernel the jitted loops, prange over blocks of samples
The comment below explains the layout; every jitted function states what it computes.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np
from numba import njit, prange

from .geometry import ConvGeometry

# reassoc lets LLVM vectorise the dW dot products (sums in any order); nnan/ninf are deliberately
# not enabled, so NaN and inf keep their IEEE meaning (NaN inputs propagate).
_FASTMATH = {"reassoc", "contract"}
_CONV_JIT: dict[str, Any] = dict(cache=True, parallel=True, fastmath=_FASTMATH)

# ---------------------------------------------------------------- convolution on channel planes
#
# LLVM vectorises a loop well when it is long and contiguous. In NHWC the only contiguous axis is
# the channel axis, often just 16 long, and an inner loop that short leaves most of a vector idle
# (an inner loop over C_out runs at a few percent of the matmul peak). So each
# sample is copied into zero-padded channel planes with row pitch `wq`. In that layout a kernel tap
# is a constant shift of a flat plane, and the output at flat position p = oh*wq + ow is
#
#     out[co, p] = b[co] + sum over taps t of  planes[offset[t] + p] * weights[t, co]
#
# a sum of shifted, contiguous vectors, `span` elements long (see plane_layout). Positions with
# ow >= OW in that flat range straddle two rows; they are computed and never read.
#
# Stride: the padded input is split into sh*sw phase planes per channel ("space to depth"): phase
# (a, b) of channel c holds the pixels at rows a, a+sh, ... and columns b, b+sw, ... Tap (c, i, j)
# then reads phase (i % sh, j % sw) shifted by (i // sh, j // sw), and the strided convolution is
# a stride-1 one on the phase planes: no output is computed that is not kept. Stride 1 is the
# special case of one phase per channel.
#
# The backward pass copies dy into zeroed planes of the same pitch (with zero margins), so
#   dW[t, co] = sum_p planes[offset[t] + p] * dy_planes[co, p]          (a dot product per tap)
#   dX        = the same shifted-sum kernel run on dy_planes with the kernel flipped and C_in and
#               C_out swapped (a "full" correlation, whose rows wrap into zero columns and
#               margins), giving the gradient of every phase plane, which is copied back to dx.
# Every sample is independent, so prange splits the batch into one block per thread; each block
# owns its scratch planes and its partial dW/db (no shared accumulator, no race).


class Layout(NamedTuple):
    """The plane layout of one conv geometry (all ints; the jitted kernels take it as one tuple).

    U = ceil(KH / sh) and V = ceil(KW / sw) are the phase kernel's rows and columns.
    """

    ph: int  # padding
    pw: int
    sh: int  # stride
    sw: int
    hq: int  # rows of a phase plane: ceil(Hp / sh)
    wq: int  # row pitch of a phase plane: ceil(Wp / sw)
    span: int  # flat length covering every output position: (OH - 1) * wq + OW
    # zeros kept before each dy plane so every tap of the full correlation (dX) reads inside its
    # plane: (U - 1) * wq + V - 1
    margin: int
    # first phase-plane position dX computes, and how many (stride 1: only the unpadded image;
    # otherwise whole phase planes)
    dx_start: int
    dx_len: int


def plane_layout(g: ConvGeometry) -> Layout:
    """The Layout of geometry g's phase planes (see the comment above Layout)."""
    hq, wq = -(-(g.height + 2 * g.ph) // g.sh), -(-(g.width + 2 * g.pw) // g.sw)
    u, v = -(-g.kh // g.sh), -(-g.kw // g.sw)
    if (g.sh, g.sw) == (1, 1):
        dx_start, dx_len = g.ph * wq + g.pw, (g.height - 1) * wq + g.width
    else:
        dx_start, dx_len = 0, hq * wq
    return Layout(
        g.ph,
        g.pw,
        g.sh,
        g.sw,
        hq,
        wq,
        (g.out_h - 1) * wq + g.out_w,
        (u - 1) * wq + v - 1,
        dx_start,
        dx_len,
    )


# Register blocks of the two hot loops below: TAP_BLOCK taps x 2 output channels (x 4 for dW) per
# pass over p, so each load of a shifted slice feeds several multiply-adds and each output (or
# accumulator) is loaded and stored once per TAP_BLOCK taps. Unblocked (one tap, one channel per
# pass) the loops were bound by loads and stores, not arithmetic. Three taps, not four: a 3x3
# kernel on one input channel has 9 taps, which four-tap blocks would pad to 12 (33% waste).
TAP_BLOCK = 3


@functools.lru_cache(maxsize=64)
def _tap_offsets(n_planes, plane, kh, kw, sh, sw, wq, flip, zero_offset, start):
    """Where each tap reads, padded to a multiple of TAP_BLOCK taps.

    Taps are ordered (c, i, j) for c < n_planes; with sh*sw phases per channel, tap (c, i, j)
    reads phase plane c*sh*sw + (i % sh)*sw + j % sw (each `plane` long) shifted by
    start + (i // sh)*wq + j // sw; with `flip` (dX, where sh = sw = 1) by
    start + (kh-1-i)*wq + (kw-1-j). Padding taps read `zero_offset`, a zero tail of the source.
    Cached (read-only): a training run asks for the same few layouts every step.
    """
    c, i, j = np.ix_(np.arange(n_planes), np.arange(kh), np.arange(kw))
    if flip:
        plane_index, shift = c, (kh - 1 - i) * wq + (kw - 1 - j)
    else:
        plane_index, shift = c * sh * sw + (i % sh) * sw + j % sw, (i // sh) * wq + j // sw
    n_taps = n_planes * kh * kw
    offsets = np.full(-(-n_taps // TAP_BLOCK) * TAP_BLOCK, zero_offset, dtype=np.int64)
    offsets[:n_taps] = (plane_index * plane + start + shift).ravel()
    offsets.flags.writeable = False
    return offsets


def _taps(offsets, weights):
    """offsets (T',) from _tap_offsets, weights (T, C) in the same tap order -> (offsets,
    weights (T', C)), the padding taps with weight 0: they add exact zeros (never 0 * inf)."""
    padded = np.zeros((len(offsets), weights.shape[1]), dtype=weights.dtype)
    padded[: len(weights)] = weights
    return offsets, padded


def forward_taps(g: ConvGeometry, lay: Layout, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Taps ordered (c_in, i, j) into the input phase planes (C_in*sh*sw planes of hq*wq values,
    then a zero tail): offsets (T',), weights (T', C_out)."""
    plane = lay.hq * lay.wq
    offsets = _tap_offsets(
        g.c_in, plane, g.kh, g.kw, g.sh, g.sw, lay.wq, False, g.c_in * g.sh * g.sw * plane, 0
    )
    return _taps(offsets, w.transpose(2, 0, 1, 3).reshape(-1, g.c_out))


def dx_taps(g: ConvGeometry, lay: Layout, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Taps ordered (c_out, u, v) of the flipped phase kernel into the dy planes (C_out planes of
    margin + hq*wq values, then a zero tail): offsets (T',), weights (T', C_in*sh*sw).

    Phase (a, b) of input channel c sees kernel entry w[a + u*sh, b + v*sw, c] at tap (u, v):
    the kernel is zero-padded to (U*sh, V*sw) and split into those phases."""
    u, v = -(-g.kh // g.sh), -(-g.kw // g.sw)
    dy_plane = lay.margin + lay.hq * lay.wq
    offsets = _tap_offsets(
        g.c_out, dy_plane, u, v, 1, 1, lay.wq, True, g.c_out * dy_plane, lay.dx_start
    )
    w_padded = np.zeros((u * g.sh, v * g.sw, g.c_in, g.c_out), dtype=w.dtype)
    w_padded[: g.kh, : g.kw] = w
    phases = w_padded.reshape(u, g.sh, v, g.sw, g.c_in, g.c_out)  # (u, a, v, b, c, co)
    weights = phases.transpose(5, 0, 2, 4, 1, 3).reshape(g.c_out * u * v, -1)
    return _taps(offsets, weights)


# a zero-length array whose dtype is as wide as two values of the conv's dtype (see _from_planes):
# int64 for float32 pairs (copied as plain bits; numba moves complex64 as two floats, which is as
# slow as no pairing), complex128 for float64
PAIR_LIKE = {
    np.dtype(np.float32): np.empty(0, np.int64),
    np.dtype(np.float64): np.empty(0, np.complex128),
}


# Up to this many channels the copies into and out of the planes go a channel at a time (each
# plane row written, or read, contiguously), above it a pixel at a time (each pixel's channels
# read, or written, contiguously). The crossover, timed per 64 28x28 samples on one core: into
# the planes a channel at a time wins up to 8 channels (the `lab_fit` case has 3) and ties at 16;
# out of them it wins up to 5 and loses at 8 (bench.conv mb64ic3ih28oc2kh2, the `lab_fit` case,
# and the same with ic5, ic8 and ic16).
FEW_CHANNELS_TO_PLANES = 8
FEW_CHANNELS_FROM_PLANES = 5


@njit(cache=True)
def _to_planes(src, planes, start, pitch, ph, pw, sh, sw):
    """Copy one image src (R, C, K) into its phase planes (K*sh*sw, L) of row pitch `pitch`.

    Pixel (r, c, k), at (r + ph, c + pw) in the padded frame, goes to plane
    k*sh*sw + ((r+ph) % sh)*sw + (c+pw) % sw at start + ((r+ph)//sh)*pitch + (c+pw)//sw.
    With ph = pw = 0 and sh = sw = 1: planes[k, start + r*pitch + c] = src[r, c, k].
    """
    if sh > 1 or sw > 1:
        _copy_phases(src, planes, start, pitch, ph, pw, sh, sw, True)
        return
    rows, cols, k_all = src.shape
    for r in range(rows):
        base = start + (r + ph) * pitch + pw
        if k_all <= FEW_CHANNELS_TO_PLANES:  # a plane row at a time: contiguous stores
            for k in range(k_all):
                row = planes[k, base : base + cols]
                pixels = src[r, :, k]
                for c in range(cols):
                    row[c] = pixels[c]
        else:  # a pixel at a time: contiguous loads
            for c in range(cols):
                for k in range(k_all):
                    planes[k, base + c] = src[r, c, k]


@njit(cache=True)
def _unpool2(dyp, argmax, out):
    """out (OH, OW, C) = the backward of a 2x2 max-pool of stride 2 for one sample: each
    window's gradient dyp (PH, PW, C) at its argmax (PH, PW, C; index 2*a + b) and 0 at its
    three other pixels, as numba_jit's pool backward writes it. Pixels outside every window (an
    odd last row or column) are not written.

    One loop over the channels per output pixel, each storing one stream: LLVM vectorises a
    loop only after checking at run time that its streams do not overlap, and with four output
    pixels in one loop (six streams) that check is beyond its limit, so the loop stays scalar
    (many times slower on the `small_pool` case's 16 channels)."""
    pooled_h, pooled_w, c_all = dyp.shape
    zero = out.dtype.type(0)
    for pr in range(pooled_h):
        for pq in range(pooled_w):
            g, which = dyp[pr, pq], argmax[pr, pq]
            for a in range(2):
                for b in range(2):
                    pixel, k = out[2 * pr + a, 2 * pq + b], 2 * a + b
                    for c in range(c_all):
                        pixel[c] = g[c] if which[c] == k else zero


@njit(cache=True)
def _output_index(n_planes, length, k, p):
    """Flat index of channel k, position p in _shifted_sum's (n_planes, length) output.

    Each pair of channels (2j, 2j+1) is interleaved across its two rows; an odd last channel
    keeps a plain row.
    """
    if k == n_planes - 1 and n_planes % 2:
        return k * length + p
    return (k - k % 2) * length + 2 * p + k % 2


@njit(cache=True)
def _from_planes(planes, start, pitch, ph, pw, sh, sw, pair_like, dst):
    """Gather _shifted_sum's output planes (K, L) into one image dst (R, C, K).

    The inverse of _to_planes, reading channel pairs interleaved as _output_index says. `start`
    is the index in `planes` of padded-frame position 0: negative for dX, whose planes begin at
    position dx_start of the frame.

    Interleaving is what makes this cheap: with an even K a pair of channels is one element of
    twice the width (pair_like's dtype, see PAIR_LIKE), so the transpose moves half as many
    elements (the `small_conv` benchmark case's forward).
    """
    if sh > 1 or sw > 1:
        _copy_phases(dst, planes, start, pitch, ph, pw, sh, sw, False)
        return
    rows, cols, k_all = dst.shape
    length = planes.shape[1]
    if k_all <= FEW_CHANNELS_FROM_PLANES:  # a channel at a time
        flat = planes.ravel()
        for k in range(k_all):
            if k == k_all - 1 and k_all % 2:  # a plain row
                first, step = k * length, 1
            else:  # one of an interleaved pair
                first, step = (k - k % 2) * length + k % 2, 2
            for r in range(rows):
                row = flat[first + step * (start + (r + ph) * pitch + pw) :]
                pixels = dst[r, :, k]
                for c in range(cols):
                    pixels[c] = row[step * c]
        return
    if k_all % 2 == 0:
        pairs = planes.reshape(k_all // 2, 2 * length).view(pair_like.dtype)  # (K/2, L)
        dst_pairs = dst.view(pair_like.dtype)  # (R, C, K/2)
        for r in range(rows):
            base = start + (r + ph) * pitch + pw
            for c in range(cols):
                for k in range(k_all // 2):
                    dst_pairs[r, c, k] = pairs[k, base + c]
        return
    flat = planes.ravel()
    for r in range(rows):
        base = start + (r + ph) * pitch + pw
        for c in range(cols):
            for k in range(k_all):
                dst[r, c, k] = flat[_output_index(k_all, length, k, base + c)]


@njit(cache=True)
def _copy_phases(image, planes, start, pitch, ph, pw, sh, sw, to_planes):
    """Copy image (R, C, K) to or from its phase planes (K*sh*sw, L), for stride > 1.

    The stride > 1 case of _to_planes (`to_planes`: plain rows) and _from_planes (interleaved
    pairs).
    """
    rows, cols, k_all = image.shape
    n_planes, length = planes.shape
    flat = planes.ravel()
    for r in range(rows):
        a, base = (r + ph) % sh, start + ((r + ph) // sh) * pitch
        b, q = pw % sw, pw // sw  # phase and position of column c + pw, kept incrementally:
        for c in range(cols):  # a division per pixel costs more than the copy
            plane0, p = a * sw + b, base + q
            if to_planes:
                for k in range(k_all):
                    planes[k * sh * sw + plane0, p] = image[r, c, k]
            else:
                for k in range(k_all):
                    image[r, c, k] = flat[_output_index(n_planes, length, k * sh * sw + plane0, p)]
            b += 1
            if b == sw:
                b, q = 0, q + 1


@njit(cache=True, fastmath=_FASTMATH)
def _shifted_sum(src, offsets, weights, bias, out):
    """out (C, L)[c, p] = bias[c] + sum_t src[offsets[t] + p] * weights[t, c], weights (T, C).

    Stored where _output_index says: channel pairs interleaved across their two rows, for
    _from_planes. Needs T % TAP_BLOCK == 0 (see _taps). The first block of taps starts from the
    bias instead of reading `out`.
    """
    n_taps, n_out = weights.shape
    length = out.shape[1]
    for c in range(0, n_out - 1, 2):
        o = out[c : c + 2].reshape(2 * length)  # channel c at o[2p], channel c + 1 at o[2p + 1]
        for t in range(0, n_taps, TAP_BLOCK):
            # slices, not src[offsets[t] + p]: an index that might be negative makes numba emit
            # wraparound code, and LLVM then gathers element by element
            x0 = src[offsets[t] : offsets[t] + length]
            x1 = src[offsets[t + 1] : offsets[t + 1] + length]
            x2 = src[offsets[t + 2] : offsets[t + 2] + length]
            a0, a1, a2 = weights[t, c], weights[t + 1, c], weights[t + 2, c]
            b0, b1, b2 = weights[t, c + 1], weights[t + 1, c + 1], weights[t + 2, c + 1]
            if t == 0:
                ba, bb = bias[c], bias[c + 1]
                for p in range(length):
                    o[2 * p] = ba + (x0[p] * a0 + x1[p] * a1 + x2[p] * a2)
                    o[2 * p + 1] = bb + (x0[p] * b0 + x1[p] * b1 + x2[p] * b2)
            else:
                for p in range(length):
                    o[2 * p] += x0[p] * a0 + x1[p] * a1 + x2[p] * a2
                    o[2 * p + 1] += x0[p] * b0 + x1[p] * b1 + x2[p] * b2
    if n_out % 2:  # an odd last channel: a plain row
        c = n_out - 1
        o = out[c]
        for t in range(0, n_taps, TAP_BLOCK):
            x0 = src[offsets[t] : offsets[t] + length]
            x1 = src[offsets[t + 1] : offsets[t + 1] + length]
            x2 = src[offsets[t + 2] : offsets[t + 2] + length]
            a0, a1, a2 = weights[t, c], weights[t + 1, c], weights[t + 2, c]
            if t == 0:
                ba = bias[c]
                for p in range(length):
                    o[p] = ba + (x0[p] * a0 + x1[p] * a1 + x2[p] * a2)
            else:
                for p in range(length):
                    o[p] += x0[p] * a0 + x1[p] * a1 + x2[p] * a2


@njit(cache=True, fastmath=_FASTMATH)
def _accumulate_dw_db(src, offsets, grads, start, length, dw, db):
    """dw (T, C)[t, c] += sum_p src[offsets[t] + p] * g[c, p], db (C,)[c] += sum_p g[c, p].

    g = grads[:, start:start + length], p < length. Needs T % TAP_BLOCK == 0 (see _taps).

    Blocks of 3 taps x 4 channels: twelve running sums per pass, each load feeding three or four
    of them (fewer loads per multiply-add than 3 x 2). When C is not a multiple of 4 the last block repeats its
    last channel, which then computes and writes the same sums more than once.
    """
    n_taps, n_out = dw.shape
    for c in range(0, n_out, 4):
        c1, c2, c3 = min(c + 1, n_out - 1), min(c + 2, n_out - 1), min(c + 3, n_out - 1)
        g0, g1 = grads[c, start : start + length], grads[c1, start : start + length]
        g2, g3 = grads[c2, start : start + length], grads[c3, start : start + length]
        for k in range(c, min(c + 4, n_out)):
            g = grads[k, start : start + length]
            total = db[k]  # accumulators start from dw/db: same dtype
            for p in range(length):
                total += g[p]
            db[k] = total
        for t in range(0, n_taps, TAP_BLOCK):
            x0 = src[offsets[t] : offsets[t] + length]
            x1 = src[offsets[t + 1] : offsets[t + 1] + length]
            x2 = src[offsets[t + 2] : offsets[t + 2] + length]
            a0, a1, a2 = dw[t, c], dw[t + 1, c], dw[t + 2, c]
            b0, b1, b2 = dw[t, c1], dw[t + 1, c1], dw[t + 2, c1]
            d0, d1, d2 = dw[t, c2], dw[t + 1, c2], dw[t + 2, c2]
            e0, e1, e2 = dw[t, c3], dw[t + 1, c3], dw[t + 2, c3]
            for p in range(length):
                a0 += x0[p] * g0[p]
                a1 += x1[p] * g0[p]
                a2 += x2[p] * g0[p]
                b0 += x0[p] * g1[p]
                b1 += x1[p] * g1[p]
                b2 += x2[p] * g1[p]
                d0 += x0[p] * g2[p]
                d1 += x1[p] * g2[p]
                d2 += x2[p] * g2[p]
                e0 += x0[p] * g3[p]
                e1 += x1[p] * g3[p]
                e2 += x2[p] * g3[p]
            dw[t, c], dw[t + 1, c], dw[t + 2, c] = a0, a1, a2
            dw[t, c1], dw[t + 1, c1], dw[t + 2, c1] = b0, b1, b2
            dw[t, c2], dw[t + 1, c2], dw[t + 2, c2] = d0, d1, d2
            dw[t, c3], dw[t + 1, c3], dw[t + 2, c3] = e0, e1, e2


@njit(cache=True)
def _all_finite(a):
    """True when no entry of `a` (any shape) is NaN or inf (x - x is 0 exactly for finite x)."""
    for v in a.ravel():
        if v - v != 0:
            return False
    return True


@njit(cache=True)
def _accumulate_dw_db_exact(src, offsets, grads, start, wq, out_h, out_w, dw, db):
    """_accumulate_dw_db into dw (T, C), db (C,) over the OH x OW real output positions only.

    For samples holding NaN or inf: the fast loops also multiply the zeros beside the outputs,
    and 0 * NaN would poison taps that never touch the bad pixel (naive leaves those finite).
    Scalar and slow.
    """
    n_taps, n_out = dw.shape
    for c in range(n_out):
        for oh in range(out_h):
            for ow in range(out_w):
                p = oh * wq + ow
                db[c] += grads[c, start + p]
                for t in range(n_taps):
                    dw[t, c] += src[offsets[t] + p] * grads[c, start + p]


@njit(**_CONV_JIT)
def forward_kernel(x, offsets, weights, bias, lay, n_parts, pair_like, y):
    """y (N, OH, OW, C_out) = bias + the taps (T,), weights (T, C_out) applied to x (N, H, W, C_in).

    prange over n_parts blocks of samples; each block owns its scratch planes.
    """
    n, c_in = x.shape[0], x.shape[3]
    n_phases, plane = c_in * lay.sh * lay.sw, lay.hq * lay.wq
    for part in prange(n_parts):
        # phase planes, then a zero tail read by the padding taps; the padding stays zero
        planes = np.zeros(n_phases * plane + lay.span, dtype=x.dtype)
        phase_planes = planes[: n_phases * plane].reshape(n_phases, plane)
        out = np.empty((weights.shape[1], lay.span), dtype=y.dtype)
        for ni in range(part * n // n_parts, (part + 1) * n // n_parts):
            _to_planes(x[ni], phase_planes, 0, lay.wq, lay.ph, lay.pw, lay.sh, lay.sw)
            _shifted_sum(planes, offsets, weights, bias, out)
            _from_planes(out, 0, lay.wq, 0, 0, 1, 1, pair_like, y[ni])


@njit(**_CONV_JIT)
def backward_kernel(
    x,
    dy,
    argmax,
    out_h,
    out_w,
    offsets,
    dx_offsets,
    dx_weights,
    lay,
    n_parts,
    pair_like,
    need_dx,
    dw_parts,
    db_parts,
    dx,
):
    """dw_parts (n_parts, T, C_out), db_parts (n_parts, C_out) += block sums; dx (N, H, W, C_in).

    x (N, H, W, C_in) and dy in: the convolution's output gradient (N, OH, OW, C_out), or,
    when argmax is not empty, the gradient (N, OH//2, OW//2, C_out) of the 2x2 max-pool of
    stride 2 that followed it, with the pool's argmax (the same shape). The pool's backward is
    then done a sample at a time into scratch that stays in cache (_unpool2), and the whole
    (N, OH, OW, C_out) gradient is never written. out_h, out_w: the convolution's OH, OW.
    prange over n_parts blocks of samples, each with its own scratch planes and its own row of
    dw_parts/db_parts. dx is written only when need_dx (the dX taps are then dx_offsets (T2,),
    dx_weights (T2, C_in*sh*sw)).
    """
    n, c_in, c_out = x.shape[0], x.shape[3], dy.shape[3]
    pooled = argmax.shape[0] > 0
    n_phases, plane = c_in * lay.sh * lay.sw, lay.hq * lay.wq
    dy_plane = lay.margin + plane
    no_bias = np.zeros(n_phases, dtype=x.dtype)
    for part in prange(n_parts):
        planes = np.zeros(n_phases * plane + lay.span, dtype=x.dtype)
        phase_planes = planes[: n_phases * plane].reshape(n_phases, plane)
        # dy after `margin` zeros in each plane, then a zero tail for the padding taps; entries
        # never written stay zero from sample to sample
        grads = np.zeros(c_out * dy_plane + lay.dx_len, dtype=dy.dtype)
        grad_planes = grads[: c_out * dy_plane].reshape(c_out, dy_plane)
        dx_planes = np.empty((n_phases, lay.dx_len if need_dx else 0), dtype=x.dtype)
        # zeros: an odd last row or column is in no pooling window, its gradient stays 0
        unpooled = np.zeros((out_h if pooled else 0, out_w, c_out), dtype=dy.dtype)
        for ni in range(part * n // n_parts, (part + 1) * n // n_parts):
            _to_planes(x[ni], phase_planes, 0, lay.wq, lay.ph, lay.pw, lay.sh, lay.sw)
            if pooled:
                _unpool2(dy[ni], argmax[ni], unpooled)
                _to_planes(unpooled, grad_planes, lay.margin, lay.wq, 0, 0, 1, 1)
            else:
                _to_planes(dy[ni], grad_planes, lay.margin, lay.wq, 0, 0, 1, 1)
            if _all_finite(x[ni]):
                _accumulate_dw_db(
                    planes,
                    offsets,
                    grad_planes,
                    lay.margin,
                    lay.span,
                    dw_parts[part],
                    db_parts[part],
                )
            else:
                _accumulate_dw_db_exact(
                    planes,
                    offsets,
                    grad_planes,
                    lay.margin,
                    lay.wq,
                    out_h,
                    out_w,
                    dw_parts[part],
                    db_parts[part],
                )
            if need_dx:
                _shifted_sum(grads, dx_offsets, dx_weights, no_bias, dx_planes)
                # dx_planes begin at frame position dx_start: frame position 0 is at -dx_start
                _from_planes(
                    dx_planes,
                    -lay.dx_start,
                    lay.wq,
                    lay.ph,
                    lay.pw,
                    lay.sh,
                    lay.sw,
                    pair_like,
                    dx[ni],
                )
