"""kernels.vector_width.full_width: a kernel that calls it is compiled for the CPU's full vector
width (zmm registers on AVX-512, where LLVM's tuning would otherwise prefer ymm)."""

import re

import numpy as np
from numba import njit

from kernels import isa
from kernels.vector_width import full_width


def _axpy():
    # A fresh function per test: numba's on-disk cache would hide the assembly.
    @njit(fastmath={"contract"})
    def axpy(a, x, y):
        full_width()
        for i in range(x.shape[0]):
            y[i] += a * x[i]

    return axpy


def test_results_are_unchanged():
    axpy = _axpy()
    x, y = np.arange(100, dtype=np.float32), np.ones(100, np.float32)
    axpy(np.float32(2), x, y)
    np.testing.assert_array_equal(y, 1 + 2 * np.arange(100, dtype=np.float32))


def test_the_function_is_marked_for_the_hosts_vector_width():
    axpy = _axpy()
    axpy(np.float64(1), np.zeros(64), np.zeros(64))
    llvm = "".join(axpy.inspect_llvm().values())
    marked = '"prefer-vector-width"="512"' in llvm and '"min-legal-vector-width"="512"' in llvm
    assert marked == (isa.vector_bits() >= 512)


def test_avx512_hosts_get_zmm_code():
    axpy = _axpy()
    axpy(np.float32(1), np.zeros(64, np.float32), np.zeros(64, np.float32))
    asm = "".join(axpy.inspect_asm().values())
    assert bool(re.search(r"%zmm\d", asm)) == (isa.vector_bits() >= 512)
