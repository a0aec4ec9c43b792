"""How a row that was not measured says why, in one line of the report.

Every section catches failures per row, so one broken backend or a missing peer never stops a run:
a row's "status" is "ok", "skipped: <reason>", "not installed", "disabled (--no-peers)" or the
`error_status` of the exception it raised.

    with row_status(row, rows, bar):   # row["status"] = "ok" unless the body raises
        row.update(seconds=...)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

OK = "ok"


class Unmeasured(RuntimeError):
    """A row that cannot be measured for a known reason: its message is the row's status (a peer
    that is not installed, for one)."""


def error_status(exc: BaseException) -> str:
    """The status of a row whose measurement raised `exc`: "error: <Type>: <message line>"."""
    return f"error: {type(exc).__name__}: {exc}".splitlines()[0][:200]


@contextmanager
def row_status(row: dict, rows: list | None = None, bar=None) -> Iterator[dict]:
    """Measure one row in the body: row["status"] is OK when it returns, the message of an
    Unmeasured, else error_status of whatever it raised (KeyboardInterrupt still stops the run).
    Then the row is appended to `rows` and `bar` (tqdm-like) advances one step, when given."""
    try:
        yield row
        row.setdefault("status", OK)
    except Unmeasured as exc:
        row["status"] = str(exc)
    except Exception as exc:  # one broken backend or peer must not stop the run
        row["status"] = error_status(exc)
    if rows is not None:
        rows.append(row)
    if bar is not None:
        bar.update(1)
