"""Volume classification in an experiment: an .npz of 3D volumes -> batched datasets, 3D Grad-CAM,
and predictions on NIfTI / DICOM series / NRRD / MetaImage files.

The source is a MedMNIST-3D-style .npz (`train_images` (N, D, H, W) or (N, C, D, H, W), uint8
or float, with `train_labels`, `val_*`, optional `test_*`). Volumes stay in memory in their
stored dtype (uint8 MedMNIST at 64^3 is 311 MB; float32 would be 1.2 GB) and each batch is
converted, augmented (`volume_augment.augment_batch`) and normalised as a whole. Segmentation
(source msd) has its own pipeline. The same five functions as every pipeline: `load`,
`build_datasets`, `inference_model`, `explain`, `read_inputs`.
"""

from __future__ import annotations

import zipfile
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biomx.config import DataConfig, ExperimentConfig
from biomx.data.row_store import StoredRows
from biomx.data.samples import Samples, sha256_file
from biomx.data.spatial_augment import augment_batch, is_active
from biomx.errors import ConfigError, DataError
from biomx.modalities.common.gradcam import cam_layer as _cam_layer  # noqa: F401  (tests import it from here)
from biomx.modalities.common.gradcam import gallery_maps, gallery_section, plan_gallery
from biomx.modalities.common.npz import load_npz_splits, npz_labels_and_ids
from biomx.modalities.common.tensor_dataset import ImageTensorDataset
from biomx.modalities.volume.config import DEFAULT_MAX_VOXELS
from biomx.modalities.volume.files import VOLUME_SUFFIXES, collect_volume_inputs, read_volume
from biomx.modalities.volume.streaming import AUTO_STREAM_BYTES, load_streamed, stream_bytes
from biomx.models.registry import get_entry
from biomx.protocols import Task, TestView

_SPLITS = ("train", "val", "test")

# ---------------------------------------------------------------------------------- loading


def _npz_volumes(images: np.ndarray, path: Path, name: str) -> np.ndarray:
    """(N, D, H, W) -> (N, 1, D, H, W); (N, C, D, H, W) kept; uint8 kept, floats as float32."""
    if images.ndim == 4:
        images = images[:, None]
    if images.ndim != 5:
        raise DataError(f"{path}: {name} has shape {images.shape}; expected volumes (N, D, H, W) or (N, C, D, H, W)")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating) and not np.issubdtype(images.dtype, np.integer):
        raise DataError(f"{path}: {name} must be uint8 or float, got {images.dtype}")
    images = images.astype(np.float32, copy=False)
    finite = np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if not finite.all():
        raise DataError(f"{path}: {name} row {int(np.flatnonzero(~finite)[0])} has NaN or infinite voxels")
    return images


def _read_npz(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (volumes (N, C, D, H, W) uint8 or float32, labels int64 (N,) or (N, K))."""
    splits = load_npz_splits(path, check_images=_npz_volumes)
    shapes = {split: volumes.shape[1:] for split, (volumes, _) in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{path}: the splits hold volumes of different shapes (C, D, H, W): {shapes}")
    return splits


def _storage(storage: str, path: Path) -> str:
    """`data.volume.storage` for this archive: auto streams volumes that would take over 2 GiB."""
    if storage != "auto":
        return storage
    try:
        return "stream" if stream_bytes(path) > AUTO_STREAM_BYTES else "memory"
    except DataError:
        return "memory"  # not a readable archive: the in-memory reader says why


def load(cfg: DataConfig, classes: list[str] | None = None) -> Samples:
    """Read every volume of an .npz into one tensor (N, C, D, H, W), in its stored dtype, or
    (`data.volume.storage: stream`) extract them once into the on-disk row store and read rows.

    Args:
        cfg: the experiment's `data:` section (source npz).
        classes: class names from `task.classes` (names the npz's integer labels).

    Raises:
        ConfigError: a source other than npz.
        DataError: unreadable archive, missing arrays, bad shapes, dtypes, labels or NaN voxels.
    """
    if cfg.source != "npz":
        raise ConfigError(f"data.source: {cfg.source!r} does not hold volumes to classify; use npz "
                          "(segmentation reads msd folders with task.kind: segmentation)")  # fmt: skip
    path = Path(cfg.path)
    if _storage(cfg.volume.storage, path) == "stream":
        return load_streamed(path, classes)  # rows read from disk by each batch (docs/large_data.md)
    splits = _read_npz(path)
    labels, ids, predefined = npz_labels_and_ids(splits, classes, path)
    volumes = torch.from_numpy(np.concatenate([v for v, _ in splits.values()]))
    del splits  # the per-split arrays: only the concatenated copy stays
    return Samples(volumes, labels, ids, predefined=predefined, source_sha256=sha256_file(path))


def _intensity_kind(volumes: torch.Tensor | StoredRows) -> str:
    """'uint8' (stored 0-255, used as /255), 'unit' (floats in [0, 1]) or 'float' (other floats)."""
    if volumes.dtype == torch.uint8:
        return "uint8"
    lo, hi = ((volumes.info["min"], volumes.info["max"]) if isinstance(volumes, StoredRows)
              else (float(volumes.min()), float(volumes.max())))  # fmt: skip
    return "unit" if lo >= 0 and hi <= 1 else "float"


# ---------------------------------------------------------------------------------- datasets


def _augment_volumes(x: torch.Tensor, g: torch.Generator, cfg: Any) -> torch.Tensor:
    """A batch of volumes, augmented by `volume_augment` (a module-level function: picklable)."""
    return augment_batch(x, None, cfg, g)[0]


def _as_float(volumes: torch.Tensor) -> torch.Tensor:
    """Stored volumes -> float32 (uint8 / 255); float32 input is returned as it is."""
    return volumes.float().div_(255) if volumes.dtype == torch.uint8 else volumes.float()


def _channel_stats(volumes: torch.Tensor, rows: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of up to 512 evenly spaced training volumes, in chunks."""
    rows = rows[np.linspace(0, len(rows) - 1, min(512, len(rows))).astype(int)] if len(rows) else rows
    total = torch.zeros(volumes.shape[1], dtype=torch.float64)
    squares, count = total.clone(), 0
    for chunk in np.array_split(rows, max(1, len(rows) // 32)):
        x = _as_float(volumes[torch.as_tensor(chunk, dtype=torch.long)]).double()
        total += x.sum(dim=(0, 2, 3, 4))
        squares += x.square().sum(dim=(0, 2, 3, 4))
        count += x[:, 0].numel()
    mean = total / max(count, 1)
    std = (squares / max(count, 1) - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.tolist(), std.tolist()


def build_datasets(
    samples: Samples, targets: torch.Tensor, splits: dict[str, np.ndarray], cfg: ExperimentConfig
) -> tuple[dict[str, ImageTensorDataset], dict[str, Any], dict[str, Any]]:
    """Per-split datasets (augmenting only train), the preprocessing record, model input args."""
    volumes = samples.inputs
    mean = std = None
    if cfg.data.volume.normalize:  # statistics of the training volumes only (no test leakage)
        mean, std = _channel_stats(volumes, splits["train"])
    augment = partial(_augment_volumes, cfg=cfg.data.volume.augment) if is_active(cfg.data.volume.augment) else None
    datasets = {  # the splits share the volumes tensor: each holds only its row numbers
        name: ImageTensorDataset(volumes, targets[torch.as_tensor(idx)], augment=augment if name == "train" else None,
                                 normalize=(mean, std) if mean is not None else None, seed=cfg.train.seed,
                                 index=torch.as_tensor(idx, dtype=torch.long))
        for name, idx in splits.items()
    }  # fmt: skip
    c, *shape = volumes.shape[1:]
    preprocessing = {"modality": "volume", "shape": list(shape), "channels": c, "mean": mean, "std": std,
                     "intensity": _intensity_kind(volumes), "max_voxels": cfg.data.volume.max_voxels}  # fmt: skip
    return datasets, preprocessing, {"in_channels": c, "spatial_dims": 3}


def inference_model(model: nn.Module, preprocessing: dict[str, Any]) -> nn.Module:
    return model


# ---------------------------------------------------------------------------------- explanations


def _display(volumes: torch.Tensor) -> torch.Tensor:
    """Volumes in [0, 1] for pictures: uint8 / 255, floats min-max per volume."""
    x = _as_float(volumes)
    if volumes.dtype == torch.uint8:
        return x
    lo = x.amin(dim=(1, 2, 3, 4), keepdim=True)
    hi = x.amax(dim=(1, 2, 3, 4), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def explain(model: nn.Module, task: Task, test: TestView, n: int, cfg: ExperimentConfig) -> list[dict]:
    """3D Grad-CAM of chosen test volumes, shown on the slice through each map's maximum.

    The slice is taken across the first spatial axis (D: the slice axis of a (D, H, W) CT or MR
    stack); the report shows that slice (C, H, W) with the heatmap's slice (H, W) over it. Each
    map explains the volume's predicted class (`plan_gallery`) at the model's declared CAM layer,
    or an earlier one where that has no spatial map left (`cam_layer`).
    """
    plan = plan_gallery(task, test.predictions, test.targets, n)
    if not plan.rows:
        return []
    declared = get_entry(cfg.model.name).cam_layers
    heatmaps, layer = gallery_maps(model, test.data, plan, declared, chunk=8)
    display = _display(test.samples.inputs[torch.as_tensor(test.index[plan.rows])])
    depth = heatmaps.shape[1]
    examples = []
    for row, i in enumerate(plan.rows):
        heat = heatmaps[row]
        d = int(heat.flatten().argmax()) // heat[0].numel() if heat.max() > 0 else depth // 2
        caption = task.caption(test.targets[i], test.predictions[i], plan.predicted[row])
        examples.append({"image": display[row][:, d].numpy(), "heatmap": heat[d].numpy(),
                         "caption": f"{caption} | slice {d + 1}/{depth}"})  # fmt: skip
    return gallery_section(examples, f"{plan.chosen} Grad-CAM of the output of {layer}.")


# ---------------------------------------------------------------------------------- prediction


def collect_inputs(inputs: list[str | Path]) -> list[Path]:
    """Volume and .npz files as given or found in folders; a folder of none: a DICOM series."""
    return collect_volume_inputs(inputs, VOLUME_SUFFIXES + (".npz",))


def _resize(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """(C, D, H, W) -> (C, *shape): area-averaging where an axis shrinks, trilinear where it grows."""
    x = x[None]
    smaller = [min(n, s) for n, s in zip(x.shape[2:], shape, strict=True)]
    if smaller != list(x.shape[2:]):
        x = F.interpolate(x, size=smaller, mode="area")  # averages, so no aliasing when shrinking
    if smaller != list(shape):
        x = F.interpolate(x, size=list(shape), mode="trilinear", align_corners=False)
    return x[0]


def _read_file(path: Path, preprocessing: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    """One input -> [(name, float32 (C, D, H, W) at the training size, in training intensities)]."""
    channels, shape = preprocessing["channels"], preprocessing["shape"]
    if path.is_file() and path.name.lower().endswith(".npz"):
        out = []
        for split, volumes in _npz_images(path).items():
            x = _as_float(torch.from_numpy(volumes))
            for row in range(len(x)):
                out.append((f"{path}:{split}:{row}", x[row]))
    else:
        if preprocessing["intensity"] == "float":
            raise DataError(f"{path}: this run was trained on raw float intensities from an npz; medical image "
                            "files are scaled to [0, 1], which would not match: pass .npz volumes instead")  # fmt: skip
        # Runs written before data.volume.max_voxels existed get its default.
        limit = preprocessing.get("max_voxels", DEFAULT_MAX_VOXELS)
        array = torch.from_numpy(read_volume(path, max_voxels=limit).array)
        x = array[None] if array.ndim == 3 else array
        lo, hi = x.min(), x.max()  # MedMNIST volumes are min-max scaled crops: do the same
        x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
        out = [(str(path), x)]
    for name, x in out:
        if x.shape[0] != channels:
            raise DataError(f"{name}: volume has {x.shape[0]} channels, the model takes {channels}")
    return [(name, _resize(x, shape)) for name, x in out]


def _npz_images(path: Path) -> dict[str, np.ndarray]:
    """The `<split>_images` arrays of an npz, as (N, C, D, H, W) (labels are not needed)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = [f"{s}_images" for s in _SPLITS if f"{s}_images" in archive.files]
            if not keys:
                raise DataError(f"{path}: no train_images, val_images or test_images array")
            return {key.removesuffix("_images"): _npz_volumes(archive[key], path, key) for key in keys}
    except (OSError, ValueError, EOFError, AttributeError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read npz: {' '.join(str(e).split())}") from e


def read_inputs(
    preprocessing: dict[str, Any], inputs: list[str | Path], skip_errors: bool = False
) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
    """Volume files/folders/npz -> a model-ready float batch (N, C, D, H, W), names, skipped inputs.

    NIfTI, DICOM series (a folder of single-frame slices), NRRD and MetaImage files are read
    in canonical RAS orientation (`volume_io.read_volume`), min-max scaled to [0, 1] (MedMNIST
    3D volumes were min-max scaled crops, stored as uint8) and resized to the training shape.
    The run's model sees them as it saw its training volumes only if they are cropped around the
    same structure with the same axis order. .npz inputs: every `<split>_images` array, used in
    the stored units like the training npz (uint8 / 255).
    """
    x, names, failures = read_volumes(preprocessing, inputs, skip_errors)
    if preprocessing["mean"] is not None:
        x = (x - torch.tensor(preprocessing["mean"]).view(1, -1, 1, 1, 1)) / torch.tensor(
            preprocessing["std"]).view(1, -1, 1, 1, 1)  # fmt: skip
    return x, names, failures


def read_volumes(
    preprocessing: dict[str, Any], inputs: list[str | Path], skip_errors: bool = False
) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
    """Volume files/folders/npz -> float32 (N, C, D, H, W) at the training shape in training
    intensities, before the normalisation (what an exported graph takes), names, skipped inputs."""
    volumes, names, failures = [], [], []
    for path in collect_inputs(inputs):
        try:
            for name, x in _read_file(path, preprocessing):
                names.append(name)
                volumes.append(x)
        except DataError as e:
            if not skip_errors:
                raise
            failures.append((str(path), str(e).removeprefix(f"{path}: ")))
    x = torch.stack(volumes) if volumes else torch.zeros(0, preprocessing["channels"], *preprocessing["shape"])
    return x, names, failures
