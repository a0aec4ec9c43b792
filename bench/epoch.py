"""The epoch section: one training epoch of each architecture per backend and peer, batch 64,
and the test accuracy after it.

    epoch_run(backend, arch, x, y, x_test, y_test, optimizer, lr)
                                     -> {"seconds", "extrapolated", "batches_timed", "test_acc"}
    run(ctx)                         -> the section's results (bench.suite.Context)

The data comes from bench.mnist.load_training_data: MNIST as `python -m model.train` finds it, or
random data of its shape, and the report and the console say which and why.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import threadpool_limits

from kernels import get_backend

from . import peers
from .mnist import load_training_data
from .stats import is_noisy, median_interval
from .status import OK, Unmeasured, row_status
from .timing import rotated

if TYPE_CHECKING:
    from .context import Context, Options

# arch -> its optimizer, at model.optim.DEFAULT_LR: small trains as `python -m model.train` does
# by default; deep with Adam, as the README's deep run (without its augmentation, which the peers
# would not share; the breakdown section times it)
ARCHS = {"small": "momentum", "deep": "adam"}
BATCH_SIZE = 64
FULL_EPOCH = 60_000
FULL_TEST, QUICK_TEST = 10_000, 1000  # test images for the accuracy after the epoch
MOMENTUM = 0.9
# A full naive epoch would take minutes (its convolution is Python loops), so naive is timed on
# this many batches and extrapolated (and marked so in the report).
EXTRAPOLATE_BACKENDS = {"naive": 8}
# A deep epoch takes 1-3 minutes per backend here: the best backend and PyTorch (both layouts)
# train the whole epoch and report its accuracy; the others are timed on this many batches and
# extrapolated, to keep the full run's length reasonable.
DEEP_FULL_EPOCH = ("auto", "torch", "torch_cl")
DEEP_SAMPLE_BATCHES = 100
QUICK_DEEP_SAMPLES = 512  # with --quick the deep model trains on this part of the epoch's images
# Without --full (or --epoch-samples) every backend and peer trains this many batches per round,
# a fresh network each time, in ROUNDS rounds whose order rotates (bench.timing.rotated), and the
# epoch is scaled from them: the ratio to PyTorch is then taken within each round, as the layer
# cases' are, instead of between runs minutes apart on a machine whose speed drifts.
ROUNDS, QUICK_ROUNDS = 5, 2
ROUND_BATCHES = {"small": 40, "deep": 6}
QUICK_ROUND_BATCHES = {"small": 10, "deep": 2}
ROUND_TEST = 64  # the runs end with an evaluation; a token one, not reported for partial epochs


def batch_limit(name: str, arch: str) -> int | None:
    """Batches to time before extrapolating, for backend or peer `name` on `arch` (None: all)."""
    if name in EXTRAPOLATE_BACKENDS:
        return EXTRAPOLATE_BACKENDS[name]
    if arch == "deep" and name not in DEEP_FULL_EPOCH:
        return DEEP_SAMPLE_BATCHES
    return None


def epoch_run(
    backend: str,
    arch: str,
    x,
    y_onehot,
    x_test,
    y_test,
    optimizer: str,
    lr: float,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
) -> dict:
    """One epoch over x: (N, 28, 28, 1) float32 of `arch` on `backend`, then the accuracy on
    x_test (M, 28, 28, 1), y_test (M, 10) one-hot.

    Returns {"seconds" (for all of x), "extrapolated", "batches_timed", "test_acc" (None when
    extrapolated: the network saw only part of the epoch)}. Backends with a batch_limit time that
    many batches and scale up.
    """
    from model.network import build_network
    from model.optim import make_optimizer
    from model.training import TRAIN_BLAS_THREADS

    module = get_backend(backend)
    net = build_network(arch, backend=backend, dtype=np.float32, seed=seed)
    opt = make_optimizer(optimizer, lr=lr)
    order = np.random.default_rng(seed).permutation(len(x))
    starts = list(range(0, len(x), batch_size))
    limit = batch_limit(backend, arch)
    timed = starts if limit is None or limit >= len(starts) else starts[:limit]
    with threadpool_limits(limits=TRAIN_BLAS_THREADS, user_api="blas"):  # as model.train runs
        # warm up under the same BLAS limit as the timed steps, so no BLAS call of the warmup
        # (auto's warmup runs winograd's batched GEMMs) starts OpenBLAS workers the steps never use
        if hasattr(module, "warmup"):
            module.warmup()
        net.train_step(x[order[:batch_size]], y_onehot[order[:batch_size]], opt)  # warm-up
        last = len(x) % batch_size
        if last and len(timed) == len(starts):
            # the epoch's last, smaller batch has shapes of its own, which auto would time its
            # candidates on inside the timed epoch (once per machine; then its disk cache knows)
            net.train_step(x[order[:last]], y_onehot[order[:last]], opt)
        start = time.perf_counter()
        for i in timed:
            idx = order[i : i + batch_size]
            net.train_step(x[idx], y_onehot[idx], opt)
        seconds = time.perf_counter() - start
    if len(timed) < len(starts):
        return {
            "seconds": seconds * len(starts) / len(timed),
            "extrapolated": True,
            "batches_timed": len(timed),
            "test_acc": None,
        }
    _, test_acc = net.evaluate(x_test, y_test)
    return {
        "seconds": seconds,
        "extrapolated": False,
        "batches_timed": len(timed),
        "test_acc": test_acc,
    }


def peer_epoch_run(
    peer: str, arch: str, x, y_onehot, x_test, y_test, optimizer: str, lr: float
) -> dict:
    """epoch_run's dict for a peer (bench.peers.epoch_run); a batch_limit trains on that many
    batches' images and scales up."""
    limit = batch_limit(peer, arch)
    if limit is not None and limit * BATCH_SIZE < len(x):
        part = peers.epoch_run(
            peer,
            arch,
            x[: limit * BATCH_SIZE],
            y_onehot[: limit * BATCH_SIZE],
            x_test,
            y_test,
            optimizer,
            lr,
            BATCH_SIZE,
        )
        return {
            "seconds": part["seconds"] * len(x) / (limit * BATCH_SIZE),
            "extrapolated": True,
            "batches_timed": limit,
            "test_acc": None,
        }
    run = peers.epoch_run(peer, arch, x, y_onehot, x_test, y_test, optimizer, lr, BATCH_SIZE)
    return {**run, "extrapolated": False, "batches_timed": None}


def plan(opts: Options) -> tuple[int, dict | None]:
    """(rounds, {arch: batches per round} or None for whole epochs) the options ask for: whole
    epochs once with --full or --epoch-samples, else ROUND_BATCHES in interleaved rounds."""
    if opts.full or opts.epoch_samples is not None:
        return 1, None
    if opts.quick:
        return QUICK_ROUNDS, QUICK_ROUND_BATCHES
    return ROUNDS, ROUND_BATCHES


def images(opts: Options) -> int:
    """Training images the plan reads: --epoch-samples, else a whole epoch, else the largest
    round."""
    batches = plan(opts)[1]
    if batches is not None:
        return max(batches.values()) * BATCH_SIZE
    return opts.epoch_samples or FULL_EPOCH


def steps(opts: Options, backends) -> int:
    return plan(opts)[0] * len(ARCHS) * (len(backends) + len(peers.PEERS))


def _train(name, arch, xa, ya, x_test, y_test, optimizer, lr) -> dict:
    """epoch_run or peer_epoch_run of backend or peer `name` on xa, ya."""
    if name in peers.PEERS:
        return peer_epoch_run(name, arch, xa, ya, x_test, y_test, optimizer, lr)
    return epoch_run(name, arch, xa, ya, x_test, y_test, optimizer, lr)


def summarize_rows(names, rounds: list[dict], scale: float) -> list[dict]:
    """One row per name from the rounds' results {name: epoch_run dict or an exception}:
    seconds_per_60k is the median of the rounds' samples_per_60k (each round's seconds times
    `scale`), with its IQR, noise mark and interval; ratio_torch is the median of the per-round
    ratios to PyTorch's faster layout in the same round, with its interval (bench.stats)."""
    rows = []
    for name in names:
        row = {"name": name, "peer": name in peers.PEERS}
        got = [r[name] for r in rounds if name in r]
        failed = [g for g in got if isinstance(g, BaseException)]
        with row_status(row):
            if failed:
                raise failed[0]
            if not got:
                raise Unmeasured("not measured")
            samples = [g["seconds"] * scale for g in got]
            q25, median, q75 = np.percentile(samples, [25, 50, 75])
            row.update(
                seconds=float(np.median([g["seconds"] for g in got])),
                seconds_per_60k=float(median),
                samples_per_60k=samples,
                rounds=[i for i, r in enumerate(rounds) if name in r],
                iqr=float(q75 - q25),
                noisy=is_noisy(median, q75 - q25),
                interval=median_interval(samples),
                extrapolated=any(g["extrapolated"] for g in got) or scale != 1.0,
                batches_timed=got[0]["batches_timed"],
                test_acc=got[0]["test_acc"] if len(got) == 1 else None,
            )
        rows.append(row)
    _add_paired_ratios(rows, rounds)
    return rows


def _add_paired_ratios(rows: list[dict], rounds: list[dict]) -> None:
    """ratio_torch (median over rounds of ours / PyTorch's faster layout that round) and
    ratio_torch_interval on each ok row, in place."""
    for row in rows:
        per_round = []
        for r in rounds:
            torch_s = [
                r[t]["seconds"] for t in peers.PEER_GROUPS["torch"] if isinstance(r.get(t), dict)
            ]
            if isinstance(r.get(row["name"]), dict) and torch_s:
                per_round.append(r[row["name"]]["seconds"] / min(torch_s))
        if row["status"] == OK and per_round:
            row["ratios_torch"] = per_round
            row["ratio_torch"] = float(np.median(per_round))
            row["ratio_torch_interval"] = median_interval(per_round)


def run(ctx: Context) -> dict:
    """Per architecture, one row per backend and peer: seconds per epoch (scaled to 60 000
    images when fewer ran) over the plan's rounds, each round training every backend and peer
    on the same images in a rotated order, and the test accuracy after a whole epoch."""
    from model.optim import DEFAULT_LR
    from model.training import TRAIN_BLAS_THREADS

    opts, bar = ctx.opts, ctx.bar
    n_rounds, batches = plan(opts)
    x, y, source = load_training_data(opts.data_dir, images(opts))
    n_test = ROUND_TEST if batches else QUICK_TEST if opts.quick else FULL_TEST
    x_test, y_test, _ = load_training_data(opts.data_dir, n_test, split="test")
    names = ctx.backends + list(peers.PEERS)
    archs = []
    for arch, optimizer in ARCHS.items():
        if batches is not None:
            n = min(len(x), batches[arch] * BATCH_SIZE)
        else:
            n = min(len(x), QUICK_DEEP_SAMPLES) if opts.quick and arch == "deep" else len(x)
        xa, ya, scale = x[:n], y[:n], FULL_EPOCH / n
        lr = DEFAULT_LR[optimizer]
        rounds: list[dict] = []
        for rnd in range(n_rounds):
            results: dict = {}
            for name in rotated(names, rnd):
                bar.set_description(f"epoch {arch} {name} (round {rnd + 1}/{n_rounds})")
                if name in peers.PEERS and ctx.peers[name] != OK:
                    results[name] = peers.PeerUnavailable(ctx.peers[name])
                else:
                    try:
                        results[name] = _train(name, arch, xa, ya, x_test, y_test, optimizer, lr)
                    except Exception as exc:  # one broken backend must not stop the run
                        results[name] = exc
                bar.update(1)
            rounds.append(results)
        archs.append(
            {
                "arch": arch,
                "optimizer": f"{optimizer}" + (f" {MOMENTUM}" if optimizer == "momentum" else ""),
                "lr": lr,
                "samples": n,
                "rounds": n_rounds,
                "rows": summarize_rows(names, rounds, scale),
            }
        )
    return {
        "data": source,
        "samples": len(x),
        "rounds": n_rounds,
        "test_images": len(x_test),
        "batch_size": BATCH_SIZE,
        "dtype": "float32",
        "blas_threads": TRAIN_BLAS_THREADS,
        "archs": archs,
    }
