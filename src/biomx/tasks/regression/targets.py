"""Regression targets: numeric label cells -> a float target tensor (NaN = not measured)."""

from __future__ import annotations

import torch

from biomx.data.samples import Samples, label_cells, where_of
from biomx.errors import DataError


def encode_values(samples: Samples) -> torch.Tensor:
    """Numeric labels -> a float target tensor for regression; empty or 'nan' -> NaN (masked).

    With several label columns (`samples.label_columns`, each label a list of cells,
    Tox21-style multi-task data) the result is (N, T), one column per label column, NaN where a
    cell is empty (not measured); the regression task leaves those out of the loss and metrics.
    With one label column (or none listed) it is (N,), as for a single target.

    Raises:
        DataError: a label that is not a number, naming the file or row (and the column).
    """
    columns = samples.label_columns
    if columns is None:
        values = [_number(samples, i, label, None) for i, label in enumerate(samples.labels)]
        return torch.tensor(values, dtype=torch.float32)
    rows = [[_number(samples, i, cell, column)
             for cell, column in zip(label_cells(samples, i, columns), columns, strict=True)]
            for i in range(len(samples.labels))]
    targets = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(columns))
    return targets[:, 0] if len(columns) == 1 else targets


def _number(samples: Samples, i: int, label, column: str | None) -> float:
    """One regression label as float; empty -> NaN."""
    try:
        return float(label) if label not in (None, "") else float("nan")
    except (TypeError, ValueError):
        at = "" if column is None else f" column {column!r}:"
        raise DataError(f"{where_of(samples, i)}:{at} label {label!r} is not a number "
                        "(task.kind is regression)") from None
