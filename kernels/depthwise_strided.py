"""dX of a strided 3x3 depthwise convolution (multiplier 1), each input pixel written once.

At stride 2 an input pixel is read by one, two or four of the nine taps, depending on the
parity of its row and column. depthwise.dx_strided_kernel zeroes each input row and then adds
every tap's dy * w into it (a load, a multiply-add and a store per tap and channel); here each
pixel's channel vectors sum the taps that read it in registers and are stored once, so a dx row
costs one pass of stores and the dy and w loads of its taps. For MobileNetV2's strided layers
(`python -m bench.conv --set mobilenetv2 --mb 8 --layers 'block(1|3|6|13)/depthwise'`) this is
the faster dX.

Which output column (if any) a tap j of input column col belongs to is the same for every row,
so it is looked up once per call (`tap_columns`), not divided out per pixel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import depthwise, isa
from .depthwise import _JIT, lanes, vfma, vload, vstore, vzero
from .geometry import ConvGeometry


def applies(g: ConvGeometry) -> bool:
    """True when dx3x3_strided_kernel runs geometry g's dX: a depthwise 3x3 kernel with
    multiplier 1, a stride > 1 (at stride 1 the forward kernels run the full correlation
    instead), and channels in whole vectors. With channels left over, their value-at-a-time
    sums branch per tap and make it the slower (C_in = 20 at 13x13, stride 2); MobileNet's
    channel counts are all whole vectors."""
    whole_vectors = g.c_in % isa.lanes(g.dtype) == 0
    return depthwise.fused3x3_applies(g) and (g.sh, g.sw) != (1, 1) and whole_vectors


@njit(cache=True)
def tap_columns(width, out_w, sw, pl, dw):
    """(W, 3) int array: entry [col, j] the output column whose tap j reads input column col,
    or -1 when none does."""
    table = np.full((width, 3), -1, dtype=np.intp)
    for col in range(width):
        for j in range(3):
            at = col + pl - j * dw  # = ow * sw
            if at >= 0 and at % sw == 0 and at // sw < out_w:
                table[col, j] = at // sw
    return table


@njit(**_JIT)
def dx3x3_strided_kernel(dy, wt, sh, sw, pt, pl, dh, dw, dx):
    """dx (N, H, W, C) = the gradient of the depthwise 3x3 correlation's x for dy (N, OH, OW,
    1, C) and weights wt (3, 3, 1, C), at strides (sh, sw), padding (pt, pl) at the top and
    left, dilation (dh, dw): dx[n, r, col] = sum over the taps (i, j) that read (r, col) of
    dy[n, oh, ow] * wt[i, j] (r = oh*sh - pt + i*dh, col = ow*sw - pl + j*dw)."""
    n, height, width, c_all = dx.shape
    out_h, out_w = dy.shape[1], dy.shape[2]
    columns = tap_columns(width, out_w, sw, pl, dw)
    dyf, wf, dxf = dy.reshape(dy.size), wt.reshape(wt.size), dx.reshape(dx.size)
    step = lanes(dxf)
    c_main = c_all - c_all % step  # the channels in whole vectors
    zero = dx.dtype.type(0)
    for t in prange(n * height):
        ni, r = t // height, t % height
        # the output rows whose tap rows 0, 1, 2 read input row r (-1: none)
        rows = [-1, -1, -1]
        for i in range(3):
            at = r + pt - i * dh  # = oh * sh
            if at >= 0 and at % sh == 0 and at // sh < out_h:
                rows[i] = (ni * out_h + at // sh) * out_w
        for col in range(width):
            k = (t * width + col) * c_all
            for cb in range(0, c_main, step):
                acc = vzero(dxf)
                for i in range(3):
                    if rows[i] < 0:
                        continue
                    for j in range(3):
                        ow = columns[col, j]
                        if ow >= 0:
                            g = vload(dyf, (rows[i] + ow) * c_all + cb)
                            acc = vfma(g, vload(wf, (3 * i + j) * c_all + cb), acc)
                vstore(dxf, k + cb, acc)
            for c in range(c_main, c_all):  # the channels after the whole vectors
                s = zero
                for i in range(3):
                    if rows[i] < 0:
                        continue
                    for j in range(3):
                        ow = columns[col, j]
                        if ow >= 0:
                            s += dyf[(rows[i] + ow) * c_all + c] * wf[(3 * i + j) * c_all + c]
                dxf[k + c] = s
