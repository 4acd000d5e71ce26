"""Report sections of a classification evaluation: ROC and PR curves, confusion matrices, the
reliability diagram and per-class statistics (binary: then the operating point and decision curve,
rendered by `clinical`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

import biomx.tasks.classification.clinical as clinical
from biomx.report.html import fmt, stats_table


def _curves_figure(curves: dict, kind: str) -> tuple[Figure, str]:
    """ROC (with chance diagonal) or PR curves, one line per class."""
    x_key, y_key, score = ("fpr", "tpr", "auc") if kind == "roc" else ("recall", "precision", "ap")
    fig = Figure(figsize=(4.6, 4))
    ax = fig.add_subplot()
    if kind == "roc":
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for name, curve in curves.items():
        label = f"{name} ({score.upper()} {fmt(curve.get(score))})"
        ax.plot(curve[x_key], curve[y_key], linewidth=1.5, label=label)
    ax.set_xlabel(x_key.upper() if kind == "roc" else "recall")
    ax.set_ylabel(y_key.upper() if kind == "roc" else "precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("ROC curve" if kind == "roc" else "Precision-recall curve")
    ax.legend(fontsize=8, loc="lower right" if kind == "roc" else "lower left")
    ax.grid(alpha=0.3)
    return fig, f"{kind} curves"


def _draw_confusion(ax: Any, matrix: np.ndarray, labels: list[str], title: str) -> None:
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(labels))
    rotate = len(labels) > 3  # long class lists need slanted labels to stay readable
    ax.set_xticks(ticks, labels, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    # White text on dark cells, black on light: readable on the whole colormap.
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if count > threshold else "black"
        ax.text(col, row, f"{count:g}", ha="center", va="center", color=colour, fontsize=11)


def _confusion_figure(evaluation: dict) -> tuple[Figure, str] | None:
    """One matrix for binary/multiclass, a small grid of 2x2 matrices for multilabel."""
    confusion = evaluation.get("confusion_matrix")
    if confusion is not None and not isinstance(confusion, dict):
        matrix = np.asarray(confusion)
        classes = [str(c) for c in evaluation.get("classes", range(len(matrix)))]
        size = 3 + 0.45 * len(classes)
        fig = Figure(figsize=(size, size))
        _draw_confusion(fig.add_subplot(), matrix, classes, "Confusion matrix")
        return fig, "confusion matrix"
    per_label = confusion.get("per_label") if isinstance(confusion, dict) else evaluation.get("per_label")
    if not per_label:
        return None
    cols = min(4, len(per_label))
    rows = math.ceil(len(per_label) / cols)
    fig = Figure(figsize=(3 * cols, 3 * rows))
    for i, (name, matrix) in enumerate(per_label.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw_confusion(ax, np.asarray(matrix), ["neg", "pos"], str(name))
    fig.tight_layout()
    return fig, "per-label confusion matrices"


def _calibration_figure(calibration: dict) -> tuple[Figure, str]:
    confidence = np.asarray(calibration.get("bin_confidence", []), dtype=float)
    frequency = np.asarray(calibration.get("bin_frequency", []), dtype=float)
    count = np.asarray(calibration.get("bin_count", np.ones_like(confidence)), dtype=float)
    keep = (count > 0) & np.isfinite(confidence) & np.isfinite(frequency)  # empty bins
    fig = Figure(figsize=(4.6, 4))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    ax.bar(confidence[keep], frequency[keep], width=0.06, alpha=0.35, color="tab:blue")
    ax.plot(confidence[keep], frequency[keep], marker="o", color="tab:blue", label="model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"Reliability diagram (ECE {fmt(calibration.get('ece'))})")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return fig, "reliability diagram"


def _fewest(counts: dict[str, tuple[int, int]], which: str) -> tuple[int, str] | None:
    """(smallest count, what it counts) over classes: "positives", "negatives" or "either"."""
    found = []
    for positives, negatives in counts.values():
        if which in ("positives", "either"):
            found.append((positives, "positives"))
        if which in ("negatives", "either"):
            found.append((negatives, "negatives"))
    return min(found) if found else None


def metric_counts(evaluation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The count each metric's bootstrap interval rests on, where that is fewer than the test cases.

    An AUROC is as unstable as its rarer side: 300 cases with 5 negatives give a wide interval.
    Binary scores the positive class (its negatives are the other class's cases); multiclass and
    multilabel macro-average one-vs-rest scores over every class, so the weakest class decides.
    """
    per_class, n = evaluation.get("per_class") or {}, evaluation.get("n")
    if not per_class or not isinstance(n, int):
        return {}
    counts = {}
    for name, stats in per_class.items():
        if isinstance(stats.get("support"), int):  # evaluations written before support: no counts
            positives = stats["support"]
            counts[name] = (positives, int(stats.get("n", n)) - positives)  # multilabel: observed cases
    scored = dict(list(counts.items())[1:]) if evaluation.get("kind") == "binary" else counts
    needs = {"auroc": "either", "auprc": "either", "sensitivity": "positives", "specificity": "negatives"}
    found = {metric: _fewest(scored, which) for metric, which in needs.items()}
    # Balanced accuracy averages every class's recall, the binary negative class's included.
    smallest = _fewest(counts, "positives")
    found["balanced_accuracy"] = (smallest[0], "in the smallest class") if smallest else None
    return {metric: {"n": f[0], "counted": f[1]} for metric, f in found.items() if f is not None and f[0] < n}


def report_sections(evaluation: dict[str, Any]) -> list[dict]:
    """The figures and the per-class table of `ClassificationTask.evaluate`'s output, and the
    counts behind each metric's interval (a title-less section: it annotates the metric table)."""
    figures = []
    curves = evaluation.get("curves", {})
    for kind in ("roc", "pr"):
        if curves.get(kind):
            figures.append(_curves_figure(curves[kind], kind))
    confusion = _confusion_figure(evaluation)
    if confusion is not None:
        figures.append(confusion)
    if evaluation.get("calibration"):
        figures.append(_calibration_figure(evaluation["calibration"]))
    sections: list[dict] = [{"metric_info": metric_counts(evaluation)}]
    if figures:
        sections.append({"title": "Curves and calibration", "figures": figures})
    per_class = evaluation.get("per_class")
    if per_class:
        sections.append({"title": "Per class", "table": stats_table("class", per_class)})
    return [*sections, *clinical.report_sections(evaluation)]  # binary: operating point, decision curve
