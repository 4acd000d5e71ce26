"""Perceptual hashes of images and volumes for the data audit's near-duplicate search (pHash:
Zauner 2010): the grey image scaled to a small grid, its DCT, and one bit per low-frequency
coefficient (above or below their median). A change of contrast or brightness, light noise or
re-encoding flips few bits; a different image flips about half of them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import dctn

CHUNK_VALUES = 16_000_000  # pixels or voxels converted to float at a time (about 64 MB)


def chunks(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`x` split along its samples into blocks of about CHUNK_VALUES values."""
    per_sample = max(1, x[0].numel()) if len(x) else 1
    return x.split(max(1, CHUNK_VALUES // per_sample))


def grey_unit(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) in any dtype -> (N, *spatial) float32, channels averaged; uint8 read as /255."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    return x.mean(dim=1)


def perceptual_hash(x: torch.Tensor, grid: int, low: int) -> np.ndarray:
    """(N, C, *spatial) -> (N, low**d) uint8 bits: resized to grid**d (antialiased where it
    shrinks), DCT-II over the spatial axes, the low**d lowest frequencies against their median."""
    dims = x.ndim - 2
    mode = "bilinear" if dims == 2 else "trilinear"
    out = []
    for chunk in chunks(x):
        grey = grey_unit(chunk).unsqueeze(1)
        shrink = dims == 2 and min(grey.shape[2:]) > grid
        small = F.interpolate(grey, size=(grid,) * dims, mode=mode, align_corners=False, antialias=shrink)
        coeffs = dctn(small[:, 0].numpy().astype(np.float64), axes=tuple(range(1, dims + 1)), norm="ortho")
        block = coeffs[(slice(None), *[slice(0, low)] * dims)].reshape(len(chunk), -1)
        out.append(block > np.median(block, axis=1, keepdims=True))
    return np.ascontiguousarray(np.concatenate(out) if out else np.zeros((0, low**dims), bool), dtype=np.uint8)


def intensity_measures(x: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-sample mean intensity, contrast (SD) and share of values above 0, on the unit scale."""
    means, sds, foreground = [], [], []
    for chunk in chunks(x):
        grey = grey_unit(chunk).reshape(len(chunk), -1)
        means.append(grey.mean(1).numpy())
        sds.append(grey.std(1).numpy())
        foreground.append((grey > 0).float().mean(1).numpy())
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0))  # noqa: E731
    return {"mean intensity": cat(means), "contrast (SD)": cat(sds), "foreground share": cat(foreground)}
