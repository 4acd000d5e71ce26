"""Operating points of a binary classifier: the decision threshold chosen on the validation split.

`task.operating_point.rule` picks it (docs/trust.md): `fixed` keeps `task.threshold`; `youden`
maximises Youden's J = sensitivity + specificity - 1; `sensitivity` (`specificity`) takes the
highest (lowest) threshold whose validation sensitivity (specificity) reaches `target`, which
gives the best specificity (sensitivity) that target allows. The rule never sees the test split.

A threshold is placed halfway between the lowest validation score called positive and the next
lower one, so the validation counts are exactly those it was chosen by and a new case scoring
between two validation cases is not decided by which of them it happens to equal. Whatever the
rule, the Youden point and the 0.95-sensitivity and 0.95-specificity points are computed too and
shown as alternatives; every point is scored on the test split with bootstrap CIs (the same
resamples for every point, so they compare pairwise).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from biomx.tasks.stats import BLOCK_VALUES, percentile_ci, ratio

if TYPE_CHECKING:
    from biomx.tasks.classification.task import ClassificationTask

DEFAULT_TARGET = 0.95
EDGE = 1e-6  # thresholds stay inside (0, 1), as task.threshold must
RATES = ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy")
ALTERNATIVES = (("youden", None), ("sensitivity", DEFAULT_TARGET), ("specificity", DEFAULT_TARGET))


def point_name(rule: str, target: float | None) -> str:
    """How a rule is named in the report and JSON: "youden", "sensitivity >= 0.95", "fixed"."""
    return rule if target is None else f"{rule} >= {target:g}"


def cuts(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct way to split the scores: (thresholds, tp, fp), from calling nothing positive
    to calling everything positive (thresholds descending, halfway between distinct scores)."""
    order = np.argsort(-probs, kind="stable")
    scores, positive = probs[order], y[order].astype(bool)
    ends = np.flatnonzero(np.r_[scores[:-1] != scores[1:], True])  # last index of each tie group
    tp = np.r_[0, np.cumsum(positive)[ends]]
    fp = np.r_[0, np.cumsum(~positive)[ends]]
    distinct = scores[ends]
    upper = np.r_[1.0, distinct]  # the lowest score called positive (1 above the top)
    lower = np.r_[distinct, 0.0]  # the highest score called negative (0 below the bottom)
    return np.clip((upper + lower) / 2.0, EDGE, 1.0 - EDGE), tp, fp


def choose(probs: np.ndarray, y: np.ndarray, rule: str, target: float | None = None) -> float | None:
    """The threshold `rule` picks on these (validation) scores; None when a class is absent.

    Ties: Youden's J keeps the highest threshold among equal J (the fewest positive calls)."""
    probs, y = np.asarray(probs, dtype=np.float64).reshape(-1), np.asarray(y).reshape(-1)
    n_pos = int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    thresholds, tp, fp = cuts(probs, y)
    sensitivity, specificity = tp / n_pos, 1.0 - fp / n_neg
    if rule == "youden":
        k = int(np.argmax(sensitivity + specificity - 1.0))
    elif rule == "sensitivity":  # sensitivity rises along the cuts: the first that reaches it
        k = int(np.argmax(sensitivity >= (target or DEFAULT_TARGET) - 1e-12))
    elif rule == "specificity":  # specificity falls along the cuts: the last that keeps it
        k = int(np.flatnonzero(specificity >= (target or DEFAULT_TARGET) - 1e-12)[-1])
    else:
        raise ValueError(f"unknown operating point rule {rule!r}")
    return float(thresholds[k])


def counts(probs: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, int]:
    """TP, FP, TN, FN of calling `probs >= threshold` positive."""
    pred, truth = np.asarray(probs).reshape(-1) >= threshold, np.asarray(y).reshape(-1) == 1
    return {"tp": int((pred & truth).sum()), "fp": int((pred & ~truth).sum()),
            "tn": int((~pred & ~truth).sum()), "fn": int((~pred & truth).sum())}  # fmt: skip


def rates(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV, F1 and accuracy from counts (any shape; NaN where undefined)."""
    return {"sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp),
            "npv": ratio(tn, tn + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "accuracy": ratio(tp + tn, tp + fp + tn + fn)}  # fmt: skip


def at_threshold(probs: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """Counts and rates at one threshold (no intervals): what the validation split shows."""
    found = counts(probs, y, threshold)
    return {**{name: float(value) for name, value in rates(*(np.float64(found[k]) for k in
                                                           ("tp", "fp", "tn", "fn"))).items()},
            **found}  # fmt: skip


def resample_weights(n: int, n_boot: int, seed: int, columns: int = 1) -> Iterator[np.ndarray]:
    """Bootstrap resamples of n cases as multiplicities, (b, n) blocks: how often each case was drawn.

    Counts under a resample are then one matrix product, for any number of thresholds at once."""
    if n == 0:  # a label measured in no test case: no resamples, NaN intervals
        return
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_VALUES // max(n * columns, 1))
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def score_points(probs: np.ndarray, y: np.ndarray, thresholds: list[float], n_boot: int, ci: float,
                seed: int) -> list[dict[str, Any]]:  # fmt: skip
    """Each threshold's test counts and rates with percentile CIs, all from the same resamples."""
    probs, truth = np.asarray(probs, dtype=np.float64).reshape(-1), np.asarray(y).reshape(-1) == 1
    calls = probs[:, None] >= np.asarray(thresholds)[None, :]  # (n, T)
    cells = [(calls & truth[:, None]), (calls & ~truth[:, None]), (~calls & ~truth[:, None]),
             (~calls & truth[:, None])]  # tp, fp, tn, fn: (n, T) each
    cells = [c.astype(np.float64) for c in cells]
    point = rates(*(c.sum(axis=0) for c in cells))
    boot = {name: [] for name in RATES}
    for weights in resample_weights(len(probs), n_boot, seed, len(thresholds)):
        for name, values in rates(*(weights @ c for c in cells)).items():
            boot[name].append(values)  # (b, T)
    stacked = {name: np.concatenate(parts) if parts else np.zeros((0, len(thresholds))) for name, parts in boot.items()}
    found = []
    for j, threshold in enumerate(thresholds):
        metrics = {name: {"value": float(point[name][j]), **percentile_ci(stacked[name][:, j], ci)} for name in RATES}
        found.append({"threshold": float(threshold), "counts": counts(probs, truth, threshold), "metrics": metrics})
    return found


def select(task: ClassificationTask, probs: np.ndarray | None, y: np.ndarray | None) -> dict[str, Any]:
    """Choose the task's threshold on the validation scores (None: no validation split) and set it.

    Returns the selection record: rule, target, the threshold, and under `points` what the
    validation split showed at it ("chosen"), at task.threshold and at the alternative points; a
    note when the rule could not be applied (then task.threshold is kept)."""
    fixed = task.task_threshold
    record: dict[str, Any] = {"rule": task.rule, "target": task.target, "task_threshold": fixed,
                              "threshold": fixed, "chosen_on": None}  # fmt: skip
    task.threshold = fixed
    if probs is None or y is None or len(y) == 0:
        record["note"] = "no validation split: the threshold stays task.threshold"
        record["points"] = {"chosen": {"rule": "fixed", "threshold": fixed}}
        return record
    probs, y = np.asarray(probs, dtype=np.float64).reshape(-1), np.asarray(y).reshape(-1)
    n_pos = int((y == 1).sum())
    record["validation"] = {"n": len(y), "positives": n_pos}
    chosen = fixed if task.rule == "fixed" else choose(probs, y, task.rule, task.target)
    if chosen is None:
        record["note"] = (f"the validation split has {n_pos} positives of {len(y)}: rule {task.rule} needs both "
                          "classes, so the threshold stays task.threshold")  # fmt: skip
        chosen = fixed
    elif task.rule != "fixed":
        record["chosen_on"] = "validation"
    task.threshold = record["threshold"] = chosen
    points = {"chosen": {"rule": point_name(task.rule, task.target), "threshold": chosen}}
    if chosen != fixed:
        points["task.threshold"] = {"rule": "fixed", "threshold": fixed}
    for rule, target in ALTERNATIVES:
        threshold = None if (rule, target) == (task.rule, task.target) else choose(probs, y, rule, target)
        if threshold is not None:
            points[point_name(rule, target)] = {"rule": point_name(rule, target), "threshold": threshold}
    for point in points.values():
        point["validation"] = at_threshold(probs, y, point["threshold"])
    record["points"] = points
    return record


def evaluate(task: ClassificationTask, probs: np.ndarray, targets: np.ndarray, n_boot: int, ci: float,
             seed: int) -> dict[str, Any]:  # fmt: skip
    """The operating point block of a binary test evaluation: the selection record (`task.selection`;
    without one, the task's threshold as a fixed point) with every point's test counts and rates
    with CIs."""
    record = dict(task.selection or {"rule": task.rule, "target": task.target, "task_threshold": task.task_threshold,
                                     "threshold": task.threshold, "chosen_on": None})  # fmt: skip
    points = {name: dict(point) for name, point in (record.get("points") or {}).items()}
    points.setdefault("chosen", {"rule": point_name(task.rule, task.target), "threshold": task.threshold})
    scored = score_points(probs, targets, [p["threshold"] for p in points.values()], n_boot, ci, seed)
    for point, test in zip(points.values(), scored, strict=True):
        point["test"] = {"counts": test["counts"], "metrics": test["metrics"]}
    record["points"] = points
    return record



def select_labels(task: ClassificationTask, probs: np.ndarray | None, y: np.ndarray | None) -> dict[str, Any]:
    """Multilabel: one threshold per label by the task's rule, each on the validation cases where that
    label was measured (a label without both classes there keeps task.threshold); sets
    `task.label_thresholds`. Returns the record, per label under `labels`."""
    record: dict[str, Any] = {"rule": task.rule, "target": task.target, "task_threshold": task.task_threshold,
                              "threshold": task.task_threshold, "chosen_on": None, "labels": {}}  # fmt: skip
    task.label_thresholds = None
    if probs is None or y is None or len(y) == 0:
        record["note"] = "no validation split: every label keeps task.threshold"
        return record
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=np.float64)
    chosen, kept = [], []
    for k, name in enumerate(task.classes):
        seen = ~np.isnan(y[:, k])
        threshold = choose(probs[seen, k], y[seen, k], task.rule, task.target)
        if threshold is None:
            kept.append(name)
            threshold = task.task_threshold
        chosen.append(threshold)
        record["labels"][name] = {"threshold": threshold, "chosen": name not in kept,
                                  "validation": {"n": int(seen.sum()),
                                                 **at_threshold(probs[seen, k], y[seen, k], threshold)}}  # fmt: skip
    task.label_thresholds = chosen
    record["chosen_on"] = "validation"
    if kept:
        record["note"] = f"{', '.join(kept)}: not both classes in the validation split, so task.threshold is kept"
    return record


def evaluate_labels(task: ClassificationTask, probs: np.ndarray, targets: np.ndarray, observed: np.ndarray,
                    n_boot: int, ci: float, seed: int) -> dict[str, Any]:  # fmt: skip
    """Multilabel: each label's test counts and rates with CIs at its own threshold, on the cases where
    it was measured (each label's cases resampled on their own)."""
    record = dict(task.selection or {"rule": task.rule, "target": task.target, "task_threshold": task.task_threshold,
                                     "chosen_on": None, "labels": {}})  # fmt: skip
    labels = {name: dict(found) for name, found in (record.get("labels") or {}).items()}
    for k, name in enumerate(task.classes):
        seen = observed[:, k]
        threshold = float(task.cutoff()[k]) if task.label_thresholds is not None else task.threshold
        (test,) = score_points(probs[seen, k], targets[seen, k], [threshold], n_boot, ci, seed)
        labels[name] = {**labels.get(name, {"threshold": threshold}), "test": {"n": int(seen.sum()),
                        "counts": test["counts"], "metrics": test["metrics"]}}  # fmt: skip
    record["labels"] = labels
    return record
