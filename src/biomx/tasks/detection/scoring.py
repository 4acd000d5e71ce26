"""Scoring a detection run's test cases with `metrics` (FROC and CPM with LUNA16's hit rule, COCO mAP
at IoU 0.1 and 0.5, per-size sensitivity), each with a bootstrap CI over cases (whole cases drawn
with replacement, every metric recomputed), and the per-case table."""

from __future__ import annotations

from typing import Any

import numpy as np

from biomx.tasks.detection.metrics import (
    LUNA_FPS,
    bootstrap_ci,
    box_diameters,
    froc,
    hit_matrix,
    mean_average_precision,
    per_size_sensitivity,
)

FP_RATES = LUNA_FPS  # false positives per case: 1/8 ... 8
MAP_IOUS = (0.1, 0.5)
HIT = "centre_in_box"  # FROC and the case table: a detection hits a true box holding its centre

Found = tuple[np.ndarray, np.ndarray, np.ndarray]
Truth = tuple[np.ndarray, np.ndarray]


def match(found: Found, truth: Truth, hit: str | float = HIT) -> tuple[np.ndarray, np.ndarray]:
    """(hit per detection, found per true box) by FROC's rule (`metrics.froc`): a detection hitting
    any true box of its class (`metrics.hit_matrix`) is a hit, never a false positive, and every
    true box it hits is found."""
    boxes, _, labels = found
    true_boxes, true_labels = truth
    if not len(boxes) or not len(true_boxes):
        return np.zeros(len(boxes), dtype=bool), np.zeros(len(true_boxes), dtype=bool)
    can = hit_matrix(boxes, true_boxes, hit) & (np.asarray(labels)[:, None] == np.asarray(true_labels)[None, :])
    return can.any(axis=1), can.any(axis=0)


def map_at(found: list[Found], truth: list[Truth], ious: tuple[float, ...]) -> dict[float, float]:
    """`metrics.mean_average_precision`'s COCO mAP per IoU threshold (NaN without a true box)."""
    return mean_average_precision(found, truth, iou_thresholds=ious)["map_at"]


def _metrics(cases: list[tuple[Found, Truth]], size_bins: list[float], classes: list[str] | None = None
             ) -> dict[str, float]:  # fmt: skip
    """The metrics of some cases; with two or more `classes` also each class's AP at IoU 0.5
    ("ap_50_<class name>", NaN where the cases hold no true box of the class)."""
    found, truth = [c[0] for c in cases], [c[1] for c in cases]
    curve = froc([(b, s) for b, s, _ in found], [t for t, _ in truth], hit=HIT)
    out = {f"sensitivity_at_{r:g}_fp": v for r, v in curve["sensitivity_at"].items()}
    out["froc_mean"] = curve["mean_sensitivity"]
    result = mean_average_precision(found, truth, iou_thresholds=MAP_IOUS)
    out.update({f"map_{round(iou * 100)}": v for iou, v in result["map_at"].items()})
    if classes is not None and len(classes) > 1:  # one class: its AP is map_50 already
        per_class = result["ap"][0.5]
        out.update({f"ap_50_{name}": float(per_class.get(k, float("nan"))) for k, name in enumerate(classes)})
    sizes = per_size_sensitivity([(b, s) for b, s, _ in found], [t for t, _ in truth], bins=size_bins, hit=HIT)
    out.update({f"sensitivity_size_{k + 1}": b["sensitivity"] for k, b in enumerate(sizes)})
    return out


def _size_bins(truth: list[Truth]) -> tuple[np.ndarray, list[float]]:
    """The true boxes' equivalent diameters and the size bins at their terciles."""
    sizes = np.concatenate([box_diameters(t) for t, _ in truth] or [np.zeros(0)])
    bins = [0.0, *(np.quantile(sizes, [1 / 3, 2 / 3]).tolist() if len(sizes) else [1.0, 2.0]), float("inf")]
    return sizes, bins


def paired_difference(found_a: list[Found], found_b: list[Found], truth: list[Truth], *, n_bootstrap: int = 1000,
                      ci: float = 0.95, seed: int = 0, classes: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Every metric of `found_a` minus the same metric of `found_b` on the same cases, with a
    percentile CI from resamples that draw the same cases for both (a paired bootstrap): whether two
    methods differ is read from this interval, not from whether their own intervals overlap, since
    the same hard or easy cases move both."""
    _, bins = _size_bins(truth)
    cases = list(zip(found_a, found_b, truth, strict=True))

    def difference(chosen: list[tuple[Found, Found, Truth]]) -> dict[str, float]:
        a = _metrics([(c[0], c[2]) for c in chosen], bins, classes)
        b = _metrics([(c[1], c[2]) for c in chosen], bins, classes)
        return {k: a[k] - b[k] for k in a}

    return bootstrap_ci(difference, cases, n=n_bootstrap, ci=ci, seed=seed)


def evaluate_detections(found: list[Found], truth: list[Truth], *, classes: list[str], n_bootstrap: int = 1000,
                        ci: float = 0.95, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Metrics of the test cases with percentile CIs from `n_bootstrap` resamples of the cases.

    Sizes: the true boxes' equivalent diameters (voxels) binned at their terciles over all test
    cases (fixed for the resamples; "sensitivity_size_1" the smallest), each bin's sensitivity at
    one false positive per case.
    """
    sizes, bins = _size_bins(truth)
    cases = list(zip(found, truth, strict=True))
    metrics = bootstrap_ci(lambda chosen: _metrics(chosen, bins, classes), cases, n=n_bootstrap, ci=ci, seed=seed)
    return {"classes": classes, "ci": float(ci), "n_bootstrap": int(n_bootstrap), "hit": HIT,
            "size_edges": [round(b, 3) for b in bins[1:-1]], "n_true": int(len(sizes)),
            "n_found": int(sum(len(f[0]) for f in found)), "metrics": metrics}  # fmt: skip


def froc_curve(found: list[Found], truth: list[Truth]) -> tuple[np.ndarray, np.ndarray]:
    """The whole FROC curve of the cases: (false positives per case, sensitivity)."""
    return froc([(b, s) for b, s, _ in found], [t for t, _ in truth], hit=HIT)["curve"]


def case_table(cases: list[dict[str, Any]], score_threshold: float) -> dict[str, list]:
    """One row per test case: true boxes, boxes found above `score_threshold`, hits, misses, false
    positives and the case's sensitivity."""
    cols: dict[str, list] = {k: [] for k in ("id", "true_boxes", "found", "hits", "misses", "false_positives",
                                             "sensitivity")}  # fmt: skip
    for c in cases:
        keep = c["scores"] >= score_threshold
        hits, found_truth = match((c["boxes"][keep], c["scores"][keep], c["labels"][keep]),
                                  (c["truth"], c["truth_labels"]))  # fmt: skip
        n = len(c["truth"])
        cols["id"].append(c["id"])
        cols["true_boxes"].append(n)
        cols["found"].append(int(keep.sum()))
        cols["hits"].append(int(found_truth.sum()))
        cols["misses"].append(int(n - found_truth.sum()))
        cols["false_positives"].append(int((~hits).sum()))
        cols["sensitivity"].append(f"{found_truth.mean():.4g}" if n else "nan")
    return cols
