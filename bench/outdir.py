"""Where a run's files go, checked before anything is timed, and never lost after it.

    out = writable_dir("bench-results")        # ValueError naming --out when it cannot be written
    path = rescue_results(results)             # results.json in a temp file, when the report failed

A run writes into DEFAULT_OUT (git-ignored) unless --out names another directory; the committed
runs are made with `--out reports`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench-results"


def writable_dir(path, option: str = "--out") -> Path:
    """Create `path` (and its parents) and check a file can be written in it: the Path, or
    ValueError "<option> <path>: cannot write there (<why>)"."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def json_default(obj):
    """json.dumps's fallback for numpy scalars, sets and tuples (anything else: its str)."""
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def rescue_results(results: dict) -> Path:
    """Write `results` to a new temp file (bench-results-<name>-*.json in the temp directory) and
    return its path: the measurements of a run whose report could not be written."""
    fd, name = tempfile.mkstemp(
        prefix=f"bench-results-{results.get('name', 'run')}-", suffix=".json"
    )
    with os.fdopen(fd, "w") as f:
        json.dump(results, f, indent=1, default=json_default)
    return Path(name)
