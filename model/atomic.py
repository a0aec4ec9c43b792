"""Writing output files: atomically, with the usual permissions, into a directory checked first.

    write_atomically("run/last.npz", lambda f: np.savez(f, **arrays))
    writable_dir("runs/x", "--out")   # before a long run: one clear OSError now, not at the end

The content goes to a temp file in the target's directory (same filesystem), which is then renamed
over the target: a crash or Ctrl-C mid-write leaves the previous file intact and no temp behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_file_mode() -> int:
    """0666 less the process's umask: the mode open() gives a new file (mkstemp's are 0600)."""
    mask = os.umask(0o022)  # os.umask can only be read by setting it
    os.umask(mask)
    return 0o666 & ~mask


def write_atomically(path, write):
    """Call write(binary file object) on a temp file beside `path`, then rename it over `path`.
    Creates the parent directory. The file gets mode 0666 less the umask, as open() would give
    it (mkstemp's temp file is 0600). Returns `path` as a Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            os.fchmod(f.fileno(), default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def writable_dir(path, what: str) -> Path:
    """Create directory `path` (and its parents) if missing and prove a file can be written in it.

    `what` names it in the error (e.g. "--out"). Raises OSError with one line saying why not: a
    file in the way, no permission, a read-only file system. Returns `path` as a Path.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(f"{what} {str(path)!r} is a file, not a directory") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise type(exc)(f"{what} {str(path)!r} cannot be created: {reason}") from None
    # os.access answers for the real uid, and root passes it for any mode bits: a test write
    # also catches read-only mounts and a full disk.
    problem = None if os.access(path, os.W_OK | os.X_OK) else "Permission denied"
    if problem is None:
        try:
            fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            problem = exc.strerror or type(exc).__name__
    if problem is not None:
        raise PermissionError(f"{what} directory {str(path)!r} is not writable: {problem}")
    return path
