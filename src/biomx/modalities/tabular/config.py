"""The tabular modality's config: `data.modality: tabular` and its section `data.tabular`.

Shared keys it reads: `data.path`, `data.source` (csv, tsv, parquet), `data.label_column` (one
column, or a list of columns: e.g. `[time, event]` for survival), `data.group_column` (patient
ids for `data.split.method: group`; used when the table has it), `data.split.column`
(`predefined` splits). None of these columns is ever a feature.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from biomx.config import DataConfig, Section

ColumnType = Literal["numeric", "categorical", "boolean"]


class TabularSettings(Section):
    """How a clinical table (one row per patient) is read and encoded."""

    # Declared column types; a column not listed here is typed by inference (see encoding.py):
    # a column with a non-number is categorical, so is an integer column with at most
    # `max_inferred_levels` distinct values; true/false/yes/no columns are boolean.
    columns: dict[str, ColumnType] = {}
    features: list[str] | None = None  # the feature columns; None = every column not used otherwise
    exclude: list[str] = []  # columns never used as features (free text, dates, other outcomes)
    id_column: str | None = None  # names each row (predictions.csv "path"); default: "<file> row N"
    max_inferred_levels: Annotated[int, Field(ge=0, le=1000)] = 10
    max_levels: Annotated[int, Field(ge=2, le=100_000)] = 1000  # categorical levels kept (most frequent first)
    missing_labels: Literal["raise", "keep"] = "raise"  # keep: empty label cells stay empty (multi-task)
    baseline: bool = True  # also train a LightGBM baseline on the same split (report section)
    baseline_rounds: Annotated[int, Field(ge=1, le=100_000)] = 1000  # boosting rounds at most (early stopping on val)
    cache: bool = True  # keep the parsed table on disk, keyed by the file's content and these settings
    cache_dir: str | None = None  # default: $BIOMX_CACHE or ~/.cache/biomx


class TabularData(DataConfig):
    """`data:` for clinical tables (CSV, TSV, Parquet)."""

    modality: Literal["tabular"] = "tabular"
    tabular: TabularSettings = TabularSettings()

    sources: ClassVar[tuple[str, ...]] = ("csv", "tsv", "parquet")
    multi_label_columns: ClassVar[bool] = True
    path_keys: ClassVar[tuple[str, ...]] = ("cache_dir",)
