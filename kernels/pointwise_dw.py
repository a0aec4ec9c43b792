"""dW of a 1x1 convolution (ResNet's bottleneck layers) from packed panels, as BLAS computes it.

dW = x_pixels.T @ dy: (C_in, C_out), summed over every output pixel. numba_tiles.dw_tiles runs
its DW_TILE x LANES register tile along the pixels of x and dy as they lie in NHWC, so each step
of the reduction reads one cache line of each from a different pixel, hundreds of channels
apart, and each line again for every tile of the other operand. Here a chunk of pixels is first
packed, as BLAS packs its panels: x's channels in runs of DW_TILE per pixel (xp, (C_in blocks,
pixels, DW_TILE)) and dy's in runs of LANES (gp, (C_out blocks, pixels, LANES)), so a tile
streams two contiguous panels, one of them (gp's block) in L1 for all the tiles that share it.
The chunk (chunk_pixels) keeps a pair of panels in L1 and all of them in half of L2.

Packing costs a copy of every pixel's C_in + C_out values, which pays once each value takes
part in enough of the C_in * C_out multiply-adds: from C_in * C_out / (C_in + C_out) =
MIN_MACS_PER_VALUE on, this is the faster dW on ResNet-50's 1x1 layers (`python -m bench.conv
--set resnet50 --mb 8 --layers 'branch2a|branch2c|branch1' --backends numba`, backward-weights:
64 -> 256 and 256 -> 64 channels and wider), and dw_tiles the faster below it (`res2a_branch2a`,
64 -> 64; MobileNetV2's `--layers 'expand|project'`, e.g. 16 -> 96, 96 -> 24, 32 -> 192).
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit

from .geometry import ConvGeometry
from .numba_tiles import (
    DW_TILE,
    DW_VALUES,
    JIT_OPTIONS,
    L2_BYTES,
    LANES,
    add_dw_tile,
    stack_array,
)
from .vector_width import full_width

L1_PANEL_BYTES = 32 << 10  # one xp block and one gp block of a chunk: an L1 data cache
MIN_MACS_PER_VALUE = 40  # C_in * C_out / (C_in + C_out) from which the packing pays (above)


def applies(g: ConvGeometry) -> bool:
    """True when dw_packed computes geometry g's dW (where numba_tiles' backward runs it): an
    unpadded 1x1 kernel, any stride, channels wide enough for the packing to pay."""
    per_value = g.c_in * g.c_out / (g.c_in + g.c_out)
    return (g.kh, g.kw, g.ph, g.pw) == (1, 1, 0, 0) and per_value >= MIN_MACS_PER_VALUE


def chunk_pixels(c_in: int, c_out: int, itemsize: int) -> int:
    """Pixels packed at a time: a DW_TILE-entry block of xp and a LANES block of gp in
    L1_PANEL_BYTES, and all blocks of both in half of L2."""
    blocks_in, blocks_out = -(-c_in // DW_TILE), -(-c_out // LANES)
    panel = (blocks_in * DW_TILE + blocks_out * LANES) * itemsize
    pair = (DW_TILE + LANES) * itemsize
    return max(16, min(L1_PANEL_BYTES // pair, (L2_BYTES // 2) // panel))


@njit(**JIT_OPTIONS)
def dw_packed(x, dy, dw, db, sh, sw, chunk):
    """dw (1, C_in, C_out) and db (C_out,), zeroed, += the sums over the output pixels (n, oh,
    ow) of x[n, oh*sh, ow*sw] (C_in) times dy[n, oh, ow] (C_out), and of dy; x (N, H, W, C_in),
    dy (N, OH, OW, C_out), C_in >= DW_TILE, C_out >= LANES. A block's last tile moves back to
    end at the last channel (add_dw_tile adds only its new entries)."""
    full_width()
    n, out_h, out_w, c_out = dy.shape
    c_in = x.shape[3]
    blocks_in = (c_in + DW_TILE - 1) // DW_TILE
    blocks_out = (c_out + LANES - 1) // LANES
    xp = np.empty((blocks_in, chunk, DW_TILE), dtype=x.dtype)
    gp = np.empty((blocks_out, chunk, LANES), dtype=x.dtype)
    tile = carray(stack_array(DW_VALUES, x.dtype), (DW_TILE, LANES))
    per_sample = out_h * out_w
    total = n * per_sample
    for p0 in range(0, total, chunk):
        count = min(chunk, total - p0)
        for q in range(count):
            ni, r = (p0 + q) // per_sample, (p0 + q) % per_sample
            oh, ow = r // out_w, r % out_w
            pixel, g = x[ni, oh * sh, ow * sw], dy[ni, oh, ow]
            for b in range(blocks_in):
                jb = min(b * DW_TILE, c_in - DW_TILE)
                run = xp[b, q]
                for e in range(DW_TILE):
                    run[e] = pixel[jb + e]
            for b in range(blocks_out):
                cb = min(b * LANES, c_out - LANES)
                run = gp[b, q]
                for c in range(LANES):
                    run[c] = g[cb + c]
            for c in range(c_out):
                db[c] += g[c]
        for bo in range(blocks_out):
            c0 = bo * LANES
            cb = min(c0, c_out - LANES)
            g_panel = gp[bo]
            for bi in range(blocks_in):
                j0 = bi * DW_TILE
                jb = min(j0, c_in - DW_TILE)
                x_panel = xp[bi]
                for e in range(DW_TILE):
                    for c in range(LANES):
                        tile[e, c] = 0
                for q in range(count):
                    g, a_run = g_panel[q], x_panel[q]
                    for e in range(DW_TILE):
                        a = a_run[e]
                        for c in range(LANES):
                            tile[e, c] += a * g[c]
                add_dw_tile(dw[0], tile, jb, j0, cb, c0)
