"""The timed bodies of the layer benchmarks: one case on one backend, forward or backward.

    >>> ops = layer_ops("im2col", get_case("seed_conv"))
    >>> ops["forward"](); ops["backward"](); ops["forward_backward"]()

Inputs, and the forward context the backward pass needs, are built here, outside the timed calls.
Backward times dx + dw + db for conv (need_dx=True everywhere, like the peers' autograd).
"""

from __future__ import annotations

import numpy as np

from kernels import get_backend

from .cases import Case


def layer_ops(backend: str, case: Case, dtype=np.float32) -> dict:
    """backend name, case -> {"forward", "backward", "forward_backward"}: zero-argument callables."""
    be = get_backend(backend)
    x, w, b = case.make_inputs(dtype)
    if case.kind == "pool":

        def forward():
            return be.maxpool2d_forward(x, case.k)

        y, ctx = forward()
        dy = np.ones_like(y)

        def backward():
            return be.maxpool2d_backward(dy, ctx)

        def forward_backward():
            y_, ctx_ = be.maxpool2d_forward(x, case.k)
            return be.maxpool2d_backward(dy, ctx_)
    else:

        def forward():
            return be.conv2d_forward(x, w, b, case.stride, case.padding)

        y, ctx = forward()
        dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)

        def backward():
            return be.conv2d_backward(dy, ctx)

        def forward_backward():
            y_, ctx_ = be.conv2d_forward(x, w, b, case.stride, case.padding)
            return be.conv2d_backward(dy, ctx_)

    return {"forward": forward, "backward": backward, "forward_backward": forward_backward}


def warm_up_backend(backend: str) -> None:
    """Compile everything a JIT backend needs before timing (a no-op for the numpy backends)."""
    module = get_backend(backend)
    if hasattr(module, "warmup"):
        module.warmup()
