"""What a classification task measures across subgroups (`protocols.GroupedTask`), for `biomx.fairness`.

Binary tasks only (the measures below are defined for one positive class; multiclass and
multilabel runs get the generic per-group metrics and no disparity table):

- per group, at the task's threshold: sensitivity, specificity and selection rate, and AUROC on the
  probabilities (fairlearn `MetricFrame`); undefined values (a group without positives, say) are
  NaN and left out of the difference (max - min) and ratio (min / max) across groups;
- equalised-odds difference (fairlearn `equalized_odds_difference`, over the groups that hold both
  classes, where true and false positive rates are defined) and demographic-parity difference
  (fairlearn `demographic_parity_difference`, over all groups);
- per-group thresholds: fairlearn's `ThresholdOptimizer` (equalised odds, balanced accuracy as the
  objective; a randomised rule between two thresholds per group) fitted on the validation split,
  then applied to the test split, with the same measures before and after. Groups without both
  classes in validation keep the task's threshold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from biomx.errors import ConfigError

if TYPE_CHECKING:
    from biomx.tasks.classification.task import ClassificationTask


def _fairlearn():
    try:
        import fairlearn.metrics as metrics
        import fairlearn.postprocessing as postprocessing
    except ImportError:
        raise ConfigError("eval.subgroups: disparity measures need fairlearn: pip install 'biomx[fairness]'") from None
    return metrics, postprocessing


def _rate(y: np.ndarray, pred: np.ndarray, cls: int) -> float:
    """True positive rate (cls 1) or true negative rate (cls 0); NaN without cases of `cls`."""
    mask = y == cls
    return float((pred[mask] == cls).mean()) if mask.any() else float("nan")


def sensitivity(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return _rate(np.asarray(y_true), np.asarray(y_pred), 1)


def specificity(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return _rate(np.asarray(y_true), np.asarray(y_pred), 0)


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    return float(roc_auc_score(y_true, scores)) if 0 < y_true.sum() < len(y_true) else float("nan")


def _spread(by_group: dict[str, float]) -> dict[str, Any]:
    values = np.array([v for v in by_group.values() if not np.isnan(v)])
    if len(values) < 2:
        return {"by_group": by_group, "difference": float("nan"), "ratio": float("nan")}
    high = values.max()
    return {"by_group": by_group, "difference": float(high - values.min()),
            "ratio": float(values.min() / high) if high > 0 else float("nan")}  # fmt: skip


def measures(y: np.ndarray, pred: np.ndarray, scores: np.ndarray | None, groups: np.ndarray) -> dict[str, Any]:
    """The disparity measures of 0/1 predictions `pred` (and AUROC of `scores`) across `groups`."""
    metrics, _ = _fairlearn()
    groups = np.asarray(groups).astype(str)
    frame = metrics.MetricFrame(metrics={"sensitivity": sensitivity, "specificity": specificity,
                                         "selection_rate": metrics.selection_rate},
                                y_true=y, y_pred=pred, sensitive_features=groups)  # fmt: skip
    table = frame.by_group
    found = {name: _spread({str(g): float(v) for g, v in table[name].items()}) for name in table.columns}
    if scores is not None:
        by_score = metrics.MetricFrame(metrics=auroc, y_true=y, y_pred=scores, sensitive_features=groups).by_group
        found["auroc"] = _spread({str(g): float(v) for g, v in by_score.items()})
    both = [g for g in np.unique(groups) if 0 < y[groups == g].sum() < (groups == g).sum()]
    keep = np.isin(groups, both)
    eod = (float(metrics.equalized_odds_difference(y[keep], pred[keep], sensitive_features=groups[keep]))
           if len(both) > 1 else float("nan"))  # fmt: skip
    dpd = float(metrics.demographic_parity_difference(y, pred, sensitive_features=groups))
    return {"measures": found, "overall": {"equalized_odds_difference": eod, "demographic_parity_difference": dpd}}


def group_disparity(task: ClassificationTask, probs: np.ndarray, targets: np.ndarray,
                    groups: np.ndarray) -> dict[str, Any] | None:  # fmt: skip
    """Binary: the measures above at the task's threshold; None for other kinds."""
    if task.kind != "binary":
        return None
    scores = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(targets).reshape(-1).astype(np.int64)
    found = measures(y, (scores >= task.threshold).astype(np.int64), scores, groups)
    found["text"] = (f"At the task's threshold ({task.threshold:g}); difference = max - min, ratio = min / max "
                     "across groups (undefined values left out); equalised odds over groups holding both "
                     "classes (fairlearn).")  # fmt: skip
    return found


class _Scores(ClassifierMixin, BaseEstimator):
    """A prefit 'estimator' whose one input column is the model's probability (ThresholdOptimizer
    post-processes the trained model's scores; it never refits anything)."""

    def __init__(self) -> None:
        self.classes_ = np.array([0, 1])  # fitted: sklearn's check_is_fitted looks for a trailing "_"

    def fit(self, x: Any, y: Any) -> _Scores:
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        s = np.asarray(x, dtype=np.float64)[:, 0]
        return np.column_stack([1 - s, s])

    def predict(self, x: Any) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64)[:, 0] >= 0.5).astype(np.int64)


def _summary(y: np.ndarray, pred: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    found = measures(y, pred, None, groups)
    m = found["measures"]
    balanced = np.nanmean([_rate(y, pred, 1), _rate(y, pred, 0)])
    return {**found["overall"], "sensitivity_difference": m["sensitivity"]["difference"],
            "specificity_difference": m["specificity"]["difference"], "balanced_accuracy": float(balanced),
            "sensitivity": _rate(y, pred, 1), "specificity": _rate(y, pred, 0)}  # fmt: skip


def group_thresholds(task: ClassificationTask, val: tuple[np.ndarray, np.ndarray, np.ndarray],
                     test: tuple[np.ndarray, np.ndarray, np.ndarray], seed: int) -> dict[str, Any] | None:  # fmt: skip
    """ThresholdOptimizer (equalised odds) fitted on validation; test measures before and after."""
    if task.kind != "binary":
        return None
    _, post = _fairlearn()
    (vp, vy, vg), (tp, ty, tg) = [(np.asarray(p, np.float64).reshape(-1), np.asarray(y).reshape(-1).astype(np.int64),
                                   np.asarray(g).astype(str)) for p, y, g in (val, test)]  # fmt: skip
    fit = [g for g in np.unique(vg) if 0 < vy[vg == g].sum() < (vg == g).sum()]
    if not fit:
        return None
    optimizer = post.ThresholdOptimizer(estimator=_Scores(), constraints="equalized_odds", prefit=True,
                                        objective="balanced_accuracy_score", predict_method="predict_proba")  # fmt: skip
    rows = np.isin(vg, fit)
    optimizer.fit(vp[rows, None], vy[rows], sensitive_features=vg[rows])
    before = (tp >= task.threshold).astype(np.int64)
    after, inside = before.copy(), np.isin(tg, fit)
    if inside.any():
        after[inside] = optimizer.predict(tp[inside, None], sensitive_features=tg[inside], random_state=seed)
    rules = {str(g): _rule(rule) for g, rule in optimizer.interpolated_thresholder_.interpolation_dict.items()}
    rules.update({str(g): f"task threshold {task.threshold:g} (not both classes in validation)"
                  for g in np.unique(tg) if g not in fit})  # fmt: skip
    return {"method": "fairlearn ThresholdOptimizer (equalized_odds, objective balanced accuracy) fitted on the "
                      "validation split, applied to the test split",
            "before": _summary(ty, before, tg), "after": _summary(ty, after, tg), "rules": rules}  # fmt: skip


def _rule(rule: Any) -> str:
    """A fitted group rule in words: a mix of two thresholds, or a constant prediction."""
    parts = []
    for p, op in ((rule["p0"], rule["operation0"]), (rule["p1"], rule["operation1"])):
        if p > 0:
            parts.append(f"{p:.2f} x (score {op.operator} {op.threshold:.3f})")
    return " + ".join(parts)
