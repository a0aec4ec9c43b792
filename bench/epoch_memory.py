"""The epoch-memory section: peak resident memory of one training epoch per backend and for
PyTorch, each in a fresh process, against the target of at most twice PyTorch's.

    peak_of_epoch("im2col", "small", samples=60000, data_dir=None)
        -> {"peak_mb": the child's VmHWM, "before_training_mb": its VmRSS then}
    run(ctx)                                  -> the section's results (bench.suite.Context)

Each row is the median of ROUNDS children (QUICK_ROUNDS with --quick), one per round, the order
of backends and peers rotating from round to round; results.json keeps every child's figures
(peak_mb_samples, before_training_mb_samples) and the round it ran in (rounds).

The child imports the backend (or the peer's library), loads the data as the epoch section does,
notes its resident set (the imports and the data), then trains one epoch (bench.epoch.epoch_run,
or the peer's bench.peers.epoch_run; a backend the epoch section extrapolates trains that part
only) and prints its final high-water mark. Our backends' children call
kernels.memory.keep_freed_memory() first, as `python -m model.train` does, since it decides how
much freed memory stays resident.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import peers
from .status import OK, row_status
from .timing import in_rounds, pooled

if TYPE_CHECKING:
    from .context import Context, Options

# images trained per architecture: the whole epoch for small; deep reaches its peak in its first
# batches and a whole epoch per backend would take minutes, so it trains part of one. --quick
# measures the small model only: each child costs seconds of imports.
FULL_SAMPLES = {"small": 60_000, "deep": 6400}
QUICK_SAMPLES = {"small": 640}
# each row is the median of this many children, run in rounds whose order rotates (so a drift in
# the machine's free memory or page cache reaches every backend alike); the spread of a peak
# resident set across fresh processes is what the noise mark judges
ROUNDS, QUICK_ROUNDS = 3, 2
TORCH_CONFIGS = ("torch", "torch_cl")
TARGET_RATIO = 2.0  # issue 14: no backend may need more than twice PyTorch's memory
TIMEOUT_SECONDS = 900
REPO = Path(__file__).resolve().parent.parent

_CHILD = "import sys; from bench.epoch_memory import child_main; child_main(sys.argv[1])"


def status_mb(field: str) -> float | None:
    """A memory figure of this process from /proc/self/status ("VmHWM", "VmRSS") in MB, or None
    where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def high_water_mb() -> float:
    """This process's peak resident set so far, in MB (VmHWM; ru_maxrss where /proc is absent)."""
    peak = status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(spec_json: str) -> None:
    """In the fresh process: import the backend or peer, load the data, train one epoch of
    spec's arch, print {"before_training_mb": resident then (VmRSS), "peak_mb": VmHWM} as JSON."""
    from model.optim import DEFAULT_LR

    from .epoch import ARCHS as OPTIMIZERS
    from .epoch import BATCH_SIZE, epoch_run
    from .mnist import load_training_data

    spec = json.loads(spec_json)
    name, arch = spec["name"], spec["arch"]
    if name in peers.PEERS:
        peers.start_worker(name)  # this fresh process is the peer's: no worker of its own
    else:
        from kernels import get_backend
        from kernels.memory import keep_freed_memory

        keep_freed_memory()
        get_backend(name)
    x, y, _ = load_training_data(spec["data_dir"], spec["samples"])
    x_test, y_test = x[:BATCH_SIZE], y[:BATCH_SIZE]  # the epoch alone, not a test pass
    before = status_mb("VmRSS")
    optimizer = OPTIMIZERS[arch]
    lr = DEFAULT_LR[optimizer]
    if name in peers.PEERS:
        peers.epoch_run(name, arch, x, y, x_test, y_test, optimizer, lr, BATCH_SIZE)
    else:
        epoch_run(name, arch, x, y, x_test, y_test, optimizer, lr)
    print(json.dumps({"before_training_mb": before, "peak_mb": high_water_mb()}))


def peak_of_epoch(name: str, arch: str, samples: int, data_dir) -> dict:
    """child_main's figures for backend or peer `name`, run in a fresh interpreter."""
    spec = {"name": name, "arch": arch, "samples": samples, "data_dir": data_dir}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"child failed: {last[:160]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_ratios(rows: list[dict]) -> None:
    """Each ok row's peak over PyTorch's lower peak (either layout), and pass/fail against
    TARGET_RATIO, in place."""
    torch_peaks = [r["peak_mb"] for r in rows if r["name"] in TORCH_CONFIGS and r["status"] == OK]
    reference = min(torch_peaks) if torch_peaks else None
    for r in rows:
        if r["status"] != OK or reference is None:
            continue
        r["ratio_torch"] = r["peak_mb"] / reference
        if not r["peer"]:
            r["target"] = "pass" if r["ratio_torch"] <= TARGET_RATIO else "FAIL"


def plan(opts: Options) -> tuple[int, dict]:
    """(rounds, {arch: training images}) the options ask for."""
    return (QUICK_ROUNDS, QUICK_SAMPLES) if opts.quick else (ROUNDS, FULL_SAMPLES)


def steps(opts: Options, backends) -> int:
    n_rounds, archs = plan(opts)
    return n_rounds * len(archs) * (len(backends) + len(TORCH_CONFIGS))


def summarize_row(row: dict, got) -> None:
    """Fill an ok row from its rounds' child_main figures [(round, {"peak_mb",
    "before_training_mb"})]: each figure the median of the rounds, peak_mb with its IQR, noise
    mark, samples and rounds (bench.timing.pooled), before_training_mb with its samples."""
    rounds = [r for r, _ in got]
    peak = pooled([g["peak_mb"] for _, g in got], rounds)
    before = [g["before_training_mb"] for _, g in got]
    row.update(
        peak_mb=peak["median"],
        peak_mb_samples=peak["samples"],
        iqr=peak["iqr"],
        noisy=peak["noisy"],
        rounds=rounds,
    )
    if all(b is not None for b in before):  # None where /proc is absent
        row.update(before_training_mb=float(np.median(before)), before_training_mb_samples=before)
    else:
        row["before_training_mb"] = None


def run(ctx: Context) -> dict:
    opts = ctx.opts
    n_rounds, samples = plan(opts)
    names = ctx.backends + list(TORCH_CONFIGS)
    archs = []
    for arch in samples:

        def measure_one(name, _rnd, arch=arch):
            if name in peers.PEERS:
                peers.require(ctx.peers, name)
            return peak_of_epoch(name, arch, samples[arch], opts.data_dir)

        got = in_rounds(names, n_rounds, measure_one, ctx.bar, f"epoch memory {arch}")
        rows: list[dict] = []
        for name in names:
            row = {"name": name, "peer": name in peers.PEERS, "samples": samples[arch]}
            with row_status(row, rows):
                if isinstance(got[name], BaseException):
                    raise got[name]
                summarize_row(row, got[name])
        add_ratios(rows)
        archs.append({"arch": arch, "samples": samples[arch], "rounds": n_rounds, "rows": rows})
    missing = [arch for arch in FULL_SAMPLES if arch not in samples]
    skipped = f"skipped with --quick: the {', '.join(missing)} model" if missing else None
    return {"target_ratio": TARGET_RATIO, "archs": archs, "skipped": skipped}
