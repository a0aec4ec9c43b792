"""Matrix products split over the cores by us, with BLAS held to one thread per piece.

Training runs numpy's BLAS with one thread: OpenBLAS's idle workers spin after every call and
take the core from the numba kernels that follow (see model.training.TRAIN_BLAS_THREADS). The
model's GEMMs are still big enough to want both cores, so they are cut into independent pieces
here and run on a small thread pool (numpy releases the GIL inside BLAS); the pool's threads
sleep between calls instead of spinning.

    matmul(a, b)          a (M, K) @ b (K, N), the columns (or rows) of the result split, or
                          for a long K the reduction, partial products added
    product(a, b)         a @ b: matmul() under one BLAS thread, BLAS's own threads otherwise
    matmul_pair(p, q)     two independent products at once, e.g. a Dense layer's dW and dX
    batched_matmul(a, b)  a (T, M, K) @ b (T, K, N), the T products split
    batched_pair(p, q)    two independent stacked products at once (Winograd's dU and dV)
    run_pieces(k, pieces) any GIL-releasing kernel on blocks of work at once (numba's
                          many-channel conv tiles, kernels/numba_tiles.py)

The thread count follows numba's (numba.get_num_threads()) once numba is imported, so a run
limited to one thread stays on one; otherwise the CPUs this process may use.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Below this many multiply-adds a product runs in the calling thread: handing work to the pool
# costs tens of microseconds, more than a small GEMM takes (the `small` Dense(128 -> 10)).
MIN_SPLIT_MACS = 1 << 19

# matmul splits the reduction axis K instead of the output when K is at least this many times
# M and N: the `small` network's Dense(3136 -> 128) forward at batch 64 is faster split along K
# than by output columns (bench.compare's breakdown section, "4 Dense forward")
K_SPLIT_RATIO = 4

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_blas: Any = None


def threads() -> int:
    """How many pieces a product is cut into: numba's thread count, else this process's CPUs."""
    if "numba" in sys.modules:
        from . import threads as numba_threads

        return numba_threads.count()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _executor(n: int) -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < n:
        _pool = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="gemm")
    return _pool


def _blas_threads() -> int:
    """numpy's BLAS thread count now (threadpoolctl asks the library: microseconds, not a scan)."""
    global _blas
    if _blas is None:
        _blas = _numpy_blas()
    return max((lib.num_threads for lib in _blas.lib_controllers), default=1)


def _numpy_blas() -> Any:
    """threadpoolctl's controller of the BLAS numpy calls: only numpy's own library where it
    can be told apart. scipy loads a second OpenBLAS of its own (scipy.libs) with its own thread
    count, which numpy's products never use; counted in, a process whose numpy BLAS was held to
    one thread (as model.train holds it) read as two, and product() then ran one-threaded BLAS
    calls instead of splitting them."""
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    numpy_dirs = {Path(np.__file__).parent, Path(np.__file__).parent.with_name("numpy.libs")}
    own = [
        lib.filepath
        for lib in blas.lib_controllers
        if numpy_dirs & set(Path(lib.filepath or "").parents)
    ]
    return blas.select(filepath=own) if own else blas


def run_pieces(kernel: Callable[..., Any], pieces: list[tuple[Any, ...]]) -> None:
    """kernel(*args) for every args of `pieces` at once, one per thread of the pool (the calling
    thread takes the first). The kernel must release the GIL, as numpy's BLAS and numba's
    nogil=True functions do, or the pieces run one after the other."""
    pool = _executor(len(pieces))
    jobs = [pool.submit(kernel, *args) for args in pieces[1:]]
    kernel(*pieces[0])
    for job in jobs:
        job.result()


def _matmul_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    np.matmul(a, b, out=out)


def _run(calls: list[tuple[Any, ...]]) -> None:
    """Run np.matmul(a, b, out=out) for every (a, b, out) at once, BLAS on one thread each."""
    if _blas_threads() > 1:  # a threaded BLAS inside each piece would oversubscribe the cores
        with _blas.limit(limits=1):
            return _run(calls)
    run_pieces(_matmul_into, calls)


def split_bounds(size: int, pieces: int) -> list[tuple[int, int]]:
    """`pieces` contiguous ranges covering 0..size, sizes differing by at most one."""
    edges = [size * i // pieces for i in range(pieces + 1)]
    return [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a (M, K) @ b (K, N) -> (M, N), a's dtype; split over threads() along N (or M if N is
    the smaller), or along K when K >= K_SPLIT_RATIO * max(M, N); each piece one BLAS call.
    Same numbers as a @ b up to summation order."""
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = np.empty((m, n), dtype=np.result_type(a, b))
    pieces = min(threads(), max(m, n))
    if pieces <= 1 or m * n * k < MIN_SPLIT_MACS:
        return np.matmul(a, b, out=out)
    if k >= K_SPLIT_RATIO * max(m, n):
        # a long reduction (a Dense layer's 3136 inputs, batch 64): each thread reads half of a
        # and half of b rather than all of a, and the partial products are added
        ranges = split_bounds(k, min(threads(), k))
        partial = [out] + [np.empty_like(out) for _ in ranges[1:]]
        _run([(a[:, lo:hi], b[lo:hi], p) for (lo, hi), p in zip(ranges, partial)])
        for p in partial[1:]:
            np.add(out, p, out=out)
        return out
    if n >= m:
        calls = [(a, b[:, lo:hi], out[:, lo:hi]) for lo, hi in split_bounds(n, pieces)]
    else:
        calls = [(a[lo:hi], b, out[lo:hi]) for lo, hi in split_bounds(m, pieces)]
    _run(calls)
    return out


def product(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a (M, K) @ b (K, N) on every core whatever numpy's BLAS setting: BLAS's own threads
    when it has more than one (numpy's default), else matmul()'s pieces (model.train's one
    BLAS thread, under which a plain a @ b runs on one core). Unlike matmul(), it never
    switches BLAS's thread count for a call: restoring it after each call left the
    product about 1.7x slower (ResNet-50's res2a_branch2a dW, 25088 x 64 by 64)."""
    if _blas_threads() > 1:
        return np.matmul(a, b, out=out)
    return matmul(a, b, out)


def matmul_pair(
    first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(first[0] @ first[1], second[0] @ second[1]), the two products on two threads when there
    are two and both are large enough to pay for it; otherwise one after the other."""
    calls = [
        (a, b, np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))) for a, b in (first, second)
    ]
    macs = min(a.shape[0] * a.shape[1] * b.shape[1] for a, b, _ in calls)
    _both(calls, macs >= MIN_SPLIT_MACS)
    return calls[0][2], calls[1][2]


def _both(calls: list[tuple[Any, ...]], split: bool) -> None:
    """np.matmul(a, b, out=out) for both (a, b, out) of `calls`: one per thread when `split` and
    there are two threads, otherwise one after the other."""
    if split and threads() >= 2:
        _run(calls)
        return
    for a, b, out in calls:
        np.matmul(a, b, out=out)


def batched_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[t] = a[t] @ b[t] for every t, the t's split over threads().

    numpy's stacked matmul calls BLAS once per t from one thread; here each thread takes a
    contiguous run of t's (its own stacked matmul). Strided views are fine for a, b and out as
    long as each matrix's last axis is contiguous: BLAS takes the leading dimension as given.
    """
    pieces = min(threads(), a.shape[0])
    if pieces <= 1:
        return np.matmul(a, b, out=out)
    _run([(a[lo:hi], b[lo:hi], out[lo:hi]) for lo, hi in split_bounds(a.shape[0], pieces)])
    return out


def batched_pair(first: tuple[np.ndarray, ...], second: tuple[np.ndarray, ...]) -> None:
    """np.matmul(a, b, out=out) for (a, b, out) = first and = second, stacked products, one on
    each of two threads (each one stacked BLAS call); with one thread, one after the other."""
    _both([first, second], split=True)
