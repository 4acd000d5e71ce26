"""Detection at test and prediction time: whole scans by sliding windows with bounded memory, boxes
of overlapping windows (and of an ensemble's members) fused, then put back on each scan's own
voxel grid and into world coordinates.

Each window goes through the model and is decoded on its own (`DetectionTask.detect`: score
threshold, per-window NMS), so only boxes accumulate on the host, never a dense map: memory is one
batch of windows on the device whatever the scan's size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from biomx.data.cases import preprocess
from biomx.engine.runtime import select_device
from biomx.engine.sliding_window import window_starts
from biomx.errors import BiomxError, DataError
from biomx.protocols import PredictRequest
from biomx.tasks.detection.boxes import (
    as_boxes,
    boxes_to_world,
    clip_boxes,
    nms,
    weighted_box_fusion,
)
from biomx.tasks.detection.task import DetectionTask

Found = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (N, 2D), scores (N,), class indices (N,)


def members(run: Any) -> list[nn.Module]:
    """Every ensemble member's best weights on a copy of the trainer's model."""
    out = []
    for weights in run.member_weights:
        model = copy.deepcopy(run.trainer.model)
        if weights is not None:
            model.load_state_dict(weights)
        out.append(model.eval())
    return out


def _empty(dims: int) -> Found:
    return np.zeros((0, 2 * dims)), np.zeros(0), np.zeros(0, dtype=np.int64)


def _concat(parts: list[Found], dims: int) -> Found:
    if not parts:
        return _empty(dims)
    return (np.concatenate([as_boxes(p[0], dims) for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]).astype(np.int64))  # fmt: skip


def fuse(sources: list[Found], task: DetectionTask, dims: int) -> Found:
    """Boxes of several windows or members as one set: NMS per class over all of them, or weighted
    box fusion (`task.fusion`); the `detections_per_image` best kept."""
    boxes, scores, labels = _concat(sources, dims)
    if task.fusion == "wbf" and len(boxes):
        # one source: overlapping windows' weak duplicates must not drag a cluster's score down
        boxes, scores, labels = weighted_box_fusion([(boxes, scores, labels)], iou=task.nms_iou, conf="max")
    elif len(boxes):
        keep = nms(boxes, scores, task.nms_iou, labels, limit=task.detections_per_image)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    order = np.argsort(-scores, kind="stable")[: task.detections_per_image]
    return boxes[order], scores[order], labels[order]


@torch.inference_mode()
def detect_image(models: list[nn.Module], task: DetectionTask, image: np.ndarray, pre: dict[str, Any],
                 device: torch.device, autocast: Callable[[], AbstractContextManager] | None = None) -> Found:  # fmt: skip
    """Boxes in a preprocessed case (C, *S) (its voxels), every member over every window, fused."""
    patch, dims = list(pre["patch_size"]), len(pre["patch_size"])
    starts = window_starts(image.shape[1:], patch, float(pre["overlap"]))
    batch = max(int(pre["sw_batch_size"]), 1)
    found: list[Found] = []
    for model in models:
        model.eval()
        for first in range(0, len(starts), batch):
            chunk = starts[first:first + batch]
            windows = np.stack([image[(slice(None), *(slice(s, s + p) for s, p in zip(st, patch, strict=True)))]
                                for st in chunk])  # fmt: skip
            with (autocast or nullcontext)():
                outputs = model(torch.from_numpy(windows).to(device)).float().cpu()
            for st, (boxes, scores, labels) in zip(chunk, task.detect(outputs, patch), strict=True):
                found.append((boxes + np.asarray(list(st) * 2, dtype=np.float64), scores, labels))
    boxes, scores, labels = fuse(found, task, dims)
    return clip_boxes(boxes, image.shape[1:]), scores, labels


def to_scan_voxels(boxes: np.ndarray, geometry: dict[str, Any]) -> np.ndarray:
    """Boxes in a preprocessed case -> the scan's own (canonical) voxel grid: undo the padding and
    the crop, then the resampling (a scale per axis)."""
    d = len(geometry["shape"])
    b = as_boxes(boxes, d).copy()
    offset = np.asarray([box[0] - pad[0] for box, pad in zip(geometry["box"], geometry["pad"], strict=True)],
                        dtype=np.float64)  # fmt: skip
    scale = np.asarray(geometry["shape"], dtype=np.float64) / np.asarray(geometry["resampled"], dtype=np.float64)
    b = (b + np.concatenate([offset, offset])) * np.concatenate([scale, scale])
    return clip_boxes(b, geometry["shape"])


def to_world(boxes: np.ndarray, reference: Any, spacing: tuple[float, ...]) -> np.ndarray:
    """Voxel boxes -> world (mm) boxes: through the scan's voxel-to-world affine where its modality
    records one (`scan_reference`), else voxel index times spacing (a 2D image: pixels)."""
    affine = reference.get("affine") if isinstance(reference, dict) else None
    if affine is not None:
        return boxes_to_world(boxes, np.asarray(affine, dtype=np.float64))
    d = len(spacing)
    return as_boxes(boxes, d) * np.asarray(list(spacing) * 2, dtype=np.float64)


def box_rows(path: str, found: Found, world: np.ndarray, classes: list[str], dims: int) -> dict[str, list]:
    """CSV columns for one input's boxes: one row per box; an input without boxes gets one row
    with its path and empty fields (so every input is in the file); no path: no rows (a header)."""
    axes = "xyz"[:dims]
    boxes, scores, labels = found
    if path and not len(boxes):
        empty = box_rows("-", (np.zeros((1, 2 * dims)), np.zeros(1), np.zeros(1, dtype=int)), np.zeros((1, 2 * dims)),
                         classes, dims)  # fmt: skip
        return {key: [path if key == "path" else ""] for key in empty}
    rows: dict[str, list] = {"path": [path] * len(boxes), "class": [classes[int(k)] for k in labels],
                             "score": [f"{s:.6g}" for s in scores]}  # fmt: skip
    for space, values in (("voxel", boxes), ("world", world)):
        for j, a in enumerate(axes):
            rows[f"{space}_{a}_min"] = [f"{v:.6g}" for v in values[:, j]]
            rows[f"{space}_{a}_max"] = [f"{v:.6g}" for v in values[:, dims + j]]
    return rows


def predict_boxes(task: DetectionTask, request: PredictRequest) -> dict[str, list]:
    """Boxes in new scans with a run's model(s), one CSV row per box: path, class, score, and the
    box in the scan's voxel indices (canonical orientation) and in world coordinates (mm)."""
    pre, modality, dims = request.info["preprocessing"], request.modality, task.spatial_dims
    device = select_device("auto")
    models = [m.to(device) for m in request.models]
    columns: dict[str, list] = box_rows("", _empty(dims), np.zeros((0, 2 * dims)), task.classes, dims)
    for path in modality.collect_scans(request.inputs):
        try:
            scan = modality.read_scan(path, nan_policy=pre["nan_policy"], **pre.get("limits", {}))
            if len(scan.array) != pre["channels"]:
                raise DataError(f"{path}: {len(scan.array)} channel(s), the model takes {pre['channels']}")
        except DataError as err:
            if not request.skip_errors:
                raise
            request.failures.append((str(path), str(err)))
            continue
        image, _, geometry = preprocess(scan.array, scan.spacing, pre)
        boxes, scores, labels = detect_image(models, task, image, pre, device)
        if not np.isfinite(scores).all():
            raise BiomxError(f"{path}: the model's output is not finite (NaN/Inf); the run diverged")
        voxels = to_scan_voxels(boxes, geometry)
        world = to_world(voxels, modality.scan_reference(scan), scan.spacing)
        for key, values in box_rows(str(path), (voxels, scores, labels), world, task.classes, dims).items():
            columns[key].extend(values)
    return columns
