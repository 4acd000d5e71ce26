"""What a modality's explanations of a survival model attribute, and which patients they show.

A Cox network has one output, the log-risk, so attributions are of the risk itself. A
logistic-hazard network has one hazard logit per time bin; attributions are of the logit of the
bin that holds the middle horizon (the time the calibration is drawn at): evidence for an event
in that period, given survival up to it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def explained_output(task: Any) -> int | None:
    """The output whose attributions are shown: None for the Cox log-risk, else a bin index."""
    if task.model == "cox":
        return None
    h = task.horizons[len(task.horizons) // 2]
    return int(min(np.searchsorted(task.cuts, h, side="left"), len(task.cuts) - 1))


def attribution_target(task: Any, preds: np.ndarray) -> tuple[np.ndarray, int | None]:
    return task.risk(preds), explained_output(task)


def attribution_text(task: Any) -> tuple[str, str]:
    k = explained_output(task)
    if k is None:
        return "the log-risk (higher: an earlier event)", "the highest and the lowest predicted risks"
    start = 0.0 if k == 0 else task.cuts[k - 1]
    return (f"the hazard logit of time bin {k + 1} ({start:g} to {task.cuts[k]:g})",
            "the highest and the lowest predicted risks")  # fmt: skip


def pick_explained(task: Any, preds: np.ndarray, targets: np.ndarray, n: int) -> list[tuple[int, str, int]]:
    """(row, why picked, output) for up to n test samples: the highest risks, then the lowest."""
    order = np.argsort(-task.risk(preds), kind="stable")
    high = [int(r) for r in order[: (n + 1) // 2]]
    low = [int(r) for r in order[::-1][: n // 2] if r not in high]
    output = explained_output(task) or 0
    return [(r, "highest risk", output) for r in high] + [(r, "lowest risk", output) for r in low]


def describe(task: Any, column: int, pred: np.ndarray, target: np.ndarray) -> tuple[str, float, object, str]:
    """(caption, risk, observed outcome, what the output is) for one explained sample."""
    risk = float(task.risk(np.asarray(pred)[None])[0])
    time, event = float(target[0]), bool(target[1] > 0.5)
    outcome = f"{'event' if event else 'censored'} at {time:g}"
    return f"risk {risk:.3g} | {outcome}", risk, outcome, attribution_text(task)[0]
