"""pytest-benchmark groups for the real-network sets (bench/shapes/*.txt): one group per set, a
few representative layers at minibatch 1 (the inference-latency batch, affordable in a suite),
forward+backward per backend, with PyTorch and TensorFlow at their best configuration beside them.

    pytest tests/benchmarks/test_bench_sets.py --benchmark-only       # time them
    python -m bench.conv --set resnet50 --mb 8                       # the whole set, every pass

Every body's answer is checked against bench.conv_check's float64 reference before it is timed.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.conv_check import cached_reference, inputs, relative_errors, tolerance
from bench.conv_ops import Unsupported, backend_ops, tensorflow_ops, torch_ops
from bench.problems import load_set
from bench.timing import measure
from kernels import BACKEND_NAMES

# Per set, layers that differ in what limits them: a 3x3 on a large plane with few channels, a
# 3x3 with many channels on a small plane, a 1x1, a grouped or 5x5 layer where the net has one.
LAYERS = {
    "resnet50": ("res2a_branch2b", "res4a_branch2b", "res4b_branch2a"),
    "vgg16": ("conv3_2", "conv5_1"),
    "mobilenetv2": ("block7/expand", "block7/depthwise"),
    "alexnet": ("conv2", "conv3"),
    "googlenet": ("inception_3a/3x3", "inception_3a/5x5", "inception_4a/1x1"),
}
MB = 1
# naive's loops would take minutes on these layers: left to `python -m bench.conv --backends naive`
IMPLEMENTATIONS = [b for b in BACKEND_NAMES if b != "naive"] + ["torch", "tensorflow"]

CASES = [
    (name, problem)
    for name, labels in LAYERS.items()
    for problem in load_set(name, mb=MB)
    if problem.label in labels
]
_warmed: set[str] = set()


def _ops(impl, problem, data, request):
    if impl == "torch":
        repeat = 1 if request.config.option.benchmark_disable else 3
        return torch_ops(problem, data, lambda fn: measure(fn, repeat=repeat).median)
    if impl == "tensorflow":
        return tensorflow_ops(problem, data)
    if impl not in _warmed:
        from kernels import get_backend

        module = get_backend(impl)
        if hasattr(module, "warmup"):
            module.warmup(dtypes=[np.float32], ops=["conv2d"])  # never inside a timed round
        _warmed.add(impl)
    return backend_ops(impl, problem, data)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("set_name, problem", CASES, ids=[f"{s}:{p.label}" for s, p in CASES])
def test_set_layer_forward_backward(benchmark, set_name, problem, impl, request, tmp_path_factory):
    data = inputs(problem, np.float32)
    try:
        ops = _ops(impl, problem, data, request)
    except Unsupported as err:
        pytest.skip(str(err))
    ref = cached_reference(problem, data, tmp_path_factory.getbasetemp())
    errors = relative_errors(ops.outputs, ref)
    assert max(errors.values()) <= tolerance(ops.algorithm, np.float32), errors
    benchmark.group = f"{set_name} mb{MB}: conv forward+backward"
    benchmark.extra_info.update(gflop=3 * problem.flops / 1e9, descriptor=problem.descriptor())
    benchmark.extra_info["ran"] = ops.config or ops.algorithm
    benchmark(ops.passes["fwd_bwd"])
