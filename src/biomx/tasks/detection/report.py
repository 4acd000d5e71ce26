"""Report sections of a detection run: the metrics table with CIs, the FROC curve, the per-case
table, and predictions against the truth drawn on representative test slices (hits green, misses
red, false positives yellow)."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from biomx.tasks.detection.scoring import FP_RATES, Found, Truth, froc_curve, match

HIT, MISS, FALSE = "#2ca02c", "#d62728", "#ffbf00"
SHOWN_SCORE = 0.5  # the overlays draw detections at least this sure


def metric_sections(evaluation: dict[str, Any]) -> list[dict]:
    """The metrics with their CIs as one table."""
    metrics = evaluation.get("metrics") or {}
    if not metrics:
        return []
    rows = [[name, f"{m['value']:.4f}", f"{m['ci_low']:.4f}", f"{m['ci_high']:.4f}"] for name, m in metrics.items()]
    text = (f"{evaluation.get('n', '?')} test cases, {evaluation.get('n_true', '?')} true boxes. FROC: sensitivity "
            f"at {', '.join(f'{r:g}' for r in FP_RATES)} false positives per case (a hit: the detection's centre "
            f"inside a true box, as in LUNA16) and their mean (CPM); COCO mAP at IoU 0.1 and 0.5; sensitivity at 1 "
            f"false positive per case per size tercile of the true boxes (equivalent diameter, edges "
            f"{evaluation.get('size_edges')} voxels). CIs: bootstrap over cases.")
    sections = [{"title": "Detection metrics", "text": text,
                 "table": {"header": ["metric", "value", "CI low", "CI high"], "rows": rows, "numeric": True}}]
    baseline = evaluation.get("baseline")
    return sections + (baseline_sections(metrics, baseline) if baseline else [])


def _cell(m: dict[str, float] | None) -> list[str]:
    if not m:
        return ["", ""]
    return [f"{m['value']:.4f}", f"[{m['ci_low']:.4f}, {m['ci_high']:.4f}]"]


def baseline_sections(metrics: dict[str, Any], baseline: dict[str, Any]) -> list[dict]:
    """The detector beside the segmentation-derived baseline, metric by metric, and their agreement."""
    other, diff = baseline.get("metrics") or {}, baseline.get("difference") or {}
    rows = [[name, *_cell(metrics.get(name)), *_cell(other.get(name)), *_cell(diff.get(name))]
            for name in dict.fromkeys([*metrics, *other])]  # fmt: skip
    a = baseline.get("agreement") or {}
    agree = (f"At {a.get('at_fp_per_case', 1):g} false positive(s) per case each (score thresholds: detector "
             f"{a.get('detector_threshold', float('nan')):.3g}, baseline {a.get('baseline_threshold', float('nan')):.3g}), "
             f"of {a.get('n_true', 0)} true boxes both found {a.get('both', 0)}, only the detector "
             f"{a.get('detector_only', 0)}, only the baseline {a.get('baseline_only', 0)}, neither "
             f"{a.get('neither', 0)} (agreement {a.get('agree', float('nan')):.3f}).")  # fmt: skip
    text = (f"Baseline: the segmentation run {baseline.get('run')} ({baseline.get('model')}, "
            f"{baseline.get('members', 1)} model(s)); every connected component of its predicted mask is a box "
            f"scored by the mean class probability over the component, {baseline.get('n_found', 0)} boxes in all, "
            f"scored as the detector's (same cases, same bootstrap). {baseline.get('split_check', '')}. {agree} "
            "The difference (detector minus baseline) has a paired CI: the same resampled cases for both; "
            "an interval that holds 0 means this test set cannot tell the two apart on that metric.")
    return [{"title": "Detector vs segmentation baseline", "text": text,
             "table": {"header": ["metric", "detector", "detector CI", "baseline", "baseline CI", "difference",
                                  "difference CI"], "rows": rows,
                       "numeric": True}}]  # fmt: skip


def case_views(image: np.ndarray, truth: np.ndarray, boxes: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """What the overlay draws of one case, in its preprocessed grid (C, *S): a 2D slice (3D: the
    axial slice through the most true boxes) of the image, the true boxes, the found ones."""
    image = np.asarray(image[0], dtype=np.float32)
    keep = scores >= max(threshold, SHOWN_SCORE)
    found = boxes[keep]
    index = None
    if image.ndim == 3:
        d = 3
        counts = np.zeros(image.shape[2])
        for b in truth if len(truth) else found:  # the slice through the most true boxes (none: found ones)
            first, last = int(np.ceil(b[2] - 0.5)), int(np.floor(b[d + 2] - 0.5))  # slices whose centre is inside
            if last < first:  # thinner than a slice: the one holding its middle
                first = last = int((b[2] + b[d + 2]) / 2)
            counts[max(first, 0):last + 1] += 1
        index = int(np.argmax(counts)) if counts.any() else image.shape[2] // 2
        image = image[..., index]
    low, high = np.percentile(image, [0.5, 99.5])
    grey = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    return {"image": grey, "truth": truth, "found": found, "scores": scores[keep], "slice": index}


def _crossing(boxes: np.ndarray, index: int | None) -> np.ndarray:
    """Which boxes cross slice `index` (all of them in 2D)."""
    if index is None or not len(boxes):
        return np.ones(len(boxes), dtype=bool)
    return (boxes[:, 2] <= index + 0.5) & (boxes[:, 5] >= index + 0.5)


def _flat(boxes: np.ndarray, index: int | None) -> np.ndarray:
    """2D rectangles (rows, cols) of the boxes crossing slice `index` (all boxes in 2D)."""
    if not len(boxes):
        return np.zeros((0, 4))
    kept = boxes[_crossing(boxes, index)]
    return kept if index is None else kept[:, [0, 1, 3, 4]]


def overlay_figure(chosen: list[tuple[str, dict]]) -> Figure:
    """Each chosen case's slice with its boxes: hits green, misses red, false positives yellow."""
    fig = Figure(figsize=(3.4 * len(chosen), 3.8))
    for k, (case_id, view) in enumerate(chosen):
        ax = fig.add_subplot(1, len(chosen), k + 1)
        ax.imshow(view["image"], cmap="gray")
        dims = 2 if view["slice"] is None else 3
        found, truth = view["found"], view["truth"]
        hits, found_truth = match((found, view["scores"], np.zeros(len(found), dtype=int)),
                                  (truth, np.zeros(len(truth), dtype=int)))  # fmt: skip
        drawn = ((found[~hits], [FALSE] * int((~hits).sum()), 0.8), (truth, np.where(found_truth, HIT, MISS), 1.6))
        for boxes, colours, width in drawn:  # the truth last, on top
            crossing = _crossing(boxes.reshape(-1, 2 * dims), view["slice"])
            flat = _flat(boxes.reshape(-1, 2 * dims), view["slice"])
            for b, colour in zip(flat, np.asarray(colours)[crossing], strict=True):
                ax.add_patch(Rectangle((b[1] - 0.5, b[0] - 0.5), b[3] - b[1], b[2] - b[0], fill=False,
                                       edgecolor=colour, linewidth=width))  # fmt: skip
        where = "" if view["slice"] is None else f", slice {view['slice']}"
        ax.set_title(f"{case_id}{where}\n{int(found_truth.sum())}/{len(truth)} found, {int((~hits).sum())} FP",
                     fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def froc_figure(found: list[Found], truth: list[Truth]) -> Figure:
    fps, sens = froc_curve(found, truth)
    fig = Figure(figsize=(4.2, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.step(np.maximum(fps, 1e-3), sens, where="post", color="#1f77b4")
    ax.set_xscale("log", base=2)
    ax.set_xlim(FP_RATES[0] / 2, FP_RATES[-1] * 2)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per case")
    ax.set_ylabel("sensitivity")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def result_sections(evaluation: dict[str, Any], cases: list[dict], views: list[dict], table: dict[str, list],
                    n: int) -> list[dict]:  # fmt: skip
    """The FROC curve, the per-case table and up to `n` (at most 6) overlays, best to worst case."""
    found = [(c["boxes"], c["scores"], c["labels"]) for c in cases]
    truth = [(c["truth"], c["truth_labels"]) for c in cases]
    sections = [{"title": "FROC", "text": "Sensitivity against false positives per test case, every detection kept.",
                 "figures": [froc_figure(found, truth)]}]  # fmt: skip
    header = list(table)
    sections.append({"title": "Test cases", "text": "Boxes above the score threshold; a hit holds a true box's centre.",
                     "table": {"header": header, "rows": [list(r) for r in zip(*table.values(), strict=True)],
                               "numeric": True}})  # fmt: skip
    if n > 0 and cases:
        sens = np.array([float(s) if s != "nan" else -1.0 for s in table["sensitivity"]])
        order = np.argsort(-sens, kind="stable")
        picks = order[np.unique(np.linspace(0, len(order) - 1, min(n, len(order), 6)).round().astype(int))]
        sections.append({"title": "Detections", "text": "True boxes found (green), missed (red), and false "
                         f"positives (yellow) among the detections scoring at least {SHOWN_SCORE}, on the preprocessed test images, best case first; 3D: the axial slice "
                         "crossing the most true boxes.", "figures": [overlay_figure([(cases[i]["id"], views[i])
                                                                                  for i in picks])]})  # fmt: skip
    return sections
