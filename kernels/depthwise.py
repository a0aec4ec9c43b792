"""Depthwise convolution (groups == C_in, any channel multiplier) as compiled per-channel stencils.

A depthwise layer does KH*KW multiply-adds per output value and reads every input value KH*KW
times from cache: it is bound by memory, and a GEMM formulation (im2col per group, or a plain
convolution per channel) spends most of its time building operands one channel wide. In NHWC
the channel axis is contiguous, so here every loop's innermost axis is the channels: one tap of
one pixel is a multiply-add of three contiguous channel vectors, which LLVM vectorises.

Channel multiplier M = C_out // C_in: output channel o = c*M + m reads input channel c (PyTorch's
grouping). The kernels work on an m-major layout, where a pixel's outputs are (M, C) with the
channels contiguous: the weights as wt (KH, KW, M, C), the output as (N, OH, OW, M, C); for M = 1
(MobileNet's layers) both are exactly w and y, for M > 1 the caller transposes (to_m_major /
from_m_major), a copy as large as y.

Padding, stride and dilation are native: a tap outside the input is skipped (the padding is
never materialised), and the taps of a window are (dil_h, dil_w) apart.
    forward_kernel  prange over output rows (n, oh): y = b + sum over taps of x * w
    forward3x3_kernel  the same for 3x3 kernels (MobileNet's), the nine taps of an interior
                    pixel summed in one pass; at stride 1 it also runs dX, the full correlation
                    of dy with the kernel turned by 180 degrees
    forward3x3_vec_kernel  the same on rows of VEC_MIN_COLUMNS or more at stride 1 along the
                    width, two channel vectors' weights held in SIMD registers along a row
                    (forward3x3_for picks; see "explicit SIMD vectors" below)
    forward_rows_kernel  the same for other kernel sizes, each output row as one long vector
                    (few channels, M = 1, stride 1 along the width; see ROW_BLOCK); at stride
                    1 it also runs dX
    dx_kernel       prange over input rows (n, r): a gather, each input pixel summing the
                    taps that read it, so no two threads write one element
    dx_strided_kernel  the same rows, for a stride > 1, walking the output pixels instead
                    (a strided 3x3 layer with multiplier 1 and whole channel vectors runs
                    kernels/depthwise_strided.py's instead, each input pixel written once)
    dw_kernel       prange over blocks of output rows, each block with its own partial dW,
                    summed afterwards (no shared accumulator)
    dw3x3_kernel    the same for 3x3 kernels with multiplier 1, a row's nine dW sums (and db)
                    held in SIMD registers (see "explicit SIMD vectors" below)
    backward3x3_kernel  dw3x3_kernel and the stride-1 dX of a 3x3 kernel in one parallel region
kernels/numba_jit.py (the numba backend) calls them and decides the thread count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from . import isa
from .contract import ConvCtx
from .geometry import ConvGeometry

# typed Any: numba's intrinsic wraps a typing function whose parameters mypy would otherwise
# take for the call's
numba_intrinsic: Any = intrinsic

# reassoc and contract let LLVM fuse and vectorise the multiply-adds; nnan/ninf stay off, so NaN
# and inf keep their IEEE meaning (as in kernels/numba_conv.py).
_JIT: dict[str, Any] = dict(cache=True, parallel=True, fastmath={"reassoc", "contract"})

PATH = "numba depthwise"


@dataclass(frozen=True, eq=False)
class DepthwiseCtx(ConvCtx):
    """conv2d's ctx on the depthwise path: x, and the weights in the m-major layout."""

    path: str
    x: np.ndarray  # (N, H, W, C_in), C-contiguous
    wt: np.ndarray  # (KH, KW, M, C_in), C-contiguous, M = C_out // C_in


# ------------------------------------------------------------------ explicit SIMD vectors
#
# The 3x3 kernels below keep their sums in vector registers across a whole output row. LLVM's
# loop vectoriser cannot do that here: it vectorises only the innermost loop (the channels,
# entered once per pixel, with a runtime alias check of every array on each entry), and the SLP
# vectoriser gives up on a fixed-length channel block because the arrays might alias. So the
# kernels spell the vectors out: Vec is one machine vector of the array's float type, as many
# lanes as isa.vector_bits() holds (16 float32 with AVX-512), and vload / vstore / vfma / vadd
# are single LLVM vector instructions. A load or store has no bounds check: the kernels index
# only whole vectors inside their rows. Compiled once per CPU (numba's cache is keyed on it).


class Vec(types.Type):
    """One SIMD register of `lanes` values of float type `dtype` (numba's type, not an array)."""

    def __init__(self, dtype: types.Float, lanes: int):
        self.dtype, self.lanes = dtype, lanes
        super().__init__(name=f"Vec({dtype} x {lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


def _vec_type(dtype: types.Float) -> Vec:
    return Vec(dtype, isa.vector_bits() // dtype.bitwidth)


def _vec_pointer(context, builder, array_type, array, index, index_type, vec_type):
    data = context.make_array(array_type)(context, builder, array).data
    start = builder.gep(data, [context.cast(builder, index, index_type, types.intp)])
    return builder.bitcast(start, context.get_value_type(vec_type).as_pointer())


@numba_intrinsic
def lanes(typingctx, array):
    """The number of values of array's dtype in one Vec (a compile-time constant)."""
    count = _vec_type(array.dtype).lanes

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, count)

    return types.intp(array), codegen


@numba_intrinsic
def vload(typingctx, array, index):
    """array.flat[index : index + lanes] as a Vec; array is a C-contiguous 1-D array."""
    vec_type = _vec_type(array.dtype)

    def codegen(context, builder, sig, args):
        ptr = _vec_pointer(context, builder, array, args[0], args[1], index, vec_type)
        return builder.load(ptr, align=array.dtype.bitwidth // 8)

    return vec_type(array, index), codegen


@numba_intrinsic
def vstore(typingctx, array, index, value):
    """array[index : index + lanes] = value (a Vec); array is a C-contiguous 1-D array."""

    def codegen(context, builder, sig, args):
        ptr = _vec_pointer(context, builder, array, args[0], args[1], index, value)
        builder.store(args[2], ptr, align=array.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(array, index, value), codegen


@numba_intrinsic
def vzero(typingctx, array):
    """A Vec of zeros of array's dtype."""
    vec_type = _vec_type(array.dtype)

    def codegen(context, builder, sig, args):
        return cgutils.get_null_value(context.get_value_type(vec_type))

    return vec_type(array), codegen


@numba_intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c, lane by lane, rounded once (llvm.fma)."""

    def codegen(context, builder, sig, args):
        vec = context.get_value_type(a)
        name = f"llvm.fma.v{a.lanes}f{a.dtype.bitwidth}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), name)
        return builder.call(fma, args)

    return a(a, b, c), codegen


@numba_intrinsic
def vmul(typingctx, a, b):
    """a * b, lane by lane."""

    def codegen(context, builder, sig, args):
        return builder.fmul(*args)

    return a(a, b), codegen


@numba_intrinsic
def vadd(typingctx, a, b):
    """a + b, lane by lane."""

    def codegen(context, builder, sig, args):
        return builder.fadd(*args)

    return a(a, b), codegen


def to_m_major(a: np.ndarray, c_in: int) -> np.ndarray:
    """a (..., C_in*M), channel o = c*M + m -> (..., M, C_in), C-contiguous."""
    split = a.reshape(*a.shape[:-1], c_in, a.shape[-1] // c_in)
    return np.ascontiguousarray(np.swapaxes(split, -1, -2))


def from_m_major(a: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_m_major`: a (..., M, C_in) -> (..., C_in*M)."""
    return np.swapaxes(a, -1, -2).reshape(*a.shape[:-2], -1)


def applies(g: ConvGeometry) -> bool:
    """True when this module computes geometry g: a depthwise convolution (groups == C_in > 1)."""
    return g.depthwise


def make_ctx(g: ConvGeometry, x: np.ndarray, w: np.ndarray) -> DepthwiseCtx:
    """The ctx of geometry g: x (N, H, W, C_in), w (KH, KW, 1, C_in*M)."""
    wt = to_m_major(w.reshape(g.kh, g.kw, g.c_out), g.c_in)
    return DepthwiseCtx(g, PATH, np.ascontiguousarray(x), wt)


def geometry_args(g: ConvGeometry) -> tuple[int, int, int, int, int, int]:
    """(sh, sw, top, left, dil_h, dil_w): what every kernel below takes after its arrays."""
    return g.sh, g.sw, g.ph, g.pw, g.dil_h, g.dil_w


@njit(**_JIT)
def forward_kernel(x, wt, bias, sh, sw, pt, pl, dh, dw, out):
    """out (N, OH, OW, M, C) = bias (M, C) + the depthwise correlation of x (N, H, W, C) with
    wt (KH, KW, M, C); input row oh*sh - pt + i*dh, column ow*sw - pl + j*dw for tap (i, j)."""
    n, height, width, c_all = x.shape
    kh, kw, m_all = wt.shape[0], wt.shape[1], wt.shape[2]
    out_h, out_w = out.shape[1], out.shape[2]
    for t in prange(n * out_h):
        ni, oh = t // out_h, t % out_h
        for ow in range(out_w):
            acc = out[ni, oh, ow]  # (M, C): the pixel's outputs stay in L1 across the taps
            for m in range(m_all):
                for c in range(c_all):
                    acc[m, c] = bias[m, c]
            for i in range(kh):
                r = oh * sh - pt + i * dh
                if r < 0 or r >= height:
                    continue
                for j in range(kw):
                    col = ow * sw - pl + j * dw
                    if col < 0 or col >= width:
                        continue
                    pixel = x[ni, r, col]
                    for m in range(m_all):
                        tap, row = wt[i, j, m], acc[m]
                        for c in range(c_all):
                            row[c] += pixel[c] * tap[c]


def fused3x3_applies(g: ConvGeometry) -> bool:
    """True when forward3x3_kernel runs geometry g's forward (and, at stride 1, its dX): a 3x3
    kernel, channel multiplier 1; any stride, dilation and padding."""
    return (g.kh, g.kw) == (3, 3) and g.c_out == g.c_in


@njit(cache=True)
def forward3x3_rows(x, wt, bias, sh, sw, pt, pl, dh, dw, out, t_first, t_end):
    """forward3x3_kernel's output rows t_first <= t < t_end (t = n * OH + oh)."""
    n, height, width, c_all = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    w00, w01, w02 = wt[0, 0, 0], wt[0, 1, 0], wt[0, 2, 0]
    w10, w11, w12 = wt[1, 0, 0], wt[1, 1, 0], wt[1, 2, 0]
    w20, w21, w22 = wt[2, 0, 0], wt[2, 1, 0], wt[2, 2, 0]
    b = bias[0]
    for t in range(t_first, t_end):
        ni, oh = t // out_h, t % out_h
        r0 = oh * sh - pt
        rows_inside = r0 >= 0 and r0 + 2 * dh < height
        if rows_inside:
            x0, x1, x2 = x[ni, r0], x[ni, r0 + dh], x[ni, r0 + 2 * dh]
        for ow in range(out_w):
            acc = out[ni, oh, ow, 0]
            c0 = ow * sw - pl
            if rows_inside and c0 >= 0 and c0 + 2 * dw < width:
                c1, c2 = c0 + dw, c0 + 2 * dw
                for c in range(c_all):
                    acc[c] = (
                        b[c]
                        + x0[c0, c] * w00[c]
                        + x0[c1, c] * w01[c]
                        + x0[c2, c] * w02[c]
                        + x1[c0, c] * w10[c]
                        + x1[c1, c] * w11[c]
                        + x1[c2, c] * w12[c]
                        + x2[c0, c] * w20[c]
                        + x2[c1, c] * w21[c]
                        + x2[c2, c] * w22[c]
                    )
                continue
            for c in range(c_all):  # an edge pixel: tap by tap, skipping the padding
                acc[c] = b[c]
            for i in range(3):
                r = r0 + i * dh
                if r < 0 or r >= height:
                    continue
                for j in range(3):
                    col = c0 + j * dw
                    if col < 0 or col >= width:
                        continue
                    pixel, tap = x[ni, r, col], wt[i, j, 0]
                    for c in range(c_all):
                        acc[c] += pixel[c] * tap[c]


@njit(**_JIT)
def forward3x3_kernel(x, wt, bias, sh, sw, pt, pl, dh, dw, out):
    """forward_kernel for a 3x3 kernel and multiplier 1 (wt (3, 3, 1, C), bias (1, C), out (N,
    OH, OW, 1, C)): a pixel whose nine taps all lie inside x sums them in one pass over the
    channels, writing its output once instead of loading and storing it per tap. Faster than
    forward_kernel and forward_rows_kernel in one-thread interleaved A/B on MobileNetV2's
    depthwise layers (`python -m bench.conv --set mobilenetv2 --mb 8`, its g = C layers)."""
    rows = x.shape[0] * out.shape[1]
    for t in prange(rows):  # one row a call: numba's prange splits the rows evenly
        forward3x3_rows(x, wt, bias, sh, sw, pt, pl, dh, dw, out, t, t + 1)


# forward3x3_vec_kernel loads its twenty weight and bias vectors again for every row and pair
# of channel vectors, and walks a row once per pair; forward3x3_kernel takes each pixel's
# channels in one contiguous loop. In interleaved A/B of the forward the vector kernel is the
# faster at stride 1 on rows of 28 or more output columns (`python -m bench.conv
# g32mb8ic32ih112oc32oh112kh3ph1`, `g144mb8ic144ih56oc144oh56kh3ph1`,
# `g192mb8ic192ih28oc192oh28kh3ph1`) and the slower on 14 and 7 columns
# (`g384mb8ic384ih14oc384oh14kh3ph1`, `g960mb8ic960ih7oc960oh7kh3ph1`) and at stride 2 (`g96mb8ic96ih112oc96oh56kh3sh2ph1`).
VEC_MIN_COLUMNS = 28


def forward3x3_for(out_columns: int, stride_w: int):
    """The 3x3 kernel (fused3x3_applies) for a forward with out_columns output columns and
    stride stride_w along the width: forward3x3_vec_kernel or forward3x3_kernel (see
    VEC_MIN_COLUMNS). Both take the same arguments."""
    if stride_w == 1 and out_columns >= VEC_MIN_COLUMNS:
        return forward3x3_vec_kernel
    return forward3x3_kernel


@njit(cache=True, inline="always")
def tap_vectors(wf, bf, cb, c_all):
    """The nine weight Vecs (tap (i, j) at 3*i + j), then the bias Vec, of the channel vector
    at cb: wf (9*C,) the 3x3 weights, bf (C,) the bias."""
    return (
        vload(wf, cb),
        vload(wf, c_all + cb),
        vload(wf, 2 * c_all + cb),
        vload(wf, 3 * c_all + cb),
        vload(wf, 4 * c_all + cb),
        vload(wf, 5 * c_all + cb),
        vload(wf, 6 * c_all + cb),
        vload(wf, 7 * c_all + cb),
        vload(wf, 8 * c_all + cb),
        vload(bf, cb),
    )


@njit(cache=True, inline="always")
def forward_pixel(xf, k0, k1, k2, s1, s2, w):
    """The bias w[9] + the nine taps w[3*i + j] (tap_vectors) times the x vectors of tap row i at
    k_i, k_i + s1 and k_i + s2 in xf: one row per partial sum, so that the longest chain of
    dependent multiply-adds is three, not nine."""
    top = vfma(vload(xf, k0), w[0], vfma(vload(xf, k0 + s1), w[1], w[9]))
    top = vfma(vload(xf, k0 + s2), w[2], top)
    mid = vfma(vload(xf, k1), w[3], vmul(vload(xf, k1 + s1), w[4]))
    mid = vfma(vload(xf, k1 + s2), w[5], mid)
    low = vfma(vload(xf, k2), w[6], vmul(vload(xf, k2 + s1), w[7]))
    low = vfma(vload(xf, k2 + s2), w[8], low)
    return vadd(vadd(top, mid), low)


@njit(cache=True)
def forward3x3_vec_rows(x, wt, bias, sh, sw, pt, pl, dh, dw, out, t_first, t_end):
    """forward3x3_vec_kernel's output rows t_first <= t < t_end (t = n * OH + oh)."""
    n, height, width, c_all = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    step = lanes(x)
    c_main = c_all - c_all % step  # the channels in whole vectors
    c_pairs = c_all - c_all % (2 * step)  # ... in pairs of vectors
    lo, hi = interior_columns(out_w, width, sw, pl, dw)
    row_x, row_y = width * c_all, out_w * c_all
    s1, s2, pixel_step = dw * c_all, 2 * dw * c_all, sw * c_all  # taps j = 1, 2; the stride
    xf, wf, yf = x.reshape(x.size), wt.reshape(wt.size), out.reshape(out.size)
    bf = bias.reshape(c_all)
    for t in range(t_first, t_end):
        ni, oh = t // out_h, t % out_h
        r0 = oh * sh - pt
        rows_inside = r0 >= 0 and r0 + 2 * dh < height
        first = (ni * height + r0) * row_x + (lo * sw - pl) * c_all
        for cb in range(0, c_main if rows_inside else 0, 2 * step):
            w = tap_vectors(wf, bf, cb, c_all)
            k0 = first + cb
            k1, k2 = k0 + dh * row_x, k0 + 2 * dh * row_x
            ky = t * row_y + lo * c_all + cb
            if cb < c_pairs:
                w_next = tap_vectors(wf, bf, cb + step, c_all)
                for _ in range(lo, hi):
                    vstore(yf, ky, forward_pixel(xf, k0, k1, k2, s1, s2, w))
                    y_next = forward_pixel(xf, k0 + step, k1 + step, k2 + step, s1, s2, w_next)
                    vstore(yf, ky + step, y_next)
                    k0 += pixel_step
                    k1 += pixel_step
                    k2 += pixel_step
                    ky += c_all
            else:  # the one vector left
                for _ in range(lo, hi):
                    vstore(yf, ky, forward_pixel(xf, k0, k1, k2, s1, s2, w))
                    k0 += pixel_step
                    k1 += pixel_step
                    k2 += pixel_step
                    ky += c_all
        # the pixels left: all but the interior ones done in whole vectors above
        skip = hi - lo if rows_inside and c_main == c_all else 0
        for e in range(out_w - skip):
            ow = e if e < lo else e + skip
            done = rows_inside and lo <= ow < hi  # its whole vectors written above
            c_from = c_main if done else 0
            ky = t * row_y + ow * c_all
            for c in range(c_from, c_all):
                yf[ky + c] = bf[c]
            for i in range(3):
                r = r0 + i * dh
                if r < 0 or r >= height:
                    continue
                for j in range(3):
                    col = ow * sw - pl + j * dw
                    if col < 0 or col >= width:
                        continue
                    tap, kx = (3 * i + j) * c_all, ((ni * height + r) * width + col) * c_all
                    for cb in range(c_from, c_main, step):
                        k = ky + cb
                        vstore(yf, k, vfma(vload(xf, kx + cb), vload(wf, tap + cb), vload(yf, k)))
                    for c in range(c_main, c_all):
                        yf[ky + c] += xf[kx + c] * wf[tap + c]


@njit(**_JIT)
def forward3x3_vec_kernel(x, wt, bias, sh, sw, pt, pl, dh, dw, out):
    """forward_kernel for a 3x3 kernel and multiplier 1 (wt (3, 3, 1, C), bias (1, C), out (N,
    OH, OW, 1, C)); any stride, dilation and padding.

    Per output row, the weights and bias of two channel vectors stay in registers while the
    row's interior pixels (all nine taps inside x) are computed: nine x vectors loaded and one
    output vector stored per pixel and channel vector. The other pixels and channels (C not a
    multiple of the lanes) sum their taps into the output in memory, a vector and then a value
    at a time."""
    rows = x.shape[0] * out.shape[1]
    for t in prange(rows):  # one row a call: numba's prange splits the rows evenly
        forward3x3_vec_rows(x, wt, bias, sh, sw, pt, pl, dh, dw, out, t, t + 1)


@njit(**_JIT)
def dx_kernel(dy, wt, sh, sw, pt, pl, dh, dw, dx):
    """dx (N, H, W, C) = the gradient of forward_kernel's x for dy (N, OH, OW, M, C): each
    input pixel (r, col) sums dy * w over the taps (i, j) whose window reads it."""
    n, height, width, c_all = dx.shape
    kh, kw, m_all = wt.shape[0], wt.shape[1], wt.shape[2]
    out_h, out_w = dy.shape[1], dy.shape[2]
    zero = dx.dtype.type(0)
    for t in prange(n * height):
        ni, r = t // height, t % height
        for col in range(width):
            acc = dx[ni, r, col]
            for c in range(c_all):
                acc[c] = zero
            for i in range(kh):
                row_at = r + pt - i * dh  # = oh * sh for the output row oh that reads (r, .)
                if row_at < 0 or row_at % sh != 0 or row_at // sh >= out_h:
                    continue
                oh = row_at // sh
                for j in range(kw):
                    col_at = col + pl - j * dw
                    if col_at < 0 or col_at % sw != 0 or col_at // sw >= out_w:
                        continue
                    grad = dy[ni, oh, col_at // sw]
                    for m in range(m_all):
                        tap, g_m = wt[i, j, m], grad[m]
                        for c in range(c_all):
                            acc[c] += g_m[c] * tap[c]


@njit(**_JIT)
def dx_strided_kernel(dy, wt, sh, sw, pt, pl, dh, dw, dx):
    """dx_kernel for a stride > 1. Each input row (n, r) is one thread's: for every tap row i
    that reads it (output row oh), each tap (i, j) of each output pixel adds dy * w to the input
    pixel it read. dx_kernel asks each input pixel which taps read it, two divisions per tap,
    most of them finding none at stride 2; walking the output pixels needs no division per
    pixel, and is the faster at stride 2 (`python -m bench.conv g32mb8ic32ih112oc32oh56kh3sh2ph1`,
    one thread). At stride 1 every tap reads and dx_kernel's gather, summing in place, is the
    faster (`g144mb8ic144ih56oc144oh56kh3ph1`)."""
    n, height, width, c_all = dx.shape
    kh, kw, m_all = wt.shape[0], wt.shape[1], wt.shape[2]
    out_h, out_w = dy.shape[1], dy.shape[2]
    zero = dx.dtype.type(0)
    for t in prange(n * height):
        ni, r = t // height, t % height
        dx_row = dx[ni, r]  # (W, C)
        for col in range(width):
            for c in range(c_all):
                dx_row[col, c] = zero
        for i in range(kh):
            row_at = r + pt - i * dh  # = oh * sh for the output row oh whose tap row i is r
            if row_at < 0:
                continue
            oh = row_at // sh
            if oh * sh != row_at or oh >= out_h:
                continue
            for j in range(kw):
                for ow in range(out_w):
                    col = ow * sw - pl + j * dw
                    if col < 0 or col >= width:
                        continue
                    grad, pixel = dy[ni, oh, ow], dx_row[col]
                    for m in range(m_all):
                        tap, g_m = wt[i, j, m], grad[m]
                        for c in range(c_all):
                            pixel[c] += g_m[c] * tap[c]


@njit(**_JIT)
def dw_kernel(x, dy, sh, sw, pt, pl, dh, dw, dw_parts, db_parts):
    """dw_parts (P, KH, KW, M, C), db_parts (P, M, C): part p += the weight and bias gradients
    of the output rows (n, oh) of its block (the P blocks split the N*OH rows evenly); x (N, H,
    W, C), dy (N, OH, OW, M, C). db here, while dy is in cache, rather than by a numpy sum over
    dy of its own (faster in one-thread A/B on `g32mb8ic32ih112oc32oh112kh3ph1` and
    `g384mb8ic384ih14oc384oh14kh3ph1`). A 3x3 form updating nine sums in one pass over the
    channels, as forward3x3_kernel does, was several times slower on the same layers: ten
    streams stored in one loop, which LLVM left scalar."""
    n, height, width, c_all = x.shape
    n_parts, kh, kw, m_all = dw_parts.shape[0], dw_parts.shape[1], dw_parts.shape[2], dy.shape[3]
    out_h, out_w = dy.shape[1], dy.shape[2]
    rows = n * out_h
    for p in prange(n_parts):
        # sums of the thread's own allocation, copied out at the end: parts side by side in
        # dw_parts share cache lines at their borders, and two threads adding into one line
        # made two threads slower than one (dW of `g32mb8ic32ih112oc32oh112kh3ph1`)
        acc = np.zeros(dw_parts.shape[1:], dtype=dw_parts.dtype)
        bias_acc = np.zeros(db_parts.shape[1:], dtype=db_parts.dtype)
        for t in range(p * rows // n_parts, (p + 1) * rows // n_parts):
            ni, oh = t // out_h, t % out_h
            for ow in range(out_w):
                grad = dy[ni, oh, ow]
                for m in range(m_all):
                    bias_row, g_m = bias_acc[m], grad[m]
                    for c in range(c_all):
                        bias_row[c] += g_m[c]
                for i in range(kh):
                    r = oh * sh - pt + i * dh
                    if r < 0 or r >= height:
                        continue
                    for j in range(kw):
                        col = ow * sw - pl + j * dw
                        if col < 0 or col >= width:
                            continue
                        pixel = x[ni, r, col]
                        for m in range(m_all):
                            row, g_m = acc[i, j, m], grad[m]
                            for c in range(c_all):
                                row[c] += pixel[c] * g_m[c]
        dw_parts[p] += acc
        db_parts[p] += bias_acc


@njit(cache=True)
def interior_columns(out_w, width, sw, pl, dw):
    """(lo, hi): the output columns lo <= ow < hi whose three taps ow*sw - pl + j*dw (j = 0, 1,
    2) all lie inside a row of `width` columns; lo == hi when none do."""
    lo = min(out_w, (pl + sw - 1) // sw)
    last = width - 1 - 2 * dw + pl  # the largest ow * sw whose last tap is inside
    hi = min(out_w, last // sw + 1) if last >= 0 else 0
    return lo, max(lo, hi)


@njit(cache=True)
def add_vec(sums, k, value):
    """sums[k : k + lanes] += value (a Vec)."""
    vstore(sums, k, vadd(vload(sums, k), value))


@njit(cache=True, inline="always")
def zero_sums(like):
    """Ten Vecs of zeros of like's dtype: one output row's db and nine dW sums (dw_pixel)."""
    z = vzero(like)
    return (z, z, z, z, z, z, z, z, z, z)


@njit(cache=True, inline="always")
def dw_pixel(xf, gf, k0, k1, k2, kg, s1, s2, a):
    """The sums `a` (db, then dW tap (i, j) at 1 + 3*i + j, all Vecs) plus one pixel's terms:
    its dy vector gf[kg:], the x vectors of tap row i at k_i, k_i + s1 and k_i + s2 in xf."""
    g = vload(gf, kg)
    return (
        vadd(a[0], g),
        vfma(vload(xf, k0), g, a[1]),
        vfma(vload(xf, k0 + s1), g, a[2]),
        vfma(vload(xf, k0 + s2), g, a[3]),
        vfma(vload(xf, k1), g, a[4]),
        vfma(vload(xf, k1 + s1), g, a[5]),
        vfma(vload(xf, k1 + s2), g, a[6]),
        vfma(vload(xf, k2), g, a[7]),
        vfma(vload(xf, k2 + s1), g, a[8]),
        vfma(vload(xf, k2 + s2), g, a[9]),
    )


@njit(cache=True, inline="always")
def add_sums(sums, cb, c_all, a):
    """sums (10*C: tap (i, j) at (3*i + j) * C, db at 9 * C) += dw_pixel's sums `a` for the
    channel vector starting at cb."""
    add_vec(sums, 9 * c_all + cb, a[0])
    add_vec(sums, cb, a[1])
    add_vec(sums, c_all + cb, a[2])
    add_vec(sums, 2 * c_all + cb, a[3])
    add_vec(sums, 3 * c_all + cb, a[4])
    add_vec(sums, 4 * c_all + cb, a[5])
    add_vec(sums, 5 * c_all + cb, a[6])
    add_vec(sums, 6 * c_all + cb, a[7])
    add_vec(sums, 7 * c_all + cb, a[8])
    add_vec(sums, 8 * c_all + cb, a[9])


@njit(cache=True)
def dw3x3_rows(x, dy, sh, sw, pt, pl, dh, dw, t_first, t_end, sums):
    """sums (10*C: tap (i, j) at (3*i + j) * C, db at 9 * C) += dw3x3_kernel's terms of the
    output rows t_first <= t < t_end (t = n * OH + oh) of dy."""
    n, height, width, c_all = x.shape
    out_h, out_w = dy.shape[1], dy.shape[2]
    step = lanes(x)
    c_main = c_all - c_all % step  # the channels in whole vectors
    c_pairs = c_all - c_all % (2 * step)  # ... in pairs of vectors
    lo, hi = interior_columns(out_w, width, sw, pl, dw)
    row_x, row_dy = width * c_all, out_w * c_all
    s1, s2, pixel_step = dw * c_all, 2 * dw * c_all, sw * c_all  # taps j = 1, 2; the stride
    xf, gf = x.reshape(x.size), dy.reshape(dy.size)
    for t in range(t_first, t_end):
        ni, oh = t // out_h, t % out_h
        r0 = oh * sh - pt
        rows_inside = r0 >= 0 and r0 + 2 * dh < height
        first = (ni * height + r0) * row_x + (lo * sw - pl) * c_all
        for cb in range(0, c_main if rows_inside else 0, 2 * step):
            pair = cb < c_pairs  # else the one vector left
            a, b = zero_sums(xf), zero_sums(xf)
            k0 = first + cb
            k1, k2 = k0 + dh * row_x, k0 + 2 * dh * row_x
            kg = t * row_dy + lo * c_all + cb
            if pair:
                for _ in range(lo, hi):
                    a = dw_pixel(xf, gf, k0, k1, k2, kg, s1, s2, a)
                    b = dw_pixel(xf, gf, k0 + step, k1 + step, k2 + step, kg + step, s1, s2, b)
                    k0 += pixel_step
                    k1 += pixel_step
                    k2 += pixel_step
                    kg += c_all
                add_sums(sums, cb + step, c_all, b)
            else:
                for _ in range(lo, hi):
                    a = dw_pixel(xf, gf, k0, k1, k2, kg, s1, s2, a)
                    k0 += pixel_step
                    k1 += pixel_step
                    k2 += pixel_step
                    kg += c_all
            add_sums(sums, cb, c_all, a)
        # the pixels left: all but the interior ones done in whole vectors above
        skip = hi - lo if rows_inside and c_main == c_all else 0
        for e in range(out_w - skip):
            ow = e if e < lo else e + skip
            done = rows_inside and lo <= ow < hi  # its whole vectors summed above
            c_from = c_main if done else 0
            kg = t * row_dy + ow * c_all
            for cb in range(c_from, c_main, step):
                add_vec(sums, 9 * c_all + cb, vload(gf, kg + cb))
            for c in range(c_main, c_all):
                sums[9 * c_all + c] += gf[kg + c]
            for i in range(3):
                r = r0 + i * dh
                if r < 0 or r >= height:
                    continue
                for j in range(3):
                    col = ow * sw - pl + j * dw
                    if col < 0 or col >= width:
                        continue
                    o, kx = (3 * i + j) * c_all, ((ni * height + r) * width + col) * c_all
                    for cb in range(c_from, c_main, step):
                        k = o + cb
                        product = vfma(vload(xf, kx + cb), vload(gf, kg + cb), vload(sums, k))
                        vstore(sums, k, product)
                    for c in range(c_main, c_all):
                        sums[o + c] += xf[kx + c] * gf[kg + c]


@njit(**_JIT)
def dw3x3_kernel(x, dy, sh, sw, pt, pl, dh, dw, dw_parts, db_parts):
    """dw_kernel for a 3x3 kernel and multiplier 1 (dw_parts (P, 3, 3, 1, C), db_parts (P, 1,
    C), x (N, H, W, C), dy (N, OH, OW, 1, C)); any stride, dilation and padding.

    Per output row, the row's interior pixels (all nine taps inside x) are summed two channel
    vectors at a time into 2 x 10 Vecs held in registers (nine dW sums and db each): a pixel
    loads its dy vectors and nine x vectors per channel vector, one pass over the row reads
    each of its cache lines once, and nothing is stored until the row ends. dw_kernel loads and
    stores every sum per tap and pixel, in a channel loop entered once per tap; one vector a
    pass re-reads the rows once per vector (`python -m bench.conv
    g32mb8ic32ih112oc32oh112kh3ph1`, bwd_w). The other pixels (the border, and rows whose taps
    leave x) and channels (C not a multiple of the lanes) are added into the part's sums in
    memory, a vector and then a value at a time."""
    n_parts, c_all = dw_parts.shape[0], x.shape[3]
    rows = dy.shape[0] * dy.shape[1]
    for p in prange(n_parts):
        # the part's sums, of the thread's own allocation (see dw_kernel)
        sums = np.zeros(10 * c_all, dtype=dw_parts.dtype)
        t_first, t_end = p * rows // n_parts, (p + 1) * rows // n_parts
        dw3x3_rows(x, dy, sh, sw, pt, pl, dh, dw, t_first, t_end, sums)
        for tap in range(9):
            dw_parts[p, tap // 3, tap % 3, 0] += sums[tap * c_all : (tap + 1) * c_all]
        db_parts[p, 0] += sums[9 * c_all :]


@njit(**_JIT)
def backward3x3_kernel(
    x, dy, dy_m, w_turned, no_bias, dx_pt, dx_pl, dh, dw, vec, dw_parts, db_parts, dx
):
    """dw3x3_kernel and the stride-1 dX (the forward of dy, (N, OH, OW, C), with the kernel
    turned, w_turned (3, 3, 1, C), padding (dx_pt, dx_pl), into dx (N, H, W, 1, C); by
    forward3x3_vec_rows if vec else forward3x3_rows) in one parallel region: part p sums its
    band of dy rows into dw_parts[p], db_parts[p], then writes its band of dx rows. One region
    instead of two saves a wake-up of the sleeping worker threads (kernels/threads.py), a
    visible share of the small layers' backward (`python -m bench.conv
    g960mb8ic960ih7oc960oh7kh3ph1`); dy_m is dy as (N, OH, OW, 1, C)."""
    n_parts, c_all = dw_parts.shape[0], x.shape[3]
    rows_dy, rows_dx = dy.shape[0] * dy.shape[1], dx.shape[0] * dx.shape[1]
    pt, pl = 2 * dh - dx_pt, 2 * dw - dx_pl  # the forward's padding
    for p in prange(n_parts):
        sums = np.zeros(10 * c_all, dtype=dw_parts.dtype)
        t_first, t_end = p * rows_dy // n_parts, (p + 1) * rows_dy // n_parts
        dw3x3_rows(x, dy_m, 1, 1, pt, pl, dh, dw, t_first, t_end, sums)
        for tap in range(9):
            dw_parts[p, tap // 3, tap % 3, 0] += sums[tap * c_all : (tap + 1) * c_all]
        db_parts[p, 0] += sums[9 * c_all :]
        t_first, t_end = p * rows_dx // n_parts, (p + 1) * rows_dx // n_parts
        if vec:
            forward3x3_vec_rows(
                dy, w_turned, no_bias, 1, 1, dx_pt, dx_pl, dh, dw, dx, t_first, t_end
            )
        else:
            forward3x3_rows(dy, w_turned, no_bias, 1, 1, dx_pt, dx_pl, dh, dw, dx, t_first, t_end)


# ------------------------------------------------------------ one output row as one long vector
#
# With one output channel per input channel (M = 1) and stride 1 along the width, a row of the
# output, (OW, C) flattened, gets each tap (i, j) as one shifted contiguous slice of an input row
# times the tap's weights repeated along the row: a loop as long as the row, not C long. For the
# few-channel layers (MobileNetV2's 112x112x32) a per-pixel loop C = 32 long spends its time
# entering and leaving loops too short to vectorise fully. Rows are cut into blocks of
# block_pixels pixels (block_pixels * C about ROW_BLOCK values) so that the weights, repeated
# over one block for all KH*KW taps, stay in L1 cache. Chosen by interleaved one-thread A/B of
# the forward at batch 8, 3x3 stride 1: rows win at 32 channels (`python -m bench.conv
# g32mb8ic32ih112oc32oh112kh3ph1`), the per-pixel kernel from 64 (`g64mb8ic64ih56oc64oh56kh3ph1`,
# `g128mb8ic128ih56oc128oh56kh3ph1`), hence ROWS_MAX_CHANNELS. Fusing a row's three taps into one
# loop was slower still, and so was dW in row form (B*C partial sums per tap): dW stays per pixel.
ROW_BLOCK = 256
ROWS_MAX_CHANNELS = 32


def rows_apply(g: ConvGeometry) -> bool:
    """True when forward_rows_kernel runs geometry g's forward (and, at stride 1, its dX):
    channel multiplier 1, stride 1 along the width, at most ROWS_MAX_CHANNELS channels."""
    return g.c_out == g.c_in <= ROWS_MAX_CHANNELS and g.sw == 1


def block_pixels(c: int) -> int:
    """Pixels per row block for c channels (see ROW_BLOCK)."""
    return max(1, ROW_BLOCK // c)


def tiled_weights(wt: np.ndarray, block: int, flip: bool = False) -> np.ndarray:
    """wt (KH, KW, 1, C) -> (KH, KW, block*C), each tap's weights repeated `block` times; with
    `flip` the kernel is turned by 180 degrees (dX's full correlation)."""
    if flip:
        wt = wt[::-1, ::-1]
    kh, kw, _, c = wt.shape
    return np.ascontiguousarray(np.tile(wt.reshape(kh, kw, c), (1, 1, block)))


@njit(**_JIT)
def forward_rows_kernel(x, w_tiled, bias_tiled, sh, pt, pl, dh, dw, out):
    """out (N, OH, OW, C) = bias + the depthwise correlation of x (N, H, W, C), stride (sh, 1):
    tap (i, j) of output (oh, ow) reads x[oh*sh - pt + i*dh, ow - pl + j*dw]. w_tiled
    (KH, KW, B*C) and bias_tiled (B*C,) repeat the weights and bias over a block of B pixels."""
    n, height, width, c_all = x.shape
    kh, kw, block_len = w_tiled.shape
    out_h, out_w = out.shape[1], out.shape[2]
    block = block_len // c_all
    for t in prange(n * out_h):
        ni, oh = t // out_h, t % out_h
        out_row = out[ni, oh].reshape(out_w * c_all)
        for p0 in range(0, out_w, block):
            p1 = min(p0 + block, out_w)
            base = p0 * c_all
            for k in range((p1 - p0) * c_all):
                out_row[base + k] = bias_tiled[k]
            for i in range(kh):
                r = oh * sh - pt + i * dh
                if r < 0 or r >= height:
                    continue
                x_row = x[ni, r].reshape(width * c_all)
                for j in range(kw):
                    # output pixels of this block whose tap (i, j) lies inside the row
                    lo, hi = max(p0, pl - j * dw), min(p1, width + pl - j * dw)
                    if lo >= hi:
                        continue
                    # slices, so every index below counts up from 0: an index that might be
                    # negative (k + shift) costs a wraparound select per element, no vectors
                    start, stop, shift = lo * c_all, hi * c_all, (j * dw - pl) * c_all
                    out_seg = out_row[start:stop]
                    x_seg = x_row[start + shift : stop + shift]
                    taps = w_tiled[i, j, start - base : stop - base]
                    for k in range(stop - start):
                        out_seg[k] += x_seg[k] * taps[k]
