"""Write a results dict (bench.suite.run_suite) as reports/<name>/: results.json, report.md and the
PNG plots, and refresh reports/latest.md. bench.sections.SECTIONS decides what goes in, in order.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import markdown
from .outdir import json_default
from .sections import SECTIONS


def render_markdown(results: dict, drawn: set[str] | None = None) -> str:
    """report.md: the machine, then each section's text followed by its images (those in `drawn`,
    the PNG files written beside it; None: no images), then the skipped layer cases."""
    drawn = drawn or set()
    parts = [markdown.machine_header(results)]
    for section in SECTIONS:
        text = section.markdown(results)
        if text:
            images = [f"![{p.alt}]({p.file})" for p in section.plots if p.file in drawn]
            parts.append("\n\n".join([text, *images]))
    parts.append(markdown.skipped_section(results))
    return "\n\n".join(p for p in parts if p) + "\n"


def write_report(results: dict, out_root) -> Path:
    """Write out_root/<name>/{results.json, report.md, *.png} and out_root/latest.md."""
    out_root = Path(out_root)
    out_dir = out_root / results["name"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=json_default))
    drawn = {
        plot.file
        for section in SECTIONS
        for plot in section.plots
        if plot.draw(results, out_dir / plot.file)
    }
    md = render_markdown(results, drawn)
    (out_dir / "report.md").write_text(md)
    # latest.md sits one level up, so its image links point into the run's directory
    latest = md
    for fname in drawn:
        latest = latest.replace(f"]({fname})", f"]({results['name']}/{fname})")
    (out_root / "latest.md").write_text(latest)
    return out_dir
