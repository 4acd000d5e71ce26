"""Classification: binary, multiclass and multilabel (multi-task) problems, as a `TaskType` plug-in.

Labels are class names (or several 0/1 label columns, Tox21-style); the model outputs logits;
the test split is scored with bootstrap CIs, curves, confusion matrices and calibration.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.tasks.classification.config import ClassificationConfig
from biomx.tasks.classification.labels import encode_labels
from biomx.tasks.classification.metrics import QUICK_METRICS
from biomx.tasks.classification.task import ClassificationTask, build_task
from biomx.tasks.classification.weights import class_weights_from_counts
from biomx.tasks.rows import build_datasets, check_config, load

name = "classification"
config = ClassificationConfig
quick_metric_names = tuple(QUICK_METRICS)


def targets(cfg: ExperimentConfig, samples: Samples) -> tuple[torch.Tensor, np.ndarray | None]:
    """Encoded labels; single-label problems stratify their splits by class."""
    encoded, _, _ = encode_labels(samples, cfg.task.classes, cfg.task.type)
    return encoded, encoded.numpy() if encoded.ndim == 1 else None


def build(cfg: ExperimentConfig, samples: Samples, targets: torch.Tensor, train_index: np.ndarray) -> ClassificationTask:
    encoded, classes, kind = encode_labels(samples, cfg.task.classes, cfg.task.type)
    weights = cfg.task.class_weights
    if weights == "balanced":  # from the training split only
        weights = class_weights_from_counts(encoded[train_index].numpy(), kind, len(classes))
    op = cfg.task.operating_point
    return build_task(kind, classes, None if weights == "none" else weights, cfg.task.label_smoothing,
                      cfg.task.threshold, {"rule": op.rule, "target": op.target})  # fmt: skip


def from_info(info: dict[str, Any]) -> ClassificationTask:
    """The run's task; `threshold` is the one its evaluation chose (older runs: the configured one)."""
    return build_task(info["kind"], info["classes"], threshold=info["threshold"],
                      operating_point={**(info.get("operating_point") or {}),
                                       "label_thresholds": info.get("label_thresholds")})


__all__ = [
    "name",
    "config",
    "quick_metric_names",
    "check_config",
    "load",
    "targets",
    "build",
    "build_datasets",
    "from_info",
    "ClassificationTask",
    "build_task",
    "class_weights_from_counts",
]
