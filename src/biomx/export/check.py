"""Checking an exported artifact against the PyTorch graph on the run's own test inputs.

The test split is rebuilt as `biomx evaluate` rebuilds it (the run's config, the same data and
split), read as raw graph inputs (`modality.raw_rows`), and fed to both. fp32 formats must agree
to 1e-4 (times the predictions' magnitude, for values in original units) with every predicted
label the same; int8 only needs 90% of the labels, and its change in the test metrics is reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from biomx.config import load_config
from biomx.errors import ExportRefused
from biomx.export.graph import LoadedGraph
from biomx.protocols import LabellingTask, RowTask

MAX_CHECK_ROWS = 512
MAX_CALIBRATION_ROWS = 256
FP32_TOLERANCE = 1e-4
INT8_MIN_AGREEMENT = 0.9
LATENCY_BATCH = 64

Outputs = tuple[np.ndarray, np.ndarray | None]


@dataclass
class CheckData:
    """Raw inputs to compare on (and their targets), and training rows to calibrate int8 with."""

    raw: torch.Tensor
    targets: np.ndarray
    split: str  # which split `raw` holds ("test"; "val" or "train" for a run without one)
    calibration: torch.Tensor


def check_data(loaded: LoadedGraph) -> CheckData:
    """The run's test rows (up to 512) and training rows (up to 256), as raw graph inputs."""
    from biomx.experiment import prepare  # the experiment wiring: heavy, needed only here

    p = prepare(load_config(loaded.run_dir / "config.yaml"))
    pre = loaded.info["preprocessing"]
    split = next((name for name in ("test", "val", "train") if len(p.splits.get(name, ())) > 0), "train")
    index = np.asarray(p.splits[split])[:MAX_CHECK_ROWS]
    raw = loaded.modality.raw_rows(pre, p.data, index)
    calibration = loaded.modality.raw_rows(pre, p.data, np.asarray(p.splits["train"])[:MAX_CALIBRATION_ROWS])
    return CheckData(raw, p.targets[torch.as_tensor(index)].numpy(), split, calibration)


def labels(loaded: LoadedGraph, preds: np.ndarray) -> np.ndarray | None:
    task = loaded.task
    return np.asarray(task.predict_labels(preds)) if isinstance(task, LabellingTask) else None


def compare(loaded: LoadedGraph, reference: Outputs, got: Outputs) -> dict[str, Any]:
    """Max abs difference (predictions and std), the tolerance fp32 must meet, label agreement."""
    diffs = [float(np.max(np.abs(np.asarray(g, np.float64) - r))) if r.size else 0.0
             for r, g in zip(reference, got, strict=True) if r is not None]  # fmt: skip
    scale = max(1.0, float(np.max(np.abs(reference[0]))) if reference[0].size else 1.0)
    result: dict[str, Any] = {"rows": int(len(reference[0])), "max_abs_diff": max(diffs),
                              "tolerance": FP32_TOLERANCE * scale}  # fmt: skip
    ref_labels = labels(loaded, reference[0])
    if ref_labels is not None:
        same = (labels(loaded, got[0]) == ref_labels).reshape(len(ref_labels), -1).all(axis=1)
        result["label_agreement"] = float(same.mean()) if len(same) else 1.0
    return result


def enforce(fmt: str, result: dict[str, Any], model: str) -> None:
    """Refuse a format whose check failed, with the numbers."""
    agreement = result.get("label_agreement")
    said = f"max abs difference {result['max_abs_diff']:.3g}" + (
        f", label agreement {agreement:.1%}" if agreement is not None else "")
    if fmt == "int8":
        if agreement is not None and agreement < INT8_MIN_AGREEMENT:
            raise ExportRefused(f"{model}: the int8 model fails its check against PyTorch ({said}; "
                                f"needs {INT8_MIN_AGREEMENT:.0%} agreement); export without int8: "
                                "--formats onnx torch")  # fmt: skip
        return
    if result["max_abs_diff"] > result["tolerance"] or (agreement is not None and agreement < 1.0):
        raise ExportRefused(f"{model}: the {fmt} export fails its check against PyTorch ({said}; needs "
                            f"<= {result['tolerance']:.3g} and 100% agreement)")  # fmt: skip


def metric_change(loaded: LoadedGraph, data: CheckData, reference: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """The headline test metrics of the fp32 graph and of `got`, and their difference."""
    task = loaded.task
    if not isinstance(task, RowTask) or not len(reference):
        return {}
    try:
        before, after = (task.evaluate(p, data.targets, n_bootstrap=0, ci=0.95, seed=0) for p in (reference, got))
    except Exception as err:  # a split the metrics cannot score (one class only): say so, do not fail
        return {"error": str(err).splitlines()[0] if str(err) else type(err).__name__}
    change = {}
    for name in before.get("headline", []):
        a, b = (float(e["metrics"][name]["value"]) for e in (before, after))
        change[name] = {"fp32": a, "int8": b, "change": b - a}
    return change


def latency_ms(run: Callable[[Any], Any], raw: torch.Tensor, repeats: int = 5) -> float:
    """Median wall time of one batch of 64 rows (rows repeated when there are fewer), in ms."""
    batch = raw.repeat(-(-LATENCY_BATCH // max(len(raw), 1)), *[1] * (raw.dim() - 1))[:LATENCY_BATCH]
    run(batch)  # warm-up: first calls allocate and plan
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
