"""Shared test configuration.

Two tiers: plain `pytest` runs the fast tier, every test not marked `slow` (pyproject.toml's
addopts); `pytest -m slow` runs the slow tier: training on real MNIST, MPI runs, cold numba
compiles and runs of the benchmark harness. A test belongs in the slow tier when it takes
seconds on two cores because of what it exercises, not because it is written slowly.

Plain `pytest` runs every benchmark body once, untimed, as a quick correctness smoke test;
`pytest --benchmark-only` (or any option that asks for timings) times them for real.

Hypothesis profiles: "quick" (the default on a developer's machine: 40 examples per property)
and "ci" (250 examples; chosen automatically when CI=true). HYPOTHESIS_PROFILE=ci|quick picks
one explicitly.

The `auto` backend would time candidates and write its choices to the user's cache directory:
the tests give it a temporary cache and the "off" mode (a fixed rule, no timing), in a scope
(kernels.auto.using) per test; tests/test_kernels_auto*.py open scopes of their own.
"""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from model_helpers import write_mnist_dir

settings.register_profile(
    "ci", max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "quick", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "quick")
)

_TIMING_OPTIONS = (
    "benchmark_only",
    "benchmark_enable",
    "benchmark_json",
    "benchmark_save",
    "benchmark_autosave",
    "benchmark_compare",
    "benchmark_histogram",
)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # Runs before pytest-benchmark builds its session, so the plugin sees the final setting.
    wants_timing = any(config.getoption(name, default=None) for name in _TIMING_OPTIONS)
    if not wants_timing and hasattr(config.option, "benchmark_disable"):
        config.option.benchmark_disable = True


# The slow tier, for tests whose files carry no marks of their own: every test that uses one of
# these fixtures, and these tests by name (the reason beside each). Tests in other files are
# marked where they are written (@pytest.mark.slow).
SLOW_FIXTURES = {
    "tiny_run": "runs the benchmark harness, bench.compare, end to end",
}
SLOW_TESTS = {
    "test_model_distributed.py::test_two_ranks_give_one_process_weights": "training under mpiexec",
    "test_model_distributed.py::test_a_failing_rank_ends_the_job_and_keeps_the_last_checkpoint": (
        "training under mpiexec"
    ),
    "test_bench_harness.py::test_tensorflow_is_timed_with_onednn_on_in_a_worker_and_off_here": (
        "starts TensorFlow in a benchmark worker process"
    ),
    "test_bench_harness.py::test_pytorch_is_timed_in_a_worker_of_its_own": (
        "starts PyTorch in a benchmark worker process"
    ),
    "test_bench_harness.py::test_dataparallel_worker_measures_one_and_two_ranks": (
        "a data-parallel benchmark run under mpiexec"
    ),
}


def slow_reason(item) -> str | None:
    """Why `item` belongs to the slow tier by the tables above, or None."""
    name = f"{item.path.name}::{item.originalname}"
    fixtures = SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ()))
    if fixtures:
        return SLOW_FIXTURES[min(fixtures)]
    return SLOW_TESTS.get(name)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # tryfirst: the marks must be on the items before `-m` deselects by them.
    for item in items:
        if slow_reason(item) is not None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def mnist_dir():
    """The real MNIST directory from $MNIST_DIR; tests that need it skip (with why) without it."""
    path = os.environ.get("MNIST_DIR")
    if not path or not Path(path).is_dir():
        pytest.skip(
            "real MNIST not available: set MNIST_DIR to a directory with the four IDX files"
        )
    return Path(path)


@pytest.fixture(scope="session")
def small_mnist_dir(tmp_path_factory):
    """A generated MNIST-format directory (the four gzipped IDX files of 200 training and 100 test
    images, model_helpers.write_mnist_dir) so CLI tests need no real data. Read-only: shared."""
    return write_mnist_dir(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(autouse=True, scope="session")
def _autotune_session(tmp_path_factory):
    """Keep the auto backend's timing and cache file out of the user's cache (see above), from
    the first fixture of the session on."""
    from kernels import auto

    with auto.using(mode="off", cache_dir=tmp_path_factory.mktemp("autotune")):
        yield


@pytest.fixture(autouse=True)
def _autotune_isolated(_autotune_session):
    """Each test in a tuner scope of its own: what one test configures or chooses ends with it."""
    from kernels import auto

    with auto.using():
        yield
