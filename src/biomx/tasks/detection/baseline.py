"""The segmentation-derived baseline of a detection run (`task.baseline: <segmentation run folder>`):
the trained segmentation run's model(s) segment each detection test case whole, every connected
component of each foreground class becomes a box scored by its mean class probability, and these
boxes are scored exactly as the detector's (FROC/CPM, mAP, per-size sensitivity, bootstrap CIs),
plus how far the two agree on which true boxes they find.

Why a finished run rather than training a UNet inside the detection run: a task plug-in never
imports another task (tests/test_architecture.py), and a second training hidden in `biomx train`
would double its time and settings without the user seeing them. The segmentation run is trained
the ordinary way (`biomx train`, e.g. examples/nuclei2d_unet.yaml), and this module reuses only
core pieces: `runs.load_run_models`, `data.cases.preprocess` with the baseline run's own
preprocessing, `engine.sliding_window.sliding_window_predict`. Its `split.csv` is checked so that
no detection test case was a training or validation case of the baseline.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from biomx.errors import ConfigError
from biomx.protocols import TestRun
from biomx.tasks.detection import scoring
from biomx.tasks.detection.boxes import boxes_from_instance_mask
from biomx.tasks.detection.inference import to_scan_voxels
from biomx.tasks.detection.scoring import Found, Truth, match


def _check_kind(path: str, info: dict[str, Any]) -> None:
    task, pre = info.get("task") or {}, info.get("preprocessing") or {}
    classes = task.get("classes") or []
    if task.get("kind") != "segmentation" or len(classes) < 2 or "patch_size" not in pre:
        raise ConfigError(f"task.baseline: {path}: a {task.get('kind', 'unknown')} run; the baseline needs a "
                          "segmentation run (masks with a background and at least one foreground class)")  # fmt: skip


def _run_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "run.json").is_file():
        raise ConfigError(f"task.baseline: {path}: not a run folder (no run.json); give a segmentation run's folder")
    return folder


def preflight(path: str, test_ids: list[str]) -> str:
    """Before training: refuse a baseline that is no segmentation run folder or that trained or
    validated on a detection test case (else that would only show after the whole training);
    returns what the split check found. A folder that is not there is a warning only: the datasets
    are rebuilt by export, drift and resume too, long after a user may have removed the baseline
    (evaluation, which needs it, refuses then in one line)."""
    from biomx.engine.logging import console
    from biomx.runs import read_json

    if not Path(path).expanduser().exists():
        console.print(f"[yellow]warning: task.baseline: {path}: no such folder; the test evaluation will need it[/]")
        return "missing"
    folder = _run_folder(path)
    _check_kind(path, read_json(folder / "run.json"))
    return check_split(folder, test_ids)


def baseline_run(path: str) -> tuple[list[Any], dict[str, Any], Path]:
    """The baseline's model(s) and run info; one ConfigError line for anything but a run folder
    of a mask-predicting (segmentation) run."""
    from biomx.runs import load_run_models

    folder = _run_folder(path)
    models, info = load_run_models(folder)
    _check_kind(path, info)
    return models, info, folder


def check_split(folder: Path, test_ids: list[str]) -> str:
    """Refuse a baseline that trained or validated on a detection test case; say how far the check went."""
    if not (folder / "split.csv").is_file():
        return "the baseline run has no split.csv, so its split was not checked"
    with open(folder / "split.csv", newline="") as f:
        split = {row["id"]: row["split"] for row in csv.DictReader(f)}
    leaked = [i for i in test_ids if split.get(i) in ("train", "val")]
    if leaked:
        raise ConfigError(f"task.baseline: {folder}: the baseline trained or validated on detection test case(s) "
                          f"{', '.join(leaked[:5])}; train it on the same split (same data.split)")  # fmt: skip
    known = sum(i in split for i in test_ids)
    return f"{known} of {len(test_ids)} detection test cases are test cases of the baseline run too"


def component_boxes(probs: np.ndarray, class_map: dict[int, int]) -> Found:
    """Boxes (preprocessed grid), scores and detection classes from class probabilities (K, *S):
    the argmax mask's connected components of every foreground class k in `class_map` (face
    connectivity), each scored by the mean probability of k over its voxels."""
    pred = probs.argmax(0)
    boxes, scores, labels = [], [], []
    for k, label in class_map.items():
        components, n = ndimage.label(pred == k)
        if not n:
            continue
        found, ids = boxes_from_instance_mask(components)
        means = np.asarray(ndimage.mean(probs[k], components, ids), dtype=np.float64).reshape(-1)
        boxes.append(found)
        scores.append(means)
        labels.append(np.full(len(found), label, dtype=np.int64))
    dims = probs.ndim - 1
    if not boxes:
        return np.zeros((0, 2 * dims)), np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)


def class_map(seg_classes: list[str], det_classes: list[str]) -> dict[int, int]:
    """Segmentation class index -> detection class index: by name, or every foreground class to
    the one detection class."""
    if len(det_classes) == 1:
        return {k: 0 for k in range(1, len(seg_classes))}
    mapping = {k: det_classes.index(c) for k, c in enumerate(seg_classes) if k and c in det_classes}
    if not mapping:
        raise ConfigError(f"task.baseline: its classes {seg_classes[1:]} name none of the detection classes "
                          f"{det_classes}")  # fmt: skip
    return mapping


def baseline_detections(run: TestRun, task: Any, path: str) -> tuple[list[Found], dict[str, Any]]:
    """Per detection test case (in `run.splits["test"]` order): the baseline's boxes on the scan's
    own voxel grid, scores and detection classes; and what the report says of the baseline."""
    import torch

    from biomx.data.cases import preprocess
    from biomx.engine.sliding_window import sliding_window_predict

    models, info, folder = baseline_run(path)
    pre, seg_classes = info["preprocessing"], list(info["task"]["classes"])
    if int(pre.get("spatial_dims", task.spatial_dims)) != task.spatial_dims:
        raise ConfigError(f"task.baseline: {path}: a {pre.get('spatial_dims')}D run for {task.spatial_dims}D data")
    mapping = class_map(seg_classes, task.classes)
    test = run.datasets["test"]
    checked = check_split(folder, [case.id for case in test.cases])
    device = run.trainer.device
    models = [m.to(device).eval() for m in models]
    found: list[Found] = []
    for case in test.cases:
        scan = run.modality.read_scan(case.image_path, nan_policy=pre.get("nan_policy", "raise"),
                                      **pre.get("limits", {}))  # fmt: skip
        image, _, geometry = preprocess(scan.array, scan.spacing, pre)
        with torch.inference_mode():
            probs = sum(sliding_window_predict(m, image, pre["patch_size"], out_channels=len(seg_classes),
                                               overlap=float(pre.get("overlap", 0.5)),
                                               batch_size=int(pre.get("sw_batch_size", 4)), device=device)
                        for m in models) / len(models)  # fmt: skip
        boxes, scores, labels = component_boxes(np.asarray(probs), mapping)
        found.append((to_scan_voxels(boxes, geometry), scores, labels))
    about = {"run": str(folder), "model": info.get("model", {}).get("name"), "classes": seg_classes,
             "members": len(models), "split_check": checked}  # fmt: skip
    return found, about


def threshold_at(found: list[Found], truth: list[Truth], fps: float = 1.0) -> float:
    """The lowest score threshold that keeps at most `fps` false positives per case (FROC's hit
    rule; `inf` when even the best detection is a false positive beyond that)."""
    scores, false = [], []
    for f, t in zip(found, truth, strict=True):
        hits, _ = match(f, t)
        scores.append(np.asarray(f[1], dtype=np.float64))
        false.append(~hits)
    s, fp = np.concatenate(scores or [np.zeros(0)]), np.concatenate(false or [np.zeros(0, dtype=bool)])
    if not len(s):
        return float("inf")
    order = np.argsort(-s, kind="stable")
    s, fp = s[order], np.cumsum(fp[order])
    last = np.r_[s[1:] != s[:-1], True]  # a threshold keeps every detection of its score
    ok = last & (fp <= fps * len(found))
    return float(s[ok][-1]) if ok.any() else float("inf")


def agreement(detector: list[Found], baseline: list[Found], truth: list[Truth], fps: float = 1.0) -> dict[str, Any]:
    """Which true boxes each finds at its own `fps` false positives per case: both, only one, neither."""
    t_det, t_base = threshold_at(detector, truth, fps), threshold_at(baseline, truth, fps)
    counts = {"both": 0, "detector_only": 0, "baseline_only": 0, "neither": 0}
    for d, b, t in zip(detector, baseline, truth, strict=True):
        found = []
        for (boxes, scores, labels), cut in ((d, t_det), (b, t_base)):
            keep = np.asarray(scores) >= cut
            found.append(match((boxes[keep], scores[keep], labels[keep]), t)[1])
        det, base = found
        counts["both"] += int((det & base).sum())
        counts["detector_only"] += int((det & ~base).sum())
        counts["baseline_only"] += int((~det & base).sum())
        counts["neither"] += int((~det & ~base).sum())
    n = sum(counts.values())
    return {"at_fp_per_case": fps, "detector_threshold": t_det, "baseline_threshold": t_base, "n_true": n,
            **counts, "agree": (counts["both"] + counts["neither"]) / n if n else float("nan")}  # fmt: skip


def evaluate_baseline(run: TestRun, task: Any, path: str, detector: list[Found], truth: list[Truth]) -> dict[str, Any]:
    """The baseline's metrics (as the detector's, same bootstrap seed and cases), the detector's minus
    the baseline's with a paired bootstrap CI, and the agreement."""
    cfg = run.cfg
    found, about = baseline_detections(run, task, path)
    scored = scoring.evaluate_detections(found, truth, classes=task.classes, n_bootstrap=cfg.eval.bootstrap,
                                         ci=cfg.eval.ci, seed=cfg.train.seed)  # fmt: skip
    difference = scoring.paired_difference(detector, found, truth, n_bootstrap=cfg.eval.bootstrap, ci=cfg.eval.ci,
                                           seed=cfg.train.seed, classes=task.classes)  # fmt: skip
    return {**about, "n_found": scored["n_found"], "metrics": scored["metrics"], "difference": difference,
            "agreement": agreement(detector, found, truth)}  # fmt: skip
