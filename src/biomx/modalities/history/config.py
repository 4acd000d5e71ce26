"""The history modality's config: `data.modality: history` and its section `data.history`.

`data.path` is the history table (long: id, time, variable, value; or wide: id, time, one column
per variable); `data.history.baseline` the one-row-per-patient table with the static covariates
and the labels (`data.label_column`; `[time, event]` for survival).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from biomx.config import DataConfig, Section

ColumnType = Literal["numeric", "categorical", "boolean"]


class HistorySettings(Section):
    """How patient histories (visits at irregular times) are read, aligned and encoded."""

    baseline: str  # the baseline table: one row per patient, static covariates and labels
    id_column: str = "id"  # the patient id, in both tables
    time_column: str = "time"  # the visit time, in the history table (any unit, >= 0)
    layout: Literal["long", "wide"] = "wide"
    variable_column: str = "variable"  # long layout: the measured variable's name
    value_column: str = "value"  # long layout: the measured value (a number)
    variables: list[str] | None = None  # wide layout: the measured columns; None = all but id and time
    columns: dict[str, ColumnType] = {}  # declared types of baseline covariates (else inferred)
    exclude: list[str] = []  # baseline columns never used as covariates
    landmark: Annotated[float, Field(ge=0)] | None = None  # only visits at or before this time
    # With a landmark: the label column holding an event time (survival: the time column). Only
    # patients with a time after the landmark (still at risk) are kept, their times counted from it.
    at_risk_column: str | None = None
    max_visits: Annotated[int, Field(ge=1, le=10_000)] = 64  # the most recent visits kept per patient
    time_scale: Annotated[float, Field(gt=0)] = 1.0  # times are divided by this before the model sees them
    max_levels: Annotated[int, Field(ge=2, le=100_000)] = 1000


class HistoryData(DataConfig):
    """`data:` for patient histories (CSV, TSV, Parquet) with a baseline table."""

    modality: Literal["history"] = "history"
    history: HistorySettings

    sources: ClassVar[tuple[str, ...]] = ("csv", "tsv", "parquet")
    multi_label_columns: ClassVar[bool] = True
    path_keys: ClassVar[tuple[str, ...]] = ("baseline",)
