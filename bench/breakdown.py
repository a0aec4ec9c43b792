"""The breakdown section: where one training step goes, per layer and pass, for both architectures.

    clock = StepClock(); instrument(net, clock)      # each layer's forward/backward now timed
    step_breakdown("deep", "auto", x, labels, steps=40) -> {"parts": [...], "step_ms": ...}
    run(ctx)                                         # the section's results (bench.suite.Context)

A step is what model.training runs per batch: the batch drawn from a shuffled order (and augmented
for `deep`, as the README's deep run trains), forward in training mode, softmax cross-entropy,
backward, optimizer update. Each layer's calls are timed from outside: an instance attribute
shadows the class's method, so the model code is not touched. Each part's figure is the median
over the timed steps; "other" is the median of what each step's parts leave of it (Python glue,
the dtype check in Sequential.forward), so the rows need not add up to the median step exactly.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import threadpool_limits

from .status import row_status

if TYPE_CHECKING:
    from .context import Context, Options

# arch -> the optimizer and augmentation of its training run (small: model.train's defaults;
# deep: the README's run, `--arch deep --optimizer adam --augment`)
ARCHS: dict[str, dict] = {
    "small": {"optimizer": "momentum", "augment": False},
    "deep": {"optimizer": "adam", "augment": True},
}
BATCH_SIZE = 64
FULL_STEPS, QUICK_STEPS = 40, 5
WARMUP_STEPS = 3  # untimed: auto tunes, numba loads its kernels, the allocator settles
PREFERRED_BACKENDS = ("auto", "numba", "im2col")  # the breakdown's backend: first one in the run
OTHER = "other (glue)"
BATCHING, AUGMENT, LOSS, UPDATE = "batching + shuffle", "augmentation", "loss", "optimizer update"


class StepClock:
    """Seconds spent in named parts of the current step; `wrap` makes a callable report here."""

    def __init__(self):
        self.parts: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + seconds

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)

        return timed

    def call(self, name: str, fn, *args):
        return self.wrap(name, fn)(*args)


def take(x, labels, idx):
    """The batch of `idx` (a copy, as model.batches.iterate_batches gives shuffled batches)."""
    return x[idx], labels[idx]


def part_name(index: int, layer, pass_: str) -> str:
    """'1 BatchNorm forward': the layer's index in the network, its class, the pass."""
    return f"{index} {type(layer).__name__} {pass_}"


def fused_name(index: int, layers, pass_: str = "forward") -> str:
    """'0 Conv2D + 1 MaxPool2D forward': a pair Sequential ran as one call."""
    first, second = layers[index], layers[index + 1]
    return f"{index} {type(first).__name__} + {index + 1} {type(second).__name__} {pass_}"


def _fused_pairs(net, pass_: str = "forward") -> list[int]:
    """Indices i whose layers i, i+1 Sequential may run as one call (model.layers.fusable) in
    that pass, on a backend that has the fused function."""
    from model.layers import fusable

    layers = net.layers
    return [
        i
        for i in range(len(layers) - 1)
        if fusable(layers[i], layers[i + 1]) and _has_fused(layers[i], pass_)
    ]


def _has_fused(layer, pass_: str) -> bool:
    """A Conv2D fuses where its backend has the fused function; BatchNorm's are its own (both
    with a max-pool, and with a ReLU)."""
    backend = getattr(layer, "backend", None)
    return backend is None or getattr(backend, f"conv2d_maxpool2d_{pass_}", None) is not None


def instrument(net, clock: StepClock) -> None:
    """Time every layer's forward and backward into `clock`, by instance attributes that shadow
    the class's methods (Sequential calls layer.forward / layer.backward, and a fused pair's
    forward_maxpool / backward_maxpool or forward_relu / backward_relu, timed only when the
    fused call ran: they say when it does not apply)."""
    for i, layer in enumerate(net.layers):
        layer.forward = clock.wrap(part_name(i, layer, "forward"), layer.forward)
        layer.backward = clock.wrap(part_name(i, layer, "backward"), layer.backward)
    from model.layers import pair_kind

    for pass_, ran in (("forward", _not_none), ("backward", _first)):
        for i in _fused_pairs(net, pass_):
            layer = net.layers[i]
            method = f"{pass_}_{pair_kind(layer, net.layers[i + 1])}"  # e.g. forward_relu
            name = fused_name(i, net.layers, pass_)
            setattr(layer, method, _timed_if_run(clock, name, getattr(layer, method), ran))


def _not_none(result) -> bool:
    return result is not None


def _first(result) -> bool:
    return bool(result[0])


def _timed_if_run(clock: StepClock, name: str, fn, ran):
    """fn, its time added to `name` when ran(its result) says the fused call ran."""

    def timed(*args):
        start = time.perf_counter()
        result = fn(*args)
        if ran(result):
            clock.add(name, time.perf_counter() - start)
        return result

    return timed


def part_order(net, augment: bool) -> list[str]:
    """The parts a step may have, in the order they run (a fused pair's name before its layers'
    own, which run instead when the fused call does not apply)."""
    fused = {i: fused_name(i, net.layers, "forward") for i in _fused_pairs(net, "forward")}
    forward = []
    for i, layer in enumerate(net.layers):
        forward += [fused[i]] if i in fused else []
        forward.append(part_name(i, layer, "forward"))
    # backward runs from the last layer: a fused pair's name at its second layer's place
    fused = {i + 1: fused_name(i, net.layers, "backward") for i in _fused_pairs(net, "backward")}
    backward = []
    for i, layer in reversed(list(enumerate(net.layers))):
        backward += [fused[i]] if i in fused else []
        backward.append(part_name(i, layer, "backward"))
    return [BATCHING, *([AUGMENT] if augment else []), *forward, LOSS, *backward, UPDATE, OTHER]


def step_breakdown(arch: str, backend: str, x, labels, steps: int, seed: int = 0) -> dict:
    """Median milliseconds per part of `steps` training steps of `arch` on `backend`.

    x: (N, 28, 28, 1) float32, labels: (N,) int. Returns {"step_ms": median step,
    "step_samples_ms": every timed step, "parts": [{"name", "ms", "percent"}] in running order,
    "steps"}. The shuffle is the permutation of a
    60 000-image epoch, charged per batch (its share: 1 / 938).
    """
    from model.augment import augment_batch
    from model.losses import class_indices, softmax_cross_entropy
    from model.network import build_network
    from model.optim import make_optimizer
    from model.training import TRAIN_BLAS_THREADS

    from .epoch import FULL_EPOCH

    setup = ARCHS[arch]
    net = build_network(arch, backend=backend, dtype=np.float32, seed=seed)
    opt = make_optimizer(setup["optimizer"])
    clock = StepClock()
    instrument(net, clock)
    batches_per_epoch = -(-FULL_EPOCH // BATCH_SIZE)
    order = net.rng.permutation(len(x))
    per_step: list[dict[str, float]] = []
    # an epoch draws one permutation: timed apart, each step is charged its share (run inside
    # every step, its whole time would count towards the step)
    shuffles = []
    for _ in range(5):
        shuffle_start = time.perf_counter()
        net.rng.permutation(FULL_EPOCH)
        shuffles.append(time.perf_counter() - shuffle_start)
    shuffle_share = float(np.median(shuffles)) / batches_per_epoch
    with threadpool_limits(limits=TRAIN_BLAS_THREADS, user_api="blas"):  # as model.train runs
        for step in range(WARMUP_STEPS + steps):
            clock.parts = {}
            start = time.perf_counter()
            clock.add(BATCHING, shuffle_share)
            first = (step * BATCH_SIZE) % max(len(x) - BATCH_SIZE + 1, 1)
            idx = order[first : first + BATCH_SIZE]
            xb, yb = clock.call(BATCHING, take, x, labels, idx)
            if setup["augment"]:
                xb = clock.call(AUGMENT, augment_batch, xb, net.rng)
            logits = net.forward(xb, training=True)

            def loss_and_correct(logits=logits, yb=yb):
                loss, dlogits = softmax_cross_entropy(logits, yb)
                np.isfinite(loss)
                return dlogits, int((logits.argmax(axis=1) == class_indices(yb)).sum())

            dlogits, _ = clock.call(LOSS, loss_and_correct)
            net.backward(dlogits)
            clock.call(UPDATE, net.update, opt)
            total = time.perf_counter() - start + shuffle_share
            if step >= WARMUP_STEPS:
                per_step.append({**clock.parts, "step": total})
    step_ms = 1e3 * float(np.median([p["step"] for p in per_step]))
    seen = {name for p in per_step for name in p}
    medians = {
        name: 1e3 * float(np.median([p.get(name, 0.0) for p in per_step]))
        for name in part_order(net, setup["augment"])
        if name in seen
    }
    # each step less its parts, then the median: a median of the medians' remainder would
    # count the spread of the parts' times as glue (on the `small` step, many times the steps'
    # own remainders)
    medians[OTHER] = 1e3 * float(
        np.median([p["step"] - sum(v for k, v in p.items() if k != "step") for p in per_step])
    )
    parts = [
        {"name": name, "ms": ms, "percent": 100 * ms / step_ms} for name, ms in medians.items()
    ]
    step_samples = [1e3 * p["step"] for p in per_step]
    return {"step_ms": step_ms, "step_samples_ms": step_samples, "parts": parts, "steps": steps}


def choose_backend(ctx: Context) -> str | None:
    """The breakdown's backend: Options.breakdown_backend, else the first PREFERRED_BACKENDS
    entry this run has, else its first backend (None: no backend ran)."""
    if ctx.opts.breakdown_backend:
        return ctx.opts.breakdown_backend
    return next((b for b in (*PREFERRED_BACKENDS, *ctx.backends) if b in ctx.backends), None)


def steps(opts: Options, backends) -> int:
    return len(ARCHS)


def run(ctx: Context) -> dict:
    """One entry per architecture: the step's parts in ms and % of the step."""
    from model.training import TRAIN_BLAS_THREADS

    from .mnist import load_training_data

    opts = ctx.opts
    n_steps = QUICK_STEPS if opts.quick else FULL_STEPS
    backend = choose_backend(ctx)
    x, y_onehot, source = load_training_data(opts.data_dir, BATCH_SIZE * (WARMUP_STEPS + n_steps))
    labels = y_onehot.argmax(axis=1)
    archs = []
    for arch, setup in ARCHS.items():
        ctx.bar.set_description(f"breakdown {arch}")
        entry = {"arch": arch, **setup}
        with row_status(entry, archs, ctx.bar):
            if backend is None:
                raise RuntimeError("no usable backend in this run")
            entry.update(**step_breakdown(arch, backend, x, labels, n_steps))
    result = {
        "backend": backend,
        "batch_size": BATCH_SIZE,
        "dtype": "float32",
        "blas_threads": TRAIN_BLAS_THREADS,
        "data": source,
        "archs": archs,
    }
    if backend == "auto":
        from kernels import auto

        result["auto_choices"] = {k: auto.describe(v) for k, v in auto.choices().items()}
    return result
