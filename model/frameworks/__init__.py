"""The same training run in PyTorch or Keras: `python -m model.train --framework torch|keras`.

The network is translated layer by layer from a built convbench Sequential (so any spec works,
model/spec.py), starting from the same initial weights; the framework then trains it on the
same batches in the same order (drawn from the network's generator, as model.training.fit
draws them, with the same augmentation), with the same optimizer, learning rate per step
(schedule and warmup), batch size and epochs, and prints the same epoch lines into the same
history. After each epoch the weights are copied back into the Sequential, so checkpoints,
`--resume` and `python -m model.predict` work as for a NumPy run. Dropout masks come from the
framework's own generator (seeded with the run's seed).

Each framework module (torch_net.py, keras_net.py) has one class, built from (net, optimizer),
with step(xb, yb, lr) -> (mean loss, correct), evaluate(x, y) -> (loss, accuracy) and
copy_back(net).
"""

from __future__ import annotations

import importlib
import math
import time

import numpy as np
from tqdm.auto import tqdm

from ..augment import augment_batch
from ..batches import iterate_batches, num_batches
from ..losses import class_indices
from ..optim import Optimizer, lr_at, warmup_factor
from ..training import (
    HISTORY_KEYS,
    DivergenceGuard,
    TrainingDiverged,
    format_epoch,
    new_history,
)

FRAMEWORKS = ("numpy", "torch", "keras")
_MODULES = {"torch": ("torch_net", "torch"), "keras": ("keras_net", "tensorflow")}
INSTALL_HINT = 'pip install -e ".[peers]"'


def framework_model(name: str, net, optimizer: Optimizer, seed: int):
    """The framework's trainable copy of `net` (see the module docstring)."""
    if name not in _MODULES:
        raise ValueError(f"framework must be one of {', '.join(_MODULES)}, got {name!r}")
    module_name, package = _MODULES[name]
    if importlib.util.find_spec(package) is None:
        raise RuntimeError(
            f"--framework {name} needs {package}, which is not installed: {INSTALL_HINT}"
        )
    module = importlib.import_module(f"{__name__}.{module_name}")
    return module.Model(net, optimizer, seed)


def fit_in_framework(
    name,
    net,
    x,
    y,
    epochs,
    optimizer: Optimizer,
    batch_size=64,
    x_test=None,
    y_test=None,
    schedule="none",
    base_lr=None,
    step_epochs=10,
    step_factor=0.5,
    warmup_steps=20,
    augment=None,
    history=None,
    progress=True,
    on_epoch_end=None,
    log=print,
    seed=0,
):
    """model.training.fit's loop with the framework doing the arithmetic; `augment` is
    (max_shift, max_degrees) or None. Returns the history (the same keys as fit's).
    Raises TrainingDiverged as fit does (the framework's weights reach `net` only at an epoch's
    end, so a diverged step never reaches a checkpoint)."""
    model = framework_model(name, net, optimizer, seed)
    history = new_history() if history is None else history
    base_lr = optimizer.lr if base_lr is None else base_lr
    labels = class_indices(y)
    best_loss = min((v for v in history["test_loss"] if v is not None), default=np.inf)
    guard = DivergenceGuard(base_lr)
    for epoch in range(len(history["epoch"]), epochs):
        epoch_lr = lr_at(schedule, base_lr, epoch, epochs, step_epochs, step_factor)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(
            total=num_batches(len(x), batch_size),
            desc=f"Epoch {epoch + 1}/{epochs} ({name})",
            unit="batch",
            leave=False,
            disable=not progress,
        )
        start = time.perf_counter()
        try:
            for batch, (xb, yb) in enumerate(iterate_batches(x, labels, batch_size, net.rng), 1):
                if augment is not None:
                    xb = augment_batch(xb, net.rng, *augment)
                lr = epoch_lr * warmup_factor(optimizer.t, warmup_steps)
                loss, n_correct = model.step(xb, yb, lr)
                if not math.isfinite(loss):
                    raise TrainingDiverged(epoch + 1, batch, loss, base_lr)
                guard.check(loss, epoch + 1, batch)
                optimizer.t += 1
                loss_sum += loss * len(yb)
                correct += n_correct
                seen += len(yb)
                bar.update(1)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        optimizer.lr = epoch_lr
        test_loss, test_acc = (
            model.evaluate(x_test, class_indices(y_test)) if x_test is not None else (None, None)
        )
        values = (
            epoch + 1,
            epoch_lr,
            loss_sum / seen,
            correct / seen,
            test_loss,
            test_acc,
            seconds,
        )
        for key, value in zip(HISTORY_KEYS, values):
            history[key].append(value)
        model.copy_back(net)
        is_best = test_loss is not None and test_loss < best_loss
        best_loss = min(best_loss, test_loss) if test_loss is not None else best_loss
        if log:
            log(format_epoch(history, epochs, show_lr=schedule != "none"))
        if on_epoch_end is not None:
            on_epoch_end(net, history, is_best)
    return history
