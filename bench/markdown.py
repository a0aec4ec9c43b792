"""The Markdown of a report: the machine header, then one function per section of the results dict
(see bench.sections), each returning "" when its section did not run.

Plots are not linked here: bench.report puts each section's images after its text.
"""

from __future__ import annotations

from .formatting import fmt_num, fmt_seconds, fmt_x, order, table
from .layers import forward_backward_medians
from .peers import PEERS, best_configuration, label
from .timing import NOISY_IQR_FRACTION


def machine_header(results: dict) -> str:
    m = results["machine"]
    peak = m.get("peak_gflops", {})
    opts = results.get("options", {})
    broken = results.get("broken_backends", {})
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
                    ["vector extensions", ", ".join(m.get("vector_extensions", [])) or "—"],
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
                        f"{fmt_num(peak.get('float32'))} GFLOP/s float32, "
                        f"{fmt_num(peak.get('float64'))} GFLOP/s float64",
                    ],
                    ["backends run", ", ".join(results.get("backends", []))],
                    [
                        "backends unusable",
                        "; ".join(f"{k}: {v}" for k, v in broken.items()) or "none",
                    ],
                    [
                        "peers",
                        ", ".join(f"{label(k)}: {v}" for k, v in results.get("peers", {}).items()),
                    ],
                ],
            ),
        ]
    )


def _summary(results: dict) -> str:
    """The main table: forward + backward median per case (rows) and backend (columns)."""
    times = forward_backward_medians(results)
    if not times:
        return ""
    names = sorted({b for d in times.values() for b in d}, key=order)
    ours_names = [n for n in names if n not in PEERS]
    body = []
    for case, d in times.items():
        ours = {n: d[n] for n in ours_names if n in d}
        best = min(ours, key=ours.get) if ours else None
        cells = [f"**{fmt_seconds(d[n])}**" if n == best else fmt_seconds(d.get(n)) for n in names]
        torch_name, torch_s = best_configuration(d)
        vs_torch = fmt_x(ours[best] / torch_s) if best and torch_s else "—"
        body.append([case, *cells, best or "—", vs_torch, label(torch_name) if torch_name else "—"])
    return "\n".join(
        [
            "## Summary: forward + backward per layer case",
            "",
            "Median seconds of one forward plus one backward call; bold = fastest of our backends; "
            "*fastest / PyTorch* = that backend's time / PyTorch's at its best configuration "
            "(NCHW or channels_last, the faster per case, named in the last column; >1 = slower).",
            "",
            table(
                [
                    "case",
                    *[label(n) for n in names],
                    "fastest ours",
                    "fastest / PyTorch",
                    "PyTorch at",
                ],
                body,
            ),
        ]
    )


def _layer_row(r: dict) -> list:
    if r.get("status") != "ok":
        return [r["case"], r["pass"], label(r["backend"]), r["status"], "", "", "", "", "", ""]
    pf = r.get("peak_fraction")
    name = label(r["backend"]) + (f" ({r['blas_threads']})" if "blas_threads" in r else "")
    if r.get("path"):
        name += f" [{r['path']}]"
    return [
        r["case"],
        r["pass"],
        name,
        f"{fmt_seconds(r['median'])} ({fmt_seconds(r['iqr'])})" + (" ⚠" if r.get("noisy") else ""),
        fmt_num(r.get("gflops")) + (" eff." if "winograd F" in r.get("path", "") else ""),
        "—" if pf is None else f"{100 * pf:.1f}%",
        fmt_x(r.get("speedup_vs_naive"), 1),
        fmt_x(r.get("speedup_vs_best_numpy")),
        fmt_x(r.get("ratio_torch")),
        fmt_x(r.get("ratio_tensorflow")),
    ]


def layers_section(results: dict) -> str:
    """The summary table, the cases' shapes, then every (case, pass, backend) row."""
    rows = results.get("layers", [])
    if not rows:
        return ""
    cases = {}
    for r in rows:
        cases.setdefault(r["case"], (r.get("shape", ""), r.get("flops")))
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
    details = "\n".join(
        [
            "## Layer cases",
            "",
            "Median seconds per call (IQR in brackets), float32. GFLOP/s counts 2 FLOPs per "
            "multiply-add (backward = dx + dw = 2× forward); *% peak* is against the float32 "
            "matmul peak above. *vs naive* and *vs best numpy* are speedups (>1 = faster); "
            "*/ PyTorch* and */ TF* are time ratios against the framework's faster configuration "
            "(PyTorch NCHW or channels_last; TensorFlow with oneDNN off, in this process, or on, "
            "timed by the same code in a worker process, since TensorFlow reads "
            "TF_ENABLE_ONEDNN_OPTS once at start), >1 = slower. Pool cases do no "
            "multiply-adds, so they have no GFLOP/s. GFLOP/s is always the direct convolution's "
            "count, so every backend is measured on the same work: *eff.* marks Winograd's native "
            "path, which does fewer multiplies (effective GFLOP/s, may exceed the matmul peak); "
            "[brackets] say how winograd and auto ran the case. ⚠ marks noisy results (IQR > "
            f"{NOISY_IQR_FRACTION:.0%} of median). einsum and im2col are timed with 1 and 2 BLAS "
            "threads and keep the faster setting (the number after the name); numba and the peers "
            "use 2 threads.",
            "",
            table(
                ["case", "shape", "forward GFLOP"],
                [
                    [c, shape, fmt_num(flops and flops / 1e9, 3)]
                    for c, (shape, flops) in cases.items()
                ],
            ),
            "",
            table(headers, [_layer_row(r) for r in rows]),
        ]
    )
    return "\n\n".join(part for part in (_summary(results), details) if part)


def epoch_section(results: dict) -> str:
    ep = results.get("epoch")
    if not ep:
        return ""
    ok = {r["name"]: r for r in ep["rows"] if r["status"] == "ok"}
    _, torch_s = best_configuration({n: r.get("seconds_per_60k") for n, r in ok.items()})
    body = []
    for r in ep["rows"]:
        if r["status"] != "ok":
            body.append([label(r["name"]), r["status"], "", ""])
            continue
        how = "extrapolated" if r.get("extrapolated") else "measured"
        if r.get("batches_timed") and r["extrapolated"]:
            how += f" (from {r['batches_timed']} batches)"
        body.append(
            [
                label(r["name"]),
                fmt_seconds(r["seconds_per_60k"]),
                how,
                fmt_x(r["seconds_per_60k"] / torch_s) if torch_s else "—",
            ]
        )
    optimizer = ep.get("optimizer", "SGD momentum")
    return "\n".join(
        [
            f"## Training epoch (`{ep.get('arch', 'small')}` model, 60 000 images, batch "
            f"{ep.get('batch_size', 64)}, float32, {optimizer})",
            "",
            f"Data: {ep['data']}. Seconds for one epoch ({ep['samples']} images timed; scaled to "
            "60 000 when fewer). / PyTorch: time ratio, >1 = slower than PyTorch. BLAS threads "
            f"for the NumPy backends: {ep.get('blas_threads', 'default')}, as `python -m "
            "model.train` runs them; PyTorch and Keras use 2 threads.",
            "",
            table(["implementation", "seconds / epoch", "how", "/ PyTorch"], body),
        ]
    )


def fitconv_section(results: dict) -> str:
    fc = results.get("fitconv")
    if not fc:
        return ""
    ok = {r["name"]: r["seconds"] for r in fc["rows"] if r["status"] == "ok"}
    _, keras = best_configuration(ok, "tensorflow")
    body = [
        [
            label(r["name"]),
            fmt_seconds(r.get("seconds")) if r["status"] == "ok" else r["status"],
            "extrapolated" if r.get("extrapolated") else "measured" if r["status"] == "ok" else "",
            fmt_x(r["seconds"] / keras) if keras and r["status"] == "ok" else "—",
        ]
        for r in fc["rows"]
    ]
    return "\n".join(
        [
            "## The lab's `.npy` conv-kernel fit (`python -m model.fitconv`)",
            "",
            f"Inputs {tuple(fc['inputs'])} NCHW, targets {tuple(fc['targets'])}, 2 kernels 2x2 "
            f"valid, no bias, per-sample SGD (batch 1), lr {fc['lr']}, MSE. Seconds per epoch "
            "(median); / Keras: time ratio, >1 = slower than Keras. The layer case `lab_fit` "
            "times its convolution on all samples at once.",
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
            "## Memory: peak allocation of one conv forward + backward "
            f"(`{mem['case']}`, {mem['shape']})",
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
    for axis, axis_label in (("batch", "batch size"), ("size", "image side")):
        for name, c in sc.get(axis, {}).items():
            if c["status"] != "ok":
                body.append([axis_label, name, c["status"], ""])
                continue
            pts = ", ".join(f"{s}: {fmt_seconds(t)}" for s, t in zip(c["sizes"], c["seconds"]))
            if c.get("skipped_sizes"):
                pts += f"; {name} skipped at {c['skipped_sizes']}: {c['skip_reason']}"
            body.append([axis_label, name, pts, fmt_num(c["exponent"], 2)])
    return "\n".join(
        [
            f"## Scaling (`{sc['case']}`, {sc['shape']}, forward + backward)",
            "",
            "Exponent = slope of log time against log size (1 = linear in batch; 2 = linear in "
            "pixels for image side).",
            "",
            table(["varying", "backend", "median time per size", "exponent"], body),
        ]
    )


def skipped_section(results: dict) -> str:
    """Every (case, backend) the layer section did not run, and why."""
    seen = sorted(
        {
            (r["case"], r["backend"], r["status"])
            for r in results.get("layers", [])
            if r.get("status", "").startswith("skipped")
        }
    )
    if not seen:
        return ""
    return "## Skipped\n\n" + "\n".join(f"- {case}: {b} {status}" for case, b, status in seen)
