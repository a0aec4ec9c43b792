"""How our speed against PyTorch moved across the committed runs: one static HTML page (and a PNG
of its plot) from every reports/*/results.json.

    python -m bench.history                          # reports/ -> bench-results/history.html
    python -m bench.history reports/ --out history.html --png history.png

Per layer case (forward + backward) and per training epoch: our best backend's time over
PyTorch's faster configuration, in date and commit order, each run labelled with its machine
(vector extensions, matmul peak), since the machine changes between runs; a table of the latest
run; a link to each run's report. The page needs no server and no network: the plot is inline
SVG. A results.json that cannot be read is skipped with a one-line reason.
"""

from __future__ import annotations

import html
import io
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from model.cli import Parser  # noqa: E402

from .comparison import load_results  # noqa: E402
from .outdir import DEFAULT_OUT, REPO, writable_dir  # noqa: E402
from .peers import PEER_GROUPS, PEERS  # noqa: E402
from .results import forward_backward_medians  # noqa: E402

PROG = "python -m bench.history"


def _epoch_runs(results: dict) -> list[dict]:
    epoch = results.get("epoch") or {}
    return epoch.get("archs") or ([{**epoch, "arch": "small"}] if epoch.get("rows") else [])


def figures(results: dict) -> dict:
    """{figure: {"ours", "backend", "torch", "ratio"}}: per layer case (forward + backward
    medians, "conv <case>") and per epoch ("epoch <arch>"), our fastest backend against
    PyTorch's faster configuration; figures without both are left out."""
    rows = {}

    def add(figure, times: dict):
        ours = {n: t for n, t in times.items() if n not in PEERS and t}
        torch = [times[n] for n in PEER_GROUPS["torch"] if times.get(n)]
        if ours and torch:
            best = min(ours, key=ours.__getitem__)
            rows[figure] = {
                "backend": best,
                "ours": ours[best],
                "torch": min(torch),
                "ratio": ours[best] / min(torch),
            }

    for case, times in forward_backward_medians(results).items():
        add(f"layer {case}", times)
    for run in _epoch_runs(results):
        add(
            f"epoch {run.get('arch', 'small')}",
            {r["name"]: r.get("seconds_per_60k") for r in run["rows"] if r.get("status") == "ok"},
        )
    return rows


def _added_in(path: Path) -> str | None:
    """The short hash of the commit that added `path` (runs older than results' "commit")."""
    try:
        out = subprocess.run(
            [
                "git",
                "-C",
                str(path.parent),
                "log",
                "--diff-filter=A",
                "--format=%h",
                "-1",
                "--",
                path.name,
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def load_runs(root) -> tuple[list[dict], list[str]]:
    """Every root/*/results.json as {"name", "created", "commit", "dir", "isa", "peak",
    "figures"}, in date then commit order, and one line per file skipped (and why)."""
    runs, skipped = [], []
    for path in sorted(Path(root).glob("*/results.json")):
        try:
            results = load_results(path)
        except ValueError as exc:
            skipped.append(f"skipped {path}: {exc}")
            continue
        machine = results.get("machine") or {}
        runs.append(
            {
                "name": results["name"],
                "created": str(results.get("created", "")),
                "commit": results.get("commit") or _added_in(path.parent) or "—",
                "dir": path.parent,
                "isa": ", ".join(machine.get("vector_extensions") or []) or "unrecorded",
                "peak": (machine.get("peak_gflops") or {}).get("float32"),
                "cpu": machine.get("cpu", "?"),
                "figures": figures(results),
            }
        )
        if not runs[-1]["figures"]:
            runs.pop()
            skipped.append(f"skipped {path}: no figure with both our backends and PyTorch")
    runs.sort(key=lambda r: (r["created"], r["commit"]))
    return runs, skipped


def _machine_label(run: dict) -> str:
    peak = f"{run['peak']:.0f} GF/s" if run["peak"] else "peak ?"
    return f"{run['name']}\n{run['commit']}\n{run['isa'].replace(', ', ' ')}\n{peak}"


def draw(runs: list[dict]):
    """The figure: one line per layer case and epoch, ours / PyTorch per run (log scale)."""
    names = sorted({f for run in runs for f in run["figures"]})
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(runs) + 3), 5.5))
    xs = range(len(runs))
    for name in names:
        ys = [run["figures"].get(name, {}).get("ratio") for run in runs]
        points = [(x, y) for x, y in zip(xs, ys) if y is not None]
        style = "--" if name.startswith("epoch") else "-"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=name)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_ylabel("ours / PyTorch (time, < 1 = faster)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([_machine_label(r) for r in runs], fontsize=6)
    ax.set_title("Our best backend against PyTorch's faster layout, per committed run")
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def _peak(run: dict) -> str:
    return "?" if run["peak"] is None else f"{run['peak']:.0f}"


def render_html(runs: list[dict], skipped: list[str], out: Path, svg: str) -> str:
    """The page: the plot (inline SVG), the latest run's table, every run with its machine and
    a link to its report (relative to `out`'s directory)."""
    esc = html.escape
    latest = runs[-1]
    latest_rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{esc(f['backend'])}</td><td>{f['ours']:.4g}</td>"
        f"<td>{f['torch']:.4g}</td><td>{f['ratio']:.2f}</td></tr>"
        for name, f in sorted(latest["figures"].items())
    )
    run_rows = "".join(
        f'<tr><td><a href="{esc(os.path.relpath(r["dir"] / "report.md", out.parent))}">'
        f"{esc(r['name'])}</a></td><td>{esc(r['created'])}</td><td>{esc(r['commit'])}</td>"
        f"<td>{esc(r['cpu'])}</td><td>{esc(r['isa'])}</td>"
        f"<td>{_peak(r)}"
        "</td></tr>"
        for r in runs
    )
    skipped_html = "".join(f"<li>{esc(s)}</li>" for s in skipped)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>convbench history</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:1em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px}}</style>
</head><body>
<h1>convbench history: ours against PyTorch</h1>
<p>Per layer case (forward + backward median) and per training epoch: the time of our fastest
backend over PyTorch's faster configuration (NCHW or channels_last) in the same run; below 1 we
are faster. Runs in date and commit order; each is labelled with its machine (vector extensions,
float32 matmul peak), which changes between runs.</p>
<div id="plot">{svg}</div>
<h2>Latest run: {esc(latest["name"])}</h2>
<table id="latest"><thead><tr><th>figure</th><th>our best</th><th>ours (s)</th>
<th>PyTorch (s)</th><th>ours / PyTorch</th></tr></thead><tbody>{latest_rows}</tbody></table>
<h2>Runs</h2>
<table id="runs"><thead><tr><th>report</th><th>created</th><th>commit</th><th>CPU</th>
<th>vector extensions</th><th>matmul peak (GFLOP/s)</th></tr></thead><tbody>{run_rows}</tbody>
</table>
{f"<h2>Skipped</h2><ul id='skipped'>{skipped_html}</ul>" if skipped else ""}
</body></html>
"""


def write_history(root, out, png=None) -> tuple[list[dict], list[str]]:
    """Write the page to `out` (and the plot to `png` when given); returns load_runs'."""
    runs, skipped = load_runs(root)
    if not runs:
        raise ValueError(f"no readable results.json under {root}")
    out = Path(out)
    fig = draw(runs)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # inline: without the XML prolog and doctype
    if png is not None:
        fig.savefig(png, dpi=90)
    plt.close(fig)
    out.write_text(render_html(runs, skipped, out, svg), encoding="utf-8")
    return runs, skipped


def main(argv=None) -> int:
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument(
        "root",
        nargs="?",
        default=str(REPO / "reports"),
        help="the directory holding one directory per run, each with a results.json "
        "(default: the checkout's reports/)",
    )
    p.add_argument(
        "--out",
        default=str(DEFAULT_OUT / "history.html"),
        help="the HTML page to write (default: %(default)s)",
    )
    p.add_argument(
        "--png",
        default=None,
        help="also write the plot as this PNG, for the README (default: none)",
    )
    args = p.parse_args(argv)
    try:
        writable_dir(Path(args.out).parent, "--out")
        runs, skipped = write_history(args.root, args.out, args.png)
    except (ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for line in skipped:
        print(line)
    print(f"{args.out}: {len(runs)} runs" + (f", plot {args.png}" if args.png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
