"""The numba compile section: cold compile time of the numba backend, in a fresh process with an
empty NUMBA_CACHE_DIR, so neither this process's JIT nor the on-disk cache hides it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING

from .status import OK

if TYPE_CHECKING:
    from .context import Context, Options

_COMPILE_SCRIPT = """
import json, time
t0 = time.perf_counter()
from kernels import get_backend
module = get_backend("numba")
t1 = time.perf_counter()
module.warmup()
t2 = time.perf_counter()
print(json.dumps({"import_seconds": t1 - t0, "compile_seconds": t2 - t1}))
"""


def numba_compile_time(timeout: float = 600) -> dict:
    """{"status": "ok", "import_seconds", "compile_seconds"} or {"status": "error: ..."}."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        proc = subprocess.run(
            [sys.executable, "-c", _COMPILE_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=os.path.dirname(os.path.dirname(__file__)),
        )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": f"error: {last[:200]}"}
    return {"status": OK, **json.loads(proc.stdout.strip().splitlines()[-1])}


def steps(opts: Options, backends) -> int:
    return 1


def run(ctx: Context) -> dict:
    ctx.bar.set_description("numba compile (fresh process)")
    result = (
        numba_compile_time()
        if "numba" in ctx.backends
        else {"status": "skipped: numba backend not in this run"}
    )
    ctx.bar.update(1)
    return result
