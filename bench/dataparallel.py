"""The data-parallel section: training throughput of one process against MPI ranks on this
machine (measured), and the speedup a cluster of P ranks would get (modelled).

Measured, for the `small` and `deep` networks (batch 64, float32, the numba backend), each in a
fresh process per round (ROUNDS rounds, the configurations' order rotating from round to round;
every round's timed steps pooled into one median with its IQR): images/s of training steps for
1 process x 2 threads, 1 process x 1 thread, and 2 processes x 1 thread (`mpiexec -n 2`, model/distributed.py: one Allreduce of the flat gradient
buffer per step, synchronised batch norm); the parallel efficiency of 2 ranks against the
1-process run with the same cores; and the time of one Allreduce of the gradient buffer between
the two local ranks.

Modelled: P ranks, one core each, connected by a network of `bandwidth` and `latency`, each
computing its 64/P share of the batch in t1/P (t1 = the measured 1-thread step) and then
summing the gradient with a ring Allreduce, 2 (P-1)/P x bytes / bandwidth + 2 (P-1) x latency:

    speedup(P) = t1 / (t1 / P + allreduce(P))

The model leaves out what shrinks with P on a real cluster (smaller GEMMs run less efficiently)
and what grows (batch norm's small Allreduces, stragglers), so it is an upper bound.

The worker (python -m bench.dataparallel ...) is this module's main(): it prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

from .status import error_status
from .timing import in_rounds, pooled

if TYPE_CHECKING:
    from .context import Context, Options

ARCHS = ("small", "deep")
BATCH = 64
BACKEND = "numba"
RANKS_MODELLED = (1, 2, 4, 8, 16, 32, 64)
BANDWIDTH_GBIT = 10.0  # the modelled network: 10 Gbit/s Ethernet
LATENCY_S = 20e-6  # per message, a TCP/IP figure
# each configuration runs once per round, in an order rotated from round to round, so the
# machine's drift reaches all three alike; its step time pools every round's steps
ROUNDS, QUICK_ROUNDS = 3, 2
STEPS, QUICK_STEPS = 14, 3  # timed steps per worker
CONFIGS = (  # (name, processes, threads per process)
    ("1 process x 2 threads", 1, 2),
    ("1 process x 1 thread", 1, 1),
    ("2 processes x 1 thread", 2, 1),
)


def mpi_status() -> str | None:
    """None when mpiexec and mpi4py are there, else why this section is skipped."""
    if importlib.util.find_spec("mpi4py") is None or shutil.which("mpiexec") is None:
        return 'skipped: needs mpi4py and mpiexec (pip install -e ".[mpi]")'
    return None


def steps(opts: Options, backends) -> int:
    return plan(opts)[0] * len(ARCHS) * len(CONFIGS)


def plan(opts: Options) -> tuple[int, int]:
    """(rounds, timed steps per worker) the options ask for."""
    return (QUICK_ROUNDS, QUICK_STEPS) if opts.quick else (ROUNDS, STEPS)


def _worker(arch: str, steps_: int, processes: int, threads: int) -> dict:
    command = [sys.executable, "-m", "bench.dataparallel", "--arch", arch, "--steps", str(steps_)]
    if processes > 1:
        command = ["mpiexec", "-n", str(processes), *command, "--distributed"]
    # numba's thread count is the configuration's; OMP_NUM_THREADS is left alone, since numba's
    # OpenMP layer also obeys it (set to 1 it held a "1 x 2 threads" worker to one thread)
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": "1"}
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def pool_workers(got: list[tuple[int, dict]]) -> dict:
    """One configuration's row from its rounds' worker outputs [(round, main's dict)]: the step
    time is the median of every round's step samples (with iqr, noisy, step_samples, rounds: one
    entry per step), images/s follows from it, the Allreduce time is the median of the rounds'."""
    samples = [t for _, w in got for t in w["step_samples"]]
    rounds = [rnd for rnd, w in got for _ in w["step_samples"]]
    step = pooled(samples, rounds)
    allreduce = [w["allreduce_seconds"] for _, w in got if w["allreduce_seconds"] is not None]
    return {
        "images_per_s": BATCH / step["median"],
        "step_seconds": step["median"],
        "iqr": step["iqr"],
        "noisy": step["noisy"],
        "step_samples": step["samples"],
        "rounds": step["rounds"],
        "grad_bytes": got[0][1]["grad_bytes"],
        "allreduce_seconds": float(np.median(allreduce)) if allreduce else None,
    }


def modelled_speedup(step_seconds: float, grad_bytes: int, ranks: int) -> float:
    """speedup(P) of the module docstring's model."""
    if ranks == 1:
        return 1.0
    bandwidth = BANDWIDTH_GBIT * 1e9 / 8
    allreduce = 2 * (ranks - 1) / ranks * grad_bytes / bandwidth + 2 * (ranks - 1) * LATENCY_S
    return step_seconds / (step_seconds / ranks + allreduce)


def run(ctx: Context) -> dict:
    skipped = mpi_status()
    if skipped:
        ctx.bar.update(steps(ctx.opts, ctx.backends))
        return {"status": skipped}
    n_rounds, n_steps = plan(ctx.opts)
    out: dict = {
        "status": "ok",
        "backend": BACKEND,
        "batch": BATCH,
        "steps": n_steps,
        "rounds": n_rounds,
        "archs": {},
    }
    configs = {name: (processes, threads) for name, processes, threads in CONFIGS}
    for arch in ARCHS:

        def measure_one(name, _rnd, arch=arch):
            return _worker(arch, n_steps, *configs[name])

        got = in_rounds(list(configs), n_rounds, measure_one, ctx.bar, f"data parallel {arch}:")
        rows = []
        for name in configs:
            if isinstance(got[name], BaseException):  # one failed configuration: its row says why
                rows.append({"config": name, "status": error_status(got[name])})
            else:
                rows.append({"config": name, "status": "ok", **pool_workers(got[name])})
        result = {"rows": rows}
        ok = {r["config"]: r for r in rows if r["status"] == "ok"}
        two, one_two = ok.get(CONFIGS[2][0]), ok.get(CONFIGS[0][0])
        if two and one_two:
            result["efficiency"] = two["images_per_s"] / one_two["images_per_s"]
        one = ok.get(CONFIGS[1][0])
        if one:
            result["modelled"] = {
                str(p): modelled_speedup(one["step_seconds"], one["grad_bytes"], p)
                for p in RANKS_MODELLED
            }
        out["archs"][arch] = result
    out["model"] = {"bandwidth_gbit": BANDWIDTH_GBIT, "latency_s": LATENCY_S}
    return out


def main(argv=None) -> int:
    """The worker: time training steps (rank 0 prints {"images_per_s", "step_seconds" (the
    median step), "step_samples" (every timed step's seconds), "grad_bytes", "allreduce_seconds"}
    as one JSON line)."""
    p = argparse.ArgumentParser(prog="python -m bench.dataparallel")
    p.add_argument("--arch", choices=ARCHS, required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--distributed", action="store_true")
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from kernels import get_backend
    from kernels.memory import keep_freed_memory
    from model.network import build_network
    from model.optim import Adam

    # as model.train runs: a step's multi-megabyte arrays reused, not page-faulted afresh (the
    # `deep` 1 x 2 threads step is markedly slower without)
    keep_freed_memory()
    comm = None
    if args.distributed:
        from model.distributed import connect

        comm = connect()
    get_backend(BACKEND).warmup([np.float32])
    net = build_network(args.arch, backend=BACKEND, seed=0)
    if comm is not None:
        comm.attach(net)
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    optimizer = Adam(lr=1e-3)
    times = []
    with threadpool_limits(limits=1, user_api="blas"):
        for i in range(args.steps + 2):  # two untimed steps first
            if comm is not None:
                comm.comm.Barrier()
            start = time.perf_counter()
            net.train_step(x, y, optimizer, comm=comm)
            if i >= 2:
                times.append(time.perf_counter() - start)
    step = float(np.median(times))
    grad_bytes = sum(layer.params[name].nbytes for _, layer, name in net.parameters())
    allreduce = None
    if comm is not None:
        flat = np.zeros(grad_bytes // 4, dtype=np.float32)
        samples = []
        for _ in range(20):
            comm.comm.Barrier()
            start = time.perf_counter()
            comm.comm.Allreduce(comm._mpi.IN_PLACE, flat, op=comm._mpi.SUM)
            samples.append(time.perf_counter() - start)
        allreduce = float(np.median(samples))
    if comm is None or comm.is_root:
        print(
            json.dumps(
                {
                    "images_per_s": BATCH / step,
                    "step_seconds": step,
                    "step_samples": times,
                    "grad_bytes": grad_bytes,
                    "allreduce_seconds": allreduce,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
