"""Optimizer updates compiled into one pass over each parameter (model/optim.py calls them).

NumPy's form of an Adam step makes about ten passes over every parameter, each allocating a
temporary, a visible part of the `deep` network's step with its 0.42 M parameters
(bench.compare's breakdown section, "optimizer update"). Fused, each element is read and written
once.

The arithmetic is NumPy's, in the same order and the parameter's dtype, with no fastmath (so no
fused multiply-adds): the results are bit-identical to model/optim.py's NumPy path, which the
tests check. Arrays are flat (ravel of C-contiguous parameters and their state).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import jitcache


@njit(cache=True)
def momentum(p, g, velocity, mu, lr):
    """velocity = mu * velocity + g; p -= lr * velocity. p, g, velocity: (n,); mu, lr: scalars
    of p's dtype."""
    for i in range(p.shape[0]):
        v = velocity[i] * mu + g[i]
        velocity[i] = v
        p[i] -= lr * v


# error_model="numpy": a float division by zero gives inf/NaN as in NumPy; numba's default
# ("python") tests every divisor to raise ZeroDivisionError, and the branch stops LLVM from
# vectorising the loop (several times slower on the `deep` update).
@njit(cache=True, error_model="numpy")
def adam(p, g, m, v, beta1, one_minus_beta1, beta2, one_minus_beta2, step, inv_sqrt_bc2, eps):
    """m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= step * m / (sqrt(v) inv_sqrt_bc2
    + eps). All (n,) arrays and scalars of p's dtype (model.optim.Adam explains the form)."""
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i] * beta1 + one_minus_beta1 * gi
        vi = v[i] * beta2 + one_minus_beta2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] -= step * mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps)


def warmup(dtypes=(np.float32, np.float64)) -> None:
    """Compile (or load from numba's disk cache) both updates for `dtypes`."""
    for dtype in dtypes:
        a = np.zeros(1, dtype)
        s = dtype(0.5)
        momentum(a, a.copy(), a.copy(), s, s)
        adam(a, a.copy(), a.copy(), a.copy(), s, s, s, s, s, s, s)
    jitcache.mark_cached(adam, (__file__,), tuple(dtypes), ("update",))


def cached(dtypes=(np.float32, np.float64)) -> bool:
    """True when warmup(dtypes) will load from numba's disk cache rather than compile."""
    return jitcache.is_cached(adam, (__file__,), tuple(dtypes), ("update",))
