"""PyTorch and TensorFlow/Keras versions of the benchmark workloads, so ratios compare like with like.

Same dtype, same thread count (2), layouts converted outside the timed region (PyTorch wants NCHW
and OIHW; TensorFlow takes our NHWC / HWIO directly). A peer that is not installed raises
`PeerUnavailable`, which the harness reports as "not installed" and carries on.

    layer_ops(peer, case)                   -> {"forward", "backward"} callables
    epoch_seconds(peer, x, y, batch_size)   -> seconds for one training epoch of the seed model
    fitconv_epoch_seconds(peer, inputs, targets) -> seconds per epoch of the .npy conv-kernel fit
"""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np

PEERS = ("torch", "tensorflow")
THREADS = 2


class PeerUnavailable(RuntimeError):
    """The peer library is not installed (or failed to import)."""


def _torch():
    if importlib.util.find_spec("torch") is None:
        raise PeerUnavailable("not installed")
    import torch

    torch.set_num_threads(THREADS)
    return torch


_TF = None


def _tf():
    global _TF
    if _TF is not None:
        return _TF
    if importlib.util.find_spec("tensorflow") is None:
        raise PeerUnavailable("not installed")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    try:
        # Only possible before TF's runtime starts; afterwards the first setting stays in force.
        tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    except RuntimeError:
        pass
    _TF = tf
    return tf


def available_peers() -> dict[str, str]:
    """peer -> "ok" or why it cannot run ("not installed")."""
    return {p: "ok" if importlib.util.find_spec(p) is not None else "not installed" for p in PEERS}


# ---- layer cases ---------------------------------------------------------------------------------


def layer_ops(peer: str, case, dtype=np.float32) -> dict:
    """The case's forward and backward (dx, dw, db via autograd) as zero-argument callables."""
    x, w, b = case.make_inputs(dtype)
    if peer == "torch":
        return _torch_layer_ops(_torch(), case, x, w, b)
    if peer == "tensorflow":
        return _tf_layer_ops(_tf(), case, x, w, b)
    raise ValueError(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")


def _torch_layer_ops(torch, case, x, w, b):
    import torch.nn.functional as F

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
    if case.kind == "pool":
        params = [xt]

        def fwd():
            return F.max_pool2d(xt, case.k)
    else:
        wt = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))).requires_grad_(True)
        bt = torch.from_numpy(b).requires_grad_(True)
        params = [xt, wt, bt]

        def fwd():
            return F.conv2d(xt, wt, bt, stride=case.stride, padding=case.padding)

    y = fwd()
    dy = torch.ones_like(y)

    def forward():
        with torch.no_grad():
            return fwd()

    def backward():
        return torch.autograd.grad(y, params, dy, retain_graph=True)

    return {"forward": forward, "backward": backward}


def _tf_layer_ops(tf, case, x, w, b):
    xt = tf.Variable(x)
    if case.kind == "pool":
        params = [xt]

        def fwd():
            return tf.nn.max_pool2d(xt, case.k, case.k, "VALID")
    else:
        wt, bt = tf.Variable(w), tf.Variable(b)
        params = [xt, wt, bt]
        pad = [[0, 0], [case.padding, case.padding], [case.padding, case.padding], [0, 0]]

        def fwd():
            return tf.nn.bias_add(tf.nn.conv2d(xt, wt, case.stride, pad), bt)

    with tf.GradientTape(persistent=True) as tape:
        y = fwd()
    dy = tf.ones_like(y)

    def forward():
        return fwd().numpy()  # .numpy() waits for the result

    def backward():
        return [g.numpy() for g in tape.gradient(y, params, output_gradients=dy)]

    return {"forward": forward, "backward": backward}


# ---- seed model epoch ----------------------------------------------------------------------------


def epoch_seconds(
    peer: str,
    x,
    y_onehot,
    batch_size: int = 64,
    lr: float = 0.01,
    momentum: float = 0.9,
    seed: int = 0,
) -> float:
    """One shuffled training epoch of the seed architecture on x: (N, 28, 28, 1) float32,
    y_onehot: (N, 10). Graph building / first-step tracing happens before the clock starts."""
    if peer == "torch":
        return _torch_epoch(_torch(), x, y_onehot, batch_size, lr, momentum, seed)
    if peer == "tensorflow":
        return _keras_epoch(_tf(), x, y_onehot, batch_size, lr, momentum, seed)
    raise ValueError(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")


def _torch_epoch(torch, x, y_onehot, batch_size, lr, momentum, seed):
    nn = torch.nn
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 14 * 14, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y_onehot.argmax(axis=1))
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))

    def step(idx):
        opt.zero_grad()
        loss = loss_fn(model(xt[idx]), yt[idx])
        loss.backward()
        opt.step()

    step(order[:batch_size])  # warm-up (allocator, oneDNN primitive cache)
    start = time.perf_counter()
    for i in range(0, len(x), batch_size):
        step(order[i : i + batch_size])
    return time.perf_counter() - start


def _keras_model(tf, layers):
    keras = tf.keras
    return keras.Sequential([keras.Input((28, 28, 1)), *layers])


def _keras_epoch(tf, x, y_onehot, batch_size, lr, momentum, seed):
    keras = tf.keras
    keras.utils.set_random_seed(seed)
    model = _keras_model(
        tf,
        [
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ],
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=momentum),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    model.fit(
        x[: 2 * batch_size], y_onehot[: 2 * batch_size], batch_size=batch_size, epochs=1, verbose=0
    )  # traces and compiles the train step
    start = time.perf_counter()
    model.fit(x, y_onehot, batch_size=batch_size, epochs=1, shuffle=True, verbose=0)
    return time.perf_counter() - start


# ---- the .npy conv-kernel fit (seed 003) ---------------------------------------------------------


def fitconv_epoch_seconds(
    peer: str,
    inputs_nchw,
    targets_nchw,
    kernel_size: int = 2,
    lr: float = 0.1,
    epochs: int = 2,
    seed: int = 0,
) -> float:
    """Seconds per epoch of per-sample SGD (MSE) fitting a bias-free valid conv
    inputs (S, C_in, H, W) -> targets (S, K, OH, OW); the first epoch is a warm-up."""
    if peer == "torch":
        return _torch_fitconv(_torch(), inputs_nchw, targets_nchw, kernel_size, lr, epochs, seed)
    if peer == "tensorflow":
        return _keras_fitconv(_tf(), inputs_nchw, targets_nchw, kernel_size, lr, epochs, seed)
    raise ValueError(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")


def _torch_fitconv(torch, inputs, targets, k, lr, epochs, seed):
    import torch.nn.functional as F

    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(inputs), torch.from_numpy(targets)
    w = (
        torch.randn(targets.shape[1], inputs.shape[1], k, k, dtype=xt.dtype) * 0.1
    ).requires_grad_()
    opt = torch.optim.SGD([w], lr=lr)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for i in range(len(xt)):
            opt.zero_grad()
            loss = F.mse_loss(F.conv2d(xt[i : i + 1], w), yt[i : i + 1])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:] if len(times) > 1 else times))


def _keras_fitconv(tf, inputs, targets, k, lr, epochs, seed):
    keras = tf.keras
    keras.utils.set_random_seed(seed)
    x = np.ascontiguousarray(inputs.transpose(0, 2, 3, 1))
    y = np.ascontiguousarray(targets.transpose(0, 2, 3, 1))
    model = keras.Sequential(
        [keras.Input(x.shape[1:]), keras.layers.Conv2D(y.shape[-1], k, use_bias=False)]
    )
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="mse")
    model.fit(x[:2], y[:2], batch_size=1, epochs=1, verbose=0)  # trace and compile
    times = []
    for _ in range(max(epochs - 1, 1)):
        start = time.perf_counter()
        model.fit(x, y, batch_size=1, epochs=1, shuffle=True, verbose=0)
        times.append(time.perf_counter() - start)
    return float(np.median(times))
