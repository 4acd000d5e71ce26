"""What a regression model's explanations show: the spread of predictions, or the best and the
worst predicted samples, and how they are captioned (see classification/explain.py)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from biomx.errors import ConfigError
from biomx.explain.picks import spread_over_range, take_groups


def pick_examples(task: Any, preds: np.ndarray, targets: np.ndarray, n: int) -> list[int]:
    """Test cases spread over the range of predicted values (of the first target)."""
    if n <= 0 or len(targets) == 0:
        return []
    return spread_over_range(preds.reshape(len(preds), -1)[:, 0], n)


def attribution_target(task: Any, preds: np.ndarray) -> tuple[np.ndarray, int]:
    """(predicted values, output 0): evidence for a higher value of the first target."""
    return preds, 0


def caption(task: Any, target: np.ndarray, pred: np.ndarray, predicted: Any) -> str:
    return f"true: {float(np.ravel(target)[0]):.3g} | predicted: {float(np.ravel(pred)[0]):.3g}"


def class_views(task: Any, preds: np.ndarray, targets: np.ndarray) -> list:
    """No classes to look for evidence of (motif discovery is for classifiers)."""
    return []


def pick_explained(task: Any, preds: np.ndarray, targets: np.ndarray, n: int) -> list[tuple[int, str, int]]:
    """(row, group, output column): the smallest and the largest absolute errors of target 0."""
    total = len(preds)
    error = np.abs(preds.reshape(total, -1)[:, 0] - targets.reshape(total, -1)[:, 0])
    labelled = np.flatnonzero(np.isfinite(error))
    ranked = labelled[np.argsort(error[labelled], kind="stable")]
    groups = [("best", ranked), ("worst", ranked[::-1])]
    return [(row, group, 0) for row, group in take_groups(groups, n, total)]


def describe(task: Any, column: int, pred: np.ndarray, target: np.ndarray) -> tuple[str, float, object, str]:
    """(caption, prediction, truth for JSON, the output explained) of one picked sample."""
    name = task.targets[0]
    value, truth = float(np.ravel(pred)[0]), float(np.ravel(target)[0])
    measured = f"{truth:.3g}" if math.isfinite(truth) else "missing"
    return (f"{name}: predicted {value:.3g}, measured {measured}", value,
            truth if math.isfinite(truth) else None, name)  # fmt: skip


def attribution_text(task: Any) -> tuple[str, str]:
    return (f"the model's raw output for {task.targets[0]} (before scaling back to its units)",
            "the best and the worst predicted test samples")


def output_for(task: Any, class_name: str | None) -> tuple[int, float, str]:
    """Refused: a regression model has no classes to pick an output by.

    Raises:
        ConfigError: always, naming the model's targets.
    """
    raise ConfigError(f"a regression model (targets {task.targets}) has no classes to explain; "
                      "this needs a classification run")
