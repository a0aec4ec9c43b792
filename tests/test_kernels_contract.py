"""Every registered backend follows kernels/contract.py: the six functions with the protocol's
signatures, ctxs that are frozen dataclasses with a geometry, the max-pool argmax dtype rule,
outputs in the input's dtype, and warmup() only as the optional member it is."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

import kernels
from kernels import contract, geometry

BACKENDS = kernels.available_backends()
FUNCTIONS = [
    "conv2d_forward",
    "conv2d_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
]


def _protocol_parameters(name):
    params = list(inspect.signature(getattr(contract.Backend, name)).parameters.values())[1:]
    return [(p.name, p.default) for p in params]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_functions_have_the_protocols_signature(backend, function):
    module = kernels.get_backend(backend)
    assert callable(getattr(module, function, None)), f"{backend} lacks {function}"
    params = inspect.signature(getattr(module, function)).parameters.values()
    assert [(p.name, p.default) for p in params] == _protocol_parameters(function)


@pytest.mark.parametrize("backend", BACKENDS)
def test_warmup_is_optional_and_callable(backend):
    module = kernels.get_backend(backend)
    if hasattr(module, "warmup"):
        assert isinstance(module, contract.Warmup)
        params = inspect.signature(module.warmup).parameters
        assert list(params) == ["dtypes", "ops"]
        assert all(p.default is None for p in params.values())
        module.warmup([np.float32], ["maxpool2d"])  # a run's own dtype and ops only


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_conv_maxpool_is_optional_with_the_protocol_signature(backend):
    module = kernels.get_backend(backend)
    if not hasattr(module, "conv2d_maxpool2d_forward"):
        return
    assert isinstance(module, contract.ConvMaxPool)
    for name in ("conv2d_maxpool2d_forward", "conv2d_maxpool2d_backward"):
        params = inspect.signature(getattr(module, name)).parameters.values()
        protocol = inspect.signature(getattr(contract.ConvMaxPool, name)).parameters
        assert [(p.name, p.default) for p in params] == [
            (p.name, p.default) for p in list(protocol.values())[1:]
        ], name


def _assert_ctx(ctx, base, geometry_type):
    assert isinstance(ctx, base), f"ctx {type(ctx).__name__} is not a {base.__name__}"
    assert dataclasses.is_dataclass(ctx)
    assert isinstance(ctx.geometry, geometry_type)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.geometry = None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_ctxs_and_dtypes(backend, dtype):
    be = kernels.get_backend(backend)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 6, 3)).astype(dtype)
    w = rng.standard_normal((3, 3, 3, 4)).astype(dtype)
    b = np.zeros(4, dtype)
    y, ctx = be.conv2d_forward(x, w, b, stride=1, padding=1)
    _assert_ctx(ctx, contract.ConvCtx, geometry.ConvGeometry)
    for out in (y, *be.conv2d_backward(np.ones_like(y), ctx)):
        assert out.dtype == dtype
    y, ctx = be.maxpool2d_forward(x, 2)
    _assert_ctx(ctx, contract.MaxPoolCtx, geometry.PoolGeometry)
    assert ctx.argmax.shape == y.shape and ctx.argmax.dtype == np.uint8
    assert y.dtype == be.maxpool2d_backward(np.ones_like(y), ctx).dtype == dtype
    y, ctx = be.avgpool2d_forward(x, 2)
    _assert_ctx(ctx, contract.PoolCtx, geometry.PoolGeometry)
    assert y.dtype == be.avgpool2d_backward(np.ones_like(y), ctx).dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_argmax_dtype_rule_for_large_windows(backend):
    """Windows of more than 255 elements need an intp argmax (geometry.argmax_dtype)."""
    be = kernels.get_backend(backend)
    x = np.random.default_rng(1).standard_normal((1, 16, 16, 2))
    y, ctx = be.maxpool2d_forward(x, 16)
    assert ctx.argmax.dtype == geometry.argmax_dtype(16, 16) == np.intp
    assert int(ctx.argmax[0, 0, 0, 0]) == int(np.argmax(x[0, :, :, 0]))


def test_no_backend_imports_another():
    """A backend module's source names no other backend module (shared code: geometry, windows)."""
    modules = {"naive", "einsum", "im2col", "numba_jit", "winograd", "auto"}
    for module in modules:
        source = inspect.getsource(__import__(f"kernels.{module}", fromlist=["_"]))
        for other in modules - {module}:
            assert f"from .{other} import" not in source and f"kernels.{other}" not in source, (
                f"kernels/{module}.py imports kernels/{other}.py"
            )
