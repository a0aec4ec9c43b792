"""Compare two runs: pair every measurement both results dicts hold, and flag large ratios.

    old = load_results("reports/OLD/results.json")
    rows = compare_results(old, new, regression_factor=1.5)
    print(render_comparison(rows, old["name"], new["name"], 1.5))

Results written before a case was renamed still pair: load_results maps LEGACY_CASE_NAMES.
"""

from __future__ import annotations

import json
from pathlib import Path

from .cases import LEGACY_CASE_NAMES
from .formatting import fmt_seconds, table


def load_results(path) -> dict:
    """Read a results.json with today's case names; a clear ValueError if it is missing,
    unreadable or not one of ours."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read results file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if (
        not isinstance(data, dict)
        or "name" not in data
        or not any(k in data for k in ("layers", "epoch", "fitconv"))
    ):
        raise ValueError(f"{path} is not a bench.compare results.json (no name/layers/epoch keys)")
    return rename_legacy_cases(data)


def rename_legacy_cases(results: dict) -> dict:
    """Map the case names of earlier runs (LEGACY_CASE_NAMES) to today's, in place."""

    def new(name):
        return LEGACY_CASE_NAMES.get(name, name)

    for row in results.get("layers", []):
        row["case"] = new(row["case"])
    for key in ("memory", "scaling"):
        if isinstance(results.get(key), dict) and "case" in results[key]:
            results[key]["case"] = new(results[key]["case"])
    opts = results.get("options") or {}
    if opts.get("cases"):
        opts["cases"] = [new(c) for c in opts["cases"]]
    for key in ("scaling_case", "memory_case"):
        if key in opts:
            opts[key] = new(opts[key])
    return results


def result_times(results: dict) -> dict:
    """{key: median seconds} for every successful measurement (layers, epochs, fitconv,
    inference passes, the breakdown's training steps)."""
    times = {}
    for r in results.get("layers", []):
        if r.get("status") == "ok":
            times[f"{r['case']} {r['pass']} {r['backend']}"] = r["median"]
    for r in (results.get("fitconv") or {}).get("rows", []):
        if r.get("status") == "ok":
            times[f"fitconv {r['name']}"] = r["seconds"]
    epoch = results.get("epoch") or {}
    for run in epoch.get("archs") or [epoch]:  # earlier runs: the small model's rows at the top
        # the small model keeps the key it had when it was the only one timed
        prefix = "epoch" if run.get("arch", "small") == "small" else f"epoch {run['arch']}"
        for r in run.get("rows", []):
            if r.get("status") == "ok":
                times[f"{prefix} {r['name']}"] = r["seconds_per_60k"]
    for run in (results.get("inference") or {}).get("archs", []):
        for r in run["rows"]:
            if r.get("status") == "ok":
                times[f"inference {run['arch']} {r['name']}"] = r["seconds"]
    breakdown = results.get("breakdown") or {}
    for run in breakdown.get("archs", []):
        if run.get("status") == "ok":
            times[f"step {run['arch']} {breakdown['backend']}"] = run["step_ms"] / 1e3
    return times


def compare_results(old: dict, new: dict, regression_factor: float = 1.5) -> list[dict]:
    """Rows {key, old, new, ratio = new/old, flag} for keys measured in both runs.

    flag: "REGRESSION" if ratio > factor, "improvement" if ratio < 1/factor, else "".
    """
    a, b = result_times(old), result_times(new)
    rows = []
    for key in a:
        if key in b and a[key] > 0:
            ratio = b[key] / a[key]
            if ratio > regression_factor:
                flag = "REGRESSION"
            elif ratio < 1 / regression_factor:
                flag = "improvement"
            else:
                flag = ""
            rows.append({"key": key, "old": a[key], "new": b[key], "ratio": ratio, "flag": flag})
    return rows


def render_comparison(rows, old_name, new_name, factor) -> str:
    n_reg = sum(r["flag"] == "REGRESSION" for r in rows)
    body = [
        [r["key"], fmt_seconds(r["old"]), fmt_seconds(r["new"]), f"{r['ratio']:.2f}", r["flag"]]
        for r in rows
    ]
    return "\n".join(
        [
            f"# Comparison: `{new_name}` against `{old_name}`",
            "",
            f"ratio = new / old median time (>1 = slower). Flagged beyond ×{factor:g}: {n_reg} "
            f"regression(s) in {len(rows)} common measurements.",
            "",
            table(["measurement", "old", "new", "ratio", "flag"], body),
            "",
        ]
    )
