"""Prediction tasks: what a model's outputs mean, how they are trained and how they are scored.

`classification` covers binary, multiclass and multilabel problems; `regression` covers one or
several continuous targets (standardised for training, predicted in the original units);
`segmentation` labels every voxel (scored per case: Dice, HD95, surface Dice).
Every task has `loss`, `predictions`, `quick_metrics`, `evaluate`, `prediction_columns`,
`out_dim`, `kind` and `classes`.
"""

from __future__ import annotations

from typing import Any

from biomx.tasks.classification.task import (
    QUICK_METRICS,
    ClassificationTask,
    build_task,
    class_weights_from_counts,
)
from biomx.tasks.segmentation.task import (
    SEGMENTATION_QUICK_METRICS,
    SegmentationTask,
    build_segmentation_task,
)

REGRESSION_QUICK_METRICS = ("rmse", "mae", "r2", "spearman", "pearson")


def quick_metric_names(kind: str) -> tuple[str, ...]:
    """The validation metrics a task of this kind reports each epoch (for train.monitor)."""
    if kind == "regression":
        return REGRESSION_QUICK_METRICS
    if kind == "segmentation":
        return SEGMENTATION_QUICK_METRICS
    return tuple(QUICK_METRICS)


def task_from_info(info: dict[str, Any]):
    """Rebuild a run's task from the "task" entry of its run.json (or checkpoint)."""
    if info["kind"] == "regression":
        from biomx.tasks.regression.task import build_regression_task

        return build_regression_task(info["targets"], info["loss"], info["mean"], info["std"])
    if info["kind"] == "segmentation":
        return build_segmentation_task(info["classes"], info.get("loss"), info.get("min_component_size", 0.0))
    return build_task(info["kind"], info["classes"], threshold=info["threshold"])


__all__ = ["ClassificationTask", "SegmentationTask", "build_segmentation_task", "build_task", "class_weights_from_counts",
           "quick_metric_names", "task_from_info"]
