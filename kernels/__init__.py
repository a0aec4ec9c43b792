"""Conv2d and pooling kernels, forward and backward, behind one interface and several backends.

    >>> from kernels import get_backend, available_backends
    >>> be = get_backend("im2col")
    >>> y, ctx = be.conv2d_forward(x, w, b, stride=1, padding=0)
    >>> dx, dw, db = be.conv2d_backward(dy, ctx)

Every backend is a module with the same functions (see kernels/naive.py for the reference).
Backends are imported on first use, so `import kernels` never pays for numba's import.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# name -> (module, third-party package it needs or None)
_BACKENDS = {
    "naive": ("kernels.naive", None),
    "einsum": ("kernels.einsum", None),
    "im2col": ("kernels.im2col", None),
    "numba": ("kernels.numba_jit", "numba"),
}

BACKEND_NAMES = tuple(_BACKENDS)


def available_backends() -> list[str]:
    """Names of the backends that can be used on this machine, reference first."""
    return [
        name
        for name, (_, needs) in _BACKENDS.items()
        if needs is None or importlib.util.find_spec(needs) is not None
    ]


def get_backend(name: str) -> ModuleType:
    """Return the backend module called `name` (e.g. "im2col")."""
    if name not in _BACKENDS:
        raise ValueError(
            f"unknown backend {name!r}; available backends: {', '.join(available_backends())}"
        )
    module, needs = _BACKENDS[name]
    if needs is not None and importlib.util.find_spec(needs) is None:
        raise ImportError(
            f"backend {name!r} needs the package {needs!r}, which is not installed "
            f"(pip install {needs}); available: {', '.join(available_backends())}"
        )
    return importlib.import_module(module)
