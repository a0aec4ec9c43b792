"""The winograd backend's fused F(2x2, 3x3) for many channels: one sample at a time, in cache.

kernels/winograd.py explains the algorithm. Its batched path transforms the whole batch, runs
one BLAS GEMM per tile position over every tile of the batch, and transforms the whole result
back: each stage streams megabytes through memory, so the transforms, not the multiplies, set its
speed (the `deep_conv2` benchmark case). Here the work stays in cache:

    forward(x, y, packed, bias, ph, pw)     per sample, per group of TILE tiles: input transform
                                            -> V (16, TILE, C_in); per block of LANES output
                                            channels, M[t] = V[t] @ U[t] for the 16 tile
                                            positions t (one register tile each), then the
                                            output transform of M -> y. V and M live in L1.
    dX                                      forward() again, on dy with the flipped kernel's
                                            transform (a 3x3 stride-1 full correlation)
    dw_tiles(x, dy, du, db, ph, pw)         per sample, per block of tile rows (in L2): V as
                                            above, dM = the adjoint output transform of dy,
                                            dU[t] += V[t]^T @ dM[t] in register tiles summed
                                            over the block's tiles; the caller turns dU into
                                            dW = G^T dU G

T = ceil(OH/2) * ceil(OW/2) tiles per sample. F(2x2) rather than F(4x4): its transforms have
entries 0, +-1 (and 1/2 in G), so float32 stays within a few ulps of the direct sum, and a
14x14 output splits into 7x7 whole tiles (F(4x4) computes 16x16 for it). Per sample the 16
GEMMs do 2.25x fewer multiply-adds than the direct convolution.

The kernels are serial and release the GIL: the caller runs one per core on blocks of samples
(kernels/gemm.py's pool), compiled with the SLP vectoriser on (numba_tiles.slp_vectorize).
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit

from . import isa
from .geometry import ConvGeometry
from .numba_tiles import JIT_OPTIONS, LANES, TILE, load_sample, stack_array

# input channels (K of the tile GEMMs) below which the tiles' reduction is too short to pay for
# the transforms; C_in and C_out also fill LANES (dX's GEMM has C_in outputs)
MIN_CHANNELS = LANES


# the share of a core's L2 the filter transform U (16, C_in, C_out) may fill for the fused path
L2_SHARE_FOR_U = 8

# input channels from which the batched path (BLAS GEMMs with K = C_in over every tile of the
# batch, its temporaries in reused scratch) beats the fused one, forward + backward, alternating
# processes: batched F(4x4) is faster at `mb8ic64ih56oc64oh56kh3ph1` (resnet50:res2a_branch2b),
# `mb32ic64ih32oc64oh32kh3ph1` (the `big` case), `mb8ic64ih28oc64oh28kh3ph1` and
# `mb64ic64ih14oc64oh14kh3ph1`, even with `mb8ic64ih224oc64oh224kh3ph1` (vgg16:conv1_2); with 32
# input channels the fused path is faster at `mb64ic32ih14oc64oh14kh3ph1` (the `deep_conv2` case)
# and even at `mb8ic32ih28oc32oh28kh3ph1`
MAX_C_IN = 4 * LANES


def applies(g: ConvGeometry) -> bool:
    """True when the fused F(2x2) runs geometry g (3x3, stride 1, checked by the caller):
    LANES channels in and out but fewer than MAX_C_IN in, U small enough for the cache
    (u_fits_cache), TILE tiles per sample, and padding of at most 2 (dX's full correlation pads
    dy by 2 - padding)."""
    tiles = -(-g.out_h // 2) * -(-g.out_w // 2)
    return (
        min(g.c_in, g.c_out) >= MIN_CHANNELS
        and g.c_in < MAX_C_IN
        and u_fits_cache(g.c_in, g.c_out, g.dtype.itemsize)
        and tiles >= TILE
        and g.height >= 2  # dX's output, computed as tiles too
        and g.width >= 2
        and -(-g.height // 2) * -(-g.width // 2) >= TILE
        and g.ph <= 2
        and g.pw <= 2
    )


def u_fits_cache(c_in: int, c_out: int, itemsize: int) -> bool:
    """True when the filter transform U (16, C_in, C_out) fills at most 1/L2_SHARE_FOR_U of a
    core's L2. forward() reads all of U for every TILE tiles, and dw_tiles adds into a dU as
    large for every block of tiles: only in cache do so few tiles per pass keep the multiplies
    busy. Past it the batched path's BLAS GEMMs over every tile of the batch run faster
    (forward + backward, one process, interleaved, on a 2 MB L2: `mb2ic64ih112oc128oh112kh3ph1`
    (U 512 KB), `mb8ic128ih28oc128oh28kh3ph1` (1 MB), `mb8ic256ih14oc256oh14kh3ph1`)."""
    return 16 * c_in * c_out * itemsize <= isa.l2_bytes() // L2_SHARE_FOR_U


# dw_tiles' tiles per block (whole rows of tiles, at least TILE tiles): the block's transformed
# input V and transformed gradient dM stay in L2 (V + M of 40 tiles at 64 channels:
# 320 KB), where a whole 32x32 sample's 256 tiles (the `big` benchmark case) would need 2 MB
BLOCK_TILES = 40


def plan(out_h: int, out_w: int, c_in: int, c_out: int, itemsize: int) -> tuple[int, int, int]:
    """dw_tiles' blocking for a (out_h, out_w) output: (rows of tiles per block,
    BLOCK_TILES // tw but at least enough for TILE tiles; the tiles to allocate per plane of
    the C_in-channel and the C_out-channel scratch, see _planes)."""
    tw = -(-out_w // 2)
    per_block = max(-(-TILE // tw), BLOCK_TILES // tw, 1)
    most = (per_block + TILE) * tw  # a block takes in a remainder of fewer than TILE tiles
    return per_block, _planes(most, c_in, itemsize), _planes(most, c_out, itemsize)


@njit(**JIT_OPTIONS)
def _block_end(i0, per_block, th, tw):
    """The end of the block of tile rows starting at i0; a remainder of fewer than TILE tiles
    joins this block (the GEMM tiles need TILE rows), so a block has < per_block + TILE rows."""
    i1 = min(i0 + per_block, th)
    if (th - i1) * tw < TILE:
        i1 = th
    return i1


@njit(**JIT_OPTIONS)
def _tile_rows(c, out_h, out_w, dtype_like):
    """Zeroed scratch rows for one sample's input tiles: (2*th + 2, (2*tw + 2) * c)."""
    th, tw = (out_h + 1) // 2, (out_w + 1) // 2
    return np.zeros((2 * th + 2, (2 * tw + 2) * c), dtype=dtype_like.dtype)


# channels per step of the transforms: one AVX2 vector of float32
VEC = 8

# Indices below are unsigned (U = uint64): numba adds wraparound code (for negative indices) to
# every signed index it cannot prove non-negative, and that code kept the transforms' loads and
# stores scalar; a slice per operand instead costs more than the arithmetic (the
# `deep_conv2` case's input transform).
U = np.uint64


def _planes(n_tiles: int, c: int, itemsize: int) -> int:
    """Tiles to allocate per plane of a (16, tiles, C) scratch: at least n_tiles, and a plane
    size that is not close to a multiple of 4 KB. The transforms write (or read) all 16 planes
    in one step; at a 4 KB multiple apart those accesses stall on cache aliasing (the `big`
    case's 64-channel planes make its input transform several times slower)."""
    tiles = n_tiles
    while min((tiles * c * itemsize) % 4096, 4096 - (tiles * c * itemsize) % 4096) < 256:
        tiles += 1
    return tiles


@njit(inline="always", **JIT_OPTIONS)
def _b_transpose_d_b(d, out):
    """out (16, VEC) = B^T d B for VEC 4x4 tiles d (16, VEC) (d is overwritten); B^T as in
    winograd.py."""
    for s in range(4):  # B^T d: rows 0 - 2, 1 + 2, 2 - 1, 1 - 3 (each a row of 4)
        for q in range(VEC):
            d0, d1, d2, d3 = d[s, q], d[4 + s, q], d[8 + s, q], d[12 + s, q]
            d[s, q], d[4 + s, q] = d0 - d2, d1 + d2
            d[8 + s, q], d[12 + s, q] = d2 - d1, d1 - d3
    for r in range(4):  # ... then B: the same on the columns
        for q in range(VEC):
            e0, e1 = d[4 * r, q], d[4 * r + 1, q]
            e2, e3 = d[4 * r + 2, q], d[4 * r + 3, q]
            out[4 * r, q], out[4 * r + 1, q] = e0 - e2, e1 + e2
            out[4 * r + 2, q], out[4 * r + 3, q] = e2 - e1, e1 - e3


@njit(**JIT_OPTIONS)
def _input_transform(rows, c_all, t0, count, tw, v):
    """v (16, >= count, C)[4r + s, p] = (B^T d B)[r, s] for the 4x4 tile d of tile t0 + p,
    p < count (tile t at tile row i = t // tw, column j = t % tw: rows 2i.. and columns 2j.. of
    rows ((2*th + 2), (2*tw + 2) * C)); B^T as in winograd.py. Needs C >= VEC.

    VEC channels at a time go through stack buffers (see numba_tiles.stack_array): LLVM knows
    they alias nothing, so the unrolled loads, sums and stores become vector instructions."""
    src, dst = rows.ravel(), v.ravel()
    pitch, cu, plane = U(rows.shape[1]), U(c_all), U(v.shape[1] * c_all)
    d = carray(stack_array(128, v.dtype), (16, VEC))
    out = carray(stack_array(128, v.dtype), (16, VEC))
    for p in range(count):
        i, j = divmod(t0 + p, tw)
        for c0 in range(0, c_all, VEC):
            cb = U(min(c0, c_all - VEC))  # a moved-back last step recomputes the same values
            for r in range(4):
                for s in range(4):
                    base = U(2 * i + r) * pitch + U(2 * j + s) * cu + cb
                    for q in range(VEC):
                        d[4 * r + s, q] = src[base + U(q)]
            _b_transpose_d_b(d, out)
            for k in range(16):
                base = U(k) * plane + U(p) * cu + cb
                for q in range(VEC):
                    dst[base + U(q)] = out[k, q]


def pack(u: np.ndarray) -> np.ndarray:
    """The filter transform u (16, C_in, C_out) as forward() reads it: (blocks, 16, C_in, LANES),
    block b holding channels min(b*LANES, C_out - LANES) onward (the last block is moved back to
    end at the last channel; its overlap is computed twice, to the same values). Needs C_out >=
    LANES."""
    c_out = u.shape[2]
    starts = [min(c0, c_out - LANES) for c0 in range(0, c_out, LANES)]
    return np.ascontiguousarray(np.stack([u[:, :, s : s + LANES] for s in starts]))


@njit(**JIT_OPTIONS)
def forward(x, y, packed, bias, ph, pw):
    """y (N, OH, OW, C_out) = bias + the 3x3 stride-1 convolution of x (N, H, W, C_in),
    zero-padded by (ph, pw), with the filter whose transform is packed (blocks, 16, C_in, LANES)
    (pack()). Needs TILE tiles per sample.

    A group of TILE tiles goes through all three stages before the next: its input transform
    (16, TILE, C_in), then per block of LANES output channels the 16 products (16, TILE, LANES)
    and their output transform. Both scratch arrays stay in L1 (20 KB and 5 KB at 64 channels),
    where whole rows of tiles at a time went through L2 (the `mid` and `big` benchmark cases)."""
    n, out_h, out_w, c_out = y.shape
    c_in = x.shape[3]
    tw = (out_w + 1) // 2
    n_tiles = (out_h + 1) // 2 * tw
    rows = _tile_rows(c_in, out_h, out_w, x)
    v = np.empty((16, TILE, c_in), dtype=x.dtype)
    mm = np.empty((16, TILE, LANES), dtype=x.dtype)
    for ni in range(n):
        load_sample(x[ni], rows, ph, pw)
        for g in range(0, n_tiles, TILE):
            g0 = min(g, n_tiles - TILE)  # a moved-back last group recomputes the same values
            _input_transform(rows, c_in, g0, TILE, tw, v)
            for blk in range(packed.shape[0]):
                _matmul_group(v, packed[blk], mm)
                _output_transform_group(mm, bias, min(blk * LANES, c_out - LANES), g0, tw, y[ni])


@njit(**JIT_OPTIONS)
def _matmul_group(v, u_block, mm):
    """mm (16, TILE, LANES)[t] = v[t] (TILE, C_in) @ u_block[t] (C_in, LANES) for the 16 tile
    positions t, each one TILE x LANES register tile (as numba_tiles.matmul_tiles)."""
    c_in = v.shape[2]
    tile = carray(stack_array(80, mm.dtype), (TILE, LANES))
    for t in range(16):
        rows, b = v[t], u_block[t]
        for p in range(TILE):
            for c in range(LANES):
                tile[p, c] = 0
        for j in range(c_in):
            b_row = b[j]
            for p in range(TILE):
                x = rows[p, j]
                for c in range(LANES):
                    tile[p, c] += x * b_row[c]
        out = mm[t]
        for p in range(TILE):
            o = out[p]
            for c in range(LANES):
                o[c] = tile[p, c]


@njit(**JIT_OPTIONS)
def _output_transform_group(mm, bias, cb, g0, tw, out):
    """out (OH, OW, C)[the 2x2 block of tile g0 + p, channels cb .. cb + LANES] = bias + A^T M A
    of the 4x4 mm (16, TILE, LANES)[:, p] (cut at the output's edge); A^T as in winograd.py."""
    out_h, out_w, c_all = out.shape
    src, dst = mm.ravel(), out.ravel()
    cu, pitch = U(c_all), U(out_w * c_all)
    m = carray(stack_array(128, out.dtype), (16, VEC))
    y = carray(stack_array(32, out.dtype), (4, VEC))
    for p in range(TILE):
        i, j = divmod(g0 + p, tw)
        rows_out, cols_out = min(2, out_h - 2 * i), min(2, out_w - 2 * j)
        for v0 in range(0, LANES, VEC):
            for k in range(16):
                base = U(k * TILE * LANES + p * LANES + v0)
                for q in range(VEC):
                    m[k, q] = src[base + U(q)]
            ch = U(cb + v0)
            for s in range(4):  # A^T M: rows 0 + 1 + 2 and 1 - 2 - 3 ...
                for q in range(VEC):
                    m0, m1, m2, m3 = m[s, q], m[4 + s, q], m[8 + s, q], m[12 + s, q]
                    m[s, q], m[4 + s, q] = m0 + m1 + m2, m1 - m2 - m3
            for r in range(2):  # ... then the same on the columns, plus the bias
                for q in range(VEC):
                    b = bias[ch + U(q)]
                    s0, s1 = m[4 * r, q], m[4 * r + 1, q]
                    s2, s3 = m[4 * r + 2, q], m[4 * r + 3, q]
                    y[2 * r, q], y[2 * r + 1, q] = b + (s0 + s1 + s2), b + (s1 - s2 - s3)
            for r in range(rows_out):
                for s in range(cols_out):
                    base = U(2 * i + r) * pitch + U(2 * j + s) * cu + ch
                    for q in range(VEC):
                        dst[base + U(q)] = y[2 * r + s, q]


@njit(**JIT_OPTIONS)
def _matmul_tn_tiles(a, b, out):
    """out (M, N) += a (T, M).T @ b (T, N) (M >= 6, N >= LANES), in register tiles of 6 (or 4)
    rows x LANES columns summed over T: _matmul_tn_exact for even M and N a multiple of LANES
    (the networks' channel counts), else _matmul_tn_moved_back."""
    if a.shape[1] % 2 == 0 and b.shape[1] % LANES == 0:
        _matmul_tn_exact(a, b, out)
    else:
        _matmul_tn_moved_back(a, b, out)


@njit(**JIT_OPTIONS)
def _matmul_tn_exact(a, b, out):
    """_matmul_tn_tiles for even M, N a multiple of LANES: 6-row tiles, then one or two 4-row
    tiles end exactly at M, so no tile needs a guard (a guarded add in a tile's loops keeps the
    tile in memory rather than registers, which slows the `mid` and `deep_conv2` cases' dW)."""
    m, n = a.shape[1], b.shape[1]
    m6 = m - m % 6 - (6 if m % 6 == 2 else 0)
    for c0 in range(0, n, LANES):
        for r0 in range(0, m6, 6):
            _tn_rows6(a, b, r0, c0, out, r0, c0)
        for r0 in range(m6, m, 4):
            _tn_rows4(a, b, r0, c0, out, r0, c0)


@njit(**JIT_OPTIONS)
def _matmul_tn_moved_back(a, b, out):
    """_matmul_tn_tiles for any M >= 6, N >= LANES: 6-row tiles; one past the last row or
    column is moved back, summed into `part`, and adds only what no earlier tile added."""
    m, n = a.shape[1], b.shape[1]
    part = np.empty((6, LANES), dtype=out.dtype)
    for c0 in range(0, n, LANES):
        cb = min(c0, n - LANES)
        for r0 in range(0, m, 6):
            rb = min(r0, m - 6)
            if rb == r0 and cb == c0:
                _tn_rows6(a, b, rb, cb, out, rb, cb)
            else:
                part[:] = 0
                _tn_rows6(a, b, rb, cb, part, 0, 0)
                for e in range(6):
                    if rb + e >= r0:
                        for c in range(LANES):
                            if cb + c >= c0:
                                out[rb + e, cb + c] += part[e, c]


@njit(inline="always", **JIT_OPTIONS)
def _tn_rows6(a, b, ra, cb, dst, dr, dc):
    """dst[dr:dr+6, dc:dc+LANES] += a[:, ra:ra+6].T @ b[:, cb:cb+LANES], in registers."""
    tile = carray(stack_array(96, dst.dtype), (6, LANES))
    for e in range(6):
        for c in range(LANES):
            tile[e, c] = 0
    for t in range(a.shape[0]):
        a_row, b_row = a[t], b[t]
        for e in range(6):
            x = a_row[ra + e]
            for c in range(LANES):
                tile[e, c] += x * b_row[cb + c]
    for e in range(6):
        o = dst[dr + e]
        for c in range(LANES):
            o[dc + c] += tile[e, c]


@njit(inline="always", **JIT_OPTIONS)
def _tn_rows4(a, b, ra, cb, dst, dr, dc):
    """_tn_rows6 for 4 rows: a copy, not a parameter, since stack_array needs its size as a
    literal when numba compiles the call."""
    tile = carray(stack_array(64, dst.dtype), (4, LANES))
    for e in range(4):
        for c in range(LANES):
            tile[e, c] = 0
    for t in range(a.shape[0]):
        a_row, b_row = a[t], b[t]
        for e in range(4):
            x = a_row[ra + e]
            for c in range(LANES):
                tile[e, c] += x * b_row[cb + c]
    for e in range(4):
        o = dst[dr + e]
        for c in range(LANES):
            o[dc + c] += tile[e, c]


@njit(**JIT_OPTIONS)
def dw_tiles(x, dy, du, db, ph, pw, per_block, tiles_v, tiles_m):
    """du (16, C_in, C_out) and db (C_out,), zeroed, += the sums over the samples of
    V[t]^T @ dM[t] (V: x's input transform as in forward, dM: dy's adjoint output transform),
    and of dy; then dW = G^T dU G (the caller). per_block, tiles_v, tiles_m from plan()."""
    n, out_h, out_w, c_out = dy.shape
    c_in = x.shape[3]
    th, tw = (out_h + 1) // 2, (out_w + 1) // 2
    rows = _tile_rows(c_in, out_h, out_w, x)
    grads = np.zeros((2 * th, 2 * tw * c_out), dtype=dy.dtype)  # dy, zero past the output
    v = np.empty((16, tiles_v, c_in), dtype=x.dtype)
    dmm = np.empty((16, tiles_m, c_out), dtype=dy.dtype)
    for ni in range(n):
        load_sample(x[ni], rows, ph, pw)
        load_sample(dy[ni], grads, 0, 0)
        i0 = 0
        while i0 < th:
            i1 = _block_end(i0, per_block, th, tw)
            n_tiles = (i1 - i0) * tw
            _input_transform(rows, c_in, i0 * tw, n_tiles, tw, v)
            _output_transform_adjoint(grads, c_out, i0, i1, tw, dmm, db)
            for t in range(16):
                _matmul_tn_tiles(v[t, :n_tiles], dmm[t, :n_tiles], du[t])
            i0 = i1


@njit(**JIT_OPTIONS)
def _output_transform_adjoint(grads, c_all, i0, i1, tw, dmm, db):
    """dmm (16, >= T, C) = A dY A^T for the 2x2 dy block of grads (2*th, 2*tw*C) (zero past
    the output) of tile t = (i - i0)*tw + j, i0 <= i < i1, the transpose of _output_transform;
    db (C,) += the blocks' sums. VEC channels at a time through stack buffers."""
    src, dst = grads.ravel(), dmm.ravel()
    pitch, cu, plane = U(grads.shape[1]), U(c_all), U(dmm.shape[1] * c_all)
    g = carray(stack_array(32, dmm.dtype), (4, VEC))
    h = carray(stack_array(128, dmm.dtype), (16, VEC))
    for i in range(i0, i1):
        for j in range(tw):
            t = U((i - i0) * tw + j)
            for c0 in range(0, c_all, VEC):
                cb = U(min(c0, c_all - VEC))
                for r in range(2):
                    for s in range(2):
                        base = U(2 * i + r) * pitch + U(2 * j + s) * cu + cb
                        for q in range(VEC):
                            g[2 * r + s, q] = src[base + U(q)]
                if cb == U(c0):
                    for q in range(VEC):
                        db[cb + U(q)] += (g[0, q] + g[1, q]) + (g[2, q] + g[3, q])
                else:  # a moved-back step adds only its new channels
                    for q in range(VEC):
                        if cb + U(q) >= U(c0):
                            db[cb + U(q)] += (g[0, q] + g[1, q]) + (g[2, q] + g[3, q])
                # A's rows (1, 0), (1, 1), (1, -1), (0, -1): first dY A^T on each row ...
                for r in range(2):
                    for q in range(VEC):
                        g0, g1 = g[2 * r, q], g[2 * r + 1, q]
                        h[4 * r, q], h[4 * r + 1, q] = g0, g0 + g1
                        h[4 * r + 2, q], h[4 * r + 3, q] = g0 - g1, -g1
                # ... then A on the columns
                for s in range(4):
                    for q in range(VEC):
                        p0, p1 = h[s, q], h[4 + s, q]
                        h[8 + s, q] = p0 - p1
                        h[4 + s, q] = p0 + p1
                        h[12 + s, q] = -p1
                for k in range(16):
                    base = U(k) * plane + t * cu + cb
                    for q in range(VEC):
                        dst[base + U(q)] = h[k, q]
