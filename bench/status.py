"""How a row that was not measured says why, in one line of the report.

Every section catches failures per row, so one broken backend or a missing peer never stops a run:
a row's "status" is "ok", "skipped: <reason>", "not installed", "disabled (--no-peers)" or the
`error_status` of the exception it raised.
"""

from __future__ import annotations

OK = "ok"


def error_status(exc: BaseException) -> str:
    """The status of a row whose measurement raised `exc`: "error: <Type>: <message line>"."""
    return f"error: {type(exc).__name__}: {exc}".splitlines()[0][:200]
