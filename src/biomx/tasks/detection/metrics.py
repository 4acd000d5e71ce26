"""Detection metrics over cases (images or scans): FROC and LUNA16's CPM, mAP, per-size
sensitivity, and bootstrap confidence intervals that resample whole cases.

FROC (free-response ROC): for every score threshold, the fraction of true lesions detected
against the mean number of false positives per case. A prediction HITS a true box when its centre
lies inside it (hit="centre_in_box", LUNA16's rule with boxes for spheres) or when their IoU is at
least a threshold (hit=0.1, say). As in LUNA16, a true box counts once, detected at the highest
score of the predictions hitting it; a prediction hitting any true box is never a false positive
(extra hits on one lesion are ignored); every other prediction is a false positive. Negative cases
(no true boxes) count in the denominator of false positives per case. The sensitivity at f false
positives per case is the highest sensitivity of an operating point with at most f
(interpolation="step", the default: a threshold one could really choose) or LUNA16's evaluation
script's linear interpolation between operating points (interpolation="linear"). CPM is the mean of
the sensitivities at 1/8, 1/4, 1/2, 1, 2, 4, 8.

mAP: COCO's definition per class then averaged over classes with any true box: in each case,
predictions of a class in falling score order are matched one-to-one to the unmatched true box of
the highest IoU >= threshold; over all cases, precision and recall in falling score order; the
precision envelope (maximum precision at any recall >= r) read at 101 recall points 0, 0.01, ..., 1
(COCO's 101-point interpolation, as pycocotools and MONAI's COCOMetric compute it), or the area under
the envelope at every recall reached (interpolation="all", Pascal VOC 2010+).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import numpy as np

from biomx.tasks.detection.boxes import as_boxes, box_centres, box_iou, box_sizes, centres_in_boxes
from biomx.tasks.stats import percentile_ci

LUNA_FPS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
Hit = str | float

# While `bootstrap_ci` runs, each case's matching is computed once and reused by every resample
# that draws the case: keyed by the identity of the case's arrays, which the cache holds (so an
# identity cannot be reused by another array while the cache lives); dropped when it returns.
_CASE_CACHE: ContextVar[dict | None] = ContextVar("detection_case_cache", default=None)


def _per_case(arrays: tuple, settings: tuple, compute: Callable[[], Any]) -> Any:
    cache = _CASE_CACHE.get()
    if cache is None:
        return compute()
    key = (*(id(a) for a in arrays), *settings)
    if key not in cache:
        cache[key] = (arrays, compute())
    return cache[key][1]


def hit_matrix(pred_boxes: object, true_boxes: object, hit: Hit = "centre_in_box") -> np.ndarray:
    """(Npred, Ntrue) True where a prediction hits a true box (see the module docstring)."""
    p, t = as_boxes(pred_boxes), as_boxes(true_boxes)
    if len(p) == 0 or len(t) == 0:
        return np.zeros((len(p), len(t)), dtype=bool)
    if hit == "centre_in_box":
        return centres_in_boxes(box_centres(p), t)
    if isinstance(hit, str) or not 0 < float(hit) <= 1:
        raise ValueError(f"hit must be 'centre_in_box' or an IoU threshold in (0, 1], got {hit!r}")
    return box_iou(p, t) >= float(hit)


def froc_matches(predictions: Sequence[tuple[object, object]], truths: Sequence[object],
                 hit: Hit = "centre_in_box") -> tuple[np.ndarray, np.ndarray, int]:
    """Per case, what FROC needs: (detection score of every true box, -inf when missed;
    scores of the false positives; number of cases)."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} cases of predictions but {len(truths)} cases of truths")
    detected, false_pos = [], []
    for (boxes, scores), true in zip(predictions, truths, strict=True):
        best, fp = _per_case((boxes, scores, true), ("froc", hit), lambda b=boxes, s=scores, t=true: _froc_case(b, s, t, hit))
        detected.append(best)
        false_pos.append(fp)
    return np.concatenate(detected or [np.zeros(0)]), np.concatenate(false_pos or [np.zeros(0)]), len(truths)


def _froc_case(boxes: object, scores: object, true: object, hit: Hit) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    hits = hit_matrix(boxes, true, hit)
    n_true = len(as_boxes(true))
    if len(s) != hits.shape[0]:
        raise ValueError(f"{hits.shape[0]} boxes but {len(s)} scores in a case")
    best = np.where(hits, s[:, None], -np.inf).max(axis=0) if len(s) else np.full(n_true, -np.inf)
    return best, (s[~hits.any(axis=1)] if n_true else s)


def froc_curve(detected: np.ndarray, false_pos: np.ndarray, n_cases: int) -> tuple[np.ndarray, np.ndarray]:
    """(false positives per case, sensitivity) at every distinct score threshold, from (0, 0)."""
    thresholds = np.unique(np.concatenate([detected[np.isfinite(detected)], false_pos]))[::-1]
    det_sorted, fp_sorted = np.sort(detected), np.sort(false_pos)
    n_true = max(len(detected), 1)
    tp = len(detected) - np.searchsorted(det_sorted, thresholds, side="left")  # scores >= threshold
    fp = len(false_pos) - np.searchsorted(fp_sorted, thresholds, side="left")
    fps = np.concatenate([[0.0], fp / max(n_cases, 1)])
    sens = np.concatenate([[0.0], tp / n_true])
    return fps, sens


def sensitivity_at(fps: np.ndarray, sens: np.ndarray, rate: float, interpolation: str = "step") -> float:
    """Sensitivity at `rate` false positives per case on a FROC curve (see the module docstring)."""
    if interpolation == "linear":  # between the best operating points at each distinct rate
        rates, first = np.unique(fps, return_index=True)
        best = np.maximum.reduceat(sens, first) if len(sens) else sens
        return float(np.interp(rate, rates, best))
    if interpolation != "step":
        raise ValueError(f"interpolation must be 'step' or 'linear', got {interpolation!r}")
    allowed = fps <= rate + 1e-12
    return float(sens[allowed].max()) if allowed.any() else 0.0


def froc(predictions: Sequence[tuple[object, object]], truths: Sequence[object], *, hit: Hit = "centre_in_box",
         fps_per_case: Sequence[float] = LUNA_FPS, interpolation: str = "step") -> dict[str, Any]:
    """FROC over cases and its mean sensitivity (CPM with the default rates).

    Args:
        predictions: per case, (boxes (N, 2D), scores (N,)).
        truths: per case, true boxes (M, 2D) (M = 0: a negative case).
        hit: "centre_in_box" or an IoU threshold.
        fps_per_case: the false-positive rates to read sensitivity at.
        interpolation: "step" or "linear" (LUNA16's script).

    Returns:
        {"sensitivity_at": {rate: sensitivity}, "mean_sensitivity": their mean, "curve": (fps, sens),
        "n_true": true boxes, "n_cases": cases}; sensitivities are NaN without any true box.
    """
    detected, false_pos, n_cases = froc_matches(predictions, truths, hit)
    fps, sens = froc_curve(detected, false_pos, n_cases)
    if len(detected) == 0:
        at = {float(r): float("nan") for r in fps_per_case}
    else:
        at = {float(r): sensitivity_at(fps, sens, r, interpolation) for r in fps_per_case}
    return {"sensitivity_at": at, "mean_sensitivity": float(np.mean(list(at.values()))) if at else float("nan"),
            "curve": (fps, sens), "n_true": int(len(detected)), "n_cases": int(n_cases)}  # fmt: skip


# ---- mAP -------------------------------------------------------------------------------------


def _match_case(boxes: np.ndarray, scores: np.ndarray, true: np.ndarray, threshold: float) -> np.ndarray:
    """COCO's greedy matching in one case and class: True for each prediction (in falling score
    order) that takes an unmatched true box (the highest IoU >= threshold)."""
    order = np.argsort(-scores, kind="mergesort")
    tp = np.zeros(len(order), dtype=bool)
    if len(true) == 0 or len(order) == 0:
        return tp
    ious = box_iou(boxes[order], true)
    ious[ious < threshold] = -1.0  # not a candidate
    taken = np.zeros(len(true), dtype=bool)
    for k in np.flatnonzero((ious >= 0).any(axis=1)):  # only predictions that could match
        row = np.where(taken, -1.0, ious[k])
        j = int(row.argmax())
        if row[j] >= 0:
            taken[j], tp[k] = True, True
    out = np.zeros(len(order), dtype=bool)
    out[order] = tp
    return out


def _map_case(boxes: object, scores: object, labels: object, true: object, true_labels: object,
              thresholds: tuple[float, ...]) -> dict[tuple[float, int], tuple[np.ndarray, np.ndarray, int]]:
    """One case's matching: {(IoU threshold, class): (matched per prediction, scores, true boxes)}."""
    b, t = as_boxes(boxes), as_boxes(true)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab, tlab = np.asarray(labels, dtype=np.int64).reshape(-1), np.asarray(true_labels, dtype=np.int64).reshape(-1)
    if not (len(b) == len(s) == len(lab)) or len(t) != len(tlab):
        raise ValueError("boxes, scores and labels differ in number in a case")
    out = {}
    for c in sorted({int(c) for c in np.concatenate([lab, tlab])}):
        mine, theirs = lab == c, t[tlab == c]
        for threshold in thresholds:
            out[(threshold, c)] = (_match_case(b[mine], s[mine], theirs, threshold), s[mine], len(theirs))
    return out


def average_precision(tp: np.ndarray, scores: np.ndarray, n_true: int, interpolation: str = "coco101") -> float:
    """AP from pooled predictions (True = matched) and their scores; NaN when n_true == 0."""
    if n_true == 0:
        return float("nan")
    if len(tp) == 0:  # true boxes but no predictions: nothing found at any recall
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    hits = tp[order].astype(np.float64)
    cum_tp, cum_fp = np.cumsum(hits), np.cumsum(1 - hits)
    recall = cum_tp / n_true
    precision = cum_tp / np.maximum(cum_tp + cum_fp, np.finfo(np.float64).eps)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    if interpolation == "coco101":
        points = np.linspace(0, 1, 101)
        idx = np.searchsorted(recall, points, side="left")
        return float(np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0).mean())
    if interpolation == "all":
        r = np.concatenate([[0.0], recall])
        return float(np.sum((r[1:] - r[:-1]) * envelope))
    raise ValueError(f"interpolation must be 'coco101' or 'all', got {interpolation!r}")


def mean_average_precision(predictions: Sequence[tuple[object, object, object]],
                           truths: Sequence[tuple[object, object]], *,
                           iou_thresholds: Sequence[float] = (0.1, 0.5),
                           interpolation: str = "coco101") -> dict[str, Any]:
    """mAP per IoU threshold (per class, then the mean over classes with true boxes).

    Args:
        predictions: per case, (boxes, scores, labels).
        truths: per case, (boxes, labels).

    Returns:
        {"map_at": {iou: mAP}, "ap": {iou: {label: AP}}, "map": mean over the thresholds};
        NaN when no class has a true box.
    """
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} cases of predictions but {len(truths)} cases of truths")
    thresholds = tuple(float(t) for t in iou_thresholds)
    matched = [_per_case((*p, *t), ("map", thresholds), lambda p=p, t=t: _map_case(*p, *t, thresholds))
               for p, t in zip(predictions, truths, strict=True)]  # fmt: skip
    classes = sorted({c for case in matched for _, c in case})
    ap: dict[float, dict[int, float]] = {}
    for threshold in thresholds:
        per_class = {}
        for c in classes:
            parts = [case[(threshold, c)] for case in matched if (threshold, c) in case]
            tps = np.concatenate([p[0] for p in parts])
            scores = np.concatenate([p[1] for p in parts])
            per_class[c] = average_precision(tps, scores, sum(p[2] for p in parts), interpolation)
        ap[threshold] = per_class
    map_at = {}
    for threshold, per_class in ap.items():
        defined = [v for v in per_class.values() if not np.isnan(v)]
        map_at[threshold] = float(np.mean(defined)) if defined else float("nan")
    values = list(map_at.values())
    return {"map_at": map_at, "ap": ap, "map": float(np.mean(values)) if values else float("nan")}


# ---- per-size sensitivity ------------------------------------------------------------------


def box_diameters(boxes: object, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Equivalent diameter of each box: the geometric mean of its edges (in mm with `spacing`)."""
    sizes = box_sizes(boxes) * (np.asarray(spacing, dtype=np.float64) if spacing is not None else 1.0)
    return np.exp(np.log(np.clip(sizes, 1e-12, None)).mean(axis=1)) if len(sizes) else np.zeros(0)


def per_size_sensitivity(predictions: Sequence[tuple[object, object]], truths: Sequence[object], *,
                         bins: Sequence[float] | None = None, hit: Hit = "centre_in_box", at_fps: float = 1.0,
                         score_threshold: float | None = None,
                         spacings: Sequence[Sequence[float]] | None = None) -> list[dict[str, Any]]:
    """Sensitivity per true-box size bin, at one operating point.

    The operating point is `score_threshold` when given, else the lowest threshold with at most
    `at_fps` false positives per case (FROC's "step" point). Size is the box's equivalent diameter
    (geometric mean of its edges; mm with per-case `spacings`, else voxels); `bins` are edges
    (default: the terciles of the true sizes, so each bin holds about a third of the lesions).

    Returns:
        per bin: {"low", "high", "n", "detected", "sensitivity" (NaN for an empty bin)}.
    """
    detected, false_pos, n_cases = froc_matches(predictions, truths, hit)
    if score_threshold is None:
        thresholds = np.unique(np.concatenate([detected[np.isfinite(detected)], false_pos, [np.inf]]))
        fp_count = len(false_pos) - np.searchsorted(np.sort(false_pos), thresholds, side="left")
        fp_rate = fp_count / max(n_cases, 1)
        score_threshold = float(thresholds[np.argmax(fp_rate <= at_fps + 1e-12)])  # rates fall with t
    sizes = np.concatenate([box_diameters(t, spacings[i] if spacings is not None else None)
                            for i, t in enumerate(truths)] or [np.zeros(0)])  # fmt: skip
    if bins is None:
        inner = np.quantile(sizes, [1 / 3, 2 / 3]) if len(sizes) else []
        bins = [0.0, *inner, np.inf]
    edges = np.asarray(bins, dtype=np.float64)
    found = detected >= score_threshold
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (sizes >= lo) & (sizes < hi)
        n, k = int(inside.sum()), int(found[inside].sum())
        out.append({"low": float(lo), "high": float(hi), "n": n, "detected": k,
                    "sensitivity": k / n if n else float("nan"), "score_threshold": score_threshold})  # fmt: skip
    return out


# ---- bootstrap -------------------------------------------------------------------------------


def bootstrap_ci(metric_fn: Callable[[list], float | Mapping[str, float]], cases: Sequence[Any], n: int = 1000,
                 ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """The metric on all cases and its percentile CI from `n` resamples of whole cases.

    `metric_fn(list of cases)` returns a number or a {name: number} mapping (each gets its CI).
    Resampling cases (images, scans), not boxes, keeps the boxes of one case together: they are
    not independent. Resamples where the metric is undefined (NaN) are left out of the interval.

    Returns:
        {"value", "ci_low", "ci_high", "n_boot"} for a number; {name: that} for a mapping.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    cases = list(cases)
    token = _CASE_CACHE.set({})
    try:
        full = metric_fn(cases)
        rng = np.random.default_rng(seed)
        draws = [metric_fn([cases[i] for i in rng.integers(0, len(cases), len(cases))]) for _ in range(n)] \
            if cases else []
    finally:
        _CASE_CACHE.reset(token)
    if isinstance(full, Mapping):
        return {k: {"value": float(full[k]), **percentile_ci(np.array([d[k] for d in draws], dtype=np.float64), ci),
                    "n_boot": n} for k in full}  # fmt: skip
    return {"value": float(full), **percentile_ci(np.asarray(draws, dtype=np.float64), ci), "n_boot": n}
