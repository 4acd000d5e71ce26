"""Class weights of a classification task: validating `task.class_weights`, and 'balanced'
weights from the training targets."""

from __future__ import annotations

import numpy as np

from biomx.errors import ConfigError, DataError
from biomx.tasks.stats import as_float


def check_weights(weights: object, k: int) -> list[float]:
    """Validate task.class_weights: k finite numbers > 0."""
    if not isinstance(weights, (list, tuple)) or len(weights) != k:
        got = len(weights) if isinstance(weights, (list, tuple)) else repr(weights)
        raise ConfigError(f"task.class_weights: expected {k} values (one per class), got {got}")
    values = [as_float(w, "task.class_weights") for w in weights]
    if not all(np.isfinite(w) and w > 0 for w in values):
        raise ConfigError(f"task.class_weights: every weight must be finite and > 0, got {values}")
    return values


def class_weights_from_counts(targets: np.ndarray, kind: str, num_classes: int) -> list[float]:
    """'Balanced' class weights from the training targets (config `class_weights: balanced`).

    Binary and multiclass: n / (K * count_k), as sklearn's compute_class_weight("balanced").
    Multilabel: negatives_k / positives_k, because there the weights are BCE pos_weights and
    that ratio makes the positives and the negatives of each label weigh the same; missing
    (NaN) entries are neither.

    Args:
        targets: binary (N,) 0/1; multiclass (N,) class indices; multilabel (N, K) 0/1, NaN
            = not measured.
        kind: "binary", "multiclass" or "multilabel".
        num_classes: K (2 for binary).

    Returns:
        One weight per class.

    Raises:
        DataError: if a class (multilabel: a label's positives or negatives) never occurs.
    """
    targets = np.asarray(targets)
    if kind == "multilabel":
        targets = targets.reshape(len(targets), -1)
        observed = ~np.isnan(targets) if targets.dtype.kind == "f" else np.ones(targets.shape, bool)
        pos = np.where(observed, targets, 0).astype(np.int64).sum(axis=0)
        neg = observed.sum(axis=0) - pos
        counts = np.minimum(pos, neg)
    else:
        if targets.dtype.kind == "f" and np.isnan(targets).any():
            raise DataError(f"class_weights: balanced: {kind} targets contain NaN (missing "
                            "labels); only multilabel targets may be missing")
        targets = targets.astype(np.int64).reshape(-1)
        counts = np.bincount(targets, minlength=num_classes)[:num_classes]
    missing = np.flatnonzero(counts == 0)
    if len(missing):
        raise DataError(f"class_weights: balanced: class {int(missing[0])} has no training "
                        "examples (multilabel: no positives or no negatives); "
                        "set task.class_weights explicitly")
    if kind == "multilabel":
        return [float(w) for w in neg / pos]
    return [float(len(targets) / (num_classes * c)) for c in counts]
