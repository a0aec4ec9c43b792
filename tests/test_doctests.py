"""The examples in the docstrings of kernels/, model/ and bench/ run as written (doctest).

Every module whose source holds a `>>>` example is collected, so a new example is tested the
moment it is written. Each module's examples run in a fresh temporary working directory (some
write files); those that need PyTorch or real MNIST skip, saying so, without them.
"""

import doctest
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kernels", "model", "bench")

# What a module's examples need beyond the core install: an importable package, or "mnist"
# (load_mnist() with no argument finds $MNIST_DIR; the example must never download).
NEEDS = {
    "model.convfit_frameworks": "torch",
    "model.mnist": "mnist",
}


def modules_with_examples() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if ">>> " not in path.read_text(encoding="utf-8"):
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


def test_the_examples_are_found():
    # The registry's example is the README's first code a reader meets; losing it from the
    # collection (a renamed package, a changed marker) must fail, not pass with nothing run.
    assert "kernels" in modules_with_examples()


@pytest.mark.parametrize("name", modules_with_examples())
def test_module_examples_run(name, tmp_path, monkeypatch, request):
    need = NEEDS.get(name)
    if need == "mnist":
        request.getfixturevalue("mnist_dir")  # skips, saying why, without $MNIST_DIR
    elif need is not None and importlib.util.find_spec(need) is None:
        pytest.skip(f"{name}'s examples need {need} (the peers extra)")
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module, name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = []
    for test in tests:
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{name} holds '>>> ' but doctest found no example in it"
    assert result.failed == 0, "".join(report)
