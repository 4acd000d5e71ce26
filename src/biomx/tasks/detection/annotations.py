"""Box files: a CSV (corners or centre + size, voxel or world coordinates) and MONAI's detection
JSON (as LUNA16 is distributed), read into voxel boxes of the arrays biomx holds (see `boxes.py`
for the convention), and written back.

CSV columns (header names, any order, case-insensitive):
    image, x_min, y_min[, z_min], x_max, y_max[, z_max][, label][, space]     or
    image, x_centre, y_centre[, z_centre], width, height[, depth][, label][, space]
x, y, z run along the array's spatial axes 0, 1, 2. `space` (a column, else the argument) is
"voxel" (continuous voxel coordinates, voxel i covering [i, i+1)) or "world" (mm, through the
image's voxel -> world affine: biomx's RAS for volumes; `world_frame="LPS"` for scanner (ITK,
patient) coordinates). A row whose coordinates are all empty lists an image with no boxes: a negative case.

MONAI JSON: {"training": [{"image": "...", "box": [[cx, cy, cz, w, h, d], ...], "label": [0, ...]}, ...],
"validation": [...]}: boxes in world coordinates, mode "cccwhd", in ITK's LPS frame (MONAI's LUNA16
pipeline sets affine_lps_to_ras=True for them).

Bad rows (a missing image, a non-number, zero or negative size, a box outside its image) raise one
DataError naming the file and row, or with on_error="skip" are dropped and counted. When most
boxes of a file fall outside their images, the coordinates are in the wrong space (world given as
voxel, say): that is always an error, never a skip.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biomx.engine.checkpoint import atomic_write_text
from biomx.errors import ConfigError, DataError
from biomx.tasks.detection.boxes import (
    as_boxes,
    boxes_to_voxel,
    boxes_to_world,
    centre_size_from_corners,
    corners_from_centre_size,
)

AXES = ("x", "y", "z")
SIZES = ("width", "height", "depth")
SPACES = ("voxel", "world")
FRAMES = ("RAS", "LPS")
# A box may reach this many voxels past the image edge (rounding in a world -> voxel conversion)
# and is clipped; further out, it is a bad box.
OUTSIDE_TOLERANCE = 1.0


@dataclass(frozen=True)
class ImageGeometry:
    """What a box file needs of an image: its spatial shape and voxel-index -> world affine."""

    shape: tuple[int, ...]
    affine: np.ndarray | None = None  # None: the identity ((D+1) x (D+1))

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        affine = np.eye(len(shape) + 1) if self.affine is None else np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (len(shape) + 1, len(shape) + 1):
            raise ValueError(f"a {len(shape)}D image needs a {len(shape) + 1}x{len(shape) + 1} affine, "
                             f"got shape {affine.shape}")  # fmt: skip
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", affine)

    @classmethod
    def of(cls, value: Any) -> ImageGeometry:
        """An ImageGeometry from itself, (shape, affine), or a bare shape (identity affine)."""
        if isinstance(value, ImageGeometry):
            return value
        if isinstance(value, tuple) and len(value) == 2 and not np.isscalar(value[0]):
            shape, affine = value
        else:
            shape, affine = value, None
        return cls(tuple(shape), affine)


Images = Mapping[str, Any] | Callable[[str], Any]
Annotations = dict[str, tuple[np.ndarray, np.ndarray]]


class _Problems:
    """Bad rows of one file: raised at once, or counted as skips (on_error="skip")."""

    def __init__(self, path: Path, on_error: str) -> None:
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error: expected 'raise' or 'skip', got {on_error!r}")
        self.path, self.on_error, self.skips = path, on_error, []
        self.outside: list[str] = []

    def bad(self, where: str, reason: str, *, outside: bool = False) -> None:
        """Report a bad row; a box outside its image is held back (see `finish`) even when raising."""
        line = f"{self.path}: {where}: {reason}"
        if outside:
            self.outside.append(line)
        elif self.on_error == "raise":
            raise DataError(line)
        if self.on_error == "skip":
            self.skips.append(line)

    def finish(self, n_boxes: int, space_hint: str) -> None:
        """Most boxes outside their images: the coordinates are in another space (an error, never
        a skip). Otherwise the first box outside its image, when raising."""
        if n_boxes >= 2 and len(self.outside) > n_boxes / 2:
            first = self.outside[0].split(": ", 1)[1]
            raise DataError(f"{self.path}: {len(self.outside)} of {n_boxes} boxes lie outside their images "
                            f"(first: {first}): {space_hint}")  # fmt: skip
        if self.outside and self.on_error == "raise":
            raise DataError(self.outside[0])


def _stem(name: str) -> str:
    return Path(name).name.split(".")[0]


class _Resolver:
    """Image name in a box file -> its geometry: the exact key, else the same file name or stem
    ("case_001" matches "imagesTr/case_001.nii.gz" either way round) when that is unambiguous."""

    def __init__(self, images: Images) -> None:
        self.images = images
        self.aliases: dict[str, str | None] = {}
        if not callable(images):
            for key in images:
                for alias in (Path(key).name, _stem(key)):
                    self.aliases[alias] = key if self.aliases.get(alias, key) == key else None  # None: ambiguous

    def __call__(self, name: str) -> ImageGeometry | None:
        if callable(self.images):
            found = self.images(name)
            return None if found is None else ImageGeometry.of(found)
        if name in self.images:
            return ImageGeometry.of(self.images[name])
        for alias in (Path(name).name, _stem(name)):
            key = self.aliases.get(alias)
            if key is not None:
                return ImageGeometry.of(self.images[key])
        return None


def _world_affine(geometry: ImageGeometry, frame: str) -> np.ndarray:
    """The voxel -> world affine in `frame` (the geometry's affine is RAS for volumes)."""
    if frame not in FRAMES:
        raise ConfigError(f"world_frame: expected one of {', '.join(FRAMES)}, got {frame!r}")
    a = geometry.affine
    if frame == "LPS" and a.shape == (4, 4):
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ a
    return a


def _place(box: np.ndarray, geometry: ImageGeometry, space: str, frame: str) -> np.ndarray:
    """A box (2D,) in `space` -> voxel coordinates."""
    if space == "world":
        return boxes_to_voxel(box[None], _world_affine(geometry, frame))[0]
    return box


def _check_box(box: np.ndarray, geometry: ImageGeometry, where: str, problems: _Problems) -> np.ndarray | None:
    """The voxel box, clipped by at most OUTSIDE_TOLERANCE, or None (reported) when it is bad."""
    d = len(geometry.shape)
    if not np.isfinite(box).all():
        problems.bad(where, "a coordinate is not a finite number")
        return None
    size = box[d:] - box[:d]
    if (size <= 0).any():
        problems.bad(where, f"zero or negative box size {size.round(3).tolist()} (min must be below max)")
        return None
    upper = np.asarray(geometry.shape, dtype=np.float64)
    past = np.maximum(np.maximum(-box[:d], box[d:] - upper), 0).max()
    if past > OUTSIDE_TOLERANCE:
        problems.bad(where, f"box {box.round(2).tolist()} (voxels) lies {past:.1f} voxels outside the image "
                            f"of shape {list(geometry.shape)}", outside=True)  # fmt: skip
        return None
    return np.concatenate([np.clip(box[:d], 0, upper), np.clip(box[d:], 0, upper)])


# ---- CSV -------------------------------------------------------------------------------------


def _csv_layout(header: Sequence[str], dims: int | None, path: Path) -> tuple[str, int]:
    """("corners" | "centre", dims) from the header."""
    cols = set(header)
    for d in ((dims,) if dims else (3, 2)):
        corners = ["image", *(f"{a}_{e}" for e in ("min", "max") for a in AXES[:d])]
        centre = ["image", *(f"{a}_centre" for a in AXES[:d]), *SIZES[:d]]
        if set(corners) <= cols:
            return "corners", d
        if set(centre) <= cols:
            return "centre", d
    want = ("image, x_min, y_min[, z_min], x_max, y_max[, z_max] or image, x_centre, y_centre[, z_centre], "
            "width, height[, depth]")
    raise DataError(f"{path}: columns missing: expected {want} (got: {', '.join(header)})")


def _row_box(row: dict[str, str], layout: str, d: int) -> np.ndarray | None:
    """The row's box in its own space (None: the coordinate cells are all empty, a negative image)."""
    names = ([f"{a}_{e}" for e in ("min", "max") for a in AXES[:d]] if layout == "corners"
             else [f"{a}_centre" for a in AXES[:d]] + list(SIZES[:d]))  # fmt: skip
    cells = [(row.get(n) or "").strip() for n in names]
    if not any(cells):
        return None
    values = np.array([float(c) if c else math.nan for c in cells])  # ValueError: not a number
    if layout == "centre":
        return corners_from_centre_size(values[:d], values[d:])[0]
    return values


def read_box_csv(path: str | Path, *, images: Images, dims: int | None = None, space: str = "voxel",
                 world_frame: str = "RAS", on_error: str = "raise") -> tuple[Annotations, list[str]]:
    """Read a box CSV into {image: (voxel boxes (N, 2D) float64, labels (N,) int64)} and the skips.

    Args:
        path: the CSV (layout in the module docstring).
        images: image name -> ImageGeometry, (shape, affine) or a bare shape; or a callable
            returning one (None for an unknown image). A dict also matches the file name or
            its stem ("case_001" for "imagesTr/case_001.nii.gz").
        dims: 2 or 3 (None: 3 when the z columns are there).
        space: "voxel" or "world", for rows without a `space` cell.
        world_frame: "RAS" (biomx's volumes) or "LPS" (scanner patient coordinates, ITK, LUNA16's CSVs).
        on_error: "raise" (one DataError on the first bad row) or "skip" (drop bad rows, counted).

    Returns:
        (annotations, skips): every image named in the file (those with only an empty row map
        to (0, 2D) boxes: negative cases); one line per skipped row.
    """
    path = Path(path)
    problems = _Problems(path, on_error)
    if space not in SPACES:
        raise ConfigError(f"space: expected 'voxel' or 'world', got {space!r}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the box file ({e})") from None
    if not rows:
        raise DataError(f"{path}: the box file is empty (expected a header row)")
    header = [h.strip().lower().replace("center", "centre") for h in rows[0]]
    lookup = _Resolver(images)
    layout, d = _csv_layout(header, dims, path)
    found: dict[str, tuple[list, list]] = {}
    n_boxes = 0
    for line, cells in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in cells):
            continue
        row = dict(zip(header, cells, strict=False))
        where = f"row {line}"
        name = (row.get("image") or "").strip()
        geometry = lookup(name) if name else None
        if geometry is None:
            problems.bad(where, f"image {name!r} is not in the dataset" if name else "the image cell is empty")
            continue
        if len(geometry.shape) != d:
            problems.bad(where, f"{d}D boxes for the {len(geometry.shape)}D image {name!r}")
            continue
        try:
            raw = _row_box(row, layout, d)
            label = int((row.get("label") or "0").strip())
        except ValueError:
            problems.bad(where, "a coordinate or the label is not a number (labels are integer class indices)")
            continue
        entry = found.setdefault(name, ([], []))  # an image whose boxes were all skipped is not listed
        if raw is None:
            continue
        n_boxes += 1
        row_space = (row.get("space") or "").strip().lower() or space
        if row_space not in SPACES:
            problems.bad(where, f"space {row_space!r} is not 'voxel' or 'world'")
            continue
        box = _check_box(_place(raw, geometry, row_space, world_frame), geometry, where, problems)
        if box is not None:
            entry[0].append(box)
            entry[1].append(label)
    other = "world" if space == "voxel" else "voxel"
    problems.finish(n_boxes, f"are the coordinates in {other} space (space: {other})?")
    return _as_annotations(found, d), problems.skips


def _as_annotations(found: dict[str, tuple[list, list]], d: int) -> Annotations:
    return {name: (as_boxes(boxes, d).reshape(-1, 2 * d), np.asarray(labels, dtype=np.int64))
            for name, (boxes, labels) in found.items()}  # fmt: skip


# ---- MONAI JSON ------------------------------------------------------------------------------


def read_monai_json(path: str | Path, key: str = "training", *, images: Images, world_frame: str = "LPS",
                    on_error: str = "raise") -> tuple[Annotations, list[str]]:
    """Read MONAI's detection data list (LUNA16's dataset_fold*.json) into voxel boxes and skips.

    Each entry of `key` is {"image": name, "box": [[cx, cy, cz, w, h, d], ...] (world mm, "cccwhd";
    2D: "ccwh"), "label": [int, ...]}; an entry with no boxes is a negative case. Images are looked
    up in `images` as in `read_box_csv`; `world_frame` is "LPS" as LUNA16 is distributed.
    """
    path = Path(path)
    problems = _Problems(path, on_error)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the JSON box file ({e})") from None
    entries = data.get(key) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        keys = ", ".join(data) if isinstance(data, dict) else "none"
        raise DataError(f"{path}: no list under {key!r} (keys: {keys})")
    found: dict[str, tuple[list, list]] = {}
    n_boxes, dims = 0, None
    lookup = _Resolver(images)
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        name = entry.get("image") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            problems.bad(where, "no 'image' name")
            continue
        geometry = lookup(name)
        if geometry is None:
            problems.bad(where, f"image {name!r} is not in the dataset")
            continue
        d = dims = len(geometry.shape)
        boxes, labels = entry.get("box", []), entry.get("label", [0] * len(entry.get("box", [])))
        if not isinstance(boxes, list) or not isinstance(labels, list) or len(boxes) != len(labels):
            problems.bad(where, "'box' and 'label' must be lists of the same length")
            continue
        kept: tuple[list, list] = ([], [])
        for j, (values, label) in enumerate(zip(boxes, labels, strict=True)):
            at = f"{where} box {j}"
            try:
                v = np.asarray(values, dtype=np.float64).reshape(-1)
                label = int(label)
            except (TypeError, ValueError):
                problems.bad(at, "a coordinate or the label is not a number")
                continue
            if v.shape != (2 * d,):
                problems.bad(at, f"expected {2 * d} numbers (centre and size, {d}D) for image {name!r}, got {len(v)}")
                continue
            n_boxes += 1
            world = corners_from_centre_size(v[:d], v[d:])[0]
            box = _check_box(_place(world, geometry, "world", world_frame), geometry, at, problems)
            if box is not None:
                kept[0].append(box)
                kept[1].append(label)
        if kept[0] or not boxes:  # a listed negative case, or at least one good box
            previous = found.setdefault(name, ([], []))
            previous[0].extend(kept[0])
            previous[1].extend(kept[1])
    other = "RAS" if world_frame == "LPS" else "LPS"
    problems.finish(n_boxes, f"are they in voxel coordinates, or in the {other} frame (world_frame)?")
    return _as_annotations(found, dims or 3), problems.skips


# ---- writing ---------------------------------------------------------------------------------


def write_box_csv(path: str | Path, annotations: Mapping[str, tuple[Any, Any]], *,
                  images: Images | None = None, space: str = "world", world_frame: str = "RAS",
                  scores: Mapping[str, Any] | None = None) -> Path:
    """Write {image: (voxel boxes, labels)} as a corner CSV (atomically) that `read_box_csv` reads.

    space="world" needs `images` (for the affines). An image with no boxes gets one row with empty
    coordinates (a negative case). With `scores`, a score column follows the label.
    """
    if space not in SPACES:
        raise ConfigError(f"space: expected 'voxel' or 'world', got {space!r}")
    dims = {as_boxes(b).shape[1] // 2 for b, _ in annotations.values() if len(as_boxes(b))} or {3}
    if len(dims) > 1:
        raise ValueError("write_box_csv got 2D and 3D boxes together")
    d = dims.pop()
    header = ["image", *(f"{a}_min" for a in AXES[:d]), *(f"{a}_max" for a in AXES[:d]), "label"]
    header += ["score"] if scores is not None else []
    header += ["space"]
    lines = [",".join(header)]
    lookup = _Resolver(images) if images is not None else None
    for name, (boxes, labels) in annotations.items():
        b = as_boxes(boxes, d)
        if space == "world" and len(b):
            geometry = lookup(name) if lookup is not None else None
            if geometry is None:
                raise DataError(f"{path}: no geometry for image {name!r} to write world coordinates")
            b = boxes_to_world(b, _world_affine(geometry, world_frame))
        s = np.asarray(scores[name], dtype=np.float64) if scores is not None else None
        if len(b) == 0:
            lines.append(",".join([_cell(name)] + [""] * (len(header) - 2) + [space]))
        for k, (box, label) in enumerate(zip(b, np.asarray(labels).reshape(-1), strict=True)):
            cells = [_cell(name), *(f"{v:.6g}" for v in box), str(int(label))]
            cells += [f"{s[k]:.6g}"] if s is not None else []
            lines.append(",".join([*cells, space]))
    target = Path(path)
    atomic_write_text(target, "\n".join(lines) + "\n")
    return target


def _cell(text: str) -> str:
    return f'"{text}"' if any(c in text for c in ',"\n') else text


def write_monai_json(path: str | Path, annotations: Mapping[str, tuple[Any, Any]], *, images: Images,
                     key: str = "training", world_frame: str = "LPS", extra: Mapping[str, Any] | None = None) -> Path:
    """Write {image: (voxel boxes, labels)} as MONAI's detection data list (world "cccwhd", LPS by
    default), atomically; `extra` adds more top-level keys (e.g. a "validation" list)."""
    entries = []
    lookup = _Resolver(images)
    for name, (boxes, labels) in annotations.items():
        geometry = lookup(name)
        if geometry is None:
            raise DataError(f"{path}: no geometry for image {name!r} to write world coordinates")
        world = boxes_to_world(as_boxes(boxes, len(geometry.shape)), _world_affine(geometry, world_frame))
        centre, size = centre_size_from_corners(world)
        rows = np.concatenate([centre, size], axis=1).round(4)
        entries.append({"image": name, "box": rows.tolist(), "label": [int(x) for x in np.asarray(labels).reshape(-1)]})
    target = Path(path)
    atomic_write_text(target, json.dumps({key: entries, **(extra or {})}, indent=1) + "\n")
    return target
