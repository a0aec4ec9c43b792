"""PyTorch and TensorFlow/Keras versions of the benchmark workloads, so ratios compare like with like.

Same dtype, same thread count (2), layouts converted outside the timed region (PyTorch wants NCHW
and OIHW; TensorFlow takes our NHWC / HWIO directly). Each peer is one `Peer` subclass in PEERS,
holding its three workloads; the functions below look the peer up by name once. A peer that is
not installed raises `PeerUnavailable`, which the harness reports as "not installed" and carries on.
PyTorch (both layouts) and TensorFlow with oneDNN run in worker processes of their own (InWorker
says why); TensorFlow with oneDNN off runs in the benchmark's process.

    layer_ops(peer, case)                        -> {"forward", "backward"} callables
    epoch_run(peer, arch, x, y, x_test, y_test)  -> {"seconds", "test_acc"} of one training epoch
    inference_seconds(peer, arch, x)             -> seconds of each eval-mode pass over x (PyTorch)
    fitconv_epoch_seconds(peer, inputs, targets) -> seconds per epoch of the .npy conv-kernel fit
"""

from __future__ import annotations

import atexit
import concurrent.futures
import importlib.util
import multiprocessing
import os
import sys
import time

import numpy as np

from model.losses import class_indices

from .peer_nets import keras_network, torch_network
from .status import Unmeasured

THREADS = 2
MOMENTUM = 0.9  # SGD's momentum when the optimizer is "momentum", as model.optim.Momentum
DISABLED = "disabled (--no-peers)"


class PeerUnavailable(Unmeasured):
    """The peer library is not installed (or failed to import)."""


def require(statuses: dict, name: str) -> None:
    """Raise PeerUnavailable with the peer's status (bench.suite's peer_status: "ok" or why not)
    unless it is "ok"."""
    if statuses[name] != "ok":
        raise PeerUnavailable(statuses[name])


class Peer:
    """One peer configuration: its name in results, the package it imports, its label in
    reports, and its versions of the three workloads. The library is imported on first use.
    A `remote` peer runs in a worker process (its `call(function, *args)`)."""

    name = ""
    package = ""
    label = ""
    remote = False

    def __init__(self):
        self._lib = None

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package or self.name) is not None

    def lib(self):
        """The imported library, set to THREADS threads; PeerUnavailable if it is not installed."""
        if self._lib is None:
            if not self.installed():
                raise PeerUnavailable("not installed")
            self._lib = self._import()
        return self._lib

    def _import(self):
        raise NotImplementedError

    def layer_ops(self, case, x, w, b) -> dict:
        """x: (N, H, W, C_in), w: (KH, KW, C_in, C_out), b: (C_out,) -> {"forward", "backward"}."""
        raise NotImplementedError

    def epoch_run(self, arch, x, y_onehot, optimizer, lr, batch_size, seed, x_test, y_test) -> dict:
        raise NotImplementedError

    def inference_seconds(self, arch, x, batch_size, repeat, seed) -> list[float]:
        raise PeerUnavailable("inference is not measured for this peer")

    def fitconv_epoch_seconds(self, inputs, targets, k, lr, epochs, seed) -> float:
        raise NotImplementedError


class Torch(Peer):
    name, label = "torch", "PyTorch"

    def _import(self):
        import torch

        torch.set_num_threads(THREADS)
        return torch

    def _layout(self, tensor_or_module):
        """The memory layout this configuration runs in: NCHW (contiguous) as given."""
        return tensor_or_module

    def layer_ops(self, case, x, w, b):
        torch = self.lib()
        import torch.nn.functional as F

        xt = self._layout(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
        xt.requires_grad_(True)
        if case.kind == "pool":
            params = [xt]

            def fwd():
                return F.max_pool2d(xt, case.k)
        else:
            wt = self._layout(torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))))
            wt.requires_grad_(True)
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

        def forward_backward():
            return torch.autograd.grad(fwd(), params, dy)

        return {"forward": forward, "backward": backward, "forward_backward": forward_backward}

    def _nchw(self, x):
        """(N, H, W, C) float32 array -> a tensor in this configuration's layout."""
        torch = self.lib()
        return self._layout(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))

    def epoch_run(self, arch, x, y_onehot, optimizer, lr, batch_size, seed, x_test, y_test):
        torch = self.lib()
        torch.manual_seed(seed)
        model = self._layout(torch_network(torch, arch))
        params = model.parameters()
        if optimizer == "adam":
            opt = torch.optim.Adam(params, lr=lr)
        else:
            opt = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)
        loss_fn = torch.nn.CrossEntropyLoss()
        xt = self._nchw(x)
        yt = torch.from_numpy(y_onehot.argmax(axis=1))
        order = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))

        def step(idx):
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()

        model.train()
        step(order[:batch_size])  # warm-up (allocator, oneDNN primitive cache)
        start = time.perf_counter()
        for i in range(0, len(x), batch_size):
            step(order[i : i + batch_size])
        seconds = time.perf_counter() - start
        labels = self._predict(model, x_test).argmax(axis=1)
        return {"seconds": seconds, "test_acc": float((labels == class_indices(y_test)).mean())}

    def _predict(self, model, x, batch_size=1000):
        """Logits (N, 10) of x (N, 28, 28, 1) in eval mode, without autograd."""
        torch = self.lib()
        model.eval()
        xt = self._nchw(x)
        with torch.no_grad():
            logits = [model(xt[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return torch.cat(logits).numpy()

    def inference_seconds(self, arch, x, batch_size, repeat, seed):
        torch = self.lib()
        torch.manual_seed(seed)
        model = self._layout(torch_network(torch, arch))
        self._predict(model, x[:batch_size], batch_size)  # warm-up
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            self._predict(model, x, batch_size)
            times.append(time.perf_counter() - start)
        return times

    def fitconv_epoch_seconds(self, inputs, targets, k, lr, epochs, seed):
        torch = self.lib()
        import torch.nn.functional as F

        torch.manual_seed(seed)
        xt, yt = self._layout(torch.from_numpy(inputs)), torch.from_numpy(targets)
        shape = (targets.shape[1], inputs.shape[1], k, k)
        w = self._layout(torch.randn(*shape, dtype=xt.dtype) * 0.1).requires_grad_()
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


class TorchChannelsLast(Torch):
    """PyTorch with activations, weights and the model in channels_last (NHWC in memory), the
    layout oneDNN prefers on some CPUs: a peer counts at its best configuration only, so both
    layouts are timed and the report compares against the faster one per case."""

    name, package, label = "torch_cl", "torch", "PyTorch (channels_last)"

    def _layout(self, tensor_or_module):
        torch = self.lib()
        if isinstance(tensor_or_module, torch.Tensor) and tensor_or_module.dim() != 4:
            return tensor_or_module
        return tensor_or_module.to(memory_format=torch.channels_last)


class TensorFlow(Peer):
    name, label = "tensorflow", "TensorFlow/Keras"

    onednn = "0"  # TF_ENABLE_ONEDNN_OPTS for this configuration

    def _import(self):
        from model.tensorflow_import import import_tensorflow

        if "tensorflow" not in sys.modules:  # TensorFlow reads the variable once, at import
            os.environ["TF_ENABLE_ONEDNN_OPTS"] = self.onednn
        tf = import_tensorflow()  # without TensorFlow's doubled start-up lines on stderr

        try:
            # Only possible before TF's runtime starts; afterwards the first setting stays in force.
            tf.config.threading.set_intra_op_parallelism_threads(THREADS)
        except RuntimeError:
            pass
        return tf

    def layer_ops(self, case, x, w, b):
        tf = self.lib()
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

        def forward_backward():
            with tf.GradientTape() as step:
                out = fwd()
            return [g.numpy() for g in step.gradient(out, params, output_gradients=dy)]

        return {"forward": forward, "backward": backward, "forward_backward": forward_backward}

    def epoch_run(self, arch, x, y_onehot, optimizer, lr, batch_size, seed, x_test, y_test):
        keras = self.lib().keras
        keras.utils.set_random_seed(seed)
        model = keras_network(keras, arch)
        if optimizer == "adam":
            opt = keras.optimizers.Adam(learning_rate=lr)
        else:
            opt = keras.optimizers.SGD(learning_rate=lr, momentum=MOMENTUM)
        model.compile(optimizer=opt, loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        warm = slice(0, 2 * batch_size)
        model.fit(x[warm], y_onehot[warm], batch_size=batch_size, epochs=1, verbose=0)  # traces
        start = time.perf_counter()
        model.fit(x, y_onehot, batch_size=batch_size, epochs=1, shuffle=True, verbose=0)
        seconds = time.perf_counter() - start
        labels = model.predict(x_test, batch_size=1000, verbose=0).argmax(axis=1)
        return {"seconds": seconds, "test_acc": float((labels == class_indices(y_test)).mean())}

    def fitconv_epoch_seconds(self, inputs, targets, k, lr, epochs, seed):
        keras = self.lib().keras
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


_in_worker = False  # True inside a remote peer's worker process


def start_worker(peer: str | None = None) -> None:
    """Make this process a peer worker: remote peers run here rather than in a process of their
    own (their worker processes start here; bench.epoch_memory's fresh child calls it too).
    `peer`'s library is imported at once, before anything of ours can load a shared library it
    uses (see InWorker), with the environment its configuration sets."""
    global _in_worker
    _in_worker = True
    if peer is not None:
        try:
            get_peer(peer).lib()
        except PeerUnavailable:
            pass  # reported by the call that needs it


def _call_peer(name: str, method: str, args: tuple):
    """In a worker process: get_peer(name).method(*args)."""
    return getattr(get_peer(name), method)(*args)


class InWorker:
    """A Peer whose workloads run in a spawned worker process of its own, by the same code; only
    arguments and timings cross the process boundary (bench.layers times its layer ops there).

    Two reasons to keep a peer out of the benchmark's process. TensorFlow reads
    TF_ENABLE_ONEDNN_OPTS once, when it starts, so one process cannot time both settings.
    PyTorch's OpenMP runtime (libgomp) is the same shared library numba's parallel kernels use,
    loaded once per process: after our kernels have started it with workers that sleep between
    parallel regions (kernels/threads.py), PyTorch's epochs run about 8% slower than with
    libgomp's defaults, which PyTorch gets in a process where it loads first."""

    remote = True

    def __init__(self):
        super().__init__()  # type: ignore[call-arg]
        self._worker: concurrent.futures.ProcessPoolExecutor | None = None

    def call(self, function, *args):
        """function(*args) in the worker process (started on first use); in a worker, here."""
        if _in_worker:
            return function(*args)
        if not self.installed():  # type: ignore[attr-defined]
            raise PeerUnavailable("not installed")
        if self._worker is None:
            atexit.register(self.stop)  # shut down before the interpreter tears modules down
            self._worker = concurrent.futures.ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=start_worker,
                initargs=(self.name,),  # type: ignore[attr-defined]
            )
        return self._worker.submit(function, *args).result()

    def stop(self) -> None:
        """Shut the worker process down (it starts again on the next call)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None

    def _remote(self, method: str, args: tuple):
        if _in_worker:
            return getattr(super(), method)(*args)
        return self.call(_call_peer, self.name, method, args)  # type: ignore[attr-defined]

    def layer_ops(self, case, x, w, b):
        if not self.installed():  # type: ignore[attr-defined]
            raise PeerUnavailable("not installed")
        if not _in_worker:
            raise RuntimeError(
                f"{self.name}'s layer ops run in its worker: see bench.layers.time_peer"  # type: ignore[attr-defined]
            )
        return super().layer_ops(case, x, w, b)  # type: ignore[misc]

    def epoch_run(self, *args):
        return self._remote("epoch_run", args)

    def inference_seconds(self, *args):
        return self._remote("inference_seconds", args)

    def fitconv_epoch_seconds(self, *args):
        return self._remote("fitconv_epoch_seconds", args)


class TorchWorker(InWorker, Torch):
    """PyTorch (NCHW), timed in a worker process of its own (see InWorker)."""


class TorchChannelsLastWorker(InWorker, TorchChannelsLast):
    """PyTorch (channels_last), timed in a worker process of its own (see InWorker)."""


class TensorFlowOneDNN(InWorker, TensorFlow):
    """TensorFlow with oneDNN's optimisations on (TF_ENABLE_ONEDNN_OPTS=1; TensorFlow 2.21 leaves
    them off on AMD CPUs, and they change its times by large factors either way), in a worker
    process of its own (see InWorker); the in-process `tensorflow` peer runs with oneDNN off."""

    name, package, label = "tf_onednn", "tensorflow", "TensorFlow/Keras (oneDNN)"
    onednn = "1"


PEERS: dict[str, Peer] = {
    p.name: p for p in (TorchWorker(), TorchChannelsLastWorker(), TensorFlow(), TensorFlowOneDNN())
}
# configurations of one framework: the report compares against the fastest of each group
PEER_GROUPS = {"torch": ("torch", "torch_cl"), "tensorflow": ("tensorflow", "tf_onednn")}


def best_configuration(times: dict, framework: str = "torch") -> tuple[str | None, float | None]:
    """(name, seconds) of the framework's fastest configuration among `times` {name: seconds}."""
    measured = {n: times[n] for n in PEER_GROUPS[framework] if times.get(n) is not None}
    if not measured:
        return None, None
    name = min(measured, key=measured.__getitem__)
    return name, measured[name]


def get_peer(name: str) -> Peer:
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    return PEERS[name]


def peer_status(enabled: bool = True) -> dict[str, str]:
    """peer -> "ok", or why it does not run: "not installed", or DISABLED when not `enabled`."""
    if not enabled:
        return dict.fromkeys(PEERS, DISABLED)
    return {name: "ok" if p.installed() else "not installed" for name, p in PEERS.items()}


def label(name: str) -> str:
    """How reports name `name`: a peer's label ("PyTorch"), any other name (a backend) as it is."""
    return PEERS[name].label if name in PEERS else name


def layer_ops(peer: str, case, dtype=np.float32) -> dict:
    """The case's forward and backward (dx, dw, db via autograd) as zero-argument callables."""
    x, w, b = case.make_inputs(dtype)
    return get_peer(peer).layer_ops(case, x, w, b)


def epoch_run(
    peer: str,
    arch: str,
    x,
    y_onehot,
    x_test,
    y_test,
    optimizer: str = "momentum",
    lr: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    """One shuffled training epoch of `arch` (bench.peer_nets) on x: (N, 28, 28, 1) float32,
    y_onehot: (N, 10) float32, with "momentum" (SGD, momentum 0.9) or "adam" at `lr`; then the
    accuracy on x_test (M, 28, 28, 1), y_test (M,) labels or (M, 10) one-hot. Returns
    {"seconds": the epoch (graph building and first-step tracing before the clock starts),
    "test_acc"}."""
    return get_peer(peer).epoch_run(
        arch, x, y_onehot, optimizer, lr, batch_size, seed, x_test, y_test
    )


def inference_seconds(
    peer: str, arch: str, x, batch_size: int = 1000, repeat: int = 3, seed: int = 0
) -> list[float]:
    """Seconds of each of `repeat` passes of eval-mode logits, without autograd, over all of x:
    (N, 28, 28, 1) float32, in batches of `batch_size`; one warm-up batch first."""
    return get_peer(peer).inference_seconds(arch, x, batch_size, repeat, seed)


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
    inputs (S, C_in, H, W) -> targets (S, K, OH, OW) float32; the first epoch is a warm-up."""
    peer_ = get_peer(peer)
    return peer_.fitconv_epoch_seconds(inputs_nchw, targets_nchw, kernel_size, lr, epochs, seed)
