"""`task:` for regression (task.kind: regression)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from biomx.config import TaskConfig


class RegressionConfig(TaskConfig):
    kind: Literal["regression"] = "regression"
    loss: Literal["mse", "huber", "mae"] | None = None  # on standardised targets; default mse
    target_name: str | None = None  # name shown in reports (default: the label column)
    # Of the targets, e.g. "log mol/L": shown on the report's error metrics and axes. Short, as it
    # sits in table headers and axis labels.
    units: Annotated[str, Field(min_length=1, max_length=40)] | None = None
