"""Is a backend's warmup() going to load from numba's disk cache, or compile?

A cold compile of the numba kernels a training run needs takes tens of seconds (the `numba
compile` benchmark section), a load from numba's on-disk cache well under one; a trainer that
knows which it faces before calling warmup() can start training at once and compile in the
background (model/warmup.py). numba itself has no public "is this signature cached?" query, so a
backend's warmup() leaves a marker file beside numba's cache files once it has compiled, keyed the
way numba keys its cache:

- numba's version and the CPU numba compiles for (its cache index records both);
- the modification time and size of each source file whose kernels warmup() compiles (numba
  discards a cache entry when its source file changes);
- the dtype and op (one marker per pair, so a warmup of every op covers a run that needs two).

The marker sits in numba's cache directory for those sources (kernels/__pycache__, or under
$NUMBA_CACHE_DIR), so deleting numba's cache deletes the marker with it. A stale marker costs a
compile in the foreground, never a wrong result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numba
import numpy as np


def _markers(dispatcher: Any, sources: Iterable[str], dtypes, ops) -> list[Path] | None:
    """The markers' paths, one per (dtype, op), or None when numba's cache directory or CPU name
    cannot be found (then nothing counts as cached)."""
    try:
        cache_dir = Path(dispatcher._cache._cache_path)
        cpu = dispatcher.targetctx.codegen().magic_tuple()
    except (AttributeError, OSError):
        return None
    key = [numba.__version__, repr(cpu)]
    for source in sorted(sources):
        stat = Path(source).stat()
        key.append(f"{Path(source).name}:{stat.st_mtime_ns}:{stat.st_size}")
    markers = []
    for dtype in dtypes:
        for op in ops:
            text = "|".join([*key, np.dtype(dtype).name, op])
            markers.append(
                cache_dir / f"convbench-warm-{hashlib.sha256(text.encode()).hexdigest()[:20]}"
            )
    return markers


def is_cached(dispatcher: Any, sources: Iterable[str], dtypes, ops) -> bool:
    """True when warmup(dtypes, ops) has completed since `sources` last changed.

    dispatcher: any @njit(cache=True) function of the backend (it locates numba's cache
    directory); sources: the files of the kernels warmup() compiles."""
    markers = _markers(dispatcher, sources, dtypes, ops)
    return markers is not None and all(m.is_file() for m in markers)


def mark_cached(dispatcher: Any, sources: Iterable[str], dtypes, ops) -> None:
    """Record that warmup(dtypes, ops) has compiled (see is_cached). A read-only cache directory
    is not an error: the next run compiles in the background again."""
    markers = _markers(dispatcher, sources, dtypes, ops)
    try:
        for marker in markers or ():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
    except OSError:
        pass
