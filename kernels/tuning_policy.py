"""auto's timing policy: how candidates are timed against each other so that a noisy moment on
a shared machine does not decide the choice.

    time_candidates(runs, key)          each run's best of TIMING_REPEATS, taken in interleaved
                                        rounds (A B C, A B C, ...); one HOPELESS after the
                                        first round is not timed again
    settle_close_call(runs, s, key)     the best two timed again when within CLOSE_CALL
    settled_times(runs, key)            both
    fastest(runs, key)                  and the winner: {"backend", "seconds"}

A run is a zero-argument callable doing the work as the network does it (a forward and its
backward, say); one that raises is not a choice (seconds None, with a warning).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping

import numpy as np

Runs = Mapping[str, Callable[[], object]]

TIMING_REPEATS = 5
# A runner-up within CLOSE_CALL of the best after those rounds is timed again against it, in
# CLOSE_CALL_ROUNDS more sets of rounds: on a shared machine five samples can order two
# backends a few percent apart either way (the `mid` benchmark case's conv: numba and winograd
# swapped places between auto's timing and the layer timing of one run).
CLOSE_CALL = 1.15
CLOSE_CALL_ROUNDS = 3
# A candidate slower than HOPELESS times the best in the first round is not timed in the
# others: it cannot win, and on a large batch its calls are what tuning costs (the MobileNet-
# style spec of docs/training.md: its test evaluation at batch 1000 timed im2col and einsum on
# every grouped layer five times over, most of the run's time). Far above the round-to-round
# noise, which stays within 2-3x even on cores that have just woken.
HOPELESS = 4.0


def time_candidates(runs: Runs, key: str) -> dict[str, float | None]:
    """The best of TIMING_REPEATS timings of each run (None: it raised), taken in rounds (A B C,
    A B C, ...) so that a busy moment on a shared machine slows every candidate alike rather
    than all of one candidate's samples.

    Each timed call follows an untimed call of the same run: what a candidate leaves behind
    would otherwise be charged to the next one. OpenBLAS's idle workers spin on both cores for
    a while after an im2col call, and a winograd or numba call timed right after it ran at
    about half its speed (`python -m bench.conv 'mb8ic512ih14oc512oh14kh3ph1n"vgg16:conv5_1"'`:
    auto chose im2col over the faster winograd)."""
    seconds: dict[str, float | None] = {}
    for name, run in runs.items():
        try:
            run()  # compiles (or loads from numba's cache) and warms the caches
            seconds[name] = np.inf
        except Exception as exc:  # a candidate that cannot run this shape is not a choice
            seconds[name] = None
            warnings.warn(f"autotune: {name} failed on {key}: {exc}", RuntimeWarning, 3)
    timed = [name for name, s in seconds.items() if s is not None]
    for round_ in range(TIMING_REPEATS):
        for name in timed:
            run = runs[name]
            run()
            start = time.perf_counter()
            run()
            seconds[name] = min(seconds[name] or np.inf, time.perf_counter() - start)
        if round_ == 0 and timed:
            best = min(seconds[name] or np.inf for name in timed)
            timed = [name for name in timed if (seconds[name] or np.inf) <= HOPELESS * best]
    return seconds


def settle_close_call(
    runs: Runs, seconds: Mapping[str, float | None], key: str
) -> dict[str, float | None]:
    """seconds, with the best two candidates timed again (see CLOSE_CALL) when they are close;
    each keeps its best time over all the rounds."""
    timed = {name: s for name, s in seconds.items() if s is not None}
    ranked = sorted(timed, key=timed.__getitem__)
    settled = dict(seconds)
    if len(ranked) < 2 or timed[ranked[1]] > CLOSE_CALL * timed[ranked[0]]:
        return settled
    pair = {name: runs[name] for name in ranked[:2]}
    for _ in range(CLOSE_CALL_ROUNDS):
        for name, s in time_candidates(pair, key).items():
            best = settled[name]
            if s is not None and best is not None:
                settled[name] = min(best, s)
    return settled


def settled_times(runs: Runs, key: str) -> dict[str, float | None]:
    """time_candidates, then settle_close_call: each run's best seconds (None: it raised)."""
    return settle_close_call(runs, time_candidates(runs, key), key)


def fastest(runs: Runs, key: str) -> dict:
    """{"backend": the fastest of runs ({choice: zero-argument run}), "seconds": each one's}
    ("seconds" empty: a lone run, nothing timed). RuntimeError when every run raised."""
    if len(runs) == 1:  # nothing to choose between
        (only,) = runs
        return {"backend": only, "seconds": {}}
    seconds = settled_times(runs, key)
    timed = {k: v for k, v in seconds.items() if v is not None}
    if not timed:
        raise RuntimeError(f"autotune: no backend could run {key}")
    return {"backend": min(timed, key=timed.__getitem__), "seconds": seconds}
