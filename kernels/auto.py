"""auto backend: each layer runs on the backend that is fastest for its shape, found by timing.

Like cuDNN's benchmark mode: the first call with a new (op, shapes, stride, padding, dtype)
times every candidate backend on that call's own arrays, keeps the fastest, and remembers the
choice; later calls go straight to it. A convolution's forward and backward are timed apart and
may run on two backends: the backward's backend must then build its ctx from the layer's inputs
(conv2d_backward_ctx: numba, winograd's fused path), since another backend's forward ctx means
nothing to it; a pooling's passes are chosen together. The candidates are timed in interleaved
rounds, and the best two again when they finish close (CLOSE_CALL). A Conv2D followed by a
MaxPool2D (conv2d_maxpool2d_forward) is also chosen as a pair: numba's fused pass against the
two layers on their own choices.

Choices are cached on disk per machine (CPU model, vector extensions, numpy and its BLAS,
numba, thread counts, and the kernels' own source) in the user cache directory, so later runs pay nothing:

    mode "cached" (default)  use the cache file, time only shapes it does not know
    mode "fresh"             time every shape again and rewrite the cache
    mode "off"               time nothing: a fixed rule (winograd for 3x3 stride-1 convolutions
                             with at least WINOGRAD_MIN_CHANNELS input channels, else numba)

Set it with configure(mode=...) or the CONVBENCH_AUTOTUNE environment variable. A corrupt or
stale cache file is ignored with a warning and rewritten atomically; it never stops a run.
choices() returns what was chosen in this process (for run logs and benchmark reports).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .contract import ConvCtx, MaxPoolCtx, PoolCtx
from .geometry import (
    ConvGeometry,
    PoolGeometry,
    conv_geometry,
    pool_geometry,
    pooled_conv_geometry,
)

MODES = ("off", "cached", "fresh")
CONV_CANDIDATES = ("winograd", "numba", "im2col", "einsum")
POOL_CANDIDATES = ("numba", "im2col")
WINOGRAD_MIN_CHANNELS = 8
TIMING_REPEATS = 5
# A runner-up within CLOSE_CALL of the best after those rounds is timed again against it, in
# CLOSE_CALL_ROUNDS more sets of rounds: on a shared machine five samples can order two
# backends a few percent apart either way (the `mid` case in report 2026-12-04_183234: numba
# 4.70 ms and winograd 4.84 ms when auto chose, 4.41 and 3.70 ms in the same run's layer timing).
CLOSE_CALL = 1.15
CLOSE_CALL_ROUNDS = 3
CACHE_VERSION = 1

_state: dict[str, Any] = {"mode": None, "cache_dir": None, "table": None, "path": None}
_chosen: dict[str, dict] = {}


def configure(mode: str | None = None, cache_dir: str | os.PathLike | None = None) -> None:
    """Set the autotune mode ("off", "cached", "fresh") and/or the cache directory."""
    if mode is not None:
        if mode not in MODES:
            raise ValueError(f"autotune mode must be one of {', '.join(MODES)}, got {mode!r}")
        _state["mode"] = mode
    if cache_dir is not None:
        _state["cache_dir"] = Path(cache_dir)
    _state["table"] = None  # re-read (or re-time) under the new settings
    _chosen.clear()


def mode() -> str:
    """The autotune mode in force: configure()'s, else $CONVBENCH_AUTOTUNE, else "cached"."""
    chosen = _state["mode"] or os.environ.get("CONVBENCH_AUTOTUNE", "cached")
    if chosen not in MODES:
        raise ValueError(f"CONVBENCH_AUTOTUNE must be one of {', '.join(MODES)}, got {chosen!r}")
    return chosen


def choices() -> dict[str, dict]:
    """{layer key: {"backend": name, "seconds": {candidate: fwd+bwd seconds}, "source": ...}}
    for every layer shape this process has run, in first-use order."""
    return dict(_chosen)


# ---------------------------------------------------------------- machine and cache file


def _cpu_model_and_isa() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")
    return model, [f for f in wanted if f in flags]


def machine_fingerprint() -> dict:
    """What makes one machine's timings differ from another's (the cache is keyed on it)."""
    from threadpoolctl import threadpool_info

    from . import threads

    model, isa = _cpu_model_and_isa()
    blas = [
        f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    ]
    return {
        "cpu": model,
        "isa": isa,
        "cores": os.cpu_count(),
        "numpy": np.__version__,
        "blas": sorted(blas),
        "numba": importlib.metadata.version("numba"),
        # threads.count(), not numba.get_num_threads(): the first of them starts numba's workers,
        # and only kernels/threads.py starts them sleeping between kernels; started spinning
        # here, a `deep` training step with auto ran 1.6x slower (33 against 19 ms)
        "numba_threads": threads.count(),
        "python": platform.python_version(),
        # the candidates' code: a change to any kernel times every shape again
        "kernels": _kernels_digest(),
    }


def _kernels_digest() -> str:
    """A hash of the kernels package's source files (the backends auto chooses between)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """configure()'s directory, else $CONVBENCH_CACHE, else ~/.cache/convbench ($XDG_CACHE_HOME)."""
    if _state["cache_dir"] is not None:
        return _state["cache_dir"]
    if os.environ.get("CONVBENCH_CACHE"):
        return Path(os.environ["CONVBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "convbench"


def cache_path() -> Path:
    """This machine's cache file: autotune-<hash of the fingerprint>.json in cache_dir()."""
    digest = hashlib.sha256(json.dumps(machine_fingerprint(), sort_keys=True).encode())
    return cache_dir() / f"autotune-{digest.hexdigest()[:12]}.json"


def _load_table() -> dict:
    if _state["table"] is not None:
        return _state["table"]
    table: dict = {}
    path = cache_path()
    _state["path"] = path
    if mode() == "cached" and path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("version") != CACHE_VERSION or data.get("machine") != machine_fingerprint():
                raise ValueError("written by another version or machine")
            table = {k: v for k, v in data["choices"].items() if isinstance(v.get("backend"), str)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            warnings.warn(
                f"ignoring the autotune cache {path} ({exc}); it will be rewritten",
                RuntimeWarning,
                stacklevel=3,
            )
            table = {}
    _state["table"] = table
    return table


def _save_table(table: dict) -> None:
    """Write the cache atomically (temp file + rename); a failure only warns."""
    path = _state["path"] or cache_path()
    data = {"version": CACHE_VERSION, "machine": machine_fingerprint(), "choices": table}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not write the autotune cache {path}: {exc}", RuntimeWarning, 2)


# ---------------------------------------------------------------- choosing


def _available(names) -> list[str]:
    from . import available_backends  # the registry (kernels/__init__ imports us lazily)

    return [name for name in names if name in available_backends()]


def _backend(name: str):
    from . import get_backend

    return get_backend(name)


def _time_candidates(runs: dict[str, Any], key: str) -> dict[str, float | None]:
    """The best of TIMING_REPEATS timings of each run (None: it raised), taken in rounds (A B C,
    A B C, ...) so that a busy moment on a shared machine slows every candidate alike rather
    than all of one candidate's samples."""
    seconds: dict[str, float | None] = {}
    for name, run in runs.items():
        try:
            run()  # compiles (or loads from numba's cache) and warms the caches
            seconds[name] = np.inf
        except Exception as exc:  # a candidate that cannot run this shape is not a choice
            seconds[name] = None
            warnings.warn(f"autotune: {name} failed on {key}: {exc}", RuntimeWarning, 3)
    for _ in range(TIMING_REPEATS):
        for name, run in runs.items():
            if seconds[name] is not None:
                start = time.perf_counter()
                run()
                seconds[name] = min(seconds[name], time.perf_counter() - start)  # type: ignore[type-var]
    return seconds


def _settle_close_call(runs: dict[str, Any], seconds: dict, key: str) -> dict:
    """seconds, with the best two candidates timed again (see CLOSE_CALL) when they are close;
    each keeps its best time over all the rounds."""
    timed = {name: s for name, s in seconds.items() if s is not None}
    ranked = sorted(timed, key=timed.__getitem__)
    if len(ranked) < 2 or timed[ranked[1]] > CLOSE_CALL * timed[ranked[0]]:
        return seconds
    pair = {name: runs[name] for name in ranked[:2]}
    settled = dict(seconds)
    for _ in range(CLOSE_CALL_ROUNDS):
        for name, s in _time_candidates(pair, key).items():
            if s is not None:
                settled[name] = min(settled[name], s)
    return settled


def _rule(op: str, g) -> str:
    """The "off" mode's choice: no timing."""
    if op == "conv" and (g.kh, g.kw, g.sh, g.sw) == (3, 3, 1, 1):
        if g.c_in >= WINOGRAD_MIN_CHANNELS and _available(["winograd"]):
            return "winograd"
    return (_available(["numba"]) or ["im2col"])[0]


def _known(key: str, rule: Callable[[], str]) -> dict | None:
    """The record of the choice for `key` made already (this process, rule() when autotuning
    is off, or the disk cache), else None: it still has to be timed."""
    if key in _chosen:
        return _chosen[key]
    if mode() == "off":
        _chosen[key] = {"backend": rule(), "source": "rule"}
        return _chosen[key]
    table = _load_table()
    if key in table:
        _chosen[key] = {**table[key], "source": "cache"}
        return _chosen[key]
    return None


def _choose(key: str, rule: Callable[[], str], decide: Callable[[], dict]) -> dict:
    """The record of the choice for `key` ({"backend": ..., ...}): known already (_known),
    else decide()'s, timed now and written to the cache; a record without timings ("seconds"
    empty: there was one choice) is kept for this process only."""
    known = _known(key, rule)
    if known is not None:
        return known
    table = _load_table()
    record = decide()
    if not record["seconds"]:
        _chosen[key] = {**record, "source": "only choice"}
        return _chosen[key]
    table[key] = record
    _save_table(table)
    _chosen[key] = {**record, "source": "timed"}
    return _chosen[key]


def _fastest(runs: dict[str, Any], key: str) -> dict:
    """{"backend": the fastest of runs ({choice: zero-argument run}), "seconds": each one's}."""
    if len(runs) == 1:  # nothing to choose between
        (only,) = runs
        return {"backend": only, "seconds": {}}
    seconds = _settle_close_call(runs, _time_candidates(runs, key), key)
    timed: dict[str, float] = {k: v for k, v in seconds.items() if v is not None}
    if not timed:
        raise RuntimeError(f"autotune: no backend could run {key}")
    return {"backend": min(timed, key=timed.__getitem__), "seconds": seconds}


def describe(record: dict) -> str:
    """A choice record as the run log and the report print it: "numba", or
    "winograd forward, numba backward" where the passes run on different backends."""
    backward = record.get("backward", record["backend"])
    if backward == record["backend"]:
        return record["backend"]
    return f"{record['backend']} forward, {backward} backward"


def _key(op: str, g, extra: str = "") -> str:
    shape = "x".join(map(str, g.x_shape))
    return f"{op} x={shape} {extra} dtype={np.dtype(g.dtype).name}"


def conv_key(g: ConvGeometry) -> str:
    """The cache key of a conv2d call: shapes, stride, padding, bias, dtype."""
    extra = (
        f"w={g.kh}x{g.kw}x{g.c_in}x{g.c_out} stride={g.sh},{g.sw} pad={g.ph},{g.pw} "
        f"bias={int(g.has_bias)}"
    )
    return _key("conv2d", g, extra)


def pool_key(op: str, g: PoolGeometry) -> str:
    """The cache key of a pooling call (op "maxpool2d" or "avgpool2d")."""
    return _key(op, g, f"size={g.kh},{g.kw} stride={g.sh},{g.sw}")


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


def conv2d_forward(x, w, b=None, stride=1, padding=0):
    """x: (N, H, W, C_in), w: (KH, KW, C_in, C_out), b: (C_out,) or None -> y: (N, OH, OW, C_out),
    computed by the backend chosen for this shape's forward; the ctx is that of the backend
    chosen for its backward (see the module docstring)."""
    g = conv_geometry(x, w, b, stride, padding)
    forward, backward = _conv_choice(g, x, w, b, stride, padding)
    y, inner = _backend(forward).conv2d_forward(x, w, b, stride, padding)
    if backward == forward:
        return y, AutoConvCtx(g, forward, inner)
    inner = _backend(backward).conv2d_backward_ctx(x, w, b, stride, padding)
    return y, AutoConvCtx(g, backward, inner, forward)


def _rebuilt_ctx(be, x, w, b, stride, padding):
    """be's backward ctx built from the inputs (ConvBackwardCtx), or None where it has none."""
    build = getattr(be, "conv2d_backward_ctx", None)
    return None if build is None else build(x, w, b, stride, padding)


def _conv_choice(g: ConvGeometry, x, w, b, stride, padding) -> tuple[str, str]:
    """(forward backend, backward backend) for conv geometry g, timed on this call's arrays if
    not known yet (_conv_passes)."""
    record = _choose(
        conv_key(g),
        lambda: _rule("conv", g),
        lambda: _conv_passes(conv_key(g), x, w, b, stride, padding),
    )
    return record["backend"], record.get("backward", record["backend"])


def _conv_passes(key, x, w, b, stride, padding) -> dict:
    """Each candidate's forward and backward timed on their own; the choice is the pair
    (forward on F, backward on B) of the least summed time, where B == F or B can build its
    backward ctx from the inputs (conv2d_backward_ctx: numba, winograd's fused path). A
    backward is timed on that rebuilt ctx where there is one, so every pair ending in B
    compares on the same backward time.

    Returns {"backend": F, "backward": B, "seconds": {candidate: its forward + backward},
    "forward_seconds": {...}, "backward_seconds": {...}} (None: the candidate failed)."""
    forwards, backwards, rebuildable = {}, {}, set()
    for name in _available(CONV_CANDIDATES):
        be = _backend(name)
        try:
            y, ctx = be.conv2d_forward(x, w, b, stride, padding)
            rebuilt = _rebuilt_ctx(be, x, w, b, stride, padding)
        except Exception as exc:  # a candidate that cannot run this shape is not a choice
            warnings.warn(f"autotune: {name} failed on {key}: {exc}", RuntimeWarning, 3)
            continue
        if rebuilt is not None:
            rebuildable.add(name)
        forwards[name] = functools.partial(be.conv2d_forward, x, w, b, stride, padding)
        backwards[name] = functools.partial(
            be.conv2d_backward, y, ctx if rebuilt is None else rebuilt
        )
    fwd = _settle_close_call(forwards, _time_candidates(forwards, key), key)
    bwd = _settle_close_call(backwards, _time_candidates(backwards, key), key)
    pairs = {
        (f, bk): fwd[f] + bwd[bk]
        for f in forwards
        for bk in backwards
        if fwd[f] is not None and bwd[bk] is not None and (bk == f or bk in rebuildable)
    }
    if not pairs:
        raise RuntimeError(f"autotune: no backend could run {key}")
    # ties go to one backend for both passes (no ctx to rebuild)
    forward, backward = min(pairs, key=lambda p: (pairs[p], p[0] != p[1]))
    both = {n: (None if fwd[n] is None or bwd[n] is None else fwd[n] + bwd[n]) for n in forwards}
    return {
        "backend": forward,
        "backward": backward,
        "seconds": both,
        "forward_seconds": fwd,
        "backward_seconds": bwd,
    }


def conv2d_maxpool2d_forward(x, w, b=None, stride=1, padding=0, size=2, pool_stride=None):
    """conv2d_forward then maxpool2d_forward in one pass (numba's conv2d_maxpool2d_forward: the
    convolution's output is never written) where the pair's choice (_pair_choice) is "fused";
    None otherwise, and the caller runs the two calls (each on its own choice)."""
    g = conv_geometry(x, w, b, stride, padding)
    pg = pooled_conv_geometry(g, size, pool_stride)
    if _pair_choice(g, pg, x, w, b, stride, padding, size, pool_stride) != FUSED:
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


FUSED, SEPARATE = "fused numba", "separate"


def pair_key(g: ConvGeometry, pg: PoolGeometry) -> str:
    """The cache key of a Conv2D + MaxPool2D pair: the conv's key and the pool's window."""
    return f"conv2d+maxpool2d {conv_key(g)[len('conv2d ') :]} pool={pg.kh},{pg.kw},{pg.sh},{pg.sw}"


def _pair_choice(g, pg, x, w, b, stride, padding, size, pool_stride) -> str:
    """FUSED (numba's one-pass conv + max-pool, forward and backward) or SEPARATE (the conv and
    the pool each on its own choice), timed against each other where numba fuses the pair.
    Timed alone, a convolution can lose to another backend by less than fusing it with its
    pool saves, and a conv choice of im2col then cost the `small` network's epoch 1.46x its
    time on numba (auto / numba over 8 alternating 300-batch runs), so the pair is timed as the
    network runs it."""

    def fusable() -> bool:
        return bool(_available(["numba"])) and _backend("numba").fuses_maxpool(g, pg)

    def rule() -> str:
        both = _rule("conv", g) == _rule("pool", pg) == "numba"
        return FUSED if both and fusable() else SEPARATE

    def decide() -> dict:
        if not fusable():
            return {"backend": SEPARATE, "seconds": {}}  # the only choice: nothing to time
        # the conv's and the pool's own choices first, so that timing them is not in the pair's
        y, _ = conv2d_forward(x, w, b, stride, padding)
        _pool_choice("maxpool2d", y, size, pool_stride)
        numba = _backend("numba")

        def fused():
            p, conv_ctx, pool_ctx = numba.conv2d_maxpool2d_forward(
                x, w, b, stride, padding, size, pool_stride
            )
            numba.conv2d_maxpool2d_backward(p, conv_ctx, pool_ctx)

        def separate():
            yc, conv_ctx = conv2d_forward(x, w, b, stride, padding)
            p, pool_ctx = maxpool2d_forward(yc, size, pool_stride)
            conv2d_backward(maxpool2d_backward(p, pool_ctx), conv_ctx)

        return _fastest({FUSED: fused, SEPARATE: separate}, pair_key(g, pg))

    return _choose(pair_key(g, pg), rule, decide)["backend"]


def conv2d_maxpool2d_backward(dy, conv_ctx: AutoConvCtx, pool_ctx: AutoMaxPoolCtx, need_dx=True):
    """conv2d_backward(maxpool2d_backward(dy, pool_ctx), conv_ctx, need_dx) in one call where
    both backward passes fall to numba (the conv's backward backend and the pool's: its
    conv2d_maxpool2d_backward); None otherwise, and the caller runs the two calls."""
    if conv_ctx.backend != "numba" or pool_ctx.backend != "numba":
        return None
    fused = _backend("numba").conv2d_maxpool2d_backward
    return fused(dy, conv_ctx.inner, pool_ctx.inner, need_dx)


def conv2d_backward(dy, ctx: AutoConvCtx, need_dx=True):
    """dy: (N, OH, OW, C_out) -> (dx or None, dw, db or None), on the backend chosen for it."""
    return _backend(ctx.backend).conv2d_backward(dy, ctx.inner, need_dx=need_dx)


def _pool_choice(op: str, x, size, stride) -> str:
    """The backend for pooling op ("maxpool2d", "avgpool2d") of x, timed on x if not known."""
    g = pool_geometry(x, size, stride)

    def run_for(be):
        def run():
            y, ctx = getattr(be, f"{op}_forward")(x, size, stride)
            getattr(be, f"{op}_backward")(y, ctx)

        return run

    def decide():
        runs = {name: run_for(_backend(name)) for name in _available(POOL_CANDIDATES)}
        return _fastest(runs, pool_key(op, g))

    return _choose(pool_key(op, g), lambda: _rule("pool", g), decide)["backend"]


def _pool_forward(op: str, x, size, stride):
    g = pool_geometry(x, size, stride)
    name = _pool_choice(op, x, size, stride)
    y, inner = getattr(_backend(name), f"{op}_forward")(x, size, stride)
    if op == "maxpool2d":
        return y, AutoMaxPoolCtx(g, inner.argmax, name, inner)
    return y, AutoPoolCtx(g, name, inner)


def maxpool2d_forward(x, size=2, stride=None):
    """x: (N, H, W, C) -> y: (N, OH, OW, C) on the backend chosen for this shape."""
    return _pool_forward("maxpool2d", x, size, stride)


def maxpool2d_backward(dy, ctx: AutoMaxPoolCtx):
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C), on the forward's backend."""
    return _backend(ctx.backend).maxpool2d_backward(dy, ctx.inner)


def avgpool2d_forward(x, size=2, stride=None):
    """x: (N, H, W, C) -> y: (N, OH, OW, C) on the backend chosen for this shape."""
    return _pool_forward("avgpool2d", x, size, stride)


def avgpool2d_backward(dy, ctx: AutoPoolCtx):
    """dy: (N, OH, OW, C) -> dx: (N, H, W, C), on the forward's backend."""
    return _backend(ctx.backend).avgpool2d_backward(dy, ctx.inner)


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
