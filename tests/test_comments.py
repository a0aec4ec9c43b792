"""Comments and docstrings in kernels/, model/ and bench/ give reasons, not dated measurements.

A measured figure in a comment goes stale the day the code or the machine changes, while the
reason for a choice stays true; the benchmark case that shows it (a bench.compare case name, a
`python -m bench.conv` descriptor) lets anyone measure it again, and the committed reports keep
the figures with their dates. Comments are read with tokenize and docstrings with ast, so strings
the code uses as data (a report-name format in a help text, a date parsed from a directory name)
are never scanned.
"""

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kernels", "model", "bench")

# (what, pattern, packages it applies to)
RULES = [
    ("a date", re.compile(r"(?<!\d)20\d\d-[01]\d-[0-3]\d(?!\d)"), PACKAGES),
    # a report directory's time part, `2026-12-04_183234` or a bare `_183234`
    ("a report id", re.compile(r"_[0-2]\d[0-5]\d[0-5]\d\b"), PACKAGES),
    (
        "history narration",
        re.compile(
            r"\b(used to|no longer|previously|formerly|until recently|than before|"
            r"the old code|the new code|this commit|(before|after) the (change|fix|rewrite))\b",
            re.IGNORECASE,
        ),
        PACKAGES,
    ),
    # Timings and rates. bench/ is left out: its docstrings show how a report formats numbers
    # ("1.23 s", "4.56 ms", "684 µs"), which is data, not a measurement.
    (
        "a measured time or rate",
        re.compile(r"\d\s?(ns|µs|us|ms)\b|\d\s?(GFLOP/s|images/s)"),
        ("kernels", "model"),
    ),
]


def comment_lines(source: str) -> list[tuple[int, str]]:
    """(line number, text) of every comment line and every docstring line in `source`."""
    lines = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        body = node.body
        if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)):
            continue
        text = body[0].value.value
        if isinstance(text, str):
            lines += [(body[0].lineno + i, line) for i, line in enumerate(text.splitlines())]
    return sorted(lines)


def findings(source: str, package: str) -> list[tuple[int, str, str]]:
    """(line number, what, the line) for each rule of `package` a comment or docstring line
    breaks (once per rule and line)."""
    found = []
    for lineno, text in comment_lines(source):
        for what, pattern, packages in RULES:
            if package in packages and pattern.search(text):
                found.append((lineno, what, text.strip()))
    return found


PLANTED = """'''A module.

The `mid` case in report 2026-12-04_183234: numba 4.70 ms and winograd 4.84 ms.
'''
STAMP = "%Y-%m-%d_%H%M%S"  # a report directory is named like 2026-12-04_212836


def f():
    '''It used to copy every sample; 87 GFLOP/s on one core.'''
    return "2026-12-04"  # data, not a comment: never scanned
"""


def test_the_checker_finds_each_kind_in_a_planted_module():
    found = {(line, what) for line, what, _ in findings(PLANTED, "kernels")}
    assert found == {
        (3, "a date"),
        (3, "a report id"),
        (3, "a measured time or rate"),
        (5, "a date"),
        (5, "a report id"),
        (9, "history narration"),
        (9, "a measured time or rate"),
    }


def test_the_checker_leaves_code_reasons_and_arithmetic_alone():
    source = '''"""F(2x2, 3x3) does 2.25x fewer multiplies; a 3x3 kernel, 5 x 16 float32 registers."""
DATE = "2026-12-04_212836"  # the `deep_conv2` case (bench.conv mb64ic32ih14oc64kh3ph1) shows it
'''
    assert findings(source, "kernels") == []


def test_timings_are_data_in_bench_docstrings():
    assert findings('"""Seconds as "1.23 s", "4.56 ms" or "789 µs"."""\n', "bench") == []
    assert findings('"""Seconds as "1.23 s", "4.56 ms" or "789 µs"."""\n', "model") != []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_dates_report_names_or_measured_figures_in_comments(package):
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, what, text in findings(path.read_text(encoding="utf-8"), package):
            problems.append(f"{path.relative_to(ROOT)}:{line}: {what}: {text}")
    assert not problems, (
        "comments and docstrings give the reason and the benchmark case, not a dated figure:\n"
        + "\n".join(problems)
    )
