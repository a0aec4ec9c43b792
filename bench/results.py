"""Readers of a run's results dict (bench.suite.run_suite's, or a loaded results.json) that the
report's Markdown and plots share.

    forward_backward_medians(results)  -> {case: {backend: forward + backward median seconds}}
"""

from __future__ import annotations

from .status import OK


def forward_backward_medians(results: dict) -> dict:
    """{case: {backend: forward + backward median}} over the layer rows where both passes ran."""
    acc = {}
    for r in results.get("layers", []):
        if r.get("status") == OK:
            acc.setdefault(r["case"], {}).setdefault(r["backend"], []).append(r["median"])
    return {c: {b: sum(t) for b, t in d.items() if len(t) == 2} for c, d in acc.items()}
