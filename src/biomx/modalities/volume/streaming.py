"""Volumes of an .npz streamed from disk (`data.volume.storage: stream`): each `<split>_images`
array is extracted into the row store once, one volume at a time from the archive's member
stream (never the whole array in memory), then every batch reads its own rows back
(`data.row_store.StoredRows`). Same rows, same batches and weights as the in-memory path.

The store is keyed by the archive's sha256; the extraction marks each row, and a later load
(another run, a resume, another rank) finds the store filled and skips it.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from biomx.data.cache import cache_key, default_cache_dir
from biomx.data.row_store import RowStore, StoredRows
from biomx.data.samples import Samples, sha256_file
from biomx.errors import DataError
from biomx.modalities.common.npz import npz_labels_and_ids

STREAM_VERSION = "volume-rows-v1"  # bump when the extraction changes
AUTO_STREAM_BYTES = 2 << 30  # storage auto: stream when the volumes would take more than this in memory
_SPLITS = ("train", "val", "test")
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _members(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """`<split>_images` -> (shape, dtype) from each member's .npy header (nothing else is read)."""
    out = {}
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for split in _SPLITS:
                if f"{split}_images.npy" not in names:
                    continue
                with archive.open(f"{split}_images.npy") as f:
                    shape, fortran, dtype = _header(f)
                if fortran:
                    raise DataError(f"{path}: {split}_images is stored in Fortran order; streaming reads C-order "
                                    "rows: re-save it with np.savez, or use data.volume.storage: memory")  # fmt: skip
                out[f"{split}_images"] = (shape, dtype)
    except _READ_ERRORS as e:
        raise DataError(f"{path}: cannot read npz: {' '.join(str(e).split())}") from e
    return out


def _header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)


def stream_bytes(path: Path) -> int:
    """What the volumes of `path` take in memory (uint8 kept, anything else as float32)."""
    total = 0
    for shape, dtype in _members(path).values():
        total += int(np.prod(shape, dtype=np.int64)) * (1 if dtype == np.uint8 else 4)
    return total


def _labels(path: Path, n: dict[str, int]) -> dict[str, tuple[None, np.ndarray]]:
    """Each split's labels (small), checked as the in-memory loader checks them."""
    out = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for split in n:
                y = archive[f"{split}_labels"]
                if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
                    raise DataError(f"{path}: {split}_labels must hold integer class ids, got {y.dtype}")
                y = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
                if y.ndim not in (1, 2) or len(y) != n[split]:
                    raise DataError(f"{path}: {split}_labels has shape {y.shape}; expected ({n[split]},) or "
                                    f"({n[split]}, K)")  # fmt: skip
                out[split] = (None, y.astype(np.int64))
    except KeyError as e:
        raise DataError(f"{path}: missing array {e.args[0]!r}") from e
    except _READ_ERRORS as e:
        raise DataError(f"{path}: cannot read npz: {' '.join(str(e).split())}") from e
    return out


def _row(raw: bytes, dtype: np.dtype, shape: tuple[int, ...], path: Path, name: str, i: int) -> np.ndarray:
    """One stored volume -> (C, D, H, W) uint8, or float32 with every voxel finite."""
    volume = np.frombuffer(raw, dtype=dtype).reshape(shape)
    volume = volume[None] if volume.ndim == 3 else volume
    if volume.dtype == np.uint8:
        return volume
    if not (np.issubdtype(volume.dtype, np.floating) or np.issubdtype(volume.dtype, np.integer)):
        raise DataError(f"{path}: {name} must be uint8 or float, got {volume.dtype}")
    volume = volume.astype(np.float32)
    if not np.isfinite(volume).all():
        raise DataError(f"{path}: {name} row {i} has NaN or infinite voxels")
    return volume


def _extract(path: Path, members: dict[str, tuple[tuple[int, ...], np.dtype]], store: RowStore) -> dict[str, Any]:
    """Write every volume into `store`, one at a time from the archive; returns the value range."""
    lo, hi, start = np.inf, -np.inf, 0
    try:
        with zipfile.ZipFile(path) as archive:
            for name, (shape, dtype) in members.items():
                with archive.open(f"{name}.npy") as f:
                    _header(f)
                    size = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
                    for i in range(shape[0]):
                        raw = f.read(size)
                        if len(raw) != size:
                            raise DataError(f"{path}: {name} is truncated at row {i}")
                        volume = _row(raw, dtype, shape[1:], path, name, i)
                        lo, hi = min(lo, float(volume.min())), max(hi, float(volume.max()))
                        if not store.write(start + i, volume):
                            raise DataError(f"{store.folder}: cannot write the row store (read-only or full disk?); "
                                            "free space, set BIOMX_CACHE, or use data.volume.storage: memory")
                start += shape[0]
    except _READ_ERRORS as e:
        raise DataError(f"{path}: cannot read npz: {' '.join(str(e).split())}") from e
    return {"min": lo, "max": hi}


def load_streamed(path: Path, classes: list[str] | None) -> Samples:
    """The volumes of `path` as `StoredRows` (extracted into the row store on first use).

    Raises:
        DataError: an unreadable archive, missing arrays, bad shapes, dtypes, labels or NaN voxels.
    """
    members = _members(path)
    if "train_images" not in members or "val_images" not in members:
        raise DataError(f"{path}: missing array 'train_images' or 'val_images'")
    row_shapes = {name: (1, *shape[1:]) if len(shape) == 4 else shape[1:] for name, (shape, _) in members.items()}
    if any(len(shape) != 5 and len(shape) != 4 for shape, _ in members.values()):
        raise DataError(f"{path}: expected volumes (N, D, H, W) or (N, C, D, H, W); found "
                        f"{ {k: v[0] for k, v in members.items()} }")  # fmt: skip
    if len(set(row_shapes.values())) > 1:
        raise DataError(f"{path}: the splits hold volumes of different shapes (C, D, H, W): {row_shapes}")
    splits = _labels(path, {name.removesuffix("_images"): shape[0] for name, (shape, _) in members.items()})
    labels, ids, predefined = npz_labels_and_ids(splits, classes, path)
    digest = sha256_file(path)
    uint8 = all(dtype == np.uint8 for _, dtype in members.values())
    store = RowStore(default_cache_dir(), cache_key(STREAM_VERSION, digest), len(ids), next(iter(row_shapes.values())),
                     np.uint8 if uint8 else np.float32)  # fmt: skip
    info_file = store.folder / "range.json"
    if not info_file.is_file() or not store.filled().all():
        info = _extract(path, members, store)
        tmp = info_file.with_name(f".range-{os.getpid()}.json")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, info_file)  # written last: the store is complete once it is there
    info = json.loads(info_file.read_text())
    return Samples(StoredRows(store, info), labels, ids, predefined=predefined, source_sha256=digest)
