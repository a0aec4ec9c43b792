"""The training loop: epochs of shuffled mini-batches with schedules, augmentation, early stopping.

    history = fit(net, x_train, y_train, epochs=3, optimizer=Momentum(0.01),
                  x_test=x_test, y_test=y_test, on_epoch_end=save_checkpoint)

`history` is a dict of equal-length lists, one entry per epoch: epoch (1-based), lr, train_loss,
train_acc, test_loss, test_acc (None without test data) and seconds. All randomness (shuffling,
augmentation, dropout) comes from `net.rng`, so a run resumed from an end-of-epoch checkpoint
(which stores that generator's state) continues exactly as the uninterrupted run would have.
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
from .losses import NonFiniteLoss, class_indices
from .optim import lr_at

# BLAS threads to train with. The model's GEMMs are small (the largest is 64 x 3136 x 128), so a
# second OpenBLAS thread gains little, and idle OpenBLAS workers busy-wait ~0.1 s after each GEMM,
# taking the core that numba's parallel kernels and numpy's other work need. Measured on 2 vCPUs,
# full seed epochs interleaved 3 times: im2col 4.81 s median with 1 thread (4.72-5.16) against
# 5.91 s with 2 (4.59-6.70); a numba step 4.8 ms against 8.0 ms.
TRAIN_BLAS_THREADS = 1
HISTORY_KEYS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; `epoch` (1-based) and `batch` (1-based) say where."""

    def __init__(self, epoch: int, batch: int, loss: float):
        super().__init__(
            f"loss became {loss} at epoch {epoch}, batch {batch}: training stopped "
            f"(try a lower --lr, --clip-norm, or --standardize)"
        )
        self.epoch, self.batch, self.loss = epoch, batch, loss


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
    augment=False,
    early_stop=None,
    history=None,
    best_state=None,
    progress=True,
    on_epoch_end=None,
    log=print,
    blas_threads=TRAIN_BLAS_THREADS,
):
    """Train `net` in place until `epochs` epochs are in the history (a resumed run passes its
    history and continues from len(history['epoch'])).

    x: (N, 28, 28, 1) of net.dtype; y: (N,) labels or (N, 10) one-hot. `early_stop` = patience in
    epochs without a lower test loss; when it triggers, the best weights are restored (a resumed
    run passes them as `best_state`, net.state_arrays() of the best epoch, e.g. from best.npz).
    `on_epoch_end(net, history, is_best)` runs after each epoch (the CLI writes checkpoints there).
    `blas_threads`: BLAS threads during training (None = the BLAS default; see TRAIN_BLAS_THREADS).
    Raises TrainingDiverged on a NaN/Inf loss, before the bad step is applied to the weights.
    """
    if not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if early_stop is not None and (early_stop < 1 or x_test is None):
        raise ValueError("early_stop needs a patience >= 1 and test data to watch")
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return _fit(
            net,
            x,
            y,
            epochs,
            optimizer,
            batch_size,
            x_test,
            y_test,
            schedule,
            base_lr,
            augment,
            early_stop,
            history,
            best_state,
            progress,
            on_epoch_end,
            log,
        )


def _fit(
    net,
    x,
    y,
    epochs,
    optimizer,
    batch_size,
    x_test,
    y_test,
    schedule,
    base_lr,
    augment,
    early_stop,
    history,
    best_state,
    progress,
    on_epoch_end,
    log,
):
    history = new_history() if history is None else history
    base_lr = optimizer.lr if base_lr is None else base_lr
    labels = class_indices(y)
    best_loss, waited = _best_so_far(history)
    for epoch in range(len(history["epoch"]), epochs):
        optimizer.lr = lr_at(schedule, base_lr, epoch, epochs)
        start = time.perf_counter()
        train_loss, train_acc = _train_epoch(
            net, x, labels, optimizer, batch_size, augment, epoch, epochs, progress
        )
        seconds = time.perf_counter() - start
        test_loss, test_acc = net.evaluate(x_test, y_test) if x_test is not None else (None, None)
        for key, value in zip(
            HISTORY_KEYS,
            (epoch + 1, optimizer.lr, train_loss, train_acc, test_loss, test_acc, seconds),
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
            log(format_epoch(history, epochs))
        if on_epoch_end is not None:
            on_epoch_end(net, history, is_best)
        if early_stop is not None and waited >= early_stop:
            if log:
                log(
                    f"Early stopping: no lower test loss for {early_stop} epochs; restoring the "
                    f"best weights (epoch {int(np.argmin(_finite(history['test_loss']))) + 1})."
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


def _train_epoch(net, x, labels, optimizer, batch_size, augment, epoch, epochs, progress):
    """One pass over a fresh permutation. Returns (mean loss, accuracy) over the epoch's samples."""
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
            if augment:
                xb = augment_batch(xb, net.rng)
            try:
                loss, n_correct = net.train_step(xb, yb, optimizer)
            except NonFiniteLoss as exc:
                raise TrainingDiverged(epoch + 1, batch, exc.loss) from None
            loss_sum += loss * len(yb)
            correct += n_correct
            seen += len(yb)
            bar.update(1)
            if batch % 20 == 0 or batch == total:  # postfix formatting is not free
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
    finally:
        bar.close()
    return loss_sum / seen, correct / seen


def format_epoch(history, epochs) -> str:
    """'Epoch i/n: Train Loss ..., Train Acc ..., Test Loss ..., Test Acc ..., Time ...s'."""
    h = {key: values[-1] for key, values in history.items()}
    test = (
        f", Test Loss: {h['test_loss']:.4f}, Test Acc: {h['test_acc']:.4f}"
        if h["test_loss"] is not None
        else ""
    )
    return (
        f"Epoch {h['epoch']}/{epochs}: Train Loss: {h['train_loss']:.4f}, "
        f"Train Acc: {h['train_acc']:.4f}{test}, Time: {h['seconds']:.2f}s"
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
