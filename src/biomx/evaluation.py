"""Test-set evaluation of a trained model: metrics with CIs, the predictions file, the report."""

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
    columns: dict[str, list] = {"id": list(ids), "true": task.truth_column(truth)}
    columns.update({k: [f"{v:.6f}" if isinstance(v, float) else v for v in col.tolist()]
                    for k, col in task.prediction_columns(probs).items()})  # fmt: skip
    if std is not None:
        columns.update(std_columns(task, std))
    write_csv(run_dir / "predictions_test.csv", columns)
    return evaluation


def std_columns(task, std: np.ndarray) -> dict[str, list[str]]:
    """`<prefix>_<output>_std` columns for a predictions CSV (e.g. prob_<class>_std, pred_<target>_std)."""
    std = std.reshape(len(std), -1)
    return {f"{task.output_prefix}_{name}_std": [f"{v:.6f}" for v in std[:, k].tolist()]
            for k, name in enumerate(task.output_names())}  # fmt: skip


def summary_line(evaluation: dict[str, Any]) -> str:
    parts = []
    for name in evaluation.get("headline") or list(evaluation["metrics"]):  # the task's headline metrics
        m = evaluation["metrics"].get(name)
        if m and not math.isnan(m["value"]):
            ci = "" if math.isnan(m["ci_low"]) else f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
            parts.append(f"{name} {m['value']:.3f}{ci}")
    return f"test (n={evaluation['n']}): " + ", ".join(parts)


def write_run_report(
    run_dir: Path, title: str, evaluation: dict | None, sections: list[dict], config: dict, environment: dict,
    notes: list[str],
) -> Path:
    history = []
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():  # an ensemble: show the first member's learning curves
        metrics_path = run_dir / "members" / "0" / "metrics.jsonl"
    if metrics_path.is_file():
        history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    path = write_report(run_dir / "report.html", title=title, history=history, evaluation=evaluation,
                        config=config, environment=environment, notes=notes, extra=sections)  # fmt: skip
    console.print(f"report: {path}")
    return path
