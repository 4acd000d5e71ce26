"""model.json: what a client needs to call an exported run, and what the export checked.

It states the graph's input (name, dtype, shape, what to put in it), its outputs (and what each
column means), what happens before the graph and inside it, the task, the run's test metrics,
every format's check against PyTorch, the latencies measured, and each file's size and sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from biomx.export.graph import LoadedGraph
from biomx.protocols import RowTask
from biomx.version import __version__

MC_DROPOUT_NOTE = ("Monte Carlo dropout is not in the graph: it runs every model once, with dropout "
                   "off; `biomx predict --mc-dropout` with the torch engine still samples it")  # fmt: skip


def finite(obj: Any) -> Any:
    """`obj` with NaN and infinities as None: JSON has no NaN, and JavaScript's JSON.parse refuses it."""
    if isinstance(obj, dict):
        return {key: finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(value) for value in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def file_entry(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def outputs(loaded: LoadedGraph, predictions: np.ndarray) -> list[dict[str, Any]]:
    """The graph's outputs: shape, meaning and (for a task with one row per sample) column names."""
    task, shape = loaded.task, ["batch", *predictions.shape[1:]]
    columns = task.output_names() if isinstance(task, RowTask) else []
    meaning = (f"the {task.kind} task's predictions (probabilities for classes, values in the "
               "target's units), the mean over the ensemble's members")  # fmt: skip
    found = [{"name": "predictions", "dtype": "float32", "shape": shape, "meaning": meaning, "columns": columns}]
    if loaded.graph.ensemble:
        found.append({"name": "std", "dtype": "float32", "shape": shape, "columns": columns,
                      "meaning": f"the sample standard deviation (ddof=1) of the predictions across the "
                                 f"{len(loaded.graph.members)} ensemble members"})  # fmt: skip
    return found


def test_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's headline test metrics (value only), from test_metrics.json when there is one."""
    path = run_dir / "test_metrics.json"
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text())
        return {name: found["metrics"][name]["value"] for name in found.get("headline", [])}
    except (ValueError, KeyError, TypeError):
        return {}


def sidecar(loaded: LoadedGraph, checkpoint: str, predictions: np.ndarray, checks: dict[str, Any],
            latency: dict[str, float], files: dict[str, dict[str, Any]], split: str) -> dict[str, Any]:  # fmt: skip
    info, plan, task = loaded.info, loaded.plan, loaded.task
    return finite({
        "biomx_version": __version__,
        "run": info.get("name", loaded.run_dir.name),
        "checkpoint": checkpoint,
        "model": info.get("model", {}).get("name"),
        "members": len(loaded.graph.members),
        "modality": loaded.modality.name,
        "input": asdict(plan.input),
        "outputs": outputs(loaded, predictions),
        "outside": plan.outside,
        "inside": plan.inside,
        "example": plan.example,
        "task": {"kind": task.kind, "classes": list(task.classes),
                 **({"threshold": task.threshold} if getattr(task, "threshold", None) is not None else {}),
                 **({"label_thresholds": task.label_thresholds} if getattr(task, "label_thresholds", None) else {})},
        "mc_dropout": MC_DROPOUT_NOTE,
        "test_metrics": test_metrics(loaded.run_dir),
        "checked_on": f"{len(predictions)} rows of the run's {split} split",
        "checks": checks,
        "latency_ms_batch64": latency,
        "files": files,
    })
