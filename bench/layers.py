"""The layer section: every case x backend (+ peers) x pass, timed, with its derived ratios.

    >>> from bench.cases import get_case
    >>> from bench.layers import layer_ops
    >>> ops = layer_ops("im2col", get_case("small_conv"))
    >>> sorted(ops)                # zero-argument callables, what run(ctx) times
    ['backward', 'forward', 'forward_backward']
    >>> y = ops["forward_backward"]()

run(ctx) (ctx: a bench.suite.Context) times them: one row per (case, backend, pass).

Inputs, and the forward context the backward pass needs, are built in layer_ops, outside the timed
calls. Backward times dx + dw + db for conv (need_dx=True everywhere, like the peers' autograd).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from kernels import get_backend

from . import peers
from .cases import Case, get_case, resolve_cases
from .results import round_medians
from .stats import median_interval
from .status import OK, error_status
from .timing import WARM_SECONDS, measure, rotated, summarize

if TYPE_CHECKING:
    from .context import Context, Options

NUMPY_BACKENDS = ("naive", "einsum", "im2col")  # pure-numpy: the "best numpy backend" baseline
PASSES = ("forward", "backward")
# Idle time before each backend's layer timings. OpenBLAS's workers (after im2col/einsum GEMMs)
# and TensorFlow's pool busy-wait for a while after their last task; on 2 cores they take the
# second core from the next backend's first samples (it shows as a wide IQR on numba's small_conv
# forward when the pause is left out).
COOLDOWN_SECONDS = 0.3
# The BLAS-bound NumPy backends are timed with 1 and with 2 OpenBLAS threads and keep the faster.
# Neither is always right: a second thread halves the big GEMMs, but on the skinny ones of
# single-channel layers its worker first has to pull the freshly written columns from the other
# core's cache, and whether OpenBLAS splits them that way varies from process to process (im2col's
# small_conv forward shows it). naive's matmuls are too small for BLAS to thread.
BLAS_TUNED = ("einsum", "im2col")
BLAS_THREAD_CHOICES = (1, 2)
# Backends that split their own work over the cores (numba's threads, kernels/gemm.py's GEMM
# pieces) are timed as model.train runs them, with numpy's BLAS on one thread: with two, OpenBLAS's
# idle worker spins between calls and takes a core from them (winograd's deep_conv2 forward +
# backward is much slower with two BLAS threads than with one, timed back to back).
SELF_THREADED = ("numba", "winograd", "auto")


# ---- the timed bodies ----------------------------------------------------------------------------


# (case name, backend) -> how the backend ran the case, when it chooses: winograd's path
# ("winograd F(4x4,3x3)" or "fallback:numba") or auto's pick ("auto -> numba"); see path_of
PATHS: dict[tuple[str, str], str] = {}


def path_of(ctx) -> str | None:
    """What a forward's ctx says about how it ran: winograd's path, auto's chosen backend."""
    if hasattr(ctx, "backend") and hasattr(ctx, "inner"):
        inner = path_of(ctx.inner)
        chosen = ctx.backend
        if getattr(ctx, "forward", ""):  # the passes on two backends
            chosen = f"{ctx.forward} forward, {ctx.backend} backward"
        return f"auto -> {chosen}" + (f" ({inner})" if inner else "")
    return getattr(ctx, "path", None)


def layer_ops(backend: str, case: Case, dtype=np.float32) -> dict:
    """backend name, case -> {"forward", "backward", "forward_backward"}: zero-argument callables.

    Records in PATHS how a choosing backend (winograd, auto) ran the case."""
    be = get_backend(backend)
    x, w, b = case.make_inputs(dtype)
    if case.kind == "pool":

        def forward():
            return be.maxpool2d_forward(x, case.k)

        y, ctx = forward()
        dy = np.ones_like(y)

        def backward():
            return be.maxpool2d_backward(dy, ctx)

        def forward_backward():
            y_, ctx_ = be.maxpool2d_forward(x, case.k)
            return be.maxpool2d_backward(dy, ctx_)
    else:

        def forward():
            return be.conv2d_forward(x, w, b, case.stride, case.padding)

        y, ctx = forward()
        dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    if path_of(ctx):
        PATHS[(case.name, backend)] = path_of(ctx)
    if case.kind != "pool":

        def backward():
            return be.conv2d_backward(dy, ctx)

        def forward_backward():
            y_, ctx_ = be.conv2d_forward(x, w, b, case.stride, case.padding)
            return be.conv2d_backward(dy, ctx_)

    return {"forward": forward, "backward": backward, "forward_backward": forward_backward}


def warm_up_backend(backend: str, dtypes=(np.float32,)) -> None:
    """Compile what a JIT backend needs before timing, for `dtypes` (the layer cases are
    float32; a no-op for the numpy backends). Each dtype more is seconds of compiling per
    kernel, so only those that will be timed."""
    module = get_backend(backend)
    if hasattr(module, "warmup"):
        module.warmup(dtypes=list(dtypes))


# ---- the section ---------------------------------------------------------------------------------


def steps(opts: Options, backends) -> int:
    return opts.rounds * len(opts.cases) * (len(backends) + len(peers.PEERS))


def _blas_choices(name) -> tuple:
    """The BLAS thread settings `name` is timed under (None: leave BLAS as configured)."""
    if name in BLAS_TUNED:
        return BLAS_THREAD_CHOICES
    return (1,) if name in SELF_THREADED else (None,)


def _build_threads(name) -> int | None:
    """The BLAS threads while `name`'s ops are built: a SELF_THREADED backend's (1), else as
    configured."""
    return 1 if name in SELF_THREADED else None


def _pool(pooled, k, samples, number, rnd) -> None:
    """Add one round's per-call samples to pooled[k] = (samples, calls per sample, the round of
    each sample)."""
    before, _, rounds = pooled.get(k, ([], 0, []))
    pooled[k] = (before + list(samples), number, rounds + [rnd] * len(samples))


def _time_passes(ops, threads, repeat, pooled, key, rnd: int = 0) -> None:
    """Time every pass of `ops` under `threads` BLAS threads (None: as configured) and add the
    per-call samples of round `rnd` to pooled[key + (threads, pass)] (see _pool); an error
    status replaces the entry."""
    with threadpool_limits(limits=threads, user_api="blas"):
        for p in PASSES:
            k = key + (threads, p)
            if isinstance(pooled.get(k), str):
                continue
            try:
                t = measure(ops[p], repeat=repeat, warm_seconds=WARM_SECONDS)
                _pool(pooled, k, t.samples, t.number, rnd)
            except Exception as exc:
                pooled[k] = error_status(exc)


def time_peer(peer: str, case_name: str, repeat: int) -> dict:
    """In a remote peer's worker process: the case's passes timed as _time_passes times them,
    {(threads, pass): (samples, calls per sample) or an error status}."""
    pooled: dict = {}
    try:
        ops = peers.layer_ops(peer, get_case(case_name))
    except Exception as exc:
        return {(None, p): error_status(exc) for p in PASSES}
    _time_passes(ops, None, repeat, pooled, ())
    return {k: v if isinstance(v, str) else v[:2] for k, v in pooled.items()}


def _time_remote(name, case, repeat, pooled, key, rnd: int = 0) -> None:
    """_time_passes for a remote peer: timed in its worker by the configuration it stands for."""
    peer = peers.get_peer(name)
    try:
        got = peer.call(time_peer, name, case.name, repeat)
    except Exception as exc:
        got = {(None, p): error_status(exc) for p in PASSES}
    for (threads, p), value in got.items():
        k = key + (threads, p)
        if isinstance(value, str) or isinstance(pooled.get(k), str):
            pooled[k] = pooled.get(k) if isinstance(pooled.get(k), str) else value
        else:
            _pool(pooled, k, value[0], value[1], rnd)


def _pooled_rows(base, name, is_peer, pooled) -> list[dict]:
    """Rows of one (case, backend) from its pooled samples: for a BLAS_TUNED backend, the thread
    setting with the smaller forward + backward median (recorded as "blas_threads")."""
    best = None
    for threads in _blas_choices(name):
        rows = []
        for p in PASSES:
            row = {**base, "backend": name, "pass": p, "peer": is_peer}
            if (base["case"], name) in PATHS:
                row["path"] = PATHS[(base["case"], name)]
            got = pooled.get((base["case"], name, threads, p), "error: not measured")
            if isinstance(got, str):
                row["status"] = got
            else:
                samples, number, rounds = got
                row.update(summarize(samples, number).to_dict(), rounds=rounds, status=OK)
            if threads is not None:
                row["blas_threads"] = threads
            rows.append(row)
        total = sum(r["median"] if r["status"] == OK else np.inf for r in rows)
        if best is None or total < best[0]:
            best = (total, rows)
    return best[1]


def _plan(ctx: Context) -> tuple[list[dict], list]:
    """Rows for what will not be timed (skipped cases, broken backends, unavailable peers), and
    the plan of what will: [(case, base row, [(name, is_peer)])]."""
    opts, bar = ctx.opts, ctx.bar
    rows, plan = [], []
    for case in resolve_cases(opts.cases):
        run, skipped = case.backends(ctx.backends)
        base = {"case": case.name, "kind": case.kind, "shape": case.shape_text, "flops": case.flops}
        for name, reason in {**skipped, **ctx.broken}.items():
            status = reason if reason.startswith("error") else f"skipped: {reason}"
            rows += [{**base, "backend": name, "pass": p, "status": status} for p in PASSES]
            if name in skipped:
                tqdm.write(f"{case.name}: {name} skipped: {reason}")
        timed = []
        for name in run + list(peers.PEERS):
            if name in peers.PEERS and ctx.peers[name] != OK:
                rows += [
                    {**base, "backend": name, "pass": p, "status": ctx.peers[name]} for p in PASSES
                ]
                bar.update(opts.rounds)  # its steps in `steps`, done
            else:
                timed.append((name, name in peers.PEERS))
        plan.append((case, base, timed))
    return rows, plan


def run(ctx: Context) -> list[dict]:
    """Every case x backend (+ peers) x pass: timing rows with derived ratios (derive_ratios).

    The whole matrix is timed opts.rounds times, one round after the other (each round starting at
    another backend, see rotated), and each figure is the median of all its rounds' samples: a few
    seconds of disturbance on the shared machine then spoil one round of a measurement instead of
    all of it.
    """
    opts, bar = ctx.opts, ctx.bar
    rows, plan = _plan(ctx)
    pooled = {}
    for rnd in range(opts.rounds):
        for case, _base, timed in plan:
            for name, is_peer in rotated(timed, rnd):
                bar.set_description(f"layers {case.name} {name} (round {rnd + 1}/{opts.rounds})")
                time.sleep(COOLDOWN_SECONDS)
                key = (case.name, name)
                if is_peer and peers.get_peer(name).remote:
                    _time_remote(name, case, opts.repeat, pooled, key, rnd)
                    bar.update(1)
                    continue
                try:
                    # building the ops runs the backend once (auto chooses there): under the
                    # BLAS setting it is timed with
                    with threadpool_limits(limits=_build_threads(name), user_api="blas"):
                        ops = peers.layer_ops(name, case) if is_peer else layer_ops(name, case)
                except Exception as exc:
                    for threads in _blas_choices(name):
                        for p in PASSES:
                            pooled[key + (threads, p)] = error_status(exc)
                    bar.update(1)
                    continue
                for threads in _blas_choices(name):
                    _time_passes(ops, threads, opts.repeat, pooled, key, rnd)
                bar.update(1)
    for _case, base, timed in plan:
        for name, is_peer in timed:
            rows += _pooled_rows(base, name, is_peer, pooled)
    order = {n: i for i, n in enumerate(list(opts.backends) + list(peers.PEERS))}
    cases = {c: i for i, c in enumerate(opts.cases)}
    rows.sort(
        key=lambda r: (
            cases[r["case"]],
            PASSES.index(r["pass"]),
            order.get(r["backend"], len(order)),
        )
    )
    return derive_ratios(rows, ctx.peak_gflops)


def derive_ratios(rows: list[dict], peak_gflops: float | None) -> list[dict]:
    """Add gflops, peak_fraction, speedup_vs_naive, speedup_vs_best_numpy, ratio_torch,
    ratio_tensorflow to each "ok" row, comparing rows of the same (case, pass).

    Backward FLOPs are twice the forward's (dx and dw each cost one forward's multiply-adds).
    speedup_* = baseline time / this time (>1: faster than the baseline);
    ratio_<peer> = this time / that peer configuration's time (>1: slower than it); ratio_torch and
    ratio_tensorflow compare with the framework's fastest configuration (peers.PEER_GROUPS).
    """
    ok = [r for r in rows if r.get("status") == OK]
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
        for framework in peers.PEER_GROUPS:  # a framework counts at its best configuration
            _, best = peers.best_configuration(times, framework)
            r[f"ratio_{framework}"] = r["median"] / best if best else None
    _add_paired_ratios(ok)
    return rows


def _add_paired_ratios(ok: list[dict]) -> None:
    """Where the rows carry their rounds: ratios_torch (per round, this row's median over the
    faster PyTorch configuration's median in the same round), ratio_torch = their median and
    ratio_torch_interval (bench.stats.median_interval), in place. The rounds interleave every
    backend and peer of a case, so a round's ratio is free of the drift between rounds."""
    by_key: dict = {}
    for r in ok:
        by_key.setdefault((r["case"], r["pass"]), {})[r["backend"]] = round_medians(r)
    for r in ok:
        per_backend = by_key[(r["case"], r["pass"])]
        torch_rounds = [per_backend[n] for n in peers.PEER_GROUPS["torch"] if n in per_backend]
        ours = per_backend[r["backend"]]
        ratios = [
            t / min(tr[rnd] for tr in torch_rounds)
            for rnd, t in sorted(ours.items())
            if torch_rounds and all(rnd in tr for tr in torch_rounds)
        ]
        if ratios:
            r["ratios_torch"] = ratios
            r["ratio_torch"] = float(np.median(ratios))
            r["ratio_torch_interval"] = median_interval(ratios)
