"""A tabular run's exported graph input: the feature values as read, encoded inside the graph.

The raw row holds each numeric or boolean column's value (NaN = missing) and each categorical
column's level as its position in the run's level list (NaN = missing, -1 = a level the run never
saw), so a client needs only the feature order and the level lists the sidecar carries. The
run's encoding (`common.table_encoding`: median imputation, standardisation with the training
mean and std, missingness indicators, categorical codes with 0 = unknown and 1 = missing) is
tensor ops inside the graph, in float64 as `transform` computes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biomx.data.samples import Samples
from biomx.modalities.common.table_encoding import MISSING_LEVEL, UNKNOWN
from biomx.modalities.tabular.pipeline import read_tables
from biomx.protocols import ExportPlan, GraphInput


def raw_width(encoding: dict[str, Any]) -> int:
    return len(encoding["numeric"]) + len(encoding["categorical"])


def raw_matrix(values: dict[str, np.ndarray], encoding: dict[str, Any]) -> np.ndarray:
    """Parsed columns (numbers: float, NaN = missing; categoricals: text, "" = missing) -> the
    graph's raw float32 (N, numeric + categorical columns) (see the module docstring)."""
    import pandas as pd

    n = len(next(iter(values.values()))) if values else 0
    parts = [np.asarray(values[c["name"]], dtype=np.float64) for c in encoding["numeric"]]
    for c in encoding["categorical"]:
        column = values[c["name"]].astype(str)
        found = pd.Categorical(column, categories=c["levels"]).codes.astype(np.float64)  # -1: not a level
        parts.append(np.where(column == "", np.nan, found))
    return np.stack(parts, axis=1).astype(np.float32) if parts else np.zeros((n, 0), np.float32)


class TableEncoding(nn.Module):
    """Raw rows (B, numeric + categorical) -> the encoded matrix `transform` gives (module docstring)."""

    def __init__(self, encoding: dict[str, Any]) -> None:
        super().__init__()
        numeric, categorical = encoding["numeric"], encoding["categorical"]
        self.n_numeric = len(numeric)

        def column(key: str) -> torch.Tensor:
            return torch.tensor([c[key] for c in numeric], dtype=torch.float64)

        self.register_buffer("median", column("median"))
        self.register_buffer("mean", column("mean"))
        self.register_buffer("std", column("std"))
        self.register_buffer("indicators", torch.tensor([k for k, c in enumerate(numeric) if c["indicator"]],
                                                        dtype=torch.long))  # fmt: skip
        self.register_buffer("levels", torch.tensor([len(c["levels"]) for c in categorical], dtype=torch.float64))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.double()
        values, codes = x[:, : self.n_numeric], x[:, self.n_numeric :]
        missing = torch.isnan(values)
        z = (torch.where(missing, self.median, values) - self.mean) / self.std
        flags = missing.index_select(1, self.indicators).double()
        known = (codes >= 0) & (codes < self.levels)
        code = torch.where(torch.isnan(codes), float(MISSING_LEVEL), torch.where(known, codes + 2, float(UNKNOWN)))
        return torch.cat([z, flags, code], dim=1).float()


def features(encoding: dict[str, Any]) -> list[dict[str, Any]]:
    """The raw columns in order, with their types (and a categorical's levels)."""
    out = [{"name": c["name"], "type": c["type"]} for c in encoding["numeric"]]
    return out + [{"name": c["name"], "type": "categorical", "levels": c["levels"]} for c in encoding["categorical"]]


def export_plan(preprocessing: dict[str, Any]) -> ExportPlan:
    """Feature values in, the run's encoding inside (see the module docstring)."""
    encoding = preprocessing["encoding"]
    width = raw_width(encoding)
    names = [f["name"] for f in features(encoding)]
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    description = (f"float32 (batch, {width}): one row per record, the columns in example.features order ({shown}); "
                   "numeric columns as numbers, boolean columns as 1 (true/yes) or 0 (false/no), categorical "
                   "columns as the position of the value in that feature's example levels list (-1 for a value "
                   "not in it); NaN for a missing value")  # fmt: skip
    n_flags = sum(c["indicator"] for c in encoding["numeric"])
    return ExportPlan(
        prepare=TableEncoding(encoding),
        input=GraphInput(name="features", dtype="float32", shape=["batch", width], description=description),
        outside="reading the table and putting each record's feature values in the run's column order "
                "(categories as positions in their level lists)",
        inside=["missing numbers imputed with the training median, then standardised with the training mean and std",
                f"{n_flags} missingness indicators (1 where the value was missing)",
                "categories as codes: 0 unknown level, 1 missing, 2 + the level's position"],
        example={"features": features(encoding), "missing": "NaN", "unknown_level": -1,
                 "encoded_names": preprocessing.get("encoded_names")},
    )  # fmt: skip


def read_raw(preprocessing: dict[str, Any], inputs: list[str | Path],
             skip_errors: bool = False) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:  # fmt: skip
    """Tables -> raw float32 rows as the graph takes them, row names, skipped rows."""
    encoding = preprocessing["encoding"]
    return read_tables(preprocessing, inputs, skip_errors, raw_matrix, raw_width(encoding))


def raw_rows(preprocessing: dict[str, Any], samples: Samples, index: np.ndarray) -> torch.Tensor:
    """The raw rows `index` of the run's parsed table."""
    rows = np.asarray(index, dtype=np.int64)
    values = samples.inputs.values
    return torch.from_numpy(raw_matrix({c: values[c][rows] for c in preprocessing["types"]}, preprocessing["encoding"]))
