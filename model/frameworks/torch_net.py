"""A convbench Sequential as a torch.nn.Sequential with the same weights, trained by torch.

Layouts: our activations are NHWC and conv weights HWIO; torch's are NCHW and OIHW. Conv weights
are transposed on the way in and out; our Flatten flattens in NHWC order, so its torch version
permutes to NHWC first and the Dense weights after it need no reordering.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kernels.geometry import conv_geometry

from .. import layers as L

THREADS = 2


class FlattenNHWC(nn.Module):
    """(N, C, H, W) -> (N, H*W*C) in our Flatten's (NHWC) order."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


class SamePaddedConv2d(nn.Conv2d):
    """nn.Conv2d with TensorFlow's padding="same" where it pads unevenly (an even kernel span or
    a stride): the rows and columns each input needs, from kernels.geometry (the one copy of
    that rule), the odd one at the bottom/right; torch's own padding="same" is stride 1 only."""

    def forward(self, x):
        n, c, h, w = x.shape
        probe = np.broadcast_to(np.zeros((), np.float32), (1, h, w, c))
        kernel = np.broadcast_to(
            np.zeros((), np.float32), (*self.kernel_size, c // self.groups, self.out_channels)
        )
        g = conv_geometry(probe, kernel, None, self.stride, "same", self.dilation, self.groups)
        return super().forward(nn.functional.pad(x, (g.pw, g.pw_end, g.ph, g.ph_end)))


def _conv(layer) -> nn.Conv2d:
    """The torch module of our Conv2D: explicit padding as torch's, "same" by SamePaddedConv2d."""
    pad = layer.padding
    uneven = isinstance(pad, str) and pad == "same"
    options = dict(
        stride=_pair(layer.stride),
        dilation=_pair(layer.dilation),
        groups=layer.groups,
        bias="b" in layer.params,
    )
    if uneven:
        cls, padding = SamePaddedConv2d, (0, 0)
    else:
        cls, padding = nn.Conv2d, (0, 0) if pad == "valid" else _pair(pad)
    return cls(layer.in_channels, layer.out_channels, layer.kernel_size, padding=padding, **options)


def _pool(layer) -> nn.Module:
    stride = layer.size if layer.stride is None else layer.stride
    options = dict(stride=_pair(stride), padding=_pair(layer.padding), ceil_mode=layer.ceil_mode)
    if isinstance(layer, L.MaxPool2D):
        return nn.MaxPool2d(_pair(layer.size), **options)
    return nn.AvgPool2d(_pair(layer.size), count_include_pad=layer.count_include_pad, **options)


def translate(net) -> nn.Sequential:
    """Modules with net's current weights and buffers (its dtype), in net's order."""
    modules, flat = [], False
    for layer in net.layers:
        if isinstance(layer, L.Conv2D):
            m = _conv(layer)
        elif isinstance(layer, L.BatchNorm):
            cls = nn.BatchNorm1d if flat else nn.BatchNorm2d
            m = cls(layer.num_features, eps=layer.eps, momentum=1 - layer.momentum)
        elif isinstance(layer, (L.MaxPool2D, L.AvgPool2D)):
            m = _pool(layer)
        elif isinstance(layer, L.ReLU):
            m = nn.ReLU()
        elif isinstance(layer, L.Flatten):
            m, flat = FlattenNHWC(), True
        elif isinstance(layer, L.Dropout):
            m = nn.Dropout(layer.rate)
        elif isinstance(layer, L.Dense):
            m = nn.Linear(layer.in_features, layer.out_features)
        else:
            raise ValueError(f"--framework torch: no torch version of {type(layer).__name__}")
        modules.append(m)
    model = nn.Sequential(*modules).to(torch.float64 if net.dtype == np.float64 else torch.float32)
    _copy(net, model, into_torch=True)
    return model


def _pairs(net, model):
    """(our array store, key, torch tensor, to-torch layout, from-torch layout) per array."""
    same = (lambda a: a, lambda a: a)
    for layer, m in zip(net.layers, model):
        if isinstance(layer, L.Conv2D):
            yield (
                layer.params,
                "w",
                m.weight,
                (lambda a: a.transpose(3, 2, 0, 1), lambda a: a.transpose(2, 3, 1, 0)),
            )
            if "b" in layer.params:
                yield layer.params, "b", m.bias, same
        elif isinstance(layer, L.Dense):
            yield layer.params, "w", m.weight, (lambda a: a.T, lambda a: a.T)
            yield layer.params, "b", m.bias, same
        elif isinstance(layer, L.BatchNorm):
            yield layer.params, "gamma", m.weight, same
            yield layer.params, "beta", m.bias, same
            yield layer.buffers, "running_mean", m.running_mean, same
            yield layer.buffers, "running_var", m.running_var, same


def _copy(net, model, into_torch: bool) -> None:
    with torch.no_grad():
        for store, key, tensor, (to_torch, from_torch) in _pairs(net, model):
            if into_torch:
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(to_torch(store[key]))))
            else:
                store[key] = np.ascontiguousarray(from_torch(tensor.detach().numpy())).astype(
                    net.dtype
                )


def _nchw(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


class Model:
    """net translated to torch, with the optimizer named by ours (sgd, momentum, adam)."""

    def __init__(self, net, optimizer, seed: int):
        torch.manual_seed(seed)
        torch.set_num_threads(THREADS)
        self.model = translate(net)
        params = self.model.parameters()
        if optimizer.name == "adam":
            self.opt = torch.optim.Adam(
                params, lr=optimizer.lr, betas=(optimizer.beta1, optimizer.beta2), eps=optimizer.eps
            )
        else:
            momentum = getattr(optimizer, "momentum", 0.0)
            self.opt = torch.optim.SGD(params, lr=optimizer.lr, momentum=momentum)

    def step(self, xb, yb, lr: float) -> tuple[float, int]:
        """One update on xb (B, 28, 28, 1), yb (B,) labels at learning rate lr."""
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.model.train()
        logits = self.model(_nchw(xb))
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(np.asarray(yb, np.int64)))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        correct = int((logits.argmax(1).numpy() == yb).sum())
        return float(loss.item()), correct

    def evaluate(self, x, y, batch_size: int = 1000) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) in eval mode (running statistics, no dropout)."""
        self.model.eval()
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                logits = self.model(_nchw(x[i : i + batch_size]))
                yb = torch.from_numpy(np.asarray(y[i : i + batch_size], np.int64))
                loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
                correct += int((logits.argmax(1) == yb).sum())
        return loss_sum / len(x), correct / len(x)

    def copy_back(self, net) -> None:
        _copy(net, self.model, into_torch=False)
