"""The paired section: `--backend auto` against PyTorch at its faster layout, in alternating rounds.

With --full the epoch section trains each backend and peer on a whole epoch once, one after the
other, over several minutes (for the test accuracy after it). On a shared machine whose speed
drifts within minutes (the same kernel call, timed minutes apart, can differ by more than the
backends being compared), the ratio of two such runs carries that drift. Here the two run in
rounds: each round trains a fresh network on auto and on both
PyTorch layouts (NCHW, channels_last), in an order that rotates from round to round, on the same
ROUND_BATCHES[arch] batches after an untimed warm-up step. A round's ratio is auto's time over
the faster PyTorch layout's in that round; the section reports the median and the range.

The rounds also train on SINGLE, the fastest single backend of the epoch section on both models,
so that "auto is at least as fast as the best single backend" is measured the same way (in
--full's epoch section the two run minutes apart, and on `small`, where auto chooses numba for
every layer, the drift alone can put either ahead).

Without --full the epoch section itself trains every backend and peer in rotated rounds (of
fewer batches), so this section is part of --full only (DEFAULT_SECTIONS leaves it out): there it
is the run's one interleaved comparison of auto with PyTorch and with SINGLE.

    run(ctx) -> {"rounds", "single", "archs": [{"arch", "batches", "status", "ours": [s, ...],
                 "peer": {"torch": [...], "torch_cl": [...]}, "ratios": [...], "median",
                 "single": {"seconds": [...], "ratios": [...], "median"} (when it ran)}]}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import peers
from .epoch import ARCHS, BATCH_SIZE, epoch_run
from .mnist import load_training_data
from .status import OK, error_status

if TYPE_CHECKING:
    from .context import Context, Options

OURS = "auto"
SINGLE = "numba"
PEERS = ("torch", "torch_cl")
ROUNDS, QUICK_ROUNDS = 5, 2
# batches per round: about a second of training each on a 2-core machine
ROUND_BATCHES = {"small": 300, "deep": 60}
QUICK_ROUND_BATCHES = {"small": 20, "deep": 4}
TEST_IMAGES = 64  # the runs end with an evaluation; a token one here, it is not reported


def steps(opts: Options, backends) -> int:
    return len(ARCHS) * (QUICK_ROUNDS if opts.quick else ROUNDS)


def participants(backends) -> list[str]:
    """Who trains in each round: auto, SINGLE when it is usable, and both PyTorch layouts."""
    return [OURS, *([SINGLE] if SINGLE in backends else []), *PEERS]


def round_order(round_index: int, names: list[str]) -> list[str]:
    """Who trains when in round `round_index`: the participants rotated by one per round, so
    each takes every position equally often."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def ratios(ours: list[float], peer: dict[str, list[float]]) -> list[float]:
    """Per round: ours over the faster of the peer's layouts in that round."""
    return [o / min(times[i] for times in peer.values()) for i, o in enumerate(ours)]


def _unavailable(ctx: Context) -> str | None:
    if OURS not in ctx.backends:
        return f"{OURS} is not among the usable backends"
    missing = [p for p in PEERS if ctx.peers.get(p) != OK]
    if missing:
        return "; ".join(f"{p}: {ctx.peers.get(p, 'not requested')}" for p in missing)
    return None


def run(ctx: Context) -> dict:
    """Per architecture, ROUNDS rounds of auto and both PyTorch layouts (see the docstring)."""
    from model.optim import DEFAULT_LR

    opts, bar = ctx.opts, ctx.bar
    n_rounds = QUICK_ROUNDS if opts.quick else ROUNDS
    batches_per_arch = QUICK_ROUND_BATCHES if opts.quick else ROUND_BATCHES
    most = max(batches_per_arch.values()) * BATCH_SIZE
    x, y, source = load_training_data(opts.data_dir, most)
    x_test, y_test, _ = load_training_data(opts.data_dir, TEST_IMAGES, split="test")
    why_not = _unavailable(ctx)
    archs = []
    for arch, optimizer in ARCHS.items():
        batches = batches_per_arch[arch]
        n = min(len(x), batches * BATCH_SIZE)
        xa, ya, lr = x[:n], y[:n], DEFAULT_LR[optimizer]
        entry: dict = {"arch": arch, "batches": n // BATCH_SIZE, "optimizer": optimizer}
        if why_not is not None:
            archs.append({**entry, "status": why_not})
            bar.update(n_rounds)
            continue
        ours: list[float] = []
        single: list[float] = []
        peer: dict[str, list[float]] = {p: [] for p in PEERS}
        done = 0
        try:
            for r in range(n_rounds):
                bar.set_description(f"paired {arch} round {r + 1}/{n_rounds}")
                for name in round_order(r, participants(ctx.backends)):
                    if name in (OURS, SINGLE):
                        got = epoch_run(name, arch, xa, ya, x_test, y_test, optimizer, lr)
                        (ours if name == OURS else single).append(got["seconds"])
                    else:
                        got = peers.epoch_run(
                            name, arch, xa, ya, x_test, y_test, optimizer, lr, BATCH_SIZE
                        )
                        peer[name].append(got["seconds"])
                bar.update(1)
                done += 1
        except Exception as exc:
            archs.append({**entry, "status": error_status(exc)})
            bar.update(n_rounds - done)
            continue
        per_round = ratios(ours, peer)
        result = {
            **entry,
            "status": OK,
            "ours": ours,
            "peer": peer,
            "ratios": per_round,
            "median": float(np.median(per_round)),
        }
        if single:
            to_single = ratios(ours, {SINGLE: single})
            result["single"] = {
                "seconds": single,
                "ratios": to_single,
                "median": float(np.median(to_single)),
            }
        archs.append(result)
    single_name = SINGLE if SINGLE in participants(ctx.backends) else None
    return {"data": source, "ours": OURS, "single": single_name, "rounds": n_rounds, "archs": archs}
