"""From an experiment's `data:` section to image tensors, labels and ids.

Sources: a folder-per-class tree, a CSV manifest, an .npz file, or an embedded dataset.
Everything ends as one (N, C, H, W) tensor in [0, 1] with string labels, so the split,
the task and the trainer never see a file format.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from biomx.config import DataConfig
from biomx.datasets import get_dataset
from biomx.errors import DataError
from biomx.modalities.image import (
    decode_images,
    load_npz_splits,
    records_from_csv,
    records_from_folder,
)


@dataclass
class ImageData:
    """Decoded images with their labels, index-aligned."""

    images: torch.Tensor  # (N, C, H, W) uint8 or float16 in [0, 1]
    labels: list  # class name per image, or a list of names (multilabel)
    ids: list[str]  # file path, or "<npz split>:<row>"
    groups: np.ndarray | None = None  # patient ids (never written to the run)
    predefined: dict[str, np.ndarray] | None = None  # split name -> indices, from an npz
    default_classes: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    hashes: list[str] | None = None  # sha256 per file (file sources)
    source_sha256: str | None = None
    where: dict[int, str] = field(default_factory=dict)  # index -> "file row N" for messages


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _from_npz(path: Path, cfg: DataConfig, classes: list[str] | None) -> ImageData:
    splits = load_npz_splits(path)
    images, labels, ids, predefined, start = [], [], [], {}, 0
    for name, (x, y) in splits.items():
        images.append(torch.from_numpy(x))
        names = classes or [str(i) for i in range(int(y.max()) + 1)]
        if y.ndim == 2:  # multilabel
            labels += [[names[k] for k in np.flatnonzero(row)] for row in y]
        else:
            if int(y.max()) >= len(names):
                raise DataError(f"{path}: {name}_labels has class index {int(y.max())} but only "
                                f"{len(names)} classes are named in task.classes")
            labels += [names[int(k)] for k in y]
        ids += [f"{name}:{i}" for i in range(len(y))]
        predefined[name] = np.arange(start, start + len(y))
        start += len(y)
    tensor = _fit_size_and_channels(torch.cat(images), cfg.image_size, cfg.channels)
    return ImageData(tensor, labels, ids, predefined=predefined, source_sha256=sha256_file(path))


def _from_files(cfg: DataConfig) -> ImageData:
    path = Path(cfg.path)
    if cfg.source == "folder":
        records = records_from_folder(path)
        where = {i: str(p) for i, p in enumerate(records.paths)}
    else:
        records = records_from_csv(path, path_column=cfg.path_column, label_column=cfg.label_column,
                                   group_column=cfg.group_column)  # fmt: skip
        where = {i: f"{path}: row {i + 2}" for i in range(len(records))}
    images, kept, failures = decode_images(
        records.paths, size=tuple(cfg.image_size), channels=cfg.channels, window=cfg.window,
        dicom_frames=cfg.dicom_frames, on_error=cfg.on_error,
    )  # fmt: skip
    groups = [records.groups[i] for i in kept]
    kept_paths = [records.paths[i] for i in kept]
    return ImageData(
        images=images,
        labels=[records.labels[i] for i in kept],
        ids=[str(p) for p in kept_paths],
        groups=np.array(groups, dtype=object) if any(g for g in groups) else None,
        skipped=[(str(p), reason) for p, reason in failures],
        hashes=[sha256_file(p) for p in kept_paths],
        source_sha256=sha256_file(path) if path.is_file() else None,
        where={new: where[old] for new, old in enumerate(kept)},
    )


def load_image_data(cfg: DataConfig, classes: list[str] | None = None) -> ImageData:
    """Read every sample named by `cfg` into memory.

    Args:
        cfg: the experiment's `data:` section.
        classes: class names from `task.classes` (names npz integer labels).

    Returns:
        An `ImageData`.

    Raises:
        DataError: unreadable files (unless `on_error: skip`), bad manifests, empty sources.
    """
    if cfg.source == "dataset":
        dataset = get_dataset(cfg.path)
        data = _from_npz(dataset.path, cfg, classes or list(dataset.classes))
        data.default_classes = list(dataset.classes)
        return data
    if cfg.source == "npz":
        return _from_npz(Path(cfg.path), cfg, classes)
    return _from_files(cfg)


def encode_labels(data: ImageData, classes: list[str] | None, kind: str) -> tuple[torch.Tensor, list[str], str]:
    """Class names -> a target tensor, checking every label against the class list.

    Returns:
        (targets, classes, kind): binary float (N,), multiclass int64 (N,), multilabel float (N, K).

    Raises:
        DataError: a label that is not one of `classes`, naming the file or row.
    """
    multilabel = any(isinstance(label, list) for label in data.labels)
    if classes is None:
        names = {n for label in data.labels for n in (label if isinstance(label, list) else [label])}
        classes = data.default_classes or sorted(names)
    if kind == "auto":
        kind = "multilabel" if multilabel else "binary" if len(classes) == 2 else "multiclass"
    index = {name: k for k, name in enumerate(classes)}
    for i, label in enumerate(data.labels):
        for name in label if isinstance(label, list) else [label]:
            if name not in index:
                where = data.where.get(i, data.ids[i])
                raise DataError(f"{where}: label {name!r} is not one of the classes {classes}")
    if kind == "multilabel":
        targets = torch.zeros(len(data.labels), len(classes))
        for i, label in enumerate(data.labels):
            for name in label if isinstance(label, list) else [label]:
                targets[i, index[name]] = 1.0
    else:
        if multilabel:
            raise DataError(f"some labels list several classes ('a|b'), but task.type is {kind}; use multilabel")
        targets = torch.tensor([index[label] for label in data.labels])
        targets = targets.float() if kind == "binary" else targets.long()
    return targets, list(classes), kind
