"""The first-run section: how long `python -m model.train --backend numba` takes from process start
to its first trained batch, with an empty numba cache (a fresh install) and with a warm one.

    time_to_first_batch("numba", cache_dir=tmp) -> {"status", "first_batch_seconds",
                                                    "compile_seconds", "load_seconds", ...}
    run(ctx)                                    -> the section's results (bench.suite.Context)

The trainer runs one epoch of one batch (--train-limit 64, --test-limit 100, --no-progress); its
lines are read as they arrive. Its "Epoch 1/1" line comes right after the first batch (and a
100-image evaluation), so the time of that line is the time to the first trained batch; the
"compiling ... (first run only) ... N s" line gives the compile time it reports itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .status import OK, error_status

if TYPE_CHECKING:
    from .context import Context, Options

BACKEND = "numba"
GOAL_SECONDS, TARGET_SECONDS = 2.0, 5.0  # the first batch ends within 5 s of launch (goal 2 s)
TIMEOUT_SECONDS = 600
REPO = Path(__file__).resolve().parent.parent
COMPILE_LINE = re.compile(r"compiling .* \(first run only\) \.\.\. ([\d.]+) s")
LOAD_LINE = re.compile(r"Dataset loaded successfully! \(([\d.]+)s")
EPOCH_LINE = re.compile(r"^Epoch 1/1: .*Time: ([\d.]+)s")
SKIPPED_COLD_QUICK = (
    "skipped with --quick: a cold compile takes 15-60 s here (the full run measures it)"
)


def synthetic_mnist(directory: Path) -> Path:
    """Write mnist.npz of random digits (MNIST's shapes, 1000 train and 100 test images) into
    `directory`, for a machine without MNIST: the trainer would otherwise download it."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (1000, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 1000).astype(np.uint8),
        "x_test": rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 100).astype(np.uint8),
    }
    np.savez(directory / "mnist.npz", **arrays)
    return directory


def time_to_first_batch(backend: str = BACKEND, cache_dir=None, data_dir=None) -> dict:
    """Run the trainer on `backend` in a fresh process (NUMBA_CACHE_DIR=cache_dir when given) and
    time its lines from just before the process starts.

    Returns {"status", "first_batch_seconds", "compile_seconds" (None when the backend
    compiles nothing), "load_seconds" (the data, as the trainer reports it), "batch_seconds"
    (the one-batch training pass), "data"}.
    """
    from .mnist import find_mnist

    with tempfile.TemporaryDirectory() as tmp:
        data, _ = find_mnist(data_dir)
        if data is None:
            data_dir, source = synthetic_mnist(Path(tmp)), "random digits (no MNIST here)"
        else:
            source = data.source
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if cache_dir is not None:
            env["NUMBA_CACHE_DIR"] = str(cache_dir)
        argv = [
            sys.executable,
            "-m",
            "model.train",
            "--backend",
            backend,
            "--epochs",
            "1",
            "--train-limit",
            "64",
            "--test-limit",
            "100",
            "--no-progress",
            "--out",
            str(Path(tmp) / "run"),
        ]
        if data_dir is not None:
            argv += ["--data-dir", str(data_dir)]
        result = {"status": OK, "compile_seconds": None, "data": source}
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if match := COMPILE_LINE.search(line):
                result["compile_seconds"] = float(match.group(1))
            elif match := LOAD_LINE.search(line):
                result["load_seconds"] = float(match.group(1))
            elif match := EPOCH_LINE.search(line):
                result["first_batch_seconds"] = time.perf_counter() - start
                result["batch_seconds"] = float(match.group(1))
            if time.perf_counter() - start > TIMEOUT_SECONDS:
                proc.kill()
                break
        proc.wait()
    if proc.returncode != 0 or "first_batch_seconds" not in result:
        last = (lines or ["no output"])[-1].strip()
        return {"status": f"error: trainer exited {proc.returncode}: {last[:160]}"}
    return result


def steps(opts: Options, backends) -> int:
    return 2


def run(ctx: Context) -> dict:
    result = {"backend": BACKEND, "target_seconds": TARGET_SECONDS, "goal_seconds": GOAL_SECONDS}
    if BACKEND not in ctx.backends:
        ctx.bar.update(2)
        return {**result, "status": f"skipped: {BACKEND} backend not in this run"}
    with tempfile.TemporaryDirectory() as cache:
        for state in ("cold", "warm"):
            ctx.bar.set_description(f"first run ({state} numba cache)")
            if state == "cold" and ctx.opts.quick:
                result[state] = {"status": SKIPPED_COLD_QUICK}
            else:
                # quick: warm means this machine's own cache, which the suite's warm-up filled
                cache_dir = None if ctx.opts.quick else cache
                try:
                    result[state] = time_to_first_batch(BACKEND, cache_dir, ctx.opts.data_dir)
                except Exception as exc:
                    result[state] = {"status": error_status(exc)}
                result[state]["cache"] = (
                    "this machine's own" if cache_dir is None else f"{state}, a new directory"
                )
            ctx.bar.update(1)
    return {**result, "status": OK}
