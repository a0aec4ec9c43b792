"""Run the whole benchmark matrix and collect everything into one JSON-ready dict.

    results = run_suite(Options(cases=["seed_conv"], backends=["im2col"], repeat=5))

Each section (layers, epoch, fitconv, memory, numba compile, scaling) catches failures per row and
records them (status "error: ..." / "not installed" / "skipped: ...") so one broken backend or a
missing peer never stops the run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from . import epoch as epoch_mod
from . import memory, peers, scaling
from .cases import QUICK_CASES, get_case, resolve_backends, resolve_cases
from .layers import layer_ops, warm_up_backend
from .machine import describe_machine
from .timing import measure, summarize

NUMPY_BACKENDS = ("naive", "einsum", "im2col")  # pure-numpy: the "best numpy backend" baseline
PASSES = ("forward", "backward")
FULL_EPOCH = 60_000
QUICK_FITCONV_SAMPLES = 20  # --quick times the fit on 20 of its 100 samples and scales up
# Idle time before each backend's layer timings. OpenBLAS's workers (after im2col/einsum GEMMs)
# and TensorFlow's pool busy-wait for a while after their last task; on 2 cores they took the
# second core from the next backend's first samples (numba's seed_conv forward: median 276 us,
# IQR 1.5 ms, against 240 us alone).
COOLDOWN_SECONDS = 0.3
# The BLAS-bound NumPy backends are timed with 1 and with 2 OpenBLAS threads and keep the faster.
# Neither is always right here: a second thread halves the big GEMMs, but on the skinny ones of
# single-channel layers its worker first has to pull the freshly written columns from the other
# core's cache, and whether OpenBLAS splits them that way varies from process to process
# (im2col seed_conv forward: 0.47 ms in one process, 1.4-1.6 ms in another; 0.47-0.53 ms on one
# thread). naive's matmuls are too small for BLAS to thread.
BLAS_TUNED = ("einsum", "im2col")
BLAS_THREAD_CHOICES = (1, 2)


@dataclass
class Options:
    cases: list | None = None  # None: all (or QUICK_CASES with quick)
    backends: list | None = None  # None: all available
    repeat: int = 5
    rounds: int = 1  # passes over the whole layer matrix (see run_layers)
    quick: bool = False
    peers: bool = True
    data_dir: str | None = None
    epoch_samples: int | None = None  # None: 60000 (quick: 2048)
    scaling_case: str = "seed_conv"
    memory_case: str = "deep_conv2"
    sections: tuple = ("layers", "epoch", "fitconv", "memory", "compile", "scaling")

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
            opts.epoch_samples = 2048 if opts.quick else FULL_EPOCH
        if opts.epoch_samples < 1:
            raise ValueError(f"--epoch-samples must be >= 1, got {opts.epoch_samples}")
        get_case(opts.scaling_case), get_case(opts.memory_case)
        return opts


def _error(exc) -> str:
    return f"error: {type(exc).__name__}: {exc}".splitlines()[0][:200]


def usable_backends(backends) -> tuple[list[str], dict[str, str]]:
    """Import and warm up each backend (numba compiles here, untimed); broken ones are reported."""
    ok, broken = [], {}
    for name in backends:
        try:
            warm_up_backend(name)
            ok.append(name)
        except Exception as exc:  # a backend still being written must not stop the run
            broken[name] = _error(exc)
    return ok, broken


def _blas_choices(name) -> tuple:
    """The BLAS thread settings `name` is timed under (None: leave BLAS as configured)."""
    return BLAS_THREAD_CHOICES if name in BLAS_TUNED else (None,)


def _time_passes(ops, threads, repeat, pooled, key) -> None:
    """Time every pass of `ops` under `threads` BLAS threads (None: as configured) and add the
    per-call samples to pooled[key + (threads, pass)] = (samples, calls per sample); an error
    string replaces the entry."""
    with threadpool_limits(limits=threads, user_api="blas"):
        for p in PASSES:
            k = key + (threads, p)
            if isinstance(pooled.get(k), str):
                continue
            try:
                t = measure(ops[p], repeat=repeat)
                pooled[k] = (pooled.get(k, ([], 0))[0] + t.samples, t.number)
            except Exception as exc:
                pooled[k] = _error(exc)


def _pooled_rows(base, name, is_peer, pooled) -> list[dict]:
    """Rows of one (case, backend) from its pooled samples: for a BLAS_TUNED backend, the thread
    setting with the smaller forward + backward median (recorded as "blas_threads")."""
    best = None
    for threads in _blas_choices(name):
        rows = []
        for p in PASSES:
            row = {**base, "backend": name, "pass": p, "peer": is_peer}
            got = pooled.get((base["case"], name, threads, p), "error: not measured")
            if isinstance(got, str):
                row["status"] = got
            else:
                row.update(summarize(*got).to_dict(), status="ok")
            if threads is not None:
                row["blas_threads"] = threads
            rows.append(row)
        total = sum(r["median"] if r["status"] == "ok" else np.inf for r in rows)
        if best is None or total < best[0]:
            best = (total, rows)
    return best[1]


def run_layers(opts: Options, backends, broken, bar) -> list[dict]:
    """Every case x backend (+ peers) x pass: timing rows, then derived ratios (see derive_ratios).

    The whole matrix is timed opts.rounds times, one round after the other, and each figure is the
    median of all its rounds' samples: a few seconds of disturbance on the shared machine then
    spoil one round of a measurement instead of all of it.
    """
    rows, pooled = [], {}
    peer_status = (
        peers.available_peers() if opts.peers else {p: "disabled (--no-peers)" for p in peers.PEERS}
    )
    plan = []  # (case, base, [(name, is_peer)]) to time
    for case in resolve_cases(opts.cases):
        run, skipped = case.backends(backends)
        base = {"case": case.name, "kind": case.kind, "shape": case.shape_text, "flops": case.flops}
        for name, reason in {**skipped, **{b: broken[b] for b in broken}}.items():
            for p in PASSES:
                rows.append(
                    {
                        **base,
                        "backend": name,
                        "pass": p,
                        "status": f"skipped: {reason}"
                        if not reason.startswith("error")
                        else reason,
                    }
                )
            if name in skipped:
                tqdm.write(f"{case.name}: {name} skipped: {reason}")
        timed = []
        for name in run + list(peers.PEERS):
            if name in peers.PEERS and peer_status[name] != "ok":
                rows += [
                    {**base, "backend": name, "pass": p, "status": peer_status[name]}
                    for p in PASSES
                ]
                bar.update(opts.rounds)  # its steps in count_steps, done
            else:
                timed.append((name, name in peers.PEERS))
        plan.append((case, base, timed))
    for rnd in range(opts.rounds):
        for case, _base, timed in plan:
            for name, is_peer in timed:
                bar.set_description(f"layers {case.name} {name} (round {rnd + 1}/{opts.rounds})")
                time.sleep(COOLDOWN_SECONDS)
                key = (case.name, name)
                try:
                    ops = peers.layer_ops(name, case) if is_peer else layer_ops(name, case)
                except Exception as exc:
                    for threads in _blas_choices(name):
                        for p in PASSES:
                            pooled[key + (threads, p)] = _error(exc)
                    bar.update(1)
                    continue
                for threads in _blas_choices(name):
                    _time_passes(ops, threads, opts.repeat, pooled, key)
                bar.update(1)
    for _case, base, timed in plan:
        for name, is_peer in timed:
            rows += _pooled_rows(base, name, is_peer, pooled)
    order = {n: i for i, n in enumerate(list(opts.backends) + list(peers.PEERS))}
    cases = {c: i for i, c in enumerate(opts.cases)}
    return sorted(
        rows,
        key=lambda r: (
            cases[r["case"]],
            PASSES.index(r["pass"]),
            order.get(r["backend"], len(order)),
        ),
    )


def derive_ratios(rows: list[dict], peak_gflops: float | None) -> list[dict]:
    """Add gflops, peak_fraction, speedup_vs_naive, speedup_vs_best_numpy, ratio_torch,
    ratio_tensorflow to each "ok" row, comparing rows of the same (case, pass).

    Backward FLOPs are twice the forward's (dx and dw each cost one forward's multiply-adds).
    speedup_* = baseline time / this time (>1: faster than the baseline);
    ratio_* = this time / the peer's time (>1: slower than the peer).
    """
    ok = [r for r in rows if r.get("status") == "ok"]
    by_key = {}
    for r in ok:
        by_key.setdefault((r["case"], r["pass"]), {})[r["backend"]] = r["median"]
    for r in ok:
        times = by_key[(r["case"], r["pass"])]
        if r.get("flops"):
            flops = r["flops"] * (2 if r["pass"] == "backward" else 1)
            r["gflops"] = flops / r["median"] / 1e9
            r["peak_fraction"] = r["gflops"] / peak_gflops if peak_gflops else None
        r["speedup_vs_naive"] = times["naive"] / r["median"] if "naive" in times else None
        numpy_times = [t for b, t in times.items() if b in NUMPY_BACKENDS]
        r["speedup_vs_best_numpy"] = min(numpy_times) / r["median"] if numpy_times else None
        for p in peers.PEERS:
            r[f"ratio_{p}"] = r["median"] / times[p] if p in times else None
    return rows


def run_epoch(opts: Options, backends, bar) -> dict:
    from model.training import TRAIN_BLAS_THREADS

    x, y, source = epoch_mod.load_training_data(opts.data_dir, opts.epoch_samples)
    scale = FULL_EPOCH / len(x)
    rows = []
    for name in backends + list(peers.PEERS):
        bar.set_description(f"epoch {name}")
        row = {"name": name, "peer": name in peers.PEERS, "samples": len(x)}
        try:
            if name in peers.PEERS:
                if not opts.peers:
                    raise peers.PeerUnavailable("disabled (--no-peers)")
                seconds, extrapolated, batches = peers.epoch_seconds(name, x, y), False, None
            else:
                seconds, extrapolated, batches = epoch_mod.epoch_seconds(name, x, y)
            row.update(
                status="ok",
                seconds=seconds,
                seconds_per_60k=seconds * scale,
                extrapolated=extrapolated or scale != 1.0,
                batches_timed=batches,
            )
        except peers.PeerUnavailable as exc:
            row["status"] = str(exc)
        except Exception as exc:
            row["status"] = _error(exc)
        rows.append(row)
        bar.update(1)
    return {
        "data": source,
        "samples": len(x),
        "batch_size": 64,
        "dtype": "float32",
        "blas_threads": TRAIN_BLAS_THREADS,
        "rows": rows,
    }


def run_fitconv(opts: Options, backends, bar) -> dict:
    inputs, targets = epoch_mod.make_fitconv_data()
    rows = []
    for name in backends + list(peers.PEERS):
        bar.set_description(f"fitconv {name}")
        row = {"name": name, "peer": name in peers.PEERS}
        try:
            if name in peers.PEERS:
                if not opts.peers:
                    raise peers.PeerUnavailable("disabled (--no-peers)")
                row.update(status="ok", seconds=peers.fitconv_epoch_seconds(name, inputs, targets))
            else:
                seconds, extrapolated = epoch_mod.fitconv_epoch_seconds(
                    name,
                    inputs,
                    targets,
                    repeat=1 if opts.quick else 3,
                    samples=QUICK_FITCONV_SAMPLES if opts.quick else None,
                )
                row.update(status="ok", seconds=seconds, extrapolated=extrapolated)
        except peers.PeerUnavailable as exc:
            row["status"] = str(exc)
        except Exception as exc:
            row["status"] = _error(exc)
        rows.append(row)
        bar.update(1)
    return {
        "inputs": list(inputs.shape),
        "targets": list(targets.shape),
        "lr": epoch_mod.FITCONV_LR,
        "batch_size": 1,
        "loss": "mse",
        "rows": rows,
    }


def run_memory(opts: Options, backends, bar) -> dict:
    case = get_case(opts.memory_case)
    rows = []
    for name in backends:
        bar.set_description(f"memory {name}")
        try:
            rows.append(
                {"backend": name, "status": "ok", "peak_bytes": memory.peak_bytes(name, case)}
            )
        except Exception as exc:
            rows.append({"backend": name, "status": _error(exc)})
        bar.update(1)
    return {"case": case.name, "shape": case.shape_text, "note": memory.NUMBA_NOTE, "rows": rows}


_COMPILE_SCRIPT = """
import json, time
t0 = time.perf_counter()
from kernels import get_backend
module = get_backend("numba")
t1 = time.perf_counter()
module.warmup()
t2 = time.perf_counter()
print(json.dumps({"import_seconds": t1 - t0, "compile_seconds": t2 - t1}))
"""


def numba_compile_time(timeout: float = 600) -> dict:
    """Cold compile time of the numba backend, in a fresh process with an empty NUMBA_CACHE_DIR
    (so neither this process's JIT nor the on-disk cache hides it)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        proc = subprocess.run(
            [sys.executable, "-c", _COMPILE_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=os.path.dirname(os.path.dirname(__file__)),
        )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": f"error: {last[:200]}"}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def run_scaling(opts: Options, backends, bar) -> dict:
    base = get_case(opts.scaling_case)
    axes = {
        "batch": scaling.QUICK_BATCH_SIZES if opts.quick else scaling.BATCH_SIZES,
        "size": scaling.QUICK_IMAGE_SIZES if opts.quick else scaling.IMAGE_SIZES,
    }
    out = {"case": base.name, "shape": base.shape_text, "pass": "forward+backward"}
    for axis, sizes in axes.items():
        curves = {}
        for name in backends:
            points, skipped = [], []
            bar.set_description(f"scaling {axis} {name}")
            for size, case in scaling.scaling_variants(base, axis, sizes):
                if name in case.skip:
                    skipped.append(size)
                    tqdm.write(f"scaling {case.name}: {name} skipped: {case.skip[name]}")
                    continue
                try:
                    points.append((size, scaling.time_forward_backward(name, case, opts.repeat)))
                except Exception as exc:
                    curves[name] = {"status": _error(exc)}
                    break
            else:
                curves[name] = {
                    "status": "ok",
                    **scaling.summarize_curve(points),
                    "skipped_sizes": skipped,
                    "skip_reason": base.skip.get(name)
                    or ("too slow for this case" if skipped else None),
                }
            bar.update(1)
        out[axis] = curves
    return out


def count_steps(opts: Options, backends) -> int:
    n_peers = len(peers.PEERS)
    steps = 0
    if "layers" in opts.sections:
        steps += opts.rounds * len(opts.cases) * (len(backends) + n_peers)
    if "epoch" in opts.sections:
        steps += len(backends) + n_peers
    if "fitconv" in opts.sections:
        steps += len(backends) + n_peers
    if "memory" in opts.sections:
        steps += len(backends)
    if "compile" in opts.sections:
        steps += 1
    if "scaling" in opts.sections:
        steps += 2 * len(backends)
    return steps


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
    results["peers"] = (
        peers.available_peers() if opts.peers else {p: "disabled (--no-peers)" for p in peers.PEERS}
    )
    backends, broken = usable_backends(opts.backends)
    results["backends"] = backends
    results["broken_backends"] = broken
    for b, why in broken.items():
        tqdm.write(f"backend {b} unusable, reported as such: {why}")
    with tqdm(total=count_steps(opts, backends), unit="step") as bar:
        if "layers" in opts.sections:
            rows = run_layers(opts, backends, broken, bar)
            results["layers"] = derive_ratios(rows, results["machine"]["peak_gflops"]["float32"])
        if "epoch" in opts.sections:
            results["epoch"] = run_epoch(opts, backends, bar)
        if "fitconv" in opts.sections:
            results["fitconv"] = run_fitconv(opts, backends, bar)
        if "memory" in opts.sections:
            results["memory"] = run_memory(opts, backends, bar)
        if "compile" in opts.sections:
            bar.set_description("numba compile (fresh process)")
            results["numba_compile"] = (
                numba_compile_time()
                if "numba" in backends
                else {"status": "skipped: numba backend not in this run"}
            )
            bar.update(1)
        if "scaling" in opts.sections:
            results["scaling"] = run_scaling(opts, backends, bar)
    results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return results
