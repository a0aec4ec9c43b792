"""numba's worker threads, started so that they spin only briefly after a parallel region ends.

A training step alternates numba kernels (conv, batch norm, pooling: numba's threads) with
GEMMs split over a thread pool (kernels/gemm.py) and numpy's own single-threaded work. numba's
default threading layer on Linux is OpenMP (GNU libgomp), whose idle workers poll for the next
region GOMP_SPINCOUNT times (300 000 by default) before they sleep. Both ends of that setting
lose on 2 cores:
- the default polls for milliseconds, taking a core from every GEMM that follows: the `deep`
  epoch (`python -m model.train --arch deep --backend numba`) runs far longer than with
  SPIN_COUNT;
- 0 puts them to sleep at once, and waking them costs tens of microseconds per parallel region,
  which small layers pay many times a step: MobileNetV2's 7x7x960 depthwise layer (`python -m
  bench.conv g960mb8ic960ih7oc960oh7kh3ph1`) and the MobileNet-style spec of docs/training.md run
  slower by more than the GEMMs gain.
SPIN_COUNT polls (a few hundred microseconds) bridge the gap between the kernels of one layer
and of consecutive layers and end before a GEMM has lost much; a third and three times as many
measured within its spread, so the setting does not hinge on one CPU's cost of a poll.

libgomp reads the variable once, when numba's OpenMP layer loads it, so launch() sets it only
around that moment, and the kernels call launch() before their first parallel region rather than
at import. A process holds one libgomp: PyTorch's bundled copy has the same name, so whichever
loads first decides for both. PyTorch run after our kernels in one process would get our short
spin too, so the benchmark times PyTorch in worker processes of its own (bench/peers.py), and a
process that never runs our parallel kernels (`model.train --framework torch`) leaves libgomp's
defaults alone. A GOMP_SPINCOUNT or OMP_WAIT_POLICY the user set is left alone.
"""

from __future__ import annotations

import os

_launched = False

# polls of an idle OpenMP worker before it sleeps (see above)
SPIN_COUNT = 10_000


def launch() -> None:
    """Start numba's worker threads (once per process), idle ones polling SPIN_COUNT times."""
    global _launched
    if _launched:
        return
    from numba.np.ufunc import parallel

    user_set = "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ
    if not user_set:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
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
