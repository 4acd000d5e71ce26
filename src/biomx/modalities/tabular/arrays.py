"""In-memory tables for `biomx.predictor`: a pandas DataFrame (or a dict of columns, or a list of
row dicts) encoded with the run's encoding exactly as the rows of a file holding it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from biomx.errors import DataError
from biomx.modalities.common.table_readers import Table, table_from_frame
from biomx.modalities.tabular.pipeline import encode_table

_WHERE = Path("<table in memory>")  # what messages name: rows are counted from 0, as pandas does


def read_objects(preprocessing: dict[str, Any], objects: Any) -> tuple[torch.Tensor, list[str]]:
    """A DataFrame, a dict of columns or a list of row dicts -> (encoded rows, names).

    Numbers stay numbers and everything else is read as text, as a Parquet file's columns are.

    Raises:
        DataError: not a table (e.g. an array or a string), a missing feature column, a value
            that does not fit its column's type (naming the row and column).
    """
    x, names, _ = encode_table(preprocessing, _table(objects))
    return torch.from_numpy(x), names


def _table(objects: Any) -> Table:
    import pandas as pd

    if isinstance(objects, (list, tuple)) and objects and all(isinstance(o, dict) for o in objects):
        objects = pd.DataFrame(list(objects))
    elif isinstance(objects, dict):
        objects = pd.DataFrame(objects)
    if not isinstance(objects, pd.DataFrame):
        raise DataError(f"a tabular run reads tables: a pandas DataFrame, a dict of columns, a list of row "
                        f"dicts, or CSV/TSV/Parquet files; got a {type(objects).__name__}")  # fmt: skip
    if len(objects) == 0:
        raise DataError("the table in memory has no rows")
    return table_from_frame(objects, _WHERE, first_row=0)
