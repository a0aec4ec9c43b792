"""Time and check convolution problems given as benchdnn descriptors, or whole network sets.

    python -m bench.conv 'mb8ic64ih56oc64oh56kh3ph1n"resnet50:res2a_branch2b*3"'
    python -m bench.conv --set resnet50 --mb 8 --backends numba,winograd --json out.json
    python -m bench.conv --list

For every problem and implementation (our backends, then PyTorch and TensorFlow at their best
configuration) it times four things (medians of --repeat samples, bench.timing.measure):
    fwd      the forward pass
    bwd_w    backward-weights: dw and db (ours: conv2d_backward(need_dx=False))
    bwd      the full backward: dx, dw and db (ours computes them in one call)
    fwd_bwd  forward then full backward, as one training step runs them
bwd_d, backward-data, is reported as bwd - bwd_w for every implementation alike (our backward
has no dx-only call). GFLOP/s count 2*N*OH*OW*C_out*KH*KW*C_in/g per pass (fwd_bwd: 3 passes);
% peak is against numpy's best large matmul on this machine (bench.machine.matmul_peak).

Every timed problem is also checked against a float64 reference (bench.conv_check) with the
tolerance of the algorithm that ran; a wrong answer fails the run (exit status 1).

Process isolation: every implementation runs in a process of its own (and the matmul peak in
another): OpenBLAS's and OpenMP's idle workers spin after a call, which would slow whatever ran
next in the same process. Our backends run with numpy's BLAS on one thread, as model.train
runs them (they split their GEMMs over the cores themselves); the peers at their best. The processes take turns: per problem, each round takes one sample of
every implementation, in alternating order, so a busy moment of the shared machine falls on
all of them alike; the median over --repeat rounds is reported. Each sample starts with a
fraction of a second of untimed calls (WARM_SECONDS), so it times the passes on busy cores and
after the previous sample's spinning workers have gone idle.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import timing
from .conv_check import cached_reference, inputs, relative_errors, tolerance
from .conv_ops import PASSES, PEERS, Unsupported, backend_ops, tensorflow_ops, torch_ops
from .problems import DescriptorError, Problem, available_sets, load_set, parse
from .timing import measure

# a timed sample loops a pass until it lasts MIN_SAMPLE seconds (at most MAX_NUMBER calls)
MIN_SAMPLE, MAX_NUMBER = 0.02, 1000
_worker: dict = {}  # worker_setup's prepared problem, inside an implementation's process

DEFAULT_BACKENDS = ("im2col", "numba", "winograd")
# Each sample starts with timing.WARM_SECONDS of untimed forward + backward calls of its own
# pass: cores that idled while the other implementations' samples ran are slow at first. The
# same time lets the previous sample's process go idle: OpenBLAS's workers keep spinning for
# about 2**28 cycles after a call, and an implementation sampled right after im2col in another
# process would run with one core.
WARM_SECONDS = timing.WARM_SECONDS
PEER_LABELS = {"torch": "PyTorch", "tensorflow": "TensorFlow"}


# ---------------------------------------------------------------- inside a worker process
def _warm_up(name: str, dtype) -> None:
    """Compile (or load) a JIT backend's kernels before anything is timed."""
    from kernels import get_backend
    from kernels.contract import Warmup

    be = get_backend(name)
    if isinstance(be, Warmup):
        be.warmup(dtypes=[dtype], ops=["conv2d"])


def _hold_blas_as_training_does() -> None:
    """For the rest of this worker process, numpy's BLAS on model.train's thread count (one):
    our backends split their GEMMs over the cores themselves (kernels/gemm.py). With BLAS's own
    threads, its workers spin on both cores for about 2**28 cycles after each call, and auto's
    tuning timed numba and winograd right after im2col at about half their speed (auto chose
    einsum for `--set resnet50 --layers res4a_branch2b`, where winograd alone was 1.7x faster)."""
    from threadpoolctl import threadpool_limits

    from model.training import TRAIN_BLAS_THREADS

    _worker["blas_limit"] = threadpool_limits(limits=TRAIN_BLAS_THREADS, user_api="blas")


def worker_setup(
    impl: str, descriptor: str, dtype_name: str = "float32", reference_dir: str | None = None
) -> dict:
    """In the implementation's own process: prepare one problem (inputs, the implementation's
    passes, PyTorch's faster layout), check its answers against the float64 reference, and keep
    the passes for worker_sample(). Returns the problem's row, without timings."""
    dtype = np.dtype(dtype_name)
    if impl not in PEERS and not _worker.get("warm"):
        _hold_blas_as_training_does()
        _warm_up(impl, dtype)
        _worker["warm"] = True
    _worker.pop("ops", None)  # the previous problem's arrays go before this one's are made
    problem = parse(descriptor)
    row: dict = {"descriptor": descriptor, "impl": impl}
    data = inputs(problem, dtype)
    try:
        if impl == "torch":
            ops = torch_ops(problem, data, lambda fn: measure(fn, repeat=3).median)
        elif impl == "tensorflow":
            ops = tensorflow_ops(problem, data)
        else:
            ops = backend_ops(impl, problem, data)
    except Unsupported as err:
        row["status"] = f"skipped: {err}"
        return row
    ref = cached_reference(problem, data, Path(reference_dir) if reference_dir else None)
    errors = relative_errors(ops.outputs, ref)
    limit = tolerance(ops.algorithm, dtype)
    row.update(
        algorithm=ops.algorithm,
        config=ops.config,
        errors=errors,
        tolerance=limit,
        status="ok" if max(errors.values()) <= limit else "WRONG",
    )
    # one untimed call per pass (the warm-up) sets how many calls make a sample last MIN_SAMPLE
    numbers = {}
    for name in PASSES:
        start = time.perf_counter()
        ops.passes[name]()
        elapsed = time.perf_counter() - start
        numbers[name] = int(min(MAX_NUMBER, max(1, math.ceil(MIN_SAMPLE / max(elapsed, 1e-9)))))
    ops.outputs.clear()
    _worker.update(ops=ops, numbers=numbers)
    return row


def worker_sample() -> dict[str, float]:
    """In the implementation's own process: one sample of each pass of the problem prepared by
    worker_setup(), in seconds per call, after WARM_SECONDS of untimed forward + backward
    calls (a sample measures the passes on busy cores, as a training loop runs them)."""
    ops, numbers = _worker["ops"], _worker["numbers"]
    warm_until = time.perf_counter() + WARM_SECONDS
    while time.perf_counter() < warm_until:
        ops.passes["fwd_bwd"]()
    seconds = {}
    for name in PASSES:
        fn, number = ops.passes[name], numbers[name]
        start = time.perf_counter()
        for _ in range(number):
            fn()
        seconds[name] = (time.perf_counter() - start) / number
    return seconds


def worker_release() -> None:
    """Drop the prepared problem's arrays."""
    _worker.pop("ops", None)


def _progress(items, label: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=f"bench.conv {label}", unit="problem", file=sys.stderr, leave=False)


def _peak(dtype_name: str) -> float:
    from .machine import matmul_peak

    return matmul_peak(np.dtype(dtype_name))


# ---------------------------------------------------------------- the parent process
def _in_fresh_process(fn, *args):
    """fn(*args) in a new (spawned) Python process, which exits afterwards."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def run(
    problems: list[Problem],
    implementations: list[str],
    dtype_name: str = "float32",
    repeat: int = 5,
    progress: bool = True,
) -> dict:
    """Time and check `problems` with each implementation, each in a process of its own.

    Per problem, every implementation's process prepares and checks it (worker_setup), then
    `repeat` rounds each take one sample of every implementation (worker_sample), in alternating
    order: a busy moment of a shared machine, or the spinning workers a previous call left,
    falls on all implementations alike rather than on whichever ran then.

    Returns {"machine", "peak_gflops", "dtype", "problems": [descriptor...], "rows": [row...]},
    one row per problem and implementation, annotated by annotate().
    """
    from .machine import cpu_model, vector_extensions

    peak = _in_fresh_process(_peak, dtype_name)
    context = multiprocessing.get_context("spawn")
    pools = {impl: concurrent.futures.ProcessPoolExecutor(1, mp_context=context) for impl in implementations}  # fmt: skip
    rows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-conv-ref-") as reference_dir:
            for problem in _progress(problems, ", ".join(implementations), progress):
                descriptor = problem.descriptor()
                found = {
                    impl: pools[impl]
                    .submit(worker_setup, impl, descriptor, dtype_name, reference_dir)
                    .result()
                    for impl in implementations
                }
                timed = [impl for impl in implementations if "algorithm" in found[impl]]
                samples: dict[str, list[dict[str, float]]] = {impl: [] for impl in timed}
                for round_ in range(repeat):
                    for impl in timed if round_ % 2 == 0 else timed[::-1]:
                        samples[impl].append(pools[impl].submit(worker_sample).result())
                for impl in implementations:
                    pools[impl].submit(worker_release).result()
                    if impl in samples:
                        _add_timings(found[impl], samples[impl])
                    rows.append(found[impl])
    finally:
        for pool in pools.values():
            pool.shutdown()
    # the best of a measurement before and after: one taken in a busy moment understates it
    peak = max(peak, _in_fresh_process(_peak, dtype_name))
    result = {
        "machine": {"cpu": cpu_model(), "vector_extensions": vector_extensions()},
        "peak_gflops": peak,
        "dtype": dtype_name,
        "problems": [p.descriptor() for p in problems],
        "rows": rows,
    }
    annotate(result)
    return result


def _add_timings(row: dict, samples: list[dict[str, float]]) -> None:
    """row["seconds"] and row["iqr"]: the median and inter-quartile range of each pass's samples,
    and bwd_d = bwd - bwd_w."""
    timings = {name: timing.summarize([s[name] for s in samples]) for name in PASSES}
    row["seconds"] = {name: t.median for name, t in timings.items()}
    row["iqr"] = {name: t.iqr for name, t in timings.items()}
    row["seconds"]["bwd_d"] = max(row["seconds"]["bwd"] - row["seconds"]["bwd_w"], 0.0)


def annotate(result: dict) -> None:
    """Add gflops, pct_peak and vs_torch (fwd_bwd seconds over PyTorch's) to each timed row."""
    torch_seconds = {
        r["descriptor"]: r["seconds"]["fwd_bwd"]
        for r in result["rows"]
        if r["impl"] == "torch" and "seconds" in r
    }
    for row in result["rows"]:
        if "seconds" not in row:
            continue
        flops = parse(row["descriptor"]).flops
        row["gflops"] = 3 * flops / row["seconds"]["fwd_bwd"] / 1e9
        row["pct_peak"] = 100 * row["gflops"] / result["peak_gflops"]
        if row["descriptor"] in torch_seconds:
            row["vs_torch"] = row["seconds"]["fwd_bwd"] / torch_seconds[row["descriptor"]]


def summarize(result: dict) -> list[dict]:
    """Per implementation: the geometric mean of its fwd_bwd time over PyTorch's, each layer
    weighted by its count (the layers both ran), the largest ratio, and the network's total
    fwd_bwd time (sum of count x time over the layers it ran) and how many layers it skipped."""
    summary = []
    for impl in dict.fromkeys(r["impl"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["impl"] == impl]
        timed = [r for r in rows if "seconds" in r]
        counts = [parse(r["descriptor"]).count for r in timed]
        ratios = [(r["vs_torch"], c) for r, c in zip(timed, counts) if "vs_torch" in r]
        entry = {
            "impl": impl,
            "layers": len(rows),
            "skipped": sum(1 for r in rows if r["status"].startswith("skipped")),
            "wrong": sum(1 for r in rows if r["status"] == "WRONG"),
            "network_seconds": sum(c * r["seconds"]["fwd_bwd"] for r, c in zip(timed, counts)),
            "network_fwd_seconds": sum(c * r["seconds"]["fwd"] for r, c in zip(timed, counts)),
        }
        if ratios:
            weight = sum(c for _, c in ratios)
            entry["geomean_vs_torch"] = math.exp(sum(c * math.log(r) for r, c in ratios) / weight)
            entry["max_vs_torch"] = max(r for r, _ in ratios)
        summary.append(entry)
    return summary


def compare_rows(
    set_name: str, batch_sizes=(8, 1), backends=DEFAULT_BACKENDS, repeat: int = 3
) -> list[dict]:
    """bench.compare's section for a network set: for each batch size (8: training, 1: the
    inference latency case) the summary rows of summarize(), each with "set" and "mb" added.
    Raises RuntimeError when any answer is wrong."""
    rows = []
    for mb in batch_sizes:
        result = run(load_set(set_name, mb), [*backends, "torch"], repeat=repeat, progress=False)
        wrong = [r for r in result["rows"] if r["status"] == "WRONG"]
        if wrong:
            raise RuntimeError(f"{set_name} mb{mb}: wrong answers from {_wrong_names(wrong)}")
        rows += [{"set": set_name, "mb": mb, **entry} for entry in summarize(result)]
    return rows


def _wrong_names(rows: list[dict]) -> str:
    return ", ".join(f"{r['impl']} on {r['descriptor']}" for r in rows)


# ---------------------------------------------------------------- output
def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.2f}"


def markdown(result: dict, summary: list[dict]) -> str:
    """The per-layer table and the per-implementation summary, as markdown."""
    machine = result.get("machine", {})
    lines = [
        f"{machine.get('cpu', '?')} ({', '.join(machine.get('vector_extensions', []))}); "
        f"peak: {result['peak_gflops']:.0f} GFLOP/s ({result['dtype']} matmul, numpy); "
        "times in ms, medians; bwd_d = bwd - bwd_w; GFLOP/s and % peak of fwd_bwd; "
        "vs PyTorch = fwd_bwd time / PyTorch's; error = max|out - ref| / max|ref| over y, dx, dw, db",
        "",
        "| layer | x | impl | ran | fwd | bwd_d | bwd_w | bwd | fwd_bwd | GFLOP/s | % peak "
        "| vs PyTorch | error | tolerance | check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        problem = parse(row["descriptor"])
        head = f"| {problem.label} | {problem.count} | {row['impl']} "
        if "seconds" not in row:
            lines.append(head + "| " + " | " * 11 + f"{row['status']} |")
            continue
        s = row["seconds"]
        ran = row["config"] or row["algorithm"]
        lines.append(
            head
            + f"| {ran} | {_ms(s['fwd'])} | {_ms(s['bwd_d'])} | {_ms(s['bwd_w'])} "
            + f"| {_ms(s['bwd'])} | {_ms(s['fwd_bwd'])} | {row['gflops']:.1f} "
            + f"| {row['pct_peak']:.0f}% | "
            + (f"{row['vs_torch']:.2f}x" if "vs_torch" in row else "")
            + f" | {max(row['errors'].values()):.1e} | {row['tolerance']:.0e} | {row['status']} |"
        )
    lines += [
        "",
        "| impl | geomean vs PyTorch (count-weighted) | worst layer | network fwd_bwd ms "
        "| network fwd ms | skipped | wrong |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in summary:
        geo = f"{entry['geomean_vs_torch']:.2f}x" if "geomean_vs_torch" in entry else ""
        worst = f"{entry['max_vs_torch']:.2f}x" if "max_vs_torch" in entry else ""
        lines.append(
            f"| {entry['impl']} | {geo} | {worst} | {_ms(entry['network_seconds'])} "
            f"| {_ms(entry['network_fwd_seconds'])} | {entry['skipped']} | {entry['wrong']} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.conv",
        description="Time and check convolutions given as benchdnn descriptors or network sets "
        "(bench/shapes/*.txt): forward, backward-data, backward-weights, and forward+backward, "
        "per backend and for PyTorch/TensorFlow, each checked against a float64 reference.",
    )
    parser.add_argument(
        "descriptors", nargs="*", help='benchdnn descriptors, e.g. mb8ic64ih56oc64oh56kh3ph1n"x"'
    )
    parser.add_argument("--set", action="append", default=[], help="a network set (repeatable)")
    parser.add_argument("--mb", type=int, help="minibatch for every problem (default: as given)")
    parser.add_argument(
        "--layers",
        help="only the problems whose name or descriptor matches this regex (default: all)",
    )
    parser.add_argument(
        "--backends",
        default=",".join(DEFAULT_BACKENDS),
        help="comma-separated backends to time (default: %(default)s)",
    )
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help="comma-separated peers at their best configuration, or '' for none "
        "(default: %(default)s; one not installed is reported as skipped)",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "float64"), help="(default: float32)"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed samples per pass, median kept (default: 5)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw result as JSON to this file")
    parser.add_argument("--list", action="store_true", help="list the network sets and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (default: shown)")
    return parser


def problems_from_args(args: argparse.Namespace) -> list[Problem]:
    """The descriptors and sets named on the command line, at --mb, filtered by --layers."""
    problems = [parse(d) for d in args.descriptors]
    for name in args.set:
        problems += load_set(name)
    if args.mb is not None:
        if args.mb < 1:
            raise ValueError(f"--mb must be >= 1, got {args.mb}")
        problems = [p.with_mb(args.mb) for p in problems]
    if args.layers:
        pattern = re.compile(args.layers)
        problems = [p for p in problems if pattern.search(p.name) or pattern.search(p.descriptor())]
    return problems


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name in available_sets():
            problems = load_set(name)
            print(f"{name}: {len(problems)} shapes, {sum(p.count for p in problems)} layers")
        return 0
    try:
        problems = problems_from_args(args)
    except (DescriptorError, ValueError) as err:
        print(f"bench.conv: {err}", file=sys.stderr)
        return 2
    if not problems:
        print("bench.conv: no problems: give descriptors, --set NAME, or a wider --layers")
        return 2
    from kernels import available_backends

    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in available_backends()]
    if unknown:
        print(f"bench.conv: --backends: unknown {', '.join(unknown)}", file=sys.stderr)
        return 2
    peers = [p for p in args.peers.split(",") if p]
    if any(p not in PEERS for p in peers):
        print(f"bench.conv: --peers must name some of {', '.join(PEERS)}", file=sys.stderr)
        return 2
    result = run(problems, backends + peers, args.dtype, args.repeat, not args.quiet)
    summary = summarize(result)
    print(markdown(result, summary))
    if args.json:
        args.json.write_text(json.dumps({**result, "summary": summary}, indent=1))
    wrong = [r for r in result["rows"] if r["status"] == "WRONG"]
    if wrong:
        print(f"bench.conv: WRONG answers: {_wrong_names(wrong)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
