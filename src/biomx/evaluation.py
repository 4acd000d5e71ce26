"""Test-set evaluation of a trained model: metrics with CIs, predictions, Grad-CAM, report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biomx.engine.logging import console
from biomx.explain.gradcam import gradcam
from biomx.report.html import write_report
from biomx.runs import read_json, write_csv, write_json
from biomx.tasks.classification import ClassificationTask


def pick_examples(task: ClassificationTask, probs: np.ndarray, targets: np.ndarray, n: int) -> list[int]:
    """Test cases worth looking at: the most confident hits and the most confident misses."""
    if n <= 0 or len(targets) == 0:
        return []
    if task.kind == "multilabel":
        return list(range(min(n, len(targets))))
    predicted = task.predict_labels(probs)
    confidence = probs if task.kind == "binary" else probs.max(axis=1)
    confidence = np.where(predicted == 1, confidence, 1 - confidence) if task.kind == "binary" else confidence
    truth = targets.astype(np.int64)
    wrong = np.flatnonzero(predicted != truth)
    right = np.flatnonzero(predicted == truth)
    wrong = wrong[np.argsort(-confidence[wrong])][: n // 2]
    right = right[np.argsort(-confidence[right])][: n - len(wrong)]
    return sorted(np.concatenate([right, wrong]).tolist())


def explain_examples(
    model: nn.Module, task: ClassificationTask, dataset, display: torch.Tensor,
    probs: np.ndarray, targets: np.ndarray, indices: list[int],
) -> list[dict[str, Any]]:
    """Grad-CAM maps for the chosen test cases, captioned with truth and prediction."""
    if not indices:
        return []
    x, _ = dataset.__getitems__(indices)
    predicted = task.predict_labels(probs[indices])
    # Binary models have one logit: explain it (evidence for the positive class).
    target = None if task.kind == "binary" else torch.as_tensor(predicted if task.kind == "multiclass" else 0)
    device = next(model.parameters()).device
    heatmaps = gradcam(model, x.to(device), target if task.kind != "multilabel" else 0).cpu().numpy()
    examples = []
    for row, i in enumerate(indices):
        if task.kind == "multilabel":
            caption = f"true: {'|'.join(task.classes[k] for k in np.flatnonzero(targets[i])) or '-'}"
        else:
            p = probs[i] if task.kind == "binary" else probs[i].max()
            truth = task.classes[int(targets[i])]
            guess = task.classes[int(predicted[row])]
            caption = f"true: {truth} | predicted: {guess} (p={float(p):.2f})"
        examples.append({"image": display[i].float().numpy(), "heatmap": heatmaps[row], "caption": caption})
    return examples


def evaluate_split(
    model: nn.Module, task: ClassificationTask, outputs: torch.Tensor, targets: torch.Tensor,
    ids: list[str], run_dir: Path, eval_cfg, seed: int,
) -> dict[str, Any]:
    """Score test outputs, write test_metrics.json and predictions_test.csv; return the evaluation."""
    probs = task.probabilities(outputs).numpy()
    truth = targets.numpy()
    evaluation = task.evaluate(probs, truth, n_bootstrap=eval_cfg.bootstrap, ci=eval_cfg.ci, seed=seed)
    write_json(run_dir / "test_metrics.json", evaluation)
    columns: dict[str, list] = {"id": list(ids)}
    if task.kind == "multilabel":
        columns["true"] = ["|".join(task.classes[k] for k in np.flatnonzero(t)) for t in truth]
    else:
        columns["true"] = [task.classes[int(t)] for t in truth]
    columns.update({k: [f"{v:.6f}" if isinstance(v, float) else v for v in col.tolist()]
                    for k, col in task.prediction_columns(probs).items()})  # fmt: skip
    write_csv(run_dir / "predictions_test.csv", columns)
    return evaluation


def summary_line(evaluation: dict[str, Any]) -> str:
    parts = []
    for name in ("auroc", "accuracy", "balanced_accuracy", "f1"):
        m = evaluation["metrics"].get(name)
        if m and not math.isnan(m["value"]):
            ci = "" if math.isnan(m["ci_low"]) else f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
            parts.append(f"{name} {m['value']:.3f}{ci}")
    return f"test (n={evaluation['n']}): " + ", ".join(parts)


def write_run_report(
    run_dir: Path, title: str, evaluation: dict | None, examples: list[dict], config: dict,
    environment: dict, notes: list[str],
) -> Path:
    history = []
    metrics_path = run_dir / "metrics.jsonl"
    if metrics_path.is_file():
        history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    data_info = run_dir / "data.json"
    if data_info.is_file():
        info = read_json(data_info)
        notes = [f"split sizes: {info.get('split_sizes')}"] + notes
    path = write_report(run_dir / "report.html", title=title, history=history, evaluation=evaluation,
                        config=config, environment=environment, examples=examples, notes=notes)  # fmt: skip
    console.print(f"report: {path}")
    return path
