"""The network: an ordered list of layers with forward, backward, update, evaluate, predict, save.

    net = build_network("small", backend="im2col", dtype=np.float32, seed=0)
    logits = net.forward(x)                       # x: (N, 28, 28, 1) -> (N, 10)
    loss, correct = net.train_step(xb, yb, opt)   # one mini-batch: forward, backward, update
    net.train(x, y, epochs=3, optimizer=opt)      # epochs of mini-batches (model.training.fit)
    net.save("ckpt.npz"); net = load_network("ckpt.npz")

Checkpoints are `.npz` files holding every parameter, buffer and optimizer slot as arrays plus one
JSON string of metadata (architecture, backend, dtype, seed, epoch, generator state, history...),
so they load with `allow_pickle=False` and are written atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from .atomic import write_atomically
from .layers import pair_kind
from .losses import NonFiniteLoss, class_indices, softmax, softmax_cross_entropy
from .npyfiles import not_an_npz
from .optim import OPTIMIZERS, Optimizer
from .spec import build_layers, parse_spec, spec_of
from .training import fit

# The named architectures: aliases for specs (model/spec.py). small: He-normal weights and zero
# biases, with which its defaults (SGD with momentum at 0.05, the 20-step warmup) are tuned; from
# PyTorch's smaller default weights (the spec's init=uniform) it starts more slowly on 2,000
# images over 2 epochs (`--train-limit 2000 --epochs 2`) and ends the full 3-epoch run the same.
# deep: no conv bias before BatchNorm (BN's shift makes it redundant), PyTorch's default
# initialisation: from He's weights, sqrt(6)x larger, Adam turns the BN-normalised conv weights
# more slowly (reports/parity/README.md). Both pool before the ReLU: the two commute (max of
# ReLUs = ReLU of the max, and where a window's maximum is <= 0 both give zero gradient), and the
# ReLU then touches 4x fewer values.
ARCHITECTURES = {
    "small": "conv(16,3,pad=1,init=he),maxpool(2),relu,flatten,dense(128,init=he),relu,"
    "dense(10,init=he)",
    "deep": "conv(32,3,pad=1,bias=false),bn,maxpool(2),relu,conv(64,3,pad=1,bias=false),bn,"
    "maxpool(2),relu,flatten,dense(128),relu,dropout(0.5),dense(10)",
}
# Names architectures had in older checkpoints; accepted when reading one, nowhere else.
LEGACY_ARCHITECTURES = {"seed": "small"}
# Backends that split their own work over the cores (see Sequential._inference_blas).
SELF_THREADED_BACKENDS = frozenset({"numba", "winograd", "auto"})
DTYPES = {"float32": np.float32, "float64": np.float64}


def spec_text(arch: str) -> str:
    """The spec of a named architecture, or `arch` itself when it is a valid spec; otherwise a
    ValueError naming the offending token (or, for a lone unknown word, the named ones)."""
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch]
    try:
        parse_spec(arch)
    except ValueError as exc:
        if isinstance(arch, str) and re.fullmatch(r"\s*[A-Za-z_]+\s*", arch):
            raise ValueError(
                f"unknown architecture {arch.strip()!r}; choose one of "
                f"{', '.join(ARCHITECTURES)} or write a layer spec (model/spec.py)"
            ) from None
        raise exc from None
    return arch


def resolve_dtype(dtype) -> np.dtype:
    """'float32' / 'float64' / a numpy float dtype -> np.dtype; anything else is a clear error."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def build_network(arch="small", backend="im2col", dtype=np.float32, seed=0) -> Sequential:
    """A network for (N, 28, 28, 1) inputs and 10 classes: `arch` is a named architecture
    (ARCHITECTURES: "small", "deep") or a layer spec (model/spec.py), e.g.
    "conv(8,3),maxpool(2),relu,flatten,dense(10)".

    small: Conv(1->16, 3x3) -> MaxPool 2 -> ReLU -> Dense(3136->128) -> ReLU -> Dense(10),
    He-normal weights and zero biases.
    deep: two Conv -> BatchNorm -> MaxPool -> ReLU blocks (32, 64 channels), Dense(3136->128),
    ReLU, Dropout(0.5), Dense(10), initialised as PyTorch initialises nn.Conv2d and nn.Linear
    (weights and biases U(+-1/sqrt(fan_in))).

    All random draws (initialisation, dropout, and the trainer's shuffling and augmentation)
    come from one generator seeded with `seed`.
    """
    dtype = resolve_dtype(dtype)
    specs = parse_spec(spec_text(arch))
    rng = np.random.default_rng(seed)
    net = Sequential(build_layers(specs, backend, dtype, rng), dtype=dtype, rng=rng)
    net.meta.update(arch=arch, backend=backend, dtype=dtype.name, seed=seed)
    return net


class Sequential:
    """Layers applied in order. x: (N, H, W, C) of `dtype` -> logits (N, classes)."""

    def __init__(self, layers, dtype=np.float32, rng=None):
        self.layers = list(layers)
        self.dtype = resolve_dtype(dtype)
        self.rng = np.random.default_rng() if rng is None else rng
        self.meta: dict = {}

    @property
    def spec(self) -> str:
        """The layer spec (model/spec.py) that rebuilds this network's layers."""
        return spec_of(self.layers)

    # ---- forward / backward / update -------------------------------------------------------
    def forward(self, x, training=False):
        """x: (N, 28, 28, 1) -> logits (N, 10). `training` switches dropout and batch statistics."""
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"input x must be 4-D (N, H, W, C), got shape {x.shape}")
        x = x.astype(self.dtype, copy=False)
        i = 0
        while i < len(self.layers):
            layer = self.layers[i]
            kind = pair_kind(layer, self.layers[i + 1]) if i + 1 < len(self.layers) else None
            if kind is not None:
                # Conv2D or BatchNorm + MaxPool2D, BatchNorm + ReLU, in one pass where it
                # applies (see their forward_maxpool, forward_relu); the same numbers as the
                # two calls
                y = getattr(layer, f"forward_{kind}")(x, self.layers[i + 1], training)
                if y is not None:
                    x, i = y, i + 2
                    continue
            x = layer.forward(x, training=training)
            i += 1
        return x

    def backward(self, dlogits):
        """dlogits: (N, 10) -> fills every layer's grads; returns dx, or None when the first
        layer was told not to compute it."""
        dy = dlogits
        i = len(self.layers) - 1
        while i >= 0 and dy is not None:
            layer = self.layers[i]
            kind = pair_kind(self.layers[i - 1], layer) if i > 0 else None
            if kind is not None:
                # the pair's backward in one call where its forward ran as one (see
                # backward_maxpool, backward_relu); the same numbers as the two calls
                fused, dx = getattr(self.layers[i - 1], f"backward_{kind}")(dy, layer)
                if fused:
                    dy, i = dx, i - 2
                    continue
            dy = layer.backward(dy)
            i -= 1
        return dy

    def parameters(self):
        """[(key, layer, name)] for every trainable array, keys like '0.w' (layer index.name)."""
        return [
            (f"{i}.{name}", layer, name)
            for i, layer in enumerate(self.layers)
            for name in layer.params
        ]

    def update(self, optimizer: Optimizer):
        """Apply one optimizer step with the gradients from the last backward."""
        optimizer.step(
            (key, layer.params[name], layer.grads[name], name not in layer.no_decay)
            for key, layer, name in self.parameters()
        )

    def train_step(self, xb, yb, optimizer: Optimizer, comm=None):
        """One mini-batch: forward (training mode), cross-entropy, backward, update.

        xb: (B, 28, 28, 1); yb: (B, 10) one-hot or (B,) labels. Returns (mean loss, number correct).
        Raises NonFiniteLoss, leaving the weights untouched, when the loss is NaN or infinite.
        comm: a model.distributed.Communicator: this rank computes its shard of the batch and the
        ranks sum their shares of the gradient (see there); the result is the whole batch's.
        """
        if comm is not None:
            return self._data_parallel_step(xb, yb, optimizer, comm)
        logits = self.forward(xb, training=True)
        loss, dlogits = softmax_cross_entropy(logits, yb)
        if not math.isfinite(loss):  # checked before the update: NaN never reaches weights
            raise NonFiniteLoss(loss)
        self.backward(dlogits)
        self.update(optimizer)
        return loss, int((logits.argmax(axis=1) == class_indices(yb)).sum())

    def _data_parallel_step(self, xb, yb, optimizer, comm):
        lo, hi = comm.shard(len(xb))
        for layer in self.layers:
            if hasattr(layer, "shard"):
                layer.shard = (lo, hi, len(xb))  # dropout draws the whole batch's mask
        loss, correct, error = 0.0, 0, False
        try:
            comm.test_failure(optimizer.t)
            logits = self.forward(xb[lo:hi], training=True)
            loss, dlogits = softmax_cross_entropy(logits, yb[lo:hi])
            # this rank's share of the global mean: its mean times its fraction of the batch
            self.backward(dlogits * dlogits.dtype.type((hi - lo) / len(xb)))
            correct = int((logits.argmax(axis=1) == class_indices(yb[lo:hi])).sum())
        except Exception as exc:  # the other ranks learn of it in the step's Allreduce
            error = True
            comm.report(exc)
        finally:
            for layer in self.layers:
                if hasattr(layer, "shard"):
                    layer.shard = None
        nonfinite = not error and not math.isfinite(loss)
        loss_sum, correct = comm.reduce_step(self, loss * (hi - lo), correct, nonfinite, error)
        self.update(optimizer)
        return loss_sum / len(xb), correct

    def train(self, x, y, epochs=1, optimizer=None, batch_size=64, **kwargs):
        """Epochs of shuffled mini-batches; see model.training.fit for every option."""
        return fit(self, x, y, epochs=epochs, optimizer=optimizer, batch_size=batch_size, **kwargs)

    # ---- inference -------------------------------------------------------------------------
    def _as_batch(self, x):
        """(x as (N, H, W, C), whether it was one image): accepts one image (H, W) or (H, W, C)
        and a batch (N, H, W, C)."""
        x = np.asarray(x)
        if x.ndim == 4:
            return x, False
        if x.ndim == 2:
            return x[np.newaxis, ..., np.newaxis], True
        if x.ndim == 3:
            first = self.layers[0] if self.layers else None
            channels = getattr(first, "in_channels", x.shape[-1])
            if x.shape[-1] != channels:
                raise ValueError(
                    f"x of shape {x.shape} reads as one (H, W, C) image with {x.shape[-1]} "
                    f"channels, but the network takes {channels}; pass a batch as "
                    f"(N, H, W, {channels})"
                )
            return x[np.newaxis], True
        raise ValueError(
            f"x must be one image (H, W) or (H, W, C), or a batch (N, H, W, C); got shape {x.shape}"
        )

    def _inference_blas(self):
        """The BLAS setting for evaluation passes: one thread when a layer's backend splits its
        own work over the cores (numba, winograd, auto; kernels/gemm.py), as training runs them.
        With two, OpenBLAS's idle worker spins between calls and takes a core from those
        kernels: `deep` with auto predicts markedly fewer images a second that way than on one
        BLAS thread (bench.compare's inference section runs prediction this way)."""
        names = {getattr(layer, "backend_name", None) for layer in self.layers}
        if names & SELF_THREADED_BACKENDS:
            return threadpool_limits(limits=1, user_api="blas")
        return contextlib.nullcontext()

    def _batched_logits(self, x, batch_size):
        with self._inference_blas():
            return np.concatenate(
                [self.forward(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
                or [np.empty((0, 10), self.dtype)]
            )

    def predict_proba(self, x, batch_size=1000):
        """Class probabilities, evaluation mode: a batch (N, 28, 28, 1) -> (N, 10); one image
        (28, 28) or (28, 28, 1) -> (10,)."""
        x, single = self._as_batch(x)
        probs = softmax(self._batched_logits(x, batch_size))
        return probs[0] if single else probs

    def predict(self, x, batch_size=1000):
        """Predicted labels: a batch (N, 28, 28, 1) -> (N,) int; one image (28, 28) or
        (28, 28, 1) -> an int."""
        x, single = self._as_batch(x)
        labels = self._batched_logits(x, batch_size).argmax(axis=1)
        return int(labels[0]) if single else labels

    def evaluate(self, x, y, batch_size=1000):
        """Mean cross-entropy and accuracy on (x, y), y one-hot (N, 10) or labels (N,)."""
        if len(x) == 0:
            raise ValueError("evaluate: x is empty")
        if len(x) != len(y):
            raise ValueError(f"evaluate: x has {len(x)} samples but y has {len(y)}")
        loss_sum, correct = 0.0, 0
        with self._inference_blas():
            for i in range(0, len(x), batch_size):
                logits = self.forward(x[i : i + batch_size])
                loss, _ = softmax_cross_entropy(logits, y[i : i + batch_size])
                loss_sum += loss * len(logits)
                labels = class_indices(y[i : i + batch_size])
                correct += int((logits.argmax(axis=1) == labels).sum())
        return loss_sum / len(x), correct / len(x)

    # ---- state and checkpoints -------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Every parameter ('param/0.w') and buffer ('buffer/1.running_mean') by name."""
        arrays = {f"param/{key}": layer.params[name] for key, layer, name in self.parameters()}
        for i, layer in enumerate(self.layers):
            arrays.update({f"buffer/{i}.{name}": a for name, a in layer.buffers.items()})
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]):
        """Copy arrays saved by state_arrays() into this network, checking names and shapes."""
        expected = self.state_arrays()
        missing = sorted(set(expected) - set(arrays))
        if missing:
            raise ValueError(f"checkpoint does not match this network: missing {missing[:4]}")
        for name, current in expected.items():
            if arrays[name].shape != current.shape:
                raise ValueError(
                    f"checkpoint array {name} has shape {arrays[name].shape}, "
                    f"this network expects {current.shape}"
                )
            kind, key = name.split("/", 1)
            index, attr = key.split(".", 1)
            store = getattr(self.layers[int(index)], "params" if kind == "param" else "buffers")
            store[attr] = arrays[name].astype(self.dtype)

    def save(self, path, optimizer: Optimizer | None = None, **meta):
        """Write an .npz checkpoint atomically (temp file + rename): a crash mid-write leaves the
        previous checkpoint intact. `meta` (JSON-able) is stored beside the network's own."""
        info = {
            **self.meta,
            **meta,
            "rng_state": self.rng.bit_generator.state,
            "layers": [repr(layer) for layer in self.layers],
            "spec": self.spec,
        }
        arrays = dict(self.state_arrays())
        if optimizer is not None:
            scalars, slots = optimizer.state_dict()
            info["optimizer"] = scalars
            arrays.update({f"optim/{name}": a for name, a in slots.items()})
        arrays["meta"] = np.array(json.dumps(info, default=_json_default))
        return write_atomically(path, lambda f: np.savez(f, **arrays))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in checkpoint metadata")


def read_checkpoint(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, arrays) from a checkpoint; any unreadable file is a ValueError naming it.

    A legacy architecture name (LEGACY_ARCHITECTURES) comes back as today's, in `arch` and in the
    saved CLI `args`, so a resumed run carries on under the current name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    problem = not_an_npz(path)
    if problem:
        raise ValueError(f"checkpoint {path} is not a readable convbench checkpoint: {problem}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as exc:
        raise ValueError(
            f"checkpoint {path} is not a readable convbench checkpoint "
            f"({type(exc).__name__}: {exc})"
        ) from None
    for info in (meta, meta.get("args") or {}):
        if info.get("arch") in LEGACY_ARCHITECTURES:
            info["arch"] = LEGACY_ARCHITECTURES[info["arch"]]
    return meta, arrays


def input_standardization(meta) -> tuple[float, float] | None:
    """The (mean, std) a network's inputs are standardised with, from its metadata, or None.

    `python -m model.train --standardize` stores them as meta["standardize"] = [mean, std]
    (None without --standardize); inputs are then (scale(x) - mean) / std.
    """
    value = (meta or {}).get("standardize")
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"checkpoint metadata standardize must be [mean, std], got {value!r}")
    mean, std = float(value[0]), float(value[1])
    if not std > 0:
        raise ValueError(f"checkpoint metadata standardize std must be > 0, got {std}")
    return mean, std


def load_network(path, backend=None, with_optimizer=False):
    """Rebuild the network saved at `path` (optionally on another backend).

    Returns the network (its `meta` holds the saved metadata), or (network, optimizer or None)
    with `with_optimizer=True`; the optimizer comes back with its slots and step count.
    """
    meta, arrays = read_checkpoint(path)
    arch = meta.get("spec") or meta.get("arch")
    if not isinstance(arch, str):
        raise ValueError(f"checkpoint {path} records no architecture (no spec, arch={arch!r})")
    try:
        spec_text(arch)
    except ValueError as exc:
        raise ValueError(f"checkpoint {path}: {exc}") from None
    net = build_network(
        arch,
        backend=backend or meta.get("backend", "im2col"),
        dtype=meta.get("dtype", "float32"),
        seed=meta.get("seed", 0),
    )
    net.load_state_arrays({k: v for k, v in arrays.items() if not k.startswith("optim/")})
    if "rng_state" in meta:
        net.rng.bit_generator.state = meta["rng_state"]
    net.meta.update({k: v for k, v in meta.items() if k not in ("rng_state", "layers", "spec")})
    if backend:
        net.meta["backend"] = backend
    if not with_optimizer:
        return net
    optimizer = None
    if "optimizer" in meta:
        scalars = dict(meta["optimizer"])
        cls = OPTIMIZERS[scalars.pop("name")]
        t = scalars.pop("t", 0)
        optimizer = cls(**scalars)
        optimizer.load_state_dict(
            {"t": t}, {k[len("optim/") :]: v for k, v in arrays.items() if k.startswith("optim/")}
        )
    return net, optimizer
