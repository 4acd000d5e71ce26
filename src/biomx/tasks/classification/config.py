"""`task:` for classification (task.kind: classification)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from biomx.config import Fraction, PositiveFloat, Section, TaskConfig

RULES = ("fixed", "youden", "sensitivity", "specificity")


class OperatingPointConfig(Section):
    """`task.operating_point`: how a binary task's decision threshold is chosen on the validation
    split (docs/trust.md). `fixed` keeps `task.threshold`; the others pick the threshold that
    maximises Youden's J, or reaches `target` sensitivity (specificity) with the best specificity
    (sensitivity) on the validation split."""

    rule: Literal["fixed", "youden", "sensitivity", "specificity"] = "fixed"
    target: Annotated[float, Field(gt=0.0, le=1.0)] | None = None  # sensitivity / specificity; default 0.95

    @model_validator(mode="after")
    def _target_fits_rule(self) -> OperatingPointConfig:
        if self.target is not None and self.rule not in ("sensitivity", "specificity"):
            raise ValueError(f"target is for rule: sensitivity or specificity, not rule: {self.rule}")
        return self


class ClassificationConfig(TaskConfig):
    kind: Literal["classification"] = "classification"
    type: Literal["auto", "binary", "multiclass", "multilabel"] = "auto"
    classes: list[str] | None = None  # class names in label order; default: from the data
    class_weights: Literal["none", "balanced"] | list[PositiveFloat] = "none"
    label_smoothing: Fraction = 0.0
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    operating_point: OperatingPointConfig = Field(default_factory=OperatingPointConfig)
