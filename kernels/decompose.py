"""A convolution with groups, dilation or asymmetric padding, computed by plain convolutions.

For a backend whose fast kernels compute only the plain convolution (ConvGeometry.plain: one
group, no dilation, the same padding on both sides), three exact rewrites, applied together:
    asymmetric padding  the excess over the smaller side, min(top, bottom) / min(left, right),
                        is padded explicitly (np.pad) and cropped from dX; the symmetric rest
                        stays the plain kernel's own padding.
    dilation            the kernel is spread out with zeros to its span ((KH-1)*dh + 1, ...),
                        and dW is read back at the taps: exact, at the cost of the zero taps'
                        multiply-adds (a backend with native dilation does better).
    groups              one plain convolution per group on its slice of the channels; dX, dW and
                        db are the per-group results put side by side.
The backend passes its own conv2d_forward / conv2d_backward (and conv2d_backward_ctx): no
backend imports another. The ctx records which rewrites ran in its `path`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .contract import ConvCtx
from .geometry import ConvGeometry


@dataclass(frozen=True, eq=False)
class DecomposedCtx(ConvCtx):
    """conv2d's ctx of a decomposed call: the plain backend's ctx of each group."""

    path: str
    parts: tuple[Any, ...]  # one plain ctx per group


def _extra_padding(g: ConvGeometry) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padded explicitly: each side's excess over the other."""
    rows, cols = min(g.ph, g.ph_end), min(g.pw, g.pw_end)
    return g.ph - rows, g.ph_end - rows, g.pw - cols, g.pw_end - cols


def path(g: ConvGeometry, backend: str) -> str:
    """What a decomposed call of geometry g runs, in words (the ctx's `path`)."""
    steps = []
    if any(_extra_padding(g)):
        steps.append(f"padding {g.padding} partly explicit")
    if (g.dil_h, g.dil_w) != (1, 1):
        steps.append(f"dilation ({g.dil_h}, {g.dil_w}) as a zero-spread kernel")
    if g.groups > 1:
        steps.append(f"{g.groups} groups one at a time")
    return f"{backend} decomposed: " + ", ".join(steps)


def _plain_calls(g: ConvGeometry, x: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """The plain calls (x_k, w_k, b_k, stride, padding), one per group, that make up g."""
    top, bottom, left, right = _extra_padding(g)
    if top or bottom or left or right:
        x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    if (g.dil_h, g.dil_w) != (1, 1):
        spread = np.zeros((g.kh_span, g.kw_span) + w.shape[2:], dtype=w.dtype)
        spread[:: g.dil_h, :: g.dil_w] = w
        w = spread
    padding = (min(g.ph, g.ph_end), min(g.pw, g.pw_end))
    cg, og = g.c_in_group, g.c_out_group
    return [
        (
            x[..., k * cg : (k + 1) * cg],
            w[..., k * og : (k + 1) * og],
            None if b is None else b[k * og : (k + 1) * og],
            (g.sh, g.sw),
            padding,
        )
        for k in range(g.groups)
    ]


def forward(
    plain_forward: Callable[..., tuple[np.ndarray, Any]],
    g: ConvGeometry,
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    backend: str,
) -> tuple[np.ndarray, DecomposedCtx]:
    """conv2d_forward of geometry g by plain_forward(x, w, b, stride, padding) calls:
    y (N, OH, OW, C_out) and the ctx for :func:`backward`."""
    results = [plain_forward(*call) for call in _plain_calls(g, x, w, b)]
    y = results[0][0] if g.groups == 1 else np.concatenate([r[0] for r in results], axis=3)
    return y, DecomposedCtx(g, path(g, backend), tuple(r[1] for r in results))


def backward_ctx(
    plain_ctx: Callable[..., Any | None],
    g: ConvGeometry,
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    backend: str,
) -> DecomposedCtx | None:
    """The ctx :func:`forward` would return, from plain_ctx(x, w, b, stride, padding) (a
    backend's conv2d_backward_ctx) per group; None if any group's is None."""
    parts = tuple(plain_ctx(*call) for call in _plain_calls(g, x, w, b))
    if any(part is None for part in parts):
        return None
    return DecomposedCtx(g, path(g, backend), parts)


def backward(
    plain_backward: Callable[..., tuple[np.ndarray | None, np.ndarray, np.ndarray | None]],
    dy: np.ndarray,
    ctx: DecomposedCtx,
    need_dx: bool,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """conv2d_backward of a decomposed call: dy (N, OH, OW, C_out) -> (dx or None, dw, db or
    None), each plain_backward(dy_k, ctx_k, need_dx) put back in place."""
    g = ctx.geometry
    og = g.c_out_group
    grads = [
        plain_backward(np.ascontiguousarray(dy[..., k * og : (k + 1) * og]), part, need_dx)
        for k, part in enumerate(ctx.parts)
    ]
    dw = np.concatenate([grad[1] for grad in grads], axis=3)[:: g.dil_h, :: g.dil_w]
    db = np.concatenate([grad[2] for grad in grads]) if g.has_bias else None
    if not need_dx:
        return None, np.ascontiguousarray(dw), db
    dx = np.concatenate([grad[0] for grad in grads], axis=3)
    top, _, left, _ = _extra_padding(g)
    dx = dx[:, top : top + g.height, left : left + g.width]
    return np.ascontiguousarray(dx), np.ascontiguousarray(dw), db
