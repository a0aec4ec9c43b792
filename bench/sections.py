"""The one table of report sections: what runs, in which order, and how each is reported.

    for section in SECTIONS:
        results[section.key] = section.run(ctx)            # bench.suite.run_suite
        markdown = section.markdown(results)               # bench.report.render_markdown
        for plot in section.plots: plot.draw(results, out_dir / plot.file)

A section's runner and step count live in its own module (bench.layers, bench.epoch, ...), its
Markdown in bench.markdown, its plots in bench.plots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import (
    breakdown,
    dataparallel,
    epoch,
    epoch_memory,
    first_run,
    fitconv,
    inference,
    layers,
    markdown,
    memory,
    numba_compile,
    paired,
    plots,
    scaling,
    sets,
)


@dataclass(frozen=True)
class Plot:
    file: str  # PNG name inside the run's directory
    alt: str  # the image's alt text in the Markdown
    draw: Callable  # (results, path) -> True if it drew


@dataclass(frozen=True)
class Section:
    name: str  # as Options.sections names it
    key: str  # its entry in the results dict
    run: Callable  # (bench.suite.Context) -> its results
    steps: Callable  # (Options, backends) -> progress-bar steps it takes
    markdown: Callable  # (results dict) -> its Markdown, "" when it did not run
    plots: tuple[Plot, ...] = ()


SECTIONS: tuple[Section, ...] = (
    Section(
        "layers",
        "layers",
        layers.run,
        layers.steps,
        markdown.layers_section,
        (
            Plot("speedup.png", "speedup", plots.plot_speedup),
            Plot("roofline.png", "roofline", plots.plot_roofline),
        ),
    ),
    Section(
        "epoch",
        "epoch",
        epoch.run,
        epoch.steps,
        markdown.epoch_section,
        (Plot("epoch.png", "epoch", plots.plot_epoch),),
    ),
    Section("paired", "paired", paired.run, paired.steps, markdown.paired_section),
    Section(
        "breakdown",
        "breakdown",
        breakdown.run,
        breakdown.steps,
        markdown.breakdown_section,
        (Plot("breakdown.png", "training-step breakdown", plots.plot_breakdown),),
    ),
    Section(
        "inference",
        "inference",
        inference.run,
        inference.steps,
        markdown.inference_section,
    ),
    Section("fitconv", "fitconv", fitconv.run, fitconv.steps, markdown.fitconv_section),
    Section("memory", "memory", memory.run, memory.steps, markdown.memory_section),
    Section(
        "epoch_memory",
        "epoch_memory",
        epoch_memory.run,
        epoch_memory.steps,
        markdown.epoch_memory_section,
    ),
    Section(
        "compile",
        "numba_compile",
        numba_compile.run,
        numba_compile.steps,
        markdown.compile_section,
    ),
    Section(
        "first_run",
        "first_run",
        first_run.run,
        first_run.steps,
        markdown.first_run_section,
    ),
    Section(
        "dataparallel",
        "dataparallel",
        dataparallel.run,
        dataparallel.steps,
        markdown.dataparallel_section,
        (Plot("dataparallel.png", "data-parallel speedup", plots.plot_dataparallel),),
    ),
    Section(
        "scaling",
        "scaling",
        scaling.run,
        scaling.steps,
        markdown.scaling_section,
        (Plot("scaling.png", "scaling", plots.plot_scaling),),
    ),
    Section("sets", "sets", sets.run, sets.steps, markdown.sets_section),
)
SECTION_NAMES = tuple(s.name for s in SECTIONS)
# Sections that run only when named (or with `--sections all`): minutes each, not in --full.
OPT_IN_SECTIONS = ("sets",)
FULL_SECTIONS = tuple(name for name in SECTION_NAMES if name not in OPT_IN_SECTIONS)
# Without --full (and --quick, with fewer cases and rounds): the suite's question, every backend
# on every layer case and both epochs against PyTorch, within the run-time budget bench.compare's
# help states; the other sections run with --full or --sections.
DEFAULT_SECTIONS = ("layers", "epoch")
