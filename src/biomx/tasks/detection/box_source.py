"""Boxes from a box file (`task.boxes`: a CSV, or MONAI's detection JSON as LUNA16 is distributed)
for the images of a paired source, masks or not: images without a mask are preprocessed into the
case cache on their own; the file's boxes (read by `annotations`, in each scan's voxels) are moved
into the preprocessed grid for training and kept as they are for scoring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from biomx.data.cache import ArrayCache, cache_key, file_digest
from biomx.data.cases import Case, preprocess
from biomx.errors import ConfigError, DataError
from biomx.tasks.detection.annotations import read_box_csv, read_monai_json
from biomx.tasks.detection.boxes import as_boxes, clip_boxes

IMAGE_VERSION = "detection-image-v1"  # bump when image-only preprocessing changes


def prepare_image(case_id: str, image_path: Path, settings: dict[str, Any], store: ArrayCache, modality: Any) -> Case:
    """An image without a mask, preprocessed into `store` (or found there) as `prepare_case` does."""
    defining = {name: value for name, value in settings.items() if name not in ("limits", "classes")}
    key = cache_key(IMAGE_VERSION, file_digest(image_path), defining)
    meta = store.get_meta(key)
    if meta is None or store.get(key) is None:
        scan = modality.read_scan(image_path, nan_policy=settings["nan_policy"], **settings.get("limits", {}))
        if settings["channels"] is not None and len(scan.array) != settings["channels"]:
            raise DataError(f"{image_path}: {len(scan.array)} channel(s), expected {settings['channels']}")
        x, _, geometry = preprocess(scan.array, scan.spacing, settings)
        meta = {"id": case_id, "geometry": geometry, "present": [], "reference": modality.scan_reference(scan)}
        store.put(key, {"image": x}, meta)
    return Case(case_id, key, str(image_path), "", meta["geometry"], [], meta["reference"])


def scan_affine(case: Case) -> np.ndarray:
    """The voxel -> world affine the modality recorded for the scan; identity where it has none (2D)."""
    reference = case.reference
    if isinstance(reference, dict) and reference.get("affine") is not None:
        return np.asarray(reference["affine"], dtype=np.float64)
    return np.eye(len(case.geometry["shape"]) + 1)


def to_preprocessed(boxes: np.ndarray, geometry: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """Boxes on a scan's own grid -> its preprocessed case (resampled, cropped, padded): the inverse
    of `inference.to_scan_voxels`, clipped to the case."""
    d = len(geometry["shape"])
    scale = np.asarray(geometry["resampled"], dtype=np.float64) / np.asarray(geometry["shape"], dtype=np.float64)
    offset = np.asarray([pad[0] - box[0] for box, pad in zip(geometry["box"], geometry["pad"], strict=True)],
                        dtype=np.float64)  # fmt: skip
    moved = as_boxes(boxes, d) * np.concatenate([scale, scale]) + np.concatenate([offset, offset])
    return clip_boxes(moved, shape)


def box_file(task: Any, data_path: str | Path) -> Path:
    """`task.boxes`; a relative path is relative to the dataset folder (`data.path`)."""
    path = Path(task.boxes).expanduser()
    if path.is_absolute():
        return path
    root = Path(data_path)
    return (root.parent if root.is_file() else root) / path


def read_file_boxes(task: Any, cases: list[Case], spatial_dims: int, on_error: str, data_path: str | Path
                    ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], list[tuple[str, str]]]:  # fmt: skip
    """{case number: (boxes in the scan's voxels, class indices)} for the cases the box file names,
    and the skipped rows (file, reason) when `on_error: skip`.

    Raises:
        ConfigError: a box file that is neither .csv nor .json, or is missing.
        DataError: a bad row (named by file and row), an image the dataset does not hold.
    """
    path = box_file(task, data_path)
    if not path.is_file():
        raise ConfigError(f"task.boxes: {path}: no such file")
    names: dict[str, int] = {}
    for i, case in enumerate(cases):
        for alias in (case.image_path, Path(case.image_path).name, case.id):
            names.setdefault(alias, i)
    images = {case.image_path: (tuple(case.geometry["shape"]), scan_affine(case)) for case in cases}
    frame = {} if task.world_frame is None else {"world_frame": task.world_frame}
    if path.suffix.lower() == ".json":
        found, skips = read_monai_json(path, task.boxes_key, images=images, on_error=on_error, **frame)
    elif path.suffix.lower() == ".csv":
        found, skips = read_box_csv(path, images=images, dims=spatial_dims, space=task.boxes_space,
                                    on_error=on_error, **frame)  # fmt: skip
    else:
        raise ConfigError(f"task.boxes: {path}: expected a .csv or a MONAI-style .json box file")
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for name, (boxes, labels) in found.items():
        i = names.get(name, names.get(Path(name).name, names.get(_stem(name))))
        if i is None:
            raise DataError(f"{path}: image {name!r} is not in the dataset")
        out[i] = (as_boxes(boxes, spatial_dims), np.asarray(labels, dtype=np.int64))
    return out, [(str(path), line) for line in skips]


def _stem(name: str) -> str:
    base = Path(name).name
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".tiff", ".tif", ".png"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base
