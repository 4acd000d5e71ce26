"""Test-set evaluation of a trained model: metrics with CIs, predictions, Grad-CAM, report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomx.engine.logging import console
from biomx.report.html import write_report
from biomx.runs import write_csv, write_json


def evaluate_split(
    task, outputs: torch.Tensor, targets: torch.Tensor,
    ids: list[str], run_dir: Path, eval_cfg, seed: int,
) -> dict[str, Any]:
    """Score test outputs, write test_metrics.json and predictions_test.csv; return the evaluation."""
    probs = task.predictions(outputs).numpy()
    truth = targets.numpy()
    evaluation = task.evaluate(probs, truth, n_bootstrap=eval_cfg.bootstrap, ci=eval_cfg.ci, seed=seed)
    write_json(run_dir / "test_metrics.json", evaluation)
    columns: dict[str, list] = {"id": list(ids)}
    if task.kind == "regression":
        columns["true"] = [f"{v:.6g}" for v in truth.reshape(len(truth), -1)[:, 0]]
    elif task.kind == "multilabel":
        columns["true"] = ["|".join(task.classes[k] for k in np.flatnonzero(t)) for t in truth]
    else:
        columns["true"] = [task.classes[int(t)] for t in truth]
    columns.update({k: [f"{v:.6f}" if isinstance(v, float) else v for v in col.tolist()]
                    for k, col in task.prediction_columns(probs).items()})  # fmt: skip
    write_csv(run_dir / "predictions_test.csv", columns)
    return evaluation


def summary_line(evaluation: dict[str, Any]) -> str:
    parts = []
    names = ("rmse", "mae", "r2", "spearman") if evaluation["kind"] == "regression" else (
        "auroc", "accuracy", "balanced_accuracy", "f1")
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
    if metrics_path.is_file():
        history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    path = write_report(run_dir / "report.html", title=title, history=history, evaluation=evaluation,
                        config=config, environment=environment, examples=examples, notes=notes,
                        extra=extra)  # fmt: skip
    console.print(f"report: {path}")
    return path
