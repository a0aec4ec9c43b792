"""Run the benchmark sections (bench.sections.SECTIONS) and collect everything into one JSON-ready
dict.

    results = run_suite(Options(cases=["small_conv"], backends=["im2col"], repeat=5))

Each section catches failures per row and records them (status "error: ..." / "not installed" /
"skipped: ...") so one broken backend or a missing peer never stops the run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from . import epoch, peers
from .cases import QUICK_CASES, get_case, resolve_backends, resolve_cases
from .layers import NUMPY_BACKENDS, warm_up_backend
from .machine import describe_machine
from .sections import SECTION_NAMES, SECTIONS
from .status import error_status


@dataclass
class Options:
    cases: list | None = None  # None: all (or QUICK_CASES with quick)
    backends: list | None = None  # None: all available
    repeat: int = 5
    rounds: int = 1  # passes over the whole layer matrix (see bench.layers.run)
    quick: bool = False
    peers: bool = True
    data_dir: str | None = None  # None: $MNIST_DIR, then the user cache (bench.epoch.find_mnist)
    epoch_samples: int | None = None  # None: 60000 (quick: 2048)
    scaling_case: str = "small_conv"
    memory_case: str = "deep_conv2"
    breakdown_backend: str | None = None  # None: auto, else numba, else im2col (bench.breakdown)
    sections: tuple = SECTION_NAMES

    def resolved(self) -> Options:
        """Validate names (ValueError with the known names) and fill quick-mode defaults."""
        cases = (
            self.cases if self.cases is not None else (list(QUICK_CASES) if self.quick else None)
        )
        opts = Options(
            **{
                **asdict(self),
                "cases": [c.name for c in resolve_cases(cases)],
                "backends": resolve_backends(self.backends),
            }
        )
        if opts.repeat < 1:
            raise ValueError(f"--repeat must be >= 1, got {opts.repeat}")
        if opts.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {opts.rounds}")
        if opts.epoch_samples is None:
            opts.epoch_samples = epoch.QUICK_EPOCH if opts.quick else epoch.FULL_EPOCH
        if opts.epoch_samples < 1:
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


@dataclass
class Context:
    """What every section's runner gets."""

    opts: Options  # resolved
    backends: list[str]  # usable (warmed-up) backends
    broken: dict[str, str] = field(default_factory=dict)  # unusable backend -> why
    peers: dict[str, str] = field(default_factory=dict)  # peer -> "ok" or why it does not run
    peak_gflops: float | None = None  # the float32 matmul peak
    bar: object = None  # tqdm-like: update(n), set_description(text)


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
    opts = options.resolved()
    created = dt.datetime.now(dt.timezone.utc)
    results = {
        "name": name or created.strftime("%Y-%m-%d_%H%M%S"),
        "created": created.isoformat(timespec="seconds"),
        "options": asdict(opts),
        "numpy_backends": list(NUMPY_BACKENDS),
    }
    tqdm.write("measuring the machine (matmul peak)...")
    results["machine"] = m = describe_machine()
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
    with tqdm(total=count_steps(opts, backends), unit="step") as ctx.bar:
        for section in SECTIONS:
            if section.name in opts.sections:
                results[section.key] = section.run(ctx)
    results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return results
