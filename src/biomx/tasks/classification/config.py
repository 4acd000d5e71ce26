"""`task:` for classification (task.kind: classification)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from biomx.config import Fraction, PositiveFloat, TaskConfig


class ClassificationConfig(TaskConfig):
    kind: Literal["classification"] = "classification"
    type: Literal["auto", "binary", "multiclass", "multilabel"] = "auto"
    classes: list[str] | None = None  # class names in label order; default: from the data
    class_weights: Literal["none", "balanced"] | list[PositiveFloat] = "none"
    label_smoothing: Fraction = 0.0
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
