"""Report figures of a segmentation run: the best, median and worst test cases, with the true
(green) and predicted (red) contours on the slice with the most foreground."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure


def overlay_slice(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """The axial slice (last axis) with the most true foreground (else predicted), as 2D arrays."""
    if truth.ndim == 2:
        index = None
    else:
        area = (truth > 0).sum(axis=(0, 1)) if truth.any() else (pred > 0).sum(axis=(0, 1))
        index = int(np.argmax(area)) if area.any() else truth.shape[-1] // 2
    pick = (lambda a: a) if index is None else (lambda a: a[..., index])
    grey = np.asarray(pick(image[0]), dtype=np.float32)
    low, high = np.percentile(grey, [0.5, 99.5])
    grey = np.clip((grey - low) / max(high - low, 1e-6), 0, 1)
    return {"image": grey, "truth": np.asarray(pick(truth)), "pred": np.asarray(pick(pred)), "slice": index}


def overlay_figure(chosen: list[tuple[str, float, dict[str, np.ndarray]]]) -> Figure:
    """Grey image, true contour (green) and predicted contour (red) per chosen case."""
    fig = Figure(figsize=(3.2 * len(chosen), 3.6))
    for k, (case_id, dice, view) in enumerate(chosen):
        ax = fig.add_subplot(1, len(chosen), k + 1)
        # 2D images: rows down, as stored. Volume slices: axis 0 runs to the right and axis 1 to the
        # front (RAS), shown with anterior up.
        flat = view["slice"] is None
        show = (lambda a: a) if flat else (lambda a: a.T)
        ax.imshow(show(view["image"]), cmap="gray", origin="upper" if flat else "lower")
        for mask, colour in ((view["truth"], "#2ca02c"), (view["pred"], "#d62728")):
            if (mask > 0).any() and (mask == 0).any():
                ax.contour(show((mask > 0).astype(float)), levels=[0.5], colors=colour, linewidths=1.2)
        where = "" if view["slice"] is None else f", slice {view['slice']}"
        ax.set_title(f"{case_id}{where}\nDice {dice:.3f}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def _mean_dice(result: dict[str, Any]) -> float:
    values = [v for v in result["dice"].values() if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def overlay_sections(results: list[dict], views: list[dict], n: int) -> list[dict]:
    if n <= 0 or not results:
        return []
    scores = np.array([_mean_dice(r) for r in results])
    order = np.argsort(-np.nan_to_num(scores, nan=-1.0))  # best first
    picks = order[np.unique(np.linspace(0, len(order) - 1, min(n, len(order), 6)).round().astype(int))]
    chosen = [(results[i]["id"], float(scores[i]), views[i]) for i in picks]
    text = ("Test cases from best to worst mean Dice: the preprocessed image (grey), the true mask (green) and "
            "the predicted mask (red) on the slice with the largest true foreground. Masks for every test case "
            "are in test_masks/, on the scans' own grids.")  # fmt: skip
    return [{"title": "Segmentation overlays", "text": text, "figures": [overlay_figure(chosen)]}]
