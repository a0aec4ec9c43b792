"""What a benchmark run was asked for (Options) and what every section's runner gets (Context).

    opts = resolve_options(Options(cases=["small_conv"], backends=["im2col"]))  # bench.suite
    ctx = Context(opts, backends=["im2col"], peers={"torch": "ok"}, bar=tqdm_bar)

A leaf of bench/: the section modules import it (for their signatures), and it imports none of
them, so bench.suite can import the sections without a circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Options:
    """The run's choices; bench.suite.resolve_options validates them and fills the defaults."""

    cases: list | None = None  # None: all (or QUICK_CASES with quick)
    backends: list | None = None  # None: all available
    repeat: int = 5
    rounds: int = 1  # passes over the whole layer matrix (see bench.layers.run)
    quick: bool = False  # the reduced matrix (CI's smoke test)
    full: bool = False  # every section, whole epochs (the committed reports' runs)
    peers: bool = True
    data_dir: str | None = None  # None: $MNIST_DIR, then the user cache (bench.mnist.find_mnist)
    epoch_samples: int | None = None  # None: rounds of a few batches (--full: 60000)
    scaling_case: str = "small_conv"
    memory_case: str = "deep_conv2"
    breakdown_backend: str | None = None  # None: auto, else numba, else im2col (bench.breakdown)
    sections: tuple | None = None  # None: bench.sections.DEFAULT_SECTIONS (--full: all)


@dataclass
class Context:
    """What every section's runner gets."""

    opts: Options  # resolved
    backends: list[str]  # usable (warmed-up) backends
    broken: dict[str, str] = field(default_factory=dict)  # unusable backend -> why
    peers: dict[str, str] = field(default_factory=dict)  # peer -> "ok" or why it does not run
    peak_gflops: float | None = None  # the float32 matmul peak
    bar: object = None  # tqdm-like: update(n), set_description(text)
