"""Turn a results dict (see bench.suite.run_suite) into reports/<name>/: results.json, report.md
and PNG plots; refresh reports/latest.md. Also compares two results dicts (compare_results).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from .timing import NOISY_IQR_FRACTION  # noqa: E402

DPI = 90
PLOTS = {
    "speedup": "speedup.png",
    "roofline": "roofline.png",
    "epoch": "epoch.png",
    "scaling": "scaling.png",
}
PEER_LABELS = {"torch": "PyTorch", "tensorflow": "TensorFlow/Keras"}


# ---- formatting ----------------------------------------------------------------------------------


def fmt_seconds(s) -> str:
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} µs"


def fmt_x(r, digits=2) -> str:
    return "—" if r is None else f"{r:.{digits}f}×"


def fmt_num(v, digits=1, suffix="") -> str:
    return "—" if v is None else f"{v:.{digits}f}{suffix}"


def _label(name: str) -> str:
    return PEER_LABELS.get(name, name)


def table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- markdown ------------------------------------------------------------------------------------


def machine_header(results: dict) -> str:
    m = results["machine"]
    peak = m.get("peak_gflops", {})
    opts = results.get("options", {})
    return "\n".join(
        [
            f"# convbench report `{results['name']}`",
            "",
            f"Run {results['created']} → {results.get('finished', '?')}, repeats {opts.get('repeat')}"
            f" x {opts.get('rounds', 1)} rounds{', quick' if opts.get('quick') else ''}.",
            "",
            table(
                ["machine", ""],
                [
                    ["CPU", f"{m['cpu']}, {m['cores']} cores"],
                    [
                        "load average at start",
                        ", ".join(f"{v:.2f}" for v in m.get("load_average") or []),
                    ],
                    ["Python / NumPy", f"{m['python']} / {m['numpy']}"],
                    ["BLAS", m["blas"]],
                    [
                        "numba / torch / tensorflow",
                        f"{m['numba']} / {m['torch']} / {m['tensorflow']}",
                    ],
                    [
                        "numpy matmul peak (2048², best of 5)",
                        f"{fmt_num(peak.get('float32'))} GFLOP/s float32, {fmt_num(peak.get('float64'))} "
                        f"GFLOP/s float64",
                    ],
                    ["backends run", ", ".join(results.get("backends", []))],
                    [
                        "backends unusable",
                        "; ".join(
                            f"{k}: {v}" for k, v in results.get("broken_backends", {}).items()
                        )
                        or "none",
                    ],
                    [
                        "peers",
                        ", ".join(f"{_label(k)}: {v}" for k, v in results.get("peers", {}).items()),
                    ],
                ],
            ),
        ]
    )


def layers_section(results: dict) -> str:
    rows = results.get("layers", [])
    if not rows:
        return ""
    out = [
        "## Layer cases",
        "",
        "Median seconds per call (IQR in brackets), float32. GFLOP/s counts 2 FLOPs per "
        "multiply-add (backward = dx + dw = 2× forward); *% peak* is against the float32 matmul "
        "peak above. *vs naive* and *vs best numpy* are speedups (>1 = faster); */ PyTorch* and "
        "*/ TF* are time ratios (>1 = slower than the peer). Pool cases do no multiply-adds, so "
        f"they have no GFLOP/s. ⚠ marks noisy results (IQR > {NOISY_IQR_FRACTION:.0%} of median). "
        "einsum and im2col are timed with 1 and 2 BLAS threads and keep the faster setting "
        "(the number after the name); numba and the peers use 2 threads.",
        "",
    ]
    headers = [
        "case",
        "pass",
        "backend",
        "median (IQR)",
        "GFLOP/s",
        "% peak",
        "vs naive",
        "vs best numpy",
        "/ PyTorch",
        "/ TF",
    ]
    body = []
    for r in rows:
        if r.get("status") != "ok":
            body.append(
                [r["case"], r["pass"], _label(r["backend"]), r["status"], "", "", "", "", "", ""]
            )
            continue
        pf = r.get("peak_fraction")
        label = _label(r["backend"]) + (f" ({r['blas_threads']})" if "blas_threads" in r else "")
        body.append(
            [
                r["case"],
                r["pass"],
                label,
                f"{fmt_seconds(r['median'])} ({fmt_seconds(r['iqr'])})"
                + (" ⚠" if r.get("noisy") else ""),
                fmt_num(r.get("gflops")),
                "—" if pf is None else f"{100 * pf:.1f}%",
                fmt_x(r.get("speedup_vs_naive"), 1),
                fmt_x(r.get("speedup_vs_best_numpy")),
                fmt_x(r.get("ratio_torch")),
                fmt_x(r.get("ratio_tensorflow")),
            ]
        )
    cases = {}
    for r in rows:
        cases.setdefault(r["case"], (r.get("shape", ""), r.get("flops")))
    out.append(
        table(
            ["case", "shape", "forward GFLOP"],
            [[c, shape, fmt_num(flops and flops / 1e9, 3)] for c, (shape, flops) in cases.items()],
        )
    )
    out += [
        "",
        table(headers, body),
        "",
        f"![speedup]({PLOTS['speedup']})",
        "",
        f"![roofline]({PLOTS['roofline']})",
    ]
    return "\n".join(out)


def summary_section(results: dict) -> str:
    """The main table: forward + backward median per case (rows) and backend (columns)."""
    times = _fwd_bwd_times(results)
    if not times:
        return ""
    names = sorted({b for d in times.values() for b in d}, key=_order)
    numpy_names = [n for n in names if n not in PEER_LABELS]
    body = []
    for case, d in times.items():
        ours = {n: d[n] for n in numpy_names if n in d}
        best = min(ours, key=ours.get) if ours else None
        cells = [f"**{fmt_seconds(d[n])}**" if n == best else fmt_seconds(d.get(n)) for n in names]
        vs_torch = fmt_x(ours[best] / d["torch"]) if best and "torch" in d else "—"
        body.append([case, *cells, best or "—", vs_torch])
    return "\n".join(
        [
            "## Summary: forward + backward per layer case",
            "",
            "Median seconds of one forward plus one backward call; bold = fastest of our backends; "
            "last column = that backend's time / PyTorch's (>1 = slower).",
            "",
            table(["case", *[_label(n) for n in names], "fastest ours", "fastest / PyTorch"], body),
        ]
    )


def epoch_section(results: dict) -> str:
    ep = results.get("epoch")
    if not ep:
        return ""
    ok = {r["name"]: r for r in ep["rows"] if r["status"] == "ok"}
    torch_s = ok.get("torch", {}).get("seconds_per_60k")
    body = []
    for r in ep["rows"]:
        if r["status"] != "ok":
            body.append([_label(r["name"]), r["status"], "", ""])
            continue
        note = "extrapolated" if r.get("extrapolated") else "measured"
        if r.get("batches_timed") and r["extrapolated"]:
            note += f" (from {r['batches_timed']} batches)"
        body.append(
            [
                _label(r["name"]),
                fmt_seconds(r["seconds_per_60k"]),
                note,
                fmt_x(r["seconds_per_60k"] / torch_s) if torch_s else "—",
            ]
        )
    return "\n".join(
        [
            "## Training epoch (`seed` model, 60 000 images, batch 64, float32, SGD momentum)",
            "",
            f"Data: {ep['data']}. Seconds for one epoch ({ep['samples']} images timed; scaled to 60 000 "
            "when fewer). / PyTorch: time ratio, >1 = slower than PyTorch. BLAS threads for the NumPy "
            f"backends: {ep.get('blas_threads', 'default')}, as `python -m model.train` runs them; "
            "PyTorch and Keras use 2 threads.",
            "",
            table(["implementation", "seconds / epoch", "how", "/ PyTorch"], body),
            "",
            f"![epoch]({PLOTS['epoch']})",
        ]
    )


def fitconv_section(results: dict) -> str:
    fc = results.get("fitconv")
    if not fc:
        return ""
    ok = {r["name"]: r["seconds"] for r in fc["rows"] if r["status"] == "ok"}
    keras = ok.get("tensorflow")
    body = [
        [
            _label(r["name"]),
            fmt_seconds(r.get("seconds")) if r["status"] == "ok" else r["status"],
            "extrapolated" if r.get("extrapolated") else "measured" if r["status"] == "ok" else "",
            fmt_x(r["seconds"] / keras) if keras and r["status"] == "ok" else "—",
        ]
        for r in fc["rows"]
    ]
    return "\n".join(
        [
            "## Seed 003 workload: the `.npy` conv-kernel fit",
            "",
            f"Inputs {tuple(fc['inputs'])} NCHW, targets {tuple(fc['targets'])}, 2 kernels 2x2 valid, "
            f"no bias, per-sample SGD (batch 1), lr {fc['lr']}, MSE. Seconds per epoch (median); "
            "/ Keras: time ratio, >1 = slower than Keras.",
            "",
            table(["implementation", "seconds / epoch", "how", "/ Keras"], body),
        ]
    )


def memory_section(results: dict) -> str:
    mem = results.get("memory")
    if not mem:
        return ""
    body = [
        [r["backend"], f"{r['peak_bytes'] / 2**20:.1f} MiB" if r["status"] == "ok" else r["status"]]
        for r in mem["rows"]
    ]
    return "\n".join(
        [
            f"## Memory: peak allocation of one conv forward + backward (`{mem['case']}`, {mem['shape']})",
            "",
            "tracemalloc peak, inputs excluded. Note: " + mem["note"] + ".",
            "",
            table(["backend", "peak"], body),
        ]
    )


def compile_section(results: dict) -> str:
    nc = results.get("numba_compile")
    if not nc:
        return ""
    if nc["status"] != "ok":
        text = nc["status"]
    else:
        text = (
            f"import {fmt_seconds(nc['import_seconds'])}, `warmup()` (compiles every kernel) "
            f"{fmt_seconds(nc['compile_seconds'])}"
        )
    return "\n".join(
        [
            "## Numba compile time",
            "",
            "Measured once in a fresh process with an empty `NUMBA_CACHE_DIR`, so neither "
            "the in-process JIT nor the disk cache hides it; never included in the timings "
            "above.",
            "",
            text,
        ]
    )


def scaling_section(results: dict) -> str:
    sc = results.get("scaling")
    if not sc:
        return ""
    body = []
    for axis, label in (("batch", "batch size"), ("size", "image side")):
        for name, c in sc.get(axis, {}).items():
            if c["status"] != "ok":
                body.append([label, name, c["status"], ""])
                continue
            pts = ", ".join(f"{s}: {fmt_seconds(t)}" for s, t in zip(c["sizes"], c["seconds"]))
            if c.get("skipped_sizes"):
                pts += f"; {name} skipped at {c['skipped_sizes']}: {c['skip_reason']}"
            body.append([label, name, pts, fmt_num(c["exponent"], 2)])
    return "\n".join(
        [
            f"## Scaling (`{sc['case']}`, {sc['shape']}, forward + backward)",
            "",
            "Exponent = slope of log time against log size (1 = linear in batch; 2 = linear in pixels "
            "for image side).",
            "",
            table(["varying", "backend", "median time per size", "exponent"], body),
            "",
            f"![scaling]({PLOTS['scaling']})",
        ]
    )


def skipped_lines(results: dict) -> str:
    seen = sorted(
        {
            (r["case"], r["backend"], r["status"])
            for r in results.get("layers", [])
            if r.get("status", "").startswith("skipped")
        }
    )
    return "\n".join(f"- {case}: {b} {status}" for case, b, status in seen)


def render_markdown(results: dict) -> str:
    parts = [
        machine_header(results),
        summary_section(results),
        layers_section(results),
        epoch_section(results),
        fitconv_section(results),
        memory_section(results),
        compile_section(results),
        scaling_section(results),
    ]
    skipped = skipped_lines(results)
    if skipped:
        parts.append("## Skipped\n\n" + skipped)
    return "\n\n".join(p for p in parts if p) + "\n"


# ---- plots ---------------------------------------------------------------------------------------


def _fwd_bwd_times(results):
    """{case: {backend: forward + backward median}} over rows where both passes ran."""
    acc = {}
    for r in results.get("layers", []):
        if r.get("status") == "ok":
            acc.setdefault(r["case"], {}).setdefault(r["backend"], []).append(r["median"])
    return {c: {b: sum(t) for b, t in d.items() if len(t) == 2} for c, d in acc.items()}


def plot_speedup(results, path):
    times = _fwd_bwd_times(results)
    cases = [c for c in times if "naive" in times[c]]
    if not cases:
        return False
    names = sorted({b for c in cases for b in times[c]}, key=_order)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [k + i * width for k, c in enumerate(cases) if name in times[c]]
        ys = [times[c]["naive"] / times[c][name] for c in cases if name in times[c]]
        ax.bar(xs, ys, width, label=_label(name))
    ax.set_yscale("log")
    ax.axhline(1, color="black", lw=0.8)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(cases))], cases)
    ax.set_ylabel("speedup vs naive (forward + backward)")
    ax.set_title("Speedup over the naive backend (log scale, higher is faster)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def plot_roofline(results, path):
    rows = [r for r in results.get("layers", []) if r.get("status") == "ok" and r.get("gflops")]
    if not rows:
        return False
    peak = results["machine"].get("peak_gflops", {}).get("float32")
    fig, ax = plt.subplots(figsize=(10, 4.5))
    markers = {"forward": "o", "backward": "s"}
    names = sorted({r["backend"] for r in rows}, key=_order)
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    for r in rows:
        flops = r["flops"] * (2 if r["pass"] == "backward" else 1)
        ax.scatter(flops, r["gflops"], color=colors[r["backend"]], marker=markers[r["pass"]], s=30)
    for case in dict.fromkeys(r["case"] for r in rows):  # name each case above its points
        r = next(r for r in rows if r["case"] == case and r["pass"] == "forward")
        low = min(q["gflops"] for q in rows if q["case"] == case and q["pass"] == "forward")
        ax.annotate(
            case,
            (r["flops"], low),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            fontsize=7,
            color="dimgray",
        )
    for n in names:
        ax.scatter([], [], color=colors[n], label=_label(n))
    for p, m in markers.items():
        ax.scatter([], [], color="gray", marker=m, label=p)
    if peak:
        ax.axhline(peak, color="red", ls="--", label=f"numpy matmul peak {peak:.0f} GFLOP/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FLOPs per call (backward = 2x forward)")
    ax.margins(y=0.15)
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title("Achieved GFLOP/s per layer case against the float32 matmul peak")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def plot_epoch(results, path):
    ep = results.get("epoch")
    rows = [r for r in (ep or {}).get("rows", []) if r["status"] == "ok"]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    labels = [
        _label(r["name"]) + (" (extrapolated)" if r.get("extrapolated") else "") for r in rows
    ]
    vals = [r["seconds_per_60k"] for r in rows]
    colors = ["C3" if r["peer"] else "C0" for r in rows]
    bars = ax.barh(labels, vals, color=colors)
    for bar, r in zip(bars, rows):
        if r.get("extrapolated"):
            bar.set_hatch("//")
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {r['seconds_per_60k']:.1f} s",
            va="center",
            fontsize=8,
        )
    if max(vals) / min(vals) > 20:  # naive next to PyTorch: only a log axis shows both
        ax.set_xscale("log")
        ax.set_xlim(left=min(vals) / 2, right=max(vals) * 3)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.set_xlim(right=max(vals) * 1.15)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per 60k-image epoch (red = PyTorch/Keras; hatched = extrapolated)")
    ax.set_title("seed model: one training epoch, batch 64, float32")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def plot_scaling(results, path):
    sc = results.get("scaling")
    if not sc:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (axis, xlabel) in zip(axes, (("batch", "batch size"), ("size", "image side (px)"))):
        for name, c in sorted(sc.get(axis, {}).items(), key=lambda kv: _order(kv[0])):
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
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def _order(name: str):
    known = ["naive", "einsum", "im2col", "numba", "torch", "tensorflow"]
    return (known.index(name) if name in known else len(known), name)


# ---- writing -------------------------------------------------------------------------------------


def write_report(results: dict, out_root) -> Path:
    """Write out_root/<name>/{results.json, report.md, *.png} and out_root/latest.md."""
    out_root = Path(out_root)
    out_dir = out_root / results["name"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    drawers = {
        "speedup": plot_speedup,
        "roofline": plot_roofline,
        "epoch": plot_epoch,
        "scaling": plot_scaling,
    }
    for key, draw in drawers.items():
        draw(results, out_dir / PLOTS[key])
    md = render_markdown(results)
    (out_dir / "report.md").write_text(md)
    # latest.md sits one level up, so its image links point into the run's directory
    latest = md
    for fname in PLOTS.values():
        latest = latest.replace(f"]({fname})", f"]({results['name']}/{fname})")
    (out_root / "latest.md").write_text(latest)
    return out_dir


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


# ---- comparing two runs --------------------------------------------------------------------------


def result_times(results: dict) -> dict:
    """{key: median seconds} for every successful measurement (layers, epoch, fitconv)."""
    times = {}
    for r in results.get("layers", []):
        if r.get("status") == "ok":
            times[f"{r['case']} {r['pass']} {r['backend']}"] = r["median"]
    for section, field in (("epoch", "seconds_per_60k"), ("fitconv", "seconds")):
        for r in (results.get(section) or {}).get("rows", []):
            if r.get("status") == "ok":
                times[f"{section} {r['name']}"] = r[field]
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
            flag = (
                "REGRESSION"
                if ratio > regression_factor
                else "improvement"
                if ratio < 1 / regression_factor
                else ""
            )
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


def load_results(path) -> dict:
    """Read a results.json; a clear ValueError if it is missing, unreadable or not one of ours."""
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
    return data
