"""The table's columns as subgroups (`eval.subgroups`, `protocols.SubgroupModality`): any column of
the file, feature or not (sex, age, race, site...), one value per row; `biomx.fairness` bins numbers."""

from __future__ import annotations

from typing import Any

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.errors import DataError
from biomx.modalities.common.table_readers import read_table


def subgroup_table(cfg: ExperimentConfig, samples: Samples, requested: list[str]) -> dict[str, Any]:
    """Every column of the table but the id column, read again as text (rows are the samples' rows)."""
    table = read_table(cfg.data.path, cfg.data.source)
    if len(table) != len(samples.ids):
        raise DataError(f"{cfg.data.path}: {len(table)} rows, but the run has {len(samples.ids)} samples; "
                        "the table changed since it was loaded")  # fmt: skip
    skip = {cfg.data.tabular.id_column}
    return {name: column for name, column in table.columns.items() if name not in skip}
