"""Column types, and the encoding fitted on the training split only.

Types: a column declared in `data.tabular.columns` has that type. Otherwise it is inferred from
the whole column's text (no statistic is fitted, so this reads no label and leaks nothing):
- boolean: every non-missing cell is true/false, yes/no or t/f (a 0/1 column is numeric);
- numeric: every non-missing cell is a number, and it is not a column of few integers;
- categorical: anything else, and integer columns with at most `max_inferred_levels` distinct
  values, each seen twice on average (codes such as stage 1-4 or a site id).

The encoding (a JSON-able dict, stored in run.json's preprocessing):
- numeric and boolean columns: missing -> the training median; standardised with the training
  mean and std; plus a 0/1 missingness indicator for each column with a missing value in train;
- categorical columns: an index per level seen in train (the `max_levels` most frequent), with
  two reserved levels: 0 = unknown (a level never seen in train, at predict or in val/test) and
  1 = missing. The missing level is that column's missingness indicator.

The encoded matrix is (N, n_numeric + n_categorical) float32: standardised values, indicators,
then the categorical indices; `feature_columns` maps each encoded column back to its column.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from biomx.errors import DataError
from biomx.modalities.common.table_readers import (
    Table,
    bad_value,
    missing_mask,
    no_gc,
    parse_booleans,
    parse_numbers,
    text_cells,
)

UNKNOWN, MISSING_LEVEL = 0, 1  # reserved categorical indices
STD_FLOOR = 1e-8  # a column constant on train is centred, not scaled


def infer_type(cells: np.ndarray, max_levels: int) -> str:
    """numeric, boolean or categorical, from the cells alone (see the module docstring)."""
    missing = missing_mask(cells)
    if missing.all():
        return "numeric"  # all missing: imputed to a constant, harmless
    values, bad = parse_numbers(cells)
    if len(bad) == 0:
        observed = values[~missing]
        integers = np.all(observed == np.round(observed))
        distinct = np.unique(observed)
        # Codes repeat: a level is seen twice on average (so a small table's ages stay numbers).
        coded = len(distinct) <= max_levels and 2 * len(distinct) <= len(observed)
        if integers and coded and not np.isin(distinct, [0.0, 1.0]).all():
            return "categorical"
        return "numeric"
    _, bad_bool = parse_booleans(cells)
    return "boolean" if len(bad_bool) == 0 else "categorical"


def column_types(table: Table, features: list[str], declared: dict[str, str], max_levels: int) -> dict[str, str]:
    return {c: declared.get(c) or infer_type(table.columns[c], max_levels) for c in features}


def parse_column(table: Table, name: str, kind: str, bad_rows: list[int] | None = None,
                 declared_in: str = "data.tabular.columns") -> np.ndarray:  # fmt: skip
    """A column's values: float (NaN = missing) for numeric/boolean, text ("" = missing) otherwise.

    A cell that does not fit the type raises a DataError naming file, row and column; with
    `bad_rows` given, such rows are appended to it instead (and left missing)."""
    cells = table.columns[name]
    if kind == "categorical":
        return text_cells(cells)
    values, bad = (parse_numbers if kind == "numeric" else parse_booleans)(cells)
    if len(bad):
        if bad_rows is None:
            raise bad_value(table, name, int(bad[0]), kind, declared_in)
        bad_rows.extend(int(r) for r in bad)
    return values


def fit(values: dict[str, np.ndarray], types: dict[str, str], train: np.ndarray, max_levels: int
        ) -> dict[str, Any]:  # fmt: skip
    """The encoding of `values` (parsed columns), from the rows in `train` only."""
    numeric, categorical = [], []
    for name, kind in types.items():
        column = values[name][train]
        if kind == "categorical":
            observed = column[column != ""]
            levels, counts = np.unique(observed.astype(str), return_counts=True)
            keep = np.argsort(-counts, kind="stable")[:max_levels]
            categorical.append({"name": name, "levels": sorted(levels[keep].tolist())})
            continue
        observed = column[~np.isnan(column)]
        if len(observed) == 0:
            median = mean = 0.0
            std = 1.0
        else:
            median, mean, std = float(np.median(observed)), float(observed.mean()), float(observed.std())
        numeric.append({"name": name, "type": kind, "median": median, "mean": mean,
                        "std": std if std > STD_FLOOR else 1.0,
                        "indicator": bool(len(observed) < len(column))})  # fmt: skip
    return {"numeric": numeric, "categorical": categorical}


def encoded_names(encoding: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(name of each encoded column, the table column it comes from)."""
    names = [c["name"] for c in encoding["numeric"]]
    names += [f"{c['name']} missing" for c in encoding["numeric"] if c["indicator"]]
    names += [c["name"] for c in encoding["categorical"]]
    columns = [c["name"] for c in encoding["numeric"]]
    columns += [c["name"] for c in encoding["numeric"] if c["indicator"]]
    columns += [c["name"] for c in encoding["categorical"]]
    return names, columns


def model_inputs(encoding: dict[str, Any]) -> dict[str, Any]:
    """The model's input arguments: how many continuous columns, and each categorical's levels."""
    n_numeric = len(encoding["numeric"]) + sum(c["indicator"] for c in encoding["numeric"])
    return {"n_numeric": n_numeric, "cardinalities": [len(c["levels"]) + 2 for c in encoding["categorical"]]}


def transform(values: dict[str, np.ndarray], encoding: dict[str, Any]) -> np.ndarray:
    """The encoded (N, F) float32 matrix of parsed columns (see the module docstring)."""
    import pandas as pd

    n = len(next(iter(values.values()))) if values else 0
    numeric, indicators, codes = [], [], []
    for c in encoding["numeric"]:
        column = values[c["name"]]
        missing = np.isnan(column)
        numeric.append((np.where(missing, c["median"], column) - c["mean"]) / c["std"])
        if c["indicator"]:
            indicators.append(missing.astype(np.float64))
    for c in encoding["categorical"]:
        column = values[c["name"]].astype(str)
        found = pd.Categorical(column, categories=c["levels"]).codes.astype(np.int64)  # -1: not a level
        codes.append(np.where(column == "", MISSING_LEVEL, np.where(found < 0, UNKNOWN, found + 2)))
    parts = numeric + indicators + codes
    if not parts:
        return np.zeros((n, 0), np.float32)
    return np.stack(parts, axis=1).astype(np.float32)


def check_labels(table: Table, columns: list[str], keep_missing: bool,
                 keep_key: str | None = "data.tabular.missing_labels") -> list:  # fmt: skip
    """The label cells (text), one per row, a list per row for several columns; a missing label
    is a DataError naming file, row and column unless `keep_missing` (`keep_key`: the setting
    that keeps them, named in the message; None where the reading modality has none)."""
    cells = []
    for name in columns:
        column = table.column(name, "data.label_column")
        missing = missing_mask(column)
        if missing.any() and not keep_missing:
            row = int(np.flatnonzero(missing)[0])
            keep = f", or set {keep_key}: keep for multi-task labels" if keep_key else ""
            raise DataError(f"{table.where(row)}: column {name!r}: the label is missing "
                            f"({int(missing.sum())} rows lack it; drop those rows{keep})")  # fmt: skip
        cells.append(np.where(missing, "", text_cells(column)).tolist())
    if len(columns) == 1:
        return cells[0]
    with no_gc():
        return [list(row) for row in zip(*cells, strict=True)]
