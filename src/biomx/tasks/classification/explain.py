"""What a classification model's explanations show: which test samples, which output, what caption.

Modalities draw the attributions (saliency maps, logos, atom colours); these hooks decide
the rest, so that no modality needs to know whether a problem is binary, multiclass or multilabel.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from biomx.errors import ConfigError
from biomx.explain.picks import take_groups


def pick_examples(task: Any, probs: np.ndarray, targets: np.ndarray, n: int) -> list[int]:
    """Test cases worth looking at: the most confident hits and the most confident misses."""
    if n <= 0 or len(targets) == 0:
        return []
    if task.kind == "multilabel":
        return list(range(min(n, len(targets))))
    predicted = task.predict_labels(probs)
    confidence = probs if task.kind == "binary" else probs.max(axis=1)
    if task.kind == "binary":
        confidence = np.where(predicted == 1, confidence, 1 - confidence)
    truth = targets.astype(np.int64)
    wrong, right = np.flatnonzero(predicted != truth), np.flatnonzero(predicted == truth)
    wrong = wrong[np.argsort(-confidence[wrong])][: n // 2]
    right = right[np.argsort(-confidence[right])][: n - len(wrong)]
    return sorted(np.concatenate([right, wrong]).tolist())


def attribution_target(task: Any, probs: np.ndarray) -> tuple[np.ndarray, torch.Tensor | int | None]:
    """(predicted labels, the output to attribute) for the chosen rows' probabilities.

    Multiclass: the predicted class. Binary models have one logit: explain it (evidence for the
    positive class). Multilabel: the first label.
    """
    predicted = task.predict_labels(probs)
    target = torch.as_tensor(predicted) if task.kind == "multiclass" else None if task.kind == "binary" else 0
    return predicted, target


def caption(task: Any, target: np.ndarray, prob: np.ndarray, predicted: Any) -> str:
    """One example's caption: the truth, and the prediction with its probability."""
    if task.kind == "multilabel":
        return f"true: {'|'.join(task.classes[k] for k in np.flatnonzero(target)) or '-'}"
    # A binary model gives P(positive class): name that class, or "p=0.01" next to a negative
    # prediction reads as the prediction's own probability.
    p = f"p({task.classes[1]})={float(np.ravel(prob)[0]):.2f}" if task.kind == "binary" else f"p={float(prob.max()):.2f}"
    return f"true: {task.classes[int(target)]} | predicted: {task.classes[int(predicted)]} ({p})"


def class_views(task: Any, probs: np.ndarray, targets: np.ndarray) -> list[tuple[str, int, float, np.ndarray, np.ndarray]]:
    """(class name, logit index, sign, P(class), is-this-class) for each class to look for evidence of."""
    if task.kind == "binary":
        # One logit: positive attributions are evidence for the positive class, negative for the other.
        return [(task.classes[1], 0, 1.0, probs, targets == 1), (task.classes[0], 0, -1.0, 1.0 - probs, targets == 0)]
    if task.kind == "multilabel":
        return [(name, k, 1.0, probs[:, k], targets[:, k] == 1) for k, name in enumerate(task.classes)]
    return [(name, k, 1.0, probs[:, k], targets == k) for k, name in enumerate(task.classes)]


def pick_explained(task: Any, preds: np.ndarray, targets: np.ndarray, n: int) -> list[tuple[int, str, int]]:
    """(row, group, output column): the most confident correct positives and the most confident
    mistakes (binary, multilabel label 0); multiclass: the most confident correct and wrong
    predictions, explaining the predicted class. Samples with a missing label only top up."""
    total = len(preds)
    if task.kind == "multiclass":
        predicted = preds.argmax(axis=1)
        confidence = preds[np.arange(total), predicted]
        labelled = np.isfinite(targets)
        truth = np.where(labelled, targets, -1).astype(np.int64)
        correct = np.flatnonzero(labelled & (predicted == truth))
        wrong = np.flatnonzero(labelled & (predicted != truth))
        groups = [("confident", correct[np.argsort(-confidence[correct], kind="stable")]),
                  ("miss", wrong[np.argsort(-confidence[wrong], kind="stable")])]  # fmt: skip
        return [(row, group, int(predicted[row])) for row, group in take_groups(groups, n, total)]
    p = preds.reshape(total, -1)[:, 0]
    y = targets.reshape(total, -1)[:, 0].astype(np.float64)
    labelled = np.isfinite(y)
    positive = np.flatnonzero(labelled & (y == 1) & (p >= 0.5))
    wrong = np.flatnonzero(labelled & ((p >= 0.5) != (y == 1)))
    groups = [("confident", positive[np.argsort(-p[positive], kind="stable")]),
              ("miss", wrong[np.argsort(-np.abs(p[wrong] - y[wrong]), kind="stable")])]  # fmt: skip
    return [(row, group, 0) for row, group in take_groups(groups, n, total)]


def describe(task: Any, column: int, pred: np.ndarray, target: np.ndarray) -> tuple[str, float, object, str]:
    """(caption, prediction, truth for JSON, the output explained) of one picked sample."""
    names = task.classes
    if task.kind == "multiclass":
        value, truth = float(pred[column]), float(target)
        true_name = names[int(truth)] if math.isfinite(truth) else None
        return (f"P({names[column]}) = {value:.2f}, true: {true_name or 'missing'}", value, true_name,
                names[column])  # fmt: skip
    value, truth = float(np.ravel(pred)[0]), float(np.ravel(target)[0])
    label = names[1] if task.kind == "binary" else names[0]
    true = None if not math.isfinite(truth) else int(truth)
    shown = "missing" if true is None else ("yes" if true else "no")
    return f"P({label}) = {value:.2f}, true {label}: {shown}", value, true, label


def attribution_text(task: Any) -> tuple[str, str]:
    """(which output is attributed, which samples are shown), for a report's text."""
    if task.kind == "multiclass":
        return ("the predicted class's logit",
                "the most confident correct and the most confident wrong predictions")
    label = task.classes[1] if task.kind == "binary" else task.classes[0]
    return f"the logit of {label}", "the most confident correct positives and the worst mistakes"


def output_for(task: Any, class_name: str | None) -> tuple[int, float, str]:
    """(output column, sign, class name) whose logit, times the sign, is the evidence for one class.

    For tools that explain a single output (variant effects, in-silico mutagenesis). Binary
    models have one logit: the positive class is that logit, the negative class its negation
    (sign -1). Multiclass and multilabel: the class's own column. None: the positive class of
    a binary model, else the first class.

    Raises:
        ConfigError: if `class_name` is not one of the classes.
    """
    positive = task.classes[1] if task.kind == "binary" else task.classes[0]
    name = positive if class_name is None else str(class_name)
    if name not in task.classes:
        raise ConfigError(f"{name!r} is not one of the classes {task.classes}")
    if task.kind == "binary":
        return 0, 1.0 if name == positive else -1.0, name
    return task.classes.index(name), 1.0, name
