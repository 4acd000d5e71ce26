"""Scoring a detection run's test cases: FROC, mAP at IoU 0.1 and 0.5, per-size sensitivity, each
with a bootstrap CI over cases (cases drawn with replacement, every metric recomputed), and the
per-case table."""

from __future__ import annotations

from typing import Any

import numpy as np

from biomx.tasks.detection.boxes import box_iou, box_volume
from biomx.tasks.detection.task import average_precision
from biomx.tasks.stats import percentile_ci

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # false positives per case (LUNA16's FROC points)
MAP_IOUS = (0.1, 0.5)
FROC_IOU = 0.1  # a detection hits a true box it overlaps by at least this IoU

Found = tuple[np.ndarray, np.ndarray, np.ndarray]
Truth = tuple[np.ndarray, np.ndarray]


def match(found: Found, truth: Truth, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """(hit per detection, hit per true box): detections in falling score order each take the
    unmatched true box of the same class they overlap most, if by IoU >= `iou`."""
    boxes, scores, labels = found
    true_boxes, true_labels = truth
    hits, found_truth = np.zeros(len(boxes), dtype=bool), np.zeros(len(true_boxes), dtype=bool)
    if not len(boxes) or not len(true_boxes):
        return hits, found_truth
    overlaps = box_iou(boxes, true_boxes)
    overlaps[labels[:, None] != true_labels[None, :]] = 0.0
    for i in np.argsort(-scores, kind="stable"):
        cand = np.where(found_truth, -1.0, overlaps[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou:
            hits[i], found_truth[j] = True, True
    return hits, found_truth


def froc(scores: list[np.ndarray], hits: list[np.ndarray], n_true: int, rates: tuple[float, ...] = FP_RATES
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(sensitivity at each rate of false positives per case, the curve's FP rates, sensitivities)."""
    n_cases = max(len(scores), 1)
    s = np.concatenate(scores) if scores else np.zeros(0)
    h = np.concatenate(hits) if hits else np.zeros(0, dtype=bool)
    order = np.argsort(-s, kind="stable")
    tp, fp = np.cumsum(h[order]), np.cumsum(~h[order])
    fps = np.concatenate([[0.0], fp / n_cases])
    sens = np.concatenate([[0.0], tp / max(n_true, 1)]) if n_true else np.full(len(fps), np.nan)
    at = np.array([sens[np.searchsorted(fps, r, side="right") - 1] for r in rates])
    return at, fps, sens


def _metrics(found: list[Found], truth: list[Truth], classes: list[str], size_edges: np.ndarray) -> dict[str, Any]:
    n_true = sum(len(t[0]) for t in truth)
    matched = [match(f, t, FROC_IOU) for f, t in zip(found, truth, strict=True)]
    at, _, _ = froc([f[1] for f in found], [m[0] for m in matched], n_true)
    out: dict[str, Any] = {f"sensitivity_at_{r:g}_fp": float(v) for r, v in zip(FP_RATES, at, strict=True)}
    out["froc_mean"] = float(np.mean(at)) if n_true else float("nan")
    for iou in MAP_IOUS:
        aps = [average_precision([(b[lab == k], s[lab == k]) for b, s, lab in found],
                                 [tb[tl == k] for tb, tl in truth], iou) for k in range(len(classes))]  # fmt: skip
        aps = [a for a in aps if not np.isnan(a)]
        out[f"map_{round(iou * 100)}"] = float(np.mean(aps)) if aps else float("nan")
    sizes = np.concatenate([box_volume(t[0]) for t in truth]) if truth else np.zeros(0)
    found_truth = np.concatenate([m[1] for m in matched]) if matched else np.zeros(0, dtype=bool)
    bins = np.digitize(sizes, size_edges[1:-1])
    for b in range(len(size_edges) - 1):
        inside = bins == b
        out[f"sensitivity_size_{b + 1}"] = float(found_truth[inside].mean()) if inside.any() else float("nan")
    return out


def evaluate_detections(found: list[Found], truth: list[Truth], *, classes: list[str], n_bootstrap: int = 1000,
                        ci: float = 0.95, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Metrics of the test cases with percentile CIs from `n_bootstrap` resamples of the cases.

    Sizes: true boxes binned by volume (area in 2D) at the terciles of all true boxes
    ("sensitivity_size_1" smallest); each bin's sensitivity at the FROC's IoU, every detection kept.
    """
    sizes = np.concatenate([box_volume(t[0]) for t in truth]) if truth else np.zeros(0)
    edges = np.quantile(sizes, [0, 1 / 3, 2 / 3, 1]) if len(sizes) else np.array([0.0, 0.0])
    point = _metrics(found, truth, classes, edges)
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_bootstrap if found else 0):
        idx = rng.integers(0, len(found), len(found))
        for k, v in _metrics([found[i] for i in idx], [truth[i] for i in idx], classes, edges).items():
            boot[k].append(v)
    metrics = {k: {"value": v, **percentile_ci(np.asarray(boot[k], dtype=np.float64), ci)} for k, v in point.items()}
    return {"classes": classes, "ci": float(ci), "n_bootstrap": int(n_bootstrap), "froc_iou": FROC_IOU,
            "size_edges": [float(e) for e in edges], "n_true": int(len(sizes)),
            "n_found": int(sum(len(f[0]) for f in found)), "metrics": metrics}  # fmt: skip


def froc_curve(found: list[Found], truth: list[Truth]) -> tuple[np.ndarray, np.ndarray]:
    """The whole FROC curve of the cases: (false positives per case, sensitivity)."""
    matched = [match(f, t, FROC_IOU)[0] for f, t in zip(found, truth, strict=True)]
    _, fps, sens = froc([f[1] for f in found], matched, sum(len(t[0]) for t in truth))
    return fps, sens


def case_table(cases: list[dict[str, Any]], score_threshold: float, iou: float = FROC_IOU) -> dict[str, list]:
    """One row per test case: true boxes, boxes found above `score_threshold`, hits, misses, false
    positives and the case's sensitivity (IoU >= `iou`)."""
    cols: dict[str, list] = {k: [] for k in ("id", "true_boxes", "found", "hits", "misses", "false_positives",
                                             "sensitivity")}  # fmt: skip
    for c in cases:
        keep = c["scores"] >= score_threshold
        hits, found_truth = match((c["boxes"][keep], c["scores"][keep], c["labels"][keep]),
                                  (c["truth"], c["truth_labels"]), iou)  # fmt: skip
        n = len(c["truth"])
        cols["id"].append(c["id"])
        cols["true_boxes"].append(n)
        cols["found"].append(int(keep.sum()))
        cols["hits"].append(int(found_truth.sum()))
        cols["misses"].append(int(n - found_truth.sum()))
        cols["false_positives"].append(int((~hits).sum()))
        cols["sensitivity"].append(f"{found_truth.mean():.4g}" if n else "nan")
    return cols
