"""Batch augmentation that moves boxes with their images (2D (N, C, H, W) and 3D (N, C, D, H, W)).

The images go through biomx's scan augmentation (`biomx.data.spatial_augment`: the same draws from
the caller's generator, the same single resampling, the same settings object, a
`SpatialAugmentConfig`); the boxes of each sample are moved by the same transform, in the
convention of `boxes.py` (voxel i covers [i, i+1)):
- flips and quarter turns are exact index maps of the box edges;
- rotations and zooms map the 2^D corners of a box through the same affine the image is resampled
  with, and the new box is the axis-aligned HULL of the moved corners (exact for an object that
  fills its box, larger than a round object's own box by up to a factor ~1.4 at 45 degrees, as in
  MONAI's box rotation);
- moved boxes are clipped to the image; a box keeping less than `min_visible` of its moved
  size inside the image, or an edge under one voxel, is dropped (its index leaves `keep`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from biomx.data.spatial_augment import (
    INTENSITY,
    flip_and_turn,
    intensity,
    is_active,
    resample,
    spatial_draws,
)
from biomx.tasks.detection.boxes import as_boxes, box_volume, clip_boxes


def flip_boxes(boxes: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Boxes of an image flipped along spatial `axis` of length `size`: [lo, hi) -> [size - hi, size - lo)."""
    b = as_boxes(boxes).copy()
    d = b.shape[1] // 2
    b[:, [axis, axis + d]] = size - b[:, [axis + d, axis]]
    return b


def rot90_boxes(boxes: np.ndarray, k: int, shape: Sequence[int]) -> np.ndarray:
    """Boxes of an image turned by `torch.rot90(k, dims=(0, 1))` over its first two spatial axes.

    One quarter turn moves voxel (r, c) to (W - 1 - c, r) (W = shape[1]): edges [lo, hi) along
    axis 1 become [W - hi, W - lo) along axis 0, and axis 0's edges move to axis 1 unchanged.
    """
    b = as_boxes(boxes).copy()
    d = b.shape[1] // 2
    h, w = int(shape[0]), int(shape[1])
    for _ in range(k % 4):
        lo0, lo1, hi0, hi1 = b[:, 0].copy(), b[:, 1].copy(), b[:, d].copy(), b[:, d + 1].copy()
        b[:, 0], b[:, d] = w - hi1, w - lo1
        b[:, 1], b[:, d + 1] = lo0, hi0
        h, w = w, h
    return b


def affine_boxes(boxes: np.ndarray, matrix: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Boxes moved by a resampling with sampling matrix `matrix` (output position -> the input
    position it reads, in voxels from the image centre, as in `spatial_augment`): the hull of the
    corners mapped forward by matrix^-1."""
    b = as_boxes(boxes, len(shape))
    if len(b) == 0:
        return b.copy()
    d = len(shape)
    centre = np.asarray(shape, dtype=np.float64) / 2  # continuous coordinate c is p = c - n/2
    picks = np.array(np.meshgrid(*[[0, 1]] * d, indexing="ij")).reshape(d, -1).T  # (2^D, D)
    corners = b[:, picks * d + np.arange(d)]  # (N, 2^D, D)
    forward = np.linalg.inv(np.asarray(matrix, dtype=np.float64))
    moved = (corners - centre) @ forward.T + centre
    return np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1)


def _visible(moved: np.ndarray, shape: Sequence[int], min_visible: float) -> tuple[np.ndarray, np.ndarray]:
    """(clipped boxes, indices kept): boxes left mostly outside the image, or thinner than a voxel, go."""
    clipped = clip_boxes(moved, shape)
    d = len(shape)
    full = box_volume(moved)
    edges_ok = ((clipped[:, d:] - clipped[:, :d]) >= 1.0).all(axis=1)
    keep = np.flatnonzero(edges_ok & (box_volume(clipped) >= min_visible * np.maximum(full, 1e-12)))
    return clipped[keep], keep


def augment_detection_batch(x: Tensor, boxes: Sequence[object], cfg: Any, generator: torch.Generator, *,
                            min_visible: float = 0.5) -> tuple[Tensor, list[np.ndarray], list[np.ndarray]]:
    """Augment a batch of images and move each sample's boxes with it.

    Args:
        x: images (N, C, H, W) or (N, C, D, H, W).
        boxes: per sample, voxel boxes (M_i, 2D) (numpy or tensor; M_i may be 0).
        cfg: a `SpatialAugmentConfig` (flip, rotate90, rotate, scale and the intensity settings).
        generator: the only source of randomness; the draws are those of
            `spatial_augment.augment_batch`, in the same order, so the images are the same.
        min_visible: the fraction of a moved box that must stay inside the image.

    Returns:
        (images, boxes per sample (float64), kept indices per sample into the input boxes,
        for their labels). All off: the inputs, the boxes as float64, every index.
    """
    if x.ndim not in (4, 5):
        raise ValueError(f"expected images (N, C, H, W) or (N, C, D, H, W), got shape {tuple(x.shape)}")
    spatial = tuple(int(s) for s in x.shape[2:])
    dims = len(spatial)
    if len(boxes) != x.shape[0]:
        raise ValueError(f"{len(boxes)} box sets for a batch of {x.shape[0]} images")
    sets = [as_boxes(b.detach().cpu().numpy() if isinstance(b, Tensor) else b, dims) for b in boxes]
    if not is_active(cfg):
        return x, sets, [np.arange(len(b)) for b in sets]
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    n = x.shape[0]
    uniform, flips, turns, matrix = spatial_draws(cfg, n, spatial, generator)  # augment_batch's draws
    if matrix is not None:
        x, _ = resample(x, None, matrix)
        moved = [affine_boxes(b, matrix[i].cpu().numpy(), spatial) for i, b in enumerate(sets)]
    else:
        x, _ = flip_and_turn(x, None, flips, turns)
        flipped = flips.cpu().numpy() if flips is not None else np.zeros((n, dims), dtype=bool)
        quarters = turns.cpu().numpy() if turns is not None else np.zeros(n, dtype=np.int64)
        moved = []
        for i, b in enumerate(sets):
            for axis in np.flatnonzero(flipped[i]):
                b = flip_boxes(b, int(axis), spatial[axis])
            moved.append(rot90_boxes(b, int(quarters[i]), spatial) if quarters[i] else b)
    if any(getattr(cfg, name) for name in INTENSITY):
        x = intensity(x, cfg, uniform, generator)
    kept = [_visible(b, spatial, min_visible) for b in moved]
    return x, [k[0] for k in kept], [k[1] for k in kept]
