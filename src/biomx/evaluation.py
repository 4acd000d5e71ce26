"""Test-set evaluation of a trained model: metrics with CIs, predictions, Grad-CAM, report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from biomx.engine.logging import console
from biomx.report.html import write_report
from biomx.runs import write_csv, write_json


def evaluate_split(
    task, probs: np.ndarray, truth: np.ndarray, ids: list[str], run_dir: Path, eval_cfg, seed: int,
    std: np.ndarray | None = None,
) -> dict[str, Any]:
    """Score test predictions (task space: probabilities or values in original units), write
    test_metrics.json and predictions_test.csv (with a `<column>_std` per prediction column when
    an ensemble or MC dropout gives an uncertainty); return the evaluation."""
    evaluation = task.evaluate(probs, truth, n_bootstrap=eval_cfg.bootstrap, ci=eval_cfg.ci, seed=seed)
    write_json(run_dir / "test_metrics.json", evaluation)
    columns: dict[str, list] = {"id": list(ids)}
    if task.kind == "regression":
        columns["true"] = [f"{v:.6g}" for v in truth.reshape(len(truth), -1)[:, 0]]
    elif task.kind == "multilabel":
        columns["true"] = ["|".join(task.classes[k] for k in np.flatnonzero(t == 1)) for t in truth]  # NaN: not measured
    else:
        columns["true"] = [task.classes[int(t)] for t in truth]
    columns.update({k: [f"{v:.6f}" if isinstance(v, float) else v for v in col.tolist()]
                    for k, col in task.prediction_columns(probs).items()})  # fmt: skip
    if std is not None:
        columns.update(std_columns(task, std))
    write_csv(run_dir / "predictions_test.csv", columns)
    return evaluation


def output_names(task) -> list[str]:
    """One name per column of the task's predictions: targets, P(positive) for binary, classes."""
    if task.kind == "regression":
        return list(task.targets)
    return task.classes[1:] if task.kind == "binary" else list(task.classes)


def std_columns(task, std: np.ndarray) -> dict[str, list[str]]:
    """`pred_<target>_std` (regression) or `prob_<class>_std` columns for a predictions CSV."""
    std = std.reshape(len(std), -1)
    prefix = "pred" if task.kind == "regression" else "prob"
    return {f"{prefix}_{name}_std": [f"{v:.6f}" for v in std[:, k].tolist()]
            for k, name in enumerate(output_names(task))}  # fmt: skip


def summary_line(evaluation: dict[str, Any]) -> str:
    parts = []
    names = {"regression": ("rmse", "mae", "r2", "spearman"),
             "segmentation": ("dice", "hd95", "surface_dice")}.get(
        evaluation["kind"], ("auroc", "accuracy", "balanced_accuracy", "f1"))  # fmt: skip
    for name in names:
        m = evaluation["metrics"].get(name)
        if m and not math.isnan(m["value"]):
            ci = "" if math.isnan(m["ci_low"]) else f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
            parts.append(f"{name} {m['value']:.3f}{ci}")
    return f"test (n={evaluation['n']}): " + ", ".join(parts)


def write_run_report(
    run_dir: Path, title: str, evaluation: dict | None, examples: list[dict], extra: list[dict], config: dict,
    environment: dict, notes: list[str],
) -> Path:
    history = []
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():  # an ensemble: show the first member's learning curves
        metrics_path = run_dir / "members" / "0" / "metrics.jsonl"
    if metrics_path.is_file():
        history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    path = write_report(run_dir / "report.html", title=title, history=history, evaluation=evaluation,
                        config=config, environment=environment, examples=examples, notes=notes,
                        extra=extra)  # fmt: skip
    console.print(f"report: {path}")
    return path
