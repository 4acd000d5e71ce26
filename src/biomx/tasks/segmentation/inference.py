"""Segmentation at test and prediction time: whole scans by sliding-window inference (an ensemble's
members averaged), masks restored to each scan's own grid and written by the modality."""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biomx.batched import default_files_dir
from biomx.data.cases import preprocess, restore
from biomx.engine.runtime import select_device
from biomx.engine.sliding_window import sliding_window_predict
from biomx.errors import BiomxError, DataError
from biomx.protocols import PredictRequest, TestRun
from biomx.runs import write_csv, write_json
from biomx.tasks.segmentation.overlays import overlay_sections, overlay_slice
from biomx.tasks.segmentation.task import SegmentationTask, case_metrics


@torch.inference_mode()
def probabilities(models: list[nn.Module], image: np.ndarray, preprocessing: dict[str, Any], out_channels: int,
                  device: torch.device, autocast: Callable[[], AbstractContextManager] | None = None) -> np.ndarray:
    """Class probabilities (K, *S) of a preprocessed case, averaged over an ensemble's members.

    Every member slides over the whole case; the output is accumulated on the CPU (see
    `engine.sliding_window`), so the device only ever holds `sw_batch_size` windows.
    """
    total = None
    for model in models:
        model.eval()
        probs = sliding_window_predict(model, image, preprocessing["patch_size"], out_channels=out_channels,
                                       overlap=preprocessing["overlap"], batch_size=preprocessing["sw_batch_size"],
                                       device=device, autocast=autocast)  # fmt: skip
        if total is None:
            total = np.array(probs, dtype=np.float32)
        else:
            total += probs
    return total / len(models)


def evaluate_cases(task: SegmentationTask, run: TestRun) -> tuple[dict[str, Any], list[dict]]:
    """Segment every test case whole, score it on the scan's own grid, write the masks.

    Writes test_metrics.json, predictions_test.csv (one row per case: Dice, HD95, surface Dice
    per class, the mask file) and test_masks/. Metrics compare the restored mask with the mask
    file as read (original spacing), not with the resampled training copy.

    Returns:
        (evaluation, report sections: the overlays of the best, median and worst cases).
    """
    models = []
    for weights in run.member_weights:
        model = copy.deepcopy(run.trainer.model)
        if weights is not None:
            model.load_state_dict(weights)
        models.append(model)
    test_data, preprocessing, cfg, run_dir = run.datasets["test"], run.preprocessing, run.cfg, run.run_dir
    device, autocast = run.trainer.device, run.trainer._autocast
    modality = run.modality
    results, views, masks = [], [], []
    for case in test_data.cases:
        arrays = test_data.arrays(case)
        probs = probabilities(models, arrays["image"], preprocessing, task.out_dim, device, autocast)
        pred = probs.argmax(0).astype(np.uint8)
        del probs
        truth = modality.read_scan(case.label_path, mask=True, **preprocessing.get("limits", {}))
        restored = task.postprocess(restore(pred, case.geometry), truth.spacing)  # on the scan's grid
        results.append(case_metrics(restored, truth.array, truth.spacing, task.classes,
                                    cfg.task.surface_tolerance_mm, case.id))  # fmt: skip
        path = run_dir / "test_masks" / f"{case.id}{modality.mask_suffix}"
        masks.append(str(modality.write_mask(restored, case.reference, path, classes=task.classes,  # geometry: the cache entry
                                              model=cfg.model.name)))
        views.append(overlay_slice(arrays["image"], arrays["label"], pred))
    evaluation = task.evaluate(results, n_bootstrap=cfg.eval.bootstrap, ci=cfg.eval.ci, seed=cfg.train.seed)
    evaluation["min_component_size"] = task.min_component_size  # how the scored masks were cleaned
    write_json(run_dir / "test_metrics.json", evaluation)
    columns = task.case_table(results)
    columns["mask"] = masks
    write_csv(run_dir / "predictions_test.csv", columns)
    return evaluation, overlay_sections(results, views, cfg.eval.explain)


def predict_masks(task: SegmentationTask, request: PredictRequest) -> dict[str, list]:
    """Segment new scans with a run's model(s); write one mask per scan on the scan's own grid.

    Masks go to `request.files_dir` (default: `<output stem>_masks/` beside the output CSV,
    else `masks/`).

    Returns:
        Columns "path", "mask" (file written), "<class>_volume_ml" (3D) or "<class>_pixels" (2D)
        per foreground class; unreadable scans go to `request.failures` with --skip-errors.
    """
    info, inputs, skip_errors, modality = request.info, request.inputs, request.skip_errors, request.modality
    masks_dir = request.files_dir or default_files_dir(request.output, "masks")
    device = select_device("auto")
    pre, classes = info["preprocessing"], task.classes
    dims = pre["spatial_dims"]
    models = [m.to(device) for m in request.models]
    unit = "volume_ml" if dims == 3 else "pixels"
    columns: dict[str, list] = {"path": [], "mask": [], **{f"{c}_{unit}": [] for c in classes[1:]}}
    failures, used = [], set()
    for path in modality.collect_scans(inputs):
        try:
            scan = modality.read_scan(path, nan_policy=pre["nan_policy"], **pre.get("limits", {}))
            if len(scan.array) != pre["channels"]:
                raise DataError(f"{path}: {len(scan.array)} channel(s), the model takes {pre['channels']}")
        except DataError as err:
            if not skip_errors:
                raise
            failures.append((str(path), str(err)))
            continue
        image, _, geometry = preprocess(scan.array, scan.spacing, pre)
        probs = probabilities(models, image, pre, len(classes), device)
        if not np.isfinite(probs).all():
            raise BiomxError(f"{path}: the model's output is not finite (NaN/Inf); the model or this scan "
                             "is broken (a diverged run: lower train.optimizer.lr and train again)")  # fmt: skip
        mask = task.postprocess(restore(probs.argmax(0).astype(np.uint8), geometry), scan.spacing)
        name = modality.scan_stem(path, used)  # unique: two inputs with one name keep both masks
        written = modality.write_mask(mask, modality.scan_reference(scan), Path(masks_dir) / f"{name}{modality.mask_suffix}",
                                      classes=classes, model=info.get("model", {}).get("name", "unknown"))
        voxel = float(np.prod(scan.spacing)) / 1000.0 if dims == 3 else 1.0
        columns["path"].append(str(path))
        columns["mask"].append(str(written))
        for k, c in enumerate(classes[1:], start=1):
            value = float((mask == k).sum()) * voxel
            columns[f"{c}_{unit}"].append(f"{value:.6g}")
    request.failures.extend(failures)
    return columns
