"""Arrays reused from call to call, per shape, so a steady-state call allocates none.

A backend's large arrays (im2col's column matrix and its gradient, the zero-padded input, the
per-thread partial sums of a split reduction, and the y and dx it returns) have the same shapes
on every call of a layer. Allocated afresh, a multi-megabyte array is mapped by glibc on
allocation and returned to the kernel on free unless the process tunes malloc
(kernels.memory.keep_freed_memory, which bench.conv's worker processes do not call), and every
page then faults and is zeroed again on its first touch (the faults cost several times the
arithmetic of a forward + backward of ResNet-50's 1x1 res2a_branch2a: `python -m bench.conv
--set resnet50 --layers res2a_branch2a`). Taken from here, the memory stays in the process without any
process-wide malloc setting:

    cols = workspace.take("im2col.cols", (rows, width), np.float32)

Ownership: take() hands out only an array that nobody holds any more. Each pooled buffer's
array is created over an anonymous mapping the workspace keeps (np.ndarray(buffer=...)), and
numpy makes every view of that array keep it alive (a view's base is the array, not the
mapping), so
the workspace's weak reference to it dies exactly when the caller and every view of it are gone.
A ctx may therefore keep a taken array for the backward: the next forward of the same shape (a
second layer of that shape in the network) finds the buffer still held and takes another one.
The same rule makes a result (y, dx) taken from here the caller's own: no later call writes
into it while the caller, or any view of it, still holds it.

Bounds: at most MAX_SHAPES keys (least recently used evicted first) holding at most
MAX_PER_SHAPE buffers each, and at most LIMIT_BYTES in all (`set_limit` changes it; 0 turns the
workspace off). A request beyond them gets a plain np.empty. An evicted buffer that is still
held stays valid: it belongs to its holder until released, then to the garbage collector.
Thread safety: one lock around the bookkeeping; the arrays themselves are the caller's until
dropped.
"""

from __future__ import annotations

import math
import mmap
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

# a network's distinct conv shapes (ResNet-50 has about twenty) times the roles of a layer's
# arrays (columns, padded input, y, dx); LIMIT_BYTES bounds the memory
MAX_SHAPES = 128
MAX_PER_SHAPE = 4
# retained bytes in all: a few of ResNet-50's largest column matrices at batch 8 (3x3 over
# 56x56x64, `bench.conv --set resnet50 --layers res2a_branch2b`)
LIMIT_BYTES = 512 << 20
# numpy's threshold for advising huge pages on an array (its hugepage madvise)
HUGE_PAGE_BYTES = 4 << 20

_lock = threading.Lock()
_pool: OrderedDict[tuple, list[_Slot]] = OrderedDict()
_limit = LIMIT_BYTES


@dataclass
class _Slot:
    # an anonymous mapping, not a numpy array: numpy then makes the handed-out array the base
    # of every view of it (a view of an array over numpy memory would skip to that memory's
    # owner); page-aligned, its pages first touched by the first call that writes them
    memory: mmap.mmap
    nbytes: int
    handed: weakref.ref | None = None  # the array last handed out over them


def _pooled_bytes() -> int:
    return sum(slot.nbytes for slots in _pool.values() for slot in slots)


def _new_slot(nbytes: int) -> _Slot:
    memory = mmap.mmap(-1, nbytes)
    if nbytes >= HUGE_PAGE_BYTES and hasattr(mmap, "MADV_HUGEPAGE"):
        # as numpy advises its own large arrays: transparent huge pages where the system
        # gives them on request, so streaming a multi-megabyte y or dx does not miss the TLB
        # every 4 KiB
        memory.madvise(mmap.MADV_HUGEPAGE)
    return _Slot(memory, nbytes)


def take(name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised C-ordered array of `shape` and `dtype` that nobody else holds, pooled
    under (name, shape, dtype): the same call after the previous array was dropped returns the
    same memory. `name` keeps apart the buffers of different roles that happen to share a shape."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    key = (name, shape, dtype.str)
    with _lock:
        slots = _pool.get(key)
        if slots is not None:
            _pool.move_to_end(key)
            for slot in slots:
                if slot.handed is None or slot.handed() is None:
                    return _hand_out(slot, shape, dtype)
            if len(slots) >= MAX_PER_SHAPE:
                return np.empty(shape, dtype)
        if nbytes == 0 or nbytes > _limit:
            return np.empty(shape, dtype)
        # make room: the least recently used keys go first, never the one asked for
        while _pool and next(iter(_pool)) != key:
            if _pooled_bytes() + nbytes <= _limit and (key in _pool or len(_pool) < MAX_SHAPES):
                break
            _pool.popitem(last=False)
        if _pooled_bytes() + nbytes > _limit:
            return np.empty(shape, dtype)
        slot = _new_slot(nbytes)
        _pool.setdefault(key, []).append(slot)
        return _hand_out(slot, shape, dtype)


def _hand_out(slot: _Slot, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    array = np.ndarray(shape, dtype, buffer=slot.memory)
    slot.handed = weakref.ref(array)
    return array


def set_limit(nbytes: int) -> int:
    """Retain at most `nbytes` in the workspace (0: off, every take() a plain np.empty); free
    buffers beyond it are dropped now. Returns the previous limit."""
    global _limit
    with _lock:
        previous, _limit = _limit, int(nbytes)
        while _pool and _pooled_bytes() > _limit:
            _pool.popitem(last=False)
    return previous


def clear() -> None:
    """Drop every pooled buffer (arrays still held stay valid, owned by their holders)."""
    with _lock:
        _pool.clear()


def pooled_bytes() -> int:
    """Bytes the workspace retains now, held or free."""
    with _lock:
        return _pooled_bytes()
