"""Per-group evaluation of the test split: each group scored by the task's own `evaluate`.

Nothing here knows what the task is: every group's metrics (with bootstrap CIs, and calibration
where the task scores it) come from `task.evaluate` on that group's rows; disparities and
per-group thresholds come from the task when it is a `protocols.GroupedTask`. Groups smaller
than `eval.min_group` are flagged "small" and kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from biomx.errors import BiomxError
from biomx.fairness.groups import group_order, subgroup_labels
from biomx.protocols import GroupedTask
from biomx.runs import write_json

SMALL = "small"


def group_rows(task: Any, preds: np.ndarray, truth: np.ndarray, labels: np.ndarray, *, n_bootstrap: int,
               ci: float, seed: int, min_group: int) -> list[dict[str, Any]]:  # fmt: skip
    """One row per group: name, n, flag ("small" or ""), the task's metrics with CIs on its rows."""
    rows = []
    for name in group_order(labels):
        idx = np.flatnonzero(labels == name)
        row: dict[str, Any] = {"group": name, "n": int(len(idx)), "flag": SMALL if len(idx) < min_group else ""}
        try:
            evaluation = task.evaluate(preds[idx], truth[idx], n_bootstrap=n_bootstrap, ci=ci, seed=seed)
            row["metrics"] = evaluation["metrics"]
        except BiomxError as err:  # e.g. nothing the task can score in this group
            row["metrics"], row["note"] = {}, str(err)
        rows.append(row)
    return rows


def evaluate_subgroups(task: Any, preds: np.ndarray, truth: np.ndarray, groups: dict[str, np.ndarray],
                       eval_cfg: Any, seed: int,
                       val: tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None = None) -> dict[str, Any]:  # fmt: skip
    """subgroups.json: per column, per-group metrics, the task's disparities and (with `val`:
    validation predictions, targets and group labels) per-group thresholds fitted on validation."""
    out: dict[str, Any] = {"min_group": int(eval_cfg.min_group), "ci": float(eval_cfg.ci),
                           "n_bootstrap": int(eval_cfg.bootstrap), "columns": {}}  # fmt: skip
    for column, labels in groups.items():
        entry: dict[str, Any] = {"groups": group_rows(task, preds, truth, labels, n_bootstrap=eval_cfg.bootstrap,
                                                      ci=eval_cfg.ci, seed=seed, min_group=eval_cfg.min_group)}  # fmt: skip
        if isinstance(task, GroupedTask):
            entry.update(_task_measures(task, preds, truth, labels, entry["groups"], seed,
                                        None if val is None else (val[0], val[1], val[2][column])))  # fmt: skip
        out["columns"][column] = entry
    return out


def compared_groups(rows: list[dict[str, Any]]) -> list[str]:
    """The groups disparities compare: those not flagged small, when at least two are; else all
    (a difference between groups of three is noise; the small ones stay in the group table)."""
    large = [r["group"] for r in rows if not r["flag"]]
    return large if len(large) >= 2 else [r["group"] for r in rows]


def _task_measures(task: Any, preds: np.ndarray, truth: np.ndarray, labels: np.ndarray, rows: list[dict[str, Any]],
                   seed: int, val: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> dict[str, Any]:  # fmt: skip
    """The task's disparities and per-group thresholds, over the compared groups' rows only."""
    compared = compared_groups(rows)
    keep = np.isin(labels, compared)
    found: dict[str, Any] = {"compared_groups": compared}
    disparity = task.group_disparity(preds[keep], truth[keep], labels[keep])
    if disparity is not None:
        found["disparity"] = disparity
    if val is not None and len(val[1]):
        inside = np.isin(val[2], compared)
        fitted = task.group_thresholds((val[0][inside], val[1][inside], val[2][inside]),
                                       (preds[keep], truth[keep], labels[keep]), seed)  # fmt: skip
        if fitted is not None:
            found["thresholds"] = fitted
    return found


def validation_predictions(task: Any, run: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The mean validation prediction of every member (as the test split is scored), or None; the
    same one the operating point reads (predicted once per run)."""
    from biomx.batched import mean_predictions  # batched imports this package

    return mean_predictions(task, run, "val")


def training_facts(run_dir: Any, ensemble: int) -> dict[str, Any]:
    """What `train.fairness` did (the first member's RUN/fairness_training.json), or {}."""
    import json

    from biomx.fairness.training import FILE
    from biomx.runs import member_dirs

    path = member_dirs(run_dir, ensemble)[0] / FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def subgroup_sections(task: Any, run: Any, preds: np.ndarray, truth: np.ndarray,
                      evaluation: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    """For `eval.subgroups`: write RUN/subgroups.json and return the report sections ([] without).
    Called on the main rank only: under torchrun the validation pass (sharded) is left out."""
    from biomx.engine import distributed as dist
    from biomx.fairness.report import sections

    cfg = run.cfg
    if not cfg.eval.subgroups:
        return []
    labels = subgroup_labels(cfg, run.modality, run.samples)
    test = run.splits["test"]
    val = None
    if isinstance(task, GroupedTask) and "val" in run.splits and not dist.is_distributed():
        found = validation_predictions(task, run)
        if found is not None:
            val = (found[0], found[1], {c: v[run.splits["val"]] for c, v in labels.items()})
    result = evaluate_subgroups(task, preds, truth, {c: v[test] for c, v in labels.items()}, cfg.eval,
                                cfg.train.seed, val)  # fmt: skip
    result["headline"] = list(evaluation.get("headline") or [])
    mitigation = training_facts(run.run_dir, cfg.model.ensemble)
    if mitigation:
        result["mitigation"] = mitigation
    write_json(run.run_dir / "subgroups.json", result)
    return sections(result)
