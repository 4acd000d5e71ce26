"""Survival targets: two label cells per sample (time, event) -> a (N, 2) float tensor.

Every bad cell is one line naming the row ("file row N", from `Samples.where`) and the column,
because a survival table with one typo in 2000 rows is the usual case, not the exception.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from biomx.data.samples import Samples, label_cells, where_of
from biomx.errors import ConfigError, DataError

_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}


def columns_of(samples: Samples) -> tuple[str, str]:
    """The (time, event) label column names."""
    columns = samples.label_columns
    if columns is None or len(columns) != 2:
        got = "one label column" if columns is None else f"{len(columns)} label columns {columns}"
        raise ConfigError(f"data.label_column: task.kind survival needs two label columns, [time, event]; got {got}")
    return columns[0], columns[1]


def encode_survival(samples: Samples) -> torch.Tensor:
    """(N, 2) float32: time (>= 0) and event (1 = the event was observed, 0 = censored).

    Raises:
        ConfigError: not exactly two label columns.
        DataError: a missing, non-numeric, infinite or negative time; an event that is not 0/1 or
            true/false; or no event at all (nothing to learn a hazard from).
    """
    time_column, event_column = columns_of(samples)
    rows = []
    for i in range(len(samples.labels)):
        time_cell, event_cell = label_cells(samples, i, [time_column, event_column])
        rows.append((_time(samples, i, time_cell, time_column), _event(samples, i, event_cell, event_column)))
    targets = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 2)
    check_has_events(targets.numpy(), f"the data ({len(rows)} samples)", event_column)
    return targets


def check_has_events(targets: np.ndarray, what: str, event_column: str = "event") -> None:
    """DataError when no sample of `targets` had the event (all censored)."""
    if len(targets) and not (targets[:, 1] > 0.5).any():
        raise DataError(f"{what}: every sample is censored (column {event_column!r} is 0 everywhere); "
                        "a survival model needs observed events")


def _time(samples: Samples, i: int, cell: object, column: str) -> float:
    where = f"{where_of(samples, i)}: column {column!r}"
    if cell is None or (isinstance(cell, str) and cell.strip().lower() in ("", "nan", "na")):
        raise DataError(f"{where}: the time is missing; every sample needs a time (event or censoring)")
    try:
        value = float(cell)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{where}: time {cell!r} is not a number") from None
    if math.isnan(value):
        raise DataError(f"{where}: the time is missing; every sample needs a time (event or censoring)")
    if math.isinf(value) or value < 0:
        raise DataError(f"{where}: time {cell!r} must be a finite number >= 0")
    return value


def _event(samples: Samples, i: int, cell: object, column: str) -> float:
    text = str(cell).strip().lower() if cell is not None else ""
    if isinstance(cell, bool):
        return float(cell)
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    raise DataError(f"{where_of(samples, i)}: column {column!r}: event {cell!r} must be 0/1 or true/false "
                    "(1 = the event was observed, 0 = censored)")
