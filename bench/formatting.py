"""How numbers and names look in reports: seconds, ratios, Markdown tables, backend order.

    >>> fmt_seconds(0.000684), fmt_x(0.41), table(["a", "b"], [[1, 2]])
    ('684 µs', '0.41×', '| a | b |\\n|---|---|\\n| 1 | 2 |')

Peers' display names come from bench.peers.label.
"""

from __future__ import annotations

from kernels import BACKEND_NAMES

from .peers import PEERS


def fmt_seconds(s) -> str:
    """Seconds as "1.23 s", "4.56 ms" or "789 µs"; None as "—"."""
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} µs"


def fmt_x(r, digits=2) -> str:
    """A ratio as "1.23×"; None as "—"."""
    return "—" if r is None else f"{r:.{digits}f}×"


def fmt_num(v, digits=1, suffix="") -> str:
    return "—" if v is None else f"{v:.{digits}f}{suffix}"


def table(headers, rows) -> str:
    """A Markdown table: one header row, then one line per row (cells through str)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def order(name: str):
    """Sort key: our backends in registry order (reference first), then the peers, then the rest."""
    known = [*BACKEND_NAMES, *PEERS]
    return (known.index(name) if name in known else len(known), name)
