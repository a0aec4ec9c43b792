"""The kernel contract: what every backend module provides, and the ctx its forward passes return.

A backend is a module, kernels/<name>.py, registered by name in kernels/__init__.py. It defines
the six module-level functions of :class:`Backend`, with exactly these parameter names and
defaults, and optionally ``warmup()`` (:class:`Warmup`). No backend imports another backend:
shared helpers live in kernels/geometry.py and kernels/windows.py.

Shapes and dtypes (every backend)
    x    (N, H, W, C_in)                  activations, NHWC
    w    (KH, KW, C_in // groups, C_out)  conv weights, HWIO
    b    (C_out,) or None                 bias
    y    (N, OH, OW, C_out)               OH = (H + top + bottom - (KH - 1)*dh - 1) // sh + 1,
                                          OW likewise (kernels.geometry.conv_geometry)
    pooling: x (N, H, W, C) -> y (N, OH, OW, C), windows (KH, KW) every (sh, sw) (see Pooling)
Arrays are float32 or float64; all arrays of one call share x's dtype, and every output (y, dx,
dw, db) has that dtype too: float32 work never silently becomes float64. Arguments are validated
by kernels.geometry (conv_geometry, pool_geometry, check_grad) before any work, so a bad argument
gets the same error from every backend.

The convolution (torch.nn.functional.conv2d's meaning and keyword names)
    conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1) is the
    cross-correlation y[n, oh, ow, o] = b[o] + sum over i, j, c of
        x_padded[n, oh*sh + i*dh, ow*sw + j*dw, g*C_in/groups + c] * w[i, j, c, o],
    g = o // (C_out // groups): output channel o sees only its group's input channels.
    stride, dilation: n or (h, w), each >= 1. groups: >= 1, dividing both C_in and C_out
    (groups == C_in is a depthwise convolution; C_out // C_in is then its channel multiplier).
    padding (zeros): n; (ph, pw) on both sides; ((top, bottom), (left, right)); "valid" (none);
    or "same", padded as TensorFlow does: OH = ceil(H / sh), total padding
    max((OH - 1)*sh + (KH - 1)*dh + 1 - H, 0), the odd row at the bottom (column at the right),
    so a Keras layer maps one-to-one (for stride 1 this is PyTorch's "same" too).
    Every backend computes every combination, natively or by a stated decomposition
    (docs/kernels-conv-semantics.md says which); a ctx that ran a path other than the
    backend's usual one says so in its `path` field.

Pooling
    maxpool2d_forward and avgpool2d_forward take PyTorch's `padding` and `ceil_mode` (avg-pool
    also `count_include_pad`, default True): padding n, (ph, pw) or ((top, bottom), (left,
    right)), each at most half the window (KH // 2 rows, KW // 2 columns), so no window is
    padding only. Window (oh, ow) starts at row oh*sh - top, column ow*sw - left of x, and per
    axis (rows shown; lo, hi = top, bottom; kernels.geometry.pool_geometry is the one copy):
        OH = (H + lo + hi - KH + (sh - 1 if ceil_mode else 0)) // sh + 1
        with ceil_mode, OH -= 1 if (OH - 1)*sh >= H + lo: the last window starts inside x or
        the top padding; a ceil_mode window may run past the padded input (it is clipped).
    Max-pool pads with -inf and padding never wins a window (the winner is the first maximum
    among the window's elements inside x). Avg-pool divides each window's sum over x by its
    count (kernels.geometry.pool_counts): with count_include_pad, the window's positions inside
    x and its padding (not a ceil_mode window's part past the padded input); without, only
    those inside x. Defaults (0, False, True) are the unpadded pools.

The ctx
    Each forward returns (y, ctx). ctx goes, unchanged, to the same backend's backward; what is
    inside is that backend's business, but every ctx is a frozen dataclass with a `geometry`:
    - conv2d: a subclass of :class:`ConvCtx` per backend, holding what its backward needs;
    - maxpool2d: :class:`MaxPoolCtx` (geometry and argmax), shared by the backends;
    - avgpool2d: :class:`PoolCtx` (geometry only), shared by the backends.
    A backend that needs more in a pooling ctx subclasses MaxPoolCtx / PoolCtx. A conv2d backward
    given anything but its own backend's ctx raises TypeError naming what it got (check_ctx),
    not an AttributeError on some field deep inside. Declare every
    ctx class with ``@dataclass(frozen=True, eq=False)``: a ctx is immutable once made, and it
    holds arrays, which have no field-wise equality, so ctxs compare by identity.

The max-pool argmax
    MaxPoolCtx.argmax (N, OH, OW, C) holds, for every window, the flat index k = i*KW + j of the
    element that won, positions counted including the padded ones: the first maximum in
    row-major window order among the elements inside x, or the first NaN (NumPy's argmax rule).
    Its dtype is kernels.geometry.argmax_dtype(KH, KW): uint8 when KH*KW <= 255, else intp.

Optional members
    warmup(dtypes=None, ops=None) -> None: compile, or load from a disk cache, what the backend
        would otherwise compile on first use (numba's JIT): the kernels of `ops` (None: all of
        "conv2d", "maxpool2d", "avgpool2d") for `dtypes` (None: float32 and float64), so that the
        first timed or trained call measures the kernel, not the compiler. A training run asks
        only for its own dtype and ops: a cold compile costs seconds per kernel and dtype.
        Backends that compile nothing leave it out; callers ask with
        ``isinstance(module, Warmup)``. It must be safe to call twice.
    warmup_cached(dtypes=None, ops=None) -> bool: with warmup, whether warmup(dtypes, ops)
        will only load from the disk cache (kernels/jitcache.py), so a trainer can compile
        in the background instead of making the user wait (model/warmup.py).
    PARALLEL_MIN_WORK (int): a backend that runs small calls on one thread and large ones on
        several names its threshold so. tests/test_kernels_equality.py runs such a backend a
        second time with the threshold forced to 0, so its threaded split is checked on every
        shape the tests draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np
from numpy.typing import DTypeLike

from .geometry import ConvGeometry, IntPair, Padding, PoolGeometry, PoolPadding

# Frozen: a ctx is never changed after the forward pass. eq=False: ctxs hold arrays, which have
# no field-wise equality (and so no hash); identity is the only meaningful comparison.


@dataclass(frozen=True, eq=False)
class ConvCtx:
    """What every conv2d ctx holds. Each backend subclasses it with what its backward needs."""

    geometry: ConvGeometry


@dataclass(frozen=True, eq=False)
class PoolCtx:
    """The avgpool2d ctx (every backend): the call's geometry is all the backward needs."""

    geometry: PoolGeometry


@dataclass(frozen=True, eq=False)
class MaxPoolCtx(PoolCtx):
    """The maxpool2d ctx (every backend): the geometry, and which element won each window."""

    argmax: np.ndarray  # (N, OH, OW, C), dtype argmax_dtype(KH, KW): flat window index i*KW + j


ConvCtxT = TypeVar("ConvCtxT", bound=ConvCtx)
MaxPoolCtxT = TypeVar("MaxPoolCtxT", bound=MaxPoolCtx)
AvgPoolCtxT = TypeVar("AvgPoolCtxT", bound=PoolCtx)


class Backend(Protocol[ConvCtxT, MaxPoolCtxT, AvgPoolCtxT]):
    """A backend module. Its type parameters are the ctx types its three forwards return.

    A backend module satisfies Backend[ItsConvCtx, MaxPoolCtx, PoolCtx] (mypy checks each one in
    kernels/__init__.py); kernels.get_backend returns Backend[Any, Any, Any].
    """

    def conv2d_forward(
        self,
        x: np.ndarray,
        w: np.ndarray,
        b: np.ndarray | None = None,
        stride: IntPair = 1,
        padding: Padding = 0,
        dilation: IntPair = 1,
        groups: int = 1,
    ) -> tuple[np.ndarray, ConvCtxT]:
        """Cross-correlation. x: (N, H, W, C_in), w: (KH, KW, C_in // groups, C_out), b: (C_out,)
        or None.

        stride, dilation: n or (h, w); padding: n, (ph, pw), ((top, bottom), (left, right)),
        "valid" or "same" (TensorFlow's); groups divides C_in and C_out (see the module text).
        Returns y: (N, OH, OW, C_out) in x's dtype, and the ctx for conv2d_backward.
        """
        ...

    def conv2d_backward(
        self, dy: np.ndarray, ctx: ConvCtxT, need_dx: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        """dy: (N, OH, OW, C_out) -> (dx (N, H, W, C_in), dw like w, db (C_out,)).

        dx is None when need_dx is False (a network's first layer: the work may be skipped);
        db is None when the forward had no bias. All in the forward's dtype.
        """
        ...

    def maxpool2d_forward(
        self,
        x: np.ndarray,
        size: IntPair = 2,
        stride: IntPair | None = None,
        padding: PoolPadding = 0,
        ceil_mode: bool = False,
    ) -> tuple[np.ndarray, MaxPoolCtxT]:
        """x: (N, H, W, C) -> y: (N, OH, OW, C), each window's maximum; stride None means size.

        padding and ceil_mode as the module docstring's Pooling says (padding never wins).
        Ties go to the first maximum in row-major window order; a NaN in a window wins it.
        """
        ...

    def maxpool2d_backward(self, dy: np.ndarray, ctx: MaxPoolCtxT) -> np.ndarray:
        """dy: (N, OH, OW, C) -> dx: (N, H, W, C); each window's gradient goes to its argmax."""
        ...

    def avgpool2d_forward(
        self,
        x: np.ndarray,
        size: IntPair = 2,
        stride: IntPair | None = None,
        padding: PoolPadding = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ) -> tuple[np.ndarray, AvgPoolCtxT]:
        """x: (N, H, W, C) -> y: (N, OH, OW, C), each window's mean; stride None means size.

        padding, ceil_mode and count_include_pad (the divisor) as the module docstring's
        Pooling says.
        """
        ...

    def avgpool2d_backward(self, dy: np.ndarray, ctx: AvgPoolCtxT) -> np.ndarray:
        """dy: (N, OH, OW, C) -> dx: (N, H, W, C); each window's gradient, divided by its
        divisor, goes to each of its elements inside x."""
        ...


def check_ctx(ctx: object, expected: type | tuple[type, ...], backend: str) -> None:
    """Raise TypeError unless ctx is one of `backend`'s ctx types `expected`: a backward given
    None or another backend's ctx fails here with what it got and where that came from."""
    if isinstance(ctx, expected):
        return
    types = expected if isinstance(expected, tuple) else (expected,)
    names = " or ".join(t.__name__ for t in types)
    if ctx is None:
        got = "None"
    else:
        module = type(ctx).__module__
        origin = module.rsplit(".", 1)[-1] if module.startswith("kernels.") else module
        got = f"{type(ctx).__name__} (from {origin})"
    raise TypeError(
        f"{backend}: ctx must be the ctx {backend}'s forward returned ({names}), got {got}"
    )


@runtime_checkable
class Warmup(Protocol):
    """The optional member of a backend: ``isinstance(module, Warmup)`` says it has one."""

    def warmup(
        self, dtypes: Sequence[DTypeLike] | None = None, ops: Sequence[str] | None = None
    ) -> None:
        """Compile (or load from the disk cache) the kernels of `ops` ("conv2d", "maxpool2d",
        "avgpool2d"; None = all) for `dtypes` (None = float32 and float64)."""
        ...

    def warmup_cached(
        self, dtypes: Sequence[DTypeLike] | None = None, ops: Sequence[str] | None = None
    ) -> bool:
        """True when warmup(dtypes, ops) will load from the disk cache (fast) rather than compile
        (seconds per kernel): a trainer then compiles in the background (model/warmup.py)."""
        ...


@runtime_checkable
class ConvBackwardCtx(Protocol):
    """Optional member (numba, winograd): the ctx conv2d_backward needs, built from the layer's
    inputs without running the forward, so that auto can run a layer's forward on one backend
    and its backward on another."""

    def conv2d_backward_ctx(
        self,
        x: np.ndarray,
        w: np.ndarray,
        b: np.ndarray | None = None,
        stride: IntPair = 1,
        padding: Padding = 0,
        dilation: IntPair = 1,
        groups: int = 1,
    ) -> ConvCtx | None:
        """The ctx of conv2d_forward(x, w, b, stride, padding, dilation, groups) as far as
        conv2d_backward reads it, or None where the backward needs the forward's intermediate
        results."""
        ...


@runtime_checkable
class ConvMaxPool(Protocol):
    """Optional members (numba, auto): a Conv2D's forward and the 2x2 MaxPool2D after it in one
    call, and their backward passes in one call. model.layers.Conv2D.forward_maxpool and
    backward_maxpool use them where a backend has them."""

    def conv2d_maxpool2d_forward(
        self,
        x: np.ndarray,
        w: np.ndarray,
        b: np.ndarray | None = None,
        stride: IntPair = 1,
        padding: Padding = 0,
        size: IntPair = 2,
        pool_stride: IntPair | None = None,
        dilation: IntPair = 1,
        groups: int = 1,
    ) -> tuple[np.ndarray, ConvCtx, MaxPoolCtx] | None:
        """maxpool2d_forward(conv2d_forward(x, w, b, stride, padding, dilation, groups), size,
        pool_stride) as (y, the conv's ctx, the pool's ctx), the same numbers and ctxs as the two
        calls, or None (nothing run) where the backend does not fuse that pair (any dilation or
        groups other than 1 included); the caller then runs the two."""
        ...

    def conv2d_maxpool2d_backward(
        self, dy: np.ndarray, conv_ctx: ConvCtx, pool_ctx: MaxPoolCtx, need_dx: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None] | None:
        """conv2d_backward(maxpool2d_backward(dy, pool_ctx), conv_ctx, need_dx): (dx or None,
        dw, db or None), the same numbers as the two calls, or None (nothing run) where the
        backend does not fuse them; the caller then runs the two."""
        ...
