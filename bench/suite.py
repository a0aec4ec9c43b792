"""Run the benchmark sections (bench.sections.SECTIONS) and collect everything into one JSON-ready
dict.

    results = run_suite(Options(cases=["small_conv"], backends=["im2col"], repeat=5))

Each section catches failures per row and records them (status "error: ..." / "not installed" /
"skipped: ...") so one broken backend or a missing peer never stops the run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict

from tqdm import tqdm

from . import epoch, peers
from .cases import QUICK_CASES, get_case, resolve_backends, resolve_cases
from .context import Context, Options
from .layers import NUMPY_BACKENDS, warm_up_backend
from .machine import busy_check, describe_machine, source_commit
from .sections import DEFAULT_SECTIONS, FULL_SECTIONS, SECTION_NAMES, SECTIONS
from .status import error_status


def resolve_options(options: Options) -> Options:
    """A copy of `options` with names validated (ValueError naming the option and the known
    names) and the defaults filled in (quick mode's included)."""
    cases = (
        options.cases
        if options.cases is not None
        else (list(QUICK_CASES) if options.quick else None)
    )
    opts = Options(
        **{
            **asdict(options),
            "cases": [c.name for c in resolve_cases(cases)],
            "backends": resolve_backends(options.backends),
            "sections": tuple(
                options.sections
                if options.sections is not None
                else FULL_SECTIONS
                if options.full
                else DEFAULT_SECTIONS
            ),
        }
    )
    if opts.repeat < 1:
        raise ValueError(f"--repeat must be >= 1, got {opts.repeat}")
    if opts.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {opts.rounds}")
    if opts.quick and opts.full:
        raise ValueError("--quick and --full exclude each other")
    if opts.epoch_samples is None and opts.full:
        opts.epoch_samples = epoch.FULL_EPOCH
    if opts.epoch_samples is not None and opts.epoch_samples < 1:
        raise ValueError(f"--epoch-samples must be >= 1, got {opts.epoch_samples}")
    unknown = [s for s in opts.sections if s not in SECTION_NAMES]
    if unknown:
        raise ValueError(
            f"unknown section(s) {', '.join(map(repr, unknown))}; "
            f"known sections: {', '.join(SECTION_NAMES)}"
        )
    get_case(opts.scaling_case), get_case(opts.memory_case)
    if opts.breakdown_backend is not None:
        resolve_backends([opts.breakdown_backend])
    return opts


def usable_backends(backends) -> tuple[list[str], dict[str, str]]:
    """Import and warm up each backend (numba compiles here, untimed); broken ones are reported."""
    ok, broken = [], {}
    for name in backends:
        try:
            warm_up_backend(name)
            ok.append(name)
        except Exception as exc:  # a backend still being written must not stop the run
            broken[name] = error_status(exc)
    return ok, broken


def count_steps(opts: Options, backends) -> int:
    return sum(s.steps(opts, backends) for s in SECTIONS if s.name in opts.sections)


def run_suite(options: Options, name: str | None = None) -> dict:
    """Measure the machine, then every section in opts.sections; returns the results dict."""
    opts = resolve_options(options)
    created = dt.datetime.now(dt.timezone.utc)
    results = {
        "name": name or created.strftime("%Y-%m-%d_%H%M%S"),
        "created": created.isoformat(timespec="seconds"),
        "options": asdict(opts),
        "numpy_backends": list(NUMPY_BACKENDS),
        "commit": source_commit(),
    }
    before = busy_check()
    if before["busy"]:
        tqdm.write(
            f"warning: the machine is busy ({before['busy']}): timings will be slow and noisy; "
            "the report says so at its top"
        )
    tqdm.write("measuring the machine (matmul peak)...")
    results["machine"] = m = describe_machine()
    m["before"] = before
    m["threads"]["peers"] = peers.THREADS
    tqdm.write(
        f"{m['cpu']}, {m['cores']} cores, numpy {m['numpy']} ({m['blas']}), matmul peak "
        f"{m['peak_gflops']['float32']:.0f} GFLOP/s float32 / "
        f"{m['peak_gflops']['float64']:.0f} float64; numba {m['numba']}, torch {m['torch']}, "
        f"tensorflow {m['tensorflow']}"
    )
    results["peers"] = peers.peer_status(opts.peers)
    backends, broken = usable_backends(opts.backends)
    results["backends"] = backends
    results["broken_backends"] = broken
    for b, why in broken.items():
        tqdm.write(f"backend {b} unusable, reported as such: {why}")
    ctx = Context(opts, backends, broken, results["peers"], m["peak_gflops"]["float32"])
    chosen = [s for s in SECTIONS if s.name in opts.sections]
    # the plan, so the bar's "left" (estimated from the steps done so far) can be read against it
    tqdm.write("plan: " + ", ".join(f"{s.name} {s.steps(opts, backends)} steps" for s in chosen))
    with tqdm(total=count_steps(opts, backends), unit="step") as ctx.bar:
        for i, section in enumerate(chosen):
            ctx.bar.set_postfix_str(f"section {i + 1}/{len(chosen)}")
            results[section.key] = section.run(ctx)
    results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    m["after"] = busy_check()
    return results
