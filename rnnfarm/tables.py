"""Plain-text tables for the terminal: one writer, and one way to show a value in a cell."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def cell(value: Any) -> str:
    """A value as a table shows it: ``-`` for none, four decimals for a small float, one for a large one."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def table(rows: list[list[str]], *, right: Collection[int] = ()) -> list[str]:
    """The rows (the first is the header) as lines of columns two spaces apart; ``right`` columns right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]
