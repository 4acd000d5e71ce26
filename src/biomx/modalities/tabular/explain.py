"""Report sections for a tabular run: the encoding, the LightGBM baseline, attributions."""

from __future__ import annotations

import numpy as np
from torch import nn

from biomx.config import ExperimentConfig
from biomx.modalities.common.table_encoding import encoded_names
from biomx.modalities.tabular.baseline import baseline_section
from biomx.modalities.tabular.interpret import explanation_sections
from biomx.protocols import Task, TestView


def encoding_section(encoding: dict, values: dict[str, np.ndarray], train: np.ndarray) -> dict:
    """One row per feature column: its type, how much of it is missing in train, how it is encoded."""
    rows = []
    for c in encoding["numeric"]:
        missing = float(np.isnan(values[c["name"]][train]).mean()) if len(train) else 0.0
        how = f"median {c['median']:.4g} imputed, mean {c['mean']:.4g}, sd {c['std']:.4g}"
        rows.append([c["name"], c["type"], f"{missing:.1%}", how + (", missing indicator" if c["indicator"] else "")])
    for c in encoding["categorical"]:
        missing = float((values[c["name"]][train] == "").mean()) if len(train) else 0.0
        rows.append([c["name"], "categorical", f"{missing:.1%}",
                     f"{len(c['levels'])} levels + missing + unknown"])  # fmt: skip
    return {"title": "Table encoding (fitted on the training split)",
            "text": "Missing numbers take the training median (and a 0/1 indicator where train had any missing); "
            "numbers are standardised with the training mean and sd; categoricals keep their training levels, "
            "with a missing level and an unknown level for values never seen in training.",
            "table": {"header": ["column", "type", "missing in train", "encoding"], "rows": rows}}  # fmt: skip


def explain(model: nn.Module, task: Task, test: TestView, n: int, cfg: ExperimentConfig) -> list[dict]:
    """The encoding, the LightGBM baseline (data.tabular.baseline), and integrated gradients."""
    encoding = test.data.encoding
    _, encoded_columns = encoded_names(encoding)
    n_continuous = len(encoded_columns) - len(encoding["categorical"])
    categorical = list(range(n_continuous, len(encoded_columns)))
    sections = [encoding_section(encoding, test.samples.inputs.values, test.splits["train"])]
    if cfg.data.tabular.baseline:
        section = baseline_section(task, test, cfg, categorical)
        if section:
            sections.append(section)
    return sections + explanation_sections(model, task, test, n, encoded_columns, n_continuous)
