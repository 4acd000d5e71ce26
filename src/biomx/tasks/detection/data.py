"""Detection data: a modality's image/mask pairs -> preprocessed cases in the case cache, with the
boxes of each case's mask (in the preprocessed grid) -> training patches around boxes and at
random, with the boxes that fall in them; whole test cases for sliding-window inference.

Boxes come from the masks: one per instance id (a hand-drawn instance mask; its class from
nnDetection's JSON beside the mask, else class 0) or one per connected component of each class
(`task.boxes_from`). A case without boxes is a valid negative case.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from biomx.config import ExperimentConfig
from biomx.data.batching import batch_generator
from biomx.data.cache import ArrayCache
from biomx.data.cases import (
    CachedPatches,
    Case,
    CaseList,
    case_store,
    prepare_all,
    prepare_case,
    settings_from,
)
from biomx.data.samples import Samples
from biomx.data.spatial_augment import is_active
from biomx.errors import ConfigError, DataError
from biomx.models.detection import size_divisible
from biomx.tasks.detection.augment import augment_detection_batch
from biomx.tasks.detection.box_source import prepare_image, read_file_boxes, to_preprocessed
from biomx.tasks.detection.boxes import boxes_from_instance_mask, clip_boxes
from biomx.tasks.detection.instance_classes import (
    InstanceClassError,
    instance_labels,
    read_instance_classes,
)

DEFAULT_RETURNED_LAYERS = (1, 2)  # the model's default (model.args.returned_layers)


@dataclass
class DetectionInputs:
    """Loaded cases (a `Samples.inputs`): the arrays stay in the cache, boxes travel."""

    cases: list[Case]
    root: Path
    settings: dict[str, Any]
    boxes: list[np.ndarray]  # per case: (N, 2D) corners in the preprocessed grid's voxels
    labels: list[np.ndarray]  # per case: (N,) class indices
    truth: list[tuple[np.ndarray, np.ndarray]] | None = None  # a box file's boxes on each scan's grid


def mask_boxes(mask: np.ndarray, mode: str, n_classes: int, label_path: str | Path | None = None
               ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(boxes, class indices) of a label map: one box per instance id ("instances"), or per
    8/26-connected component of each class value k >= 1 (class k - 1); "auto" reads ids as
    instances when the mask holds more values than there are classes, or when the mask's file
    (`label_path`) has nnDetection's class JSON beside it. An instance takes its class from that
    JSON (`instance_classes`); without one every instance is class 0.

    Raises:
        InstanceClassError: a bad class JSON (one line naming it and the id).
        DataError: a mask value beyond the classes in "components" mode.
    """
    mask = np.asarray(mask)
    top = int(mask.max(initial=0))
    found = read_instance_classes(label_path, n_classes) if label_path and mode != "components" else None
    if mode == "instances" or (mode == "auto" and (top > n_classes or found is not None)):
        boxes, ids = boxes_from_instance_mask(mask)
        return boxes, instance_labels(ids, found)
    if top > n_classes:
        raise DataError(f"a mask holds value {top} but task.classes has {n_classes} class(es); "
                        "set task.boxes_from: instances for an instance mask")  # fmt: skip
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    all_boxes, all_labels = [np.zeros((0, 2 * mask.ndim))], [np.zeros(0, dtype=np.int64)]
    for k in range(1, top + 1):
        components, n = ndimage.label(mask == k, structure=structure)
        if n:
            boxes, _ = boxes_from_instance_mask(components)
            all_boxes.append(boxes)
            all_labels.append(np.full(len(boxes), k - 1, dtype=np.int64))
    return np.concatenate(all_boxes), np.concatenate(all_labels)


def load(cfg: ExperimentConfig, modality: Any) -> Samples:
    """Preprocess every case into the case cache and find its boxes: from its mask, or from the box
    file `task.boxes` (then images without a mask count too).

    Raises:
        DataError: a bad case (unless `on_error: skip`), no case with boxes to learn from, a mask
            or box file that does not fit.
        ConfigError: data of the wrong dimension for the modality.
    """
    data, dims = cfg.data, modality.spatial_dims
    scan, scan_key = modality.scan_settings(cfg)
    dataset = modality.read_pairs(data.path)
    if dataset.spatial_dims != dims:
        raise ConfigError(f"data.modality: {data.path} holds {dataset.spatial_dims}D images, not {dims}D")
    if cfg.task.patch_size is None:
        raise ConfigError(f"task.patch_size: required for detection, e.g. {[128] * dims}")
    settings = settings_from(scan, dims, len(dataset.channels) or None, cfg.task.patch_size, scan_key,
                             modality.read_limits(cfg))  # fmt: skip
    store = case_store(scan)
    names = cfg.task.classes or list(dataset.classes[1:]) or ["object"]
    from_file = cfg.task.boxes is not None
    chosen = list(dataset.cases) if from_file else [c for c in dataset.cases if c.label is not None]
    if not chosen:
        raise DataError(f"{data.path}: no cases with a mask to take boxes from (or set task.boxes: a box file)")

    def one(case) -> tuple[Case, Any] | tuple[str, str]:
        try:
            if case.label is None:
                return prepare_image(case.id, case.image, settings, store, modality), None
            prepared = prepare_case(case.id, case.image, case.label, settings, store, scan.geometry_tolerance_mm,
                                    modality.read_pair, modality.scan_reference)  # fmt: skip
            if from_file:
                return prepared, None
            try:
                return prepared, mask_boxes(ArrayCache(store.root).get(prepared.key)["label"], cfg.task.boxes_from,
                                            len(names), case.label)  # fmt: skip
            except InstanceClassError:  # names its JSON already
                raise
            except DataError as err:
                raise DataError(f"{case.label}: {err}") from None
        except DataError as err:
            if data.on_error == "skip":
                return (str(case.image), str(err))
            raise

    results = prepare_all(one, chosen, scan.cache)
    kept = [r for r in results if isinstance(r[0], Case)]
    skipped = [r for r in results if not isinstance(r[0], Case)]
    cases = [c for c, _ in kept]
    truth = None
    if from_file:
        cases, boxes, labels, truth, more = _file_cases(cfg, cases, names, store, dims)
        skipped += more
    else:
        boxes, labels = [found[0] for _, found in kept], [found[1] for _, found in kept]
    inputs = DetectionInputs(cases, store.root, {**settings, "classes": names}, boxes, labels, truth)
    return Samples(
        labels=[f"{len(b)} boxes" if len(b) else "none" for b in boxes],
        ids=[c.id for c in cases],
        default_classes=names,
        skipped=skipped,
        where={i: c.image_path for i, c in enumerate(cases)},
        inputs=inputs,
    )


def _file_cases(cfg: ExperimentConfig, cases: list[Case], names: list[str], store: Any, dims: int) -> tuple:
    """(cases the box file names, their boxes in the preprocessed grid, class indices, the file's
    boxes on each scan's grid with classes, skipped (file, reason)); cases it does not name go."""
    found, skipped = read_file_boxes(cfg.task, cases, dims, cfg.data.on_error, cfg.data.path)
    kept, boxes, labels, truth = [], [], [], []
    for i, case in enumerate(cases):
        if i not in found:
            skipped.append((case.image_path, f"not in the box file {cfg.task.boxes}"))
            continue
        scan_boxes, classes = found[i]
        if len(classes) and (classes.min() < 0 or classes.max() >= len(names)):
            raise DataError(f"{cfg.task.boxes}: {case.image_path} has box label {int(classes.max())} but "
                            f"task.classes has {len(names)} class(es) {names}")  # fmt: skip
        shape = ArrayCache(store.root).get(case.key)["image"].shape[1:]
        kept.append(case)
        boxes.append(to_preprocessed(scan_boxes, case.geometry, shape))
        labels.append(classes)
        truth.append((scan_boxes, classes))
    if not kept:
        raise DataError(f"{cfg.task.boxes}: names none of the dataset's images")
    return kept, boxes, labels, truth, skipped


def derive_anchor_shapes(boxes: list[np.ndarray], per_level: int, levels: int, patch: list[int]) -> list[list[float]]:
    """Base anchor shapes from the training boxes' sizes: k-means (k = `per_level`) on the log sizes
    of the middle 80% of boxes by volume (from 10 boxes), started at evenly spaced quantiles of the volume, then divided by 2^((levels - 1) / 2) so
    that the middle feature-map level's anchors (scaled by 2 per level) sit on the clusters and
    the finer and coarser levels cover the smaller and larger boxes. Shapes are capped at the patch.
    """
    dims = len(patch)
    sizes = np.concatenate([b[:, dims:] - b[:, :dims] for b in boxes if len(b)] or [np.zeros((0, dims))])
    sizes = sizes[(sizes > 0).all(axis=1)]
    if len(sizes) == 0:
        return [[p / 4.0 for p in patch]]
    logs = np.log(sizes)
    if len(logs) >= 10:  # the middle 80% by volume: slivers of objects cut by an edge are no typical shape
        low, high = np.quantile(logs.sum(axis=1), [0.1, 0.9])
        logs = logs[(logs.sum(axis=1) >= low) & (logs.sum(axis=1) <= high)]
    k = min(per_level, len(np.unique(logs, axis=0)))
    order = np.argsort(logs.sum(axis=1), kind="stable")
    centres = logs[order[np.linspace(0, len(order) - 1, k + 2)[1:-1].round().astype(int)]]
    for _ in range(50):
        nearest = ((logs[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        moved = np.stack([logs[nearest == j].mean(axis=0) if (nearest == j).any() else centres[j] for j in range(k)])
        if np.allclose(moved, centres):
            break
        centres = moved
    scale = 2.0 ** ((levels - 1) / 2)
    shapes = np.minimum(np.exp(centres) / scale, np.asarray(patch, dtype=np.float64))
    shapes = shapes[np.argsort(shapes.prod(axis=1), kind="stable")]
    return [[round(float(v), 2) for v in s] for s in shapes]


class BoxPatches(CachedPatches):
    """`per_case` patches per case per epoch (`CachedPatches`): a share `pos_ratio` centred inside a
    random box of the case, the rest anywhere. Targets: the boxes in the patch (clipped to it; a box
    that keeps less than half its size is dropped), padded to `max_boxes` rows of [corners..., class]
    (-1: none)."""

    def __init__(self, root: Path, keys: list[str], boxes: list[np.ndarray], labels: list[np.ndarray],
                 patch_size: list[int], per_case: int, pos_ratio: float, max_boxes: int, seed: int = 0,
                 fixed: bool = False, augment: Any = None):  # fmt: skip
        super().__init__(root, keys, patch_size, per_case, pos_ratio, augment, seed, fixed)
        self.boxes, self.labels, self.max_boxes = list(boxes), list(labels), max_boxes

    def image(self, key: str) -> np.ndarray:
        return self.arrays(key)["image"]

    def _start(self, shape: tuple[int, ...], boxes: np.ndarray, g: torch.Generator) -> list[int]:
        d = len(shape)
        if len(boxes) and float(torch.rand(1, generator=g)) < self.pos_ratio:
            box = boxes[int(torch.randint(len(boxes), (1,), generator=g))]
            u = torch.rand(d, generator=g).double().numpy()
            centre = box[:d] + u * (box[d:] - box[:d])
        else:
            centre = [float(torch.randint(n, (1,), generator=g)) for n in shape]
        return self.clamp_start(centre, shape)

    def in_patch(self, boxes: np.ndarray, labels: np.ndarray, start: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The boxes in the patch at `start`, clipped to it (a box keeping less than half its size goes)."""
        d = len(start)
        if not len(boxes):
            return np.zeros((0, 2 * d)), np.zeros(0, dtype=np.int64)
        shifted = boxes - np.asarray(start * 2, dtype=np.float64)
        clipped = clip_boxes(shifted, self.patch)
        size = lambda b: np.clip(b[:, d:] - b[:, :d], 0, None).prod(axis=1)  # noqa: E731
        keep = np.flatnonzero(size(clipped) >= 0.5 * np.maximum(size(shifted), 1e-9))
        return clipped[keep], np.asarray(labels)[keep]

    def padded(self, boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(max_boxes, 2D + 1) rows of [corners..., class], -1 past the boxes (the first max_boxes kept)."""
        d2 = 2 * len(self.patch)
        out = np.full((self.max_boxes, d2 + 1), -1.0, dtype=np.float32)
        n = min(len(boxes), self.max_boxes)
        out[:n, :d2], out[:n, d2] = boxes[:n], labels[:n]
        return out

    def target(self, boxes: np.ndarray, labels: np.ndarray, start: list[int]) -> np.ndarray:
        return self.padded(*self.in_patch(boxes, labels, start))

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        g = batch_generator(self.seed, 0 if self.fixed else self.epoch, indices)
        images, boxes, labels = [], [], []
        for index in indices:
            case = index // self.per_case
            image = self.image(self.keys[case])
            start = self._start(image.shape[1:], self.boxes[case], g)
            images.append(image[(slice(None), *self.window(start))])
            found = self.in_patch(self.boxes[case], self.labels[case], start)
            boxes.append(found[0])
            labels.append(found[1])
        x = torch.from_numpy(np.stack(images))
        if self.augment is not None:  # flips, turns, rotations, zooms move the boxes with the pixels
            x, boxes, kept = augment_detection_batch(x, boxes, self.augment, g)
            labels = [lab[k] for lab, k in zip(labels, kept, strict=True)]
        y = np.stack([self.padded(b, lab) for b, lab in zip(boxes, labels, strict=True)])
        return x, torch.from_numpy(y)


def returned_layers(cfg: ExperimentConfig) -> list[int]:
    return [int(k) for k in cfg.model.args.get("returned_layers", DEFAULT_RETURNED_LAYERS)]


def anchor_shapes(cfg: ExperimentConfig, inputs: DetectionInputs, train: np.ndarray) -> list[list[float]]:
    """The config's anchor shapes, or those derived from the training cases' boxes."""
    patch = inputs.settings["patch_size"]
    if cfg.task.anchor_shapes is not None:
        if any(len(s) != len(patch) for s in cfg.task.anchor_shapes):
            raise ConfigError(f"task.anchor_shapes: each shape needs {len(patch)} sizes, got {cfg.task.anchor_shapes}")
        return [[float(v) for v in s] for s in cfg.task.anchor_shapes]
    levels = len(set(returned_layers(cfg))) + 1
    return derive_anchor_shapes([inputs.boxes[i] for i in train], cfg.task.anchors_per_level, levels, patch)


def build_datasets(cfg: ExperimentConfig, samples: Samples, splits: dict[str, np.ndarray], scan: Any
                   ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Training patches (augmented as `scan.augment` says), fixed validation patches, whole test cases."""
    inputs: DetectionInputs = samples.inputs
    task, patch = cfg.task, inputs.settings["patch_size"]
    divisor = size_divisible(returned_layers(cfg))
    if any(p % divisor for p in patch):
        raise ConfigError(f"task.patch_size: every size must divide by {divisor} (the detector's coarsest "
                          f"feature map with model.args.returned_layers {returned_layers(cfg)}), got {patch}")
    shapes = anchor_shapes(cfg, inputs, splits["train"])
    if task.baseline:  # refused now rather than after the whole training
        from biomx.tasks.detection.baseline import preflight

        preflight(task.baseline, [inputs.cases[i].id for i in splits["test"]])

    augment = scan.augment if is_active(scan.augment) else None

    def patches(name: str, per_case: int, seed: int, fixed: bool, augment: Any = None) -> BoxPatches:
        idx = splits[name]
        return BoxPatches(inputs.root, [inputs.cases[i].key for i in idx], [inputs.boxes[i] for i in idx],
                          [inputs.labels[i] for i in idx], patch, per_case, task.pos_ratio,
                          task.max_boxes_per_patch, seed=seed, fixed=fixed, augment=augment)  # fmt: skip

    datasets = {
        "train": patches("train", task.patches_per_case, cfg.train.seed, False, augment),
        "val": patches("val", task.val_patches_per_case, cfg.train.seed + 1, True),
        "test": CaseList(inputs.root, [inputs.cases[i] for i in splits["test"]]),
    }
    channels = int(ArrayCache(inputs.root).get(inputs.cases[0].key)["image"].shape[0])
    settings = {k: v for k, v in inputs.settings.items() if k != "classes"}
    preprocessing = {**settings, "modality": cfg.data.modality, "channels": channels, "overlap": task.overlap,
                     "sw_batch_size": task.sw_batch_size, "anchor_shapes": shapes}  # fmt: skip
    return datasets, preprocessing, {"in_channels": channels, "spatial_dims": settings["spatial_dims"],
                                     "anchor_shapes": shapes}
