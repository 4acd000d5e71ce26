"""Axis-aligned boxes for 2D and 3D detection, in numpy (no torchvision).

Convention (the whole detection task uses it):
- boxes are float64 arrays shaped (N, 2*D), corner format [min_0, ..., min_{D-1}, max_0, ..., max_{D-1}];
- coordinate d runs along the array's spatial axis d, axis 0 first, as MONAI's detection does
  ("xyzxyz" with x = axis 0, y = axis 1, z = axis 2). For a 2D (H, W) image "x" is the row axis;
  for a volume as biomx holds it (RAS+), x runs right, y anterior, z superior;
- coordinates are continuous voxel (pixel) positions with voxel i covering [i, i+1): a box that
  covers exactly voxels i..j along an axis is [i, j+1) (MONAI's `convert_mask_to_box` agrees). The
  voxel CENTRE i + 0.5 is the point a voxel -> world affine maps from index i, so
  world = A @ (v - 0.5) and v = A^-1 @ world + 0.5;
- labels are int64 (N,), scores float (N,).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def as_boxes(boxes: object, dims: int | None = None) -> np.ndarray:
    """`boxes` as a float64 (N, 2*D) array (an empty input gives (0, 2*dims))."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        width = 2 * dims if dims is not None else (arr.shape[-1] if arr.ndim == 2 else 0)
        return np.zeros((0, width), dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] % 2 or arr.shape[1] == 0:
        raise ValueError(f"boxes must be shaped (N, 2*D), got {arr.shape}")
    if dims is not None and arr.shape[1] != 2 * dims:
        raise ValueError(f"expected {dims}D boxes (N, {2 * dims}), got {arr.shape}")
    return arr


def spatial_dims(boxes: np.ndarray) -> int:
    return boxes.shape[1] // 2


def corners_from_centre_size(centre: object, size: object) -> np.ndarray:
    """Corner boxes from centres (N, D) and full sizes (N, D) (MONAI's "cccwhd" -> "xyzxyz")."""
    c = np.atleast_2d(np.asarray(centre, dtype=np.float64))
    s = np.atleast_2d(np.asarray(size, dtype=np.float64))
    if c.shape != s.shape:
        raise ValueError(f"centre {c.shape} and size {s.shape} differ in shape")
    return np.concatenate([c - s / 2, c + s / 2], axis=1)


def centre_size_from_corners(boxes: object) -> tuple[np.ndarray, np.ndarray]:
    """(centres (N, D), sizes (N, D)) of corner boxes."""
    b = as_boxes(boxes)
    d = spatial_dims(b)
    return (b[:, :d] + b[:, d:]) / 2, b[:, d:] - b[:, :d]


def box_sizes(boxes: object) -> np.ndarray:
    """Edge lengths (N, D)."""
    return centre_size_from_corners(boxes)[1]


def box_volume(boxes: object) -> np.ndarray:
    """Area (2D) or volume (3D) per box, in voxel units; 0 for an empty or inverted box."""
    return np.clip(box_sizes(boxes), 0, None).prod(axis=1)


def _corner_points(b: np.ndarray) -> np.ndarray:
    """(N, 2^D, D): every corner of every box."""
    d = spatial_dims(b)
    picks = np.array(list(itertools.product((0, 1), repeat=d)))  # (2^D, D): 0 = min, 1 = max
    idx = picks * d + np.arange(d)[None, :]
    return b[:, idx]


def _check_affine(affine: object, d: int) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (d + 1, d + 1):
        raise ValueError(f"a {d}D box needs a {d + 1}x{d + 1} affine, got shape {a.shape}")
    return a


def _transform_hull(b: np.ndarray, matrix: np.ndarray, before: float, after: float) -> np.ndarray:
    """Axis-aligned hull of the corners moved by (p + before) -> matrix -> + after."""
    d = spatial_dims(b)
    if len(b) == 0:
        return b.copy()
    pts = _corner_points(b) + before
    moved = pts @ matrix[:d, :d].T + matrix[:d, d] + after
    return np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1)


def boxes_to_world(boxes: object, affine: object) -> np.ndarray:
    """Voxel boxes -> world boxes through a voxel-index -> world affine ((D+1) x (D+1)).

    A world box is the axis-aligned hull of the 2^D transformed corners, so for an oblique affine
    it is larger than the voxel box; for axis-permuting or flipping affines it is exact.
    """
    b = as_boxes(boxes)
    if len(b) == 0:
        return b.copy()
    return _transform_hull(b, _check_affine(affine, spatial_dims(b)), -0.5, 0.0)


def boxes_to_voxel(boxes: object, affine: object) -> np.ndarray:
    """World boxes -> voxel boxes for the voxel-index -> world `affine` (hull of the corners)."""
    b = as_boxes(boxes)
    if len(b) == 0:
        return b.copy()
    inverse = np.linalg.inv(_check_affine(affine, spatial_dims(b)))
    return _transform_hull(b, inverse, 0.0, 0.5)


def box_iou(a: object, b: object) -> np.ndarray:
    """Intersection over union of every pair, (Na, Nb), for 2D or 3D boxes (0 where the union is 0)."""
    a, b = as_boxes(a), as_boxes(b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"cannot compare {spatial_dims(a)}D boxes with {spatial_dims(b)}D boxes")
    d = spatial_dims(a)
    lo = np.maximum(a[:, None, :d], b[None, :, :d])
    hi = np.minimum(a[:, None, d:], b[None, :, d:])
    inter = np.clip(hi - lo, 0, None).prod(axis=2)
    union = box_volume(a)[:, None] + box_volume(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: object, scores: object, iou: float, labels: object | None = None,
        limit: int | None = None) -> np.ndarray:  # fmt: skip
    """Greedy non-maximum suppression: indices kept, highest score first.

    A box is dropped when it overlaps a kept, higher-scoring box by IoU > `iou`. With `labels`,
    only boxes of the same label suppress each other. With `limit`, it stops once `limit` boxes are
    kept: the result is the first `limit` of the full one (greedy NMS keeps in score order), but
    thousands of weak window boxes are never compared when only the best hundred are wanted.
    """
    b = as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(b) != len(s):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    if len(b) == 0:
        return np.zeros(0, dtype=np.int64)
    if labels is not None:  # offset each label far away so classes never overlap
        lab = np.asarray(labels).reshape(-1)
        span = float(np.abs(b).max()) * 2 + 1
        b = b + (np.unique(lab, return_inverse=True)[1] * span)[:, None]
    rest = np.argsort(-s, kind="stable")
    kept = []
    while len(rest) and (limit is None or len(kept) < limit):  # memory O(N): one row of IoUs at a time, not the N x N matrix
        best, rest = rest[0], rest[1:]
        kept.append(best)
        rest = rest[box_iou(b[best], b[rest])[0] <= iou]
    return np.asarray(kept, dtype=np.int64)


def weighted_box_fusion(predictions: Sequence[tuple[object, object, object]], iou: float = 0.55, *,
                        skip_score: float = 0.0, conf: str = "avg") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted box fusion (Solovyev et al. 2021) of several sets of (boxes, scores, labels).

    Boxes of one label are taken in falling score order; each joins the first fused box it
    overlaps by IoU > `iou` (else starts a new one). A fused box is the score-weighted mean of its
    members' corners; its score is their mean score times min(members, sources) / sources, so a
    box found by only some of the sources (models, or overlapping windows passed as sources) is
    down-weighted. With one source this is the plain mean score of the cluster. conf="max" takes
    the best member's score instead (no down-weighting): for one source whose clusters hold many
    weak duplicates (overlapping sliding windows before NMS), which would drag a mean down.

    Returns:
        (boxes (M, 2D), scores (M,), labels (M,)), highest score first.
    """
    if not predictions:
        raise ValueError("weighted_box_fusion needs at least one set of predictions")
    if conf not in ("avg", "max"):
        raise ValueError(f"conf must be 'avg' or 'max', got {conf!r}")
    sources = len(predictions)
    all_b, all_s, all_l = [], [], []
    for boxes, scores, labels in predictions:
        b = as_boxes(boxes)
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        lab = np.asarray(labels, dtype=np.int64).reshape(-1)
        if not len(b) == len(s) == len(lab):
            raise ValueError(f"{len(b)} boxes, {len(s)} scores and {len(lab)} labels differ in number")
        all_b.append(b), all_s.append(s), all_l.append(lab)
    widths = {b.shape[1] for b in all_b if len(b)}
    if len(widths) > 1:
        raise ValueError("weighted_box_fusion got 2D and 3D boxes together")
    width = widths.pop() if widths else max(b.shape[1] for b in all_b)
    b = np.concatenate([x.reshape(-1, width) for x in all_b])
    s, lab = np.concatenate(all_s), np.concatenate(all_l)
    keep = s >= skip_score
    b, s, lab = b[keep], s[keep], lab[keep]
    out_b, out_s, out_l = [], [], []
    for label in np.unique(lab):
        idx = np.flatnonzero(lab == label)
        idx = idx[np.argsort(-s[idx], kind="stable")]
        fused: list[np.ndarray] = []
        members: list[list[int]] = []
        for i in idx:
            if fused:
                overlaps = box_iou(b[i], np.stack(fused))[0]
                j = int(np.argmax(overlaps))
                if overlaps[j] > iou:
                    members[j].append(i)
                    w = s[members[j]]
                    fused[j] = (b[members[j]] * w[:, None]).sum(axis=0) / max(w.sum(), 1e-12)
                    continue
            fused.append(b[i].copy())
            members.append([i])
        for box, m in zip(fused, members, strict=True):
            out_b.append(box)
            out_s.append(s[m].max() if conf == "max" else s[m].mean() * min(len(m), sources) / sources)
            out_l.append(label)
    if not out_b:
        return np.zeros((0, width)), np.zeros(0), np.zeros(0, dtype=np.int64)
    order = np.argsort(-np.asarray(out_s), kind="stable")
    return np.stack(out_b)[order], np.asarray(out_s)[order], np.asarray(out_l, dtype=np.int64)[order]


def clip_boxes(boxes: object, shape: Sequence[int]) -> np.ndarray:
    """Boxes clipped to the image [0, shape[d]] per axis (a box wholly outside becomes empty)."""
    b = as_boxes(boxes, len(shape)).copy()
    d = len(shape)
    upper = np.asarray(shape, dtype=np.float64)
    b[:, :d] = np.clip(b[:, :d], 0, upper)
    b[:, d:] = np.clip(b[:, d:], 0, upper)
    return b


def nonempty(boxes: object, min_size: float = 0.0) -> np.ndarray:
    """Boolean mask of boxes whose every edge is longer than `min_size`."""
    b = as_boxes(boxes)
    return (box_sizes(b) > min_size).all(axis=1) if len(b) else np.zeros(0, dtype=bool)


def boxes_from_instance_mask(mask: object) -> tuple[np.ndarray, np.ndarray]:
    """One box per instance id > 0 of an integer 2D/3D mask: (boxes (N, 2D), instance_ids (N,)).

    A box covers every voxel of its id (all its pieces, if the id is split), [first, last + 1).
    A binary mask gives one box around all foreground; label connected components first
    (`scipy.ndimage.label`) for one box per blob.
    """
    m = np.asarray(mask)
    if m.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D mask, got shape {m.shape}")
    if not np.issubdtype(m.dtype, np.integer) and m.dtype != bool:
        raise ValueError(f"an instance mask must hold integers, got {m.dtype}")
    m = m.astype(np.int64)
    if m.size == 0 or m.max() <= 0:
        return np.zeros((0, 2 * m.ndim)), np.zeros(0, dtype=np.int64)
    ids, boxes = [], []
    for i, found in enumerate(ndimage.find_objects(np.where(m > 0, m, 0)), start=1):
        if found is not None:
            ids.append(i)
            boxes.append([s.start for s in found] + [s.stop for s in found])
    return np.asarray(boxes, dtype=np.float64), np.asarray(ids, dtype=np.int64)


def box_centres(boxes: object) -> np.ndarray:
    return centre_size_from_corners(boxes)[0]


def centres_in_boxes(points: object, boxes: object) -> np.ndarray:
    """(Np, Nb) True where point p lies in box b (min inclusive, max exclusive)."""
    p = np.atleast_2d(np.asarray(points, dtype=np.float64))
    b = as_boxes(boxes)
    if len(p) == 0 or len(b) == 0:
        return np.zeros((len(p) if p.size else 0, len(b)), dtype=bool)
    d = spatial_dims(b)
    return ((p[:, None, :] >= b[None, :, :d]) & (p[:, None, :] < b[None, :, d:])).all(axis=2)
