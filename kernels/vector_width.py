"""full_width(): compile the calling numba kernel for the CPU's full vector width.

LLVM tunes some AVX-512 CPUs (Intel's server cores among them) to prefer 256-bit vectors: its
vectorisers then emit ymm code, and 512-bit vector types are split in two, so a register tile
sized for AVX-512's 32 zmm registers runs as twice as many ymm operations (the `mid` benchmark
case's forward, kernels/numba_tiles.forward: mostly ymm code without this, zmm with it, and
faster). numba has only a process-wide switch for it (NUMBA_CPU_FEATURES), which would also
change every other numba function of the user's process.

A kernel that calls full_width() in its body gets LLVM's per-function attributes
"prefer-vector-width" and "min-legal-vector-width" set to isa.vector_bits(), which override
that tuning for this function alone. Below 512 bits it is a no-op (AVX2's 256 bits are what
LLVM prefers anyway). An inline="always" function that calls it marks the kernel it is inlined
into.
"""

from __future__ import annotations

from typing import Any

from numba import types
from numba.extending import intrinsic

from . import isa

# LLVM string attributes, written into the function's IR as they are.
_ATTRIBUTES = ("prefer-vector-width", "min-legal-vector-width")


def _full_width_typing(typingctx):
    bits = isa.vector_bits()

    def codegen(context, builder, signature, args):
        if bits >= 512:
            attributes = builder.function.attributes
            for name in _ATTRIBUTES:
                # llvmlite's FunctionAttributes.add() accepts only LLVM's named (enum)
                # attributes; a string attribute goes into the underlying set, which llvmlite
                # prints verbatim into the function's definition.
                set.add(attributes, f'"{name}"="{bits}"')
        return context.get_dummy_value()

    return types.none(), codegen


full_width: Any = intrinsic(_full_width_typing)
