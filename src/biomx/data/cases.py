"""Dense-label data (images with label maps, 2D or 3D): scans -> preprocessed arrays in the shared
cache -> patches. Nothing here reads a file format: a modality reads each scan (`Scan`).

1. A modality's `read_pair` reads an image and its mask as `Scan`s on the same grid.
2. `preprocess` resamples to the target spacing, crops to the foreground, normalises
   intensities and pads up to the patch size; `geometry` records each step so that
   `restore` can put a predicted mask back on the scan's own voxel grid.
3. `prepare_case` does 1-2 once per (file content, settings) and stores the result in an
   `ArrayCache`: a preprocessed case is then a few read-only memory maps on disk, shared by every
   DataLoader worker, every distributed rank and every later run, and never half-written.
4. `PatchDataset` cuts training patches out of those memory maps, a whole batch at a time
   (a share `pos_ratio` centred on a foreground voxel), and augments the batch in one go.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from biomx.data.batching import batch_generator
from biomx.data.cache import ArrayCache, cache_key, default_cache_dir, file_digest
from biomx.data.spatial_augment import augment_batch
from biomx.engine import distributed as dist
from biomx.errors import ConfigError, DataError

PREPROCESS_VERSION = "segmentation-case-v1"  # bump when preprocessing changes: old entries miss
_MAX_FOREGROUND_INDICES = 50_000  # positive patch centres kept per case (a random subset)
T = TypeVar("T")


# ---- 1. Scans -------------------------------------------------------------------------------


@dataclass
class Scan:
    """One image or mask as a modality read it, in canonical orientation."""

    array: np.ndarray  # image: float32 (C, *S); mask: integer (*S)
    spacing: tuple[float, ...]  # mm per spatial axis (2D images: 1.0)
    source: str
    reference: Any = None  # the modality's record of the scan's geometry, for writing a mask back


ReadPair = Callable[..., tuple[Scan, Scan]]  # (image, mask, nan_policy, tolerance, **limits)


# ---- 2. Preprocessing and its inverse -------------------------------------------------------------


def settings_from(scan_cfg: Any, spatial_dims: int, channels: int | None = None,
                  patch_size: list[int] | None = None, key: str = "data",
                  limits: dict[str, int] | None = None) -> dict[str, Any]:
    """The preprocessing settings that define a cache entry and go into run.json.

    `key` is where `scan_cfg` sits in the config (e.g. data.volume), for messages; `limits` are
    the modality's reader size limits (`read_limits`), recorded so predict reads as training did."""
    patch = list(patch_size) if patch_size else None
    for name, value in (("task.patch_size", patch), (f"{key}.spacing", scan_cfg.spacing)):
        if value is not None and len(value) != spatial_dims:
            raise ConfigError(f"{name}: {len(value)} values for {spatial_dims}D data; give {spatial_dims}")
    if patch is None:
        raise ConfigError(f"task.patch_size: required for segmentation, e.g. {[96] * spatial_dims}")
    return {
        "spatial_dims": spatial_dims, "spacing": scan_cfg.spacing, "intensity": scan_cfg.intensity,
        "ct_window": list(scan_cfg.ct_window), "nonzero": scan_cfg.nonzero,
        "crop_foreground": scan_cfg.crop_foreground, "patch_size": patch, "nan_policy": scan_cfg.nan_policy,
        "channels": channels, "limits": dict(limits or {}),
    }  # fmt: skip


def _resize(array: np.ndarray, shape: tuple[int, ...], labels: bool) -> np.ndarray:
    """(C, *S) float or (*S) integer labels -> the same on `shape` (linear / nearest)."""
    if tuple(array.shape[-len(shape):]) == tuple(shape):
        return array
    x = torch.from_numpy(np.ascontiguousarray(array))
    if labels:
        out = F.interpolate(x[None, None].float(), size=shape, mode="nearest-exact")[0, 0]
        return out.to(torch.uint8 if array.max(initial=0) < 256 else torch.int32).numpy()
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(x[None].float(), size=shape, mode=mode, align_corners=False)[0].numpy()


def _foreground_box(image: np.ndarray, label: np.ndarray | None) -> list[list[int]]:
    """Bounding box of voxels above the image minimum (any channel), widened to hold every label."""
    flat = image.reshape(len(image), -1)
    inside = (image > flat.min(axis=1).reshape((-1,) + (1,) * (image.ndim - 1))).any(0)
    if label is not None:
        inside |= label > 0
    if not inside.any():
        return [[0, n] for n in inside.shape]
    box = []
    for axis in range(inside.ndim):
        hit = np.flatnonzero(inside.any(axis=tuple(a for a in range(inside.ndim) if a != axis)))
        box.append([int(hit[0]), int(hit[-1]) + 1])
    return box


def _normalise(image: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
    image = image.astype(np.float32, copy=True)
    kind = settings["intensity"]
    if kind == "ct":  # clip to the HU window, scale to [0, 1]
        low, high = settings["ct_window"]
        return (np.clip(image, low, high) - low) / max(high - low, 1e-6)
    for c in range(len(image)):
        channel = image[c]
        if kind == "zscore":
            inside = channel != 0 if settings["nonzero"] else np.ones(channel.shape, dtype=bool)
            values = channel[inside] if inside.any() else channel.ravel()
            channel[inside] = (channel[inside] - values.mean()) / max(float(values.std()), 1e-6)
        elif kind == "minmax":  # robust: 0.5 and 99.5 percentiles -> 0 and 1
            low, high = np.percentile(channel, [0.5, 99.5])
            image[c] = np.clip((channel - low) / max(high - low, 1e-6), 0.0, 1.0)
    return image


def preprocess(image: np.ndarray, spacing: tuple[float, ...], settings: dict[str, Any],
               label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Resample, crop to the foreground, normalise and pad one case.

    Returns:
        (image float32 (C, *S'), label uint8 (*S') or None, geometry for `restore`).
    """
    shape = tuple(int(n) for n in image.shape[1:])
    target = settings["spacing"]
    resampled = shape
    if target is not None:
        resampled = tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))
        image = _resize(image, resampled, labels=False)
        if label is not None:
            label = _resize(label, resampled, labels=True)
    box = _foreground_box(image, label) if settings["crop_foreground"] else [[0, n] for n in resampled]
    crop = tuple(slice(a, b) for a, b in box)
    image = _normalise(image[(slice(None), *crop)], settings)
    if label is not None:
        label = label[crop]
    pad = [[(max(p - n, 0)) // 2, max(p - n, 0) - (max(p - n, 0)) // 2]
           for p, n in zip(settings["patch_size"], image.shape[1:], strict=True)]  # fmt: skip
    if any(a or b for a, b in pad):
        fill = image.reshape(len(image), -1).min(axis=1)
        image = np.stack([np.pad(channel, pad, constant_values=v) for channel, v in zip(image, fill, strict=True)])
        if label is not None:
            label = np.pad(label, pad)
    geometry = {"shape": list(shape), "spacing": list(spacing), "resampled": list(resampled), "box": box,
                "pad": pad}  # fmt: skip
    if label is not None:
        if label.max(initial=0) > 255:
            raise DataError(f"label value {int(label.max())} is too large (at most 255 classes)")
        label = label.astype(np.uint8)
    return np.ascontiguousarray(image, dtype=np.float32), label, geometry


def restore(labels: np.ndarray, geometry: dict[str, Any]) -> np.ndarray:
    """A mask predicted on a preprocessed case -> the scan's own (canonical) grid, uint8."""
    inner = tuple(slice(a, n - b) for (a, b), n in zip(geometry["pad"], labels.shape, strict=True))
    out = np.zeros(geometry["resampled"], dtype=np.uint8)
    out[tuple(slice(a, b) for a, b in geometry["box"])] = labels[inner]
    return _resize(out, tuple(geometry["shape"]), labels=True).astype(np.uint8)


# ---- 3. Cases in the cache ------------------------------------------------------------------


@dataclass
class Case:
    """A preprocessed (image, mask) pair in the cache."""

    id: str
    key: str
    image_path: str
    label_path: str
    geometry: dict[str, Any]
    classes_present: list[int]
    reference: Any  # the modality's record of the source scan's geometry (JSON), for writing masks


@dataclass
class CaseInputs:
    """Loaded cases (a `Samples.inputs`): only their keys travel; the arrays stay in the cache."""

    cases: list[Case]
    root: Path  # the cache folder
    settings: dict[str, Any]  # the preprocessing settings every case was prepared with


def case_store(scan_cfg: Any) -> ArrayCache:
    """The cache holding preprocessed cases; with `cache: false` a temporary one for this process."""
    if scan_cfg.cache:
        return ArrayCache(Path(scan_cfg.cache_dir) if scan_cfg.cache_dir else default_cache_dir())
    root = Path(tempfile.mkdtemp(prefix="biomx-cases-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return ArrayCache(root)


def prepare_case(case_id: str, image_path: Path, label_path: Path, settings: dict[str, Any], store: ArrayCache,
                 tolerance_mm: float, read_pair: ReadPair, reference_of: Callable[[Scan], Any]) -> Case:
    """Preprocess one case into `store` (or find it there); the arrays stay on disk.

    Raises:
        DataError: unreadable files, a mask off the image's grid, NaN voxels, too many channels.
    """
    # A size limit only decides whether a file is read, never what it becomes: not part of the key.
    defining = {name: value for name, value in settings.items() if name != "limits"}
    key = cache_key(PREPROCESS_VERSION, file_digest(image_path), file_digest(label_path), defining)
    meta = store.get_meta(key)
    if meta is None or store.get(key) is None:
        image, mask = read_pair(Path(image_path), Path(label_path), settings["nan_policy"], tolerance_mm,
                                **settings.get("limits", {}))  # fmt: skip
        if settings["channels"] is not None and len(image.array) != settings["channels"]:
            raise DataError(f"{image_path}: {len(image.array)} channel(s), expected {settings['channels']}")
        x, y, geometry = preprocess(image.array, image.spacing, settings, mask.array)
        foreground = np.flatnonzero(y > 0)
        if len(foreground) > _MAX_FOREGROUND_INDICES:  # enough positive centres; bounded size
            rng = np.random.default_rng(0)
            foreground = np.sort(rng.choice(foreground, _MAX_FOREGROUND_INDICES, replace=False))
        present = sorted(int(v) for v in np.unique(y) if v > 0)
        meta = {"id": case_id, "geometry": geometry, "present": present,
                "reference": reference_of(image)}  # fmt: skip
        store.put(key, {"image": x, "label": y, "foreground": foreground.astype(np.int64)}, meta)
    return Case(case_id, key, str(image_path), str(label_path), meta["geometry"], meta["present"], meta["reference"])


def prepare_all(one: Callable[[Any], T], cases: Sequence[Any], shared_cache: bool) -> list[T]:
    """`one(case)` for every case (typically a `prepare_case` call), in order.

    Under torchrun with a shared cache (`shared_cache`), rank 0 fills the cache while the other
    ranks wait, then they read it. Decompression and resampling release the GIL, so a few threads
    overlap them on a cold cache.
    """
    if shared_cache and not dist.is_main():
        dist.barrier()
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        results = list(pool.map(one, cases))
    if shared_cache and dist.is_main():
        dist.barrier()
    return results


# ---- 4. Patches ------------------------------------------------------------------------------


class CachedPatches(Dataset):
    """`per_case` patches per case per epoch, cut from the cached memory maps a batch at a time
    (`__getitems__`, which subclasses define: what a patch's target is).

    Training: centres are drawn from `batch_generator(seed, epoch, indices)` (the same batch with
    any number of workers and after a resume). `fixed=True` (validation): the same patches
    every epoch. Only cache keys are pickled into DataLoader workers; each worker maps the
    cached arrays itself, so the operating system's page cache holds one copy for all.
    """

    def __init__(self, root: Path, keys: list[str], patch_size: list[int], per_case: int, pos_ratio: float,
                 augment: Any = None, seed: int = 0, fixed: bool = False):  # fmt: skip
        self.root, self.keys, self.patch = Path(root), list(keys), list(patch_size)
        self.per_case, self.pos_ratio, self.augment = per_case, pos_ratio, augment
        self.seed, self.fixed, self.epoch = seed, fixed, 0
        self._arrays: dict[str, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.keys) * self.per_case

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}  # workers open their own memory maps

    def arrays(self, key: str) -> dict[str, np.ndarray]:
        if key not in self._arrays:
            found = ArrayCache(self.root).get(key)
            if found is None:
                raise DataError(f"{self.root}: cached case {key[:12]} is missing or damaged; run again to rebuild it")
            self._arrays[key] = found
        return self._arrays[key]

    def clamp_start(self, centre: Sequence[float], shape: Sequence[int]) -> list[int]:
        """The corner of the patch centred (as near as fits) on `centre` in an array of `shape`."""
        return [min(max(int(c) - p // 2, 0), n - p) for c, p, n in zip(centre, self.patch, shape, strict=True)]

    def window(self, start: list[int]) -> tuple[slice, ...]:
        return tuple(slice(s, s + p) for s, p in zip(start, self.patch, strict=True))

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]


class PatchDataset(CachedPatches):
    """Image patches and their label-map patches (a share `pos_ratio` centred on a foreground voxel)."""

    def _start(self, label: np.ndarray, foreground: np.ndarray, g: torch.Generator) -> list[int]:
        shape = label.shape
        if len(foreground) and float(torch.rand(1, generator=g)) < self.pos_ratio:
            centre = np.unravel_index(int(foreground[int(torch.randint(len(foreground), (1,), generator=g))]), shape)
        else:
            centre = [int(torch.randint(n, (1,), generator=g)) for n in shape]
        return self.clamp_start(centre, shape)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        g = batch_generator(self.seed, 0 if self.fixed else self.epoch, indices)
        images, labels = [], []
        for index in indices:
            arrays = self.arrays(self.keys[index // self.per_case])
            window = self.window(self._start(arrays["label"], arrays["foreground"], g))
            images.append(arrays["image"][(slice(None), *window)])
            labels.append(arrays["label"][window])
        x = torch.from_numpy(np.stack(images))
        y = torch.from_numpy(np.stack(labels)).long()
        if self.augment is not None:
            x, y = augment_batch(x, y, self.augment, g)
        return x, y


class CaseList(Dataset):
    """Whole cases (test split): evaluated by sliding-window inference, not batched patches."""

    def __init__(self, root: Path, cases: list[Case]):
        self.root, self.cases = Path(root), list(cases)

    def __len__(self) -> int:
        return len(self.cases)

    def arrays(self, case: Case) -> dict[str, np.ndarray]:
        found = ArrayCache(self.root).get(case.key)
        if found is None:
            raise DataError(f"{case.image_path}: cached case is missing or damaged; run again to rebuild it")
        return found
