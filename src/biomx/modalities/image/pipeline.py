"""The image modality in an experiment: config -> samples -> datasets, explanations, predictions.

Sources: a folder-per-class tree, a CSV manifest, an .npz file, or an embedded dataset.
Everything ends as one (N, C, H, W) tensor in [0, 1] with string labels, so the split,
the task and the trainer never see a file format. Every pipeline module offers the same
five functions: `load`, `build_datasets`, `inference_model`, `explain`, `read_inputs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biomx.config import DataConfig, ExperimentConfig
from biomx.data.cache import ArrayCache, cache_key, default_cache_dir
from biomx.data.samples import Samples, sha256_file
from biomx.datasets import get_dataset
from biomx.errors import ConfigError, DataError
from biomx.modalities.common.gradcam import gallery_maps, gallery_section, plan_gallery
from biomx.modalities.common.npz import load_npz_splits, npz_labels_and_ids
from biomx.modalities.common.planar import DEFAULT_MAX_PIXELS
from biomx.modalities.common.tensor_dataset import ImageTensorDataset
from biomx.modalities.image.augment import Augment
from biomx.modalities.image.decode import decode_images
from biomx.modalities.image.shard_source import load_shards
from biomx.modalities.image.sources import image_files_under, records_from_csv, records_from_folder
from biomx.modalities.image.streaming import (
    AUTO_STREAM_BYTES,
    Decoding,
    StreamedImages,
    decoded_bytes,
    file_hashes,
    streamed_images,
)
from biomx.models.image2d import FlipAveraged
from biomx.models.registry import get_entry
from biomx.protocols import Task, TestView

# ---------------------------------------------------------------------------------- loading


def _fit_size_and_channels(images: torch.Tensor, size: tuple[int, int] | None, channels: int) -> torch.Tensor:
    """Resize / convert an (N, C, H, W) uint8 array source once, up front."""
    if images.shape[1] == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    elif images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    if size is not None and tuple(images.shape[-2:]) != tuple(size):
        down = size[0] < images.shape[-2]
        chunks = [
            F.interpolate(chunk.float() / 255, size=size, mode="bilinear", align_corners=False, antialias=down)
            for chunk in images.split(1024)
        ]
        images = torch.cat(chunks).clamp(0, 1).to(torch.float16)
    return images


def _from_npz(path: Path, cfg: DataConfig, classes: list[str] | None) -> Samples:
    splits = load_npz_splits(path)
    labels, ids, predefined = npz_labels_and_ids(splits, classes, path)
    tensor = _fit_size_and_channels(torch.cat([torch.from_numpy(x) for x, _ in splits.values()]), cfg.image.size,
                                    cfg.image.channels)  # fmt: skip
    return Samples(tensor, labels, ids, predefined=predefined, source_sha256=sha256_file(path))


IMAGE_CACHE_VERSION = "images-v2"  # bump when decoding or resizing changes: old entries miss (v2: DICOM VOI by pydicom)


def _settings(cfg: DataConfig) -> dict[str, Any]:
    """Every setting a decoded row depends on (part of both cache keys)."""
    return {"image_size": list(cfg.image.size), "channels": cfg.image.channels,
            "window": list(cfg.image.window) if cfg.image.window else None, "dicom_frames": cfg.image.dicom_frames,
            "on_error": cfg.on_error, "nan_policy": cfg.image.nan_policy, "max_pixels": cfg.image.max_pixels}  # fmt: skip


def _decode_cached(paths: list[Path], hashes: list[str | None], cfg: DataConfig,
                   ) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """`decode_images`, kept on disk: decoding and resizing every file dominates repeated runs.

    The entry is keyed by the files' content (in source order: rows of the tensor are positional)
    and every decoding setting, so an edited file or a new image size is a new entry, and a
    renamed or moved folder of the same files is a hit.
    """
    settings = _settings(cfg)

    def decode() -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
        return decode_images(paths, size=tuple(cfg.image.size), channels=cfg.image.channels, window=cfg.image.window,
                             dicom_frames=cfg.image.dicom_frames, on_error=cfg.on_error,
                             nan_policy=cfg.image.nan_policy, max_pixels=cfg.image.max_pixels)  # fmt: skip

    if not cfg.image.cache or any(h is None for h in hashes):
        return decode()
    cache = ArrayCache(default_cache_dir())
    key = cache_key(IMAGE_CACHE_VERSION, hashes, settings)
    hit, meta = cache.get(key), cache.get_meta(key)
    if hit is not None and meta is not None and {"images", "kept"} <= hit.keys():
        kept = hit["kept"].tolist()
        failures = [(str(paths[i]), reason) for i, reason in meta["failures"]]
        return torch.from_numpy(np.array(hit["images"])), kept, failures  # a writable copy
    images, kept, failures = decode()
    kept_set = set(kept)
    failed = [i for i in range(len(paths)) if i not in kept_set]  # in the order of `failures`
    try:
        cache.put(key, {"images": images.numpy(), "kept": np.asarray(kept, dtype=np.int64)},
                  meta={"failures": [[i, reason] for i, (_, reason) in zip(failed, failures, strict=True)]})
    except OSError:
        pass  # an unwritable cache folder: the images are decoded all the same
    return images, kept, failures


def _storage(cfg: DataConfig, n: int) -> str:
    """"memory" or "stream" for `n` image files (`data.image.storage`; docs/large_data.md).

    Raises:
        ConfigError: stream with on_error skip (a file that fails is found only when a batch needs it,
            too late to leave it out of the split).
    """
    storage = cfg.image.storage
    if storage == "auto":
        big = decoded_bytes(n, tuple(cfg.image.size), cfg.image.channels) > AUTO_STREAM_BYTES
        return "stream" if big and cfg.on_error == "raise" else "memory"
    if storage == "stream" and cfg.on_error == "skip":
        raise ConfigError("data.on_error: skip needs every image decoded before the split, which data.image.storage: "
                          "stream does not do; use on_error: raise (a file that fails stops the run, named) or "
                          "storage: memory")  # fmt: skip
    return storage


def _decoding(cfg: DataConfig) -> Decoding:
    image = cfg.image
    return Decoding(tuple(image.size), image.channels, tuple(image.window) if image.window else None,
                    image.dicom_frames, image.nan_policy, image.max_pixels)  # fmt: skip


def _from_files(cfg: DataConfig) -> Samples:
    path = Path(cfg.path)
    if cfg.source == "folder":
        records = records_from_folder(path)
        where = {i: str(p) for i, p in enumerate(records.paths)}
    else:
        records = records_from_csv(path, path_column=cfg.image.path_column, label_column=cfg.label_column,
                                   group_column=cfg.group_column)  # fmt: skip
        where = {i: f"{path}: row {i + 2}" for i in range(len(records))}
    hashes = file_hashes(records.paths)
    if _storage(cfg, len(records.paths)) == "stream":
        images: Any = streamed_images(records.paths, hashes, _settings(cfg), _decoding(cfg), cfg.image.cache)
        kept, failures = list(range(len(records.paths))), []
    else:
        images, kept, failures = _decode_cached(records.paths, hashes, cfg)
    groups = [records.groups[i] for i in kept]
    kept_paths = [records.paths[i] for i in kept]
    return Samples(
        inputs=images,
        labels=[records.labels[i] for i in kept],
        ids=[str(p) for p in kept_paths],
        groups=np.array(groups, dtype=object) if any(g for g in groups) else None,
        skipped=[(str(p), reason) for p, reason in failures],
        hashes=[hashes[i] for i in kept],
        source_sha256=sha256_file(path) if path.is_file() else None,
        where={new: where[old] for new, old in enumerate(kept)},
    )


def load(cfg: DataConfig, classes: list[str] | None = None) -> Samples:
    """Read every image named by `cfg` into memory, or (`data.image.storage`) index files to stream.

    Args:
        cfg: the experiment's `data:` section.
        classes: class names from `task.classes` (names npz integer labels).

    Raises:
        DataError: unreadable files (unless `on_error: skip`), bad manifests, empty sources.
        ConfigError: storage stream with on_error skip or an array source.
    """
    if cfg.source in ("dataset", "npz") and cfg.image.storage == "stream":
        raise ConfigError(f"data.image.storage: stream reads image files (source folder, csv or shards); a source "
                          f"{cfg.source} is one array read into memory: use storage: auto or memory")  # fmt: skip
    if cfg.source == "dataset":
        dataset = get_dataset(cfg.path)
        samples = _from_npz(dataset.path, cfg, classes or list(dataset.classes))
        samples.default_classes = list(dataset.classes)
        return samples
    if cfg.source == "npz":
        return _from_npz(Path(cfg.path), cfg, classes)
    if cfg.source in ("folder", "csv"):
        return _from_files(cfg)
    if cfg.source == "shards":  # a set packed by `biomx shards write` (docs/shards.md)
        return load_shards(Path(cfg.path), _settings(cfg), _decoding(cfg), lambda n: _storage(cfg, n),
                           cfg.image.cache, cfg.on_error)  # fmt: skip
    if cfg.source == "msd":
        raise DataError("data.source: msd holds image/mask pairs, read by a task that labels pixels "
                        "(task.kind: segmentation); to classify images use folder, csv, npz or dataset")
    raise DataError(f"data.source: {cfg.source!r} is not an image source; use folder, csv, shards, npz or dataset")


# ---------------------------------------------------------------------------------- datasets


STATS_ROWS = 20_000  # training images the normalisation statistics are computed from (a seeded sample)


def channel_statistics(images: Any, train: np.ndarray, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images (all of them, or STATS_ROWS drawn with
    `seed`), summed in float64 a chunk at a time, so memory stays bounded and streamed and
    in-memory images give the same numbers. Streamed rows are decoded in a thread pool first."""
    rows = np.asarray(train, dtype=np.int64)
    if len(rows) > STATS_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, STATS_ROWS, replace=False))
    if isinstance(images, StreamedImages):
        images.fill(rows)
    total = squares = 0.0
    count = 0
    for chunk in np.array_split(rows, max(1, len(rows) // 1024)):
        x = images[torch.as_tensor(chunk)].double()
        if images.dtype == torch.uint8:
            x /= 255
        total = total + x.sum(dim=(0, 2, 3))
        squares = squares + x.square().sum(dim=(0, 2, 3))
        count += x[:, 0].numel()
    mean = total / max(count, 1)
    var = (squares - count * mean.square()) / max(count - 1, 1)  # unbiased, as Tensor.std
    return mean.float().tolist(), var.clamp_min(0).sqrt().float().clamp_min(1e-6).tolist()


def build_datasets(
    samples: Samples, targets: torch.Tensor, splits: dict[str, np.ndarray], cfg: ExperimentConfig
) -> tuple[dict[str, ImageTensorDataset], dict[str, Any], dict[str, Any]]:
    """Per-split datasets (augmenting only train), the preprocessing record, model input args."""
    images = samples.inputs
    mean = std = None
    if cfg.data.image.normalize:  # statistics of the training images only (no test leakage)
        mean, std = channel_statistics(images, splits["train"], cfg.train.seed)
    augment = Augment(**cfg.data.image.augment.model_dump())
    datasets = {  # the splits share the images (a tensor or the streamed files): each holds its row numbers
        name: ImageTensorDataset(images, targets[torch.as_tensor(idx, dtype=torch.long)],
                                 augment=augment if name == "train" else None,
                                 normalize=(mean, std) if mean is not None else None, seed=cfg.train.seed,
                                 index=torch.as_tensor(idx, dtype=torch.long))
        for name, idx in splits.items()
    }  # fmt: skip
    c, h, w = images.shape[1:]
    preprocessing = {
        "modality": "image", "image_size": [h, w], "channels": c, "window": cfg.data.image.window,
        "dicom_frames": cfg.data.image.dicom_frames, "nan_policy": cfg.data.image.nan_policy,
        "max_pixels": cfg.data.image.max_pixels, "mean": mean, "std": std,
        "tta": sorted(set(cfg.data.image.tta)),
    }  # fmt: skip
    return datasets, preprocessing, {"in_channels": c}


def inference_model(model: nn.Module, preprocessing: dict[str, Any]) -> nn.Module:
    """The model as evaluated and deployed: averaged over flipped views with `data.image.tta`."""
    flips = preprocessing.get("tta") or []  # runs from before tta existed have no key
    return FlipAveraged(model, flips) if flips else model


# ---------------------------------------------------------------------------------- explanations


def explain(model: nn.Module, task: Task, test: TestView, n: int, cfg: ExperimentConfig) -> list[dict]:
    """Grad-CAM maps of chosen test images, each explaining its predicted class (`plan_gallery`),
    at the model's declared CAM layer (its zoo entry's `cam_layers`)."""
    plan = plan_gallery(task, test.predictions, test.targets, n)
    if not plan.rows:
        return []
    declared = get_entry(cfg.model.name).cam_layers
    heatmaps, layer = gallery_maps(model, test.data, plan, declared, chunk=64)
    inputs = test.samples.inputs
    display = inputs[torch.as_tensor(test.index[plan.rows])].float()
    if inputs.dtype == torch.uint8:
        display /= 255
    examples = []
    for row, i in enumerate(plan.rows):
        caption = task.caption(test.targets[i], test.predictions[i], plan.predicted[row])
        examples.append({"image": display[row].numpy(), "heatmap": heatmaps[row].numpy(), "caption": caption})
    return gallery_section(examples, f"{plan.chosen} Grad-CAM of the output of {layer}.")


# ---------------------------------------------------------------------------------- prediction


def collect_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and the image files found under folders (sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = image_files_under(item)
            if not found:
                raise DataError(f"{item}: folder holds no image files")
            files += found
        elif item.exists():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return files


def read_raw(
    preprocessing: dict[str, Any], inputs: list[str | Path], skip_errors: bool = False
) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
    """Image files/folders -> float32 images in [0, 1] at the run's size (what an exported graph
    takes: not yet normalised), names, and skipped files."""
    files = collect_inputs(inputs)
    images, kept, failures = decode_images(
        files, size=tuple(preprocessing["image_size"]), channels=preprocessing["channels"],
        window=preprocessing["window"], dicom_frames=preprocessing["dicom_frames"],
        on_error="skip" if skip_errors else "raise",
        nan_policy=preprocessing.get("nan_policy", "raise"),  # runs made before the policy: raise
        max_pixels=preprocessing.get("max_pixels", DEFAULT_MAX_PIXELS),  # runs made before the limit: the default
    )  # fmt: skip
    return images.float(), [str(files[i]) for i in kept], failures


def normalise(preprocessing: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """The run's per-channel normalisation (training statistics), when it has one."""
    if preprocessing["mean"] is None:
        return x
    mean = torch.tensor(preprocessing["mean"]).view(1, -1, 1, 1)
    return (x - mean) / torch.tensor(preprocessing["std"]).view(1, -1, 1, 1)


def read_inputs(
    preprocessing: dict[str, Any], inputs: list[str | Path], skip_errors: bool = False
) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
    """Image files/folders -> a model-ready float batch, names, and skipped files."""
    x, names, failures = read_raw(preprocessing, inputs, skip_errors)
    return normalise(preprocessing, x), names, failures
