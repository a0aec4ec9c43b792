"""auto backend: each layer runs on the backend that is fastest for its shape, found by timing.

Like cuDNN's benchmark mode: the first call with a new (op, shapes, stride, padding, dtype,
thread settings) times every candidate backend on that call's own arrays, keeps the fastest,
and remembers the choice; later calls go straight to it. A convolution's forward and backward
may run on two backends (forward on F, backward on B, where B builds its ctx from the layer's
inputs: conv2d_backward_ctx, numba and winograd's fused path): such a mix is proposed by the
passes timed apart and chosen only when, timed as it runs (F's forward, B's ctx, B's backward),
it beats the best single backend. A pooling's passes are chosen together. A Conv2D followed by
a MaxPool2D (conv2d_maxpool2d_forward) is also chosen as a pair: numba's fused pass against
the two layers on their own choices. How candidates are timed: kernels/tuning_policy.py.

Choices are cached on disk (kernels/tuning_cache.py): one file per machine fingerprint (CPU
model, vector extensions, numpy and its BLAS, numba, the kernels' own source) in the user cache
directory, and every key ends with the thread settings in force (BLAS thread limit, numba's
thread count), so a choice timed under two BLAS threads is not run under the trainer's one.

    mode "cached" (default)  use the cache file, time only shapes it does not know
    mode "fresh"             time every shape again and rewrite their entries
    mode "off"               time nothing: a fixed rule (winograd for 3x3 stride-1 convolutions
                             with at least WINOGRAD_MIN_CHANNELS input channels, else numba)

The mode and cache directory are a Tuner's (kernels/tuning.py), scoped with
`with auto.using(mode=..., cache_dir=...):` or set with configure(mode=...); a bad cache file or
entry is dropped with a warning and timed again, and never stops a run. choices() returns what
was chosen (for run logs and benchmark reports).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import tuning_policy
from .contract import ConvCtx, MaxPoolCtx, PoolCtx, check_ctx
from .geometry import (
    ConvGeometry,
    conv_geometry,
    pool_geometry,
    pooled_conv_geometry,
)
from .tuning import CONV_CANDIDATES, POOL_CANDIDATES, conv_key, pair_key, pool_key
from .tuning import FUSED as FUSED
from .tuning import SEPARATE as SEPARATE
from .tuning import available as _available
from .tuning import backend as _backend
from .tuning import cache_dir as cache_dir
from .tuning import cache_path as cache_path
from .tuning import choices as choices
from .tuning import choose as _choose
from .tuning import configure as configure
from .tuning import describe as describe
from .tuning import mode as mode
from .tuning import non_default as _options
from .tuning import tuner as tuner
from .tuning import using as using
from .tuning_cache import machine_fingerprint as machine_fingerprint  # bench/machine.py records it

WINOGRAD_MIN_CHANNELS = 8


def _rule(op: str, g) -> str:
    """The "off" mode's choice: no timing."""
    if op == "conv" and (g.kh, g.kw, g.sh, g.sw) == (3, 3, 1, 1):
        if g.c_in >= WINOGRAD_MIN_CHANNELS and _available(["winograd"]):
            return "winograd"
    return (_available(["numba"]) or ["im2col"])[0]


# ---------------------------------------------------------------- convolution


@dataclass(frozen=True, eq=False)
class AutoConvCtx(ConvCtx):
    """backend: the backend that runs the backward pass; inner: its ctx; forward: the backend
    that ran the forward ("" when the same)."""

    backend: str
    inner: Any
    forward: str = ""


@dataclass(frozen=True, eq=False)
class AutoMaxPoolCtx(MaxPoolCtx):
    """MaxPoolCtx (argmax is the chosen backend's), plus the backend's name and its ctx."""

    backend: str
    inner: Any


@dataclass(frozen=True, eq=False)
class AutoPoolCtx(PoolCtx):
    """PoolCtx plus the chosen backend's name and its ctx."""

    backend: str
    inner: Any


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """x: (N, H, W, C_in), w: (KH, KW, C_in / groups, C_out), b: (C_out,) or None
    -> y: (N, OH, OW, C_out), computed by the backend chosen for this shape's forward; the ctx
    is that of the backend chosen for its backward (see the module docstring). dilation and
    groups go to the backends only when not 1."""
    options = _options(dilation=(dilation, 1), groups=(groups, 1))
    g = conv_geometry(x, w, b, stride, padding, **options)
    call = (x, w, b, stride, padding)
    forward, backward = _conv_choice(g, call, options)
    y, inner = _backend(forward).conv2d_forward(*call, **options)
    if backward == forward:
        return y, AutoConvCtx(g, forward, inner)
    rebuilt = _rebuilt_ctx(_backend(backward), call, options)
    if rebuilt is None:  # a cached mix this shape cannot run: B's own forward makes its ctx
        _, rebuilt = _backend(backward).conv2d_forward(*call, **options)
    return y, AutoConvCtx(g, backward, rebuilt, forward)


def conv2d_backward(dy, ctx: AutoConvCtx, need_dx=True):
    """dy: (N, OH, OW, C_out) -> (dx or None, dw, db or None), on the backend chosen for it."""
    check_ctx(ctx, AutoConvCtx, "auto")
    return _backend(ctx.backend).conv2d_backward(dy, ctx.inner, need_dx=need_dx)


def _rebuilt_ctx(be, call: tuple, options: dict[str, Any]):
    """be's backward ctx built from the inputs (ConvBackwardCtx), or None where it has none."""
    build = getattr(be, "conv2d_backward_ctx", None)
    return None if build is None else build(*call, **options)


def _conv_choice(g: ConvGeometry, call: tuple, options: dict[str, Any]) -> tuple[str, str]:
    """(forward backend, backward backend) for conv geometry g, timed on this call's arrays if
    not known yet (_conv_passes)."""
    key = conv_key(g, options)
    record = _choose(key, lambda: _rule("conv", g), lambda: _conv_passes(key, call, options))
    return record["backend"], record.get("backward", record["backend"])


def _conv_passes(key: str, call: tuple, options: dict[str, Any]) -> dict:
    """Each candidate's forward and backward timed on their own, summed per pair (forward on F,
    backward on B, where B == F or B can build its backward ctx from the inputs); a backward is
    timed on that rebuilt ctx where there is one, so every pair ending in B compares on the
    same backward time. The best single backend is the choice unless the best mix (F != B) is
    predicted faster: then the two are timed again as they run (F's forward, B's ctx and
    backward, one call sequence, interleaved against the single's forward and backward), and
    the mix is chosen only if it wins there too: the passes timed apart miss what one pass
    leaves in the caches for the other and what building B's ctx costs.

    Returns {"backend": F, "backward": B, "seconds": {candidate: its forward + backward},
    "forward_seconds": {...}, "backward_seconds": {...}} (None: the candidate failed), and
    "whole_seconds": {describe(choice): seconds} where a mix was timed as it runs."""
    forwards, backwards, rebuildable = {}, {}, set()
    for name in _available(CONV_CANDIDATES):
        be = _backend(name)
        try:
            y, ctx = be.conv2d_forward(*call, **options)
            rebuilt = _rebuilt_ctx(be, call, options)
        except Exception as exc:  # a candidate that cannot run this shape is not a choice
            warnings.warn(f"autotune: {name} failed on {key}: {exc}", RuntimeWarning, 3)
            continue
        if rebuilt is not None:
            rebuildable.add(name)
        forwards[name] = functools.partial(be.conv2d_forward, *call, **options)
        backwards[name] = functools.partial(
            be.conv2d_backward, y, ctx if rebuilt is None else rebuilt
        )
    fwd = tuning_policy.settled_times(forwards, key)
    bwd = tuning_policy.settled_times(backwards, key)
    pairs: dict[tuple[str, str], float] = {}
    for f in forwards:
        for bk in backwards:
            f_s, b_s = fwd[f], bwd[bk]
            if f_s is not None and b_s is not None and (bk == f or bk in rebuildable):
                pairs[(f, bk)] = f_s + b_s
    if not pairs:
        raise RuntimeError(f"autotune: no backend could run {key}")
    single = min((p for p in pairs if p[0] == p[1]), key=pairs.__getitem__, default=None)
    mix = min((p for p in pairs if p[0] != p[1]), key=pairs.__getitem__, default=None)
    both = {n: (fwd[n], bwd[n]) for n in forwards}
    record: dict[str, Any] = {
        "seconds": {n: None if None in s else sum(s) for n, s in both.items()},
        "forward_seconds": fwd,
        "backward_seconds": bwd,
    }
    choice = single
    if mix is not None and (single is None or pairs[mix] < pairs[single]):
        runs = {_pass_names(mix): _as_run(mix, call, options)}
        if single is not None:
            runs[_pass_names(single)] = _as_run(single, call, options)
        whole = tuning_policy.fastest(runs, key)
        record["whole_seconds"] = whole["seconds"]
        choice = mix if whole["backend"] == _pass_names(mix) else single
    assert choice is not None  # pairs is not empty: a single or a mix
    return {"backend": choice[0], "backward": choice[1], **record}


def _pass_names(passes: tuple[str, str]) -> str:
    return describe({"backend": passes[0], "backward": passes[1]})


def _as_run(passes: tuple[str, str], call: tuple, options: dict[str, Any]) -> Callable[[], None]:
    """A layer's forward and backward as conv2d_forward and conv2d_backward run them when the
    choice is passes = (F, B)."""
    forward, backward = _backend(passes[0]), _backend(passes[1])

    def run() -> None:
        y, ctx = forward.conv2d_forward(*call, **options)
        if passes[1] != passes[0]:
            ctx = _rebuilt_ctx(backward, call, options)
        backward.conv2d_backward(y, ctx)

    return run


# ---------------------------------------------------------------- conv + max-pool pair


def conv2d_maxpool2d_forward(
    x, w, b=None, stride=1, padding=0, size=2, pool_stride=None, dilation=1, groups=1
):
    """conv2d_forward then maxpool2d_forward in one pass (numba's conv2d_maxpool2d_forward: the
    convolution's output is never written) where the pair's choice (_pair_choice) is "fused";
    None otherwise, and the caller runs the two calls (each on its own choice). A dilated or
    grouped convolution is never fused: None."""
    if _options(dilation=(dilation, 1), groups=(groups, 1)):
        return None
    g = conv_geometry(x, w, b, stride, padding)
    pg = pooled_conv_geometry(g, size, pool_stride)
    if _pair_choice(g, pg, (x, w, b, stride, padding), size, pool_stride) != FUSED:
        return None
    fused = _backend("numba").conv2d_maxpool2d_forward(x, w, b, stride, padding, size, pool_stride)
    if fused is None:
        return None
    y, conv_ctx, pool_ctx = fused
    return (
        y,
        AutoConvCtx(g, "numba", conv_ctx),
        AutoMaxPoolCtx(pg, pool_ctx.argmax, "numba", pool_ctx),
    )


def _pair_choice(g, pg, call: tuple, size, pool_stride) -> str:
    """FUSED (numba's one-pass conv + max-pool, forward and backward) or SEPARATE (the conv and
    the pool each on its own choice), timed against each other where numba fuses the pair.
    Timed alone, a convolution can lose to another backend by less than fusing it with its
    pool saves: a conv choice of im2col then made the `small` network's epoch slower on auto
    than on numba (bench.compare's paired section, auto / numba on `small`), so the pair is
    timed as the network runs it."""

    def fusable() -> bool:
        return bool(_available(["numba"])) and _backend("numba").fuses_maxpool(g, pg)

    def rule() -> str:
        both = _rule("conv", g) == _rule("pool", pg) == "numba"
        return FUSED if both and fusable() else SEPARATE

    def decide() -> dict:
        if not fusable():
            return {"backend": SEPARATE, "seconds": {}}  # the only choice: nothing to time
        # the conv's and the pool's own choices first, so that timing them is not in the pair's
        y, _ = conv2d_forward(*call)
        _pool_choice("maxpool2d", y, size, pool_stride, {})
        numba = _backend("numba")

        def fused():
            p, conv_ctx, pool_ctx = numba.conv2d_maxpool2d_forward(*call, size, pool_stride)
            numba.conv2d_maxpool2d_backward(p, conv_ctx, pool_ctx)

        def separate():
            yc, conv_ctx = conv2d_forward(*call)
            p, pool_ctx = maxpool2d_forward(yc, size, pool_stride)
            conv2d_backward(maxpool2d_backward(p, pool_ctx), conv_ctx)

        return tuning_policy.fastest({FUSED: fused, SEPARATE: separate}, pair_key(g, pg))

    return _choose(pair_key(g, pg), rule, decide)["backend"]


def conv2d_maxpool2d_backward(dy, conv_ctx: AutoConvCtx, pool_ctx: AutoMaxPoolCtx, need_dx=True):
    """conv2d_backward(maxpool2d_backward(dy, pool_ctx), conv_ctx, need_dx) in one call where
    both backward passes fall to numba (the conv's backward backend and the pool's: its
    conv2d_maxpool2d_backward); None otherwise, and the caller runs the two calls."""
    if conv_ctx.backend != "numba" or pool_ctx.backend != "numba":
        return None
    fused = _backend("numba").conv2d_maxpool2d_backward
    return fused(dy, conv_ctx.inner, pool_ctx.inner, need_dx)


# ---------------------------------------------------------------- pooling


def _pool_choice(op: str, x, size, stride, options: dict[str, Any]) -> str:
    """The backend for pooling op ("maxpool2d", "avgpool2d") of x, timed on x if not known."""
    g = pool_geometry(x, size, stride, **options)
    key = pool_key(op, g, options)

    def run_for(be):
        def run():
            y, ctx = getattr(be, f"{op}_forward")(x, size, stride, **options)
            getattr(be, f"{op}_backward")(y, ctx)

        return run

    def decide():
        runs = {name: run_for(_backend(name)) for name in _available(POOL_CANDIDATES)}
        return tuning_policy.fastest(runs, key)

    return _choose(key, lambda: _rule("pool", g), decide)["backend"]


def _pool_forward(op: str, x, size, stride, options: dict[str, Any]):
    g = pool_geometry(x, size, stride, **options)
    name = _pool_choice(op, x, size, stride, options)
    y, inner = getattr(_backend(name), f"{op}_forward")(x, size, stride, **options)
    if op == "maxpool2d":
        return y, AutoMaxPoolCtx(g, inner.argmax, name, inner)
    return y, AutoPoolCtx(g, name, inner)


def maxpool2d_forward(x, size=2, stride=None, padding=0, ceil_mode=False):
    """x: (N, H, W, C) -> y: (N, OH, OW, C) on the backend chosen for this shape; padding and
    ceil_mode go to the backends only when not the defaults."""
    options = _options(padding=(padding, 0), ceil_mode=(ceil_mode, False))
    return _pool_forward("maxpool2d", x, size, stride, options)


def maxpool2d_backward(dy, ctx: AutoMaxPoolCtx):
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C), on the forward's backend."""
    check_ctx(ctx, AutoMaxPoolCtx, "auto")
    return _backend(ctx.backend).maxpool2d_backward(dy, ctx.inner)


def avgpool2d_forward(x, size=2, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """x: (N, H, W, C) -> y: (N, OH, OW, C) on the backend chosen for this shape; padding,
    ceil_mode and count_include_pad go to the backends only when not the defaults."""
    options = _options(
        padding=(padding, 0),
        ceil_mode=(ceil_mode, False),
        count_include_pad=(count_include_pad, True),
    )
    return _pool_forward("avgpool2d", x, size, stride, options)


def avgpool2d_backward(dy, ctx: AutoPoolCtx):
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C), on the forward's backend."""
    check_ctx(ctx, AutoPoolCtx, "auto")
    return _backend(ctx.backend).avgpool2d_backward(dy, ctx.inner)


# ---------------------------------------------------------------- warmup


def warmup(dtypes=None, ops=None) -> None:
    """Compile the candidates that have a warmup() (numba, winograd) for `dtypes` and `ops`."""
    for name in _available(CONV_CANDIDATES):
        warm = getattr(_backend(name), "warmup", None)
        if warm is not None:
            warm(dtypes, ops)


def warmup_cached(dtypes=None, ops=None) -> bool:
    """True when every candidate's warmup(dtypes, ops) will load from a disk cache."""
    return all(
        getattr(_backend(name), "warmup_cached", lambda d, o: True)(dtypes, ops)
        for name in _available(CONV_CANDIDATES)
        if hasattr(_backend(name), "warmup")
    )
