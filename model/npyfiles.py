"""The conv lab's .npy files: their names, reading them with clear errors, writing atomically.

>>> import numpy as np
>>> from model.npyfiles import load_npy, save_npy
>>> path = save_npy("input_data.npy", np.zeros((2, 3, 8, 8)))  # temp file, then rename
>>> load_npy(path, "--input", ndim=4).shape                     # (N, C, H, W)
(2, 3, 8, 8)
>>> load_npy(path, "--input", ndim=3)                           # errors name "--input"
Traceback (most recent call last):
ValueError: --input 'input_data.npy' must hold a 3-D array, got shape (2, 3, 8, 8)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import write_atomically

INPUT_FILE = "input_data.npy"
TARGET_FILE = "target_output.npy"
TRUE_KERNELS_FILE = "true_kernels.npy"


def load_npy(path, what: str, ndim: int | None = None) -> np.ndarray:
    """One array from a .npy file (no pickles). `what` names it in errors (e.g. "--input");
    with `ndim` (4 for the lab's NCHW arrays) an array of another rank is an error too."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"{what} must be a .npy file, got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {str(path)!r}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read {what} file {str(path)!r} as a .npy array: {exc}") from None
    if ndim is not None and array.ndim != ndim:
        layout = "NCHW " if ndim == 4 else ""
        raise ValueError(
            f"{what} {str(path)!r} must hold a {ndim}-D {layout}array, got shape {array.shape}"
        )
    return array


def save_npy(path, array: np.ndarray) -> Path:
    """Write `array` to the .npy file `path` atomically (see model.atomic); returns the Path."""
    return write_atomically(path, lambda f: np.save(f, array))


def bias_path(kernels_path) -> Path:
    """Where `train --bias` saves the bias: next to the kernels, `<stem>_bias.npy`."""
    p = Path(kernels_path)
    return p.with_name(p.stem + "_bias.npy")
