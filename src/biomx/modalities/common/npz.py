"""MedMNIST-style .npz archives: images (or volumes) and labels per split, as arrays.

`load_npz_splits` reads and checks the arrays; `npz_labels_and_ids` names the labels and
numbers the rows. Used by the image and volume pipelines.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from biomx.errors import DataError


def load_npz_splits(path: str | Path, check_images: Callable[[np.ndarray, Path, str], np.ndarray] | None = None,
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Load a MedMNIST-style npz: `train_images`, `train_labels`, `val_*`, optional `test_*`.

    Args:
        path: the .npz archive (no pickles are loaded).
        check_images: validates and shapes one `<split>_images` array (array, path, name);
            default: 2D images (below). Volumes pass their own.

    Returns:
        split name -> (images uint8 (N, C, H, W), labels int64 (N,) single-label or (N, K)
        multilabel). Grey (N, H, W) gains a channel axis; (N, H, W, 3) moves to (N, 3, H, W).

    Raises:
        DataError: unreadable or corrupt archive, missing array, or bad shapes or dtypes.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read npz: {' '.join(str(e).split())}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not an .npz archive (a single .npy array?); save with np.savez")
    with archive:
        keys = sorted(archive.files)
        splits = {}
        for split in ("train", "val", "test"):
            names = (f"{split}_images", f"{split}_labels")
            if split == "test" and not any(name in keys for name in names):
                continue
            for name in names:
                if name not in keys:
                    raise DataError(f"{path}: missing array {name!r} (found: {', '.join(keys)})")
            try:
                images, labels = archive[names[0]], archive[names[1]]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise DataError(f"{path}: corrupt array in {split!r}: {' '.join(str(e).split())}") from e
            splits[split] = ((check_images or _npz_images)(images, path, names[0]),
                             _npz_labels(labels, len(images), path, names[1]))
    return splits


def npz_labels_and_ids(splits: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str] | None, path: Path,
                       ) -> tuple[list, list[str], dict[str, np.ndarray]]:  # fmt: skip
    """Class names per row, row ids ("<split>:<i>") and each split's rows, in split order.

    Integer labels are named by `classes` (task.classes), else "0".."K-1" with K counted over
    all splits; multilabel rows (N, K) become lists of names.

    Raises:
        DataError: a class index outside `classes`, or a multilabel width that differs from it.
    """
    first = next(iter(splits.values()))[1]
    count = first.shape[1] if first.ndim == 2 else int(max(y.max(initial=0) for _, y in splits.values())) + 1
    names = classes or [str(i) for i in range(count)]
    labels, ids, predefined, start = [], [], {}, 0
    for split, (_, y) in splits.items():
        labels += _label_names(y, names, path, split)
        ids += [f"{split}:{i}" for i in range(len(y))]
        predefined[split] = np.arange(start, start + len(y))
        start += len(y)
    return labels, ids, predefined


def _label_names(y: np.ndarray, names: list[str], path: Path, split: str) -> list:
    if y.ndim == 2:  # multilabel
        if y.shape[1] != len(names):
            raise DataError(f"{path}: {split}_labels has {y.shape[1]} label columns but {len(names)} classes "
                            "are named in task.classes")  # fmt: skip
        return [[names[k] for k in np.flatnonzero(row)] for row in y]
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(names)):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise DataError(f"{path}: {split}_labels has class index {bad} but only {len(names)} classes are named "
                        "in task.classes")  # fmt: skip
    return [names[int(k)] for k in y]


def _npz_images(images: np.ndarray, path: Path, name: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DataError(f"{path}: {name} must be uint8, got {images.dtype}")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[-1] in (1, 3, 4):  # channels last
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if images.ndim == 4 and images.shape[1] in (1, 3, 4):  # already channels first
        return images
    raise DataError(f"{path}: {name} has shape {images.shape}; expected 2D images (N, H, W), "
                    "(N, H, W, C) or (N, C, H, W) with C in 1, 3, 4")


def _npz_labels(labels: np.ndarray, n: int, path: Path, name: str) -> np.ndarray:
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise DataError(f"{path}: {name} must hold integer class ids, got {labels.dtype}")
    if labels.ndim == 2 and labels.shape[1] == 1:  # MedMNIST stores single labels as (N, 1)
        labels = labels[:, 0]
    if labels.ndim not in (1, 2) or len(labels) != n:
        raise DataError(f"{path}: {name} has shape {labels.shape}; expected ({n},) or ({n}, K)")
    return labels.astype(np.int64)
