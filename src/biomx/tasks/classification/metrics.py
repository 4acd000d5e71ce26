"""Classification metric kernels: vectorised over bootstrap resamples, classes and cases.

All metrics come from one vectorised function (`summary`) that scores a batch of resamples
at once, so the point estimate and every bootstrap resample run exactly the same code.
A metric that is undefined on a sample (AUROC with one class present, precision with no
positive predictions) is NaN. Macro averages skip undefined classes, except precision, where
a class that occurs but is never predicted counts as 0 (sklearn's zero_division=0).

Multilabel targets may be NaN (not measured): the kernels take an `observed` mask next to
(y, pred, score), so every label is scored on its observed cases only, without a Python loop
over labels or resamples; with nothing missing the mask is all True and the numbers are
exactly those of the unmasked formulas.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from biomx.tasks.stats import nanmean, ratio

METRICS = ("accuracy", "balanced_accuracy", "auroc", "auprc", "f1", "sensitivity",
           "specificity", "precision", "npv", "ece", "brier")
QUICK_METRICS = ("accuracy", "balanced_accuracy", "auroc", "auprc", "f1")
MAX_CURVE_POINTS = 200


def auroc(targets: np.ndarray, scores: np.ndarray,
          observed: np.ndarray | None = None) -> np.ndarray:
    """AUROC along the last axis: Mann-Whitney U with tied scores given average ranks.

    Args:
        targets: (..., N) booleans, True = positive.
        scores: (..., N) finite scores, higher = more positive.
        observed: (..., N) booleans, False = leave the case out (a missing label); None = all.

    Returns:
        (...) AUROC values; NaN where one class is absent.
    """
    n = targets.shape[-1]
    if observed is not None:
        # Left-out cases rank last (inf), so the observed ones get ranks 1..n_observed.
        targets, scores = targets & observed, np.where(observed, scores, np.inf)
        n = observed.sum(axis=-1)
    n_pos = targets.sum(axis=-1)
    n_neg = n - n_pos
    u = (rankdata(scores, axis=-1) * targets).sum(axis=-1) - n_pos * (n_pos + 1) / 2.0
    return ratio(u, n_pos * n_neg)


def average_precision(targets: np.ndarray, scores: np.ndarray,
                      observed: np.ndarray | None = None) -> np.ndarray:
    """Average precision along the last axis, equal to sklearn's average_precision_score.

    AP = sum over distinct thresholds of (recall step) * precision. Tied scores form one
    threshold, so each positive is credited with the precision at the end of its tie group.

    Args:
        targets: (..., N) booleans, True = positive.
        scores: (..., N) finite scores, higher = more positive.
        observed: (..., N) booleans, False = leave the case out (a missing label); None = all.

    Returns:
        (...) AP values; NaN where there are no positives.
    """
    if observed is not None:
        # Left-out cases sort after every observed one (-inf) and are never positive, so
        # they change neither the precision at an observed case nor the credited sum.
        targets, scores = targets & observed, np.where(observed, scores, -np.inf)
    n = scores.shape[-1]
    order = np.argsort(-scores, axis=-1, kind="stable")
    s = np.take_along_axis(scores, order, axis=-1)
    t = np.take_along_axis(targets, order, axis=-1).astype(np.float64)
    precision = np.cumsum(t, axis=-1) / np.arange(1, n + 1)
    is_end = np.ones(s.shape, dtype=bool)
    is_end[..., :-1] = s[..., :-1] != s[..., 1:]
    # End of each element's tie group = running minimum of end positions, taken from the right.
    end = np.where(is_end, np.arange(n), n - 1)
    end = np.flip(np.minimum.accumulate(np.flip(end, -1), axis=-1), -1)
    credited = (t * np.take_along_axis(precision, end, axis=-1)).sum(axis=-1)
    return ratio(credited, t.sum(axis=-1))


# Metric kernels. y, pred, observed (bool) and score are (B, C, N): resamples, classes, cases.
# y is False where observed is (a missing multilabel target); every count is over observed.


def class_stats(y: np.ndarray, pred: np.ndarray, score: np.ndarray,
                observed: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest support and metrics per resample and class, each (B, C)."""
    y, neg = y & observed, ~y & observed
    tp, fp = (y & pred).sum(-1), (neg & pred).sum(-1)
    fn, tn = (y & ~pred).sum(-1), (neg & ~pred).sum(-1)
    sensitivity, specificity = ratio(tp, tp + fn), ratio(tn, tn + fp)
    return {
        "support": tp + fn, "accuracy": ratio(tp + tn, observed.sum(-1)),
        "sensitivity": sensitivity, "specificity": specificity,
        "balanced_accuracy": (sensitivity + specificity) / 2.0,
        "precision": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "auroc": auroc(y, score, observed), "auprc": average_precision(y, score, observed),
    }


def summary(kind: str, y: np.ndarray, pred: np.ndarray, score: np.ndarray,
            observed: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Every metric in METRICS per resample, each (B,)."""
    stats = class_stats(y, pred, score, observed)
    out = {"ece": _ece(*calibration_view(kind, y, pred, score, observed), n_bins)}
    # Mean squared error of the observed entries: sum / count is bit-identical to .mean().
    brier = ratio(np.where(observed, (score - y) ** 2, 0.0).sum(axis=(1, 2)),
                  observed.sum(axis=(1, 2)))
    if kind == "binary":
        out.update({m: stats[m][:, 0] for m in METRICS if m in stats})
        out["brier"] = brier
        return out
    out.update({m: nanmean(stats[m]) for m in ("auroc", "auprc", "f1", "sensitivity",
                                               "specificity", "npv")})
    never_predicted = np.isnan(stats["precision"]) & (stats["support"] > 0)
    out["precision"] = nanmean(np.where(never_predicted, 0.0, stats["precision"]))
    if kind == "multiclass":
        out["accuracy"] = (y & pred).sum(axis=(1, 2)) / y.shape[-1]
        out["balanced_accuracy"] = out["sensitivity"]  # mean recall of the classes present
        out["brier"] = ((score - y) ** 2).sum(axis=1).mean(axis=-1)
    else:  # multilabel: label-wise (Hamming) accuracy, everything macro over labels
        out["accuracy"] = nanmean(stats["accuracy"])
        out["balanced_accuracy"] = nanmean(stats["balanced_accuracy"])
        out["brier"] = brier
    return out


def calibration_view(kind: str, y: np.ndarray, pred: np.ndarray, score: np.ndarray,
                     observed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confidence, outcome, observed), each (B, M): what the ECE compares.

    Binary: P(positive) vs positive; multiclass: top-class probability vs correct;
    multilabel: every observed label's probability vs that label, pooled.
    """
    if kind == "multiclass":
        return score.max(axis=1), (y & pred).any(axis=1), observed.all(axis=1)
    return score.reshape(len(y), -1), y.reshape(len(y), -1), observed.reshape(len(y), -1)


def _bin_sums(conf: np.ndarray, hit: np.ndarray, observed: np.ndarray,
              n_bins: int) -> list[np.ndarray]:
    """Per resample and equal-width bin: [count, sum of confidence, sum of outcome], (B, bins),
    over the observed entries."""
    b = len(conf)
    # NaN confidences (a diverged model) land in bin 0 and make the ECE NaN, without a warning.
    bins = np.clip(np.nan_to_num(conf * n_bins), 0, n_bins - 1).astype(np.int64)
    flat = (bins + n_bins * np.arange(b)[:, None]).ravel()
    weight = observed.ravel().astype(np.float64)
    return [np.bincount(flat, weights=w, minlength=b * n_bins).reshape(b, n_bins)
            for w in (weight, conf.ravel() * weight, hit.ravel() * weight)]


def _ece(conf: np.ndarray, hit: np.ndarray, observed: np.ndarray, n_bins: int) -> np.ndarray:
    """Expected calibration error, sum_b (n_b / n) |mean conf_b - mean outcome_b|: (B,)."""
    _, conf_sum, hit_sum = _bin_sums(conf, hit, observed, n_bins)
    return ratio(np.abs(conf_sum - hit_sum).sum(axis=1), observed.sum(axis=1))


def calibration(conf: np.ndarray, hit: np.ndarray, observed: np.ndarray, n_bins: int) -> dict:
    """Reliability diagram of one sample; empty bins have NaN confidence and frequency."""
    count, conf_sum, hit_sum = (s[0] for s in _bin_sums(conf, hit, observed, n_bins))
    return {"bin_confidence": ratio(conf_sum, count).tolist(),
            "bin_frequency": ratio(hit_sum, count).tolist(),
            "bin_count": count.astype(int).tolist(),
            "ece": float(_ece(conf, hit, observed, n_bins)[0])}


def confusion_counts(y: np.ndarray, pred: np.ndarray, k: int) -> list[list[int]]:
    """k x k counts, rows = true, columns = predicted (k = 2: [[TN, FP], [FN, TP]])."""
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k).tolist()


def downsample(**curve: np.ndarray) -> dict[str, list[float]]:
    """At most MAX_CURVE_POINTS evenly spaced points of a curve, keeping both ends."""
    n = len(next(iter(curve.values())))
    keep = np.unique(np.linspace(0, n - 1, min(n, MAX_CURVE_POINTS)).round().astype(int))
    return {name: values[keep].astype(float).tolist() for name, values in curve.items()}
