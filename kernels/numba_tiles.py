"""The numba backend's convolution for 16+ output channels: register tiles over NHWC (an
implicit GEMM).

With 16 or more channels a convolution is a matrix product in disguise. Flatten each sample's
zero-padded input to rows of W_p * C_in values; for output pixel (oh, ow) and kernel row kh, the
KW * C_in inputs it reads are one contiguous run of such a row, starting at ow * sw * C_in. So

    y[n, oh, ow, :] = b + sum over kh, j < KW*C_in of  x_rows[n, oh*sh + kh, ow*sw*C_in + j] * w2[kh, j, :]

with w2 = w reshaped to (KH, KW*C_in, C_out): a product of the (never materialised) im2col
matrix with w2. The kernels below compute it in tiles of TILE output pixels x LANES output
channels (5 x 16 float32 = ten AVX2 registers). Per step j of the reduction a tile loads LANES
weights once and each pixel's input once, and does TILE x LANES multiply-adds on values that
stay in registers until the tile is finished. On the `mid`, `stride2` and `deep_conv2`
benchmark cases' forward this runs near numpy's matmul peak per core (the report's layer table
gives GFLOP/s and % peak), where the loops of kernels/numba_conv.py are bound by loads and
stores of their output planes.

    forward(x, y, wk, bias, sh, sw, ph, pw)     y = conv(x) + bias, as above (wk: w2 with each
                                                tile's channels packed, pack_columns)
    dx for stride 1                             forward() again: the gradient of a stride-1
                                                convolution is the "full" correlation of dy
                                                with the flipped kernel, C_in and C_out swapped
    dx_phases(dy, dx, wp, kh, kw, sh, sw, ph, pw)
                                                dx for stride > 1: one stride-1 correlation
                                                of dy per phase (dx pixel modulo the stride)
                                                with the taps that reach that phase
    dx_cols(dy, dx, wt, kh, sh, sw, ph, pw)     dx otherwise (8-15 input channels, phases
                                                under TILE wide): per sample dcols = dy @ w2.T
                                                (register tiles), each pixel's runs added back
                                                into the rows they came from (col2im)
    dw_tiles(x, dy, dw, db, sh, sw, ph, pw)     dW = im2col(x).T @ dy: tiles of DW_TILE run
                                                entries x LANES channels, summed over pixels;
                                                db = dy summed over pixels (a wide 1x1
                                                layer's: kernels/pointwise_dw.py)
    forward_maxpool2(x, y, argmax, w2, bias, sh, sw, ph, pw)
                                                forward() and a 2x2 max-pool of stride 2 in one
                                                pass: a tile is one pooling window

Each kernel copies one sample at a time into zero-padded scratch rows (and dx_cols writes
into such rows and copies the interior out), so the padded copy stays in L2.

Where a tile would run past the last pixel (or channel) it is moved back to end there: forward
recomputes a few outputs (the same values, written twice); the accumulating kernels skip what
an earlier tile already added.

Two numba details make the tiles work:
- The tile lives in a stack array (stack_array). A numpy array is heap memory LLVM cannot keep in
  registers; a fixed-size stack array whose every index is a constant after the tile loops are
  unrolled is promoted to registers.
- LLVM's SLP vectoriser turns the unrolled LANES scalar multiply-adds of a pixel into vector
  instructions. numba switches it off by default; the kernels here are compiled with it on
  (slp_vectorize()). Without it they compile to scalar code, an order of magnitude slower.
  fastmath is "contract" only: with "reassoc" LLVM vectorises the reduction axis instead
  (gathers, several times slower).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import gemm, isa
from .geometry import ConvGeometry
from .vector_width import full_width

TILE = 5  # output pixels per tile (dX by phases or columns, matmul_tiles)
LANES = 16  # channels per tile: two AVX2 vectors of float32
# forward()'s tile, chosen for the machine's vector registers (every kernel here is compiled for
# the full vector width: kernels/vector_width.py): a tile of FORWARD_TILE pixels x lanes channels
# holds FORWARD_TILE * lanes * 4 / (vector bytes) float32 accumulators, plus the weight vectors
# of one step and a broadcast input. AVX2's 16 ymm registers fit 5 x 16 (10 accumulators);
# AVX-512's 32 zmm fit 7 x 16 and 7 x 32 (14), which load each weight vector once per 7 pixels
# instead of 5 and each input once per 32 channels instead of 16 (the `mid`, `deep_conv2` and
# `big` benchmark cases' forward; their dX by forward() at stride 1). 14 x 32 spills: slower on
# all three.
VECTOR_REGISTERS = 32 if isa.vector_bits() >= 512 else 16
FORWARD_TILE = 7 if VECTOR_REGISTERS >= 32 else TILE
WIDE_LANES = 2 * LANES if VECTOR_REGISTERS >= 32 else LANES
# dw_tiles' tile: DW_TILE patch entries x LANES channels, one accumulator register per entry with
# AVX-512 (12 of its 32 registers; the `big`, `deep_conv2` and `mid` cases' backward-weights
# against a tile of 6), two per entry with AVX2 (6 entries fill 12 of its 16).
DW_TILE = 12 if VECTOR_REGISTERS >= 32 else 6
DW_VALUES = DW_TILE * LANES
L2_BYTES = isa.l2_bytes()  # a compile-time constant of the kernels that block for it
# dw_tiles' band for a 1x1 kernel whose output row fits it: about an L1 data cache (32-48 KiB
# on AVX2 and AVX-512 cores). Its pixels share no input, so every tile reads each pixel's input
# line afresh, and from L2 a band of the L2 budget runs at a third of the speed on ResNet-50's
# 56x56 64 -> 256 layer's dW (`bench.conv --set resnet50 --layers res2a_branch2c`,
# backward-weights). With rows wider than it (hundreds of input channels: `--layers
# res4b_branch2a`) the L2 band stays faster.
POINTWISE_BAND_BYTES = 32 << 10

# The tiled backward (dW, dX) takes a geometry with at least this many input channels; below it
# the plane kernels of kernels/numba_conv.py are faster there (the `small_conv` and `deep_conv1`
# cases have 1 input channel, `lab_fit` 3), while the tiled forward wins from one input channel
# on (the `deep_conv1` case's forward, bench.conv mb64ic1ih28oc32kh3ph1).
MIN_C_IN = 8

# Serial kernels that release the GIL: the caller runs one per core on blocks of samples
# (kernels/gemm.py's thread pool). numba's prange is not used here: a parallel kernel loaded from
# numba's on-disk cache ran these tiles at about half the speed of the freshly compiled one (the
# `mid` benchmark case's forward on 1 thread), a serial one at full speed.
JIT_OPTIONS: dict[str, Any] = dict(cache=True, nogil=True, fastmath={"contract"})


def forward_applies(g: ConvGeometry) -> bool:
    """True when forward() runs geometry g: the tiles' LANES output channels and FORWARD_TILE
    output columns fit."""
    return g.c_out >= LANES and g.out_w >= FORWARD_TILE


def forward_for(channels: int) -> Any:
    """The forward() kernel for an output of `channels` channels (C_out, or C_in when it runs
    dX): the WIDE_LANES tile where that many channels fill it, else the LANES one."""
    return forward_wide if channels >= WIDE_LANES else forward


def forward_lanes(channels: int) -> int:
    """The channels per tile of forward_for(channels): what its weights are packed for."""
    return WIDE_LANES if channels >= WIDE_LANES else LANES


def pack_columns(w2: np.ndarray, lanes: int) -> np.ndarray:
    """w2 (..., K, C) -> (blocks, ..., K, lanes): block b holds columns cb .. cb + lanes - 1 of
    w2, cb = min(b * lanes, C - lanes) (the last block moved back to end at the last column,
    as the tiles are), contiguous, so a tile streams its weights in order.

    Read in place, a tile's weights are lanes columns of rows C values apart: with C a power of
    two of a thousand or more (ResNet-50's 1024 and 2048 channels) those rows fall into a few
    cache sets and every tile reads them from L3 (`python -m bench.conv --set resnet50 --mb 8
    --layers res5a_branch1 --backends numba`: its forward at about half the speed of the same
    layer with 16 more channels)."""
    c = w2.shape[-1]
    blocks = -(-c // lanes)
    if c == lanes:
        return np.ascontiguousarray(w2)[None]
    if c % lanes == 0:
        split = w2.reshape(*w2.shape[:-1], blocks, lanes)
        return np.ascontiguousarray(np.moveaxis(split, -2, 0))
    packed = np.empty((blocks, *w2.shape[:-1], lanes), dtype=w2.dtype)
    whole = c - c % lanes
    packed[:-1] = np.moveaxis(w2[..., :whole].reshape(*w2.shape[:-1], blocks - 1, lanes), -2, 0)
    packed[-1] = w2[..., c - lanes :]
    return packed


def backward_applies(g: ConvGeometry) -> bool:
    """True when dw_tiles and dX by forward() or dx_cols() run geometry g (which forward()
    also runs): MIN_C_IN input channels, a patch of at least LANES values (dx_cols' tiles run
    along it) and a KW*C_in run of at least DW_TILE (dw_tiles' do)."""
    return (
        forward_applies(g)
        and g.c_in >= MIN_C_IN
        and g.kh * g.kw * g.c_in >= LANES
        and g.kw * g.c_in >= DW_TILE
    )


def dx_by_forward(g: ConvGeometry) -> bool:
    """True when dX is forward() on dy rather than dx_cols(): stride 1 (dX is then a stride-1
    convolution), C_in fills the tiles' lanes and W their pixels, and the padding is at most
    the kernel's size - 1 (so dy's padding for the full correlation is not negative)."""
    return (
        (g.sh, g.sw) == (1, 1)
        and g.c_in >= LANES
        and g.width >= FORWARD_TILE
        and g.ph < g.kh
        and g.pw < g.kw
    )


def run_blocks(
    kernel: Any,
    n_parts: int,
    blocked: tuple[np.ndarray, ...],
    *args: Any,
    sums: tuple[tuple[int, ...], ...] = (),
    dtype: Any = None,
    loop_vectorize: bool = True,
) -> list[np.ndarray]:
    """kernel(*(a[lo:hi] for a in blocked), *accumulators, *args) for n_parts blocks lo:hi of
    the samples (the leading axis) at once, on kernels/gemm.py's thread pool, compiled with the
    SLP vectoriser on (the kernels here are serial and release the GIL).

    sums: the shapes of accumulators the kernel adds into (dW, db): each block gets its own,
    zeroed, in `dtype`, so threads never share one; returned summed over the blocks.
    loop_vectorize: False compiles the kernel with LLVM's loop vectoriser off (slp_vectorize)."""
    n = blocked[0].shape[0]
    parts = [np.zeros((n_parts, *shape), dtype=dtype) for shape in sums]
    pieces = [
        tuple(a[lo:hi] for a in blocked) + tuple(p[i] for p in parts) + args
        for i, (lo, hi) in enumerate(gemm.split_bounds(n, n_parts))
    ]
    with slp_vectorize(loop_vectorize):
        gemm.run_pieces(kernel, pieces)
    return [p.sum(axis=0) for p in parts]


_SLP_LOCK = threading.RLock()


@contextlib.contextmanager
def slp_vectorize(loop_vectorize: bool = True) -> Iterator[None]:
    """Compile (on first call) with LLVM's SLP vectoriser on, and the loop vectoriser on or off;
    numba's config is global, so it is switched back afterwards and the lock keeps two threads
    from interleaving the switch.

    The loop vectoriser off: with AVX-512's gathers and scatters its cost model vectorises a
    register tile's reduction loop across the tile's rows instead, a masked gather and scatter
    of the tile per multiply-add, and the tile never reaches registers (winograd_tiles' dW tiles:
    `python -m bench.conv mb8ic64ih56oc64oh56kh3ph1` backward-weights, a small fraction of the
    matmul peak with the loop vectoriser on). AVX2 has no scatter,
    so the SLP vectoriser alone handled these loops there."""
    config: Any = numba.core.config
    with _SLP_LOCK:
        before = config.SLP_VECTORIZE, config.LOOP_VECTORIZE
        config.SLP_VECTORIZE = 1
        config.LOOP_VECTORIZE = int(loop_vectorize)
        try:
            yield
        finally:
            config.SLP_VECTORIZE, config.LOOP_VECTORIZE = before


def _stack_array_typing(typingctx, count, dtype):
    """stack_array(count, dtype): a pointer to `count` (a literal int) uninitialised values of
    `dtype` on the stack (numba intrinsic: typing here, the alloca in codegen)."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    n_values, element = count.literal_value, dtype.dtype

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(element), size=n_values)

    return types.CPointer(element)(count, dtype), codegen


stack_array: Any = intrinsic(prefer_literal=True)(_stack_array_typing)


@njit(**JIT_OPTIONS)
def _padded_rows(a, ph, pw):
    """Scratch rows for one sample of a (N, H, W, C): (H + 2*ph, (W + 2*pw) * C), zero borders.

    Each sample is copied into it just before its tiles read it (load_sample), so the padded
    copy is one sample (kilobytes, in L2) rather than the whole batch, and the ctx keeps x as
    given."""
    return np.zeros((a.shape[1] + 2 * ph, (a.shape[2] + 2 * pw) * a.shape[3]), dtype=a.dtype)


@njit(**JIT_OPTIONS)
def sample_rows(sample, rows, ph, pw):
    """The padded rows of sample (H, W, C) to read: with no padding the sample itself as
    (H, W*C), not copied (ResNet's 1x1 layers, `bench.conv --set resnet50 --layers branch2a`,
    whose whole runtime the copy would add to); otherwise copied into rows (load_sample)."""
    if ph == 0 and pw == 0:
        return sample.reshape((sample.shape[0], sample.shape[1] * sample.shape[2]))
    load_sample(sample, rows, ph, pw)
    return rows


@njit(**JIT_OPTIONS)
def load_sample(sample, rows, ph, pw):
    """Copy sample (H, W, C) into the interior of its padded rows (from _padded_rows)."""
    height, width, c = sample.shape
    for r in range(height):
        src = sample[r].ravel()
        dst = rows[r + ph, pw * c : pw * c + width * c]
        for k in range(width * c):
            dst[k] = src[k]


# forward()'s weight columns (KH*KW*C_in values per output channel) are read once per tile of
# output pixels; where all of them exceed this, the output channels run in groups whose columns
# stay in L2 while every pixel of the samples passes (ResNet-50's res5a_branch1, 1024 -> 2048
# channels, 8 MB of weights: `python -m bench.conv --set resnet50 --mb 8 --layers res5
# --backends numba`, forward; and the dX by forward() of the same layers).
WEIGHT_GROUP_BYTES = L2_BYTES // 2


@njit(inline="always", **JIT_OPTIONS)
def weight_group(column_bytes, lanes, c_out):
    """Output channels per group of forward(): as many tiles of `lanes` channels as keep their
    weight columns (column_bytes each) within WEIGHT_GROUP_BYTES, at least one tile; all of
    c_out when everything fits."""
    tiles = max(1, WEIGHT_GROUP_BYTES // (column_bytes * lanes))
    return min(tiles * lanes, c_out)


def _forward_kernel(pixels: int, lanes: int) -> Any:
    """forward() compiled for tiles of `pixels` output pixels x `lanes` output channels (both
    constants of the compiled kernel: the tile must be a fixed-size stack array)."""
    values = pixels * lanes

    @njit(inline="always", **JIT_OPTIONS)
    def _forward_group(sample, padded, y_sample, wk, bias, sh, ph, pw, step, size, tile, g0, group):
        """forward()'s tiles of one sample and output channels g0 .. g0 + group - 1."""
        out_h, out_w, c_out = y_sample.shape
        kh_all, run = wk.shape[1], wk.shape[2]
        rows = sample_rows(sample, padded, ph, pw)
        for oh in range(out_h):
            for ow0 in range(0, out_w, pixels):
                first = min(ow0, out_w - pixels)  # the last tile ends at the last pixel
                for c0 in range(g0, min(g0 + group, c_out), lanes):
                    cb = min(c0, c_out - lanes)
                    for p in range(pixels):
                        for c in range(lanes):
                            tile[p, c] = bias[cb + c]
                    for kh in range(kh_all):
                        # the tile's pixels' input runs: strided rows of one view, so every index
                        # below is a non-negative loop counter (no wraparound code, which stops
                        # vectorising)
                        runs = np.lib.stride_tricks.as_strided(
                            rows[oh * sh + kh, first * step :],
                            (pixels, run),
                            (step * size, size),
                        )
                        w_rows = wk[c0 // lanes, kh]
                        for j in range(run):
                            w_row = w_rows[j]
                            for p in range(pixels):
                                a = runs[p, j]
                                for c in range(lanes):
                                    tile[p, c] += a * w_row[c]
                    for p in range(pixels):
                        out = y_sample[oh, first + p, cb : cb + lanes]
                        for c in range(lanes):
                            out[c] = tile[p, c]

    @njit(**JIT_OPTIONS)
    def forward(x, y, wk, bias, sh, sw, ph, pw):
        """y (N, OH, OW, C_out) = bias (C_out,) + x (N, H, W, C_in) zero-padded by (ph, pw) and
        convolved with w2 (KH, KW*C_in, C_out), in pixels x lanes register tiles; wk is w2
        packed by pack_columns(w2, lanes): (blocks, KH, KW*C_in, lanes).

        Needs OW >= pixels and C_out >= lanes (see forward_applies). Every tile reads its
        channels' whole weight columns, so with more weights than half of L2 the output
        channels are taken in groups whose columns fit it (weight_group), each group over
        all the samples (see WEIGHT_GROUP_BYTES)."""
        full_width()
        n, out_h, out_w, c_out = y.shape
        kh_all, run = wk.shape[1], wk.shape[2]
        c_in = x.shape[3]
        padded = _padded_rows(x, ph, pw)
        step, size = sw * c_in, x.itemsize
        tile = carray(stack_array(values, y.dtype), (pixels, lanes))
        group = weight_group(kh_all * run * size, lanes, c_out)
        for g0 in range(0, c_out, group):
            for ni in range(n):
                _forward_group(
                    x[ni], padded, y[ni], wk, bias, sh, ph, pw, step, size, tile, g0, group
                )

    return forward


forward = _forward_kernel(FORWARD_TILE, LANES)
forward_wide = _forward_kernel(FORWARD_TILE, WIDE_LANES)


@njit(**JIT_OPTIONS)
def matmul_tiles(a, b, out):
    """out (M, N) = a (M, K) @ b (K, N), in TILE x LANES register tiles (M >= TILE, N >= LANES);
    a tile past the last row or column is moved back and recomputes what it overlaps."""
    full_width()
    m, k = a.shape
    n = b.shape[1]
    tile = carray(stack_array(80, out.dtype), (TILE, LANES))
    for r0 in range(0, m, TILE):
        rb = min(r0, m - TILE)
        rows = a[rb : rb + TILE]
        for c0 in range(0, n, LANES):
            cb = min(c0, n - LANES)
            for p in range(TILE):
                for c in range(LANES):
                    tile[p, c] = 0
            for j in range(k):
                b_row = b[j, cb : cb + LANES]
                for p in range(TILE):
                    x = rows[p, j]
                    for c in range(LANES):
                        tile[p, c] += x * b_row[c]
            for p in range(TILE):
                o = out[rb + p, cb : cb + LANES]
                for c in range(LANES):
                    o[c] = tile[p, c]


@njit(**JIT_OPTIONS)
def dx_cols(dy, dx, wt, kh_all, sh, sw, ph, pw):
    """dx (N, H, W, C_in) for any stride: per sample, dcols = dy (OH*OW, C_out) @ wt (C_out,
    KH*KW*C_in) in register tiles, then each pixel's KH runs of KW*C_in values of dcols added
    back into the zero-padded input rows they came from (col2im), and the padding cut off.

    dcols holds one sample (tens of kilobytes, in L2). Needs OH*OW >= TILE and
    KH*KW*C_in >= LANES."""
    full_width()
    n, out_h, out_w, c_out = dy.shape
    height, width, c_in = dx.shape[1], dx.shape[2], dx.shape[3]
    run = wt.shape[1] // kh_all
    step = sw * c_in
    rows = _padded_rows(dx, ph, pw)
    dcols = np.empty((out_h * out_w, wt.shape[1]), dtype=dx.dtype)
    for ni in range(n):
        matmul_tiles(dy[ni].reshape(out_h * out_w, c_out), wt, dcols)
        rows[:] = 0
        for oh in range(out_h):
            for ow in range(out_w):
                pixel = dcols[oh * out_w + ow]
                for kh in range(kh_all):
                    src = pixel[kh * run : (kh + 1) * run]
                    dst = rows[oh * sh + kh, ow * step : ow * step + run]
                    for j in range(run):
                        dst[j] += src[j]
        for r in range(height):
            src = rows[r + ph, pw * c_in : (pw + width) * c_in]
            dst = dx[ni, r].ravel()
            for k in range(width * c_in):
                dst[k] = src[k]


@njit(**JIT_OPTIONS)
def dw_tiles(x, dy, dw, db, sh, sw, ph, pw):
    """dw (KH, KW*C_in, C_out) and db (C_out,), zeroed, += the sums over the samples of the
    input runs of x (N, H, W, C_in) zero-padded by (ph, pw) times dy (N, OH, OW, C_out), and of dy.

    Tiles of DW_TILE run entries x LANES output channels, each summed over a band of output
    rows of one sample. The channel block is the outer loop within a band: its LANES columns of
    the band's dy, and the input lines the tiles of one kernel row share, stay in L1 while every
    tile reads them. The band (dw_band_rows) keeps its input rows in L2 while all the tiles
    pass over them: a whole 224x224 sample's rows (`vgg16:conv1_2`, 13 MB at 64 channels) were
    read from memory once per tile column, 8-15x slower than the same work on a 56x56 plane.
    Needs KW*C_in >= DW_TILE and C_out >= LANES (see backward_applies)."""
    full_width()
    n, out_h, out_w, c_out = dy.shape
    kh_all, run, _ = dw.shape
    c_in = x.shape[3]
    padded = _padded_rows(x, ph, pw)
    size = x.itemsize
    strides = (sh * padded.shape[1] * size, sw * c_in * size, size)
    band = dw_band_rows(padded.shape[1] * size, sh, out_w * LANES * size, kh_all * run == c_in)
    for ni in range(n):
        rows = sample_rows(x[ni], padded, ph, pw)
        for oh in range(out_h):
            for ow in range(out_w):
                g = dy[ni, oh, ow]
                for c in range(c_out):
                    db[c] += g[c]
        for r0 in range(0, out_h, band):
            _dw_band(rows, dy[ni, r0 : min(r0 + band, out_h)], dw, r0 * sh, strides)


@njit(inline="always", **JIT_OPTIONS)
def dw_band_rows(row_bytes, sh, dy_row_bytes, pointwise):
    """Output rows per band of dw_tiles: as many as keep the band's input rows (sh per output
    row, row_bytes each) and its dy columns of one channel block in half of a core's L2, or
    for a 1x1 kernel (pointwise) whose output row fits it, in POINTWISE_BAND_BYTES."""
    per_row = sh * row_bytes + dy_row_bytes
    budget = (
        POINTWISE_BAND_BYTES if pointwise and per_row <= POINTWISE_BAND_BYTES else L2_BYTES // 2
    )
    return max(1, budget // per_row)


@njit(inline="always", **JIT_OPTIONS)
def _dw_band(rows, dy_band, dw, row0, strides):
    """dw += the tiles of dw_tiles over one band: dy_band (rows, OW, C_out) of one sample,
    whose first output row reads padded input row row0 + kh."""
    out_h, out_w, c_out = dy_band.shape
    kh_all, run, _ = dw.shape
    tile = carray(stack_array(DW_VALUES, dy_band.dtype), (DW_TILE, LANES))
    for c0 in range(0, c_out, LANES):
        cb = min(c0, c_out - LANES)
        for kh in range(kh_all):
            for j0 in range(0, run, DW_TILE):
                jb = min(j0, run - DW_TILE)
                # entries jb .. jb+DW_TILE-1 of every pixel's run, indexed (oh, ow, entry)
                inputs = np.lib.stride_tricks.as_strided(
                    rows[row0 + kh, jb:], (out_h, out_w, DW_TILE), strides
                )
                for e in range(DW_TILE):
                    for c in range(LANES):
                        tile[e, c] = 0
                for oh in range(out_h):
                    for ow in range(out_w):
                        g = dy_band[oh, ow, cb : cb + LANES]
                        for e in range(DW_TILE):
                            a = inputs[oh, ow, e]
                            for c in range(LANES):
                                tile[e, c] += a * g[c]
                add_dw_tile(dw[kh], tile, jb, j0, cb, c0)


@njit(inline="always", **JIT_OPTIONS)
def add_dw_tile(dw_rows, tile, jb, j0, cb, c0):
    """dw_rows (entries, C_out) += tile (DW_TILE, LANES), the tile's entries starting at jb and
    its channels at cb; a tile moved back from j0 (c0) to fit the end of the entries (channels)
    adds only what no earlier tile added."""
    if jb == j0 and cb == c0:
        for e in range(DW_TILE):
            out = dw_rows[jb + e, cb : cb + LANES]
            for c in range(LANES):
                out[c] += tile[e, c]
    else:
        for e in range(DW_TILE):
            if jb + e >= j0:
                for c in range(LANES):
                    if cb + c >= c0:
                        dw_rows[jb + e, cb + c] += tile[e, c]


@njit(**JIT_OPTIONS)
def dx_phases(dy, dx, wp, kh_all, kw_all, sh, sw, ph, pw):
    """dx (N, H, W, C_in) for stride > 1, phase by phase: the dx pixels (r, c) with
    (r + ph) % sh == a and (c + pw) % sw == b receive gradient only from the kernel taps
    (a + sh*t, b + sw*u), so they are a stride-1 correlation of dy with that sub-kernel:

        dx[sh*R + a - ph, sw*C + b - pw] = sum over t < T_a, u < T_b of
                                           dy[R - t, C - u] @ w[a + sh*t, b + sw*u].T

    with T_a = ceil((KH - a) / sh) taps (T_b likewise). Each phase runs the forward's register
    tiles over its own grid (R, C) and writes its pixels straight into dx: no column matrix and
    no scatter-add, and the sh*sw phases do exactly the direct convolution's multiply-adds.

    wp (sh, sw, blocks, TH, TW*C_out, LANES): phase (a, b)'s flipped sub-kernel, rows t' =
    T_a-1-t and runs of u' = T_b-1-u blocks of C_out, its C_in columns packed LANES at a time
    (phase_kernels builds it; unused entries are never read). dy is copied per sample into zero-padded rows, TH-1 rows above and TW-1 pixels left.
    Needs C_in >= LANES and every phase TILE or more columns wide (see phases_apply). With
    more weights than WEIGHT_GROUP_BYTES the input channels run in groups, as in forward()
    (ResNet-50's res5a_branch1 backward-data)."""
    full_width()
    n, out_h, out_w, c_out = dy.shape
    height, width, c_in = dx.shape[1], dx.shape[2], dx.shape[3]
    th, tw = wp.shape[3], wp.shape[4] // c_out
    size = dy.itemsize
    last_r = (height - 1 + ph) // sh  # the largest R (or C) of any phase
    last_c = (width - 1 + pw) // sw
    rows = np.zeros((max(out_h, last_r + 1) + th, (max(out_w, last_c + 1) + tw) * c_out), dy.dtype)
    tile = carray(stack_array(80, dx.dtype), (TILE, LANES))
    group = weight_group(th * tw * c_out * size, LANES, c_in)  # see WEIGHT_GROUP_BYTES
    for g0 in range(0, c_in, group):
        for ni in range(n):
            load_sample(dy[ni], rows, th - 1, tw - 1)
            for a in range(sh):
                taps_h = (kh_all - a + sh - 1) // sh
                r_first = max(0, (ph - a + sh - 1) // sh)
                r_last = (height - 1 + ph - a) // sh
                for b in range(sw):
                    taps_w = (kw_all - b + sw - 1) // sw
                    c_first = max(0, (pw - b + sw - 1) // sw)
                    c_last = (width - 1 + pw - b) // sw
                    run = taps_w * c_out
                    w_phase = wp[a, b]  # (blocks, TH, TW*C_out, LANES)
                    for big_r in range(r_first, r_last + 1):
                        line = big_r + th - taps_h  # padded row of the phase's first tap row
                        out_rows = dx[ni, sh * big_r + a - ph]
                        for col0 in range(c_first, c_last + 1, TILE):
                            first = min(col0, c_last + 1 - TILE)
                            start = (first + tw - taps_w) * c_out
                            for c0 in range(g0, min(g0 + group, c_in), LANES):
                                cb = min(c0, c_in - LANES)
                                for p in range(TILE):
                                    for c in range(LANES):
                                        tile[p, c] = 0
                                for t in range(taps_h):
                                    pixels = np.lib.stride_tricks.as_strided(
                                        rows[line + t, start:], (TILE, run), (c_out * size, size)
                                    )
                                    w_rows = w_phase[c0 // LANES, t]
                                    for j in range(run):
                                        w_row = w_rows[j]
                                        for p in range(TILE):
                                            v = pixels[p, j]
                                            for c in range(LANES):
                                                tile[p, c] += v * w_row[c]
                                for p in range(TILE):
                                    out = out_rows[sw * (first + p) + b - pw, cb : cb + LANES]
                                    for c in range(LANES):
                                        out[c] = tile[p, c]


def phase_kernels(w: np.ndarray, sh: int, sw: int) -> np.ndarray:
    """dx_phases' weights: w (KH, KW, C_in, C_out) -> (sh, sw, blocks, TH, TW*C_out, LANES),
    each tap's (C_out, C_in) matrix with its C_in columns packed LANES at a time as
    pack_columns packs them; TH = ceil(KH/sh), TW = ceil(KW/sw), and the entries a phase with
    fewer taps does not have are left unset (dx_phases never reads them)."""
    kh, kw, c_in, c_out = w.shape
    th, tw = -(-kh // sh), -(-kw // sw)
    blocks = -(-c_in // LANES)
    packed = np.empty((sh, sw, blocks, th, tw * c_out, LANES), dtype=w.dtype)
    _pack_phases(np.ascontiguousarray(w), sh, sw, packed)
    return packed


@njit(**JIT_OPTIONS)
def _pack_phases(w, sh, sw, packed):
    """phase_kernels' packing in one pass over w, written in order: packed[a, b, block, t', u' *
    C_out + o, lane] = w[a + sh*t, b + sw*u, cb + lane, o] for phase (a, b)'s taps (t, u),
    t' = T_a - 1 - t, u' = T_b - 1 - u (the sub-kernel turned), cb = min(block * LANES, C_in -
    LANES). Built with numpy (zeros, a turned transposed view, then packing) it took longer
    than dx_phases itself on ResNet-50's res5a_branch1 (8 MB of weights)."""
    kh, kw, c_in, c_out = w.shape
    for a in range(sh):
        taps_h = (kh - a + sh - 1) // sh
        for b in range(sw):
            taps_w = (kw - b + sw - 1) // sw
            for t in range(taps_h):
                for u in range(taps_w):
                    tap = w[a + sh * t, b + sw * u]  # (C_in, C_out)
                    column = (taps_w - 1 - u) * c_out
                    for block in range(packed.shape[2]):
                        cb = min(block * LANES, c_in - LANES)
                        rows = packed[a, b, block, taps_h - 1 - t]
                        for o in range(c_out):
                            row = rows[column + o]
                            for lane in range(LANES):
                                row[lane] = tap[cb + lane, o]


def phases_apply(g: ConvGeometry) -> bool:
    """True when dx_phases runs geometry g's dX: stride > 1, C_in fills the tiles' lanes and
    every phase's grid is at least TILE columns wide."""
    if (g.sh, g.sw) == (1, 1) or g.c_in < LANES:
        return False
    return all(
        (g.width - 1 + g.pw - b) // g.sw - max(0, -(-(g.pw - b) // g.sw)) + 1 >= TILE
        for b in range(g.sw)
    )


@njit(**JIT_OPTIONS)
def forward_maxpool2(x, y, argmax, w2, bias, sh, sw, ph, pw):
    """forward() followed by a 2x2 max-pool of stride 2, in one pass: y, argmax (N, OH//2,
    OW//2, C_out) = each 2x2 window's maximum of the convolution (OH, OW its output's size) and
    the window index 2*i + j of the winner, exactly as kernels/numba_jit.py's 2x2 pool gives
    them (np.argmax's ties and NaN). The convolution's output is never written: each tile is
    one window, 2 x 2 pixels x LANES channels (eight AVX2 registers), its values the forward's
    to the bit (the same sums in the same order), reduced to the window's maximum in registers.

    Needs C_out >= LANES."""
    full_width()
    n, pooled_h, pooled_w, c_out = y.shape
    kh_all, run, _ = w2.shape
    c_in = x.shape[3]
    rows = _padded_rows(x, ph, pw)
    step, size = sw * c_in, x.itemsize
    strides = (sh * rows.shape[1] * size, step * size, size)
    tile = carray(stack_array(64, y.dtype), (4, LANES))
    window = carray(stack_array(64, y.dtype), (4, LANES))
    for ni in range(n):
        load_sample(x[ni], rows, ph, pw)
        for pr in range(pooled_h):
            for pq in range(pooled_w):
                for c0 in range(0, c_out, LANES):
                    cb = min(c0, c_out - LANES)
                    for k in range(4):
                        for c in range(LANES):
                            tile[k, c] = bias[cb + c]
                    for kh in range(kh_all):
                        # the window's input runs, indexed (conv row, conv column, entry)
                        pixels = np.lib.stride_tricks.as_strided(
                            rows[2 * pr * sh + kh, 2 * pq * step :], (2, 2, run), strides
                        )
                        w_rows = w2[kh]
                        for j in range(run):
                            w_row = w_rows[j, cb : cb + LANES]
                            for k in range(4):
                                a = pixels[k // 2, k % 2, j]
                                for c in range(LANES):
                                    tile[k, c] += a * w_row[c]
                    # copied out before the max: the copy's loops unroll to constant indices,
                    # the max's do not, and a tile read at a variable index would stay in memory
                    # (stored back on every step of the sums above)
                    for k in range(4):
                        for c in range(LANES):
                            window[k, c] = tile[k, c]
                    out = y[ni, pr, pq, cb : cb + LANES]
                    won = argmax[ni, pr, pq, cb : cb + LANES]
                    for c in range(LANES):
                        best = window[0, c]
                        which = 0
                        for k in range(1, 4):
                            v = window[k, c]
                            take = (v > best) | ((v != v) & (best == best))
                            best = v if take else best
                            which = k if take else which
                        out[c] = best
                        won[c] = which
