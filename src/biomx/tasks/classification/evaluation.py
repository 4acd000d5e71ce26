"""Scoring a classification task: validation of the inputs, quick metrics, full evaluation.

`evaluate` scores the test split with bootstrap CIs, confusion matrices, ROC / PR curves,
calibration and per-class metrics; `quick_metrics` is the cheap per-epoch subset. Both run
the vectorised kernels of `metrics` on one-vs-rest views of the predictions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

import biomx.tasks.classification.decision_curve as decision_curve
import biomx.tasks.classification.operating_point as operating_point
from biomx.errors import ConfigError, DataError
from biomx.tasks.classification.metrics import (
    METRICS,
    QUICK_METRICS,
    calibration,
    calibration_view,
    class_stats,
    confusion_counts,
    downsample,
    summary,
)
from biomx.tasks.stats import BLOCK_VALUES, gather, percentile_ci

if TYPE_CHECKING:
    from biomx.tasks.classification.task import ClassificationTask


def quick_metrics(task: ClassificationTask, probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Cheap metrics for every validation epoch: QUICK_METRICS (macro where K > 2).

    Args:
        task: the classification task (kind, classes, threshold).
        probs: output of `task.probabilities`, as numpy.
        targets: true labels, shaped as for `task.loss` (multilabel: NaN = not measured).

    Returns:
        Metric name -> float; NaN where undefined (one class present, no cases, NaN
        probs), never raising. Multilabel: each label on its observed cases, then macro.

    Raises:
        DataError: if the shapes or target values do not fit the task.
    """
    probs, targets, observed = checked(task, probs, targets)
    if len(targets) == 0 or not np.isfinite(probs).all():  # nothing to score, or diverged
        return {m: float("nan") for m in QUICK_METRICS}
    views = gather(one_vs_rest(task, probs, targets, observed), np.arange(len(targets))[None])
    point = summary(task.kind, *views, n_bins=10)
    return {m: float(point[m][0]) for m in QUICK_METRICS}


def evaluate(task: ClassificationTask, probs: np.ndarray, targets: np.ndarray, *,
             n_bootstrap: int = 1000, ci: float = 0.95, seed: int = 0, n_bins: int = 10) -> dict:
    """Full test evaluation: metrics with bootstrap CIs, confusion, curves, calibration.

    Args:
        task: the classification task (kind, classes, threshold).
        probs: output of `task.probabilities`, as numpy.
        targets: true labels, shaped as for `task.loss` (multilabel: NaN = not measured; each
            label is scored on its observed cases, in the point estimate and in every
            resample).
        n_bootstrap: resamples of the N cases with replacement (0: CIs are NaN).
        ci: level of the percentile intervals.
        seed: seed of the resampling generator; the same seed gives the same CIs.
        n_bins: equal-width probability bins for the ECE and the reliability diagram.

    Returns:
        A JSON-serialisable dict: kind, n, classes, threshold, ci, n_bootstrap, metrics
        ({name: {value, ci_low, ci_high}}), confusion_matrix, curves, calibration, per_class
        (multilabel: with "n", the label's observed cases); binary also operating_point (the
        threshold's and the alternatives' test counts and rates with CIs, see `operating_point`)
        and decision_curve (net benefit per threshold probability, see `decision_curve`).

    Raises:
        DataError: if there are no cases, probs are not finite, or shapes or targets do not fit.
        ConfigError: if n_bootstrap, ci or n_bins is out of range.
    """
    if n_bootstrap < 0 or not 0.0 < ci < 1.0 or n_bins < 1:
        raise ConfigError(f"evaluate: expected n_bootstrap >= 0, 0 < ci < 1, n_bins >= 1, "
                          f"got n_bootstrap={n_bootstrap}, ci={ci}, n_bins={n_bins}")
    probs, targets, observed = checked(task, probs, targets)
    n = len(targets)
    if n == 0:
        raise DataError("evaluate: the test set is empty; check the split or the data filter")
    if not np.isfinite(probs).all():
        raise DataError("evaluate: probs contain NaN or inf; the model diverged (lower the "
                        "learning rate) or a checkpoint is corrupt")
    views = one_vs_rest(task, probs, targets, observed)
    full = gather(views, np.arange(n)[None])
    point = summary(task.kind, *full, n_bins=n_bins)
    boot = _bootstrap(task, views, n_bootstrap, seed, n_bins)
    metrics = {m: {"value": float(point[m][0]), **percentile_ci(boot[m], ci)} for m in METRICS}
    clinical = {}
    if task.kind == "binary":  # the threshold's operating point(s) and the decision curve, with CIs
        clinical = {"operating_point": operating_point.evaluate(task, probs, targets, n_bootstrap, ci, seed),
                    "decision_curve": {**decision_curve.decision_curve(probs, targets, n_bootstrap, ci, seed),
                                       "ci": float(ci)}}  # fmt: skip
    elif task.label_thresholds is not None:  # multilabel: each label at its own threshold
        clinical = {"operating_point": operating_point.evaluate_labels(task, probs, targets, observed, n_bootstrap,
                                                                       ci, seed)}  # fmt: skip
    return {
        "kind": task.kind, "headline": list(task.headline), "n": n, "classes": list(task.classes),
        "threshold": task.threshold,
        "ci": float(ci), "n_bootstrap": int(n_bootstrap), "metrics": metrics,
        "confusion_matrix": _confusion(task, probs, targets, observed),
        "curves": _curves(task, views, class_stats(*full)),
        "calibration": calibration(*calibration_view(task.kind, *full), n_bins),
        "per_class": _per_class(task, views),
        **clinical,
    }


def checked(task: ClassificationTask, probs: np.ndarray,
            targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate shapes and target values for the task; return float64 probs, int64 targets (missing
    multilabel entries as 0) and the observed mask, shaped as the targets."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    k = len(task.classes)
    if task.kind == "binary":
        probs = probs.reshape(-1)
    if task.kind != "multilabel":
        targets = targets.reshape(-1)
    expected = (len(targets),) if task.kind == "binary" else (len(targets), k)
    if probs.shape != expected or targets.shape[0] != probs.shape[0]:
        raise DataError(f"{task.kind} task: probs have shape {probs.shape}, expected "
                        f"{expected}; check the model's out_dim and task.classes")
    if task.kind == "multilabel" and targets.shape != probs.shape:
        raise DataError(f"multilabel task: targets have shape {targets.shape}, "
                        f"expected {probs.shape} (one 0/1 column per class)")
    valid = np.arange(k) if task.kind == "multiclass" else np.array([0, 1])
    observed = np.ones(targets.shape, dtype=bool)
    if task.kind == "multilabel" and targets.dtype.kind == "f":
        observed = ~np.isnan(targets)
        targets = np.where(observed, targets, 0)
    if not np.isin(targets, valid).all():
        missing = " or NaN (not measured)" if task.kind == "multilabel" else ""
        raise DataError(f"{task.kind} task: targets must be in {valid.tolist()}{missing}, "
                        f"got values {np.unique(targets)[:10].tolist()}")
    return probs, targets.astype(np.int64), observed


def one_vs_rest(task: ClassificationTask, probs: np.ndarray, targets: np.ndarray,
                observed: np.ndarray) -> tuple[np.ndarray, ...]:
    """One-vs-rest (y, pred, score, observed), each (N, C); binary has C = 1 (the positive
    class). y is False where the target is missing; `observed` says where it is not."""
    if task.kind == "binary":
        return (targets[:, None] == 1, (probs >= task.threshold)[:, None], probs[:, None],
                observed[:, None])
    if task.kind == "multiclass":
        eye = np.eye(len(task.classes), dtype=bool)
        return (eye[targets], eye[probs.argmax(axis=1)], probs,
                np.broadcast_to(observed[:, None], probs.shape))
    return targets == 1, probs >= task.cutoff(), probs, observed


def _bootstrap(task: ClassificationTask, views: tuple, n_boot: int, seed: int, n_bins: int) -> dict:
    """Each metric over `n_boot` resamples of the N cases with replacement: (n_boot,)."""
    n, c = views[0].shape
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_VALUES // (n * c))
    parts = [{m: np.empty(0) for m in METRICS}]
    for start in range(0, n_boot, block):
        idx = rng.integers(0, n, size=(min(block, n_boot - start), n))
        parts.append(summary(task.kind, *gather(views, idx), n_bins=n_bins))
    return {m: np.concatenate([p[m] for p in parts]) for m in METRICS}


def _confusion(task: ClassificationTask, probs: np.ndarray, targets: np.ndarray,
               observed: np.ndarray) -> list | dict:
    """Rows = true class, columns = predicted; multilabel: {"per_label": {name: 2x2}}, each
    label's counts over its observed cases."""
    pred = task.predict_labels(probs)
    if task.kind == "multilabel":
        return {"per_label": {name: confusion_counts(targets[observed[:, k], k],
                                                     pred[observed[:, k], k], 2)
                              for k, name in enumerate(task.classes)}}
    return confusion_counts(targets, pred, len(task.classes))


def _curves(task: ClassificationTask, views: tuple, stats: dict) -> dict:
    """ROC and PR curves per class (binary: the positive class) over its observed cases,
    at most 200 points each."""
    y, _, score, observed = views
    names = task.classes[1:] if task.kind == "binary" else task.classes
    roc, pr = {}, {}
    for c, name in enumerate(names):
        yc, sc = y[observed[:, c], c], score[observed[:, c], c]
        if yc.all() or not yc.any():
            continue  # a curve needs both classes
        fpr, tpr, _ = roc_curve(yc, sc)
        precision, recall, _ = precision_recall_curve(yc, sc)
        roc[name] = {**downsample(fpr=fpr, tpr=tpr), "auc": float(stats["auroc"][0, c])}
        pr[name] = {**downsample(recall=recall, precision=precision),
                    "ap": float(stats["auprc"][0, c])}
    return {"roc": roc, "pr": pr}


def _per_class(task: ClassificationTask, views: tuple) -> dict:
    """One-vs-rest support, sensitivity, specificity, precision, f1, auroc, auprc per class
    (multilabel: also n, the label's observed cases, on which all of these are computed)."""
    y, pred, score, observed = views
    if task.kind == "binary":  # both classes; the negative one is scored by 1 - p
        y, pred = np.hstack([~y, y]), np.hstack([~pred, pred])
        score, observed = np.hstack([1 - score, score]), np.hstack([observed, observed])
    stats = class_stats(*gather((y, pred, score, observed), np.arange(len(y))[None]))
    keys = ("sensitivity", "specificity", "precision", "f1", "auroc", "auprc")
    observed_n = observed.sum(axis=0)
    return {name: {**({"n": int(observed_n[c])} if task.kind == "multilabel" else {}),
                   "support": int(stats["support"][0, c]),
                   **{m: float(stats[m][0, c]) for m in keys}}
            for c, name in enumerate(task.classes)}
