"""The tabular modality in an experiment: a table -> typed columns -> an encoding fitted on the
training split -> one float matrix per split; and the same encoding for `biomx predict`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.errors import DataError
from biomx.modalities.common.table_encoding import (
    encoded_names,
    fit,
    model_inputs,
    parse_column,
    transform,
)
from biomx.modalities.common.table_readers import Table, read_table, text_cells
from biomx.modalities.common.tensor_dataset import RowTensorDataset
from biomx.modalities.tabular.table import ParsedTable, label_columns, load_parsed

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def load(cfg: ExperimentConfig) -> Samples:
    """Read (or take from the cache) and type the table; Samples.inputs is the ParsedTable."""
    parsed, digest = load_parsed(cfg.data)
    columns = label_columns(cfg.data)
    return Samples(
        inputs=parsed,
        labels=parsed.labels,
        ids=parsed.ids,
        groups=np.array(parsed.groups, dtype=object) if parsed.groups and any(parsed.groups) else None,
        predefined=_predefined(parsed),
        source_sha256=digest,
        where=_Where(parsed),
        label_columns=columns if len(columns) > 1 else None,
    )


class _Where(dict):
    """index -> "file row N", computed when asked (a 1M-row table needs no 1M strings up front)."""

    def __init__(self, parsed: ParsedTable) -> None:
        super().__init__()
        self.parsed = parsed

    def get(self, i: int, default: Any = None) -> Any:
        return self.parsed.where(int(i)) if 0 <= int(i) < len(self.parsed.ids) else default

    def __getitem__(self, i: int) -> str:
        return self.parsed.where(int(i))

    def __contains__(self, i: object) -> bool:
        return isinstance(i, (int, np.integer)) and 0 <= int(i) < len(self.parsed.ids)


def _predefined(parsed: ParsedTable) -> dict[str, np.ndarray] | None:
    if parsed.split_names is None:
        return None
    names = np.array([SPLIT_NAMES.get(s.strip().lower(), "") for s in parsed.split_names])
    bad = np.flatnonzero(names == "")
    if len(bad):
        raise DataError(f"{parsed.where(int(bad[0]))}: split column has {parsed.split_names[bad[0]]!r}; "
                        "expected train, val or test")  # fmt: skip
    return {s: np.flatnonzero(names == s) for s in ("train", "val", "test") if (names == s).any()}


def sample_digests(samples: Samples) -> list[str] | None:
    """A hash of each row's feature values, for the duplicates-across-splits check."""
    import pandas as pd

    parsed: ParsedTable = samples.inputs
    frame = pd.DataFrame({f"c{k}": v for k, v in enumerate(parsed.values.values())})
    return [f"{h:016x}" for h in pd.util.hash_pandas_object(frame, index=False).to_numpy()]


class TabularDataset(RowTensorDataset):
    """The encoded table's rows, with the encoding that made them (for the explanations)."""

    def __init__(self, x: torch.Tensor, targets: torch.Tensor, index: np.ndarray,
                 encoding: dict[str, Any] | None = None) -> None:  # fmt: skip
        super().__init__(x, targets, index)
        self.encoding = encoding


def build_datasets(samples: Samples, targets: torch.Tensor, splits: dict[str, np.ndarray],
                   cfg: ExperimentConfig) -> tuple[dict[str, TabularDataset], dict[str, Any], dict[str, Any]]:  # fmt: skip
    """The encoding fitted on the training rows, the encoded datasets, and the model's input sizes."""
    parsed: ParsedTable = samples.inputs
    t = cfg.data.tabular
    encoding = fit(parsed.values, parsed.types, splits["train"], t.max_levels)
    x = torch.from_numpy(transform(parsed.values, encoding))
    datasets = {name: TabularDataset(x, targets, idx, encoding) for name, idx in splits.items()}
    names, columns = encoded_names(encoding)
    pre = {"modality": "tabular", "types": parsed.types, "encoding": encoding, "encoded_names": names,
           "encoded_columns": columns, "id_column": t.id_column,
           "label_columns": label_columns(cfg.data)}  # fmt: skip
    return datasets, pre, model_inputs(encoding)


def inference_model(model: nn.Module, preprocessing: dict[str, Any]) -> nn.Module:
    return model


def read_inputs(preprocessing: dict[str, Any], inputs: list[str | Path], skip_errors: bool = False
                ) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:  # fmt: skip
    """Tables with the run's feature columns (others are ignored; labels may be absent) -> the
    run's encoding applied, one name per row (the id column if present), skipped rows."""
    return read_tables(preprocessing, inputs, skip_errors, transform, len(preprocessing["encoded_names"]))


Encoder = Callable[[dict[str, np.ndarray], dict[str, Any]], np.ndarray]


def read_tables(preprocessing: dict[str, Any], inputs: list[str | Path], skip_errors: bool, encoder: Encoder,
                width: int) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:  # fmt: skip
    """Tables -> `encoder(parsed columns, the run's encoding)` of all their rows (`width` columns),
    names and skipped rows: `transform` for the model's matrix, the export's raw matrix for a graph."""
    matrices, names, failures = [], [], []
    for item in inputs:
        values, row_names, bad = parse_table(preprocessing, read_table(item), skip_errors)
        matrices.append(encoder(values, preprocessing["encoding"]))
        names += row_names
        failures += bad
    x = np.concatenate(matrices) if matrices else np.zeros((0, width), np.float32)
    return torch.from_numpy(x), names, failures


def encode_table(preprocessing: dict[str, Any], table: Table, skip_errors: bool = False
                 ) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:  # fmt: skip
    """One table (read from a file, or built from a DataFrame) -> (the run's encoding of its rows,
    their names, the rows skipped with `skip_errors`)."""
    values, names, failures = parse_table(preprocessing, table, skip_errors)
    return transform(values, preprocessing["encoding"]), names, failures


def parse_table(preprocessing: dict[str, Any], table: Table, skip_errors: bool = False
                ) -> tuple[dict[str, np.ndarray], list[str], list[tuple[str, str]]]:  # fmt: skip
    """One table -> (its feature columns parsed to the run's types, kept rows only; the kept rows'
    names; the rows skipped with `skip_errors`)."""
    types: dict[str, str] = preprocessing["types"]
    for name in types:
        table.column(name, "a feature column of the run")
    bad: list[int] = []
    values = {name: parse_column(table, name, kind, bad if skip_errors else None) for name, kind in types.items()}
    keep = np.setdiff1d(np.arange(len(table)), np.asarray(bad, dtype=np.int64))
    failures = [(table.where(i), "a value does not fit its column's type") for i in sorted(set(bad))]
    id_column = preprocessing.get("id_column")
    if id_column and id_column in table.columns:
        row_names = text_cells(table.columns[id_column]).tolist()
    else:
        row_names = [table.where(i) for i in range(len(table))]
    return {k: v[keep] for k, v in values.items()}, [row_names[i] for i in keep], failures
