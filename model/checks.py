"""Argument checks shared by the library and the CLIs: one rule and one message per kind.

    >>> positive_int(3, "epochs")
    3
    >>> positive_int(0, "epochs")
    Traceback (most recent call last):
    ValueError: epochs must be a positive integer, got 0

Each check returns the value as a Python int or float, or raises ValueError saying
"<name> must be <kind>, got <value>" (without `name`: "must be <kind>, got <value>", which is how
`model.cli` reports a bad command-line option). Booleans are not integers here.
"""

from __future__ import annotations

import math

import numpy as np

POSITIVE_INT = "a positive integer"
NONNEGATIVE_INT = "a non-negative integer"
POSITIVE_NUMBER = "a number > 0"
NONNEGATIVE_NUMBER = "a number >= 0"


def _fail(name: str, kind: str, value):
    prefix = f"{name} " if name else ""
    raise ValueError(f"{prefix}must be {kind}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def positive_int(value, name: str = "") -> int:
    """An integer >= 1."""
    if not _is_int(value) or value < 1:
        _fail(name, POSITIVE_INT, value)
    return int(value)


def nonnegative_int(value, name: str = "") -> int:
    """An integer >= 0."""
    if not _is_int(value) or value < 0:
        _fail(name, NONNEGATIVE_INT, value)
    return int(value)


def positive_float(value, name: str = "") -> float:
    """A finite real number > 0."""
    if not _is_real(value) or not (math.isfinite(value) and value > 0):
        _fail(name, POSITIVE_NUMBER, value)
    return float(value)


def nonnegative_float(value, name: str = "") -> float:
    """A finite real number >= 0."""
    if not _is_real(value) or not (math.isfinite(value) and value >= 0):
        _fail(name, NONNEGATIVE_NUMBER, value)
    return float(value)
