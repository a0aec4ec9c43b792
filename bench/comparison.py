"""Compare two runs: pair every figure both results dicts hold, test each for a change on its raw
samples, and gate on significant regressions.

    old = load_results("reports/OLD/results.json")
    rows = compare_results(old, new, fail_factor=1.10)
    print(render_comparison(rows, old["name"], new["name"], fail_factor=1.10))
    regressions(rows)                     # the rows a CI gate fails on

A row is "slower" or "faster" when a two-sided Mann-Whitney U test on the two runs' samples gives
p < bench.stats.ALPHA (asv's test), else "unchanged"; a figure with fewer than 2 samples on either
side (a single full epoch, results written before samples were kept) is "untested". With a
fail_factor F, one of our rows is a regression when its samples are significantly (one-sided, same
ALPHA) above F times the old ones, unless PyTorch's same figure slowed by about as much in the
same run: that is the machine, not the code, and the row says so.

Results written before a case was renamed still pair: load_results maps LEGACY_CASE_NAMES.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .cases import LEGACY_CASE_NAMES
from .formatting import fmt_seconds, table
from .peers import PEER_GROUPS, PEERS
from .stats import ALPHA, differ, geometric_mean, ratio_interval, slower_than

# ours slower by at most this much more than PyTorch in the same pair of runs: the machine changed
SHARED_SLOWDOWN = 1.10


def load_results(path) -> dict:
    """Read a results.json with today's case names; a clear one-line ValueError naming the file
    if it is missing, unreadable, not text, not JSON or not one of ours."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read results file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} is not a results.json: not UTF-8 text (byte {exc.start})"
        ) from None
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


def _figure(group: str, name: str, median: float, samples, unit: str = "s") -> dict:
    samples = [float(s) for s in samples or []] or [float(median)]
    return {"group": group, "name": name, "median": float(median), "samples": samples, "unit": unit}


# how render_comparison prints a figure of each unit result_figures uses
UNIT_FORMATS = {
    "s": fmt_seconds,
    "B": lambda b: f"{b / 2**20:.1f} MiB",
    "MB": lambda mb: f"{mb:.0f} MB",
}


def result_figures(results: dict) -> dict:
    """{key: {"group", "name", "median", "samples", "unit"}} for every successful measurement
    (layers, epochs, fitconv, inference passes, the breakdown's training steps, the paired
    rounds, the memory and epoch-memory peaks, each scaling point, the data-parallel steps);
    key = group + " " + name, where name is the backend, peer or configuration and group what it
    ran. Every figure is one where larger is worse: seconds ("s"), bytes ("B") or megabytes
    ("MB"). A figure stored without samples has its median as its one sample."""
    figures = {}

    def add(group, name, median, samples=None, unit="s"):
        figures[f"{group} {name}"] = _figure(group, name, median, samples, unit)

    for r in results.get("layers", []):
        if r.get("status") == "ok":
            add(f"{r['case']} {r['pass']}", r["backend"], r["median"], r.get("samples"))
    for r in (results.get("fitconv") or {}).get("rows", []):
        if r.get("status") == "ok":
            add("fitconv", r["name"], r["seconds"], r.get("samples"))
    epoch = results.get("epoch") or {}
    for run in epoch.get("archs") or [epoch]:  # earlier runs: the small model's rows at the top
        # the small model keeps the key it had when it was the only one timed
        group = "epoch" if run.get("arch", "small") == "small" else f"epoch {run['arch']}"
        for r in run.get("rows", []):
            if r.get("status") == "ok":
                add(group, r["name"], r["seconds_per_60k"], r.get("samples_per_60k"))
    for run in (results.get("inference") or {}).get("archs", []):
        for r in run["rows"]:
            if r.get("status") == "ok":
                add(f"inference {run['arch']}", r["name"], r["seconds"], r.get("samples"))
    breakdown = results.get("breakdown") or {}
    for run in breakdown.get("archs", []):
        if run.get("status") == "ok":
            samples = [ms / 1e3 for ms in run.get("step_samples_ms") or []]
            add(f"step {run['arch']}", breakdown["backend"], run["step_ms"] / 1e3, samples)
    _add_section_figures(results, add)
    return figures


def _add_section_figures(results: dict, add) -> None:
    """result_figures' entries of the sections measured in rounds of their own: paired, memory,
    epoch memory, scaling, data-parallel (`add(group, name, median, samples, unit)`)."""
    paired = results.get("paired") or {}
    for run in paired.get("archs", []):
        if run.get("status") == "ok":
            add(f"paired {run['arch']}", paired["ours"], np.median(run["ours"]), run["ours"])
            for name, times in run["peer"].items():
                add(f"paired {run['arch']}", name, np.median(times), times)
            if run.get("single"):
                times = run["single"]["seconds"]
                add(f"paired {run['arch']}", paired["single"], np.median(times), times)
    memory = results.get("memory") or {}
    for r in memory.get("rows", []):
        if r.get("status") == "ok":
            group = f"memory {memory['case']}"
            add(group, r["backend"], r["peak_bytes"], r.get("samples"), "B")
    for run in (results.get("epoch_memory") or {}).get("archs", []):
        for r in run["rows"]:
            if r.get("status") == "ok":
                group = f"epoch memory {run['arch']} {run['samples']}"
                add(group, r["name"], r["peak_mb"], r.get("peak_mb_samples"), "MB")
    scaling = results.get("scaling") or {}
    for axis in ("batch", "size"):
        for name, c in (scaling.get(axis) or {}).items():
            if c.get("status") != "ok":
                continue
            samples = c.get("samples") or [None] * len(c["sizes"])
            for size, median, ts in zip(c["sizes"], c["seconds"], samples):
                add(f"scaling {scaling['case']} {axis} {size}", name, median, ts)
    dp = results.get("dataparallel") or {}
    for arch, result in (dp.get("archs") or {}).items():
        for r in result.get("rows", []):
            if r.get("status") == "ok":
                group = f"data-parallel {arch} step"
                add(group, r["config"], r["step_seconds"], r.get("step_samples"))


def _torch_best(figures: dict, group: str) -> float | None:
    keys = [f"{group} {n}" for n in PEER_GROUPS["torch"]]
    times = [figures[k]["median"] for k in keys if k in figures and figures[k]["median"] > 0]
    return min(times) if times else None


def compare_results(old: dict, new: dict, fail_factor: float | None = None) -> list[dict]:
    """One row per figure measured in both runs: {key, group, name, peer, old, new (medians),
    ratio = new/old, low, high (its bootstrap interval), p (two-sided), change ("faster",
    "slower", "unchanged", "untested"), torch_ratio (PyTorch's new/old in the same group),
    vs_torch_old, vs_torch_new (ours / PyTorch's best in each run), machine (True: PyTorch shares
    the slowdown), regression (with fail_factor; see the module docstring)}."""
    a, b = result_figures(old), result_figures(new)
    rows = []
    for key, fa in a.items():
        fb = b.get(key)
        if fb is None or fa["median"] <= 0:
            continue
        ratio = fb["median"] / fa["median"]
        tested = len(fa["samples"]) >= 2 and len(fb["samples"]) >= 2
        low, high = ratio_interval(fb["samples"], fa["samples"])
        p = differ(fb["samples"], fa["samples"]) if tested else None
        if not tested:
            change = "untested"
        elif p < ALPHA:
            change = "slower" if ratio > 1 else "faster"
        else:
            change = "unchanged"
        torch_old, torch_new = _torch_best(a, fa["group"]), _torch_best(b, fa["group"])
        peer = fa["name"] in PEERS
        row = {
            "key": key,
            "unit": fa["unit"],
            "group": fa["group"],
            "name": fa["name"],
            "peer": peer,
            "old": fa["median"],
            "new": fb["median"],
            "n_old": len(fa["samples"]),
            "n_new": len(fb["samples"]),
            "ratio": ratio,
            "low": low,
            "high": high,
            "p": p,
            "change": change,
            "torch_ratio": torch_new / torch_old if torch_old and torch_new else None,
            "vs_torch_old": fa["median"] / torch_old if torch_old and not peer else None,
            "vs_torch_new": fb["median"] / torch_new if torch_new and not peer else None,
        }
        row["machine"] = bool(
            not peer
            and change == "slower"
            and row["torch_ratio"] is not None
            and row["torch_ratio"] > 1
            and ratio / row["torch_ratio"] <= SHARED_SLOWDOWN
        )
        row["regression"] = bool(
            fail_factor is not None
            and not peer
            and tested
            and not row["machine"]
            and slower_than(fb["samples"], fa["samples"], fail_factor) < ALPHA
        )
        rows.append(row)
    return rows


def regressions(rows: list[dict]) -> list[dict]:
    """The rows a --fail-on-regression gate fails on."""
    return [r for r in rows if r["regression"]]


def _note(r: dict) -> str:
    notes = []
    if r["regression"]:
        notes.append("REGRESSION")
    if r["machine"]:
        notes.append(f"PyTorch ×{r['torch_ratio']:.2f} too: the machine, not the code")
    if r["vs_torch_old"] is not None and r["vs_torch_new"] is not None:
        notes.append(f"ours/PyTorch {r['vs_torch_old']:.2f} → {r['vs_torch_new']:.2f}")
    return "; ".join(notes)


def render_comparison(rows, old_name, new_name, fail_factor: float | None = None) -> str:
    """The comparison as Markdown: one line per figure, then the counts and the geometric mean
    of our rows' ratios (and the gate's verdict when fail_factor is given)."""
    body = [
        [
            r["key"],
            UNIT_FORMATS[r.get("unit", "s")](r["old"]),
            UNIT_FORMATS[r.get("unit", "s")](r["new"]),
            f"{r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}]",
            "—" if r["p"] is None else f"{r['p']:.3g}",
            r["change"],
            _note(r),
        ]
        for r in rows
    ]
    counts = {c: sum(r["change"] == c for r in rows) for c in ("slower", "faster", "unchanged")}
    ours = [r["ratio"] for r in rows if not r["peer"]]
    gm = geometric_mean(ours)
    lines = [
        f"# Comparison: `{new_name}` against `{old_name}`",
        "",
        "ratio = new / old median (time, or peak memory for the memory rows; >1 = slower or "
        "larger), [95% bootstrap interval]; p = two-sided "
        f"Mann-Whitney U on the raw samples, changed when p < {ALPHA} (untested: fewer than 2 "
        "samples on a side).",
        "",
        table(["measurement", "old", "new", "ratio", "p", "change", "note"], body),
        "",
        f"{len(rows)} common figures: {counts['slower']} slower, {counts['faster']} faster, "
        f"{counts['unchanged']} unchanged. Geometric mean of our {len(ours)} ratios: "
        + ("—" if gm is None else f"{gm:.3f}")
        + ".",
    ]
    if fail_factor is not None:
        bad = regressions(rows)
        lines.append(
            f"Gate (--fail-on-regression {fail_factor:g}): "
            + (
                f"FAIL, {len(bad)} of ours significantly slower than ×{fail_factor:g}: "
                + ", ".join(r["key"] for r in bad)
                if bad
                else f"pass, none of ours significantly slower than ×{fail_factor:g}"
            )
            + "."
        )
    return "\n".join(lines) + "\n"


def write_comparison(
    out_dir: Path, old_name: str, text: str, record: dict, rows: list[dict]
) -> tuple[Path, Path, str | None]:
    """Write out_dir/compare-<old_name>.md (`text`) and .json (`record` + rows): one pair of
    files per old run, so comparing NEW with another run never overwrites this one. Returns the
    two paths and what an existing pair was ("replacing ..."), else None."""
    md, js = (out_dir / f"compare-{old_name}{ext}" for ext in (".md", ".json"))
    replaced = None
    if js.exists():
        try:
            before = json.loads(js.read_text())
            same = (before.get("old"), before.get("new")) == (record["old"], record["new"])
        except (OSError, ValueError):
            same = False
        replaced = (
            "replacing the earlier comparison of the same pair"
            if same
            else "replacing a comparison of another pair of files with this old name"
        )
    md.write_text(text)
    js.write_text(json.dumps({**record, "rows": rows}, indent=1))
    return md, js, replaced
