"""The test split of a detection run: every test case detected whole (sliding windows), its boxes
put on the scan's own voxel grid and compared with the true boxes of the mask as read from the
file; metrics with bootstrap CIs over cases; test_metrics.json, predictions_test.csv (one row
per box found), cases_test.csv (one row per case) and the report's sections."""

from __future__ import annotations

from typing import Any

import numpy as np

from biomx.protocols import TestRun
from biomx.runs import write_csv, write_json
from biomx.tasks.detection import scoring
from biomx.tasks.detection.data import mask_boxes
from biomx.tasks.detection.inference import (
    box_rows,
    detect_image,
    members,
    to_scan_voxels,
    to_world,
)
from biomx.tasks.detection.report import case_views, result_sections
from biomx.tasks.detection.task import DetectionTask


def detect_test_cases(task: DetectionTask, run: TestRun) -> tuple[list[dict[str, Any]], list[dict]]:
    """Per test case: id, true and found boxes (scan voxels), scores, class indices, the world
    boxes, and a view for the report (a slice with the boxes in the preprocessed grid)."""
    models = members(run)
    test, pre, modality = run.datasets["test"], run.preprocessing, run.modality
    device, autocast = run.trainer.device, run.trainer._autocast
    inputs = run.samples.inputs
    cases, views = [], []
    for i, case in zip(run.splits["test"], test.cases, strict=True):
        image = np.asarray(test.arrays(case)["image"])
        boxes, scores, labels = detect_image(models, task, image, pre, device, autocast)
        if inputs.truth is not None:  # a box file's boxes, on the scan's grid
            (true_boxes, true_labels), reference_spacing = inputs.truth[i], None
        else:  # the mask as read from its file, not the resampled cached copy
            truth = modality.read_scan(case.label_path, mask=True, **pre.get("limits", {}))
            true_boxes, true_labels = mask_boxes(truth.array, task.boxes_from, len(task.classes),
                                                 case.label_path)  # classes from its JSON, read afresh
            reference_spacing = truth.spacing
        voxels = to_scan_voxels(boxes, case.geometry)
        spacing = reference_spacing or tuple(case.geometry["spacing"])
        cases.append({"id": case.id, "image": case.image_path, "truth": true_boxes, "truth_labels": true_labels,
                      "boxes": voxels, "scores": scores, "labels": labels,
                      "world": to_world(voxels, case.reference, spacing)})  # fmt: skip
        views.append(case_views(image, inputs.boxes[i], boxes, scores, task.score_threshold))
    return cases, views


def evaluate_cases(task: DetectionTask, run: TestRun) -> tuple[dict[str, Any], list[dict]]:
    """Detect and score every test case; write the files; return (evaluation, report sections)."""
    cfg, run_dir, dims = run.cfg, run.run_dir, task.spatial_dims
    cases, views = detect_test_cases(task, run)
    evaluation = scoring.evaluate_detections(
        [(c["boxes"], c["scores"], c["labels"]) for c in cases], [(c["truth"], c["truth_labels"]) for c in cases],
        classes=task.classes, n_bootstrap=cfg.eval.bootstrap, ci=cfg.eval.ci, seed=cfg.train.seed)  # fmt: skip
    evaluation.update({"kind": task.kind, "headline": list(task.headline), "n": len(cases),
                       "score_threshold": task.score_threshold, "fusion": task.fusion})  # fmt: skip
    baseline = getattr(cfg.task, "baseline", None)
    if baseline:
        from biomx.tasks.detection.baseline import evaluate_baseline

        evaluation["baseline"] = evaluate_baseline(run, task, baseline,
                                                   [(c["boxes"], c["scores"], c["labels"]) for c in cases],
                                                   [(c["truth"], c["truth_labels"]) for c in cases])  # fmt: skip
    write_json(run_dir / "test_metrics.json", evaluation)
    rows = box_rows("", (np.zeros((0, 2 * dims)), np.zeros(0), np.zeros(0, dtype=int)), np.zeros((0, 2 * dims)),
                    task.classes, dims)  # fmt: skip
    for c in cases:
        for key, values in box_rows(c["id"], (c["boxes"], c["scores"], c["labels"]), c["world"], task.classes,
                                    dims).items():  # fmt: skip
            rows[key].extend(values)
    write_csv(run_dir / "predictions_test.csv", rows)
    table = scoring.case_table(cases, task.score_threshold)
    write_csv(run_dir / "cases_test.csv", table)
    return evaluation, result_sections(evaluation, cases, views, table, cfg.eval.explain)
