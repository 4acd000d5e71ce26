"""What the data audit asks of typed table columns (tabular features, history covariates):
missing cells per column (NaN numbers, empty text) and numeric columns as outlier measures."""

from __future__ import annotations

import numpy as np


def missing_cells(types: dict[str, str], values: dict[str, np.ndarray], rows: np.ndarray | None = None,
                  ) -> dict[str, int]:  # fmt: skip
    """Column -> missing cells (in `rows`, or all)."""
    counts = {}
    for column in types:
        cells = values[column] if rows is None else values[column][rows]
        if cells.dtype.kind == "f":
            counts[column] = int(np.isnan(cells).sum())
        else:
            counts[column] = int(sum(1 for c in cells.tolist() if c is None or str(c).strip() == ""))
    return counts


def numeric_measures(types: dict[str, str], values: dict[str, np.ndarray], rows: np.ndarray | None = None,
                     ) -> dict[str, np.ndarray]:  # fmt: skip
    """Every numeric column's values (NaN = missing), the measures outliers are looked for in."""
    out = {}
    for column, kind in types.items():
        cells = values[column] if rows is None else values[column][rows]
        if kind == "numeric" and cells.dtype.kind == "f":
            out[column] = cells.astype(np.float64)
    return out
