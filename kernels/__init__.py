"""Conv2d and pooling kernels, forward and backward, behind one interface and several backends.

    >>> import numpy as np
    >>> from kernels import available_backends, get_backend
    >>> "im2col" in available_backends()
    True
    >>> be = get_backend("im2col")
    >>> x = np.ones((2, 5, 5, 1), np.float32)          # (N, H, W, C_in), NHWC
    >>> w = np.ones((3, 3, 1, 4), np.float32)          # (KH, KW, C_in, C_out), HWIO
    >>> b = np.zeros(4, np.float32)                    # (C_out,) or None
    >>> y, ctx = be.conv2d_forward(x, w, b, stride=1, padding=0)
    >>> y.shape, y.dtype, float(y[0, 0, 0, 0])         # each output sums a 3x3 window of ones
    ((2, 3, 3, 4), dtype('float32'), 9.0)
    >>> dx, dw, db = be.conv2d_backward(np.ones_like(y), ctx)
    >>> dx.shape, dw.shape, db.shape
    ((2, 5, 5, 1), (3, 3, 1, 4), (4,))

Files:
    __init__.py     the registry: get_backend(name), available_backends()
    contract.py     the Backend protocol every backend module follows (shapes, dtypes, the ctx
                    dataclasses, the max-pool argmax rule, the optional warmup())
    geometry.py     argument checking and output-size arithmetic (the only copy), argmax_dtype
    decompose.py    grouped, dilated and unevenly padded convolutions as plain ones (per group,
                    zero-inserted taps, explicit padding) for backends without a native path
    windows.py      window helpers shared by the NumPy backends: per-offset views, col2im
    isa.py          the machine's vector width, ISA flags and cache sizes (blocking decisions)
    vector_width.py full_width(): compile a numba kernel for the full vector width (zmm on AVX-512)
    memory.py       keep_freed_memory(): glibc malloc tuning a training run opts into
    gemm.py         matrix products split over the cores by us (Dense layers, Winograd's tiles)
    threads.py      numba's worker threads, started so they sleep between kernels
    naive.py        backend "naive": explicit loops, the reference every backend must match
    einsum.py       backend "einsum": strided window views contracted by BLAS (np.tensordot)
    im2col.py       backend "im2col": receptive fields unfolded into a matrix, one GEMM
    numba_jit.py    backend "numba": jitted loops (thread rule, public functions, pooling, warmup)
    numba_conv.py   the numba backend's convolution machinery (plane layout, taps, hot loops)
    numba_tiles.py  the numba backend's register tiles (many-channel convolutions, GEMM tiles)
    depthwise.py    the numba backend's depthwise convolutions (groups == C_in): per-channel
                    stencils vectorised over the contiguous channel axis
    winograd.py     backend "winograd": Winograd F(4x4,3x3)/F(2x2,3x3) for 3x3 stride-1 convs
                    (tile transforms in numba, one GEMM per tile position); others on numba
    winograd_tiles.py  the fused Winograd F(2x2, 3x3) forward and backward-weights tiles
    auto.py         backend "auto": per layer shape and pass, the fastest backend, dispatched
    tuning.py       auto's Tuner: mode, cache, choices; `auto.using(...)` scopes one
    tuning_cache.py the machine fingerprint, the thread settings in force, the cache file
    tuning_policy.py  how candidates are timed: interleaved rounds, close calls re-timed

Compiled pieces of the model's other layers (not backends):
    batchnorm.py    batch-norm forward and backward in two passes each (model.layers.BatchNorm)
    updates.py      the momentum and Adam updates in one pass per parameter (model/optim.py)
    resample.py     bilinear rotation + shift of an image batch (model/augment.py)
    jitcache.py     whether a warmup() will load from numba's disk cache or compile

No backend imports another. Backends are imported on first use, so `import kernels` never pays
for numba's import.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .contract import Backend

# name -> (module, third-party package it needs or None)
_BACKENDS = {
    "naive": ("kernels.naive", None),
    "einsum": ("kernels.einsum", None),
    "im2col": ("kernels.im2col", None),
    "numba": ("kernels.numba_jit", "numba"),
    "winograd": ("kernels.winograd", "numba"),
    "auto": ("kernels.auto", None),
}

BACKEND_NAMES = tuple(_BACKENDS)


def available_backends() -> list[str]:
    """Names of the backends that can be used on this machine, reference first."""
    return [
        name
        for name, (_, needs) in _BACKENDS.items()
        if needs is None or importlib.util.find_spec(needs) is not None
    ]


def get_backend(name: str) -> Backend[Any, Any, Any]:
    """Return the backend module called `name` (e.g. "im2col"); see kernels/contract.py."""
    if name not in _BACKENDS:
        raise ValueError(
            f"unknown backend {name!r}; available backends: {', '.join(available_backends())}"
        )
    module, needs = _BACKENDS[name]
    if needs is not None and importlib.util.find_spec(needs) is None:
        raise ImportError(
            f"backend {name!r} needs the package {needs!r}, which is not installed "
            f"(pip install {needs}); available: {', '.join(available_backends())}"
        )
    return cast("Backend[Any, Any, Any]", importlib.import_module(module))


if TYPE_CHECKING:
    # mypy checks every registered backend module against the contract (nothing runs here).
    from . import auto, einsum, im2col, naive, numba_jit, winograd
    from .contract import MaxPoolCtx, PoolCtx, Warmup

    _naive: Backend[naive.NaiveConvCtx, MaxPoolCtx, PoolCtx] = naive
    _einsum: Backend[einsum.EinsumConvCtx, MaxPoolCtx, PoolCtx] = einsum
    _im2col: Backend[im2col.Im2colConvCtx, MaxPoolCtx, PoolCtx] = im2col
    _numba: Backend[numba_jit.NumbaCtx, MaxPoolCtx, PoolCtx] = numba_jit
    _numba_warmup: Warmup = numba_jit
    _winograd: Backend[winograd.WinogradConvCtx, MaxPoolCtx, PoolCtx] = winograd
    _winograd_warmup: Warmup = winograd
    _auto: Backend[auto.AutoConvCtx, auto.AutoMaxPoolCtx, auto.AutoPoolCtx] = auto
    _auto_warmup: Warmup = auto
