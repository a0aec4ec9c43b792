"""The two test tiers: plain `pytest` leaves the slow tier out, and conftest's tables of slow
tests name tests and fixtures that exist (a renamed test would otherwise drop silently into the
fast tier)."""

import importlib.util
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _load_conftest():
    # By path: `import conftest` finds whichever conftest.py pytest imported last
    # (tests/benchmarks/ has one too).
    spec = importlib.util.spec_from_file_location("tests_conftest", TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


conftest = _load_conftest()


def test_plain_pytest_deselects_the_slow_tier(pytestconfig):
    addopts = pytestconfig.getini("addopts")  # split as a shell would: ["-ra", "-m", "not slow"]
    assert any(a == "-m" and b == "not slow" for a, b in zip(addopts, addopts[1:])), addopts
    assert any(m.startswith("slow:") for m in pytestconfig.getini("markers"))


@pytest.mark.parametrize("name", sorted(conftest.SLOW_TESTS))
def test_each_slow_test_named_in_conftest_exists(name):
    filename, function = name.split("::")
    source = (TESTS / filename).read_text(encoding="utf-8")
    assert re.search(rf"^def {re.escape(function)}\(", source, re.MULTILINE), name


@pytest.mark.parametrize("fixture", sorted(conftest.SLOW_FIXTURES))
def test_each_slow_fixture_named_in_conftest_exists(fixture):
    defined = [
        path.name
        for path in TESTS.rglob("*.py")
        if re.search(rf"^def {re.escape(fixture)}\(", path.read_text(encoding="utf-8"), re.M)
    ]
    assert defined, f"no test module defines the fixture {fixture!r}"
