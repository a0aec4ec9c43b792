"""The PNG plots of a report. Each `plot_*(results, path)` draws from the results dict and returns
whether it wrote `path` (False when its section has nothing to draw).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from .formatting import order  # noqa: E402
from .peers import label  # noqa: E402
from .results import forward_backward_medians  # noqa: E402

DPI = 90


def _save(fig, path, legend_ax=None) -> bool:
    """Lay out `fig` (with `legend_ax`'s legend outside it, on the right), write it, close it."""
    if legend_ax is not None:
        legend_ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def plot_speedup(results, path) -> bool:
    times = forward_backward_medians(results)
    cases = [c for c in times if "naive" in times[c]]
    if not cases:
        return False
    names = sorted({b for c in cases for b in times[c]}, key=order)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [k + i * width for k, c in enumerate(cases) if name in times[c]]
        ys = [times[c]["naive"] / times[c][name] for c in cases if name in times[c]]
        ax.bar(xs, ys, width, label=label(name))
    ax.set_yscale("log")
    ax.axhline(1, color="black", lw=0.8)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(cases))], cases)
    ax.set_ylabel("speedup vs naive (forward + backward)")
    ax.set_title("Speedup over the naive backend (log scale, higher is faster)")
    return _save(fig, path, legend_ax=ax)


def plot_roofline(results, path) -> bool:
    rows = [r for r in results.get("layers", []) if r.get("status") == "ok" and r.get("gflops")]
    if not rows:
        return False
    peak = results["machine"].get("peak_gflops", {}).get("float32")
    fig, ax = plt.subplots(figsize=(10, 4.5))
    markers = {"forward": "o", "backward": "s"}
    names = sorted({r["backend"] for r in rows}, key=order)
    # tab10's distinct colours first, then tab20b's for more backends and peer configurations
    palette = [*plt.get_cmap("tab10").colors, *plt.get_cmap("tab20b").colors]
    colors = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    for r in rows:
        flops = r["flops"] * (2 if r["pass"] == "backward" else 1)
        ax.scatter(flops, r["gflops"], color=colors[r["backend"]], marker=markers[r["pass"]], s=30)
    # name the cases below their forward points; cases with the same FLOPs share one label
    at_flops: dict = {}
    for r in rows:
        if r["pass"] == "forward":
            names_here, low = at_flops.get(r["flops"], ([], float("inf")))
            if r["case"] not in names_here:
                names_here.append(r["case"])
            at_flops[r["flops"]] = (names_here, min(low, r["gflops"]))
    for flops, (cases, low) in at_flops.items():
        ax.annotate(
            " / ".join(cases),
            (flops, low),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            fontsize=7,
            color="dimgray",
        )
    for n in names:
        ax.scatter([], [], color=colors[n], label=label(n))
    for p, m in markers.items():
        ax.scatter([], [], facecolors="none", edgecolors="black", marker=m, label=p)
    if peak:
        ax.axhline(peak, color="red", ls="--", label=f"numpy matmul peak {peak:.0f} GFLOP/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FLOPs per call (backward = 2x forward)")
    ax.margins(y=0.15)
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title("Achieved GFLOP/s per layer case against the float32 matmul peak")
    return _save(fig, path, legend_ax=ax)


def plot_epoch(results, path) -> bool:
    ep = results.get("epoch") or {}
    runs = [
        (run, [r for r in run.get("rows", []) if r["status"] == "ok"])
        for run in ep.get("archs") or [ep]
    ]
    runs = [(run, rows) for run, rows in runs if rows]
    if not runs:
        return False
    height = sum(0.45 * len(rows) + 1.2 for _, rows in runs)
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, height), squeeze=False)
    for ax, (run, rows) in zip(axes[:, 0], runs):
        labels = [
            label(r["name"]) + (" (extrapolated)" if r.get("extrapolated") else "") for r in rows
        ]
        vals = [r["seconds_per_60k"] for r in rows]
        colors = ["C3" if r["peer"] else "C0" for r in rows]
        bars = ax.barh(labels, vals, color=colors)
        for bar, r in zip(bars, rows):
            if r.get("extrapolated"):
                bar.set_hatch("//")
            acc = "" if r.get("test_acc") is None else f", {100 * r['test_acc']:.1f}%"
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {r['seconds_per_60k']:.1f} s{acc}",
                va="center",
                fontsize=8,
            )
        if max(vals) / min(vals) > 20:  # naive next to PyTorch: only a log axis shows both
            ax.set_xscale("log")
            ax.set_xlim(left=min(vals) / 2, right=max(vals) * 4)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        else:
            ax.set_xlim(right=max(vals) * 1.3)
        ax.invert_yaxis()
        ax.set_title(
            f"{run.get('arch', 'small')} model ({run.get('optimizer', 'momentum')}): one training "
            "epoch, batch 64, float32",
            fontsize=10,
        )
    axes[-1, 0].set_xlabel(
        "seconds per 60k-image epoch, test accuracy after it\n"
        "(red = PyTorch/Keras; hatched = extrapolated)"
    )
    return _save(fig, path)


def plot_scaling(results, path) -> bool:
    sc = results.get("scaling")
    if not sc:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (axis, xlabel) in zip(axes, (("batch", "batch size"), ("size", "image side (px)"))):
        for name, c in sorted(sc.get(axis, {}).items(), key=lambda kv: order(kv[0])):
            if c["status"] != "ok" or not c["sizes"]:
                continue
            exp = "" if c["exponent"] is None else f" (slope {c['exponent']:.2f})"
            ax.plot(c["sizes"], c["seconds"], "o-", label=name + exp)
        ax.set_xscale("log")
        ax.set_yscale("log")
        sizes = sorted({s for c in sc.get(axis, {}).values() for s in c.get("sizes", [])})
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds (forward + backward)")
        ax.legend(fontsize=8)
    fig.suptitle(f"Scaling of {sc['case']} ({sc['shape']})", fontsize=10)
    return _save(fig, path)


BREAKDOWN_MIN_PERCENT = 3.0  # parts below this share of the step are drawn together as one


def plot_breakdown(results, path) -> bool:
    """One stacked bar per architecture: its step's parts as % of the step, total ms named."""
    bd = results.get("breakdown") or {}
    archs = [a for a in bd.get("archs", []) if a.get("status") == "ok"]
    if not archs:
        return False
    small = f"parts < {BREAKDOWN_MIN_PERCENT:g}% each"
    names = list(
        dict.fromkeys(
            p["name"] for a in archs for p in a["parts"] if p["percent"] >= BREAKDOWN_MIN_PERCENT
        )
    )
    names.append(small)
    colors = {n: plt.get_cmap("tab20")(i % 20) for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(10, 1.2 * len(archs) + 3.5))
    for y, a in enumerate(archs):
        left = 0.0
        for p in a["parts"] + [{"name": small, "percent": None}]:
            if p["name"] == small:
                width = sum(
                    q["percent"] for q in a["parts"] if q["percent"] < BREAKDOWN_MIN_PERCENT
                )
            elif p["percent"] >= BREAKDOWN_MIN_PERCENT:
                width = p["percent"]
            else:
                continue
            ax.barh(y, width, left=left, color=colors[p["name"]], edgecolor="white", lw=0.5)
            if width >= 6:
                ax.text(left + width / 2, y, f"{width:.0f}%", ha="center", va="center", fontsize=7)
            left += width
    ax.set_yticks(range(len(archs)), [f"{a['arch']}\n{a['step_ms']:.1f} ms/step" for a in archs])
    ax.invert_yaxis()
    ax.set_xlim(0, max(100, left))
    ax.set_xlabel(f"% of one training step (backend {bd['backend']}, batch {bd['batch_size']})")
    ax.set_title("Where one training step goes, in running order")
    handles = [Patch(color=colors[n], label=n) for n in names]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, path)


def plot_dataparallel(results, path) -> bool:
    dp = results.get("dataparallel") or {}
    curves = {a: r["modelled"] for a, r in dp.get("archs", {}).items() if "modelled" in r}
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arch, modelled in curves.items():
        ranks = [int(p) for p in modelled]
        ax.plot(ranks, list(modelled.values()), marker="o", label=f"{arch} (modelled)")
        rows = {r["config"]: r for r in dp["archs"][arch]["rows"] if r["status"] == "ok"}
        one, two = rows.get("1 process x 1 thread"), rows.get("2 processes x 1 thread")
        if one and two:  # the same quantity as the curve: over one 1-thread process
            ax.scatter(
                [2], [two["images_per_s"] / one["images_per_s"]], marker="*", s=120, zorder=3,
                color=ax.lines[-1].get_color(), label=f"{arch}: 2 local ranks, measured",
            )  # fmt: skip
    top = max(int(p) for m in curves.values() for p in m)
    ax.plot([1, top], [1, top], color="gray", ls=":", label="ideal")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("ranks (one core each)")
    ax.set_ylabel("speedup over one process")
    model = dp.get("model", {})
    ax.set_title(
        f"Speedup over one 1-thread process ({model.get('bandwidth_gbit', '?')} Gbit/s model)"
    )
    return _save(fig, path, legend_ax=ax)
