"""Getting a compiling backend's kernels ready without making the user wait for them.

numba compiles each kernel on first use: a training run's kernels take tens of seconds with a cold
cache (the first run after an install or an edit of kernels/), well under a second when numba
loads them from its disk cache. `prepare_backend` asks the backend which case it faces
(kernels/jitcache.py):

- cached, or --compile wait: warmup() in this process, with a one-line message and its time;
- cold, --compile background (the default): a child process compiles into numba's disk cache while
  training starts at once on STAND_IN (im2col: no compilation, the same numbers to float32
  rounding); at the first layer call after the child has finished, this process loads the
  kernels from the cache and the layers move to the requested backend.

The move happens inside `CompilingBackend`, which the conv and pool layers use in place of the
backend: each forward goes to the backend in force at that moment, and each backward to the
backend that made its forward's ctx, so a step can straddle the move safely.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

import kernels
from kernels import get_backend

STAND_IN = "im2col"
COMPILE_MODES = ("background", "wait")

_LAYER_OPS = {"Conv2D": "conv2d", "MaxPool2D": "maxpool2d", "AvgPool2D": "avgpool2d"}


def kernel_ops(net) -> set[str]:
    """The kernel ops ("conv2d", "maxpool2d", "avgpool2d") the network's layers call."""
    return {
        _LAYER_OPS[type(layer).__name__]
        for layer in net.layers
        if type(layer).__name__ in _LAYER_OPS
    }


def _kernel_layers(net):
    return [layer for layer in net.layers if type(layer).__name__ in _LAYER_OPS]


class CompilingBackend:
    """A backend that runs `stand_in` until `child` (a process compiling `target`'s kernels into
    numba's disk cache) has exited, then `target` (after loading its kernels in this process).

    Implements the kernel contract's functions (kernels/contract.py) by delegation; `log(line)`
    reports the move (or a failed child, after which the kernels compile here)."""

    def __init__(self, target: str, stand_in: str, child, dtypes, ops, log: Callable):
        self.target_name, self.stand_in_name = target, stand_in
        self._target, self._stand_in = get_backend(target), get_backend(stand_in)
        self._child, self._dtypes, self._ops, self._log = child, dtypes, ops, log
        self._current = self._stand_in
        self._started = time.perf_counter()
        self._owner: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.ready_after: float | None = None  # seconds from start to the move

    @property
    def moved(self) -> bool:
        return self._current is self._target

    def _backend(self):
        if not self.moved and self._child.poll() is not None:
            self.finish()
        return self._current

    def finish(self, wait: bool = False) -> None:
        """Move to the target if the child is done (or, with `wait`, once it is)."""
        if self.moved:
            return
        if wait:
            self._child.wait()
        elif self._child.poll() is None:
            return
        failed = self._child.returncode != 0
        if failed:
            self._log(
                f"background compile of {self.target_name} kernels failed "
                f"({self._child.error()}); compiling here instead"
            )
        self._target.warmup(self._dtypes, self._ops)  # from the cache the child filled
        self._current = self._target
        self.ready_after = time.perf_counter() - self._started
        if not failed:
            self._log(
                f"{self.target_name} kernels ready after {self.ready_after:.1f} s "
                f"(compiled in the background); the layers now run on {self.target_name}"
            )

    def stop(self) -> None:
        """End the child if it still runs (an interrupted or failed run)."""
        self._child.terminate()

    def _forward(self, op: str, *args, **kwargs):
        backend = self._backend()
        y, ctx = getattr(backend, f"{op}_forward")(*args, **kwargs)
        self._owner[ctx] = backend
        return y, ctx

    def _backward(self, op: str, dy, ctx, **kwargs):
        return getattr(self._owner.pop(ctx), f"{op}_backward")(dy, ctx, **kwargs)

    def conv2d_forward(self, x, w, b=None, stride=1, padding=0):
        return self._forward("conv2d", x, w, b, stride=stride, padding=padding)

    def conv2d_backward(self, dy, ctx, need_dx=True):
        return self._backward("conv2d", dy, ctx, need_dx=need_dx)

    def maxpool2d_forward(self, x, size=2, stride=None):
        return self._forward("maxpool2d", x, size=size, stride=stride)

    def conv2d_maxpool2d_forward(self, x, w, b=None, stride=1, padding=0, size=2, pool_stride=None):
        """The current backend's fused Conv2D + MaxPool2D forward, or None where it has none
        (the stand-in) or it does not apply (model.layers.Conv2D.forward_maxpool)."""
        backend = self._backend()
        fused = getattr(backend, "conv2d_maxpool2d_forward", None)
        result = None if fused is None else fused(x, w, b, stride, padding, size, pool_stride)
        if result is not None:
            self._owner[result[1]] = self._owner[result[2]] = backend
        return result

    def conv2d_maxpool2d_backward(self, dy, conv_ctx, pool_ctx, need_dx=True):
        """The fused backward of the backend both forwards ran on, or None where it has none
        or it does not apply (model.layers.Conv2D.backward_maxpool)."""
        backend = self._owner.get(conv_ctx)
        fused = getattr(backend, "conv2d_maxpool2d_backward", None)
        if fused is None or self._owner.get(pool_ctx) is not backend:
            return None
        result = fused(dy, conv_ctx, pool_ctx, need_dx)
        if result is not None:
            del self._owner[conv_ctx], self._owner[pool_ctx]
        return result

    def maxpool2d_backward(self, dy, ctx):
        return self._backward("maxpool2d", dy, ctx)

    def avgpool2d_forward(self, x, size=2, stride=None):
        return self._forward("avgpool2d", x, size=size, stride=stride)

    def avgpool2d_backward(self, dy, ctx):
        return self._backward("avgpool2d", dy, ctx)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Called first in a child process: have the kernel send it SIGTERM when `parent` dies (a
    run killed with kill -9 cannot stop its compiling child itself, which would otherwise run
    on for the rest of its compile), and exit at once if `parent` is already gone. Linux only
    (prctl); elsewhere the child outlives a killed parent as before."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)


class _Child:
    """The compiling process, its output kept in a temporary file for the error message.
    `work`: the Python code it runs after die_with_parent (default: the backend's warmup)."""

    def __init__(self, backend: str, dtypes, ops, work: str | None = None):
        self._output = tempfile.TemporaryFile()
        if work is None:
            names = [np.dtype(d).name for d in dtypes]
            work = (
                "import numpy as np; from kernels import get_backend; "
                f"get_backend({backend!r}).warmup({names!r}, {sorted(ops)!r})"
            )
        code = f"from model.warmup import die_with_parent; die_with_parent({os.getpid()}); {work}"
        # cwd: where this process found `kernels`, so the child compiles the same sources
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=Path(kernels.__file__).resolve().parent.parent,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def poll(self):
        return self._proc.poll()

    def wait(self):
        return self._proc.wait()

    @property
    def returncode(self):
        return self._proc.returncode

    def terminate(self):
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait()

    def error(self) -> str:
        self._output.seek(0)
        lines = self._output.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {self._proc.returncode}"


def prepare_backend(
    net,
    backend: str,
    dtype,
    mode: str = "background",
    log: Callable = print,
    move_log: Callable = tqdm.write,
):
    """Get `backend`'s kernels for the network's ops in `dtype` ready (see the module docstring).
    `log` prints the opening lines (print's signature), `move_log(line)` the later one (it may
    come in the middle of an epoch's progress bar).

    Returns the CompilingBackend the layers now use while a child compiles, else None (the
    kernels are loaded, or the backend compiles nothing)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    module = get_backend(backend)
    warmup = getattr(module, "warmup", None)
    if warmup is None:
        return None
    dtypes, ops = [np.dtype(dtype)], sorted(kernel_ops(net))
    cached = getattr(module, "warmup_cached", lambda d, o: False)(dtypes, ops)
    if cached or mode == "wait":
        what = "loading" if cached else "compiling"
        log(f"{what} {backend} kernels{'' if cached else ' (first run only)'} ...", end=" ")
        start = time.perf_counter()
        warmup(dtypes, ops)
        log(f"{time.perf_counter() - start:.1f} s")
        return None
    log(
        f"compiling {backend} kernels in a background process (first run only); training "
        f"starts now on {STAND_IN} and moves to {backend} when they are ready "
        f"(--compile wait: compile first)"
    )
    proxy = CompilingBackend(backend, STAND_IN, _Child(backend, dtypes, ops), dtypes, ops, move_log)
    for layer in _kernel_layers(net):
        layer.use_backend(proxy, backend)
    return proxy
