"""Atomic file writes: checkpoints, histories and plots are never seen half-written.

    write_atomically("run/last.npz", lambda f: np.savez(f, **arrays))

The content goes to a temp file in the target's directory (same filesystem), which is then renamed
over the target: a crash or Ctrl-C mid-write leaves the previous file intact and no temp behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path, write):
    """Call write(binary file object) on a temp file beside `path`, then rename it over `path`.
    Creates the parent directory. Returns `path` as a Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
