"""Choosing which test samples to explain: shared by every task's explanation hooks."""

from __future__ import annotations

import numpy as np


def take_groups(groups: list[tuple[str, np.ndarray]], n: int, total: int) -> list[tuple[int, str]]:
    """Up to n distinct rows: half from each group (ranked best first), topped up from the
    other group, then from the remaining rows in index order."""
    chosen: dict[int, str] = {}

    def add(name: str, rows: np.ndarray, limit: int) -> None:
        for row in rows.tolist():
            if len(chosen) >= limit:
                return
            chosen.setdefault(int(row), name)

    (first, first_rows), (second, second_rows) = groups
    add(first, first_rows, (n + 1) // 2)
    add(second, second_rows, n)
    add(first, first_rows, n)
    add("other", np.arange(total), n)
    return list(chosen.items())


def spread_over_range(values: np.ndarray, n: int) -> list[int]:
    """n rows whose values spread evenly over their range (sorted by row)."""
    order = np.argsort(values)
    return sorted(order[np.linspace(0, len(order) - 1, min(n, len(order))).astype(int)].tolist())
