"""Named benchmark cases: one conv or pool layer call each, with its FLOP count and the backends
that are reasonable for it.

    >>> import numpy as np
    >>> from bench.cases import get_case
    >>> case = get_case("small_conv")
    >>> x, w, b = case.make_inputs(np.float32)
    >>> x.shape, w.shape, b.shape                       # (N, H, W, C_in), (KH, KW, C_in, C_out)
    ((64, 28, 28, 1), (3, 3, 1, 16), (16,))
    >>> case.flops                                      # forward FLOPs (ConvGeometry.flops)
    14450688

Layouts are the kernels' (NHWC activations, HWIO weights). FLOPs come from
`kernels.geometry.ConvGeometry.flops` (the only copy of that arithmetic); pool cases have no FLOP
count (they do comparisons, not multiply-adds), so they get times and speedups but no GFLOP/s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from kernels import BACKEND_NAMES, available_backends
from kernels.geometry import conv_geometry, pool_geometry

TOO_SLOW = "too slow for this case"
# Above this many loop steps naive is skipped: its Python loop would take on the order of a second
# per call, and with backward and repeats dominate the whole run.
NAIVE_MAX_STEPS = 50_000


@dataclass(frozen=True)
class Case:
    """One layer call. kind "conv": x (n, h, w, c_in) * w (k, k, c_in, c_out); kind "pool": max-pool
    of size k (stride k) over x (n, h, w, c_in)."""

    name: str
    kind: str  # "conv" or "pool"
    n: int
    h: int
    w: int
    c_in: int
    c_out: int = 0
    k: int = 3
    stride: int = 1
    padding: int = 0
    description: str = ""

    def make_inputs(self, dtype=np.float32, seed: int = 0):
        """Random inputs: conv -> (x, w, b); pool -> (x, None, None). x: (N, H, W, C_in) dtype."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.n, self.h, self.w, self.c_in)).astype(dtype)
        if self.kind == "pool":
            return x, None, None
        scale = 1.0 / np.sqrt(self.k * self.k * self.c_in)
        w = (rng.standard_normal((self.k, self.k, self.c_in, self.c_out)) * scale).astype(dtype)
        b = rng.standard_normal(self.c_out).astype(dtype)
        return x, w, b

    def geometry(self, dtype=np.float32):
        """The kernels' own ConvGeometry / PoolGeometry for this case (validated)."""
        x, w, b = (
            self.make_inputs(dtype)
            if self.n * self.h * self.w * self.c_in < 2**22
            else _shape_only(self, dtype)
        )
        if self.kind == "pool":
            return pool_geometry(x, self.k, None)
        return conv_geometry(x, w, b, self.stride, self.padding)

    @property
    def flops(self) -> int | None:
        """Forward-pass FLOPs (2 per multiply-add); backward (dx + dw) is twice this. None for pools."""
        return None if self.kind == "pool" else self.geometry().flops

    @property
    def shape_text(self) -> str:
        if self.kind == "pool":
            return f"maxpool{self.k} ({self.n}, {self.h}, {self.w}, {self.c_in})"
        return (
            f"({self.n}, {self.h}, {self.w}, {self.c_in}) -> {self.c_out}, {self.k}x{self.k}, "
            f"stride {self.stride}, pad {self.padding}"
        )

    @property
    def loop_steps(self) -> int:
        """Python-level loop iterations of the naive backend's forward pass: its cost driver, since
        each step is vectorised over batch and channels and so costs about the same in any case."""
        g = self.geometry()
        return g.out_h * g.out_w * g.kh * g.kw if self.kind == "conv" else g.out_h * g.out_w

    @property
    def skip(self) -> dict[str, str]:
        """backend -> why it is not run on this case (printed, never silently dropped)."""
        return {"naive": TOO_SLOW} if self.loop_steps > NAIVE_MAX_STEPS else {}

    def backends(self, requested=None) -> tuple[list[str], dict[str, str]]:
        """Split `requested` (default: all available) into (to run, {skipped backend: reason})."""
        names = list(requested) if requested is not None else available_backends()
        run, skipped = [], {}
        for name in names:
            if name in self.skip:
                skipped[name] = self.skip[name]
            else:
                run.append(name)
        return run, skipped

    def with_batch(self, n: int) -> Case:
        return _replace(self, name=f"{self.name}@n{n}", n=n)

    def with_size(self, hw: int) -> Case:
        return _replace(self, name=f"{self.name}@{hw}px", h=hw, w=hw)


def _replace(case: Case, **changes) -> Case:
    return replace(case, **changes)


def _shape_only(case: Case, dtype):
    # Geometry needs arrays but not their values: broadcast views cost no memory.
    x = np.broadcast_to(np.zeros((), dtype), (case.n, case.h, case.w, case.c_in))
    if case.kind == "pool":
        return x, None, None
    w = np.broadcast_to(np.zeros((), dtype), (case.k, case.k, case.c_in, case.c_out))
    return x, w, np.zeros(case.c_out, dtype)


CASES: dict[str, Case] = {
    c.name: c
    for c in [
        Case(
            "small_conv",
            "conv",
            64,
            28,
            28,
            1,
            16,
            k=3,
            padding=1,
            description="small model conv, batch 64",
        ),
        Case(
            "small_pool", "pool", 64, 28, 28, 16, k=2, description="small model max-pool, batch 64"
        ),
        Case(
            "deep_conv1",
            "conv",
            64,
            28,
            28,
            1,
            32,
            k=3,
            padding=1,
            description="deep model first conv, batch 64",
        ),
        Case(
            "deep_conv2",
            "conv",
            64,
            14,
            14,
            32,
            64,
            k=3,
            padding=1,
            description="deep model second conv, batch 64",
        ),
        Case(
            "mid",
            "conv",
            64,
            14,
            14,
            16,
            32,
            k=3,
            padding=1,
            description="mid-sized conv (16 -> 32 channels at 14x14), batch 64",
        ),
        Case(
            "lab_fit",
            "conv",
            100,
            28,
            28,
            3,
            2,
            k=2,
            padding=0,
            description="the lab's .npy conv-kernel fit (python -m model.fitconv), all 100 samples at once",
        ),
        Case(
            "stride2",
            "conv",
            64,
            28,
            28,
            16,
            32,
            k=3,
            stride=2,
            padding=1,
            description="strided conv",
        ),
        Case(
            "big",
            "conv",
            32,
            32,
            32,
            64,
            64,
            k=3,
            padding=1,
            description="compute-bound conv (2.4 GFLOP forward)",
        ),
    ]
}

# A reduced matrix for --quick and CI smoke runs.
QUICK_CASES = ("small_conv", "small_pool", "lab_fit")


# Case names of earlier reports -> today's, so --compare pairs an old results.json with a new one.
LEGACY_CASE_NAMES = {"seed_conv": "small_conv", "seed_pool": "small_pool", "fit003": "lab_fit"}


def get_case(name: str) -> Case:
    if name not in CASES:
        raise ValueError(f"unknown case {name!r}; known cases: {', '.join(CASES)}")
    return CASES[name]


def resolve_cases(names) -> list[Case]:
    """Case names (None = all) -> Case objects; unknown names raise one ValueError naming them all."""
    if names is None:
        return list(CASES.values())
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(
            f"unknown case(s) {', '.join(map(repr, unknown))}; known cases: {', '.join(CASES)}"
        )
    return [CASES[n] for n in names]


def resolve_backends(names) -> list[str]:
    """Backend names (None = all available) -> names; unknown or unavailable names raise ValueError."""
    available = available_backends()
    if names is None:
        return available
    unknown = [n for n in names if n not in BACKEND_NAMES]
    if unknown:
        raise ValueError(
            f"unknown backend(s) {', '.join(map(repr, unknown))}; "
            f"known backends: {', '.join(BACKEND_NAMES)}"
        )
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(
            f"backend(s) {', '.join(map(repr, missing))} not available on this machine; "
            f"available: {', '.join(available)}"
        )
    return list(names)
