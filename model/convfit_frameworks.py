"""The conv lab's fit in PyTorch or Keras: the same model, data order, start and epoch losses.

    >>> from model.convfit import generate_data
    >>> from model.convfit_frameworks import fit_conv_framework
    >>> data = generate_data(samples=20, channels=3, size=8, kernels=2, kernel_size=2, seed=0)
    >>> fit = fit_conv_framework("torch", data["input"], data["target"], None, None, lr=0.1,
    ...                          epochs=2)                   # a model.convfit.ConvFit
    >>> fit.kernels.shape, len(fit.losses)                  # (K, C, kh, kw), one loss per epoch
    ((2, 3, 2, 2), 2)

The model is model.convfit's: K kernels, valid, stride 1, optional bias and ReLU, MSE (mean over a
batch's target elements), plain SGD or Adam (betas 0.9, 0.999, eps 1e-8; Keras adds eps before
the bias correction of sqrt(v), PyTorch and ours after it, a difference of order eps). Each
framework starts from the kernels model.convfit.plan_fit draws and visits the samples in the
order it draws, so with the same seed the three frameworks follow the same path up to rounding;
the epoch's "avg loss" is the same running mean of batch losses (weighted by batch size, measured
before each step) that fit_conv reports.

torch and tensorflow are imported only when a fit asks for them, so `model` never needs them.
"""

from __future__ import annotations

import time

import numpy as np

from .convfit import ConvFit, FitPlan, check_diverged, plan_fit
from .tensorflow_import import import_tensorflow

FRAMEWORKS = ("numpy", "torch", "keras")
PEERS_INSTALL = 'pip install -e ".[peers]"'


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"framework 'torch' needs PyTorch, which is not installed: {PEERS_INSTALL}"
        ) from None
    return torch


def _import_keras():
    # TensorFlow writes start-up lines to stderr on import; the lab's output is its epoch lines.
    try:
        import_tensorflow()  # Keras's backend here
        import keras
    except ImportError:
        raise ImportError(
            "framework 'keras' needs TensorFlow and Keras, which are not installed: "
            f"{PEERS_INSTALL}"
        ) from None
    return keras


def _fit_torch(plan: FitPlan, x: np.ndarray, t: np.ndarray, bias: bool, callback) -> ConvFit:
    """x: (S, C, H, W), t: (S, K, OH, OW), both in plan.dtype; the loop mirrors fit_conv's."""
    torch = _import_torch()
    k, c, kh, kw = plan.kernels0.shape
    conv = torch.nn.Conv2d(c, k, (kh, kw), bias=bias, dtype=getattr(torch, plan.dtype.name))
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(plan.kernels0.astype(plan.dtype)))
        if bias:
            conv.bias.zero_()
    optimizers = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
    optimizer = optimizers[plan.optimizer](conv.parameters(), lr=plan.lr)
    activation = torch.relu if plan.relu else (lambda y: y)
    loss_fn = torch.nn.MSELoss()
    x_all, t_all = torch.from_numpy(x), torch.from_numpy(t)
    losses, epoch_seconds, first_loss = [], [], None
    for epoch in range(1, plan.epochs + 1):
        start = time.perf_counter()
        order = torch.from_numpy(plan.order())
        x_epoch, t_epoch = x_all[order], t_all[order]
        loss_sum = 0.0
        for lo in range(0, plan.samples, plan.batch_size):
            hi = min(lo + plan.batch_size, plan.samples)
            loss = loss_fn(activation(conv(x_epoch[lo:hi])), t_epoch[lo:hi])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            batch_loss = loss.item()
            first_loss = batch_loss if first_loss is None else first_loss
            loss_sum += batch_loss * (hi - lo)
        avg = loss_sum / plan.samples
        losses.append(avg)
        epoch_seconds.append(time.perf_counter() - start)
        if callback is not None:
            callback(epoch, avg, epoch_seconds[-1])
        check_diverged(epoch, avg, first_loss, plan.lr)
    return ConvFit(
        kernels=conv.weight.detach().numpy().copy(),
        bias=conv.bias.detach().numpy().copy() if bias else None,
        losses=losses,
        epoch_seconds=epoch_seconds,
    )


def _fit_keras(plan: FitPlan, x: np.ndarray, t: np.ndarray, bias: bool, callback) -> ConvFit:
    """x: (S, C, H, W), t: (S, K, OH, OW), both in plan.dtype. One model.fit call per epoch, on
    the samples in plan's order (shuffle=False), so Keras visits them as fit_conv does."""
    keras = _import_keras()
    k, c, kh, kw = plan.kernels0.shape
    # Keras's Conv2D on the CPU is channels_last: NHWC data and HWIO kernels, as in `kernels`.
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    t_nhwc = np.ascontiguousarray(t.transpose(0, 2, 3, 1))
    dtype = plan.dtype.name
    conv = keras.layers.Conv2D(
        k,
        (kh, kw),
        padding="valid",
        use_bias=bias,
        activation="relu" if plan.relu else None,
        dtype=dtype,
    )
    model = keras.Sequential([keras.Input(shape=x_nhwc.shape[1:], dtype=dtype), conv])
    weights = [plan.kernels0.transpose(2, 3, 1, 0).astype(plan.dtype)]
    conv.set_weights(weights + ([np.zeros(k, dtype=plan.dtype)] if bias else []))
    if plan.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=plan.lr, epsilon=1e-8)
    else:
        optimizer = keras.optimizers.SGD(learning_rate=plan.lr)
    # No XLA: compiling costs more than the lab's whole fit.
    model.compile(
        optimizer=optimizer,
        loss="mean_squared_error",
        jit_compile=False,
    )
    losses, epoch_seconds, first_loss = [], [], None
    for epoch in range(1, plan.epochs + 1):
        start = time.perf_counter()
        order = plan.order()
        x_epoch, t_epoch = x_nhwc[order], t_nhwc[order]
        if first_loss is None:  # Keras reports epoch means only; the divergence test needs this
            y0 = np.asarray(model(x_epoch[: plan.batch_size], training=False))
            first_loss = float(np.mean((y0 - t_epoch[: plan.batch_size]) ** 2))
        history = model.fit(
            x_epoch, t_epoch, batch_size=plan.batch_size, epochs=1, shuffle=False, verbose=0
        )
        avg = float(history.history["loss"][0])
        losses.append(avg)
        epoch_seconds.append(time.perf_counter() - start)
        if callback is not None:
            callback(epoch, avg, epoch_seconds[-1])
        check_diverged(epoch, avg, first_loss, plan.lr)
    fitted = conv.get_weights()
    return ConvFit(
        kernels=np.ascontiguousarray(fitted[0].transpose(3, 2, 0, 1)),
        bias=fitted[1] if bias else None,
        losses=losses,
        epoch_seconds=epoch_seconds,
    )


def fit_conv_framework(
    framework: str,
    inputs_nchw,
    targets_nchw,
    num_kernels: int | None,
    kernel_size,
    lr: float,
    epochs: int,
    batch_size: int = 1,
    seed: int | None = 0,
    bias: bool = False,
    dtype=None,
    callback=None,
    shuffle: bool = True,
    initial_kernels=None,
    optimizer: str = "sgd",
    relu: bool = False,
) -> ConvFit:
    """model.convfit.fit_conv in `framework`, "torch" or "keras"; the other arguments, the
    result (kernels (K, C, KH, KW) and bias (K,) in the training dtype) and the errors are
    fit_conv's. ImportError naming `pip install -e ".[peers]"` when the framework is missing."""
    fits = {"torch": _fit_torch, "keras": _fit_keras}
    if framework not in fits:
        raise ValueError(
            f"framework must be one of {', '.join(fits)} (numpy: model.convfit.fit_conv), "
            f"got {framework!r}"
        )
    plan = plan_fit(
        inputs_nchw,
        targets_nchw,
        num_kernels,
        kernel_size,
        lr,
        epochs,
        batch_size=batch_size,
        seed=seed,
        dtype=dtype,
        shuffle=shuffle,
        initial_kernels=initial_kernels,
        optimizer=optimizer,
        relu=relu,
    )
    x = np.ascontiguousarray(inputs_nchw, dtype=plan.dtype)
    t = np.ascontiguousarray(targets_nchw, dtype=plan.dtype)
    return fits[framework](plan, x, t, bias, callback)
