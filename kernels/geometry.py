"""Argument checking and output-size arithmetic shared by every backend (the only copy).

Every backend calls :func:`conv_geometry` / :func:`pool_geometry` first, so a bad argument gets
the same clear error whichever backend the user picked, and no backend re-derives output sizes.
:func:`argmax_dtype` is the one rule for the dtype of a max-pool's argmax.

Layout conventions (all backends; kernels/contract.py states the whole contract):
    x:  (N, H, W, C_in)            activations, NHWC
    w:  (KH, KW, C_in // groups, C_out)  conv weights, HWIO; output channel o sees the input
                                   channels of group o // (C_out // groups), as in PyTorch
    b:  (C_out,) or None           bias
    y:  (N, OH, OW, C_out)         OH = (H + top + bottom - (KH - 1)*dilation - 1) // sh + 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias, TypeGuard

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# What callers may pass; the functions below check it and normalise it to pairs of ints.
IntPair: TypeAlias = int | tuple[int, int]  # stride, pool size: n means (n, n)
# n, (ph, pw), ((top, bottom), (left, right)), "valid" or "same" (TensorFlow's)
Padding: TypeAlias = int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]] | str
Shape4: TypeAlias = tuple[int, int, int, int]


def as_pair(value: object, name: str) -> tuple[int, int]:
    """Normalise an int or an (h, w) pair of ints to a tuple of two ints (TypeError otherwise)."""

    def is_int(v: object) -> TypeGuard[int | np.integer]:
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    if is_int(value):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")


def check_array(a: object, name: str, ndim: int, layout: str) -> None:
    """Raise a clear error unless `a` is an `ndim`-D float32/float64 numpy array."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape {layout}, got {type(a).__name__}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {a.shape}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")


def _check_same_dtype(x: np.ndarray, other: np.ndarray, name: str) -> None:
    # Mixing dtypes would make NumPy silently upcast float32 work to float64.
    if other.dtype != x.dtype:
        raise TypeError(
            f"{name} has dtype {other.dtype} but x has dtype {x.dtype}; "
            f"cast one of them so both are float32 or both float64"
        )


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def resolve_padding(
    padding: Padding,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    dh: int = 1,
    dw: int = 1,
    height: int | None = None,
    width: int | None = None,
) -> tuple[int, int, int, int]:
    """Turn any padding form into zero padding (top, bottom, left, right).

    Forms: n; (ph, pw); ((top, bottom), (left, right)); "valid" (none); "same" as TensorFlow
    pads it: OH = ceil(H / sh), the total padding max((OH - 1)*sh + (KH - 1)*dh + 1 - H, 0)
    split with the odd row at the bottom (column at the right), so a Keras layer with
    padding="same" maps one-to-one even for an even kernel or a stride > 1. For stride 1 this is
    also PyTorch's padding="same". "same" needs the input size (height, width).
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return 0, 0, 0, 0
        if mode == "same":
            if height is None or width is None:
                raise ValueError('padding="same" needs the input size (height, width)')
            top, bottom = _same_padding(height, kh, sh, dh)
            left, right = _same_padding(width, kw, sw, dw)
            return top, bottom, left, right
        raise ValueError(
            f'padding must be an int, (ph, pw), ((top, bottom), (left, right)), "valid" or '
            f'"same", got {padding!r}'
        )
    if (
        isinstance(padding, (tuple, list))
        and len(padding) == 2
        and all(isinstance(p, (tuple, list)) for p in padding)
    ):
        (top, bottom), (left, right) = (as_pair(p, "padding") for p in padding)
    else:
        if not (_is_int(padding) or isinstance(padding, (tuple, list))):
            raise TypeError(
                f"padding must be an int, (ph, pw), ((top, bottom), (left, right)), "
                f'"valid" or "same", got {padding!r}'
            )
        (top, left) = as_pair(padding, "padding")
        bottom, right = top, left
    if min(top, bottom, left, right) < 0:
        raise ValueError(
            f"padding must be >= 0, got ((top, bottom), (left, right)) = "
            f"(({top}, {bottom}), ({left}, {right}))"
        )
    return top, bottom, left, right


def _same_padding(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME along one axis: (before, after), the odd one after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _positive_pair(value: object, name: str) -> tuple[int, int]:
    h, w = as_pair(value, name)
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be >= 1, got ({h}, {w})")
    return h, w


@dataclass(frozen=True)
class ConvGeometry:
    """Everything a backend needs to know about one conv2d call's shapes.

    Padding is (ph, ph_end) rows above and below, (pw, pw_end) columns left and right; dilation
    (dil_h, dil_w) is the step between kernel taps; `groups` splits C_in and C_out into that many
    independent convolutions (w holds C_in // groups input channels per output channel).
    """

    n: int
    height: int  # input rows and columns (not `w`, which means weights everywhere else)
    width: int
    c_in: int
    kh: int
    kw: int
    c_out: int
    sh: int
    sw: int
    ph: int  # rows of zeros above (and below, unless ph_end differs)
    pw: int  # columns of zeros left (and right, unless pw_end differs)
    out_h: int
    out_w: int
    has_bias: bool
    dtype: np.dtype
    ph_end: int  # rows of zeros below
    pw_end: int  # columns of zeros right
    dil_h: int
    dil_w: int
    groups: int

    @property
    def c_in_group(self) -> int:
        """Input channels each output channel sees: C_in // groups (w's third axis)."""
        return self.c_in // self.groups

    @property
    def c_out_group(self) -> int:
        return self.c_out // self.groups

    @property
    def kh_span(self) -> int:
        """Rows one window covers: (KH - 1) * dil_h + 1."""
        return (self.kh - 1) * self.dil_h + 1

    @property
    def kw_span(self) -> int:
        return (self.kw - 1) * self.dil_w + 1

    @property
    def plain(self) -> bool:
        """No groups, no dilation, the same padding on both sides: the convolution the fast
        paths (numba's register tiles and planes, winograd) compute natively."""
        return (
            self.groups == 1
            and (self.dil_h, self.dil_w) == (1, 1)
            and (self.ph, self.pw) == (self.ph_end, self.pw_end)
        )

    @property
    def depthwise(self) -> bool:
        """One group per input channel (C_out = multiplier * C_in), C_in > 1."""
        return self.groups == self.c_in > 1

    @property
    def padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, bottom), (left, right)): a form conv2d_forward accepts as `padding`."""
        return (self.ph, self.ph_end), (self.pw, self.pw_end)

    @property
    def x_shape(self) -> Shape4:
        return (self.n, self.height, self.width, self.c_in)

    @property
    def w_shape(self) -> Shape4:
        return (self.kh, self.kw, self.c_in_group, self.c_out)

    @property
    def y_shape(self) -> Shape4:
        return (self.n, self.out_h, self.out_w, self.c_out)

    @property
    def padded_shape(self) -> Shape4:
        return (
            self.n,
            self.height + self.ph + self.ph_end,
            self.width + self.pw + self.pw_end,
            self.c_in,
        )

    @property
    def flops(self) -> int:
        """Multiply-adds of the forward pass counted as 2 FLOPs each."""
        return (
            2 * self.n * self.out_h * self.out_w * self.c_out * self.kh * self.kw * self.c_in_group
        )


def conv_geometry(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: IntPair,
    padding: Padding,
    dilation: IntPair = 1,
    groups: int = 1,
) -> ConvGeometry:
    """Validate conv2d arguments and compute the output size (the only copy of this arithmetic).

    OH = (H + top + bottom - (KH - 1) * dil_h - 1) // sh + 1, OW likewise. Every check runs
    before any backend computes anything.
    """
    check_array(x, "x", 4, "(N, H, W, C_in)")
    check_array(w, "w", 4, "(KH, KW, C_in // groups, C_out)")
    _check_same_dtype(x, w, "w")
    n, height, width, c_in = x.shape
    kh, kw, w_c_in, c_out = w.shape
    if not _is_int(groups):
        raise TypeError(f"groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if c_in % groups or c_out % groups:
        raise ValueError(
            f"groups={groups} must divide both C_in={c_in} (x.shape={x.shape}) and "
            f"C_out={c_out} (w.shape={w.shape})"
        )
    if w_c_in * groups != c_in:
        per_group = "" if groups == 1 else f" per group of {groups}"
        raise ValueError(
            f"w has C_in={w_c_in}{per_group} (w.shape={w.shape}) but x has C={c_in} "
            f"(x.shape={x.shape}); w must be (KH, KW, {c_in // groups}, C_out)"
            + ("" if groups == 1 else f" (C_in // groups with groups={groups})")
        )
    if min(w.shape) < 1 or min(x.shape) < 1:
        raise ValueError(
            f"x and w must have no empty axis, got x.shape={x.shape}, w.shape={w.shape}"
        )
    if b is not None:
        check_array(b, "b", 1, f"({c_out},)")
        _check_same_dtype(x, b, "b")
        if b.shape != (c_out,):
            raise ValueError(f"b must have shape ({c_out},) to match w's C_out, got {b.shape}")
    sh, sw = _positive_pair(stride, "stride")
    dh, dw = _positive_pair(dilation, "dilation")
    top, bottom, left, right = resolve_padding(padding, kh, kw, sh, sw, dh, dw, height, width)
    kh_span, kw_span = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if kh_span > height + top + bottom or kw_span > width + left + right:
        spans = (
            ""
            if (dh, dw) == (1, 1)
            else f" with dilation ({dh}, {dw}) spans ({kh_span}, {kw_span}) and"
        )
        raise ValueError(
            f"kernel ({kh}, {kw}){spans} is larger than the padded input "
            f"({height + top + bottom}, {width + left + right}) (input {height}x{width}, "
            f"padding (({top}, {bottom}), ({left}, {right})))"
        )
    out_h = (height + top + bottom - kh_span) // sh + 1
    out_w = (width + left + right - kw_span) // sw + 1
    return ConvGeometry(
        n=n,
        height=height,
        width=width,
        c_in=c_in,
        kh=kh,
        kw=kw,
        c_out=c_out,
        sh=sh,
        sw=sw,
        ph=top,
        pw=left,
        out_h=out_h,
        out_w=out_w,
        has_bias=b is not None,
        dtype=x.dtype,
        ph_end=bottom,
        pw_end=right,
        dil_h=dh,
        dil_w=dw,
        groups=groups,
    )


def pad_conv_input(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """x (N, H, W, C_in) -> g.padded_shape, zeros around (no copy when g has no padding)."""
    if g.ph == g.ph_end == g.pw == g.pw_end == 0:
        return x
    return np.pad(x, ((0, 0), (g.ph, g.ph_end), (g.pw, g.pw_end), (0, 0)))


def crop_conv_input(x_padded: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """Inverse of :func:`pad_conv_input`: the (N, H, W, C) view inside the padding."""
    return x_padded[:, g.ph : g.ph + g.height, g.pw : g.pw + g.width, :]


# What callers may pass as pool padding: n, (ph, pw), or ((top, bottom), (left, right)).
PoolPadding: TypeAlias = int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class PoolGeometry:
    """Shapes of one pooling call: windows of (kh, kw) every (sh, sw) over x padded by pad_top /
    pad_bottom rows and pad_left / pad_right columns; out_h, out_w by PyTorch's rule (ceil_mode:
    see :func:`pool_geometry`). count_include_pad is avg-pool's divisor rule (max-pool ignores it).
    """

    n: int
    height: int
    width: int
    c: int
    kh: int
    kw: int
    sh: int
    sw: int
    out_h: int
    out_w: int
    dtype: np.dtype
    pad_top: int = 0
    pad_bottom: int = 0
    pad_left: int = 0
    pad_right: int = 0
    ceil_mode: bool = False
    count_include_pad: bool = True

    @property
    def x_shape(self) -> Shape4:
        return (self.n, self.height, self.width, self.c)

    @property
    def y_shape(self) -> Shape4:
        return (self.n, self.out_h, self.out_w, self.c)

    @property
    def padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, bottom), (left, right)), the form pool_geometry accepts."""
        return (self.pad_top, self.pad_bottom), (self.pad_left, self.pad_right)

    @property
    def window_span(self) -> tuple[int, int]:
        """(rows, columns) the windows cover from the top-left padded corner: (OH-1)*sh + KH
        and (OW-1)*sw + KW (the shape of the extent :func:`pool_padded` builds)."""
        return (self.out_h - 1) * self.sh + self.kh, (self.out_w - 1) * self.sw + self.kw

    @property
    def padded_shape(self) -> Shape4:
        """The (N, rows, columns, C) extent every window lies in (see window_span)."""
        rows, cols = self.window_span
        return (self.n, rows, cols, self.c)

    @property
    def plain(self) -> bool:
        """True when every window lies inside x: no padding, and no ceil_mode window running
        past the input. Backends then run their unpadded kernels and every divisor is KH*KW."""
        no_pad = (self.pad_top, self.pad_bottom, self.pad_left, self.pad_right) == (0, 0, 0, 0)
        rows, cols = self.window_span
        return no_pad and rows <= self.height and cols <= self.width


_POOL_PADDING_FORMS = (
    "an int, a pair of ints (ph, pw) or a pair of pairs ((top, bottom), (left, right))"
)


def _pool_padding(padding: object) -> tuple[int, int, int, int]:
    """n, (ph, pw) or ((top, bottom), (left, right)) -> (top, bottom, left, right), each >= 0."""
    try:
        if (
            isinstance(padding, (tuple, list))
            and len(padding) == 2
            and all(isinstance(p, (tuple, list)) for p in padding)
        ):
            (top, bottom), (left, right) = (
                as_pair(padding[0], "padding"),
                as_pair(padding[1], "padding"),
            )
        else:
            ph, pw = as_pair(padding, "padding")
            top, bottom, left, right = ph, ph, pw, pw
    except TypeError:
        raise TypeError(f"padding must be {_POOL_PADDING_FORMS}, got {padding!r}") from None
    if min(top, bottom, left, right) < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return top, bottom, left, right


def _check_flag(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _pooled_size(size: int, lo: int, hi: int, k: int, s: int, ceil_mode: bool) -> int:
    """PyTorch's output size along one axis (the one copy of this arithmetic, see pool_geometry)."""
    out = (size + lo + hi - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + lo:
        out -= 1  # the last window would start in the bottom/right padding: drop it
    return out


def pool_geometry(
    x: np.ndarray,
    size: IntPair,
    stride: IntPair | None,
    padding: PoolPadding = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> PoolGeometry:
    """Validate pooling arguments and compute the output size (the only copy of this arithmetic).

    stride=None means stride = size. padding: n, (ph, pw) or ((top, bottom), (left, right)),
    each at most half the window (KH // 2 rows, KW // 2 columns, PyTorch's rule: no window is
    padding only). Per axis (rows shown; lo, hi = top, bottom padding)::

        OH = (H + lo + hi - KH + (sh - 1 if ceil_mode else 0)) // sh + 1
        with ceil_mode, OH -= 1 if (OH - 1)*sh >= H + lo   (the last window starts inside the
                                                             input or the top padding)
    """
    check_array(x, "x", 4, "(N, H, W, C)")
    if min(x.shape) < 1:
        raise ValueError(f"x must have no empty axis, got x.shape={x.shape}")
    kh, kw = _positive_pair(size, "size")
    sh, sw = (kh, kw) if stride is None else _positive_pair(stride, "stride")
    top, bottom, left, right = _pool_padding(padding)
    ceil_mode = _check_flag(ceil_mode, "ceil_mode")
    count_include_pad = _check_flag(count_include_pad, "count_include_pad")
    if max(top, bottom) > kh // 2 or max(left, right) > kw // 2:
        raise ValueError(
            f"padding (({top}, {bottom}), ({left}, {right})) must be at most half the pool size "
            f"({kh}, {kw}): at most ({kh // 2}, {kw // 2})"
        )
    n, height, width, c = x.shape
    if kh > height + top + bottom or kw > width + left + right:
        padded = f" padded to ({height + top + bottom}, {width + left + right})"
        raise ValueError(
            f"pool size ({kh}, {kw}) is larger than the input ({height}, {width})"
            f"{padded if top + bottom + left + right else ''} (x.shape={x.shape})"
        )
    out_h = _pooled_size(height, top, bottom, kh, sh, ceil_mode)
    out_w = _pooled_size(width, left, right, kw, sw, ceil_mode)
    return PoolGeometry(
        n,
        height,
        width,
        c,
        kh,
        kw,
        sh,
        sw,
        out_h,
        out_w,
        x.dtype,
        pad_top=top,
        pad_bottom=bottom,
        pad_left=left,
        pad_right=right,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
    )


def pool_padded(x: np.ndarray, g: PoolGeometry, fill: float) -> np.ndarray:
    """x (N, H, W, C) -> g.padded_shape, x at (pad_top, pad_left) and `fill` around it: every
    window of g, as an unpadded window of the result (rows/columns no window reaches are cut).

    Max-pool fills with -inf, avg-pool with 0. A copy, for the padded path only.
    """
    out = np.full(g.padded_shape, fill, dtype=x.dtype)
    rows = min(g.height, out.shape[1] - g.pad_top)
    cols = min(g.width, out.shape[2] - g.pad_left)
    out[:, g.pad_top : g.pad_top + rows, g.pad_left : g.pad_left + cols] = x[:, :rows, :cols]
    return out


def pool_unpadded(a_padded: np.ndarray, g: PoolGeometry) -> np.ndarray:
    """Inverse of :func:`pool_padded` for gradients: a_padded (g.padded_shape) -> (N, H, W, C),
    zero at the rows/columns of x no window reaches."""
    out = np.zeros(g.x_shape, dtype=a_padded.dtype)
    rows = min(g.height, a_padded.shape[1] - g.pad_top)
    cols = min(g.width, a_padded.shape[2] - g.pad_left)
    out[:, :rows, :cols] = a_padded[:, g.pad_top : g.pad_top + rows, g.pad_left : g.pad_left + cols]
    return out


def pool_counts(g: PoolGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(rows (OH,), columns (OW,)) int64: how many positions of each window avg-pool divides by
    along each axis; window (i, j)'s divisor is rows[i] * columns[j].

    count_include_pad: the positions inside the padded input (x and its padding, but not the
    part of a ceil_mode window past it); else only the positions inside x. As PyTorch.
    """

    def counts(out: int, s: int, k: int, lo: int, hi: int, size: int) -> np.ndarray:
        start = np.arange(out, dtype=np.int64) * s - lo  # in x's coordinates
        if g.count_include_pad:
            return np.minimum(start + k, size + hi) - start
        return np.minimum(start + k, size) - np.maximum(start, 0)

    return (
        counts(g.out_h, g.sh, g.kh, g.pad_top, g.pad_bottom, g.height),
        counts(g.out_w, g.sw, g.kw, g.pad_left, g.pad_right, g.width),
    )


def pool_scales(g: PoolGeometry) -> np.ndarray:
    """(OH, OW) in g.dtype: 1 / each window's divisor (see :func:`pool_counts`), the factor
    avg-pool's forward multiplies each window's sum by and its backward each window's dy."""
    rows, cols = pool_counts(g)
    return (1.0 / (rows[:, None] * cols[None, :])).astype(g.dtype)


def argmax_inside(g: PoolGeometry, argmax: np.ndarray) -> np.ndarray:
    """argmax (N, OH, OW, C) over padded windows (padding filled with -inf) -> the same, where a
    padded position that won (a window whose elements inside x are all -inf, tied with the
    padding) is replaced by the window's first position inside x: padding never wins."""
    rows = np.arange(g.out_h)[:, None] * g.sh - g.pad_top + np.arange(g.kh)  # (OH, KH)
    cols = np.arange(g.out_w)[:, None] * g.sw - g.pad_left + np.arange(g.kw)  # (OW, KW)
    row_in = (rows >= 0) & (rows < g.height)
    col_in = (cols >= 0) & (cols < g.width)
    inside = (row_in[:, None, :, None] & col_in[None, :, None, :]).reshape(g.out_h, g.out_w, -1)
    oh, ow = np.arange(g.out_h)[None, :, None, None], np.arange(g.out_w)[None, None, :, None]
    first_inside = inside.argmax(axis=2)[None, :, :, None].astype(argmax.dtype)
    return np.where(inside[oh, ow, argmax], argmax, first_inside)


def pooled_conv_geometry(g: ConvGeometry, size: IntPair, stride: IntPair | None) -> PoolGeometry:
    """The PoolGeometry of an unpadded, floor-mode pool over the output of conv geometry g
    (validated as pool_geometry does), for a fused conv + pool call that never materialises that
    output. The fused paths run no padded or ceil_mode pool (they decline one, see
    PoolGeometry.plain)."""
    return pool_geometry(np.broadcast_to(np.zeros((), g.dtype), g.y_shape), size, stride)


def argmax_dtype(kh: int, kw: int) -> np.dtype:
    """The dtype of a max-pool argmax over (kh, kw) windows: uint8 when kh*kw <= 255, else intp.

    The argmax holds each window's flat index i*kw + j (at most kh*kw - 1); one byte per output
    keeps it 8x smaller than intp for every usual window, and the rule is the same in every
    backend so that a ctx looks the same whichever backend made it.
    """
    return np.dtype(np.uint8) if kh * kw <= 255 else np.dtype(np.intp)


def check_grad(
    dy: object, expected_shape: tuple[int, ...], dtype: np.dtype, name: str = "dy"
) -> None:
    """Backward passes call this so a wrong dy fails here, not as a broadcast error deep inside."""
    if not isinstance(dy, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy array of shape {expected_shape}, got {type(dy).__name__}"
        )
    if dy.shape != tuple(expected_shape):
        raise ValueError(
            f"{name} must have the forward output's shape {tuple(expected_shape)}, got {dy.shape}"
        )
    if dy.dtype != dtype:
        raise TypeError(f"{name} must have the forward input's dtype {dtype}, got {dy.dtype}")


def pad_hw(x: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """Zero-pad the H and W axes of an NHWC array (no copy when there is nothing to pad)."""
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))


def unpad_hw(x_padded: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """Inverse of :func:`pad_hw`: crop the padding from the H and W axes."""
    h, w = x_padded.shape[1] - 2 * ph, x_padded.shape[2] - 2 * pw
    return x_padded[:, ph : ph + h, pw : pw + w, :]


def flipped_kernel(w: np.ndarray) -> np.ndarray:
    """w (KH, KW, C_in, C_out) -> (KH, KW, C_out, C_in), flipped in both spatial axes: the kernel
    of dX's "full" correlation with dy, for a stride-1 convolution (a view)."""
    return w[::-1, ::-1].transpose(0, 1, 3, 2)
