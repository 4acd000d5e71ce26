"""Prediction tasks: what a model's outputs mean, how they are trained and how they are scored.

`classification` covers binary, multiclass and multilabel problems: the loss, the conversion of
logits to probabilities and labels, and the metrics (with bootstrap confidence intervals).
"""

from biomx.tasks.classification import (
    ClassificationTask,
    build_task,
    class_weights_from_counts,
)

__all__ = ["ClassificationTask", "build_task", "class_weights_from_counts"]
