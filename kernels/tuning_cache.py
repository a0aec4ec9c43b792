"""auto's memory on disk: the machine fingerprint, the thread settings in force, the cache file.

A timing is only worth reusing where the backends run as fast as when it was taken, so a choice
is keyed on two things:

    machine_fingerprint()  what stays for a machine and install: CPU model and vector
                           extensions, numpy and its BLAS, numba, Python, the kernels' source;
                           it names the cache file (cache_file) and is stored in it
    threads_in_force()     what a process may change while it runs: the BLAS thread limit
                           (threadpoolctl: the trainer holds BLAS to one thread) and numba's
                           thread count; it ends every entry's key (kernels/auto.py)

The file is JSON, {"version", "machine", "choices": {key: record}}. load_choices() never stops
a run: an unreadable, corrupt or stale file, and each entry its `check` rejects, is dropped with
one warning, and the caller times those shapes again. save_choices() merges its entries into
the file under a lock (fcntl.flock on a sibling ".lock" file): two runs sharing a cache both
keep their choices; the write is atomic (temp file + os.replace), and a failed write leaves no
temp file behind.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import threads
from .gemm import _blas_threads  # the one cheap reader of the BLAS limit in force

try:
    import fcntl
except ImportError:  # not POSIX: no lock, and of two runs writing at once the last one wins
    fcntl = None  # type: ignore[assignment]

CACHE_VERSION = 2  # 2: thread settings in every key, entries validated on load

# (key, record) -> None when the entry can be used, else why not
EntryCheck = Callable[[str, Any], "str | None"]


class CacheUnreadable(Exception):
    """The cache file exists but cannot be read (a directory, no permission): nothing can be
    saved to it either."""


def _cpu_model_and_isa() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")
    return model, [f for f in wanted if f in flags]


def machine_fingerprint() -> dict:
    """What makes one machine's timings differ from another's (it names the cache file)."""
    from threadpoolctl import threadpool_info

    model, isa = _cpu_model_and_isa()
    loaded = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    # numpy's own BLAS where it can be told apart: another library's, loaded later in the
    # process (scipy's, a framework's), would name a different file for the same machine
    numpy_dirs = {Path(np.__file__).parent, Path(np.__file__).parent.with_name("numpy.libs")}
    own = [i for i in loaded if numpy_dirs & set(Path(i.get("filepath") or "").parents)]
    blas = [
        f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}" for i in own or loaded
    ]
    return {
        "cpu": model,
        "isa": isa,
        "cores": os.cpu_count(),
        "numpy": np.__version__,
        "blas": sorted(blas),
        "numba": _numba_version(),
        "python": platform.python_version(),
        # the candidates' code: a change to any kernel times every shape again
        "kernels": _kernels_digest(),
    }


def _numba_version() -> str | None:
    try:
        return importlib.metadata.version("numba")
    except importlib.metadata.PackageNotFoundError:
        return None


def _kernels_digest() -> str:
    """A hash of the kernels package's source files (the backends auto chooses between)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def threads_in_force() -> str:
    """ "blas=B numba=T": numpy's BLAS thread limit now and numba's thread count (0 without
    numba). Asked on every auto call, so both are cheap reads (microseconds), not scans."""
    numba_threads = 0
    if _has_numba():
        # threads.count(), not numba.get_num_threads(): the first of them starts numba's
        # workers, and only kernels/threads.py starts them with a short idle spin; started
        # with libgomp's long one here, they slow the `deep` training step on auto
        # (bench.compare's breakdown)
        numba_threads = threads.count()
    return f"blas={_blas_threads()} numba={numba_threads}"


@functools.cache
def _has_numba() -> bool:
    return importlib.util.find_spec("numba") is not None


def default_cache_dir() -> Path:
    """$CONVBENCH_CACHE, else convbench/ in the user cache directory ($XDG_CACHE_HOME, else
    ~/.cache)."""
    if os.environ.get("CONVBENCH_CACHE"):
        return Path(os.environ["CONVBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "convbench"


def cache_file(directory: Path, machine: dict) -> Path:
    """The cache file for `machine` in `directory`: autotune-<hash of the fingerprint>.json."""
    digest = hashlib.sha256(json.dumps(machine, sort_keys=True).encode())
    return directory / f"autotune-{digest.hexdigest()[:12]}.json"


def _read(path: Path, machine: dict) -> dict:
    """The file's choices, unchecked; {} when there is no file. ValueError: corrupt or stale;
    CacheUnreadable: it cannot be read at all."""
    try:
        if not path.exists():
            return {}
        text = path.read_text()
    except OSError as exc:
        raise CacheUnreadable(str(exc)) from exc
    try:
        data = json.loads(text)
        if data.get("version") != CACHE_VERSION or data.get("machine") != machine:
            raise ValueError("written by another version or machine")
        choices = data["choices"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from exc
    if not isinstance(choices, dict):
        raise ValueError("its choices are not a mapping")
    return choices


def _checked(choices: dict, check: EntryCheck) -> tuple[dict, dict[str, str]]:
    """(the entries check accepts, {rejected key: why})."""
    kept, dropped = {}, {}
    for key, record in choices.items():
        why = check(key, record)
        if why is None:
            kept[key] = record
        else:
            dropped[key] = why
    return kept, dropped


def load_choices(path: Path, machine: dict, check: EntryCheck) -> dict:
    """The usable entries of the cache file at `path`: a corrupt or stale file gives {} and
    each entry `check` rejects is left out, with one RuntimeWarning either way (the caller
    times those shapes again). CacheUnreadable (after its warning) when the path cannot be read:
    the caller should not try to write it either."""
    try:
        choices = _read(path, machine)
    except CacheUnreadable as exc:
        warnings.warn(
            f"cannot read the autotune cache {path} ({exc}); choices will not be saved",
            RuntimeWarning,
            stacklevel=3,
        )
        raise
    except ValueError as exc:
        warnings.warn(
            f"ignoring the autotune cache {path} ({exc}); it will be rewritten",
            RuntimeWarning,
            stacklevel=3,
        )
        return {}
    kept, dropped = _checked(choices, check)
    if dropped:
        first = next(iter(dropped))
        warnings.warn(
            f"ignoring {len(dropped)} bad entr{'y' if len(dropped) == 1 else 'ies'} of the "
            f"autotune cache {path} ({first!r}: {dropped[first]}); they will be timed again",
            RuntimeWarning,
            stacklevel=3,
        )
    return kept


def save_choices(path: Path, machine: dict, entries: dict, check: EntryCheck) -> None:
    """Merge `entries` into the cache file at `path` (they replace the file's entries of the
    same key; the file's other valid entries stay), under an exclusive lock on path + ".lock"
    so that concurrent runs do not lose each other's entries. OSError when it cannot be
    written; no temp file is left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: str | None = None
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        try:
            try:
                on_disk, _ = _checked(_read(path, machine), check)
            except ValueError:  # corrupt or stale: load_choices warned; rewritten whole
                on_disk = {}
            except CacheUnreadable as exc:
                raise OSError(str(exc)) from exc
            data = {"version": CACHE_VERSION, "machine": machine, "choices": on_disk | entries}
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
            tmp = None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
