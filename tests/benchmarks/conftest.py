"""The benchmark suite times the kernels as the trainer runs them: with freed memory kept in the
process (kernels.memory.keep_freed_memory, which model.train and bench.compare also call)."""

import pytest

from kernels.memory import keep_freed_memory


@pytest.fixture(scope="session", autouse=True)
def trainer_malloc_settings():
    keep_freed_memory()
