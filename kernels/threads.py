"""numba's worker threads, started so that they sleep as soon as a parallel region ends.

A training step alternates numba kernels (conv, batch norm, pooling: numba's threads) with
GEMMs split over a thread pool (kernels/gemm.py) and numpy's own single-threaded work. numba's
default threading layer on Linux is OpenMP (GNU libgomp), whose idle workers spin for a while
(GOMP_SPINCOUNT, 300 000 polls) after every parallel region before they sleep: on 2 cores that
takes a core from the GEMM that follows. Started with GOMP_SPINCOUNT=0, they go to sleep at
once; the `deep` network's training step (bench.compare's breakdown section) runs faster that
way on 2 cores.

libgomp reads the variable once, when numba's OpenMP layer loads it, so launch() sets it only
around that moment, and the kernels call launch() before their first parallel region rather than
at import. A process holds one libgomp: PyTorch's bundled copy has the same name, so whichever
loads first decides for both. PyTorch run after our kernels in one process would get sleeping
workers too and run its `deep` epoch slower (the `deep` epoch timed in this process against
a worker's), so the benchmark times PyTorch in worker processes of its own (bench/peers.py), and a process that never
runs our parallel kernels (`model.train --framework torch`) leaves libgomp's defaults alone. A
GOMP_SPINCOUNT or OMP_WAIT_POLICY the user set is left alone.
"""

from __future__ import annotations

import os

_launched = False


def launch() -> None:
    """Start numba's worker threads (once per process) with OpenMP's idle spinning turned off."""
    global _launched
    if _launched:
        return
    from numba.np.ufunc import parallel

    user_set = "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ
    if not user_set:
        os.environ["GOMP_SPINCOUNT"] = "0"
    try:
        parallel._launch_threads()
    finally:
        if not user_set:
            del os.environ["GOMP_SPINCOUNT"]
    _launched = True


def count() -> int:
    """numba.get_num_threads() without its per-call lock dance (it re-checks that the threads
    are launched, under two locks: a few microseconds, paid by every kernel launch and GEMM
    split of a training step)."""
    launch()
    from numba.np.ufunc import parallel

    return int(parallel._get_num_threads())  # type: ignore[attr-defined]
