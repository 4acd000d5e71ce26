"""Reading patient histories: the history table (long or wide) and the baseline table, checked
against each other; every message names the file, the row and the column.

A history is kept per patient as its visit times (relative to the first visit) and a (visits,
variables) matrix of values with NaN where a variable was not measured at that visit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomx.errors import DataError
from biomx.modalities.common.table_encoding import check_labels, column_types, parse_column
from biomx.modalities.common.table_readers import Table, parse_numbers, read_table, text_cells
from biomx.modalities.history.config import HistorySettings


@dataclass
class Histories:
    """Patients' visits: relative times and values (NaN = not measured), in patient order."""

    variables: list[str]
    times: list[np.ndarray] = field(default_factory=list)  # per patient: (visits,) from the first visit
    values: list[np.ndarray] = field(default_factory=list)  # per patient: (visits, variables)


@dataclass
class Baseline:
    """The baseline table: ids, static covariates (typed like tabular columns), labels."""

    path: str
    ids: list[str]
    types: dict[str, str]
    values: dict[str, np.ndarray]
    labels: list
    rows: dict[str, int]  # patient id -> row index (for messages and joins)
    table: Table


def _numbers(table: Table, name: str, what: str) -> np.ndarray:
    """A numeric column; a DataError naming file, row and column for a non-number."""
    values, bad = parse_numbers(table.column(name, what))
    if len(bad):
        row = int(bad[0])
        raise DataError(f"{table.where(row)}: column {name!r}: {str(table.columns[name][row])!r} is not a number")
    return values


def read_baseline(path: str | Path, settings: HistorySettings, label_columns: list[str], group_column: str | None,
                  need_labels: bool = True) -> Baseline:  # fmt: skip
    """One row per patient: the id, the covariates, the label cells (checked unless not needed)."""
    table = read_table(path)
    ids = text_cells(table.column(settings.id_column, "data.history.id_column")).tolist()
    rows: dict[str, int] = {}
    for i, pid in enumerate(ids):
        if pid == "":
            raise DataError(f"{table.where(i)}: column {settings.id_column!r}: the patient id is missing")
        if pid in rows:
            raise DataError(f"{table.where(i)}: column {settings.id_column!r}: patient {pid!r} has a second "
                            f"baseline row (first at row {rows[pid] + table.first_row})")  # fmt: skip
        rows[pid] = i
    labels: list = []
    if need_labels:
        labels = check_labels(table, label_columns, False, None)
    used = {settings.id_column, *label_columns, *settings.exclude}
    if group_column:
        used.add(group_column)
    for name in [*settings.columns, *settings.exclude]:
        table.column(name, "data.history.columns" if name in settings.columns else "data.history.exclude")
    features = [c for c in table.names if c not in used]
    types = column_types(table, features, settings.columns, 10)
    values = {name: parse_column(table, name, kind, None, "data.history.columns") for name, kind in types.items()}
    return Baseline(str(table.path), ids, types, values, labels, rows, table)


def _long_cells(table: Table, settings: HistorySettings) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(variable index per row, variable names, value per row) of a long table."""
    names = text_cells(table.column(settings.variable_column, "data.history.variable_column"))
    values = _numbers(table, settings.value_column, "data.history.value_column")
    empty = np.flatnonzero(names == "")
    if len(empty):
        raise DataError(f"{table.where(int(empty[0]))}: column {settings.variable_column!r}: the variable name is missing")
    variables = sorted(set(names.tolist()))
    index = {v: k for k, v in enumerate(variables)}
    return np.array([index[v] for v in names], dtype=np.int64), variables, values


def _matrix(table: Table, settings: HistorySettings, variables: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """(rows, variables) values: one row of the table per visit row (NaN = not measured)."""
    if settings.layout == "long":
        var, names, values = _long_cells(table, settings)
        if variables is not None:  # predict: the run's variables, in the run's order (others ignored)
            keep = {v: k for k, v in enumerate(variables)}
            var = np.array([keep.get(names[k], -1) for k in var], dtype=np.int64)
            names = variables
        out = np.full((len(table), len(names)), np.nan)
        ok = var >= 0
        out[np.flatnonzero(ok), var[ok]] = values[ok]
        return out, names
    if variables is None:
        fixed = {settings.id_column, settings.time_column}
        variables = settings.variables or [c for c in table.names if c not in fixed]
    if not variables:
        raise DataError(f"{table.path}: no variable columns besides {settings.id_column!r} and {settings.time_column!r}")
    return np.stack([_numbers(table, v, "a history variable") for v in variables], axis=1), list(variables)


def read_histories(path: str | Path, settings: HistorySettings, baseline_rows: dict[str, int] | None, baseline_path: str,
                   variables: list[str] | None = None, source: str | None = None) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:  # fmt: skip
    """Patient id -> (relative visit times, (visits, variables) values); the variables.

    Rows of one patient at the same time are one visit (a long table's rows of one visit merge;
    a later row's value wins). A patient without a baseline row, a missing or negative time, a
    non-number: a DataError naming file, row and column. `source`: csv, tsv or parquet (default:
    from the suffix)."""
    table = read_table(path, source)
    ids = text_cells(table.column(settings.id_column, "data.history.id_column"))
    times = _numbers(table, settings.time_column, "data.history.time_column")
    for i in np.flatnonzero(np.isnan(times) | (times < 0))[:1]:
        what = "is missing" if np.isnan(times[i]) else f"is negative ({times[i]:g}); times count from 0"
        raise DataError(f"{table.where(int(i))}: column {settings.time_column!r}: the visit time {what}")
    if baseline_rows is not None:
        for i, pid in enumerate(ids):
            if pid not in baseline_rows:
                raise DataError(f"{table.where(i)}: column {settings.id_column!r}: patient {pid!r} has no row in "
                                f"the baseline table {baseline_path}")  # fmt: skip
    matrix, variables = _matrix(table, settings, variables)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    order = np.lexsort((np.arange(len(table)), times, ids.astype(str)))
    bounds = np.flatnonzero(np.r_[True, ids[order][1:] != ids[order][:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        rows = order[a:b]
        visit_times, first = np.unique(times[rows], return_inverse=True)
        values = np.full((len(visit_times), len(variables)), np.nan)
        for k, row in zip(first, rows, strict=True):
            seen = ~np.isnan(matrix[row])
            values[k, seen] = matrix[row, seen]
        out[str(ids[rows[0]])] = (visit_times - visit_times[0], values)
    return out, variables
