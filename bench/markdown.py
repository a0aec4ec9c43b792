"""The Markdown of a report: the machine header, then one function per section of the results dict
(see bench.sections), each returning "" when its section did not run.

Plots are not linked here: bench.report puts each section's images after its text.
"""

from __future__ import annotations

from statistics import median

import numpy as np

from .formatting import fmt_num, fmt_seconds, fmt_x, order, table
from .layers import BLAS_TUNED
from .peers import PEERS, best_configuration, label
from .results import forward_backward_medians, paired_forward_backward_ratio
from .stats import NOISY_IQR_FRACTION, is_noisy


def busy_warning(results: dict) -> str:
    """A warning line when the machine was busy before or after the run (bench.machine's
    busy_check), else ""."""
    m = results.get("machine", {})
    reasons = [
        f"{when} the run: {m[key]['busy']}"
        for when, key in (("before", "before"), ("after", "after"))
        if (m.get(key) or {}).get("busy")
    ]
    if not reasons:
        return ""
    return (
        "> **⚠ The machine was busy** ("
        + "; ".join(reasons)
        + "): other work shared the cores, so times are slower and noisier than this machine "
        "manages alone, and ratios between runs mislead. Rerun on a quiet machine before "
        "drawing conclusions."
    )


def _threads(m: dict) -> str:
    t = m.get("threads") or {}
    if not t:
        return "—"
    env = ", ".join(f"{k}={v}" for k, v in (t.get("env") or {}).items())
    return (
        f"BLAS {', '.join(t.get('blas') or []) or '?'}; numba {t.get('numba')}; peers "
        f"{t.get('peers', '?')}" + (f"; {env}" if env else "")
    )


def machine_header(results: dict) -> str:
    m = results["machine"]
    peak = m.get("peak_gflops", {})
    opts = results.get("options", {})
    broken = results.get("broken_backends", {})
    after = (m.get("after") or {}).get("load_average") or []
    mode = "full" if opts.get("full") else "quick" if opts.get("quick") else "default"
    warning = busy_warning(results)
    return "\n".join(
        [
            f"# convbench report `{results['name']}`",
            "",
            *([warning, ""] if warning else []),
            f"Run {results['created']} → {results.get('finished', '?')}, {mode} mode, layer "
            f"samples {opts.get('repeat')} x {opts.get('rounds', 1)} rounds.",
            "",
            table(
                ["machine", ""],
                [
                    ["CPU", f"{m['cpu']}, {m['cores']} cores"],
                    ["vector extensions", ", ".join(m.get("vector_extensions", [])) or "—"],
                    [
                        "load average at start / end",
                        ", ".join(f"{v:.2f}" for v in m.get("load_average") or [])
                        + (" / " + ", ".join(f"{v:.2f}" for v in after) if after else ""),
                    ],
                    ["threads", _threads(m)],
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
        paired = paired_forward_backward_ratio(results, case, best) if best else None
        if paired:
            vs_torch = fmt_ratio({"r": paired["ratio"], "r_interval": paired["interval"]}, "r")
        else:  # results written before the rounds were kept: the medians' ratio
            vs_torch = fmt_x(ours[best] / torch_s) if best and torch_s else "—"
        body.append([case, *cells, best or "—", vs_torch, label(torch_name) if torch_name else "—"])
    return "\n".join(
        [
            "## Summary: forward + backward per layer case",
            "",
            "Median seconds of one forward plus one backward call; bold = fastest of our backends; "
            "*fastest / PyTorch* = that backend's time / PyTorch's at its best configuration "
            "(NCHW or channels_last, the faster per case, named in the last column; >1 = slower): "
            "the median of the per-round ratios, each round timing every backend and peer of "
            "the case interleaved, with the 95% bootstrap interval of that median in brackets.",
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


# Sections whose figures carry a handful of samples (memory, epoch memory, scaling, data-parallel)
# show the range below this many samples, where an IQR interpolates between two or three values
RANGE_BELOW = 5


def fmt_spread(median: float, samples, unit=fmt_seconds, range_below: int = 0) -> str:
    """The median, then the samples' spread in brackets and ⚠ when noisy (bench.stats.is_noisy,
    on the IQR), when there are at least 2 samples. The spread is the IQR, or with fewer than
    `range_below` samples their range "min – max"."""
    text = unit(median)
    if samples is not None and len(samples) >= 2:
        q25, q75 = np.percentile(samples, [25, 75])
        if len(samples) < range_below:
            spread = f"{unit(min(samples))} – {unit(max(samples))}"
        else:
            spread = unit(q75 - q25)
        text += f" ({spread})" + (" ⚠" if is_noisy(median, q75 - q25) else "")
    return text


def spread_note(n: int) -> str:
    """What fmt_spread(..., range_below=RANGE_BELOW) puts in brackets for n samples, and the
    noise mark's rule, as a sentence of a section's text."""
    what = "the range (min – max)" if n < RANGE_BELOW else "the IQR"
    return (
        f"Each figure is the median of {n} samples, {what} in brackets; ⚠: IQR ≥ "
        f"{NOISY_IQR_FRACTION:.0%} of the median (torch.utils.benchmark's rule)."
    )


def fmt_mib(n_bytes) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


def fmt_mb(mb) -> str:
    return f"{mb:.0f} MB"


def fmt_ratio(row: dict, key: str) -> str:
    """row[key] as a ratio, with row[key + "_interval"] after it when the row has one."""
    interval = row.get(f"{key}_interval")
    text = fmt_x(row.get(key))
    if interval and row.get(key) is not None:
        text += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
    return text


def _fewer_multiplies(path: str) -> bool:
    """True when a winograd or auto path string names Winograd's own algorithm (batched
    "winograd F(mxm,3x3)" or "winograd fused F(2x2,3x3)"), not its fallback."""
    return "winograd F(" in path or "winograd fused F(" in path


def _layer_row(r: dict) -> list:
    if r.get("status") != "ok":
        return [r["case"], r["pass"], label(r["backend"]), r["status"], "", "", "", "", "", ""]
    pf = r.get("peak_fraction")
    tuned = "blas_threads" in r and r["backend"] in BLAS_TUNED
    name = label(r["backend"]) + (f" ({r['blas_threads']})" if tuned else "")
    if r.get("path"):
        name += f" [{r['path']}]"
    return [
        r["case"],
        r["pass"],
        name,
        f"{fmt_seconds(r['median'])} ({fmt_seconds(r['iqr'])})" + (" ⚠" if r.get("noisy") else ""),
        fmt_num(r.get("gflops")) + (" eff." if _fewer_multiplies(r.get("path", "")) else ""),
        "—" if pf is None else f"{100 * pf:.1f}%",
        fmt_x(r.get("speedup_vs_naive"), 1),
        fmt_x(r.get("speedup_vs_best_numpy")),
        fmt_ratio(r, "ratio_torch"),
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
            "(*/ PyTorch*: the median of the per-round ratios, each round timing every backend "
            "and peer of the case interleaved, with the 95% bootstrap interval of that median in "
            "brackets) "
            "(PyTorch NCHW or channels_last; TensorFlow with oneDNN off, in this process, or on, "
            "timed by the same code in a worker process, since TensorFlow reads "
            "TF_ENABLE_ONEDNN_OPTS once at start), >1 = slower. Pool cases do no "
            "multiply-adds, so they have no GFLOP/s. GFLOP/s is always the direct convolution's "
            "count, so every backend is measured on the same work: *eff.* marks Winograd's native "
            "path, which does fewer multiplies (effective GFLOP/s, may exceed the matmul peak); "
            "[brackets] say how winograd and auto ran the case. ⚠ marks noisy results (IQR ≥ "
            f"{NOISY_IQR_FRACTION:.0%} of median). einsum and im2col are timed with 1 and 2 BLAS "
            "threads and keep the faster setting (the number after the name); numba, winograd "
            "and auto use 2 threads of their own with NumPy's BLAS on 1, as `python -m "
            "model.train` runs them (they split their GEMMs themselves), and the peers 2 threads, "
            "each PyTorch configuration in a worker process of its own.",
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


def _epoch_table(run: dict) -> str:
    """One architecture's rows: seconds per 60k-image epoch, how, / PyTorch, test accuracy."""
    ok = {r["name"]: r for r in run["rows"] if r["status"] == "ok"}
    _, torch_s = best_configuration({n: r.get("seconds_per_60k") for n, r in ok.items()})
    body = []
    for r in run["rows"]:
        if r["status"] != "ok":
            body.append([label(r["name"]), r["status"], "", "", ""])
            continue
        how = "extrapolated" if r.get("extrapolated") else "measured"
        if r.get("batches_timed") and r["extrapolated"]:
            how += f" (from {r['batches_timed']} batches)"
        acc = r.get("test_acc")
        seconds = fmt_seconds(r["seconds_per_60k"])
        if len(r.get("samples_per_60k") or []) > 1:
            seconds += f" ({fmt_seconds(r['iqr'])})" + (" ⚠" if r.get("noisy") else "")
        if "ratio_torch" in r:
            vs_torch = fmt_ratio(r, "ratio_torch")
        else:  # results written before the rounds: the two medians' ratio
            vs_torch = fmt_x(r["seconds_per_60k"] / torch_s) if torch_s else "—"
        body.append(
            [
                label(r["name"]),
                seconds,
                how,
                vs_torch,
                "—" if acc is None else f"{100 * acc:.2f}%",
            ]
        )
    headers = ["implementation", "seconds / epoch", "how", "/ PyTorch", "test accuracy"]
    return table(headers, body)


def epoch_section(results: dict) -> str:
    ep = results.get("epoch")
    if not ep:
        return ""
    runs = ep.get("archs") or [ep]  # runs before the deep model was timed hold one, at the top
    n = ep["samples"]
    parts = [
        f"## Training epoch (60 000 images, batch {ep.get('batch_size', 64)}, float32)",
        "",
        f"Data: {ep['data']}. Seconds for one epoch, "
        + (
            f"the median (IQR) of {ep['rounds']} rounds, each training every backend and peer "
            "in a rotated order on the images given below and scaled to 60 000 images"
            if ep.get("rounds", 1) > 1
            else f"{ep['samples']} images timed (scaled to 60 000 when fewer)"
        )
        + ", after untimed warm-up steps on a full batch and on one of the "
        "epoch's last batch size (so that auto's one-time timing of each new layer shape, which "
        "its disk cache then keeps, is not in the epoch). / PyTorch: time ratio against "
        "PyTorch at its faster configuration (NCHW or channels_last) within each round, the "
        "median over rounds with its 95% bootstrap interval, >1 = slower; ⚠: IQR ≥ "
        f"{NOISY_IQR_FRACTION:.0%} of the median. Test accuracy: after this one epoch, on "
        f"{ep.get('test_images', '?')} test images (— when only part of the epoch ran). BLAS "
        f"threads for the NumPy backends: {ep.get('blas_threads', 'default')}, as `python -m "
        "model.train` runs them; PyTorch and Keras use 2 threads. The peers run the same layers "
        "(bench.peer_nets) with their own default initialisation.",
    ]
    for run in runs:
        lr = f", lr {run['lr']:g}" if "lr" in run else ""
        parts += [
            "",
            f"### `{run.get('arch', 'small')}` model, {run.get('optimizer', 'momentum')}{lr}"
            + (f" ({run['samples']} images timed)" if run.get("samples", n) != n else ""),
            "",
            _epoch_table(run),
        ]
    return "\n".join(parts)


def fitconv_section(results: dict) -> str:
    fc = results.get("fitconv")
    if not fc:
        return ""
    ok = {r["name"]: r["seconds"] for r in fc["rows"] if r["status"] == "ok"}
    _, keras = best_configuration(ok, "tensorflow")
    body = [
        [
            label(r["name"]),
            fmt_spread(r["seconds"], r.get("samples")) if r["status"] == "ok" else r["status"],
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
        [
            r["backend"],
            fmt_spread(r["peak_bytes"], r.get("samples"), fmt_mib, RANGE_BELOW)
            if r["status"] == "ok"
            else r["status"],
        ]
        for r in mem["rows"]
    ]
    n = max((len(r.get("samples") or []) for r in mem["rows"]), default=0)
    return "\n".join(
        [
            "## Memory: peak allocation of one conv forward + backward "
            f"(`{mem['case']}`, {mem['shape']})",
            "",
            "tracemalloc peak, inputs excluded, in rounds whose backend order rotates. "
            + (spread_note(n) + " " if n >= 2 else "")
            + "Note: "
            + mem["note"]
            + ".",
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
    n = max(
        (
            len(ts)
            for axis in ("batch", "size")
            for c in sc.get(axis, {}).values()
            for ts in c.get("samples") or []
        ),
        default=0,
    )
    body = []
    for axis, axis_label in (("batch", "batch size"), ("size", "image side")):
        for name, c in sc.get(axis, {}).items():
            if c["status"] != "ok":
                body.append([axis_label, name, c["status"], ""])
                continue
            samples = c.get("samples") or [None] * len(c["sizes"])
            pts = ", ".join(
                f"{s}: {fmt_spread(t, ts, range_below=RANGE_BELOW)}"
                for s, t, ts in zip(c["sizes"], c["seconds"], samples)
            )
            if c.get("skipped_sizes"):
                pts += f"; {name} skipped at {c['skipped_sizes']}: {c['skip_reason']}"
            body.append([axis_label, name, pts, fmt_num(c["exponent"], 2)])
    return "\n".join(
        [
            f"## Scaling (`{sc['case']}`, {sc['shape']}, forward + backward)",
            "",
            "Exponent = slope of log time against log size (1 = linear in batch; 2 = linear in "
            "pixels for image side), fitted to the medians."
            + (
                f" {sc['rounds']} round{'s' if sc['rounds'] != 1 else ''}, each timing every backend's curve in a rotated order. "
                + spread_note(n)
                if n >= 2
                else ""
            ),
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


def breakdown_section(results: dict) -> str:
    bd = results.get("breakdown")
    if not bd:
        return ""
    parts = [
        f"## Where a training step goes (backend `{bd['backend']}`, batch {bd['batch_size']}, "
        f"{bd['dtype']})",
        "",
        "Median milliseconds per part over the timed steps, and its share of the median step. "
        "Each layer's forward and backward are timed around its calls; *batching + shuffle* is "
        "drawing the batch plus its share of one 60 000-image permutation; *other* is what the "
        "parts leave of each step (medians over the steps, so the rows need not add up to the "
        "step exactly); *Conv2D + MaxPool2D* is the two layers' forward (or backward) as one fused call. "
        f"BLAS threads: {bd.get('blas_threads', '?')}, as `python -m "
        f"model.train` runs. Data: {bd['data']}.",
    ]
    if bd.get("auto_choices"):
        chosen = "; ".join(f"{k}: {v}" for k, v in bd["auto_choices"].items())
        parts += ["", f"auto chose, per layer shape: {chosen}."]
    for arch in bd["archs"]:
        title = f"### `{arch['arch']}` model, {arch['optimizer']}"
        title += ", augmented batches" if arch.get("augment") else ""
        if arch["status"] != "ok":
            parts += ["", title, "", arch["status"]]
            continue
        body = [[p["name"], f"{p['ms']:.2f}", f"{p['percent']:.1f}%"] for p in arch["parts"]]
        step = fmt_spread(arch["step_ms"], arch.get("step_samples_ms"), lambda v: f"{v:.2f}")
        body.append(["**step**", f"**{step}**", "100%"])
        parts += [
            "",
            f"{title} (median of {arch['steps']} steps)",
            "",
            table(["part", "ms", "% of step"], body),
        ]
    return "\n".join(parts)


def paired_section(results: dict) -> str:
    pr = results.get("paired")
    if not pr:
        return ""
    ours, single = pr["ours"], pr.get("single")
    parts = [
        f"## Training, head to head: `{ours}` against PyTorch in alternating rounds",
        "",
        f"{pr['rounds']} rounds per model on {pr['data']}; each round trains a fresh network on "
        f"`{ours}`, on PyTorch in both layouts"
        + (f" and on `{single}` (the fastest single backend)" if single else "")
        + ", in an order that rotates from round to round, on the same batches (batch 64, "
        "float32, after an untimed warm-up step), so that the machine's drift over minutes, "
        "which --full's whole epochs, trained one after the other, carry, reaches all alike. *ratio*: "
        "our seconds over the faster PyTorch layout's in the same round, <1 = faster; the median "
        "and the range over the rounds"
        + (f"; *{ours} / {single}* the same against `{single}`." if single else ".")
        + " Seconds: "
        + spread_note(pr["rounds"]).replace("Each figure is", "each is"),
        "",
    ]
    body = []
    with_single = any("single" in arch for arch in pr["archs"])
    for arch in pr["archs"]:
        name = f"`{arch['arch']}` ({arch['batches']} batches, {arch['optimizer']})"
        if arch["status"] != "ok":
            body.append([name, arch["status"], "", "", ""] + ([""] if with_single else []))
            continue
        fastest = [
            min(times[i] for times in arch["peer"].values()) for i in range(len(arch["ours"]))
        ]
        row = [
            name,
            fmt_spread(median(arch["ours"]), arch["ours"], range_below=RANGE_BELOW),
            fmt_spread(median(fastest), fastest, range_below=RANGE_BELOW),
            fmt_x(arch["median"]),
            _ratio_range(arch["ratios"]),
        ]
        if with_single:
            to = arch.get("single")
            row.append(f"{fmt_x(to['median'])} ({_ratio_range(to['ratios'])})" if to else "—")
        body.append(row)
    headers = ["model", f"{ours} (s)", "PyTorch, faster layout (s)", "ratio", "range"]
    if with_single:
        headers.append(f"{ours} / {single} (range)")
    parts.append(table(headers, body))
    return "\n".join(parts)


def _ratio_range(ratios: list[float]) -> str:
    return f"{fmt_x(min(ratios))} – {fmt_x(max(ratios))}"


def inference_section(results: dict) -> str:
    inf = results.get("inference")
    if not inf:
        return ""
    parts = [
        f"## Inference ({inf['images']} images, batches of {inf['batch_size']}, float32)",
        "",
        f"Images per second of `Sequential.predict` ({inf['repeat']} timed "
        f"pass{'es, the median' if inf['repeat'] > 1 else ''} over "
        f"{inf['data']}; NumPy's default BLAS threads here: {inf.get('blas_threads', '?')}) "
        "beside PyTorch in eval mode under `torch.no_grad()` with "
        f"{inf.get('torch_threads', '?')} threads, in both layouts. *vs PyTorch*: our images/s "
        "over PyTorch's at its faster layout, >1 = faster.",
    ]
    for arch in inf["archs"]:
        ok = {r["name"]: r for r in arch["rows"] if r["status"] == "ok"}
        torch_name, torch_s = best_configuration({n: r["seconds"] for n, r in ok.items()})
        body = []
        for r in arch["rows"]:
            if r["status"] != "ok":
                body.append([label(r["name"]), r["status"], "", ""])
                continue
            vs = "—" if r["peer"] or not torch_s else fmt_x(torch_s / r["seconds"])
            seconds = fmt_spread(r["seconds"], r.get("samples"))
            body.append([label(r["name"]), f"{r['images_per_second']:,.0f}", seconds, vs])
        parts += [
            "",
            f"### `{arch['arch']}` model",
            "",
            table(["implementation", "images/s", "seconds (IQR)", "vs PyTorch"], body),
        ]
    return "\n".join(parts)


def epoch_memory_section(results: dict) -> str:
    em = results.get("epoch_memory")
    if not em:
        return ""
    target = em["target_ratio"]
    parts = [
        "## Memory: peak resident set of one training epoch",
        "",
        "Each row is a fresh process: it imports the backend or PyTorch, loads the data (MNIST "
        "scaled to float32), trains the images named in the heading, and reports its "
        "high-water mark (VmHWM). *before training*: its resident set (VmRSS) after the imports "
        "and the data; loading MNIST briefly needs more than it keeps, so in a short run the "
        "peak may be the load's, not training's. / PyTorch: the peak over PyTorch's lower one "
        "(either layout); the target is at "
        f"most {target:g}× (*target* column). Our backends run with `keep_freed_memory()`, as "
        "`python -m model.train` does.",
    ]
    n = max(
        (len(r.get("peak_mb_samples") or []) for a in em["archs"] for r in a["rows"]), default=0
    )
    if n >= 2:
        parts[-1] += (
            f" Each row runs {n} such processes, one per round, the order of backends and "
            "PyTorch rotating from round to round; *before training* and *peak* are their "
            "medians. " + spread_note(n).replace("Each figure", "The peak")
        )
    if em.get("skipped"):
        parts += ["", em["skipped"]]
    for arch in em["archs"]:
        body = []
        for r in arch["rows"]:
            if r["status"] != "ok":
                body.append([label(r["name"]), r["status"], "", "", ""])
                continue
            before = r.get("before_training_mb")
            body.append(
                [
                    label(r["name"]),
                    "—" if before is None else fmt_mb(before),
                    fmt_spread(r["peak_mb"], r.get("peak_mb_samples"), fmt_mb, RANGE_BELOW),
                    fmt_x(r.get("ratio_torch")),
                    r.get("target", "—"),
                ]
            )
        parts += [
            "",
            f"### `{arch['arch']}` model, {arch['samples']} training images",
            "",
            table(["implementation", "before training", "peak", "/ PyTorch", "target"], body),
        ]
    return "\n".join(parts)


def first_run_section(results: dict) -> str:
    fr = results.get("first_run")
    if not fr:
        return ""
    parts = [
        f"## First run: `python -m model.train --backend {fr['backend']}` to its first batch",
        "",
        "Seconds from starting the process to the end of its first trained batch (one 64-image "
        "epoch, then a 100-image evaluation), with an empty `NUMBA_CACHE_DIR` (cold: a fresh "
        "install) and with the cache the cold run filled (warm; with --quick, which skips the "
        "cold run, this machine's own cache). *compile* is what the trainer "
        "prints on its `compiling ... (first run only)` line; *data* its MNIST load; "
        "*first batch* the "
        "training pass its epoch line reports (what still compiles on first use shows here). "
        "Python's own bytecode caches are warm in both. Target: training starts within "
        f"{fr['target_seconds']:g} s (goal {fr['goal_seconds']:g} s).",
    ]
    if fr["status"] != "ok":
        return "\n".join([*parts, "", fr["status"]])
    body = []
    for state in ("cold", "warm"):
        r = fr.get(state) or {"status": "not run"}
        if r["status"] != "ok":
            body.append([state, r["status"], "", "", "", ""])
            continue
        seconds = r["first_batch_seconds"]
        body.append(
            [
                state,
                fmt_seconds(seconds),
                fmt_seconds(r.get("compile_seconds")),
                fmt_seconds(r.get("load_seconds")),
                fmt_seconds(r.get("batch_seconds")),
                "pass" if seconds <= fr["target_seconds"] else "FAIL",
            ]
        )
    headers = ["numba cache", "to first batch", "compile", "data", "first batch", "target"]
    return "\n".join([*parts, "", table(headers, body)])


def dataparallel_section(results: dict) -> str:
    dp = results.get("dataparallel")
    if not dp:
        return ""
    title = "## Data-parallel training over MPI (`model.train --distributed`)"
    if dp["status"] != "ok":
        return f"{title}\n\n{dp['status']}"
    body, modelled = [], []
    for arch, result in dp["archs"].items():
        for r in result["rows"]:
            if r["status"] != "ok":
                body.append([arch, r["config"], r["status"], "", ""])
                continue
            allreduce = r.get("allreduce_seconds")
            body.append(
                [
                    arch,
                    r["config"],
                    f"{r['images_per_s']:.0f}",
                    fmt_spread(r["step_seconds"], r.get("step_samples"), range_below=RANGE_BELOW),
                    fmt_seconds(allreduce) if allreduce is not None else "—",
                ]
            )
        if "efficiency" in result:
            body.append(
                [arch, "2 processes / 1 process x 2 threads", f"{result['efficiency']:.2f}", "", ""]
            )
        if "modelled" in result:
            modelled.append([arch, *(f"{s:.1f}×" for s in result["modelled"].values())])
    ranks = next((list(r["modelled"]) for r in dp["archs"].values() if "modelled" in r), [])
    n_rounds = dp.get("rounds", 1)
    measured = (
        f"{n_rounds} rounds of a fresh process per configuration, the configurations' order "
        f"rotating from round to round, {dp['steps']} timed steps each; the step time is the "
        f"median of all {n_rounds * dp['steps']} steps, the IQR in brackets, ⚠: IQR ≥ "
        f"{NOISY_IQR_FRACTION:.0%} of the median"
        if n_rounds > 1
        else f"median of {dp['steps']} steps"
    )
    model = dp.get("model", {})
    return "\n".join(
        [
            title,
            "",
            f"**Measured** on this machine ({dp['backend']} backend, batch {dp['batch']}, float32, "
            + measured
            + "; the 2-process run splits each batch 32 + 32 and sums "
            "the gradient with one Allreduce per step; the last row per network is its parallel "
            "efficiency against one process using the same two cores):",
            "",
            table(["network", "configuration", "images/s", "step", "gradient Allreduce"], body),
            "",
            f"**Modelled** (not measured): speedup over one 1-thread process for P ranks of one core "
            f"each on a {model.get('bandwidth_gbit', '?')} Gbit/s network with "
            f"{1e6 * model.get('latency_s', 0):.0f} µs latency, from the measured 1-thread step "
            "time and the gradient's size (ring Allreduce; see bench/dataparallel.py; an upper "
            "bound):",
            "",
            table(["network", *[f"P={p}" for p in ranks]], modelled) if modelled else "",
        ]
    )


def sets_section(results: dict) -> str:
    sets = results.get("sets")
    if not sets:
        return ""
    body = []
    for row in sets["rows"]:
        if row["status"] != "ok":
            body.append([row["set"], "", row["status"], "", "", ""])
            continue
        for entry in row["summary"]:
            geomean = entry.get("geomean_vs_torch")
            body.append(
                [
                    row["set"],
                    f"mb{entry['mb']}",
                    label(entry["impl"]),
                    fmt_x(geomean) if geomean is not None else "—",
                    fmt_x(entry["max_vs_torch"]) if "max_vs_torch" in entry else "—",
                    fmt_seconds(entry["network_seconds"]),
                ]
            )
    return "\n".join(
        [
            "## Real-network sets (`python -m bench.conv --set NAME`)",
            "",
            "Every distinct convolution of each network (bench/shapes/), forward + backward, each "
            "answer checked against a float64 reference. ours / PyTorch: the geometric mean of the "
            "layers' time ratios, each weighted by how often the layer occurs, and the worst layer; "
            "network: the sum of count x time. `python -m bench.conv --set NAME --mb 8` gives the "
            "per-layer table (docs/real-networks.md).",
            "",
            table(
                ["set", "batch", "implementation", "ours / PyTorch", "worst layer", "network"], body
            ),
        ]
    )
