"""pytest-benchmark suite: every layer case x backend, grouped by case so each table compares
backends side by side, with PyTorch (NCHW and channels_last) and TensorFlow rows in the same
groups when they are installed, so each table answers "ours against theirs".

    pytest tests/benchmarks --benchmark-only                   # time them
    pytest tests/benchmarks                                    # run each body once (smoke test)
    pytest tests/benchmarks --benchmark-only --benchmark-autosave        # save a run, then gate:
    pytest tests/benchmarks --benchmark-only --benchmark-compare --benchmark-compare-fail=median:10%

Inputs and the forward context for backward are built outside the timed body (bench.layers).
JIT backends are compiled (warmup) once per session before any timing; conftest.py sets malloc as
the trainer runs (kernels.memory.keep_freed_memory).
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import peers
from bench.cases import CASES
from bench.layers import layer_ops, warm_up_backend
from kernels import BACKEND_NAMES

# The peers timed in this process (TensorFlow's oneDNN configuration reads its switch at import,
# so bench.compare times it in a worker of its own; here TensorFlow runs as installed).
IN_PROCESS_PEERS = {
    "torch": peers.Torch,
    "torch_cl": peers.TorchChannelsLast,
    "tensorflow": peers.TensorFlow,
}

CONV_CASES = [c for c in CASES.values() if c.kind == "conv"]
POOL_CASES = [c for c in CASES.values() if c.kind == "pool"]
# The untimed smoke run must stay at a few seconds: naive on a GFLOP-scale case is left to timing runs.
SMOKE_NAIVE_MAX_FLOPS = 1e9

_warmed: set[str] = set()


def backend_or_skip(name: str, case, request) -> str:
    """Skip (with the reason) a backend that is too slow for the case. A backend that fails to
    import or compile fails its tests: every backend in kernels.BACKEND_NAMES is a dependency."""
    if name not in _warmed:
        warm_up_backend(name)  # numba compiles here, never inside a timed round
        _warmed.add(name)
    if name in case.skip:
        pytest.skip(f"{name} skipped: {case.skip[name]}")
    if (
        name == "naive"
        and request.config.option.benchmark_disable
        and (case.flops or 0) > SMOKE_NAIVE_MAX_FLOPS
    ):
        pytest.skip(
            "naive on a GFLOP-scale case: left out of the untimed smoke run "
            "(runs under --benchmark-only)"
        )
    return name


def _ids(cases):
    return [c.name for c in cases]


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("case", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv_forward(benchmark, case, backend, request):
    ops = layer_ops(backend_or_skip(backend, case, request), case)
    benchmark.group = f"{case.name}: conv forward"
    benchmark.extra_info["gflop"] = case.flops / 1e9
    y, _ = benchmark(ops["forward"])
    assert y.shape == case.geometry().y_shape and y.dtype == np.float32


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("case", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv_forward_backward(benchmark, case, backend, request):
    ops = layer_ops(backend_or_skip(backend, case, request), case)
    benchmark.group = f"{case.name}: conv forward+backward"
    benchmark.extra_info["gflop"] = 3 * case.flops / 1e9
    dx, dw, db = benchmark(ops["forward_backward"])
    assert dx.shape == case.geometry().x_shape and dw.shape == (
        case.k,
        case.k,
        case.c_in,
        case.c_out,
    )
    assert np.isfinite(dw).all()


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("case", POOL_CASES, ids=_ids(POOL_CASES))
def test_pool_forward_backward(benchmark, case, backend, request):
    ops = layer_ops(backend_or_skip(backend, case, request), case)
    benchmark.group = f"{case.name}: maxpool forward+backward"
    dx = benchmark(ops["forward_backward"])
    # all-ones dy: each window's gradient lands on exactly one input, so dx sums to the window count
    assert dx.shape == case.geometry().x_shape
    assert dx.sum() == pytest.approx(np.prod(case.geometry().y_shape))


def peer_ops_or_skip(name: str, case) -> dict:
    """The peer's ops on the case's inputs, or a skip naming why the peer cannot run."""
    peer = IN_PROCESS_PEERS[name]()
    try:
        x, w, b = case.make_inputs(np.float32)
        return peer.layer_ops(case, x, w, b)
    except peers.PeerUnavailable as exc:
        pytest.skip(f"{name}: {exc}")


@pytest.mark.parametrize("peer", IN_PROCESS_PEERS)
@pytest.mark.parametrize("case", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv_forward_peer(benchmark, case, peer):
    ops = peer_ops_or_skip(peer, case)
    benchmark.group = f"{case.name}: conv forward"
    benchmark.extra_info["gflop"] = case.flops / 1e9
    y = benchmark(ops["forward"])
    assert np.prod(np.shape(y)) == np.prod(case.geometry().y_shape)


@pytest.mark.parametrize("peer", IN_PROCESS_PEERS)
@pytest.mark.parametrize("case", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv_forward_backward_peer(benchmark, case, peer):
    ops = peer_ops_or_skip(peer, case)
    benchmark.group = f"{case.name}: conv forward+backward"
    benchmark.extra_info["gflop"] = 3 * case.flops / 1e9
    dx, dw, db = benchmark(ops["forward_backward"])
    assert np.prod(np.shape(dw)) == case.k * case.k * case.c_in * case.c_out
    assert np.isfinite(np.asarray(dw)).all()


@pytest.mark.parametrize("peer", IN_PROCESS_PEERS)
@pytest.mark.parametrize("case", POOL_CASES, ids=_ids(POOL_CASES))
def test_pool_forward_backward_peer(benchmark, case, peer):
    ops = peer_ops_or_skip(peer, case)
    benchmark.group = f"{case.name}: maxpool forward+backward"
    (dx,) = benchmark(ops["forward_backward"])
    assert float(np.asarray(dx).sum()) == pytest.approx(np.prod(case.geometry().y_shape))
