"""Scans with masks, shared by the image and volume modalities: reading an MSD-style folder of
image/mask pairs, and the checks both apply to a pair (same grid, channels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biomx.data.cases import Scan
from biomx.errors import DataError


def check_same_shape(image: Scan, mask: Scan) -> None:
    """Refuse a mask that is not on the image's pixel grid (one line naming both files)."""
    if image.array.shape[1:] != mask.array.shape:
        raise DataError(f"{mask.source}: shape {mask.array.shape} does not match the image {image.source} "
                        f"{image.array.shape[1:]}; a mask must be on the image's pixel grid")  # fmt: skip

def check_finite(data: np.ndarray, source: str, nan_policy: str, setting: str = "data.volume.nan_policy") -> np.ndarray:
    """`data` if every value is finite; else an error ("raise") or a copy with them set to 0 ("zero")."""
    if not np.issubdtype(data.dtype, np.floating):
        return data
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return data
    if nan_policy == "raise":
        raise DataError(f"{source}: {n_bad} of {data.size} voxels are NaN or infinite; fix the file or set "
                        f"nan_policy: zero ({setting} in a config)")
    data = data.copy()
    data[bad] = 0
    return data



def unique_stem(path: Path, suffixes: tuple[str, ...], used: set[str]) -> str:
    """The file's name without its (possibly double) suffix, made unique among `used` (then added)."""
    name = path.name
    for suffix in suffixes:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    while name in used:  # two inputs with one name: keep both masks
        name += "_"
    used.add(name)
    return name
