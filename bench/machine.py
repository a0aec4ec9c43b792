"""Describe the machine a benchmark ran on, and measure its matmul peak (the roofline ceiling).

>>> import numpy as np
>>> from bench.machine import describe_machine, matmul_peak
>>> info = describe_machine(measure_peak=False)   # cpu, cores, numpy/BLAS, numba/torch/tf
>>> "cpu" in info and "vector_extensions" in info
True
>>> peak = matmul_peak(np.float32, size=256, repeat=1)   # GFLOP/s of the best sample
>>> peak > 0
True
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
import platform
import time

import numpy as np


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> str:
    """The BLAS numpy is linked against, from np.show_config's structured output."""
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older numpy: parse the printed text instead
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            np.show_config()
        lines = [l.strip() for l in buf.getvalue().splitlines() if "blas" in l.lower()]
        return lines[0] if lines else "unknown"


def package_version(name: str) -> str:
    """Installed version of a distribution, or "not installed" (without importing it)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def matmul_peak(dtype=np.float32, size: int = 2048, repeat: int = 5) -> float:
    """GFLOP/s of the fastest of `repeat` (size, size) @ (size, size) products in `dtype`.

    The best sample, not the median: this is the ceiling the BLAS can reach on this machine.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    out = np.empty((size, size), dtype=dtype)
    np.matmul(a, b, out=out)  # warm-up: BLAS thread pool start, page faults
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def vector_extensions() -> list[str]:
    """The SIMD extensions numba's code and the peers' libraries pick up (AVX2, AVX-512, ...),
    from /proc/cpuinfo's flags; the development machines differ in them from day to day."""
    from kernels.auto import machine_fingerprint

    return machine_fingerprint()["isa"]


# A machine is called busy before a run when its 1-minute load average exceeds this fraction of
# its cores, or other processes used this much of a core while we sampled /proc/stat.
BUSY_LOAD_PER_CORE = 0.5
BUSY_OTHER_CORES = 0.25


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _own_jiffies() -> int:
    t = os.times()
    return round((t.user + t.system) * os.sysconf("SC_CLK_TCK"))


def busy_check(seconds: float = 0.5) -> dict:
    """The load before a run: {"load_average" (1, 5, 15 min), "other_cores" (cores other
    processes kept busy over `seconds`, None off Linux), "busy" (None, or why the machine is too
    busy for trustworthy timings)}."""
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    cores = os.cpu_count() or 1
    first, own = _cpu_jiffies(), _own_jiffies()
    time.sleep(seconds)
    last = _cpu_jiffies()
    other = None
    if first and last and last[1] > first[1]:
        busy = (last[0] - first[0]) - (_own_jiffies() - own)
        other = max(0.0, cores * busy / (last[1] - first[1]))
    reasons = []
    if load and load[0] > BUSY_LOAD_PER_CORE * cores:
        reasons.append(f"load average {load[0]:.2f} on {cores} cores")
    if other is not None and other >= BUSY_OTHER_CORES:
        reasons.append(f"other processes kept {other:.2f} cores busy")
    return {"load_average": load, "other_cores": other, "busy": "; ".join(reasons) or None}


def thread_settings() -> dict:
    """The thread counts the timings ran with: BLAS pools (threadpoolctl), numba's threads,
    the peers' intra-op threads, and the *_NUM_THREADS environment."""
    from threadpoolctl import threadpool_info

    info = {
        "blas": [
            f"{p.get('internal_api')} {p.get('num_threads')}"
            for p in threadpool_info()
            if p.get("user_api") == "blas"
        ],
        "env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            if k in os.environ
        },
    }
    try:
        import numba

        info["numba"] = numba.config.NUMBA_NUM_THREADS
    except ImportError:
        info["numba"] = None
    return info


def source_commit() -> str | None:
    """The checkout's commit (short hash, "+dirty" with uncommitted changes to tracked files),
    None outside a git checkout: which code a run measured."""
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", repo, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def describe_machine(measure_peak: bool = True) -> dict:
    """Everything a reader needs to interpret the timings, as a JSON-ready dict."""
    info = {
        "cpu": cpu_model(),
        "vector_extensions": vector_extensions(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_info(),
        "numba": package_version("numba"),
        "torch": package_version("torch"),
        "tensorflow": package_version("tensorflow-cpu")
        if package_version("tensorflow") == "not installed"
        else package_version("tensorflow"),
        "thread_env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            if k in os.environ
        },
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "threads": thread_settings(),
    }
    if measure_peak:
        info["peak_gflops"] = {
            "float32": matmul_peak(np.float32),
            "float64": matmul_peak(np.float64),
        }
    return info
