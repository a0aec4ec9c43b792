"""The passes bench.conv times, for one problem, per implementation: our backends, PyTorch and
TensorFlow, each as the same four callables and their results for the correctness check.

    ops = backend_ops("numba", problem, data)     # or torch_ops(...), tensorflow_ops(...)
    ops.passes["fwd"]()        # forward: y
    ops.passes["bwd_w"]()      # backward-weights: dw and db (ours: need_dx=False)
    ops.passes["bwd"]()        # full backward: dx, dw and db
    ops.passes["fwd_bwd"]()    # forward then full backward, as a training step runs them
    ops.outputs                # {"y", "dx", "dw", "db"}: NHWC / HWIO arrays to check
    ops.algorithm              # what ran ("direct", "winograd F(4x4)", ...), sets the tolerance
    ops.config                 # the configuration chosen (PyTorch: its faster memory layout)

A problem an implementation cannot run raises Unsupported with a one-line reason.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .conv_check import algorithm
from .problems import Problem

PASSES = ("fwd", "bwd_w", "bwd", "fwd_bwd")
PEERS = ("torch", "tensorflow")


class Unsupported(Exception):
    """The implementation cannot run this problem; str() is the reason, one line."""


@dataclass
class Ops:
    passes: dict[str, Callable[[], object]]
    outputs: dict[str, np.ndarray | None]
    algorithm: str = "direct"
    config: str = ""
    extra: dict = field(default_factory=dict)


def _conv_kwargs(name: str, forward: Callable, problem: Problem) -> dict:
    """stride and padding, plus groups and dilation when the problem has them and the backend's
    conv2d_forward takes them (Unsupported otherwise)."""
    kwargs: dict = {"stride": (problem.sh, problem.sw), "padding": (problem.ph, problem.pw)}
    params = inspect.signature(forward).parameters
    if problem.g != 1:
        if "groups" not in params:
            raise Unsupported(f"{name} has no grouped convolution (g={problem.g})")
        kwargs["groups"] = problem.g
    if problem.dilation != (1, 1):
        if "dilation" not in params:
            raise Unsupported(f"{name} has no dilated convolution (dh={problem.dh})")
        kwargs["dilation"] = problem.dilation
    return kwargs


def backend_ops(name: str, problem: Problem, data: dict[str, np.ndarray]) -> Ops:
    """One of our backends (kernels.get_backend(name)) on the problem's inputs."""
    from kernels import get_backend

    be = get_backend(name)
    kwargs = _conv_kwargs(name, be.conv2d_forward, problem)
    x, w, b, dy = data["x"], data["w"], data["b"], data["dy"]
    try:
        y, ctx = be.conv2d_forward(x, w, b, **kwargs)
    except NotImplementedError as err:
        raise Unsupported(f"{name}: {err}") from None
    dx, dw, db = be.conv2d_backward(dy, ctx)

    def fwd_bwd():
        y, ctx = be.conv2d_forward(x, w, b, **kwargs)
        return be.conv2d_backward(dy, ctx)

    return Ops(
        passes={
            "fwd": lambda: be.conv2d_forward(x, w, b, **kwargs),
            "bwd_w": lambda: be.conv2d_backward(dy, ctx, need_dx=False),
            "bwd": lambda: be.conv2d_backward(dy, ctx),
            "fwd_bwd": fwd_bwd,
        },
        outputs={"y": y, "dx": dx, "dw": dw, "db": db},
        algorithm=algorithm(ctx),
        config=_path(ctx),
    )


def _path(ctx: object) -> str:
    """The path a conv ctx records (winograd's `path`, auto's chosen backend), "" if none."""
    parts = []
    while ctx is not None and len(parts) < 4:
        for attr in ("backend", "path"):
            if isinstance(getattr(ctx, attr, None), str) and getattr(ctx, attr):
                parts.append(getattr(ctx, attr))
        ctx = getattr(ctx, "inner", None)
    return " > ".join(parts)


def torch_ops(problem: Problem, data: dict[str, np.ndarray], timer: Callable) -> Ops:
    """PyTorch at its best: F.conv2d in NCHW-contiguous and in channels_last, the faster (by
    `timer(fn) -> seconds` on a forward+backward) timed; all cores (torch.set_num_threads)."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        raise Unsupported("PyTorch is not installed") from None
    torch.set_num_threads(os.cpu_count() or 1)
    p = problem
    nchw = {
        "x": torch.from_numpy(np.ascontiguousarray(data["x"].transpose(0, 3, 1, 2))),
        "w": torch.from_numpy(np.ascontiguousarray(data["w"].transpose(3, 2, 0, 1))),
        "dy": torch.from_numpy(np.ascontiguousarray(data["dy"].transpose(0, 3, 1, 2))),
    }
    b = torch.from_numpy(data["b"]).requires_grad_(True)
    layouts = {}
    for layout, fmt in (("contiguous", torch.contiguous_format), ("channels_last", None)):
        fmt = fmt or torch.channels_last
        x = nchw["x"].contiguous(memory_format=fmt).requires_grad_(True)
        w = nchw["w"].contiguous(memory_format=fmt).requires_grad_(True)
        dy = nchw["dy"].contiguous(memory_format=fmt)
        layouts[layout] = _torch_passes(torch, F, p, x, w, b, dy)
    seconds = {layout: timer(ops.passes["fwd_bwd"]) for layout, ops in layouts.items()}
    best = min(seconds, key=lambda k: seconds[k])
    ops = layouts[best]
    ops.config = best
    ops.extra = {"layout_seconds": seconds}
    return ops


def _torch_passes(torch, F, p: Problem, x, w, b, dy) -> Ops:
    def conv():
        return F.conv2d(x, w, b, (p.sh, p.sw), (p.ph, p.pw), p.dilation, p.g)

    y = conv()

    def fwd():
        with torch.no_grad():
            return conv()

    def fwd_bwd():
        return torch.autograd.grad(conv(), (x, w, b), dy)

    dx, dw, db = torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)
    return Ops(
        passes={
            "fwd": fwd,
            "bwd_w": lambda: torch.autograd.grad(y, (w, b), dy, retain_graph=True),
            "bwd": lambda: torch.autograd.grad(y, (x, w, b), dy, retain_graph=True),
            "fwd_bwd": fwd_bwd,
        },
        outputs={
            "y": y.detach().numpy().transpose(0, 2, 3, 1),
            "dx": dx.numpy().transpose(0, 2, 3, 1),
            "dw": dw.numpy().transpose(2, 3, 1, 0),
            "db": db.numpy(),
        },
    )


def tensorflow_ops(problem: Problem, data: dict[str, np.ndarray]) -> Ops:
    """TensorFlow's NHWC conv2d and its two backprop ops, run eagerly, all cores."""
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
    except ImportError:
        raise Unsupported("TensorFlow is not installed") from None
    p = problem
    x, w, b, dy = (tf.constant(data[k]) for k in ("x", "w", "b", "dy"))
    strides = [1, p.sh, p.sw, 1]
    padding = [[0, 0], [p.ph, p.ph], [p.pw, p.pw], [0, 0]]
    dilations = [1, p.dilation[0], p.dilation[1], 1]

    def fwd():
        return tf.nn.bias_add(tf.nn.conv2d(x, w, strides, padding, dilations=dilations), b)

    def bwd_w():
        dw = tf.raw_ops.Conv2DBackpropFilter(
            input=x,
            filter_sizes=w.shape,
            out_backprop=dy,
            strides=strides,
            padding="EXPLICIT",
            explicit_paddings=sum(padding, []),
            dilations=dilations,
        )
        return dw, tf.reduce_sum(dy, axis=(0, 1, 2))

    def bwd():
        dx = tf.raw_ops.Conv2DBackpropInput(
            input_sizes=x.shape,
            filter=w,
            out_backprop=dy,
            strides=strides,
            padding="EXPLICIT",
            explicit_paddings=sum(padding, []),
            dilations=dilations,
        )
        return (dx, *bwd_w())

    def fwd_bwd():
        fwd()
        return bwd()

    try:
        y = fwd()
        dx, dw, db = bwd()
    except Exception as err:  # e.g. grouped convolutions on a CPU build without them
        text = re.sub(r"\{\{.*?\}\}\s*", "", str(err)).strip()  # drop TF's node prefix
        reason = text.splitlines()[0] if text else type(err).__name__
        raise Unsupported(f"TensorFlow: {reason[:120]}") from None
    return Ops(
        passes={"fwd": fwd, "bwd_w": bwd_w, "bwd": bwd, "fwd_bwd": fwd_bwd},
        outputs={"y": y.numpy(), "dx": dx.numpy(), "dw": dw.numpy(), "db": db.numpy()},
    )
