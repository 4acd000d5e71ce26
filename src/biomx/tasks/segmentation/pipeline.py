"""Segmentation in an experiment (2D images or 3D volumes): MSD folder -> cached cases -> patches;
whole cases at test and prediction time by sliding-window inference, masks written back on the
scan's own grid (NIfTI for volumes, TIFF for 2D images).

The same five functions as every pipeline (`load`, `build_datasets`, `inference_model`,
`explain`, `read_inputs`), plus `evaluate_test` (whole-case test evaluation, which replaces the
batched test predictions of classification) and `predict_masks` (for `biomx predict`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from biomx.batched import default_files_dir
from biomx.config import ExperimentConfig
from biomx.data.cache import ArrayCache
from biomx.data.samples import Samples
from biomx.data.spatial_augment import is_active
from biomx.engine import distributed as dist
from biomx.engine.checkpoint import atomic_write_bytes
from biomx.engine.runtime import select_device
from biomx.engine.sliding_window import sliding_window_predict
from biomx.errors import ConfigError, DataError
from biomx.modalities import get_modality, modality_names
from biomx.modalities.common.cases import (
    Case,
    CaseList,
    PatchDataset,
    case_store,
    prepare_case,
    preprocess,
    read_scan,
    reference_volume,
    restore,
    settings_from,
)
from biomx.modalities.common.msd import is_2d_file, read_msd
from biomx.modalities.common.scan_config import ScanConfig
from biomx.modalities.volume.files import (
    VOLUME_SUFFIXES,
    Volume,
    collect_volume_inputs,
    write_nifti,
)
from biomx.models.segmentation import required_divisor
from biomx.protocols import PredictRequest, TestRun
from biomx.runs import write_csv, write_json
from biomx.tasks.segmentation.task import SegmentationTask, case_metrics

# ---------------------------------------------------------------------------------- loading


def load(cfg: ExperimentConfig, scan: ScanConfig, scan_key: str, dims: int) -> Samples:
    """Preprocess every (image, mask) case of an MSD-style folder into the case cache.

    Raises:
        DataError: a bad dataset.json or case (unless `on_error: skip`, which lists it and goes on).
        ConfigError: 2D data with `modality: volume` or 3D data with `modality: image`.
    """
    data, classes = cfg.data, cfg.task.classes
    dataset = read_msd(data.path)
    if dataset.spatial_dims != dims:
        fits = [n for n in modality_names() if getattr(get_modality(n), "spatial_dims", None) == dataset.spatial_dims]
        raise ConfigError(f"data.modality: {data.path} holds {dataset.spatial_dims}D images; use modality: "
                          f"{' or '.join(fits) or '(none registered)'}")  # fmt: skip
    settings = settings_from(scan, dims, len(dataset.channels) or None, cfg.task.patch_size, scan_key)
    store = case_store(scan)
    names = classes or dataset.classes
    labelled = [c for c in dataset.cases if c.label is not None]
    if not labelled:
        raise DataError(f"{data.path}: no training cases with a label (mask) file")

    def one(case) -> Case | tuple[str, str]:
        try:
            return prepare_case(case.id, case.image, case.label, settings, store, scan.geometry_tolerance_mm)
        except DataError as err:
            if data.on_error == "skip":
                return (str(case.image), str(err))
            raise

    # Under torchrun, rank 0 fills the shared cache while the other ranks wait, then they read it.
    if scan.cache and not dist.is_main():
        dist.barrier()
    # Decompression and resampling release the GIL: threads overlap them on a cold cache.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        results = list(pool.map(one, labelled))
    if scan.cache and dist.is_main():
        dist.barrier()
    cases = [r for r in results if isinstance(r, Case)]
    skipped = [r for r in results if not isinstance(r, Case)]
    for case in cases:
        if case.classes_present and case.classes_present[-1] >= len(names):
            raise DataError(f"{case.label_path}: label value {case.classes_present[-1]} but only "
                            f"{len(names)} classes {names}")  # fmt: skip
    return Samples(
        inputs=torch.arange(len(cases)),  # the masks and images stay in the cache
        labels=["|".join(names[k] for k in c.classes_present) or "none" for c in cases],
        ids=[c.id for c in cases],
        default_classes=list(dataset.classes),
        skipped=skipped,
        where={i: c.image_path for i, c in enumerate(cases)},
        extra={"cases": cases, "cache_root": str(store.root), "settings": settings},
    )


# ---------------------------------------------------------------------------------- datasets


def _check_patch(cfg: ExperimentConfig, patch: list[int]) -> None:
    divisor = required_divisor(cfg.model.name, cfg.model.args)
    if any(p % divisor for p in patch):
        raise ConfigError(f"task.patch_size: {cfg.model.name} needs every size divisible by {divisor}, "
                          f"got {patch}")  # fmt: skip
    if np.prod([p // divisor for p in patch]) < 2:  # instance norm needs > 1 voxel at the bottleneck
        raise ConfigError(f"task.patch_size: {patch} is too small for {cfg.model.name}; make one size "
                          f"at least {2 * divisor}")  # fmt: skip


def build_datasets(samples: Samples, splits: dict[str, np.ndarray], cfg: ExperimentConfig, scan: ScanConfig
                   ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Training patches (augmented), fixed validation patches, whole test cases."""
    cases: list[Case] = samples.extra["cases"]
    root, settings, task = Path(samples.extra["cache_root"]), samples.extra["settings"], cfg.task
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




# ---------------------------------------------------------------------------------- inference


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


def write_mask(mask: np.ndarray, reference: Volume | None, path: Path) -> Path:
    """A mask on the scan's own grid: NIfTI in the source volume's orientation, or a 2D TIFF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if reference is not None:
        return write_nifti(mask, reference, path)
    import io

    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, mask.astype(np.uint8), compression="zlib")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _mask_name(case_id: str, spatial_dims: int) -> str:
    return f"{case_id}.nii.gz" if spatial_dims == 3 else f"{case_id}.tif"


def _overlay_slice(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """The axial slice (last axis) with the most true foreground (else predicted), as 2D arrays."""
    if truth.ndim == 2:
        index = None
    else:
        area = (truth > 0).sum(axis=(0, 1)) if truth.any() else (pred > 0).sum(axis=(0, 1))
        index = int(np.argmax(area)) if area.any() else truth.shape[-1] // 2
    pick = (lambda a: a) if index is None else (lambda a: a[..., index])
    grey = np.asarray(pick(image[0]), dtype=np.float32)
    low, high = np.percentile(grey, [0.5, 99.5])
    grey = np.clip((grey - low) / max(high - low, 1e-6), 0, 1)
    return {"image": grey, "truth": np.asarray(pick(truth)), "pred": np.asarray(pick(pred)), "slice": index}


def overlay_figure(chosen: list[tuple[str, float, dict[str, np.ndarray]]]) -> Figure:
    """Grey image, true contour (green) and predicted contour (red) per chosen case."""
    fig = Figure(figsize=(3.2 * len(chosen), 3.6))
    for k, (case_id, dice, view) in enumerate(chosen):
        ax = fig.add_subplot(1, len(chosen), k + 1)
        # 2D images: rows down, as stored. Volume slices: axis 0 runs to the right and axis 1 to the
        # front (RAS), shown with anterior up.
        flat = view["slice"] is None
        show = (lambda a: a) if flat else (lambda a: a.T)
        ax.imshow(show(view["image"]), cmap="gray", origin="upper" if flat else "lower")
        for mask, colour in ((view["truth"], "#2ca02c"), (view["pred"], "#d62728")):
            if (mask > 0).any() and (mask == 0).any():
                ax.contour(show((mask > 0).astype(float)), levels=[0.5], colors=colour, linewidths=1.2)
        where = "" if view["slice"] is None else f", slice {view['slice']}"
        ax.set_title(f"{case_id}{where}\nDice {dice:.3f}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


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
    dims = preprocessing["spatial_dims"]
    results, views, masks = [], [], []
    for case in test_data.cases:
        arrays = test_data.arrays(case)
        probs = probabilities(models, arrays["image"], preprocessing, task.out_dim, device, autocast)
        pred = probs.argmax(0).astype(np.uint8)
        del probs
        truth = read_scan(case.label_path, spatial_dims=dims, mask=True)
        restored = task.postprocess(restore(pred, case.geometry), truth.spacing)  # on the scan's grid
        results.append(case_metrics(restored, truth.array, truth.spacing, task.classes,
                                    cfg.task.surface_tolerance_mm, case.id))  # fmt: skip
        reference = reference_volume(case.reference) if case.reference else None  # 3D: from the cache entry
        masks.append(str(write_mask(restored, reference, run_dir / "test_masks" / _mask_name(case.id, dims))))
        views.append(_overlay_slice(arrays["image"], arrays["label"], pred))
    evaluation = task.evaluate(results, n_bootstrap=cfg.eval.bootstrap, ci=cfg.eval.ci, seed=cfg.train.seed)
    evaluation["min_component_size"] = task.min_component_size  # how the scored masks were cleaned
    write_json(run_dir / "test_metrics.json", evaluation)
    columns = task.case_table(results)
    columns["mask"] = masks
    write_csv(run_dir / "predictions_test.csv", columns)
    return evaluation, _overlay_sections(results, views, cfg.eval.explain)


def _mean_dice(result: dict[str, Any]) -> float:
    values = [v for v in result["dice"].values() if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _overlay_sections(results: list[dict], views: list[dict], n: int) -> list[dict]:
    if n <= 0 or not results:
        return []
    scores = np.array([_mean_dice(r) for r in results])
    order = np.argsort(-np.nan_to_num(scores, nan=-1.0))  # best first
    picks = order[np.unique(np.linspace(0, len(order) - 1, min(n, len(order), 6)).round().astype(int))]
    chosen = [(results[i]["id"], float(scores[i]), views[i]) for i in picks]
    text = ("Test cases from best to worst mean Dice: the preprocessed image (grey), the true mask (green) and "
            "the predicted mask (red) on the slice with the largest true foreground. Masks for every test case "
            "are in test_masks/, on the scans' own grids.")  # fmt: skip
    return [{"title": "Segmentation overlays", "text": text, "figures": [overlay_figure(chosen)]}]


# ---------------------------------------------------------------------------------- prediction


def collect_scans(inputs: list[str | Path], spatial_dims: int) -> list[Path]:
    """Files as given; a folder: its image files, or (3D), holding none, one DICOM series."""
    if spatial_dims == 3:
        return collect_volume_inputs(inputs)
    found: list[Path] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise DataError(f"{item}: no such file or folder")
        if not item.is_dir():
            found.append(item)
            continue
        files = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".") and is_2d_file(p))
        if not files:
            raise DataError(f"{item}: folder holds no image files")
        found += files
    return found



def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", *VOLUME_SUFFIXES, ".dcm", ".tiff", ".tif", ".png", ".jpg", ".jpeg", ".bmp"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def predict_masks(task: SegmentationTask, request: PredictRequest) -> dict[str, list]:
    """Segment new scans with a run's model(s); write one mask per scan on the scan's own grid.

    Masks go to `request.files_dir` (default: `<output stem>_masks/` beside the output CSV,
    else `masks/`).

    Returns:
        Columns "path", "mask" (file written), "<class>_volume_ml" (3D) or "<class>_pixels" (2D)
        per foreground class; unreadable scans go to `request.failures` with --skip-errors.
    """
    info, inputs, skip_errors = request.info, request.inputs, request.skip_errors
    masks_dir = request.files_dir or default_files_dir(request.output, "masks")
    device = select_device("auto")
    pre, classes = info["preprocessing"], task.classes
    dims = pre["spatial_dims"]
    models = [m.to(device) for m in request.models]
    unit = "volume_ml" if dims == 3 else "pixels"
    columns: dict[str, list] = {"path": [], "mask": [], **{f"{c}_{unit}": [] for c in classes[1:]}}
    failures, used = [], set()
    for path in collect_scans(inputs, dims):
        try:
            scan = read_scan(path, spatial_dims=dims, nan_policy=pre["nan_policy"])
            if len(scan.array) != pre["channels"]:
                raise DataError(f"{path}: {len(scan.array)} channel(s), the model takes {pre['channels']}")
        except DataError as err:
            if not skip_errors:
                raise
            failures.append((str(path), str(err)))
            continue
        image, _, geometry = preprocess(scan.array, scan.spacing, pre)
        probs = probabilities(models, image, pre, len(classes), device)
        mask = task.postprocess(restore(probs.argmax(0).astype(np.uint8), geometry), scan.spacing)
        name = _stem(path)
        while name in used:  # two inputs with one name: keep both masks
            name += "_"
        used.add(name)
        written = write_mask(mask, scan.volume, Path(masks_dir) / _mask_name(name, dims))
        voxel = float(np.prod(scan.spacing)) / 1000.0 if dims == 3 else 1.0
        columns["path"].append(str(path))
        columns["mask"].append(str(written))
        for k, c in enumerate(classes[1:], start=1):
            value = float((mask == k).sum()) * voxel
            columns[f"{c}_{unit}"].append(f"{value:.6g}")
    request.failures.extend(failures)
    return columns
