"""The shape of model/: no import cycle between its modules, no private name imported across them."""

import ast
from pathlib import Path

MODEL = Path(__file__).resolve().parents[1] / "model"


def imports_of_model():
    """{module: [(imported module, [names])]} for every `from .x import ...` / `from model.x ...`."""
    found = {}
    for path in sorted(MODEL.glob("*.py")):
        edges = []
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 1 and node.module:
                target = node.module
            elif node.level == 0 and (node.module or "").startswith("model."):
                target = node.module.split(".", 1)[1]
            elif node.level == 1:  # from . import x
                edges += [(alias.name, []) for alias in node.names]
                continue
            else:
                continue
            edges.append((target, [alias.name for alias in node.names]))
        found[path.stem] = edges
    return found


def test_no_private_name_is_imported_from_another_model_module():
    private = [
        f"{module} imports {name} from {target}"
        for module, edges in imports_of_model().items()
        for target, names in edges
        for name in names
        if name.startswith("_")
    ]
    assert private == []


def test_model_modules_import_each_other_without_a_cycle():
    graph = {m: {t for t, _ in edges} for m, edges in imports_of_model().items()}
    done, active = set(), []

    def visit(module):
        if module in active:
            raise AssertionError("import cycle: " + " -> ".join(active + [module]))
        if module in done or module not in graph:
            return
        active.append(module)
        for target in sorted(graph[module]):
            visit(target)
        active.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert not (MODEL / "data.py").exists()  # split into mnist, batches and augment
