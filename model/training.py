"""The training loop: epochs of shuffled mini-batches with schedules, augmentation, early stopping.

    history = fit(net, x_train, y_train, epochs=3, optimizer=Momentum(0.05),
                  x_test=x_test, y_test=y_test, on_epoch_end=save_checkpoint)

`history` is a dict of equal-length lists, one entry per epoch: epoch (1-based), lr (the epoch's
scheduled rate), train_loss, train_acc, test_loss, test_acc (None without test data) and seconds
(the training pass alone: no evaluation, no checkpoint). All randomness (shuffling, augmentation,
dropout) comes from `net.rng`, so a run resumed from an end-of-epoch checkpoint (which stores that
generator's state and the optimizer's step count) continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .atomic import write_atomically
from .augment import augment_batch
from .batches import iterate_batches, num_batches
from .checks import nonnegative_float, nonnegative_int, positive_int
from .losses import NonFiniteLoss, class_indices
from .optim import STEP_EPOCHS, STEP_FACTOR, WARMUP_STEPS, lr_at, warmup_factor

# BLAS threads to train with. The model's GEMMs are small (the largest is 64 x 3136 x 128), so a
# second OpenBLAS thread gains little, while idle OpenBLAS workers busy-wait after each GEMM on the
# core that numba's parallel kernels and numpy's other work need: one thread gives the faster
# epoch on a 2-core machine (the benchmark's training epoch, `python -m bench.compare`, runs the
# NumPy backends with this setting too).
TRAIN_BLAS_THREADS = 1
# Network.evaluate()'s batch for the test set after each epoch (but see _evaluation_batch)
EVALUATION_BATCH = 1000
HISTORY_KEYS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")
DEFAULT_MAX_SHIFT, DEFAULT_MAX_DEGREES = 2, 10.0  # augmentation: pixels, degrees
DEFAULT_PATIENCE = 5  # early stopping: epochs without a lower test loss


# A step whose loss exceeds this multiple of the run's first step's loss has diverged (as in
# model.convfit): `--lr 1e6` on the small network grows the loss to ~1e23 while staying finite.
DIVERGENCE_FACTOR = 1e6


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or grew DIVERGENCE_FACTOR-fold over the run's first step's
    (`first_loss`); `epoch` (1-based) and `batch` (1-based) say where, `lr` is the base rate."""

    def __init__(
        self, epoch: int, batch: int, loss: float, lr: float | None = None, first_loss=None
    ):
        if math.isfinite(loss) and first_loss:
            what = f"grew to {loss:.4g}, {loss / first_loss:.3g} times the first step's"
            what += f" {first_loss:.4g},"
        else:
            what = f"became {loss}"
        cause = f"the learning rate {lr:g} is probably too large: " if lr is not None else ""
        super().__init__(
            f"loss {what} at epoch {epoch}, batch {batch}: training stopped "
            f"({cause}try a lower --lr, or --clip-norm)"
        )
        self.epoch, self.batch, self.loss, self.lr = epoch, batch, loss, lr


class DivergenceGuard:
    """Stops a run whose loss explodes while staying finite (NaN and Inf are caught by the step
    itself, before the update): remembers the first step's loss and raises TrainingDiverged once
    a step's loss exceeds DIVERGENCE_FACTOR times it. Under --distributed every rank sees the
    same global loss, so all ranks stop at the same step."""

    def __init__(self, lr: float):
        self.lr, self.first_loss = lr, None

    def check(self, loss: float, epoch: int, batch: int) -> None:
        """epoch, batch: 1-based, for the message."""
        if self.first_loss is None:
            self.first_loss = loss
        elif self.first_loss > 0 and loss > DIVERGENCE_FACTOR * self.first_loss:
            raise TrainingDiverged(epoch, batch, loss, self.lr, self.first_loss)


def new_history() -> dict:
    return {key: [] for key in HISTORY_KEYS}


def fit(
    net,
    x,
    y,
    epochs,
    optimizer,
    batch_size=64,
    x_test=None,
    y_test=None,
    schedule="none",
    base_lr=None,
    step_epochs=STEP_EPOCHS,
    step_factor=STEP_FACTOR,
    warmup_steps=WARMUP_STEPS,
    augment=False,
    max_shift=DEFAULT_MAX_SHIFT,
    max_degrees=DEFAULT_MAX_DEGREES,
    early_stop=None,
    history=None,
    best_state=None,
    progress=True,
    on_epoch_end=None,
    log=print,
    blas_threads=TRAIN_BLAS_THREADS,
    comm=None,
):
    """Train `net` in place until `epochs` epochs are in the history (a resumed run passes its
    history and continues from len(history['epoch'])).

    x: (N, 28, 28, 1) of net.dtype; y: (N,) labels or (N, 10) one-hot.
    Learning rate: `base_lr` (default optimizer.lr) follows `schedule` per epoch (optim.lr_at;
    'step' multiplies it by `step_factor` every `step_epochs` epochs) and ramps up over the first
    `warmup_steps` optimizer steps (optim.warmup_factor; 0 = no ramp).
    `augment`: random shifts of up to `max_shift` pixels and rotations of up to `max_degrees`.
    `early_stop` = patience in epochs without a lower test loss; when it triggers, the best weights
    are restored (a resumed run passes them as `best_state`, net.state_arrays() of the best epoch,
    e.g. from best.npz).
    `on_epoch_end(net, history, is_best)` runs after each epoch (the CLI writes checkpoints there).
    `log(line)` receives each epoch's line (format_epoch; with the lr when a schedule is on).
    `blas_threads`: BLAS threads during training (None = the BLAS default; see TRAIN_BLAS_THREADS).
    `comm`: a model.distributed.Communicator for data-parallel training (each step's batch is
    shared among the ranks; every rank calls fit with the same arguments).
    Raises TrainingDiverged on a NaN/Inf loss, before the bad step is applied to the weights, and
    on a loss DIVERGENCE_FACTOR times the first step's (DivergenceGuard).
    """
    epochs = nonnegative_int(epochs, "epochs")
    batch_size = positive_int(batch_size, "batch_size")
    step_epochs = positive_int(step_epochs, "step_epochs")
    warmup_steps = nonnegative_int(warmup_steps, "warmup_steps")
    max_shift = nonnegative_int(max_shift, "max_shift")
    max_degrees = nonnegative_float(max_degrees, "max_degrees")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if early_stop is not None:
        early_stop = positive_int(early_stop, "early_stop (the patience)")
        if x_test is None:
            raise ValueError("early_stop needs test data to watch")
    lr_at(schedule, 1.0, 0, 1)  # an unknown schedule fails now, not after the first epoch

    history = new_history() if history is None else history
    base_lr = optimizer.lr if base_lr is None else base_lr
    labels = class_indices(y)
    best_loss, waited = _best_so_far(history)
    guard = DivergenceGuard(base_lr)

    def lr_of_step(epoch_lr):
        return lambda: epoch_lr * warmup_factor(optimizer.t, warmup_steps)

    with threadpool_limits(limits=blas_threads, user_api="blas"):
        for epoch in range(len(history["epoch"]), epochs):
            epoch_lr = lr_at(schedule, base_lr, epoch, epochs, step_epochs, step_factor)
            start = time.perf_counter()
            train_loss, train_acc = _train_epoch(
                net,
                x,
                labels,
                optimizer,
                lr_of_step(epoch_lr),
                batch_size,
                (max_shift, max_degrees) if augment else None,
                epoch,
                epochs,
                progress,
                comm,
                guard,
            )
            seconds = time.perf_counter() - start
            optimizer.lr = epoch_lr
            test_loss, test_acc = (
                net.evaluate(x_test, y_test, _evaluation_batch(net, batch_size))
                if x_test is not None
                else (None, None)
            )
            for key, value in zip(
                HISTORY_KEYS,
                (epoch + 1, epoch_lr, train_loss, train_acc, test_loss, test_acc, seconds),
            ):
                history[key].append(value)
            is_best = test_loss is not None and test_loss < best_loss
            if is_best:
                best_loss, waited = test_loss, 0
                if early_stop is not None:
                    best_state = {k: a.copy() for k, a in net.state_arrays().items()}
            else:
                waited += 1
            if log:
                log(format_epoch(history, epochs, show_lr=schedule != "none"))
            if on_epoch_end is not None:
                on_epoch_end(net, history, is_best)
            if early_stop is not None and waited >= early_stop:
                if log:
                    best_epoch = int(np.argmin(_finite(history["test_loss"]))) + 1
                    log(
                        f"Early stopping: no lower test loss for {early_stop} epochs; restoring "
                        f"the best weights (epoch {best_epoch})."
                    )
                if best_state is not None:
                    net.load_state_arrays(best_state)
                break
    return history


def _finite(values):
    return [math.inf if v is None else v for v in values]


def _best_so_far(history):
    """(best test loss, epochs since it) from a resumed history."""
    losses = _finite(history["test_loss"])
    if not losses:
        return math.inf, 0
    best = int(np.argmin(losses))
    return losses[best], len(losses) - 1 - best


def _evaluation_batch(net, batch_size: int) -> int:
    """The test set's batch size: the training batch where a layer runs on auto, so that the
    evaluation reuses the shapes auto timed for training (at evaluate()'s default of 1000, auto
    timed every layer's candidates again at that batch, most of a first run's time on the
    MobileNet-style spec of docs/training.md); evaluate()'s default otherwise."""
    if any(getattr(layer, "backend_name", None) == "auto" for layer in net.layers):
        return batch_size
    return EVALUATION_BATCH


def _train_epoch(
    net,
    x,
    labels,
    optimizer,
    step_lr,
    batch_size,
    augment,
    epoch,
    epochs,
    progress,
    comm=None,
    guard=None,
):
    """One pass over a fresh permutation. step_lr() gives each step's learning rate; augment is
    (max_shift, max_degrees) or None; guard: a DivergenceGuard (None: no check beyond NaN/Inf).
    Returns (mean loss, accuracy) over the epoch's samples."""
    loss_sum, correct, seen = 0.0, 0, 0
    total = num_batches(len(x), batch_size)
    bar = tqdm(
        total=total,
        desc=f"Epoch {epoch + 1}/{epochs}",
        unit="batch",
        leave=False,
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for batch, (xb, yb) in enumerate(iterate_batches(x, labels, batch_size, net.rng), 1):
            if augment is not None:
                xb = augment_batch(xb, net.rng, *augment)
            optimizer.lr = step_lr()
            try:
                if comm is None:
                    loss, n_correct = net.train_step(xb, yb, optimizer)
                else:
                    loss, n_correct = net.train_step(xb, yb, optimizer, comm=comm)
            except NonFiniteLoss as exc:
                raise TrainingDiverged(
                    epoch + 1, batch, exc.loss, guard.lr if guard else None
                ) from None
            if guard is not None:
                guard.check(loss, epoch + 1, batch)
            loss_sum += loss * len(yb)
            correct += n_correct
            seen += len(yb)
            bar.update(1)
            if batch % 20 == 0 or batch == total:  # postfix formatting is not free
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
    finally:
        bar.close()
    return loss_sum / seen, correct / seen


def format_epoch(history, epochs, show_lr=False) -> str:
    """'Epoch i/n: Train Loss ..., Train Acc ..., Test Loss ..., Test Acc ..., [LR ...,] Time ...s'
    for the last epoch in `history`; Time is the training pass alone."""
    h = {key: history[key][-1] for key in HISTORY_KEYS}  # not the run's other records
    test = (
        f", Test Loss: {h['test_loss']:.4f}, Test Acc: {h['test_acc']:.4f}"
        if h["test_loss"] is not None
        else ""
    )
    lr = f", LR: {h['lr']:.4g}" if show_lr else ""
    return (
        f"Epoch {h['epoch']}/{epochs}: Train Loss: {h['train_loss']:.4f}, "
        f"Train Acc: {h['train_acc']:.4f}{test}{lr}, Time: {h['seconds']:.2f}s"
    )


def save_history(history, json_path, csv_path=None):
    """history.json (and .csv, one row per epoch), each written atomically."""
    text = json.dumps(history, indent=2)
    write_atomically(json_path, lambda f: f.write(text.encode()))
    if csv_path is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(HISTORY_KEYS)
        writer.writerows(zip(*(history[key] for key in HISTORY_KEYS)))
        write_atomically(csv_path, lambda f: f.write(buffer.getvalue().encode()))
