"""Shared test configuration.

Plain `pytest` runs every benchmark body once, untimed, as a quick correctness smoke test;
`pytest --benchmark-only` (or any option that asks for timings) times them for real.
"""

import os
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def mnist_dir():
    """The real MNIST directory from $MNIST_DIR; tests that need it skip (with why) without it."""
    path = os.environ.get("MNIST_DIR")
    if not path or not Path(path).is_dir():
        pytest.skip(
            "real MNIST not available: set MNIST_DIR to a directory with the four IDX files"
        )
    return Path(path)
