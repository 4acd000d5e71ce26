"""`task:` for regression (task.kind: regression)."""

from __future__ import annotations

from typing import Literal

from biomx.config import TaskConfig


class RegressionConfig(TaskConfig):
    kind: Literal["regression"] = "regression"
    loss: Literal["mse", "huber", "mae"] | None = None  # on standardised targets; default mse
    target_name: str | None = None  # name shown in reports (default: the label column)
