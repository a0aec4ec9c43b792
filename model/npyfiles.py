"""NumPy files: the conv lab's .npy files (names, reading with clear errors, writing atomically)
and the check that a file meant as an .npz archive is one.

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
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry, or an empty zip


def not_an_npz(path) -> str | None:
    """Why the file `path` cannot be an .npz archive, from its first bytes, or None if it may be.

    np.load takes any bytes that are neither a zip nor an .npy for a pickle, and with
    allow_pickle=False says the file "contains pickled data" and suggests loading it unsafely:
    the wrong diagnosis for a truncated download or a file of random bytes.
    """
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head.startswith(NPY_MAGIC):
        return "a single .npy array, not an .npz archive"
    if head[:4] not in ZIP_MAGICS:
        return "not a valid .npz archive (no zip header: empty, truncated or another kind of file)"
    return None


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
