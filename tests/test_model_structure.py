"""The shape of the packages: no import cycle between the modules of kernels/, model/ or bench/
(imports under TYPE_CHECKING and inside functions count: they are the map a reader follows), and
no private name imported across model/'s modules."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "model", "bench")


def imports_of(package: str) -> dict:
    """{module: [(imported module, [names])]} for every `from .x import ...`, `from . import x`
    and `from <package>.x import ...` / `import <package>.x` in the package's modules (in any
    position: top level, under TYPE_CHECKING, inside a function); module names relative to the
    package, subpackages dotted ("frameworks.torch")."""
    base = ROOT / package
    found = {}
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        module = ".".join(parts) or "__init__"
        here = parts[:-1] if path.stem != "__init__" else parts  # the module's own package
        edges = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges += [
                    (alias.name.split(".", 1)[1], [])
                    for alias in node.names
                    if alias.name.startswith(package + ".")
                ]
                continue
            if not isinstance(node, ast.ImportFrom):
                continue
            names = [alias.name for alias in node.names]
            if node.level:
                anchor = here[: len(here) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            elif (node.module or "").startswith(package + "."):
                target = node.module.split(".", 1)[1]
            elif node.module == package:
                target = ""
            else:
                continue
            if not node.module:  # from . import x, y: each is a module
                edges += [(".".join(filter(None, [target, n])), []) for n in names]
            else:
                edges.append((target or "__init__", names))
        found[module] = edges
    return found


def test_no_private_name_is_imported_from_another_model_module():
    private = [
        f"{module} imports {name} from {target}"
        for module, edges in imports_of("model").items()
        for target, names in edges
        for name in names
        if name.startswith("_")
    ]
    assert private == []


def find_cycle(graph: dict) -> list | None:
    """The first import cycle in {module: {imported modules}} as [a, b, ..., a], else None."""
    done, active = set(), []

    def visit(module):
        if module in active:
            return active[active.index(module) :] + [module]
        if module in done or module not in graph:
            return None
        active.append(module)
        for target in sorted(graph[module]):
            cycle = visit(target)
            if cycle:
                return cycle
        active.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_find_cycle_finds_one_through_three_modules():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_import_each_other_without_a_cycle(package):
    graph = {m: {t for t, _ in edges if t != m} for m, edges in imports_of(package).items()}
    cycle = find_cycle(graph)
    assert cycle is None, f"{package}: import cycle " + " -> ".join(cycle)
