"""Readers of a run's results dict (bench.suite.run_suite's, or a loaded results.json) that the
report's Markdown and plots share.

    forward_backward_medians(results)  -> {case: {backend: forward + backward median seconds}}
    round_medians(row)                 -> {round: median of a layer row's samples in that round}
    paired_forward_backward_ratio(results, case, backend)
                                       -> {"ratio", "interval", "ratios"} against PyTorch, or None
"""

from __future__ import annotations

import numpy as np

from .peers import PEER_GROUPS
from .stats import median_interval
from .status import OK


def forward_backward_medians(results: dict) -> dict:
    """{case: {backend: forward + backward median}} over the layer rows where both passes ran."""
    acc = {}
    for r in results.get("layers", []):
        if r.get("status") == OK:
            acc.setdefault(r["case"], {}).setdefault(r["backend"], []).append(r["median"])
    return {c: {b: sum(t) for b, t in d.items() if len(t) == 2} for c, d in acc.items()}


def round_medians(row: dict) -> dict[int, float]:
    """{round: median of the row's samples in that round} (rounds as recorded by _pool)."""
    by_round: dict[int, list] = {}
    for rnd, t in zip(row.get("rounds") or [], row.get("samples") or []):
        by_round.setdefault(rnd, []).append(t)
    return {rnd: float(np.median(ts)) for rnd, ts in by_round.items()}


def paired_forward_backward_ratio(results: dict, case: str, backend: str) -> dict | None:
    """`backend`'s forward + backward time over PyTorch's faster configuration's, per round of
    the layer section (each pass's median in that round), as {"ratio": the median over rounds,
    "interval": its 95% bootstrap interval, "ratios": per round}; None without rounds on
    both sides (results written before rounds were kept)."""
    per_name: dict[str, dict[int, float]] = {}
    for r in results.get("layers", []):
        if r.get("status") == OK and r["case"] == case:
            for rnd, t in round_medians(r).items():
                per_name.setdefault(r["backend"], {}).setdefault(rnd, 0.0)
                per_name[r["backend"]][rnd] += t
    ours = per_name.get(backend)
    torch = [per_name[n] for n in PEER_GROUPS["torch"] if n in per_name]
    if not ours or not torch:
        return None
    ratios = [
        t / min(tr[rnd] for tr in torch)
        for rnd, t in sorted(ours.items())
        if all(rnd in tr for tr in torch)
    ]
    if not ratios:
        return None
    return {
        "ratio": float(np.median(ratios)),
        "interval": median_interval(ratios),
        "ratios": ratios,
    }
