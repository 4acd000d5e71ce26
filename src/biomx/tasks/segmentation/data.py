"""Segmentation data: the modality's image/mask pairs -> preprocessed cases in the cache ->
training patches (augmented), fixed validation patches, whole test cases."""

from __future__ import annotations

from typing import Any

import numpy as np

from biomx.config import ExperimentConfig
from biomx.data.cache import ArrayCache
from biomx.data.cases import (
    Case,
    CaseInputs,
    CaseList,
    PatchDataset,
    case_store,
    prepare_all,
    prepare_case,
    settings_from,
)
from biomx.data.samples import Samples
from biomx.data.spatial_augment import is_active
from biomx.errors import ConfigError, DataError
from biomx.modalities import MODALITIES, get_modality
from biomx.models.segmentation import required_divisor


def load(cfg: ExperimentConfig, modality: Any) -> Samples:
    """Preprocess every (image, mask) case of the modality's paired source into the case cache.

    Raises:
        DataError: a bad dataset.json or case (unless `on_error: skip`, which lists it and goes on).
        ConfigError: 2D data with `modality: volume` or 3D data with `modality: image`.
    """
    data, classes, dims = cfg.data, cfg.task.classes, modality.spatial_dims
    scan, scan_key = modality.scan_settings(cfg)
    dataset = modality.read_pairs(data.path)
    if dataset.spatial_dims != dims:
        fits = [n for n in MODALITIES.available() if getattr(get_modality(n), "spatial_dims", None) == dataset.spatial_dims]
        raise ConfigError(f"data.modality: {data.path} holds {dataset.spatial_dims}D images; use modality: "
                          f"{' or '.join(fits) or '(none registered)'}")  # fmt: skip
    settings = settings_from(scan, dims, len(dataset.channels) or None, cfg.task.patch_size, scan_key,
                             modality.read_limits(cfg))  # fmt: skip
    store = case_store(scan)
    names = classes or dataset.classes
    labelled = [c for c in dataset.cases if c.label is not None]
    if not labelled:
        raise DataError(f"{data.path}: no training cases with a label (mask) file")

    def one(case) -> Case | tuple[str, str]:
        try:
            return prepare_case(case.id, case.image, case.label, settings, store, scan.geometry_tolerance_mm,
                                modality.read_pair, modality.scan_reference)  # fmt: skip
        except DataError as err:
            if data.on_error == "skip":
                return (str(case.image), str(err))
            raise

    results = prepare_all(one, labelled, scan.cache)
    cases = [r for r in results if isinstance(r, Case)]
    skipped = [r for r in results if not isinstance(r, Case)]
    for case in cases:
        if case.classes_present and case.classes_present[-1] >= len(names):
            raise DataError(f"{case.label_path}: label value {case.classes_present[-1]} but only "
                            f"{len(names)} classes {names}")  # fmt: skip
    return Samples(
        labels=["|".join(names[k] for k in c.classes_present) or "none" for c in cases],
        ids=[c.id for c in cases],
        default_classes=list(dataset.classes),
        skipped=skipped,
        where={i: c.image_path for i, c in enumerate(cases)},
        inputs=CaseInputs(cases, store.root, settings),
    )


def _check_patch(cfg: ExperimentConfig, patch: list[int]) -> None:
    divisor = required_divisor(cfg.model.name, cfg.model.args)
    if any(p % divisor for p in patch):
        raise ConfigError(f"task.patch_size: {cfg.model.name} needs every size divisible by {divisor}, "
                          f"got {patch}")  # fmt: skip
    if np.prod([p // divisor for p in patch]) < 2:  # instance norm needs > 1 voxel at the bottleneck
        raise ConfigError(f"task.patch_size: {patch} is too small for {cfg.model.name}; make one size "
                          f"at least {2 * divisor}")  # fmt: skip


def build_datasets(samples: Samples, splits: dict[str, np.ndarray], cfg: ExperimentConfig, scan: Any
                   ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Training patches (augmented), fixed validation patches, whole test cases."""
    cases: list[Case] = samples.inputs.cases
    root, settings, task = samples.inputs.root, samples.inputs.settings, cfg.task
    patch = settings["patch_size"]
    _check_patch(cfg, patch)
    keys = {name: [cases[i].key for i in idx] for name, idx in splits.items()}
    augment = scan.augment if is_active(scan.augment) else None
    datasets = {
        "train": PatchDataset(root, keys["train"], patch, task.patches_per_case, task.pos_ratio, augment,
                              seed=cfg.train.seed),  # fmt: skip
        "val": PatchDataset(root, keys["val"], patch, task.val_patches_per_case, task.pos_ratio,
                            seed=cfg.train.seed + 1, fixed=True),  # fmt: skip
        "test": CaseList(root, [cases[i] for i in splits["test"]]),
    }
    channels = int(ArrayCache(root).get(cases[0].key)["image"].shape[0])
    preprocessing = {**settings, "modality": cfg.data.modality, "channels": channels, "overlap": task.overlap,
                     "sw_batch_size": task.sw_batch_size}  # fmt: skip
    return datasets, preprocessing, {"in_channels": channels, "spatial_dims": settings["spatial_dims"]}
