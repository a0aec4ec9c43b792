"""winograd backend: Lavin & Gray's minimal filtering for 3x3 stride-1 convolutions.

The idea, in one dimension. Two outputs of a 3-tap correlation, y0 = d0 g0 + d1 g1 + d2 g2 and
y1 = d1 g0 + d2 g1 + d3 g2, cost 6 multiplies done directly. Winograd's F(2, 3) computes them
with 4, by transforming a 4-value input tile d and the 3-value filter g into 4 values each,
multiplying those elementwise, and transforming the 4 products back into 2 outputs:

    y = A^T [ (G g) * (B^T d) ]            (* is the elementwise product)

        B^T = [[1,  0, -1,  0],     G = [[  1,    0,   0],     A^T = [[1, 1,  1,  0],
               [0,  1,  1,  0],          [1/2,  1/2, 1/2],            [0, 1, -1, -1]]
               [0, -1,  1,  0],          [1/2, -1/2, 1/2],
               [0,  1,  0, -1]]          [  0,    0,   1]]

In two dimensions the same matrices act on both axes of an (m+2) x (m+2) input tile d and the
3x3 filter g, giving an m x m output tile:

    Y = A^T [ (G g G^T) * (B^T d B) ] A

F(2x2, 3x3) spends 16 multiplies where the direct method spends 36 (2.25x fewer); F(4x4, 3x3),
with the 6x6 matrices below, spends 36 where it spends 144 (4x fewer):

    B^T = [[4,  0, -5,  0, 1, 0],   G = [[ 1/4,     0,    0],   A^T = [[1, 1,  1, 1,  1, 0],
           [0, -4, -4,  1, 1, 0],        [-1/6,  -1/6, -1/6],          [0, 1, -1, 2, -2, 0],
           [0,  4, -4, -1, 1, 0],        [-1/6,   1/6, -1/6],          [0, 1,  1, 4,  4, 0],
           [0, -2, -1,  2, 1, 0],        [1/24,  1/12,  1/6],          [0, 1, -1, 8, -8, 1]]
           [0,  2, -1, -2, 1, 0],        [1/24, -1/12,  1/6],
           [0,  4,  0, -5, 0, 1]]        [   0,     0,    1]]

With many channels the elementwise product becomes a matrix product. For each of the
alpha x alpha = (m+2)^2 positions t inside a tile:

    U[t] (C_in, C_out)  = the filter transform G g G^T at t, for every (c_in, c_out) pair
    V[t] (P, C_in)      = the input transform B^T d B at t, for every tile p of every sample
    M[t] (P, C_out)     = V[t] @ U[t]                      one GEMM per t: BLAS does the work
    y tile p            = A^T M[:, p] A                    (alpha x alpha -> m x m per channel)

The backward pass is the same computation run in reverse (each linear step's transpose):

    dM[t] = the adjoint output transform A dY A^T of each dy tile (zero outside the output)
    dU[t] = V[t]^T @ dM[t]    ->  dw = G^T dU G            (V is kept from the forward pass)
    dV[t] = dM[t] @ U[t]^T    ->  dx = sum over tiles of B dV B^T, overlapping tiles added

so dX and dW both cost one batched GEMM of the forward's size. The transforms are numba loops
over tiles, vectorised along the contiguous channel axis of NHWC; the GEMMs are numpy matmuls
split over the cores (kernels/gemm.py).

With 16 or more channels in and out but fewer than 64 in, F(2x2, 3x3) runs fused instead
(kernels/winograd_tiles.py): every stage on a few tiles of one sample while they are in cache,
the 16 GEMMs in numba register tiles. With so short a reduction (K = C_in) the batched GEMMs run
far from the BLAS peak and the transforms, streaming megabytes, set the batched path's speed;
from 64 input channels on the batched path is the faster (winograd_tiles.MAX_C_IN).

Numerical error: the transforms add and subtract products of different magnitudes, so float32
results differ from the direct sum by more than rounding of the same sum would: the relative
error grows with the tile size (F(4x4) multiplies inputs by up to 5 and outputs by up to 8).
tests/test_kernels_winograd.py measures it; float64 stays within ~1e-12 of naive.

Anything else (kernels other than 3x3, stride > 1, and any groups, dilation or asymmetric
padding) and pooling run on the `numba` backend (FALLBACK), looked up through the registry; the
ctx's `path` says which path ran, with the fallback's own path where it has one
("fallback:numba (numba depthwise)").
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, prange

from . import gemm, isa, jitcache, numba_tiles, threads, winograd_tiles, workspace
from .contract import ConvCtx, check_ctx
from .geometry import ConvGeometry, check_grad, conv_geometry, flipped_kernel

FALLBACK = "numba"

_BT = {
    2: [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    4: [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
}
_G = {
    2: [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
    4: [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
}
_AT = {
    2: [[1, 1, 1, 0], [0, 1, -1, -1]],
    4: [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
}
TILE_SIZES = tuple(_BT)


def transforms(m: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T (a, a), G (a, 3), A^T (m, a)) of F(m x m, 3 x 3), a = m + 2, in `dtype`."""
    return tuple(np.array(t[m], dtype=dtype) for t in (_BT, _G, _AT))  # type: ignore[return-value]


def native(g: ConvGeometry) -> bool:
    """True when Winograd runs this convolution itself: a plain (one group, no dilation,
    symmetric padding) 3x3 kernel at stride 1."""
    return g.plain and (g.kh, g.kw, g.sh, g.sw) == (3, 3, 1, 1)


# The fused F(2x2) path (winograd_tiles) runs where it applies on machines without AVX-512
# only. With AVX-512, numba's register tiles run at the full vector width
# (kernels/vector_width.py) and are the faster on the layers it takes (fewer than
# winograd_tiles.MAX_C_IN input channels: the `mid` and `deep_conv2` benchmark cases, forward +
# backward), while the fused path's own tiles, sized for AVX2, hold too few accumulators to
# gain from zmm registers; those layers are declined to FALLBACK there.
FUSED_ON_THIS_MACHINE = isa.vector_bits() < 512


def declined(g: ConvGeometry) -> str:
    """Why a 3x3 stride-1 convolution runs on FALLBACK instead ("" when Winograd runs it): a
    layer the fused path would take, on an AVX-512 machine (FUSED_ON_THIS_MACHINE); or the
    batched path with fewer than winograd_tiles.MIN_CHANNELS channels in or out. Its GEMMs
    then have a K or N of a few channels and its transforms a vector or two per tile, and the
    direct tiles were 5-15x faster (forward + backward, one process, interleaved:
    `mb64ic1ih28oc16oh28kh3ph1` (small_conv), `mb8ic16ih28oc8oh28kh3ph1`,
    `mb2ic3ih224oc64oh224kh3ph1` (vgg16:conv1_1)); from 32 channels on (`mb8ic32ih28oc512oh28kh3ph1`)
    the batched path is the faster."""
    if not native(g):
        return ""
    if winograd_tiles.applies(g):
        if FUSED_ON_THIS_MACHINE:
            return ""
        return (
            f"declined: fewer than {winograd_tiles.MAX_C_IN} input channels with AVX-512, "
            f"on {FALLBACK}"
        )
    if min(g.c_in, g.c_out) >= winograd_tiles.MIN_CHANNELS:
        return ""
    return f"declined: fewer than {winograd_tiles.MIN_CHANNELS} channels in or out, on {FALLBACK}"


def tile_size(g: ConvGeometry) -> int:
    """The output tile m of F(m x m, 3 x 3) used for geometry g on the batched path (layers the
    fused path of winograd_tiles does not take).

    F(4x4) does 1.8x fewer multiplies than F(2x2), and its 36 GEMMs of P/4 rows run closer to
    the BLAS peak than F(2x2)'s 16 of P rows; it pays for the part of its last tiles that falls
    outside the output (a 14x14 output computes 16x16: 1.31x). On the 14x14 outputs of the
    `deep_conv2` and `mid` benchmark cases, run on this path rather than the fused one they take,
    batched F(4x4) is faster than batched F(2x2), so F(2x2) is kept for outputs where F(4x4)
    would compute more than 1.5x the output (e.g. 6x6, computed as 8x8).
    """
    wasted4 = (math.ceil(g.out_h / 4) * 4 * math.ceil(g.out_w / 4) * 4) / (g.out_h * g.out_w)
    return 4 if wasted4 <= 1.5 else 2


# ---------------------------------------------------------------- tile transforms (numba)


@njit(cache=True, fastmath={"contract"})
def _sandwich(lmat, src, tmp, out):
    """out (A, A, C) = L src L^T along the first two axes: out[a, b] = sum_ij L[a, i] src[i, j] L[b, j].

    lmat (A, S), src (S, S, C), tmp (A, S, C) scratch. Zero coefficients are skipped (the
    transform matrices are sparse); the channel loop is innermost and contiguous, so it
    vectorises.
    """
    n_out, n_in = lmat.shape
    chans = src.shape[2]
    for a in range(n_out):
        for j in range(n_in):
            for c in range(chans):
                tmp[a, j, c] = 0
        for i in range(n_in):
            coef = lmat[a, i]
            if coef != 0:
                for j in range(n_in):
                    for c in range(chans):
                        tmp[a, j, c] += coef * src[i, j, c]
    for a in range(n_out):
        for b in range(n_out):
            for c in range(chans):
                out[a, b, c] = 0
            for j in range(n_in):
                coef = lmat[b, j]
                if coef != 0:
                    for c in range(chans):
                        out[a, b, c] += tmp[a, j, c] * coef


@njit(cache=True, parallel=True, fastmath={"contract"})
def _input_transform(x, bt, ph, pw, m, tiles_h, tiles_w, v):
    """x (N, H, W, C) -> v (a*a, N*tiles_h*tiles_w, C): B^T d B of every (m+2)^2 input tile.

    Tile (th, tw) of sample n reads padded rows th*m .. th*m+m+1 (unpadded: minus ph), columns
    likewise; positions outside the image read zero (the padding is never materialised).
    """
    n, height, width, chans = x.shape
    alpha = m + 2
    for ni in prange(n):
        d = np.empty((alpha, alpha, chans), dtype=x.dtype)
        tmp = np.empty((alpha, alpha, chans), dtype=x.dtype)
        out = np.empty((alpha, alpha, chans), dtype=x.dtype)
        for th in range(tiles_h):
            for tw in range(tiles_w):
                for i in range(alpha):
                    r = th * m + i - ph
                    for j in range(alpha):
                        col = tw * m + j - pw
                        if 0 <= r < height and 0 <= col < width:
                            for c in range(chans):
                                d[i, j, c] = x[ni, r, col, c]
                        else:
                            for c in range(chans):
                                d[i, j, c] = 0
                _sandwich(bt, d, tmp, out)
                p = (ni * tiles_h + th) * tiles_w + tw
                for a in range(alpha):
                    for b in range(alpha):
                        for c in range(chans):
                            v[a * alpha + b, p, c] = out[a, b, c]


@njit(cache=True, parallel=True, fastmath={"contract"})
def _output_transform(mm, at, m, tiles_h, tiles_w, bias, y):
    """mm (a*a, P, K) -> y (N, OH, OW, K): A^T M A of every tile plus bias, cropped to the output."""
    n, out_h, out_w, chans = y.shape
    alpha = m + 2
    for ni in prange(n):
        src = np.empty((alpha, alpha, chans), dtype=y.dtype)
        tmp = np.empty((m, alpha, chans), dtype=y.dtype)
        out = np.empty((m, m, chans), dtype=y.dtype)
        for th in range(tiles_h):
            for tw in range(tiles_w):
                p = (ni * tiles_h + th) * tiles_w + tw
                for a in range(alpha):
                    for b in range(alpha):
                        for c in range(chans):
                            src[a, b, c] = mm[a * alpha + b, p, c]
                _sandwich(at, src, tmp, out)
                for i in range(min(m, out_h - th * m)):
                    for j in range(min(m, out_w - tw * m)):
                        for c in range(chans):
                            y[ni, th * m + i, tw * m + j, c] = out[i, j, c] + bias[c]


@njit(cache=True, parallel=True, fastmath={"contract"})
def _output_transform_adjoint(dy, a_mat, m, tiles_h, tiles_w, dmm, db_parts):
    """dy (N, OH, OW, K) -> dmm (a*a, P, K): A dY A^T of every m x m dy tile (zero past the edge).

    db_parts (N, K) float64 receives each sample's sum of dy (the bias gradient's terms), read
    while the tiles are: output tiles do not overlap, so every dy element is added once.
    """
    n, out_h, out_w, chans = dy.shape
    alpha = m + 2
    for ni in prange(n):
        src = np.empty((m, m, chans), dtype=dy.dtype)
        tmp = np.empty((alpha, m, chans), dtype=dy.dtype)
        out = np.empty((alpha, alpha, chans), dtype=dy.dtype)
        for c in range(chans):
            db_parts[ni, c] = 0
        for th in range(tiles_h):
            for tw in range(tiles_w):
                for i in range(m):
                    for j in range(m):
                        if th * m + i < out_h and tw * m + j < out_w:
                            for c in range(chans):
                                src[i, j, c] = dy[ni, th * m + i, tw * m + j, c]
                                db_parts[ni, c] += dy[ni, th * m + i, tw * m + j, c]
                        else:
                            for c in range(chans):
                                src[i, j, c] = 0
                _sandwich(a_mat, src, tmp, out)
                p = (ni * tiles_h + th) * tiles_w + tw
                for a in range(alpha):
                    for b in range(alpha):
                        for c in range(chans):
                            dmm[a * alpha + b, p, c] = out[a, b, c]


@njit(cache=True, parallel=True, fastmath={"contract"})
def _input_transform_adjoint(dv, b_mat, ph, pw, m, tiles_h, tiles_w, dx):
    """dv (a*a, P, C) -> dx (N, H, W, C) += B dV B^T of every tile, added where tiles overlap.

    Tiles of one sample overlap (by 2 rows/columns), tiles of different samples never do, so
    the samples are split across threads.
    """
    n, height, width, chans = dx.shape
    alpha = m + 2
    for ni in prange(n):
        src = np.empty((alpha, alpha, chans), dtype=dx.dtype)
        tmp = np.empty((alpha, alpha, chans), dtype=dx.dtype)
        out = np.empty((alpha, alpha, chans), dtype=dx.dtype)
        for th in range(tiles_h):
            for tw in range(tiles_w):
                p = (ni * tiles_h + th) * tiles_w + tw
                for a in range(alpha):
                    for b in range(alpha):
                        for c in range(chans):
                            src[a, b, c] = dv[a * alpha + b, p, c]
                _sandwich(b_mat, src, tmp, out)
                for i in range(alpha):
                    r = th * m + i - ph
                    if 0 <= r < height:
                        for j in range(alpha):
                            col = tw * m + j - pw
                            if 0 <= col < width:
                                for c in range(chans):
                                    dx[ni, r, col, c] += out[i, j, c]


def _filter_transform(gm: np.ndarray, w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """w (3, 3, C_in, C_out) -> u (a*a, C_in, C_out): G g G^T for every channel pair (into
    `out`, (a*a, C_in, C_out) C-contiguous, when given).

    G g G^T at position (a, b) is sum_ij G[a, i] G[b, j] g[i, j], i.e. the Kronecker product
    G (x) G (a*a, 9) times the 9 taps: one small GEMM over all channel pairs at once, split over
    our pool (gemm.matmul) rather than numpy's threaded BLAS, whose workers keep spinning after
    the call and take the cores from the transforms and GEMMs that follow
    (`mb8ic256ih14oc256oh14kh3ph1`, resnet50:res4a_branch2b, with BLAS at its default threads).
    """
    a = gm.shape[0]
    w2 = np.ascontiguousarray(w).reshape(9, -1)
    flat = None if out is None else out.reshape(a * a, -1)
    return gemm.matmul(np.kron(gm, gm), w2, flat).reshape(a * a, *w.shape[2:])


def _filter_transform_adjoint(gm: np.ndarray, du: np.ndarray) -> np.ndarray:
    """du (a*a, C_in, C_out) -> dw (3, 3, C_in, C_out) = G^T dU G, _filter_transform's transpose."""
    kron_t = np.ascontiguousarray(np.kron(gm, gm).T)  # as _filter_transform: our pool's GEMM
    return gemm.matmul(kron_t, du.reshape(du.shape[0], -1)).reshape(3, 3, *du.shape[1:])


# ---------------------------------------------------------------- the backend

_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised `shape` array of `dtype` in this thread's reusable buffer `name`, grown
    to the largest size asked for and never shrunk: the batched path's per-call temporaries
    (U, M, dM, dV, dU), used within one call and never handed to the caller or kept in a ctx.

    Fresh multi-megabyte arrays are mapped anew by malloc on most calls, and every page then
    faults on first touch: over the transforms and GEMMs of `mb8ic256ih14oc256oh14kh3ph1`
    (resnet50:res4a_branch2b) that cost as much as the GEMMs."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buf = buffers.get(name)
    if buf is None or buf.nbytes < nbytes:
        buf = buffers[name] = np.empty(max(nbytes, 1) // 8 + 1, np.float64)  # 8-byte aligned
    return buf.view(np.uint8)[:nbytes].view(dtype).reshape(shape)


def _fallback():
    from . import get_backend  # the registry, imported late: kernels/__init__ imports us lazily

    return get_backend(FALLBACK)


@dataclass(frozen=True, eq=False)
class WinogradConvCtx(ConvCtx):
    """What conv2d_backward needs from the forward pass.

    geometry: the call's ConvGeometry; path: "winograd F(mxm,3x3)" or "fallback:<backend>";
    m: output tile size; tiles: (tiles_h, tiles_w) per sample;
    v: (a*a, P, C_in) transformed input tiles; w: (3, 3, C_in, C_out) the filters;
    inner: the fallback backend's ctx when path is a fallback (v and w are then None).
    """

    path: str
    m: int = 0
    tiles: tuple[int, int] = (0, 0)
    v: np.ndarray | None = None
    w: np.ndarray | None = None
    inner: Any = None


@dataclass(frozen=True, eq=False)
class FusedWinogradCtx(ConvCtx):
    """conv2d's ctx on the fused path (kernels/winograd_tiles.py): x and w, from which the
    backward recomputes the input transform per sample and transforms the flipped kernel."""

    path: str
    x: np.ndarray  # (N, H, W, C_in), C-contiguous
    w: np.ndarray  # (3, 3, C_in, C_out)


FUSED_PATH = "winograd fused F(2x2,3x3)"


def _fused_parts(g: ConvGeometry) -> int:
    """Blocks of samples (one per thread) for the fused kernels: one for a product too small
    to pay for the hand-off (gemm.MIN_SPLIT_MACS), else one per thread."""
    if g.flops // 2 < gemm.MIN_SPLIT_MACS:
        return 1
    return max(1, min(gemm.threads(), g.n))


def _fused_forward(g: ConvGeometry, x, w, b) -> tuple[np.ndarray, FusedWinogradCtx]:
    _, gm, _ = transforms(2, g.dtype)
    x = np.ascontiguousarray(x)
    u = _filter_transform(gm, w)
    bias = np.zeros(g.c_out, dtype=g.dtype) if b is None else np.ascontiguousarray(b)
    y = workspace.take("winograd.y", g.y_shape, g.dtype)
    numba_tiles.run_blocks(
        winograd_tiles.forward, _fused_parts(g), (x, y), winograd_tiles.pack(u), bias, g.ph, g.pw
    )
    return y, FusedWinogradCtx(g, FUSED_PATH, x, np.ascontiguousarray(w))


def _fused_backward(dy, ctx: FusedWinogradCtx, need_dx: bool):
    g = ctx.geometry
    _, gm, _ = transforms(2, g.dtype)
    n_parts = _fused_parts(g)
    blocking = winograd_tiles.plan(g.out_h, g.out_w, g.c_in, g.c_out, g.dtype.itemsize)
    du, db_sum = numba_tiles.run_blocks(
        winograd_tiles.dw_tiles,
        n_parts,
        (ctx.x, dy),
        g.ph,
        g.pw,
        *blocking,
        sums=((16, g.c_in, g.c_out), (g.c_out,)),
        dtype=g.dtype,
        loop_vectorize=False,  # AVX-512: keeps dU's register tiles in registers (slp_vectorize)
    )
    dw = _filter_transform_adjoint(gm, du).astype(g.dtype, copy=False)
    db = db_sum if g.has_bias else None
    if not need_dx:
        return None, dw, db
    # dX: the full correlation of dy with the kernel flipped in both axes, C_in and C_out
    # swapped: a 3x3 stride-1 convolution padded by 2 - padding
    u_flipped = _filter_transform(gm, np.ascontiguousarray(flipped_kernel(ctx.w)))
    dx = workspace.take("winograd.dx", g.x_shape, g.dtype)
    no_bias = np.zeros(g.c_in, dtype=g.dtype)
    packed = winograd_tiles.pack(u_flipped)  # dX's "output" is x: C_in channels from C_out
    numba_tiles.run_blocks(
        winograd_tiles.forward, n_parts, (dy, dx), packed, no_bias, 2 - g.ph, 2 - g.pw
    )
    return dx, dw, db


def _fallback_path(inner: Any) -> str:
    """The ctx path of a fallback call: the fallback's name, and its own path if it has one."""
    inner_path = getattr(inner, "path", None)
    return f"fallback:{FALLBACK}" + (f" ({inner_path})" if inner_path else "")


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """x: (N, H, W, C_in), w: (KH, KW, C_in // groups, C_out), b: (C_out,) or None
    -> y: (N, OH, OW, C_out) (kernels/contract.py states stride, padding, dilation, groups).

    Same dtype as x. Plain 3x3 stride-1 convolutions run as Winograd: fused F(2x2, 3x3) per
    sample where winograd_tiles.applies (16 channels and more) on a machine that runs it
    (FUSED_ON_THIS_MACHINE), else F(m x m, 3 x 3) over the batch (m from tile_size); others,
    and the layers declined(g) names, on the FALLBACK backend.
    """
    g = conv_geometry(x, w, b, stride, padding, dilation, groups)
    if not native(g) or declined(g):
        y, inner = _fallback().conv2d_forward(x, w, b, stride, padding, dilation, groups)
        return y, WinogradConvCtx(g, declined(g) or _fallback_path(inner), inner=inner)
    if winograd_tiles.applies(g):  # not declined: this machine runs the fused path
        return _fused_forward(g, x, w, b)
    threads.launch()  # before the first parallel kernel (kernels/threads.py)
    m = tile_size(g)
    alpha = m + 2
    bt, gm, at = transforms(m, g.dtype)
    tiles_h, tiles_w = -(-g.out_h // m), -(-g.out_w // m)
    n_tiles = g.n * tiles_h * tiles_w
    v = np.empty((alpha * alpha, n_tiles, g.c_in), dtype=g.dtype)
    _input_transform(np.ascontiguousarray(x), bt, g.ph, g.pw, m, tiles_h, tiles_w, v)
    u = _filter_transform(gm, w, _scratch("u", (alpha * alpha, g.c_in, g.c_out), g.dtype))
    mm = gemm.batched_matmul(v, u, _scratch("m", (alpha * alpha, n_tiles, g.c_out), g.dtype))
    bias = np.zeros(g.c_out, dtype=g.dtype) if b is None else np.ascontiguousarray(b)
    y = workspace.take("winograd.y", g.y_shape, g.dtype)
    _output_transform(mm, at, m, tiles_h, tiles_w, bias, y)
    # U is not kept: the backward recomputes it from w into scratch, cheaper than a fresh
    # (a*a, C_in, C_out) array per call (see _scratch)
    ctx = WinogradConvCtx(g, f"winograd F({m}x{m},3x3)", m, (tiles_h, tiles_w), v, w=w)
    return y, ctx


def conv2d_backward_ctx(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """conv2d_backward's ctx from the inputs alone, for auto when another backend ran the
    forward: the fused path's (x and w) and the fallback's; None on the batched path, whose
    backward reads the forward's transformed tiles (and where the fallback gives None)."""
    g = conv_geometry(x, w, b, stride, padding, dilation, groups)
    if not native(g) or declined(g):
        inner = _fallback().conv2d_backward_ctx(x, w, b, stride, padding, dilation, groups)
        if inner is None:
            return None
        return WinogradConvCtx(g, declined(g) or _fallback_path(inner), inner=inner)
    if winograd_tiles.applies(g):  # not declined: this machine runs the fused path
        return FusedWinogradCtx(g, FUSED_PATH, np.ascontiguousarray(x), np.ascontiguousarray(w))
    return None


def conv2d_backward(dy, ctx: WinogradConvCtx | FusedWinogradCtx, need_dx=True):
    """dy: (N, OH, OW, C_out) -> (dx (N, H, W, C_in) or None, dw like w, db (C_out,) or None)."""
    check_ctx(ctx, (WinogradConvCtx, FusedWinogradCtx), "winograd")
    g = ctx.geometry
    if isinstance(ctx, FusedWinogradCtx):
        check_grad(dy, g.y_shape, g.dtype)
        return _fused_backward(np.ascontiguousarray(dy), ctx, need_dx)
    if ctx.inner is not None:
        return _fallback().conv2d_backward(dy, ctx.inner, need_dx=need_dx)
    check_grad(dy, g.y_shape, g.dtype)
    m, (tiles_h, tiles_w), v, w = ctx.m, ctx.tiles, ctx.v, ctx.w
    assert v is not None and w is not None
    alpha = m + 2
    bt, gm, at = transforms(m, g.dtype)
    dmm = _scratch("m", (alpha * alpha, v.shape[1], g.c_out), g.dtype)
    db_parts = np.empty((g.n, g.c_out))
    _output_transform_adjoint(
        np.ascontiguousarray(dy), np.ascontiguousarray(at.T), m, tiles_h, tiles_w, dmm, db_parts
    )
    du = _scratch("du", (alpha * alpha, g.c_in, g.c_out), g.dtype)
    db = db_parts.sum(axis=0).astype(g.dtype) if g.has_bias else None
    if not need_dx:
        gemm.batched_matmul(v.transpose(0, 2, 1), dmm, du)
        return None, _filter_transform_adjoint(gm, du), db
    # dU and dV are independent and equally large: one thread each (gemm.batched_pair)
    u = _filter_transform(gm, w, _scratch("u", (alpha * alpha, g.c_in, g.c_out), g.dtype))
    dv = _scratch("dv", v.shape, g.dtype)
    gemm.batched_pair((v.transpose(0, 2, 1), dmm, du), (dmm, u.transpose(0, 2, 1), dv))
    dw = _filter_transform_adjoint(gm, du)
    dx = workspace.take("winograd.dx", g.x_shape, g.dtype)
    dx.fill(0)
    _input_transform_adjoint(dv, np.ascontiguousarray(bt.T), g.ph, g.pw, m, tiles_h, tiles_w, dx)
    return dx, dw, db


def maxpool2d_forward(x, size=2, stride=None, padding=0, ceil_mode=False):
    """Pooling is not a convolution: it runs on the FALLBACK backend (same ctx)."""
    return _fallback().maxpool2d_forward(x, size, stride, padding, ceil_mode)


def maxpool2d_backward(dy, ctx):
    """See maxpool2d_forward: the FALLBACK backend's max-pool backward."""
    return _fallback().maxpool2d_backward(dy, ctx)


def avgpool2d_forward(x, size=2, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Pooling is not a convolution: it runs on the FALLBACK backend (same ctx)."""
    return _fallback().avgpool2d_forward(x, size, stride, padding, ceil_mode, count_include_pad)


def avgpool2d_backward(dy, ctx):
    """See avgpool2d_forward: the FALLBACK backend's avg-pool backward."""
    return _fallback().avgpool2d_backward(dy, ctx)


def warmup(dtypes=None, ops=None) -> None:
    """Compile (or load from numba's disk cache) the tile transforms and the FALLBACK backend's
    kernels of `ops` for `dtypes` (defaults: every op, float32 and float64)."""
    _fallback().warmup(dtypes, ops)
    if ops is not None and "conv2d" not in ops:
        return
    dtypes = (np.float32, np.float64) if dtypes is None else tuple(dtypes)
    for dtype in dtypes:
        x = np.ones((1, 4, 4, 1), dtype=dtype)
        w = np.ones((3, 3, 1, 1), dtype=dtype)
        y, ctx = conv2d_forward(x, w, np.ones(1, dtype=dtype), padding=1)
        conv2d_backward(np.ones_like(y), ctx)
        # the fused path (winograd_tiles): 16 channels in and out
        many = np.ones((1, 6, 6, winograd_tiles.MIN_CHANNELS), dtype=dtype)
        w = np.ones((3, 3, winograd_tiles.MIN_CHANNELS, winograd_tiles.MIN_CHANNELS), dtype=dtype)
        y, ctx = conv2d_forward(many, w, None, padding=1)
        conv2d_backward(np.ones_like(y), ctx)
    jitcache.mark_cached(_sandwich, _SOURCES, dtypes, ("conv2d",))


def warmup_cached(dtypes=None, ops=None) -> bool:
    """True when warmup(dtypes, ops) will load from numba's disk cache rather than compile."""
    if not _fallback().warmup_cached(dtypes, ops):
        return False
    if ops is not None and "conv2d" not in ops:
        return True
    dtypes = (np.float32, np.float64) if dtypes is None else tuple(dtypes)
    return jitcache.is_cached(_sandwich, _SOURCES, dtypes, ("conv2d",))


# the files whose kernels warmup() compiles (numba's cache is keyed on them)
_SOURCES = (__file__, winograd_tiles.__file__, numba_tiles.__file__)
